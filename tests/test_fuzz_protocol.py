"""Fuzzing the wire protocol: the sans-IO decoders offline, then the live server against PostgreSQL.

Offline: random and mutated bytes go through protocol.framing.Framer and every decode function;
the only exceptions allowed are the project's protocol errors (PgError and its ProtocolViolation),
never IndexError, struct.error, UnicodeDecodeError, RecursionError...

Live: the same hostile byte strings (random garbage after startup, truncated messages, absurd
lengths, messages in the wrong state, Bind with a wrong parameter count or format codes) are sent
to pgml-server and, directly, to the upstream PostgreSQL. Where PostgreSQL answers with an
ErrorResponse the server answers with the same SQLSTATE class; where PostgreSQL closes the
connection, the server closes it too. Nothing hangs (every read has a deadline) and a healthy
client running queries concurrently never sees an error.

Counts (printed with -s): FUZZ_COUNTS holds the number of inputs each test fed.
"""
from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from protocol import backend, frontend, types
from protocol import messages as m
from protocol.errors import PgError
from protocol.framing import Framer

from pgml_server import __version__

_I32 = struct.Struct("!i")
FUZZ_COUNTS: dict[str, int] = {}

# Offline examples per property; the live examples are slower (two connections each).
OFFLINE = int(os.environ.get("PGML_FUZZ_OFFLINE", "1000"))
LIVE = int(os.environ.get("PGML_FUZZ_LIVE", "60"))
# The live examples are the same on every run unless PGML_FUZZ_RANDOM=1: a test suite must not
# go red on a new random find (explore with PGML_FUZZ_RANDOM=1 PGML_FUZZ_LIVE=1500, or `make fuzz`
# for the decoders, and add each find as a scenario in tests/test_pipeline_raw.py).
DERANDOMIZE = os.environ.get("PGML_FUZZ_RANDOM", "") != "1"


def _count(name: str) -> None:
    FUZZ_COUNTS[name] = FUZZ_COUNTS.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    total = sum(FUZZ_COUNTS.values())
    print(f"\nfuzzed inputs: {total} {dict(sorted(FUZZ_COUNTS.items()))}")


# ------------------------------------------------------------------ offline: decoders

FRONTEND_TYPES = sorted(frontend._FRONTEND)
BACKEND_TYPES = sorted(backend._BACKEND)
TYPE_OIDS = sorted({*types.ARRAY_OF, *types.ELEMENT_OF})


def _valid_frontend_messages() -> list[bytes]:
    return [
        m.Query("SELECT 1").encode(),
        m.Parse("s", "SELECT $1::int", [23]).encode(),
        m.Bind("p", "s", [0, 1], [b"1", None], [1]).encode(),
        m.Describe("S", "s").encode(),
        m.Execute("p", 10).encode(),
        m.Close("P", "p").encode(),
        m.Sync().encode(),
        m.Flush().encode(),
        m.CopyData(b"1\t2\n").encode(),
        m.CopyDone().encode(),
        m.CopyFail("no").encode(),
        m.FunctionCall(1, [0], [b"x"], 0).encode(),
        m.PasswordMessage(b"secret\x00").encode(),
    ]


def _valid_backend_messages() -> list[bytes]:
    return [
        m.AuthenticationOk().encode(),
        m.AuthenticationMD5Password(b"abcd").encode(),
        m.AuthenticationSASL(["SCRAM-SHA-256"]).encode(),
        m.ParameterStatus("client_encoding", "UTF8").encode(),
        m.BackendKeyData(1, b"\x00\x01\x02\x03").encode(),
        m.ReadyForQuery("I").encode(),
        m.RowDescription([m.FieldDescription("a", 0, 0, 23, 4, -1, 0)]).encode(),
        m.DataRow([b"1", None]).encode(),
        m.CommandComplete("SELECT 1").encode(),
        m.ErrorResponse({"S": "ERROR", "C": "42601", "M": "x"}).encode(),
        m.NotificationResponse(1, "ch", "pl").encode(),
        m.ParameterDescription([23, 25]).encode(),
        m.CopyInResponse(0, [0, 0]).encode(),
        m.NegotiateProtocolVersion(0, ["_pq_.x"]).encode(),
        m.FunctionCallResponse(b"1").encode(),
    ]


