"""psycopg 3 (sync and async) through pgml-server, compared with the upstream where behaviour matters.

The pipeline tests run the same steps against the upstream directly, with the local
`SELECT pgml.version()` replaced by a stand-in the upstream answers the same way, and compare traces.
"""
from __future__ import annotations

import asyncio
import threading
import time

import psycopg
import pytest
from psycopg import errors, sql

from pgml_server import __version__

LOCAL = "SELECT pgml.version()"
STAND_IN = f"SELECT '{__version__}'::text AS version"


def version_sql(dsn: str, server) -> str:
    return LOCAL if str(server.port) in dsn else STAND_IN


def attempt(step) -> object:
    """The value of step() or the name of the psycopg error it raised: traces compare both."""
    try:
        return step()
    except psycopg.Error as exc:
        return type(exc).__name__


def outcome(cur) -> object:
    return attempt(cur.fetchall)


def wait_readable(conn, timeout: float = 10.0) -> None:
    """Until the server's answer has arrived (not a fixed sleep: a loaded machine answers late)."""
    import select
    select.select([conn.pgconn.socket], [], [], timeout)
    time.sleep(0.05)   # the rest of the same answer, if it came in several packets


def pipeline_trace(dsn: str, vsql: str, autocommit: bool) -> list:
    trace = []
    with psycopg.connect(dsn, autocommit=autocommit) as conn:
        conn.execute("CREATE TEMP TABLE p (id int PRIMARY KEY)")
        conn.commit()
        status = lambda: conn.info.transaction_status.name  # noqa: E731
        with conn.pipeline() as p:
            curs = [conn.execute("INSERT INTO p VALUES (1) RETURNING id"), conn.execute(vsql),
                    conn.execute("SELECT %s::int + 1", [41]), conn.execute(vsql)]
            p.sync()
            trace += [outcome(c) for c in curs] + [status()]
            curs = [conn.execute("INSERT INTO p VALUES (2)"), conn.execute("SELECT 1/0")]
            # Make the server answer now, so the error is known before the next statements are sent:
            # psycopg then reports it on the next execute, and PipelineAborted until the Sync.
            conn.pgconn.send_flush_request()
            conn.pgconn.flush()
            wait_readable(conn)
            for later in (vsql, "INSERT INTO p VALUES (3)", "SELECT 'x'", vsql):
                trace.append(attempt(lambda: curs.append(conn.execute(later))))
            trace.append(status())
            trace.append(attempt(p.sync))
            trace += [outcome(c) for c in curs] + [status()]
            trace.append(attempt(lambda: conn.execute(vsql).fetchall()))
            trace.append(status())
        if not autocommit:
            conn.rollback()
        with conn.pipeline():
            trace.append(conn.execute(vsql).fetchall())
            trace.append(status())
        trace.append(conn.execute("SELECT array_agg(id ORDER BY id) FROM p").fetchone())
        trace.append(status())
    return trace


@pytest.mark.parametrize("autocommit", [True, False])
def test_pipeline_mixes_local_and_forwarded_like_the_upstream(upstream, server, autocommit):
    direct = pipeline_trace(upstream.dsn, STAND_IN, autocommit)
    relayed = pipeline_trace(server.dsn(), LOCAL, autocommit)
    assert relayed == direct
    assert direct[:4] == [[(1,)], [(__version__,)], [(42,)], [(__version__,)]]
    assert "DivisionByZero" in direct and "PipelineAborted" in direct


