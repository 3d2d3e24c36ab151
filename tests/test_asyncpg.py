"""asyncpg through pgml-server: its extended-protocol use (prepare, cache, COPY, LISTEN) works as direct."""
from __future__ import annotations

import asyncio

import asyncpg
import pytest

from pgml_server import __version__


def run(coro):
    return asyncio.run(coro)


async def connect(dsn: str, **kw) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, **kw)


def test_prepared_statements_and_cache_reuse(server):
    async def main():
        conn = await connect(server.dsn())
        try:
            stmt = await conn.prepare("SELECT $1::int + $2::int AS s, $3::text AS t")
            assert [tuple(await stmt.fetchrow(i, i, f"ü{i}")) for i in range(3)] == [(0, "ü0"), (2, "ü1"), (4, "ü2")]
            assert [a.name for a in stmt.get_attributes()] == ["s", "t"]
            # The same text many times: asyncpg reuses its cached named statement (Bind/Execute only).
            for i in range(50):
                assert await conn.fetchval("SELECT $1::int * 2", i) == 2 * i
            assert await conn.fetchval("SELECT count(*) FROM pg_prepared_statements") >= 2
            assert await conn.fetch("SELECT NULL::int AS n, 'x' AS t") == [(None, "x")]
        finally:
            await conn.close()
    run(main())


def test_executemany_cursor_transaction_rollback(server):
    async def main():
        conn = await connect(server.dsn())
        try:
            await conn.execute("CREATE TEMP TABLE items (id int PRIMARY KEY, label text, price float8)")
            await conn.executemany("INSERT INTO items VALUES ($1, $2, $3)",
                                   [(i, f"item {i}", i * 1.5 if i % 3 else None) for i in range(200)])
            assert await conn.fetchval("SELECT count(*) FROM items") == 200
            async with conn.transaction():
                labels = [r["label"] async for r in conn.cursor("SELECT label FROM items ORDER BY id", prefetch=7)]
                assert labels == [f"item {i}" for i in range(200)]
                cur = await conn.cursor("SELECT id FROM items WHERE price IS NULL ORDER BY id")
                assert [r[0] for r in await cur.fetch(3)] == [0, 3, 6]
                await cur.forward(2)
                assert (await cur.fetchrow())[0] == 15
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await conn.execute("DELETE FROM items")
                    assert await conn.fetchval("SELECT count(*) FROM items") == 0
                    raise RuntimeError("roll back")
            assert await conn.fetchval("SELECT count(*) FROM items") == 200
            tr = conn.transaction()
            await tr.start()
            await conn.execute("UPDATE items SET label = 'changed'")
            await tr.rollback()
            assert await conn.fetchval("SELECT count(*) FROM items WHERE label = 'changed'") == 0
        finally:
            await conn.close()
    run(main())


def test_copy_in_and_out(server, tmp_path):
    async def main():
        conn = await connect(server.dsn())
        try:
            await conn.execute("CREATE TEMP TABLE c (id int, name text, v float8, tags text[])")
            records = [(i, f"név {i}" if i % 5 else None, i / 7, ["a", str(i)]) for i in range(5000)]
            assert await conn.copy_records_to_table("c", records=records) == "COPY 5000"
            assert await conn.fetchval("SELECT count(*) FROM c WHERE name IS NULL") == 1000
            out = tmp_path / "c.csv"
            tag = await conn.copy_from_query("SELECT id, name FROM c WHERE id < 100 ORDER BY id", output=str(out),
                                             format="csv")
            assert tag == "COPY 100"
            lines = out.read_text().splitlines()
            assert lines[0] == "0," and lines[1] == "1,név 1"
            await conn.execute("CREATE TEMP TABLE c2 (id int, name text)")
            assert await conn.copy_to_table("c2", source=str(out), format="csv") == "COPY 100"
            assert await conn.fetchval("SELECT count(*) FROM c2 WHERE name IS NULL") == 20
            chunks = []
            async def sink(chunk):
                chunks.append(chunk)
            await conn.copy_from_table("c", output=sink, format="binary")
            assert len(b"".join(chunks)) > 100_000
            # The connection is still in step after all of that.
            assert await conn.fetchval("SELECT sum(id) FROM c") == sum(range(5000))
        finally:
            await conn.close()
    run(main())


