"""The one-packet path of a prepared pgml.predict (LocalRunner.answer_packet): a packet that is
exactly Bind + Execute + Sync is answered whole, without the message loop. Its answers must be the
loop's, byte for byte: each scenario is sent once as one packet (the fast path when it applies)
and once split after the Bind (which the loop always handles), on connections in the same state."""
from __future__ import annotations

import socket
import struct

import psycopg
import pytest

from protocol import messages as m
from protocol import types
from protocol.framing import Framer

FEATURES = [0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, -0.002, 0.02, -0.02]
PROJECT = "one-packet"


@pytest.fixture(scope="module")
def trained(server):
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        conn.execute(f"SELECT * FROM pgml.train('{PROJECT}', 'regression', 'pgml.diabetes', 'target', 'linear')")
        # "a model id": this project's deployed model (id 1 is whichever model an earlier test made)
        model_id = conn.execute("SELECT id FROM pgml.deployed_models WHERE name = %s", (PROJECT,)).fetchone()[0]
    SCENARIOS["a model id"] = dict(b=bind(project=str(model_id)))
    return server


class Raw:
    """A raw client connection: send bytes, read everything up to ReadyForQuery as raw bytes."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.framer = Framer()
        self.sock.sendall(m.StartupMessage({"user": "postgres", "database": "postgres"}).encode())
        self.read()

    def read(self) -> bytes:
        got = []
        while True:
            frame = self.framer.next_frame()
            if frame is None:
                self.framer.feed(self.sock.recv(65536))
                continue
            if frame.type in b"SKN":            # ParameterStatus, BackendKeyData, notices
                continue
            got.append(bytes(frame.raw))
            if frame.type == ord("Z"):
                return b"".join(got)

    def send(self, *packets: bytes) -> bytes:
        for packet in packets:
            self.sock.sendall(packet)
        return self.read()

    def close(self) -> None:
        self.sock.sendall(m.Terminate().encode())
        self.sock.close()


def float8_array(values) -> bytes:
    return struct.pack("!iiIii", 1, 0, types.FLOAT8, len(values), 1) + b"".join(
        struct.pack("!id", 8, v) for v in values)


def bind(project=PROJECT, features=FEATURES, *, portal="", statement="s1", result_format=1, params=None):
    values = params if params is not None else [project.encode(), float8_array(features)]
    return m.Bind(portal, statement, [0, 1], values, [result_format]).encode()


def call(raw: Raw, bind_bytes: bytes, *, split: bool, portal="") -> bytes:
    rest = m.Execute(portal, 0).encode() + m.Sync().encode()
    return raw.send(bind_bytes, rest) if split else raw.send(bind_bytes + rest)


def prepared(port: int) -> Raw:
    raw = Raw(port)
    raw.send(m.Parse("s1", "SELECT pgml.predict($1, $2::float8[])", [types.TEXT, types.FLOAT8_ARRAY]).encode()
             + m.Sync().encode())
    return raw


SCENARIOS = {
    "binary result": dict(b=bind()),
    "text result": dict(b=bind(result_format=0)),
    "named portal": dict(b=bind(portal="p1"), portal="p1"),
    "Execute of another portal": dict(b=bind(portal="p1"), portal=""),
    "unknown project": dict(b=bind(project="no-such-project")),
    "wrong number of features": dict(b=bind(features=[1.0, 2.0])),
    "NULL features": dict(b=bind(params=[PROJECT.encode(), None])),
    "a model id": dict(b=bind(project="1")),
    "bad array bytes": dict(b=bind(params=[PROJECT.encode(), b"\x00\x00\x00\x01garbage"])),
    "wrong parameter count": dict(b=bind(params=[PROJECT.encode()])),
    "unknown statement": dict(b=bind(statement="nope")),
}


ERRORS = {"unknown project", "wrong number of features", "NULL features", "bad array bytes", "wrong parameter count",
          "unknown statement"}


@pytest.mark.parametrize("name", list(SCENARIOS))
@pytest.mark.parametrize("state", ["idle", "in a transaction block", "in a failed transaction"])
def test_one_packet_answers_are_the_message_loops(trained, name, state):
    answers = []
    for split in (False, True):
        raw = prepared(trained.port)
        try:
            assert call(raw, bind(), split=split).endswith(m.ready_for_query("I"))   # warm: cached, authorized
            if state != "idle":
                raw.send(m.Query("BEGIN").encode())
            if state == "in a failed transaction":
                assert b"22012" in raw.send(m.Query("SELECT 1/0").encode())
            if state != "idle":
                # (a Sync after the simple queries: a packet after forwarded traffic that no Sync
                # closed goes through the loop, whose Sync the upstream must then answer)
                assert raw.send(m.Sync().encode()).startswith(b"Z")
            scenario = SCENARIOS[name]
            answers.append(call(raw, scenario["b"], split=split, portal=scenario.get("portal", "")))
            # and the session goes on as it would have: the same next answer
            answers.append(raw.send(m.Query("SELECT 1").encode()))
        finally:
            raw.close()
    one_packet, loop = answers[:2], answers[2:]
    assert one_packet == loop
    failed = b"SERROR\x00" in one_packet[0]
    expected_status = b"I" if state == "idle" else b"E" if failed or state == "in a failed transaction" else b"T"
    assert one_packet[0].endswith(b"Z\x00\x00\x00\x05" + expected_status)
    assert failed == (state == "in a failed transaction" or name in ERRORS)


def test_one_packet_values_are_the_models(trained):
    """The fast answer carries the prediction: the same real as the simple protocol's."""
    raw = prepared(trained.port)
    try:
        fast = call(raw, bind(), split=False)
        fast_text = call(raw, bind(result_format=0), split=False)
    finally:
        raw.close()
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        expected = conn.execute(f"SELECT pgml.predict('{PROJECT}', ARRAY{FEATURES}::float8[])").fetchone()[0]
    row = fast[fast.index(b"D"):]
    value = struct.unpack_from("!f", row, 11)[0]
    assert value == pytest.approx(expected, rel=1e-6)
    assert fast.startswith(m.BindComplete().encode()) and m.command_complete("SELECT 1") in fast
    assert str(expected).encode()[:6] in fast_text


