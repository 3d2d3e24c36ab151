"""Stress tests of the compiled relay core (pgml_server/proxy/_relay.c) through a real server.

Backpressure (a client pipelining megabytes without reading), many concurrent sessions mixing
plain traffic with what must be handed back to Python, and clients vanishing at random points
while attached. Each compares with what PostgreSQL itself answers, or checks that the server
still serves and leaves nothing running upstream.
"""
from __future__ import annotations

import hashlib
import random
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
from tests.test_relay_core import Wire, q

pytestmark = pytest.mark.skipif(not relay_mod.available(), reason="the compiled relay core is not built")

_I32 = struct.Struct("!i")


@pytest.fixture(scope="module")
def native(upstream, tmp_path_factory):
    from tests.fix_servers import ServerProcess
    srv = ServerProcess(upstream.dsn, log_path=tmp_path_factory.mktemp("stress") / "native.log")
    yield srv
    srv.stop()


def stats(srv) -> dict:
    with psycopg.connect(srv.dsn(), autocommit=True) as conn:
        cur = conn.execute("SELECT * FROM pgml.relay_stats()")
        return dict(zip([d.name for d in cur.description], cur.fetchone()))


def wait_detached(srv, timeout=5.0) -> dict:
    """Stats once only our own stats connection is attached (or none)."""
    deadline = time.monotonic() + timeout
    while True:
        s = stats(srv)
        if s["attached"] <= 1 or time.monotonic() > deadline:
            return s
        time.sleep(0.05)


# ---------------------------------------------------------------- (a) backpressure

def pipelined_without_reading(host, port, payload: bytes, answers: int, wait: float) -> tuple[int, str, dict]:
    """Send `payload` from a thread while nobody reads for `wait` seconds, then read every answer:
    (bytes, digest, message counts)."""
    wire = Wire(host, port)
    sock = wire.sock
    sock.settimeout(30)
    done = threading.Event()
    errors = []

    def send():
        try:
            sock.sendall(payload)
        except OSError as exc:          # pragma: no cover - reported below
            errors.append(exc)
        done.set()

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    time.sleep(wait)                     # the answers pile up: flow control both ways
    framer = Framer()
    digest = hashlib.sha256()
    total = 0
    counts: dict[str, int] = {}
    ready = 0
    while ready < answers:
        data = sock.recv(1 << 20)
        assert data, "the connection closed before every answer came"
        total += len(data)
        digest.update(data)
        framer.feed(data)
        while (frame := framer.next_frame()) is not None:
            t = chr(frame.type)
            counts[t] = counts.get(t, 0) + 1
            ready += t == "Z"
    sender.join(20)
    assert done.is_set() and not errors, errors
    wire.close()
    return total, digest.hexdigest(), counts


def test_a_pipeline_of_20_mb_sent_without_reading(native, upstream):
    pad = "x" * 8000
    n = 2400
    payload = b"".join(m.Query(f"SELECT {i}, repeat('a', 3000) /* {pad} */").encode() for i in range(n))
    assert len(payload) > 19_000_000
    want = pipelined_without_reading(upstream.host, upstream.port, payload, n, 0.5)
    before = stats(native)
    got = pipelined_without_reading(native.host, native.port, payload, n, 1.5)
    after = wait_detached(native)
    assert got == want
    assert want[2]["Z"] == n and want[2]["D"] == n
    assert after["client_messages"] - before["client_messages"] >= n     # the thread carried it
    # and the session still works afterwards: the server is responsive
    assert run_one(native) == [(1,)]


def test_a_mixed_pipeline_sent_without_reading(native, upstream):
    """The same, with pgml statements and errors in it: the session is handed back and attached
    again many times with megabytes in flight, and answers in PostgreSQL's order."""
    pad = "y" * 8000
    n = 1500

    def payload(version: str) -> bytes:
        sqls = []
        for i in range(n):
            if i % 97 == 5:
                sqls.append(version)
            elif i % 131 == 7:
                sqls.append("SELECT 1/0")
            else:
                sqls.append(f"SELECT {i}, repeat('b', 2000) /* {pad} */")
        return b"".join(m.Query(s).encode() for s in sqls)

    stand_in = f"SELECT '{__version__}'::text AS version"
    want = pipelined_without_reading(upstream.host, upstream.port, payload(stand_in), n, 0.3)
    before = stats(native)
    got = pipelined_without_reading(native.host, native.port, payload("SELECT pgml.version()"), n, 1.0)
    after = wait_detached(native)
    assert got[2] == want[2]
    assert got[:2] == want[:2]
    assert after["handbacks"] > before["handbacks"]


def run_one(srv):
    with psycopg.connect(srv.dsn(), autocommit=True) as conn:
        return conn.execute("SELECT 1").fetchall()


# ---------------------------------------------------------------- (b) many sessions

