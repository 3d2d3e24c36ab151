"""The compiled relay core (pgml_server/proxy/_relay.c) against the pure-Python relay.

Two layers. With socket pairs and no server, the relay thread itself: what it forwards, what it
relays back, and the exact state it hands back (FIFO kinds, transaction status, unrelayed bytes)
when a message needs the server. Then end to end: the same raw-protocol traffic sent straight
to the upstream, through a server relaying natively and through one with PGML_NATIVE_RELAY=0
gets the same answers, byte for byte where PostgreSQL's answer is deterministic, while
pgml.relay_stats() shows the native server really relayed it.
"""
from __future__ import annotations

import select
import socket
import struct
import threading
import time

import psycopg
import pytest

from protocol import messages as m
from protocol.framing import Framer

from pgml_server import __version__
from pgml_server.proxy import relay as relay_mod
from tests import test_pipeline_raw as raw_scenarios

needs_core = pytest.mark.skipif(not relay_mod.available(),
                                reason="the compiled relay core is not built (no C compiler at install, or not Linux)")

_I32 = struct.Struct("!i")


# ---------------------------------------------------------------- the thread alone (socket pairs)

class Pair:
    """A relay with one attached 'session': our ends of a client and an upstream socket pair."""

    def __init__(self, tx="I", unsynced=False, dirty=False) -> None:
        from pgml_server.proxy import _relay
        self.core = _relay.Relay()
        self.client, client_side = socket.socketpair()
        self.upstream, upstream_side = socket.socketpair()
        for s in (client_side, upstream_side):
            s.setblocking(False)
        self._keep = (client_side, upstream_side)
        self.core.attach(7, client_side.fileno(), upstream_side.fileno(), tx, unsynced, dirty)

    def returned(self, timeout=5.0):
        """The state handed back (waits for the thread's notification)."""
        r, _, _ = select.select([self.core.notify_fd], [], [], timeout)
        assert r, "the relay did not hand the session back"
        states = self.core.collect()
        assert len(states) == 1
        return dict(zip(("sid", "reason", "kinds", "tx", "unsynced", "dirty", "relay_left", "client_in",
                         "upstream_in", "to_client", "to_upstream"), states[0]))

    def close(self) -> None:
        self.core.detach(7)
        self.core.close()
        for s in (self.client, self.upstream, *self._keep):
            s.close()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(5)
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "closed"
        data += chunk
    return data


def received(sock: socket.socket) -> bytes:
    """Everything the relay has written to `sock` so far (it is handed back: nothing more comes)."""
    sock.settimeout(0.2)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, socket.timeout):
        pass
    return data


def long_data_row(size: int = 500_000) -> bytes:
    """A DataRow of one text value of `size` bytes (longer than the thread holds whole)."""
    return b"D" + _I32.pack(4 + 2 + 4 + size) + b"\x00\x01" + _I32.pack(size) + b"x" * size


def ready(status=b"I") -> bytes:
    return b"Z\x00\x00\x00\x05" + status


@pytest.fixture
def pair():
    p = Pair()
    yield p
    p.close()


@needs_core
def test_core_forwards_client_messages_and_relays_answers(pair):
    sent = m.Query("SELECT 1").encode() + m.Parse("", "SELECT 2", []).encode() + m.Sync().encode()
    pair.client.sendall(sent)
    assert recv_exactly(pair.upstream, len(sent)) == sent
    answers = (m.CommandComplete("SELECT 1").encode() + ready() + b"1\x00\x00\x00\x04" + ready(b"T"))
    pair.upstream.sendall(answers)
    assert recv_exactly(pair.client, len(answers)) == answers
    state = pair.core.detach(7)
    # everything answered: nothing owed; the last ReadyForQuery's status
    assert state[2] == b"" and state[3] == "T" and state[4] == 0
    stats = pair.core.stats()
    assert stats["client_messages"] == 3 and stats["upstream_messages"] == 4 and stats["attached"] == 0


@needs_core
def test_core_hands_back_at_a_pgml_message_with_the_fifo(pair):
    first = m.Query("SELECT 1").encode() + m.Parse("", "SELECT 2", []).encode()
    local = m.Query("SELECT PgMl.version()").encode()        # any case
    pair.client.sendall(first + local + m.Query("SELECT 3").encode())
    state = pair.returned()
    assert state["reason"] == relay_mod._relay.CLIENT_MESSAGE
    # the messages before it went on (or wait to), the rest is the server's to route
    assert received(pair.upstream) + state["to_upstream"] == first       # sent, or handed back to send
    assert state["client_in"] == local + m.Query("SELECT 3").encode()
    assert state["kinds"] == bytes([2, 0])              # SIMPLE, EXT: answers still owed
    assert state["unsynced"] == 1 and state["tx"] == "I"


