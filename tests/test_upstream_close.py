"""When the upstream ends a session (pg_terminate_backend), the client gets the upstream's FATAL and
then end-of-file, as from PostgreSQL's own exit, and never a reset for bytes it sent meanwhile.

Found by psycopg's own test suite (test_transaction.py::test_context_inerror_rollback_no_clobber):
psycopg rolls back on a connection whose backend was just terminated; closing the client's socket
with that ROLLBACK unread made the kernel answer with a reset, and about one run in 300 psycopg's C
wait raised "connection socket closed" instead of logging the lost connection and letting the
user's exception through, as it does against PostgreSQL directly.
"""
from __future__ import annotations

import logging
import socket
import struct

import psycopg
import pytest

from protocol import messages as m
from protocol.framing import Framer


def _login(port: int) -> tuple[socket.socket, Framer, int]:
    """A raw client logged in through the server; returns it with the backend pid it was given."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(m.StartupMessage({"user": "postgres", "database": "postgres"}).encode())
    framer, pid = Framer(), None
    while True:
        frame = framer.next_frame()
        if frame is None:
            framer.feed(sock.recv(65536))
            continue
        if frame.type == ord("K"):
            pid = struct.unpack_from("!i", bytes(frame.payload))[0]
        if frame.type == ord("Z"):
            return sock, framer, pid


def test_client_bytes_after_the_upstreams_fatal_meet_end_of_file_not_a_reset(server, upstream):
    sock, framer, pid = _login(server.port)
    with sock, psycopg.connect(upstream.dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        frame = None
        while frame is None:
            frame = framer.next_frame()
            if frame is None:
                framer.feed(sock.recv(65536))
        fields = m.ErrorResponse.decode(bytes(frame.payload)).fields
        assert (chr(frame.type), fields.get("S"), fields.get("C")) == ("E", "FATAL", "57P01")
        # What psycopg sends next (its rollback, then Terminate): the server still reads them,
        # so neither is answered with a reset and the client reads a clean end-of-file. (An exited
        # PostgreSQL would reset the second write; a direct client nearly always reads its FATAL
        # before writing, the ordering that the extra hop makes a race.)
        sock.sendall(m.Query("ROLLBACK").encode())
        sock.sendall(b"X\x00\x00\x00\x04")
        assert sock.recv(65536) == b""


@pytest.mark.parametrize("target", ["direct", "server"])
def test_psycopg_rollback_after_its_backend_was_terminated(target, server, upstream, caplog):
    """psycopg's own scenario, repeated: the user's exception comes through every time and the
    failed rollback is only logged."""
    dsn = upstream.dsn if target == "direct" else server.dsn()
    caplog.set_level(logging.WARNING, logger="psycopg")
    with psycopg.connect(dsn, autocommit=True) as admin:
        for _ in range(200):
            caplog.clear()
            with pytest.raises(ZeroDivisionError):
                with psycopg.connect(dsn) as conn:
                    with conn.transaction():
                        conn.execute("SELECT 1")
                        admin.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
                        1 / 0
            assert [r.levelno for r in caplog.records] == [logging.WARNING]
            assert "in rollback" in caplog.records[0].message
