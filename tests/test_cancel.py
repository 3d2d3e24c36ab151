"""Cancellation and connection loss through pgml-server.

- CancelRequest with the key pgml-server handed out (psycopg's conn.cancel(), asyncpg's timeouts
  and task cancellation) reaches the upstream backend: SQLSTATE 57014, quickly, session usable.
- With --workers 2 a CancelRequest may be accepted by the other worker, which forwards it.
- A client that goes away mid-statement releases its upstream backend.
- An upstream backend terminated by an administrator gives the client 57P01, and the server
  goes on serving.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from pathlib import Path

import asyncpg
import psycopg
import pytest
from psycopg import errors

SLEEP = "SELECT pg_sleep(30)"
QUICK = 8.0        # seconds: a cancelled pg_sleep(30) must come back well before this


def cancel_soon(conn: psycopg.Connection, delay: float = 0.3) -> threading.Timer:
    timer = threading.Timer(delay, conn.cancel)
    timer.start()
    return timer


def assert_cancelled_quickly(conn: psycopg.Connection) -> None:
    timer = cancel_soon(conn)
    start = time.monotonic()
    with pytest.raises(errors.QueryCanceled) as info:
        conn.execute(SLEEP)
    timer.join()
    assert time.monotonic() - start < QUICK
    assert info.value.sqlstate == "57014"


def upstream_backends(upstream, app: str) -> list[tuple]:
    """(pid, state, query) of the upstream backends of clients with application_name app."""
    with psycopg.connect(upstream.dsn, autocommit=True) as conn:
        return conn.execute("SELECT pid, state, query FROM pg_stat_activity WHERE application_name = %s",
                            [app]).fetchall()


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# ---------------------------------------------------------------- psycopg


def test_psycopg_cancel_autocommit_and_in_transaction(server):
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        assert_cancelled_quickly(conn)
        assert conn.execute("SELECT 41 + 1").fetchone()[0] == 42
        assert conn.execute("SELECT pgml.version()").fetchone()[0]
        # A second cancel on the same session works too (the key stays valid).
        assert_cancelled_quickly(conn)
        assert conn.execute("SELECT 1").fetchone()[0] == 1

    with psycopg.connect(server.dsn()) as conn:
        conn.execute("CREATE TEMP TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert_cancelled_quickly(conn)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        # The rollback undid the temp table too: the session is clean and usable.
        assert conn.execute("SELECT count(*) FROM pg_class WHERE relname = 't' "
                            "AND relpersistence = 't'").fetchone()[0] == 0


def test_psycopg_cancel_with_nothing_running_is_harmless(server):
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.cancel()
        time.sleep(0.2)
        assert conn.execute("SELECT 2").fetchone()[0] == 2


def test_cancel_with_a_wrong_key_cancels_nothing(server):
    """A CancelRequest must carry the right secret: a forged one leaves the statement running."""
    import socket
    import struct

    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        pid = conn.info.backend_pid
        result: list = []
        t = threading.Thread(target=lambda: result.append(conn.execute("SELECT pg_sleep(1.5), 1").fetchone()))
        t.start()
        time.sleep(0.3)
        with socket.create_connection((server.host, server.port)) as s:
            s.sendall(struct.pack("!iiiI", 16, 80877102, pid, 0xDEADBEEF))
            s.settimeout(5)
            assert s.recv(1) == b""      # closed without an answer, as PostgreSQL does
        t.join(10)
        assert result and result[0][1] == 1


# ---------------------------------------------------------------- asyncpg


def test_asyncpg_timeout_statement_timeout_and_task_cancel(server):
    async def main() -> None:
        conn = await asyncpg.connect(server.dsn())
        try:
            # asyncpg's own timeout sends a CancelRequest, then waits for the backend to answer.
            start = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval(SLEEP, timeout=0.3)
            assert time.monotonic() - start < QUICK
            assert await conn.fetchval("SELECT 1") == 1

            # The upstream's statement_timeout: an ordinary 57014 error relayed.
            await conn.execute("SET statement_timeout = 200")
            with pytest.raises(asyncpg.exceptions.QueryCanceledError) as info:
                await conn.fetchval(SLEEP)
            assert info.value.sqlstate == "57014"
            await conn.execute("RESET statement_timeout")
            assert await conn.fetchval("SELECT pgml.version()")

            # Cancelling the task: asyncpg cancels the statement and keeps the connection.
            task = asyncio.ensure_future(conn.fetchval(SLEEP))
            await asyncio.sleep(0.3)
            start = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await asyncio.wait_for(conn.fetchval("SELECT 3"), QUICK) == 3
            assert time.monotonic() - start < QUICK

            # Inside a transaction: the cancel fails it; rollback makes the session usable.
            tr = conn.transaction()
            await tr.start()
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval(SLEEP, timeout=0.3)
            with pytest.raises(asyncpg.exceptions.InFailedSQLTransactionError):
                await conn.fetchval("SELECT 1")
            await tr.rollback()
            assert await conn.fetchval("SELECT 4") == 4
        finally:
            await conn.close()

    asyncio.run(main())


# ---------------------------------------------------------------- several workers


def _socket_owners(pids: list[int]) -> dict[int, int]:
    """Socket inode → the process (of `pids`) that holds it."""
    owners = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owners[int(target[8:-1])] = pid
    return owners


def worker_of(conn: psycopg.Connection, worker_pids: list[int]) -> int:
    """The pgml-server worker process serving `conn`: the one holding the TCP socket whose local
    port is the client port PostgreSQL sees for the connection's (real) backend pid."""
    port = conn.execute("SELECT client_port FROM pg_stat_activity WHERE pid = %s",
                        [conn.info.backend_pid]).fetchone()[0]
    owners = _socket_owners(worker_pids)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and int(fields[9]) in owners:
                return owners[int(fields[9])]
    raise AssertionError(f"no worker holds the upstream socket of local port {port}")