def test_pipeline_error_in_a_local_statement(upstream, server):
    def trace(dsn: str, bad_sql: str) -> tuple:
        # psycopg reports a pipeline error at whichever call first reads it (an execute, the sync
        # or a fetch), which depends on timing; what must agree is what was reported and the rows.
        errors_seen, rows = [], []
        with psycopg.connect(dsn, autocommit=True) as conn:
            with conn.pipeline() as p:
                curs = []
                for q in ("SELECT 1", bad_sql, "SELECT 2"):
                    got = attempt(lambda: curs.append(conn.execute(q)))
                    if isinstance(got, str):
                        errors_seen.append(got)
                got = attempt(p.sync)
                if isinstance(got, str):
                    errors_seen.append(got)
                for c in curs:
                    got = outcome(c)
                    (errors_seen if isinstance(got, str) else rows).append(got)
            rows.append(conn.execute("SELECT 3").fetchone())
        # PipelineAborted / ProgrammingError are psycopg's own follow-ups, present or not by timing.
        return sorted(set(errors_seen) - {"PipelineAborted", "ProgrammingError"}), rows
    # A local function called with a wrong argument count fails like an undefined function upstream.
    relayed = trace(server.dsn(), "SELECT pgml.version(1, 2, 3)")
    direct = trace(upstream.dsn, "SELECT no_such_function(1, 2, 3)")
    assert relayed == direct


def test_server_side_cursor_and_binary_results(server):
    with psycopg.connect(server.dsn()) as conn:
        with conn.cursor(name="named_cur") as cur:
            cur.itersize = 10
            cur.execute("SELECT g, g::text || 'é', NULL::int FROM generate_series(1, 95) g")
            rows = list(cur)
        assert len(rows) == 95 and rows[-1] == (95, "95é", None)
        with conn.cursor(name="scroll_cur", scrollable=True) as cur:
            cur.execute("SELECT g FROM generate_series(1, 10) g")
            assert cur.fetchmany(3) == [(1,), (2,), (3,)]
            cur.scroll(5)
            assert cur.fetchone() == (9,)
        conn.commit()
        for binary in (False, True):
            cur = conn.cursor(binary=binary)
            cur.execute("SELECT 1::int8, 2.5::float8, 'ß'::text, ARRAY[1,NULL,3]::int[], '{\"a\":1}'::jsonb, "
                        "'\\x00ff'::bytea, 1.25::numeric, true, NULL::text, now()::date = current_date")
            assert cur.fetchone() == (1, 2.5, "ß", [1, None, 3], {"a": 1}, b"\x00\xff",
                                      pytest.approx(1.25), True, None, True)
            cur.execute(LOCAL)
            assert cur.fetchone() == (__version__,)
            assert cur.description[0].name == "version"


def test_copy_text_and_binary_both_ways(server):
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE cp (id int, name text, v float8)")
        with conn.cursor() as cur:
            with cur.copy("COPY cp FROM STDIN") as copy:
                for i in range(1000):
                    copy.write_row((i, f"rå {i}" if i % 10 else None, i / 3))
            with cur.copy("COPY cp FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "text", "float8"])
                for i in range(1000, 1500):
                    copy.write_row((i, "bin", -i))
            assert conn.execute("SELECT count(*), count(name) FROM cp").fetchone() == (1500, 1400)
            with cur.copy("COPY (SELECT * FROM cp ORDER BY id) TO STDOUT (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "text", "float8"])
                rows = list(copy.rows())
            assert rows[0] == (0, None, 0.0) and rows[1] == (1, "rå 1", 1 / 3) and rows[-1] == (1499, "bin", -1499)
            with cur.copy("COPY cp (id, name) TO STDOUT") as copy:
                text = b"".join(bytes(b) for b in copy)
            assert text.count(b"\n") == 1500 and "rå 1\n".encode() in text
            with pytest.raises(errors.InvalidTextRepresentation):
                with cur.copy("COPY cp FROM STDIN") as copy:
                    copy.write("not-an-int\tx\t1\n")
            assert conn.execute("SELECT count(*) FROM cp").fetchone() == (1500,)


def test_notifies(server):
    with psycopg.connect(server.dsn(), autocommit=True) as listener, \
            psycopg.connect(server.dsn(), autocommit=True) as sender:
        listener.execute("LISTEN jobs")
        sender.execute("NOTIFY jobs, 'one'")
        sender.execute("SELECT pg_notify('jobs', 'twö')")
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=5, stop_after=2)]
        assert got == [("jobs", "one"), ("jobs", "twö")]
        assert listener.execute("SELECT 1").fetchone() == (1,)