def worker(srv, idx: int, rounds: int, failures: list, notified: list, barrier: threading.Barrier) -> None:
    rnd = random.Random(idx)
    try:
        with psycopg.connect(srv.dsn(), autocommit=True) as conn:
            listener = idx % 10 == 0
            if listener:
                conn.execute(f"LISTEN stress_{idx}")
            barrier.wait(10)
            for r in range(rounds):
                choice = rnd.randrange(7)
                if choice == 0:
                    assert conn.execute("SELECT %s::int + 1", (r,)).fetchone() == (r + 1,)
                elif choice == 1:
                    with pytest.raises(psycopg.errors.DivisionByZero):
                        conn.execute("SELECT 1/0")
                    assert conn.execute("SELECT 'after error'").fetchone() == ("after error",)
                elif choice == 2:
                    assert conn.execute("SELECT pgml.version()").fetchone() == (__version__,)
                elif choice == 3:
                    with conn.transaction():
                        conn.execute("CREATE TEMP TABLE IF NOT EXISTS t_stress (a int)")
                        conn.execute("INSERT INTO t_stress VALUES (%s)", (r,))
                    assert conn.execute("SELECT count(*) FROM t_stress WHERE a = %s", (r,)).fetchone()[0] >= 1
                elif choice == 4:
                    rows = conn.execute("SELECT g, repeat('r', 200) FROM generate_series(1, %s) g",
                                        (rnd.randrange(1, 2000),)).fetchall()
                    assert rows[-1][0] == len(rows)
                elif choice == 5:
                    target = rnd.randrange(0, 50, 10)
                    conn.execute(f"NOTIFY stress_{target}, 'from {idx}'")
                else:
                    with conn.pipeline():
                        curs = [conn.execute("SELECT %s::text", (f"p{k}",)) for k in range(5)]
                    assert [c.fetchone()[0] for c in curs] == [f"p{k}" for k in range(5)]
            if listener:
                conn.execute("SELECT 1")
                notified.append(sum(1 for _ in conn.notifies(timeout=0.5, stop_after=1000)))
    except Exception as exc:            # reported by the main thread
        failures.append(f"worker {idx}: {exc!r}")