def _mutate(data: bytes, rnd: random.Random) -> bytes:
    """Flip, drop, insert or truncate bytes of a valid message, often keeping the header sane."""
    b = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(5)
        if op == 0 and b:
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        elif op == 1 and b:
            del b[rnd.randrange(len(b)):][: rnd.randint(1, 8)]
        elif op == 2:
            b[rnd.randint(0, len(b)):rnd.randint(0, len(b))] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
        elif op == 3:
            b = b[: rnd.randint(0, len(b))]
        else:
            b.extend(rnd.choice([b"\x00", b"\xff\xff\xff\xff", b"\x80\x00", b"\xc3"]))
    return bytes(b)


def _allowed(fn, *args):
    try:
        return fn(*args)
    except PgError:
        return None


@settings(max_examples=OFFLINE, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(FRONTEND_TYPES), st.binary(max_size=200), st.randoms(use_true_random=False))
def test_decode_frontend_never_crashes(msg_type, junk, rnd):
    _count("decode_frontend")
    _allowed(m.decode_frontend, msg_type, junk)
    # and a mutated valid message of any type, decoded as what its (possibly mangled) type byte says
    raw = _mutate(rnd.choice(_valid_frontend_messages()), rnd)
    if len(raw) >= 5:
        _allowed(m.decode_frontend, raw[0], memoryview(raw)[5:])
    _allowed(m.SASLInitialResponse.decode, junk)
    _allowed(m.SASLResponse.decode, junk)


@settings(max_examples=OFFLINE, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(BACKEND_TYPES), st.binary(max_size=200), st.randoms(use_true_random=False))
def test_decode_backend_never_crashes(msg_type, junk, rnd):
    _count("decode_backend")
    _allowed(m.decode_backend, msg_type, junk)
    raw = _mutate(rnd.choice(_valid_backend_messages()), rnd)
    if len(raw) >= 5:
        _allowed(m.decode_backend, raw[0], memoryview(raw)[5:])
    _allowed(m.decode_authentication, junk)


@settings(max_examples=OFFLINE, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=120), st.sampled_from([0, 80877103, 80877104, 80877102, 196608, 196610]))
def test_decode_startup_packet_never_crashes(junk, code):
    _count("decode_startup_packet")
    _allowed(m.decode_startup_packet, junk)
    _allowed(m.decode_startup_packet, _I32.pack(code) + junk)
    # a StartupMessage with random parameter bytes (bad UTF-8, missing NULs, odd counts)
    _allowed(m.decode_startup_packet, _I32.pack(196608) + junk.replace(b"\x00", b"") + b"\x00")


@settings(max_examples=OFFLINE, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(TYPE_OIDS), st.binary(max_size=100), st.booleans())
def test_decode_types_never_crash(oid, junk, binary):
    _count("types.decode")
    _allowed(types.decode, oid, junk, binary)
    if binary and oid in types.ELEMENT_OF:
        # a plausible array header with random dims, lower bounds and element oids
        header = struct.pack("!iii", 1, 0, types.ELEMENT_OF[oid]) + junk[:8]
        _allowed(types.decode, oid, header + junk[8:], True)


@settings(max_examples=OFFLINE, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.binary(max_size=40), max_size=12), st.booleans(), st.integers(4, 1 << 20))
def test_framer_never_crashes(chunks, startup, max_size):
    _count("Framer")
    framer = Framer(startup=startup, max_message_size=max_size)
    try:
        for chunk in chunks:
            framer.feed(chunk)
            for frame in framer.frames():
                # every frame's raw bytes are its header plus payload
                assert len(frame.raw) - len(frame.payload) in (4, 5)
                if startup and not framer.typed:
                    _allowed(m.decode_startup_packet, frame.payload)
                    framer.set_typed()
                else:
                    _allowed(m.decode_frontend, frame.type, frame.payload)
    except PgError:
        pass