def test_prepare_true_repeated_and_local(server):
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        for i in range(30):
            assert conn.execute("SELECT %s::int * 3", [i], prepare=True).fetchone() == (3 * i,)
            assert conn.execute(LOCAL, prepare=True).fetchone() == (__version__,)
        # The forwarded one is a real upstream prepared statement; the local one never reaches it.
        names = conn.execute("SELECT statement FROM pg_prepared_statements").fetchall()
        assert names == [("SELECT $1::int * 3",)]
    with psycopg.connect(server.dsn(), autocommit=True, prepare_threshold=2) as conn:
        for i in range(10):
            assert conn.execute("SELECT %s::text", [f"v{i}"]).fetchone() == (f"v{i}",)
            assert conn.execute(LOCAL).fetchone() == (__version__,)


def test_error_in_transaction_then_rollback(server):
    with psycopg.connect(server.dsn()) as conn:
        conn.execute("CREATE TEMP TABLE e (id int)")
        conn.commit()
        conn.execute("INSERT INTO e VALUES (1)")
        with pytest.raises(errors.UndefinedTable):
            conn.execute("SELECT * FROM missing")
        assert conn.info.transaction_status.name == "INERROR"
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute(LOCAL)       # a local statement in a failed transaction fails too, as upstream
        conn.rollback()
        assert conn.info.transaction_status.name == "IDLE"
        assert conn.execute("SELECT count(*) FROM e").fetchone() == (0,)


def test_pgml_version_inside_a_transaction_block(server):
    with psycopg.connect(server.dsn()) as conn:
        conn.execute("CREATE TEMP TABLE t (id int)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.execute(LOCAL).fetchone() == (__version__,)
        assert conn.info.transaction_status.name == "INTRANS"
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
        conn.commit()
        assert conn.info.transaction_status.name == "IDLE"
        with conn.transaction():
            assert conn.execute(LOCAL).fetchone() == (__version__,)
            with conn.transaction():        # a savepoint
                conn.execute("INSERT INTO t VALUES (2)")
                assert conn.execute(LOCAL).fetchone() == (__version__,)
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (2,)


def test_async_connection_pipeline_copy_and_notifies(upstream, server):
    async def trace(dsn: str, vsql: str) -> list:
        out = []
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            # psycopg reports the pipeline's error at whichever call first reads it (an execute,
            # the sync or a fetch): compare what was reported and the rows, not where.
            errors, rows = set(), []
            async with conn.pipeline() as p:
                curs = []
                for sql in ("SELECT 1", vsql, "SELECT 1/0", vsql):
                    try:
                        curs.append(await conn.execute(sql))
                    except psycopg.Error as exc:
                        errors.add(type(exc).__name__)
                try:
                    await p.sync()
                except psycopg.Error as exc:
                    errors.add(type(exc).__name__)
                for c in curs:
                    try:
                        rows.append(await c.fetchall())
                    except psycopg.Error as exc:
                        errors.add(type(exc).__name__)
            out += [sorted(errors - {"PipelineAborted", "ProgrammingError"}), rows[:2]]
            await conn.execute("CREATE TEMP TABLE a (id int)")
            async with conn.cursor() as cur:
                async with cur.copy("COPY a FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["int4"])
                    for i in range(100):
                        await copy.write_row((i,))
                async with cur.copy("COPY a TO STDOUT") as copy:
                    out.append(len([row async for row in copy.rows()]))
            await conn.execute("LISTEN ach")
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as other:
                await other.execute("NOTIFY ach, 'hi'")
            gen = conn.notifies(timeout=5, stop_after=1)
            out += [(n.channel, n.payload) async for n in gen]
            async with conn.cursor(binary=True) as cur:
                await cur.execute(vsql)
                out.append(await cur.fetchone())
        return out
    direct = asyncio.run(trace(upstream.dsn, STAND_IN))
    relayed = asyncio.run(trace(server.dsn(), LOCAL))
    assert relayed == direct
    assert relayed[-1] == (__version__,) and ("ach", "hi") in relayed
    assert relayed[:2] == [["DivisionByZero"], [[(1,)], [(__version__,)]]]