def test_fifty_concurrent_sessions(native):
    before = stats(native)
    failures: list = []
    notified: list = []
    barrier = threading.Barrier(50)
    threads = [threading.Thread(target=worker, args=(native, i, 40, failures, notified, barrier)) for i in range(50)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a session hangs"
    assert not failures, failures[:5]
    after = wait_detached(native)
    assert after["attaches"] - before["attaches"] >= 50
    assert after["handbacks"] - before["handbacks"] >= 50
    assert after["attached"] <= 1, after
    assert time.monotonic() - t0 < 60


# ---------------------------------------------------------------- (c) clients that vanish

MARK = "relay_vanish_marker"


def vanish(srv, seed: int) -> None:
    rnd = random.Random(seed)
    wire = Wire(srv.host, srv.port)
    wire.send(q("SELECT 1"))
    wire.until("Z")
    kind = rnd.randrange(6)
    if kind == 0:       # mid-message
        msg = m.Query(f"SELECT pg_sleep(30) AS {MARK}").encode()
        wire.sock.sendall(msg[:rnd.randrange(1, len(msg))])
    elif kind == 1:     # a running statement, then a half message
        wire.sock.sendall(m.Query(f"SELECT pg_sleep(30) AS {MARK}").encode() + b"Q\x00\x00")
    elif kind == 2:     # a big answer being relayed, not read
        wire.sock.sendall(m.Query("SELECT repeat('v', 1000) FROM generate_series(1, 20000)").encode())
    elif kind == 3:     # an extended batch without Sync
        wire.sock.sendall(m.Parse("", f"SELECT pg_sleep(30) AS {MARK}", []).encode()
                          + m.Bind("", "", [], [], []).encode() + m.Execute("", 0).encode() + m.Flush().encode())
    elif kind == 4:     # Terminate while an answer is owed
        wire.sock.sendall(m.Query(f"SELECT pg_sleep(30) AS {MARK}").encode() + m.Terminate().encode())
    else:               # a large message, partly sent
        big = m.Query("SELECT '" + "z" * 500_000 + "'").encode()
        wire.sock.sendall(big[:rnd.randrange(10, len(big) - 1)])
    time.sleep(rnd.random() * 0.05)
    if rnd.random() < 0.5:      # a reset rather than a FIN
        wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wire.sock.close()


BACKENDS = ("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
            "AND pid <> pg_backend_pid()")


def client_backends(srv) -> int:
    with psycopg.connect(srv.dsn(), autocommit=True) as conn:
        return conn.execute(BACKENDS).fetchone()[0]


def test_clients_that_vanish_while_attached(native):
    before = stats(native)
    baseline = client_backends(native)          # the server's own connections (registry, listeners)
    threads = [threading.Thread(target=vanish, args=(native, i)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert run_one(native) == [(1,)]
    deadline = time.monotonic() + 10
    with psycopg.connect(native.dsn(), autocommit=True) as conn:
        while True:
            left = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()",
                                (f"%{MARK}%",)).fetchone()[0]
            backends = conn.execute(BACKENDS).fetchone()[0] - baseline
            if (left == 0 and backends <= 0) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert left == 0, "an abandoned statement still runs upstream"
    assert backends <= 0, "an upstream connection of a vanished client is still open"
    after = wait_detached(native)
    assert after["attached"] <= 1, after
    assert after["handbacks"] - before["handbacks"] >= 40


# ---------------------------------------------------------------- the thread alone: flow control, no spinning

def cpu_seconds() -> float:
    import resource
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def idle_cpu(seconds=0.5) -> float:
    start = cpu_seconds()
    time.sleep(seconds)
    return cpu_seconds() - start


def send_until_blocked(sock, data: bytes, quiet=0.3) -> int:
    """Send until the peer has stopped taking bytes for `quiet` seconds; how many went."""
    sock.setblocking(False)
    sent, last = 0, time.monotonic()
    while sent < len(data) and time.monotonic() - last < quiet:
        try:
            sent += sock.send(data[sent:])
            last = time.monotonic()
        except BlockingIOError:
            time.sleep(0.01)
    return sent


def test_core_backpressure_neither_spins_nor_loses_bytes():
    from tests.test_relay_core import Pair, recv_exactly
    p = Pair()
    try:
        # the upstream answers 4 MB the client does not read: the thread stops reading the upstream
        notice = m.NoticeResponse({"S": "NOTICE", "C": "00000", "M": "n" * 4000}).encode()
        blob = notice * (4_000_000 // len(notice))
        sent = send_until_blocked(p.upstream, blob)
        assert sent < len(blob), "nothing held the upstream back"
        assert idle_cpu() < 0.2, "the relay thread spins while flow control holds a side"
        # the client reads: everything arrives in order, the rest too
        p.upstream.setblocking(True)
        t = threading.Thread(target=p.upstream.sendall, args=(blob[sent:],))
        t.start()
        assert recv_exactly(p.client, len(blob)) == blob
        t.join(5)
        # the same the other way: the upstream does not read 4 MB of Flushes
        flushes = m.Flush().encode() * 800_000
        sent = send_until_blocked(p.client, flushes)
        assert sent < len(flushes)
        assert idle_cpu() < 0.2
        # the client gives up altogether while it is not being read: handed back, no spin
        p.client.close()
        state = p.returned()
        assert state["reason"] in (relay_mod._relay.CLIENT_ERROR, relay_mod._relay.CLIENT_EOF)
        assert idle_cpu() < 0.2
    finally:
        p.core.detach(7)
        p.core.close()


def test_core_hands_back_in_the_middle_of_a_long_upstream_message():
    from tests.test_relay_core import Pair, long_data_row, recv_exactly
    p = Pair()
    try:
        p.client.sendall(m.Query("SELECT big").encode())
        recv_exactly(p.upstream, len(m.Query("SELECT big").encode()))
        row = long_data_row()
        p.upstream.sendall(row[:200_000])
        got = recv_exactly(p.client, 200_000)
        local = m.Query("SELECT pgml.version()").encode()
        p.client.sendall(local)
        state = p.returned()
        assert state["reason"] == relay_mod._relay.CLIENT_MESSAGE
        assert state["relay_left"] == len(row) - 200_000 and state["upstream_in"] == b""
        assert got + state["to_client"] == row[:200_000]
        assert state["kinds"] == bytes([2]) and state["client_in"] == local
    finally:
        p.core.close()


def test_shutdown_while_a_large_answer_waits_for_a_slow_client(upstream, tmp_path):
    """SIGTERM while the thread holds megabytes for a client that does not read: the session
    comes back with them, and the client still gets every row before the FATAL."""
    from tests.fix_servers import ServerProcess
    srv = ServerProcess(upstream.dsn, log_path=tmp_path / "server.log")
    wire = Wire(srv.host, srv.port)
    try:
        n = 20000
        wire.send(q(f"SELECT g, repeat('s', 1000) FROM generate_series(1, {n}) g"))
        time.sleep(0.5)                     # flow control holds the answer in the relay
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        time.sleep(0.5)
        got = wire.until("<closed>")
        stopper.join(30)
        types = [t for t, _ in got]
        assert types.count("D") == n
        assert types[-4:-1] == ["C", "Z", "E"], types[-5:]
        assert b"57P01" in got[-2][1]
    finally:
        wire.sock.close()
        if srv.proc.poll() is None:
            srv.stop()


def test_backend_terminated_by_another_session_while_attached(native, upstream):
    for srv in (upstream, native):
        wire = Wire(srv.host, srv.port)
        try:
            wire.send(q("SELECT 1"))
            wire.until("Z")
            time.sleep(0.1)                  # attached now (native)
            with psycopg.connect(f"postgresql://postgres@{upstream.host}:{upstream.port}/postgres",
                                 autocommit=True) as other:
                assert other.execute("SELECT pg_terminate_backend(%s)", (wire.pid,)).fetchone() == (True,)
            got = wire.until("<closed>")
            fields = [m.ErrorResponse.decode(p).fields for t, p in got if t == "E"]
            assert [f["C"] for f in fields] == ["57P01"], got
        finally:
            wire.sock.close()