def test_listen_notify_callbacks(server):
    async def main():
        listener = await connect(server.dsn())
        sender = await connect(server.dsn())
        got: asyncio.Queue = asyncio.Queue()
        try:
            await listener.add_listener("chan_ü", lambda c, pid, ch, payload: got.put_nowait((ch, payload)))
            await sender.execute("NOTIFY \"chan_ü\", 'first'")
            await sender.execute("SELECT pg_notify('chan_ü', 'sëcond')")
            assert await asyncio.wait_for(got.get(), 5) == ("chan_ü", "first")
            assert await asyncio.wait_for(got.get(), 5) == ("chan_ü", "sëcond")
            # A notification arriving while the listener is busy with its own query.
            await sender.execute("NOTIFY \"chan_ü\", 'third'")
            assert await listener.fetchval("SELECT 41 + 1") == 42
            assert await asyncio.wait_for(got.get(), 5) == ("chan_ü", "third")
        finally:
            await listener.close()
            await sender.close()
    run(main())


FAILING = [
    "SELECT 1/0",
    "SELECT * FROM missing_table",
    "SELECT $1::int",            # run with a text argument that is not an int
    "SELEC 1",
    "SELECT 'x'::int",
    "CREATE TEMP TABLE u (id int PRIMARY KEY); INSERT INTO u VALUES (1), (1)",
]


async def sqlstates(dsn: str) -> list[str]:
    conn = await connect(dsn)
    states = []
    try:
        for sql in FAILING:
            try:
                if "$1" in sql:
                    await conn.fetchval(sql, "abc")
                else:
                    await conn.execute(sql)
                states.append("ok")
            except (asyncpg.PostgresError, asyncpg.DataError) as exc:
                states.append(getattr(exc, "sqlstate", None) or type(exc).__name__)
            assert await conn.fetchval("SELECT 'usable'") == "usable"
        async with conn.transaction():
            with pytest.raises(asyncpg.DivisionByZeroError):
                await conn.execute("SELECT 1/0")
            with pytest.raises(asyncpg.InFailedSQLTransactionError):
                await conn.execute("SELECT 1")
    except asyncpg.InFailedSQLTransactionError:
        states.append("failed-tx")
    finally:
        assert await conn.fetchval("SELECT 2") == 2
        await conn.close()
    return states


def test_errors_keep_the_connection_usable_with_upstream_sqlstates(upstream, server):
    direct = run(sqlstates(upstream.dsn))
    relayed = run(sqlstates(server.dsn()))
    assert relayed == direct
    assert direct[:2] == ["22012", "42P01"] and direct[3] == "42601"


def test_pgml_version_prepared_many_times(server):
    async def main():
        conn = await connect(server.dsn())
        try:
            stmt = await conn.prepare("SELECT pgml.version()")
            assert [a.name for a in stmt.get_attributes()] == ["version"]
            for _ in range(100):
                assert await stmt.fetchval() == __version__
            for _ in range(20):
                assert await conn.fetchval("SELECT pgml.version()") == __version__
            assert await conn.fetch("SELECT pgml.version() AS v") == [(__version__,)]
        finally:
            await conn.close()
    run(main())


def test_mixed_local_and_forwarded_sequence(server):
    async def main():
        conn = await connect(server.dsn())
        try:
            await conn.execute("CREATE TEMP TABLE m (id int)")
            async with conn.transaction():
                await conn.executemany("INSERT INTO m VALUES ($1)", [(i,) for i in range(10)])
                assert await conn.fetchval("SELECT pgml.version()") == __version__
                assert await conn.fetchval("SELECT count(*) FROM m") == 10
            # Local and forwarded statements alternating on one connection (asyncpg keeps each
            # Parse/Bind/Execute/Sync batch in flight as one write).
            results = [await conn.fetchval("SELECT pgml.version()") if i % 3 == 0
                       else await conn.fetchval("SELECT $1::int", i) for i in range(30)]
            assert results == [__version__ if i % 3 == 0 else i for i in range(30)]
            with pytest.raises(asyncpg.PostgresError) as info:
                await conn.fetchval("SELECT pgml.no_such_function()")
            assert info.value.sqlstate in ("42883", "3F000")   # undefined function / no pgml schema yet
            assert await conn.fetchval("SELECT pgml.version()") == __version__
            await conn.execute("SELECT 1; SELECT 2")           # simple-protocol multi-statement
            assert await conn.fetchval("SELECT count(*) FROM m") == 10
        finally:
            await conn.close()
    run(main())


def test_many_connections_at_once(server):
    async def one(i: int) -> int:
        conn = await connect(server.dsn())
        try:
            return await conn.fetchval("SELECT $1::int + (SELECT count(*) FROM pg_class WHERE false)", i)
        finally:
            await conn.close()

    async def main():
        return await asyncio.gather(*(one(i) for i in range(40)))
    assert run(main()) == list(range(40))
