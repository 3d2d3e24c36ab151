"""Raw-protocol pipelines: the same bytes to the upstream and to pgml-server give the same answers.

Local pgml.version() statements are checked against a forwarded `SELECT '<version>'::text AS version`
stand-in that PostgreSQL answers the same way, so the whole answer stream can be compared.
"""
from __future__ import annotations

import socket
import struct

import pytest

from protocol import messages as m
from protocol.framing import Framer

from pgml_server import __version__

_I32 = struct.Struct("!i")
STAND_IN = f"SELECT '{__version__}'::text AS version"
LOCAL = "SELECT pgml.version()"


class RawClient:
    def __init__(self, host: str, port: int, user: str = "postgres") -> None:
        self.sock = socket.create_connection((host, port), timeout=20)
        self.framer = Framer()
        self.sock.sendall(m.StartupMessage({"user": user, "database": "postgres"}).encode())
        self.read_until_ready()

    def send(self, *msgs) -> None:
        self.sock.sendall(b"".join(x.encode() if hasattr(x, "encode") else x for x in msgs))

    def read_until_ready(self, count: int = 1) -> list[tuple[str, bytes]]:
        out = []
        while count:
            frame = self.framer.next_frame()
            if frame is None:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed")
                self.framer.feed(data)
                continue
            t = chr(frame.type)
            if t in "SKN":              # ParameterStatus, BackendKeyData, notices differ by nature
                continue
            out.append((t, bytes(frame.payload)))
            if t == "Z":
                count -= 1
        return out

    def close(self) -> None:
        self.send(m.Terminate())
        self.sock.close()