def _binds():
    yield m.Bind("", "s1", [0, 1], [b"p", float8_array(FEATURES)], [1]).encode()
    yield m.Bind("p1", "__asyncpg_stmt_1__", [1], [b"\x00\x01", None, b""], []).encode()
    yield m.Bind("", "", [], [], [0, 1, 1]).encode()
    yield m.Bind("ünïcode", "s", [], [b"x"], []).encode()          # not ASCII: left to m.Bind.decode


def _garbled(encoded: bytes):
    yield encoded
    for cut in range(5, len(encoded)):
        yield encoded[:cut]                                          # truncated anywhere
    yield encoded + b"\x00"                                          # trailing byte
    for at in range(5, len(encoded)):
        yield encoded[:at] + bytes([encoded[at] ^ 0xFF]) + encoded[at + 1:]   # one byte flipped


def test_the_lean_bind_reader_agrees_with_the_protocol_layers_or_declines():
    """runner._plain_bind reads what m.Bind.decode reads, or returns None (never a different
    message, never one m.Bind.decode refuses), over truncated, padded and bit-flipped Binds."""
    from pgml_server.sql.runner import _plain_bind
    from protocol.errors import PgError
    checked = declined = 0
    for encoded in _binds():
        for variant in _garbled(encoded):
            payload = variant[5:]
            try:
                expected = m.Bind.decode(payload)
            except (PgError, ValueError, UnicodeDecodeError):
                expected = None
            try:
                got = _plain_bind(variant, 5, len(variant))
            except Exception:                                        # answer_packet declines on any exception
                got = None
            if got is None:
                declined += 1
            else:
                assert got == expected, variant
                checked += 1
    assert checked > 4 and declined > 100
