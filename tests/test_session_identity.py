"""Exact session identity: the client's BackendKeyData carries the upstream backend's real pid.

So `pg_backend_pid()`, the client's own idea of its pid (psycopg's `conn.info.backend_pid`,
asyncpg's `get_server_pid()`), the pid of NotificationResponses and `pg_stat_activity` agree, and
terminating one's own backend ends the connection exactly as PostgreSQL ends it. Only the secret
is the server's own (tests/test_cancel.py: cancel still works, across workers too, and a wrong
secret cancels nothing).
"""
from __future__ import annotations

import asyncio

import asyncpg
import psycopg
import pytest
from psycopg import errors


@pytest.mark.parametrize("target", ["direct", "server"])
def test_psycopg_backend_pid_is_the_upstream_backend(target, server, upstream):
    dsn = upstream.dsn if target == "direct" else server.dsn()
    with psycopg.connect(dsn, autocommit=True, application_name="identity_pid") as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert conn.info.backend_pid == pid
        row = conn.execute("SELECT application_name FROM pg_stat_activity WHERE pid = %s",
                           [conn.info.backend_pid]).fetchone()
        assert row == ("identity_pid",)


def test_asyncpg_server_pid_is_the_upstream_backend(server):
    async def main() -> None:
        conn = await asyncpg.connect(server.dsn())
        try:
            assert conn.get_server_pid() == await conn.fetchval("SELECT pg_backend_pid()")
        finally:
            await conn.close()
    asyncio.run(main())


def test_notification_pid_is_the_notifiers_backend(server):
    with psycopg.connect(server.dsn(), autocommit=True) as listener, \
            psycopg.connect(server.dsn(), autocommit=True) as notifier:
        listener.execute("LISTEN identity_channel")
        notifier.execute("NOTIFY identity_channel, 'hello'")
        note = next(listener.notifies(timeout=10))
        assert (note.channel, note.payload, note.pid) == ("identity_channel", "hello", notifier.info.backend_pid)


def _terminate_own_backend(dsn: str) -> tuple[type, str | None, str, bool]:
    conn = psycopg.connect(dsn, autocommit=True)
    try:
        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
        return type(info.value), info.value.sqlstate, str(info.value).strip(), conn.closed
    finally:
        conn.close()


def test_terminating_ones_own_backend_ends_the_connection_as_postgresql_does(server, upstream):
    direct = _terminate_own_backend(upstream.dsn)
    through = _terminate_own_backend(server.dsn())
    assert direct[0] is errors.AdminShutdown and direct[1] == "57P01"
    assert through == direct
    with psycopg.connect(server.dsn(), autocommit=True) as conn:     # and the server serves on
        assert conn.execute("SELECT 1").fetchone() == (1,)