def normalise(answers: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Error messages keep SQLSTATE and message; positions and source locations differ by query text."""
    out = []
    for t, payload in answers:
        if t == "E":
            fields = m.ErrorResponse.decode(payload).fields
            payload = (fields.get("C", "") + ":" + fields.get("M", "")).encode()
        elif t == "T":
            fields = m.RowDescription.decode(payload).fields
            payload = repr([(f.name, f.type_oid, f.format) for f in fields]).encode()
        out.append((t, payload))
    return out


def extended(sql: str, name: str = "", portal: str = "", formats=()) -> list:
    return [m.Parse(name, sql, []), m.Bind(portal, name, [], [], list(formats)), m.Describe("P", portal),
            m.Execute(portal, 0)]


def _raw(kind: bytes, body: bytes) -> bytes:
    """A message with any body, malformed ones included."""
    return kind + _I32.pack(len(body) + 4) + body


SCENARIOS = {
    "mixed pipeline": lambda v: [*extended("SELECT 1"), *extended(v), *extended("SELECT 2"), m.Sync()],
    "error until sync": lambda v: [*extended("SELECT 1/0"), *extended(v), *extended("SELECT 3"), m.Sync(),
                                   *extended(v), m.Sync()],
    "local then error": lambda v: [*extended(v), *extended("SELECT 1/0"), *extended(v), m.Sync(),
                                   *extended("SELECT 5"), m.Sync()],
    "transaction block": lambda v: [m.Query("BEGIN"), *extended(v), *extended("SELECT 1/0"), m.Sync(),
                                    m.Query("SELECT 1"), m.Query("ROLLBACK"), m.Query(v)],
    "named statement reused": lambda v: [m.Parse("s1", v, []), m.Describe("S", "s1"), m.Sync(),
                                         *[x for _ in range(3) for x in (m.Bind("", "s1", [], [], [1]),
                                                                         m.Execute("", 0))],
                                         m.Close("S", "s1"), m.Sync()],
    "named portal": lambda v: [m.Parse("s2", v, []), m.Bind("p2", "s2", [], [], []), m.Describe("P", "p2"),
                               m.Execute("p2", 0), m.Close("P", "p2"), m.Sync()],
    "simple queries": lambda v: [m.Query(v), m.Query("SELECT 1; " + v), m.Query(v + "; SELECT 1/0; SELECT 2")],
    "flush without sync": lambda v: [*extended("SELECT 7"), *extended(v), m.Flush(), m.Sync()],
    # Found by fuzzing: in a failed transaction, Parse of a taken name is 25P02, not 42P05.
    "duplicate name in failed transaction": lambda v: [
        m.Parse("s3", v, []), m.Sync(), m.Query("BEGIN"), m.Query("SELECT 1/0"),
        m.Parse("s3", v, []), m.Sync(), m.Query(v), m.Query("ROLLBACK"), m.Parse("s3", v, []), m.Sync()],
    # Found by fuzzing: a Parse/Bind skipped after an earlier error stores no statement or portal.
    "statement skipped after an error": lambda v: [
        *extended("SELECT 1/0"), m.Parse("s5", v, []), m.Bind("p5", "s5", [], [], []), m.Sync(),
        m.Parse("s5", v, []), m.Bind("", "s5", [], [], []), m.Execute("", 0), m.Sync()],
    "unnamed statement skipped after an error": lambda v: [
        m.Parse("", v, []), m.Sync(), *extended("SELECT 1/0"), m.Parse("", v, []), m.Sync(),
        m.Bind("", "", [], [], []), m.Execute("", 0), m.Sync()],
    # A new name refused with 25P02 in a failed transaction is not stored either.
    "new name refused in a failed transaction": lambda v: [
        m.Query("BEGIN"), m.Query("SELECT 1/0"), m.Parse("s7", v, []), m.Sync(), m.Query("ROLLBACK"),
        m.Parse("s7", v, []), m.Bind("", "s7", [], [], []), m.Execute("", 0), m.Sync()],
    # Found by fuzzing: with a local statement in the session, a Close or Describe with an unknown
    # subtype or a name that is not UTF-8 gets PostgreSQL's own answer.
    "garbage close and describe": lambda v: [
        m.Parse("s8", v, []), m.Sync(), _raw(b"C", b"\xa7\xc0\x03name\x00"), m.Sync(),
        _raw(b"D", b"S\xc0\x03\x00"), m.Sync(), _raw(b"C", b"Xs8\x00"), m.Sync(),
        m.Bind("", "s8", [], [], []), m.Execute("", 0), m.Sync()],
    # Found by fuzzing: a malformed Parse (here truncated, with a query that is not UTF-8) is
    # answered as PostgreSQL reads it (22021 here), also in a session that has a local statement.
    "malformed parse beside a local statement": lambda v: [
        m.Parse("", v, []), _raw(b"P", b"\x00S\xb1\x80\x00"), m.Describe("S", ""), m.Sync(),
        _raw(b"P", b"\x00SELECT 1\x00\x00\x05"), m.Sync(), m.Bind("", "", [], [], []), m.Execute("", 0), m.Sync()],
    # Found by fuzzing: a malformed Bind after a forwarded Parse, in a session with a local
    # statement, is answered (08P01) instead of waiting for an upstream answer never asked for.
    "malformed bind after a forwarded parse": lambda v: [
        m.Parse("", v, []), m.Parse("s9", "SELECT $1::int", [23]), _raw(b"B", b""), m.Sync(),
        *extended("SELECT 9"), m.Sync()],
    "portal skipped after an error": lambda v: [
        m.Parse("s6", v, []), m.Sync(), m.Query("BEGIN"), *extended("SELECT 1/0"), m.Bind("p6", "s6", [], [], []),
        m.Sync(), m.Query("ROLLBACK"), m.Query("BEGIN"), m.Describe("P", "p6"), m.Sync(), m.Query("ROLLBACK")],
}


def ready_count(msgs) -> int:
    return sum(1 for x in msgs if isinstance(x, (m.Sync, m.Query)))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_same_answers_as_upstream(scenario, server, upstream):
    direct = RawClient(upstream.host, upstream.port)
    proxied = RawClient(server.host, server.port)
    try:
        want_msgs = SCENARIOS[scenario](STAND_IN)
        got_msgs = SCENARIOS[scenario](LOCAL)
        direct.send(*want_msgs)
        proxied.send(*got_msgs)
        want = normalise(direct.read_until_ready(ready_count(want_msgs)))
        got = normalise(proxied.read_until_ready(ready_count(got_msgs)))
        assert [t for t, _ in got] == [t for t, _ in want]
        assert got == want
    finally:
        direct.close()
        proxied.close()


def test_garbage_closes_only_that_connection(server):
    healthy = RawClient(server.host, server.port)
    bad = socket.create_connection((server.host, server.port), timeout=10)
    bad.sendall(m.StartupMessage({"user": "postgres", "database": "postgres"}).encode())
    bad_client = RawClient.__new__(RawClient)
    bad_client.sock, bad_client.framer = bad, Framer()
    bad_client.read_until_ready()
    bad.sendall(b"Q" + _I32.pack(0x7FFFFFFF) + b"xx")
    answers = []
    while True:
        data = bad.recv(65536)
        if not data:
            break
        answers.append(data)
    assert b"".join(answers)[:1] == b"E"
    healthy.send(m.Query("SELECT 42"))
    assert ("C", b"SELECT 1\x00") in healthy.read_until_ready()
    healthy.close()


def test_flush_with_a_body_is_answered_like_postgres(server, upstream):
    """Found by fuzzing: a Flush with a body is malformed; PostgreSQL answers 08P01 and skips to
    Sync, the Query after it included. The server must not wait for that Query's answer (a local
    statement after it would wait behind it for ever)."""
    answers = []
    for (host, port), v in (((upstream.host, upstream.port), STAND_IN), ((server.host, server.port), LOCAL)):
        client = RawClient(host, port)
        try:
            client.send(_raw(b"H", b"~"), m.Query("SELECT 2"), m.Sync(), m.Query("SELECT 3"), m.Query(v))
            answers.append(normalise(client.read_until_ready(3)))
        finally:
            client.close()
    assert answers[1] == answers[0]
    assert [t for t, _ in answers[0]] == ["E", "Z", "T", "D", "C", "Z", "T", "D", "C", "Z"]