@settings(max_examples=OFFLINE, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.randoms(use_true_random=False), st.integers(1, 7))
def test_framer_split_points_do_not_matter(rnd, pieces):
    """A valid stream cut anywhere frames into the same messages."""
    _count("Framer.split")
    msgs = [rnd.choice(_valid_frontend_messages()) for _ in range(rnd.randint(1, 6))]
    stream = b"".join(msgs)
    cuts = sorted(rnd.randint(0, len(stream)) for _ in range(pieces))
    framer = Framer()
    got = []
    last = 0
    for cut in [*cuts, len(stream)]:
        framer.feed(stream[last:cut])
        last = cut
        got.extend(bytes(f.raw) for f in framer.frames())
    assert got == msgs


@pytest.mark.parametrize("length", [0, 3, -1, -0x80000000, 0x7FFFFFFF, (1 << 30) + 1])
def test_framer_absurd_lengths(length):
    framer = Framer()
    framer.feed(b"Q" + _I32.pack(length))
    with pytest.raises(PgError) as info:
        framer.next_frame()
    assert info.value.sqlstate == "08P01"
    startup = Framer(startup=True)
    startup.feed(_I32.pack(length) + b"\x00\x03\x00\x00")
    with pytest.raises(PgError):
        startup.next_frame()


# ------------------------------------------------------------------ live: server vs PostgreSQL

END_MARK = "fuzz-end"
LOCAL = "SELECT pgml.version()"
STAND_IN = f"SELECT '{__version__}'::text AS version"
TRAILER = m.Sync().encode() + m.Query(f"SELECT '{END_MARK}'").encode()