@needs_core
def test_core_hands_back_at_an_error_response_unrelayed(pair):
    pair.client.sendall(m.Query("SELECT 1/0").encode())
    recv_exactly(pair.upstream, len(m.Query("SELECT 1/0").encode()))
    error = m.ErrorResponse({"S": "ERROR", "C": "22012", "M": "division by zero"}).encode()
    row_desc = b"T\x00\x00\x00\x06\x00\x00"
    pair.upstream.sendall(row_desc + error + ready())
    state = pair.returned()
    assert state["reason"] == relay_mod._relay.UPSTREAM_MESSAGE
    assert received(pair.client) + state["to_client"] == row_desc
    assert state["upstream_in"] == error + ready()      # Python sees the error and what follows
    assert state["kinds"] == bytes([2])


@needs_core
def test_core_relays_a_long_message_in_pieces():
    p = Pair()
    try:
        p.client.sendall(m.Query("SELECT big").encode())
        recv_exactly(p.upstream, len(m.Query("SELECT big").encode()))
        row = long_data_row()
        answer = row + m.CommandComplete("SELECT 1").encode() + ready()
        threading.Thread(target=p.upstream.sendall, args=(answer,)).start()
        assert recv_exactly(p.client, len(answer)) == answer
        state = p.core.detach(7)
        assert state[2] == b"" and state[6] == 0            # nothing owed, nothing left to pass
    finally:
        p.close()


@needs_core
def test_core_hands_back_on_end_of_file_and_on_terminate(pair):
    pair.client.sendall(m.Terminate().encode())
    state = pair.returned()
    assert state["reason"] == relay_mod._relay.CLIENT_MESSAGE and state["client_in"] == m.Terminate().encode()
    assert relay_mod.RelayCore.cooldown_after(state["reason"]) == relay_mod.COOLDOWN
    p = Pair()
    try:
        p.upstream.close()
        state = p.returned()
        assert state["reason"] == relay_mod._relay.UPSTREAM_EOF
        assert relay_mod.RelayCore.cooldown_after(state["reason"]) is None     # never attached again
    finally:
        p.core.close()


@needs_core
def test_core_waits_for_the_rest_of_a_split_message(pair):
    msg = m.Query("SELECT 'split'").encode()
    for i in range(len(msg)):
        pair.client.sendall(msg[i:i + 1])
        time.sleep(0.001)
    assert recv_exactly(pair.upstream, len(msg)) == msg
    # a pgml message split in two is seen whole before it is judged
    local = m.Query("SELECT pgml.version()").encode()
    pair.client.sendall(local[:12])
    time.sleep(0.05)
    pair.client.sendall(local[12:])
    state = pair.returned()
    assert state["client_in"] == local


@needs_core
def test_core_detach_of_an_unreturned_session_and_close_with_nothing_attached():
    p = Pair(tx="T", unsynced=True, dirty=True)
    state = p.core.detach(7)
    assert state[1] == relay_mod._relay.DETACHED and state[3] == "T" and state[4] == 1 and state[5] == 1
    assert p.core.detach(7) is None
    p.core.close()
    p.core.close()                                          # twice: harmless


# ---------------------------------------------------------------- end to end, both relays

@pytest.fixture(scope="module")
def relays(upstream, tmp_path_factory):
    """A server relaying natively (when built) and one relaying in Python, on the same upstream."""
    from tests.fix_servers import ServerProcess
    logs = tmp_path_factory.mktemp("relays")
    native = ServerProcess(upstream.dsn, log_path=logs / "native.log")
    python = ServerProcess(upstream.dsn, log_path=logs / "python.log", env={relay_mod.ENV_SWITCH: "0"})
    yield native, python
    native.stop()
    python.stop()