def test_cancel_with_two_workers(start_server):
    srv = start_server("--workers", "2")
    children = [int(c) for c in Path(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children").read_text().split()]
    assert len(children) == 2
    conns: list[psycopg.Connection] = []
    try:
        # SO_REUSEPORT spreads connections over both workers; open until both have some.
        for _ in range(40):
            conns.append(psycopg.connect(srv.dsn(), autocommit=True))
            workers = {worker_of(c, children) for c in conns}
            if len(conns) >= 6 and len(workers) == 2:
                break
        assert len(workers) == 2, "the connections all went to one worker"
        # Each cancel lands on a worker chosen by the kernel: about half must be forwarded.
        for conn in conns:
            assert_cancelled_quickly(conn)
            assert conn.execute("SELECT 5").fetchone()[0] == 5

        async def with_asyncpg() -> None:
            aconns = [await asyncpg.connect(srv.dsn()) for _ in range(6)]
            try:
                for conn in aconns:
                    with pytest.raises(asyncio.TimeoutError):
                        await conn.fetchval(SLEEP, timeout=0.3)
                    assert await asyncio.wait_for(conn.fetchval("SELECT 6"), QUICK) == 6
            finally:
                for conn in aconns:
                    await conn.close()

        asyncio.run(with_asyncpg())
    finally:
        for conn in conns:
            conn.close()


# ---------------------------------------------------------------- connection loss


def test_client_disconnect_releases_the_upstream_backend(upstream, server):
    app = f"gone_{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        conn = await asyncpg.connect(server.dsn(), server_settings={"application_name": app})
        task = asyncio.ensure_future(conn.fetchval(SLEEP))
        await asyncio.sleep(0.3)
        assert await asyncio.to_thread(
            wait_for, lambda: [r for r in upstream_backends(upstream, app) if r[1] == "active"])
        conn.terminate()           # closes the socket, no Terminate message, no cancel
        with pytest.raises(Exception):
            await task

    asyncio.run(main())
    start = time.monotonic()
    assert wait_for(lambda: not upstream_backends(upstream, app)), upstream_backends(upstream, app)
    assert time.monotonic() - start < 5

    # Also a client that vanishes while idle, and one that drops inside a transaction.
    for setup in ("SELECT 1", "BEGIN; CREATE TEMP TABLE x (i int); INSERT INTO x VALUES (1)"):
        conn = psycopg.connect(server.dsn(application_name=app), autocommit=True)
        conn.execute(setup)
        assert upstream_backends(upstream, app)
        conn.pgconn.finish()       # libpq closes its socket (it sends Terminate first)
        assert wait_for(lambda: not upstream_backends(upstream, app))


def test_client_socket_reset_mid_statement(upstream, server):
    """A hard close of the socket (RST, no Terminate) while the upstream works."""
    import socket
    import struct

    app = f"rst_{uuid.uuid4().hex[:8]}"
    s = socket.create_connection((server.host, server.port))
    params = b"user\x00postgres\x00database\x00postgres\x00application_name\x00" + app.encode() + b"\x00\x00"
    s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
    data = b""
    while b"Z\x00\x00\x00\x05I" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    sql = SLEEP.encode() + b"\x00"
    s.sendall(b"Q" + struct.pack("!i", 4 + len(sql)) + sql)
    assert wait_for(lambda: [r for r in upstream_backends(upstream, app) if r[1] == "active"])
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    assert wait_for(lambda: not upstream_backends(upstream, app)), upstream_backends(upstream, app)


def test_upstream_backend_terminated_gives_57P01_and_server_keeps_serving(upstream, server):
    app = f"term_{uuid.uuid4().hex[:8]}"

    def terminate_soon() -> None:
        rows = wait_for(lambda: [r for r in upstream_backends(upstream, app) if r[1] == "active"])
        with psycopg.connect(upstream.dsn, autocommit=True) as admin:
            for pid, _, _ in rows:
                admin.execute("SELECT pg_terminate_backend(%s)", [pid])

    # Mid-statement.
    conn = psycopg.connect(server.dsn(application_name=app), autocommit=True)
    t = threading.Thread(target=terminate_soon)
    t.start()
    start = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as info:
        conn.execute(SLEEP)
    t.join()
    assert time.monotonic() - start < QUICK
    assert info.value.sqlstate == "57P01", info.value
    assert "terminating connection" in str(info.value)
    assert conn.closed or conn.broken
    conn.close()

    # While idle: the next statement reports the loss.
    conn = psycopg.connect(server.dsn(application_name=app), autocommit=True)
    conn.execute("SELECT 1")
    with psycopg.connect(upstream.dsn, autocommit=True) as admin:
        pid = admin.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", [app]).fetchone()[0]
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    time.sleep(0.3)
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()

    # asyncpg sees the same SQLSTATE.
    async def with_asyncpg() -> None:
        aconn = await asyncpg.connect(server.dsn(), server_settings={"application_name": app})
        killer = asyncio.ensure_future(asyncio.to_thread(terminate_soon))
        with pytest.raises((asyncpg.exceptions.AdminShutdownError, asyncpg.exceptions.ConnectionDoesNotExistError)):
            await asyncio.wait_for(aconn.fetchval(SLEEP), QUICK)
        await killer
        aconn.terminate()

    asyncio.run(with_asyncpg())

    # The server goes on: new connections, forwarded and local statements.
    for _ in range(3):
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            assert conn.execute("SELECT 7").fetchone()[0] == 7
            assert conn.execute("SELECT pgml.version()").fetchone()[0]
    assert server.proc.poll() is None