class Outcome:
    """What a connection answered to hostile bytes followed by TRAILER."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []     # (severity, sqlstate) of each ErrorResponse
        self.closed = False                          # the peer closed the connection
        self.waiting = False                         # neither closed nor answered: waits for more bytes
        self.healthy_after = False                   # the trailer's query answered

    def key(self) -> tuple:
        """What must agree: SQLSTATE classes up to and including the first FATAL, closed or not.

        An invalid message length makes PostgreSQL close without a word (COMMERROR) where the
        server sends FATAL 08P01 first; so FATAL errors count by their presence only."""
        classes = []
        for severity, code in self.errors:
            if severity in ("FATAL", "PANIC"):
                break
            classes.append(code[:2])
        return tuple(classes), self.closed, self.healthy_after

    def __repr__(self) -> str:
        return f"Outcome(errors={self.errors}, closed={self.closed}, waiting={self.waiting}, ok={self.healthy_after})"


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(m.StartupMessage({"user": "postgres", "database": "postgres"}).encode())
    framer = Framer()
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed during startup")
        framer.feed(data)
        for frame in framer.frames():
            if frame.type == ord("E"):
                raise ConnectionError(bytes(frame.payload))
            if frame.type == ord("Z"):
                return sock


def probe(port: int, data: bytes, wait: float = 1.0) -> Outcome:
    """Send data then TRAILER on a fresh connection; collect errors until the trailer's answer,
    a close, or `wait` seconds of silence (the peer waits for the rest of a message)."""
    out = Outcome()
    sock = _connect(port)
    framer = Framer()
    try:
        try:
            sock.sendall(data + TRAILER)
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(wait)
        saw_mark = False
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                out.waiting = True
                return out
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                out.closed = True
                return out
            framer.feed(chunk)
            try:
                for frame in framer.frames():
                    if frame.type == ord("E"):
                        f = m.ErrorResponse.decode(frame.payload).fields
                        out.errors.append((f.get("V", f.get("S")), f.get("C")))
                    elif frame.type == ord("D") and END_MARK.encode() in bytes(frame.payload):
                        saw_mark = True
                    elif frame.type == ord("Z") and saw_mark:
                        out.healthy_after = True
                        return out
            except PgError:
                out.closed = True
                return out
    finally:
        sock.close()


def stand_in(data: bytes) -> bytes:
    """What PostgreSQL gets instead of a local pgml.version() call: a forwarded statement that
    PostgreSQL answers the same way (as in test_pipeline_raw), length words re-encoded."""
    if LOCAL.encode() not in data:
        return data
    out, pos = [], 0
    while pos + 5 <= len(data):
        length = _I32.unpack_from(data, pos + 1)[0]
        end = pos + 1 + length
        if length < 4 or end > len(data):
            break
        out.append(_msg(data[pos:pos + 1], data[pos + 5:end].replace(LOCAL.encode(), STAND_IN.encode())))
        pos = end
    return b"".join(out) + data[pos:]


def compare(server, upstream, data: bytes, label: str) -> tuple[Outcome, Outcome]:
    """The same bytes to PostgreSQL and to pgml-server, in parallel; their outcomes must agree."""
    _count(label)
    results: dict[str, Outcome] = {}
    sent = {"pg": stand_in(data), "srv": data}
    threads = [threading.Thread(target=lambda k, p: results.__setitem__(k, probe(p, sent[k])), args=(k, p))
               for k, p in (("pg", upstream.port), ("srv", server.port))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    pg, srv = results["pg"], results["srv"]
    why = f"{label}: {data[:120]!r}\n  postgres: {pg}\n  server:   {srv}"
    if pg.closed and srv.closed:
        # Known difference: when a protocol violation ends the connection, the server closes at
        # once and the answers to messages pipelined *before* the bad one may be lost; PostgreSQL
        # sends them first. What it does send must be what PostgreSQL sends.
        srv_errors, pg_errors = srv.key()[0], pg.key()[0]
        assert pg_errors[:len(srv_errors)] == srv_errors, why
    else:
        assert srv.key() == pg.key(), why
    return pg, srv


class Healthy:
    """A client running queries through the server in the background; it must never fail."""

    def __init__(self, server) -> None:
        self.server = server
        self.errors: list[BaseException] = []
        self.count = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with psycopg.connect(self.server.dsn(), autocommit=True) as conn:
                while not self.stop.is_set():
                    assert conn.execute("SELECT %s::int + 1", (self.count,)).fetchone() == (self.count + 1,)
                    with conn.transaction():
                        conn.execute("SELECT count(*) FROM generate_series(1, 100)")
                    self.count += 1
                    time.sleep(0.005)
        except BaseException as exc:   # noqa: BLE001 - reported by the test
            self.errors.append(exc)

    def __enter__(self) -> "Healthy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.errors, self.errors
        assert self.count > 0


@pytest.fixture(scope="module")
def healthy(server):
    with Healthy(server) as h:
        yield h


def _msg(t: bytes, body: bytes) -> bytes:
    return t + _I32.pack(len(body) + 4) + body


WRONG_STATE = {
    "bind before parse": m.Bind("", "nosuch", [], [], []).encode(),
    "bind unnamed without parse": m.Bind("", "", [], [], []).encode(),
    "execute unknown portal": m.Execute("nosuch", 0).encode(),
    "describe missing statement": m.Describe("S", "nosuch").encode(),
    "describe missing portal": m.Describe("P", "nosuch").encode(),
    "close missing statement": m.Close("S", "nosuch").encode(),
    "copydata when not copying": m.CopyData(b"1\t2\n").encode(),
    "copydone when not copying": m.CopyDone().encode(),
    "copyfail when not copying": m.CopyFail("x").encode(),
    "bind too few params": m.Parse("", "SELECT $1::int + $2::int", []).encode()
    + m.Bind("", "", [], [b"1"], []).encode() + m.Execute("", 0).encode(),
    "bind too many params": m.Parse("", "SELECT $1::int", []).encode()
    + m.Bind("", "", [], [b"1", b"2"], []).encode() + m.Execute("", 0).encode(),
    "bind bad param format code": m.Parse("", "SELECT $1::int", []).encode()
    + m.Bind("", "", [7], [b"1"], []).encode() + m.Execute("", 0).encode(),
    "bind negative format code": m.Parse("", "SELECT $1::int", []).encode()
    + m.Bind("", "", [-1], [b"1"], []).encode(),
    "bind format count mismatch": m.Parse("", "SELECT $1::int, $2::int", []).encode()
    + m.Bind("", "", [0, 1, 0], [b"1", b"2"], []).encode(),
    "bind bad result format": m.Parse("", "SELECT 1", []).encode()
    + m.Bind("", "", [], [], [5]).encode() + m.Execute("", 0).encode(),
    "bind binary int wrong size": m.Parse("", "SELECT $1::int", [23]).encode()
    + m.Bind("", "", [1], [b"\x00\x01"], []).encode() + m.Execute("", 0).encode(),
    "bind invalid utf8 text": m.Parse("", "SELECT $1::text", [25]).encode()
    + m.Bind("", "", [0], [b"\xff\xfe"], []).encode() + m.Execute("", 0).encode(),
    "parse of pgml then bind wrong count": m.Parse("s1", LOCAL, []).encode()
    + m.Bind("", "s1", [], [b"1"], []).encode() + m.Execute("", 0).encode(),
    "pgml local describe missing portal": m.Parse("s2", LOCAL, []).encode()
    + m.Describe("P", "nosuch").encode(),
    "execute after failed parse": m.Parse("", "SELEC 1", []).encode() + m.Bind("", "", [], [], []).encode()
    + m.Execute("", 0).encode(),
    "duplicate local named statement": m.Parse("s3", LOCAL, []).encode() + m.Sync().encode()
    + m.Parse("s3", LOCAL, []).encode() + m.Sync().encode(),
    "local bind error then duplicate": m.Parse("s4", LOCAL, []).encode() + m.Bind("", "s4", [], [b"1"], []).encode()
    + m.Sync().encode() + m.Parse("s4", LOCAL, []).encode(),
    "duplicate named statement": m.Parse("dup", "SELECT 1", []).encode() + m.Parse("dup", "SELECT 2", []).encode(),
    "truncated parse": _msg(b"P", b"s\x00SELECT 1"),
    "parse with param count lie": _msg(b"P", b"\x00SELECT 1\x00" + struct.pack("!h", 5) + b"\x00\x00\x00\x17"),
    "bind with value length lie": _msg(b"B", b"\x00\x00\x00\x00\x00\x01" + _I32.pack(100) + b"ab\x00\x00"),
    "execute negative max rows": m.Parse("", "SELECT 1", []).encode() + m.Bind("", "", [], [], []).encode()
    + _msg(b"E", b"\x00" + _I32.pack(-5)),
    "query without NUL": _msg(b"Q", b"SELECT 1"),
    "query with embedded NUL": _msg(b"Q", b"SELECT 1\x00; SELECT 2\x00"),
    "query invalid utf8": _msg(b"Q", b"SELECT '\xc3\x28'\x00"),
    "describe bad kind": _msg(b"D", b"X\x00"),
    "close bad kind": _msg(b"C", b"Z\x00"),
    "sync with body": _msg(b"S", b"junk"),
    "function call unknown oid": m.FunctionCall(1, [], [], 0).encode(),
    "password message after startup": m.PasswordMessage(b"x\x00").encode(),
    "startup message after startup": m.StartupMessage({"user": "postgres"}).encode(),
    "unknown message type": _msg(b"y", b"abc"),
    "nul message type": _msg(b"\x00", b""),
    "terminate with body": _msg(b"X", b"zz"),
}

ABSURD_LENGTHS = [0, 3, -1, -0x80000000, 0x7FFFFFFF, (1 << 30), 20000]


@pytest.mark.parametrize("name", sorted(WRONG_STATE))
def test_wrong_state_like_postgres(server, upstream, healthy, name):
    compare(server, upstream, WRONG_STATE[name], "wrong_state")


@pytest.mark.parametrize("type_byte", list(b"QPBDESHXdcfF"))
@pytest.mark.parametrize("length", ABSURD_LENGTHS)
def test_absurd_lengths_like_postgres(server, upstream, healthy, type_byte, length):
    pg, srv = compare(server, upstream, bytes([type_byte]) + _I32.pack(length), "absurd_length")


def _pool() -> list[bytes]:
    return [*_valid_frontend_messages(), *WRONG_STATE.values(), m.Query("SELECT 1/0").encode(),
            m.Query("BEGIN").encode(), m.Query("ROLLBACK").encode(), m.Query(LOCAL).encode(),
            m.Parse("", LOCAL, []).encode(), m.Bind("", "", [], [], []).encode(),
            m.Execute("", 0).encode(), m.Sync().encode()]


@settings(max_examples=LIVE, deadline=None, suppress_health_check=list(HealthCheck), derandomize=DERANDOMIZE,
          phases=[Phase.explicit, Phase.reuse, Phase.generate])   # no shrinking: each try costs sockets
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=6), st.randoms(use_true_random=False),
       st.integers(0, 3))
def test_fuzzed_sequences_like_postgres(server, upstream, healthy, picks, rnd, mutations):
    pool = _pool()
    msgs = [pool[i % len(pool)] for i in picks]
    # mutate some messages, keeping their length word consistent so the stream stays framed
    for _ in range(mutations):
        i = rnd.randrange(len(msgs))
        if b"pgml" in msgs[i]:
            continue   # a local statement keeps its text, so PostgreSQL's stand-in stays comparable
        body = _mutate(msgs[i][5:], rnd)
        msgs[i] = _msg(msgs[i][:1], body)
    data = b"".join(msgs)
    compare(server, upstream, data, "fuzzed_sequence")


@settings(max_examples=LIVE, deadline=None, suppress_health_check=list(HealthCheck), derandomize=DERANDOMIZE,
          phases=[Phase.explicit, Phase.reuse, Phase.generate])   # no shrinking: each try costs sockets
@given(st.binary(min_size=1, max_size=64), st.sampled_from(list(b"QPBDESHdcfFX")), st.integers(0, 60))
def test_random_bytes_like_postgres(server, upstream, healthy, junk, type_byte, length):
    # half raw garbage, half a known type byte with a small length and a random body
    if length % 2:
        data = junk
    else:
        data = bytes([type_byte]) + _I32.pack(4 + len(junk)) + junk
    compare(server, upstream, data, "random_bytes")


def test_garbage_startup_packets(server, upstream, healthy):
    """Junk instead of a StartupMessage: both close (with or without a FATAL), never hang."""
    cases = [b"\x00\x00\x00\x08\x00\x00\x00\x00", b"\x00\x00\x00\x04", b"\xff\xff\xff\xff",
             b"\x00\x00\x27\x15" + b"\x00" * 16, b"GET / HTTP/1.1\r\n\r\n",
             b"\x00\x00\x00\x09\x00\x03\x00\x00\x00",
             b"\x00\x00\x00\x10\x00\x03\x00\x00user\x00\xff\xfe\x00\x00",
             b"\x00\x00\x00\x0c\x04\xd2\x16\x2e\x00\x00\x00\x01"]        # a CancelRequest of nothing
    for data in cases:
        _count("startup_garbage")
        got = {}
        for name, port in (("pg", upstream.port), ("srv", server.port)):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(data)
                sock.settimeout(5)
                buf = b""
                try:
                    while chunk := sock.recv(4096):
                        buf += chunk
                    got[name] = ("closed", buf[:1])
                except socket.timeout:
                    got[name] = ("waiting", buf[:1])
                except ConnectionResetError:
                    got[name] = ("closed", buf[:1])
        assert got["srv"][0] == got["pg"][0], (data, got)