class Wire:
    """A raw client that keeps every message (notices and notifications too), for comparisons."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=20)
        self.framer = Framer()
        self.sock.sendall(m.StartupMessage({"user": "postgres", "database": "postgres"}).encode())
        self.pid = None
        for t, payload in self.until("Z"):
            if t == "K":
                self.pid = _I32.unpack_from(payload)[0]

    def send(self, data: bytes, *, bytewise: bool = False) -> None:
        if bytewise:
            for i in range(len(data)):
                self.sock.sendall(data[i:i + 1])
        else:
            self.sock.sendall(data)

    def until(self, last: str, count: int = 1) -> list[tuple[str, bytes]]:
        out = []
        while count:
            frame = self.framer.next_frame()
            if frame is None:
                data = self.sock.recv(65536)
                if not data:
                    out.append(("<closed>", b""))
                    return out
                self.framer.feed(data)
                continue
            t = chr(frame.type)
            out.append((t, bytes(frame.payload)))
            if t == last:
                count -= 1
        return out

    def close(self) -> None:
        try:
            self.sock.sendall(m.Terminate().encode())
        except OSError:
            pass
        self.sock.close()


def comparable(answers):
    """What may differ between PostgreSQL and a proxy by nature: ParameterStatus/BackendKeyData are
    not sent after startup; error positions and source lines depend on the query text."""
    out = []
    for t, payload in answers:
        if t in ("E", "N"):
            f = m.ErrorResponse.decode(payload).fields
            payload = f"{f.get('S')}:{f.get('C')}:{f.get('M')}".encode()
        out.append((t, payload))
    return out


def pipeline(*sqls: str) -> bytes:
    return b"".join(m.Parse("", s, []).encode() + m.Bind("", "", [], [], []).encode() + m.Describe("P", "").encode()
                    + m.Execute("", 0).encode() for s in sqls) + m.Sync().encode()


def q(*sqls: str) -> bytes:
    return b"".join(m.Query(s).encode() for s in sqls)


STAND_IN = f"SELECT '{__version__}'::text AS version"
BYTEWISE = "bytewise"

# name -> f(v) -> [(packet, (last message type to read up to, how many))]; v is the statement that
# is local through the server (pgml.version()) or PostgreSQL's stand-in for it.
FLOWS = {
    "simple queries": lambda v: [(q("SELECT 1", "SELECT generate_series(1, 500)", "SELECT 1; SELECT 2"), ("Z", 3))],
    "extended pipeline": lambda v: [(pipeline("SELECT 1", "SELECT 'two'", "SELECT 3::int8"), ("Z", 1))],
    "errors, then plain traffic again": lambda v: [
        (q("SELECT 1/0"), ("Z", 1)), *[(q(f"SELECT {i}"), ("Z", 1)) for i in range(12)],
        (pipeline("SELECT 1", "SELECT 1/0", "SELECT 3"), ("Z", 1)), (q("SELECT 4"), ("Z", 1))],
    "a pgml statement inside a packet": lambda v: [(q("SELECT 1", v, "SELECT 2"), ("Z", 3)),
                                                   (pipeline("SELECT 5", v, "SELECT 6"), ("Z", 1)),
                                                   *[(q(f"SELECT {i}"), ("Z", 1)) for i in range(10)]],
    "transaction status": lambda v: [
        (q("BEGIN", "SELECT 1", "COMMIT", "BEGIN", "SELECT 1/0", "SELECT 1", "ROLLBACK"), ("Z", 7)),
        (pipeline("SELECT 1"), ("Z", 1))],
    "large rows": lambda v: [(q("SELECT repeat('x', 300000)", "SELECT repeat('y', 70000)",
                                "SELECT repeat('z', 100) FROM generate_series(1, 5000)"), ("Z", 3))],
    "a message byte by byte": lambda v: [((BYTEWISE, pipeline("SELECT 'slow'", "SELECT 2")), ("Z", 1)),
                                         (q("SELECT 3"), ("Z", 1))],
    "notices": lambda v: [(q("DO $$BEGIN RAISE NOTICE 'hello %', 1; END$$", "SELECT 1"), ("Z", 2))],
    "flush, then sync": lambda v: [(pipeline("SELECT 7")[:-5] + m.Flush().encode(), ("C", 1)),
                                   (m.Sync().encode(), ("Z", 1))],
    "copy out and in": lambda v: [
        (q("CREATE TEMP TABLE relay_copy (a int, b text)"), ("Z", 1)),
        (q("COPY relay_copy FROM STDIN"), ("G", 1)),
        (m.CopyData(b"1\tone\n").encode() + m.CopyData(b"2\ttwo\n").encode() + m.CopyDone().encode(), ("Z", 1)),
        (q("COPY (SELECT * FROM relay_copy ORDER BY a) TO STDOUT", "SELECT count(*) FROM relay_copy"), ("Z", 2))],
    "a burst of a thousand queries": lambda v: [(q(*[f"SELECT {i}" for i in range(1000)]), ("Z", 1000))],
    "terminating one's own backend": lambda v: [
        (q("SELECT 1"), ("Z", 1)), (q("SELECT pg_terminate_backend(pg_backend_pid())"), ("<closed>", 1))],
}


def run_flow(host: str, port: int, flow) -> list:
    wire = Wire(host, port)
    got = []
    try:
        for packet, (last, count) in flow:
            if isinstance(packet, tuple):           # (BYTEWISE, packet)
                wire.send(packet[1], bytewise=True)
            else:
                wire.send(packet)
            got += wire.until(last, count)
    finally:
        wire.close()
    return comparable(got)


def relay_stats(srv) -> dict:
    with psycopg.connect(srv.dsn(), autocommit=True) as conn:
        cur = conn.execute("SELECT * FROM pgml.relay_stats()")
        return dict(zip([d.name for d in cur.description], cur.fetchone()))


@pytest.mark.parametrize("name", list(FLOWS))
def test_both_relays_answer_like_the_upstream(name, relays, upstream):
    native, python = relays
    want = run_flow(upstream.host, upstream.port, FLOWS[name](STAND_IN))
    before = relay_stats(native) if relay_mod.available() else None
    for srv in (native, python):
        assert run_flow(srv.host, srv.port, FLOWS[name]("SELECT pgml.version()")) == want, srv
    if before is not None:
        after = relay_stats(native)
        assert after["relay"] == "native"
        assert after["client_messages"] > before["client_messages"]      # the thread carried it
        assert after["attaches"] > before["attaches"]
    assert relay_stats(python)["relay"] == "python"


@pytest.mark.parametrize("scenario", sorted(raw_scenarios.SCENARIOS))
def test_python_relay_passes_the_raw_pipeline_scenarios(scenario, relays, upstream):
    """The raw-pipeline scenarios (tests/test_pipeline_raw.py runs them on the default server)
    give the same answers with the pure-Python relay."""
    _, python = relays
    raw_scenarios.test_same_answers_as_upstream(scenario, python, upstream)


def test_notifications_reach_an_idle_relayed_session(relays):
    for srv in relays:
        listener = Wire(srv.host, srv.port)
        try:
            listener.send(q("LISTEN relay_channel"))
            listener.until("Z")
            with psycopg.connect(srv.dsn(), autocommit=True) as other:
                other.execute("NOTIFY relay_channel, 'hello'")
            got = listener.until("A")
            _, payload = got[-1]
            pid = _I32.unpack_from(payload)[0]
            assert payload[4:] == b"relay_channel\x00hello\x00" and pid > 0
            listener.send(q("SELECT 1"))
            assert listener.until("Z")[-1] == ("Z", b"I")
        finally:
            listener.close()


@needs_core
def test_a_lost_client_still_cancels_its_running_query(relays):
    native, _ = relays
    wire = Wire(native.host, native.port)
    wire.send(q("SELECT pg_sleep(30) AS relay_lost_client"))
    time.sleep(0.3)
    wire.sock.close()                         # no Terminate: the connection just goes
    deadline = time.monotonic() + 10
    with psycopg.connect(native.dsn(), autocommit=True) as conn:
        while time.monotonic() < deadline:
            n = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%relay_lost_client%' "
                             "AND pid <> pg_backend_pid()").fetchone()[0]
            if n == 0:
                break
            time.sleep(0.1)
    assert n == 0, "the abandoned query still runs upstream"


@needs_core
def test_cancel_reaches_a_relayed_session(relays):
    native, _ = relays
    with psycopg.connect(native.dsn(), autocommit=True) as conn:
        threading.Timer(0.5, conn.cancel).start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(20)")
        assert conn.execute("SELECT 1").fetchone() == (1,)


@needs_core
def test_shutdown_takes_relayed_sessions_back(upstream, tmp_path):
    from tests.fix_servers import ServerProcess
    srv = ServerProcess(upstream.dsn, log_path=tmp_path / "server.log")
    idle = Wire(srv.host, srv.port)
    busy = Wire(srv.host, srv.port)
    try:
        idle.send(q("SELECT 1"))
        idle.until("Z")
        busy.send(q("SELECT pg_sleep(1)"))
        time.sleep(0.2)
        srv.stop()
        # the running statement finished (shutdown lets it), then both got PostgreSQL's FATAL
        got = busy.until("<closed>")
        assert [t for t, _ in got][:3] == ["T", "D", "C"]
        for wire in (idle, busy):
            tail = comparable(got if wire is busy else wire.until("<closed>"))
            assert (b"FATAL:57P01:terminating connection due to administrator command" in
                    [p for t, p in tail if t == "E"]), tail
    finally:
        idle.sock.close()
        busy.sock.close()
        if srv.proc.poll() is None:
            srv.stop()


def test_relay_switch_and_availability_are_reported(relays):
    native, python = relays
    assert relay_stats(python)["relay"] == "python"
    assert relay_stats(native)["relay"] == ("native" if relay_mod.available() else "python")
