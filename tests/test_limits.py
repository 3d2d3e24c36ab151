"""Limits that keep the server's memory bounded: message size, startup packet size, startup
timeout, maximum number of clients (SQLSTATE 53300 beyond it)."""
from __future__ import annotations

import socket
import struct
import time

import psutil
import psycopg
import pytest

from protocol import messages as m
from protocol.framing import Framer

_I32 = struct.Struct("!i")


def _startup(sock: socket.socket) -> Framer:
    sock.sendall(m.StartupMessage({"user": "postgres", "database": "postgres"}).encode())
    framer = Framer()
    while True:
        data = sock.recv(65536)
        assert data, "closed during startup"
        framer.feed(data)
        if any(f.type == ord("Z") for f in framer.frames()):
            return framer


def _read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """All bytes until the peer closes; fails if it does not close within `timeout` seconds."""
    start = time.monotonic()
    sock.settimeout(timeout)
    buf = b""
    try:
        while chunk := sock.recv(65536):
            buf += chunk
    except ConnectionResetError:
        pass
    except socket.timeout:
        pytest.fail(f"the server did not close the connection within {timeout}s (got {buf[:200]!r})")
    return buf, time.monotonic() - start


def _errors(buf: bytes) -> list[dict]:
    framer = Framer()
    framer.feed(buf)
    out = []
    try:
        for f in framer.frames():
            if f.type == ord("E"):
                out.append(m.ErrorResponse.decode(f.payload).fields)
    except Exception:   # noqa: BLE001 - a partial trailing message after close
        pass
    return out


def _healthy(srv) -> None:
    with psycopg.connect(srv.dsn(), autocommit=True, connect_timeout=10) as conn:
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)


def test_max_message_size(start_server):
    srv = start_server("--max-message-mb", "1")
    rss_before = psutil.Process(srv.proc.pid).memory_info().rss
    # just under the limit: answered
    with psycopg.connect(srv.dsn(), autocommit=True) as conn:
        text = "x" * 900_000
        assert conn.execute("SELECT length(%s::text)", (text,)).fetchone() == (900_000,)
    # over the limit: FATAL 08P01 at the header, before the body is buffered
    for size in (2 << 20, 64 << 20):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            _startup(sock)
            sock.sendall(b"Q" + _I32.pack(size + 4))
            try:   # the server closes while we still send: that is the point
                sock.sendall(b"x" * min(size, 4 << 20))
            except (BrokenPipeError, ConnectionResetError):
                pass
            buf, _ = _read_until_closed(sock, 10)
        errors = _errors(buf)
        assert errors and errors[0]["C"] == "08P01" and errors[0]["S"] == "FATAL", errors
        assert "invalid message length" in errors[0]["M"]
    grown = psutil.Process(srv.proc.pid).memory_info().rss - rss_before
    assert grown < 32 << 20, f"server RSS grew by {grown >> 20} MiB after refused 64 MiB messages"
    _healthy(srv)


def test_default_message_limit_is_postgres(server, upstream):
    """Lengths PostgreSQL refuses (over 1 GiB - 2, or a Sync over 10000 bytes) close the connection
    at once, both on PostgreSQL and on the server; nothing is buffered."""
    for port in (upstream.port, server.port):
        for msg in (b"Q" + _I32.pack(0x3FFFFFFF), b"S" + _I32.pack(10001), b"\x01" + _I32.pack(8)):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                _startup(sock)
                sock.sendall(msg)
                _, took = _read_until_closed(sock, 5)
                assert took < 5
    _healthy(server)


def test_startup_packet_size(server, upstream):
    # PostgreSQL's MAX_STARTUP_PACKET_LENGTH: a longer startup packet is refused at its length word
    for port in (upstream.port, server.port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(_I32.pack(100_000) + _I32.pack(196608))
            _, took = _read_until_closed(sock, 5)
            assert took < 5
    # a big but legal one (many options, ~9 kB) is accepted
    params = {"user": "postgres", "database": "postgres", "application_name": "a" * 60,
              "options": "-c search_path=" + ",".join(f"s{i}" for i in range(1550))}
    packet = m.StartupMessage(params).encode()
    assert 8000 < len(packet) < 10000
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(packet)
        sock.settimeout(10)
        framer = Framer()
        while not any(f.type == ord("Z") for f in framer.frames()):
            data = sock.recv(65536)
            assert data, "closed"
            framer.feed(data)


def test_startup_timeout(start_server):
    srv = start_server("--startup-timeout", "1")
    # connects and sends nothing; sends half a startup packet; sends an SSLRequest and stops
    partial = m.StartupMessage({"user": "postgres"}).encode()[:7]
    for first in (b"", partial, m.SSLRequest().encode()):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            if first:
                sock.sendall(first)
            buf, took = _read_until_closed(sock, 8)
        assert 0.5 < took < 6, took
        errors = _errors(buf.lstrip(b"N"))
        assert not errors or errors[0]["S"] == "FATAL"
    # a normal client, slower than nothing but well within the timeout, is unaffected
    _healthy(srv)
    with psycopg.connect(srv.dsn(), autocommit=True) as conn:
        time.sleep(1.5)      # the timeout is for startup only, not for an idle session
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_max_clients(start_server):
    srv = start_server("--max-clients", "3")
    conns = [psycopg.connect(srv.dsn(), autocommit=True) for _ in range(3)]
    try:
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(srv.dsn(), autocommit=True, connect_timeout=10)
        assert "too many clients" in str(info.value)
        # the SQLSTATE on the wire
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.sendall(m.StartupMessage({"user": "postgres", "database": "postgres"}).encode())
            buf, _ = _read_until_closed(sock, 5)
        errors = _errors(buf)
        assert errors and errors[0]["C"] == "53300" and errors[0]["S"] == "FATAL", errors
        assert errors[0]["M"] == "sorry, too many clients already"
        for conn in conns:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        # one leaves: a new client is accepted (the close reaches the server asynchronously)
        conns.pop().close()
        deadline = time.monotonic() + 5
        while True:
            try:
                conns.append(psycopg.connect(srv.dsn(), autocommit=True, connect_timeout=10))
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, "no slot came free after a client left"
                time.sleep(0.1)
        assert conns[-1].execute("SELECT 2").fetchone() == (2,)
    finally:
        for conn in conns:
            conn.close()
