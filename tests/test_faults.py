"""Faults: the upstream restarts under connected clients, the server is SIGKILLed during training,
clients vanish mid-result and mid-COPY. Faults injected: 1 upstream restart, 1 SIGKILL, 2 vanishings."""
from __future__ import annotations

import signal
import socket
import threading
import time

import psutil
import psycopg
import pytest

from protocol import messages as m
from protocol.framing import Framer

FEATURES = "ARRAY[0.03,0.05,0.06,0.02,-0.04,-0.03,-0.04,0.0,0.02,-0.02]::real[]"


def _wait(predicate, timeout: float, what: str, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (psycopg.OperationalError, psycopg.errors.AdminShutdown):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def _predict(srv, project: str) -> float:
    with psycopg.connect(srv.dsn(), autocommit=True, connect_timeout=5) as conn:
        return conn.execute(f"SELECT pgml.predict('{project}', {FEATURES})").fetchone()[0]


# ------------------------------------------------------------------ (a) the upstream restarts

def test_upstream_restart(server, upstream, start_server):
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        conn.execute("SELECT * FROM pgml.train('fault-restart', 'regression', 'pgml.diabetes', 'target', 'linear')")
        first = conn.execute("SELECT * FROM pgml.train('fault-restart', algorithm => 'lasso', "
                             "hyperparams => '{\"alpha\": 1000.0}')").fetchone()   # all coefficients 0
        ids = [r[0] for r in conn.execute(
            "SELECT m.id FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
            "WHERE p.name = 'fault-restart' ORDER BY m.id").fetchall()]
        conn.execute(f"SELECT * FROM pgml.deploy({ids[0]})")
    replica = start_server()                 # deploys through it must reach `server` by NOTIFY
    before = _predict(server, "fault-restart")
    idle = psycopg.connect(server.dsn(), autocommit=True)
    in_tx = psycopg.connect(server.dsn())
    in_tx.execute("SELECT 1")                # an open transaction
    try:
        upstream.restart()
    finally:
        if not upstream._postmaster_alive():  # never leave the shared upstream down
            upstream.start()
    for conn in (idle, in_tx):
        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute("SELECT 1")
        # 57P01 relayed from the upstream, or the server's own 57P01/08006; or the socket just closed
        assert info.value.sqlstate in ("57P01", "08006", "08003", None), info.value.sqlstate
        conn.close()
    # new connections work once the upstream is back
    _wait(lambda: psycopg.connect(server.dsn(), connect_timeout=5).close() or True, 30, "a new connection")
    assert _predict(server, "fault-restart") == pytest.approx(before)
    # deploy the other model through the replica: `server`'s cache follows through its re-LISTEN
    with psycopg.connect(replica.dsn(), autocommit=True) as conn:
        _wait(lambda: conn.execute(f"SELECT * FROM pgml.deploy({ids[1]})").fetchone(), 20, "deploy via replica")
        after = conn.execute(f"SELECT pgml.predict({ids[1]}, {FEATURES})").fetchone()[0]
    assert after != pytest.approx(before)
    _wait(lambda: _predict(server, "fault-restart") == pytest.approx(after), 15,
          "the server's cache to follow a deploy made after the upstream restart")
    assert first[0] == "fault-restart"


# ------------------------------------------------------------------ (b) SIGKILL during training

def test_sigkill_during_training(upstream, start_server):
    srv = start_server()
    with psycopg.connect(srv.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        conn.execute("SELECT * FROM pgml.train('fault-kill', 'regression', 'pgml.diabetes', 'target', 'linear')")
        conn.execute("DROP TABLE IF EXISTS fault_big")
        conn.execute("CREATE TABLE fault_big AS SELECT d.* FROM pgml.diabetes d, generate_series(1, 150)")
        deployed_before = conn.execute("SELECT model_id FROM pgml.deployments d JOIN pgml.projects p ON "
                                       "p.id = d.project_id WHERE p.name = 'fault-kill' ORDER BY d.id DESC "
                                       "LIMIT 1").fetchone()[0]
        preds_before = [r[0] for r in conn.execute(
            "SELECT pgml.predict('fault-kill', ARRAY[age,sex,bmi,bp,s1,s2,s3,s4,s5,s6]) FROM pgml.diabetes "
            "ORDER BY ctid LIMIT 50").fetchall()]
    errors: list[BaseException] = []

    def long_train():
        try:
            with psycopg.connect(srv.dsn(), autocommit=True) as conn:
                conn.execute("SELECT * FROM pgml.train('fault-kill', 'regression', 'fault_big', 'target', "
                             "'random_forest', '{\"n_estimators\": 400}')")
        except BaseException as exc:   # noqa: BLE001 - expected: the server dies under it
            errors.append(exc)

    thread = threading.Thread(target=long_train)
    thread.start()
    with psycopg.connect(upstream.dsn, autocommit=True) as admin:
        _wait(lambda: admin.execute("SELECT count(*) FROM pgml.models m JOIN pgml.projects p ON p.id = "
                                    "m.project_id WHERE p.name = 'fault-kill' AND m.status = 'in_progress'"
                                    ).fetchone()[0], 60, "the training to start")
        time.sleep(1.0)                    # well inside fitting 400 trees on 66k rows
        children = psutil.Process(srv.proc.pid).children(recursive=True)
        srv.stop(signal.SIGKILL)
        thread.join(30)
        assert errors and isinstance(errors[0], psycopg.OperationalError), errors
        # training workers must not outlive the server for long (they would burn CPU for nothing)
        gone, alive = psutil.wait_procs(children, timeout=15)
        for proc in alive:                 # started by this test (descendants of its server): end them
            proc.kill()
        assert not alive, f"training worker processes outlived the SIGKILLed server: {alive}"

        again = start_server()             # start-up repair: orphaned in_progress models fail
        rows = _wait(lambda: (r := admin.execute(
            "SELECT m.status FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
            "WHERE p.name = 'fault-kill' ORDER BY m.id").fetchall()) and "in_progress" not in {x[0] for x in r}
            and r, 20, "no model left in_progress")
        assert [x[0] for x in rows] == ["successful", "failed"], rows
        deployed_after = admin.execute("SELECT model_id FROM pgml.deployments d JOIN pgml.projects p ON "
                                       "p.id = d.project_id WHERE p.name = 'fault-kill' ORDER BY d.id DESC "
                                       "LIMIT 1").fetchone()[0]
        assert deployed_after == deployed_before
        # no orphan snapshot rows: every snapshot row has its table, every snapshot table its row
        assert admin.execute("SELECT count(*) FROM pgml.snapshots s WHERE to_regclass(s.snapshot_name) IS NULL"
                             ).fetchone() == (0,) if _has_column(admin, "snapshots", "snapshot_name") else True
        orphans = admin.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'pgml' AND c.relname ~ '^snapshot_[0-9]+$' AND c.relkind IN ('r', 'v') "
            "AND NOT EXISTS (SELECT 1 FROM pgml.snapshots s WHERE 'snapshot_' || s.id = c.relname)").fetchall()
        assert not orphans, orphans
        admin.execute("DROP TABLE fault_big")
    with psycopg.connect(again.dsn(), autocommit=True) as conn:
        preds_after = [r[0] for r in conn.execute(
            "SELECT pgml.predict('fault-kill', ARRAY[age,sex,bmi,bp,s1,s2,s3,s4,s5,s6]) FROM pgml.diabetes "
            "ORDER BY ctid LIMIT 50").fetchall()]
    assert preds_after == preds_before


def _has_column(conn, table: str, column: str) -> bool:
    return conn.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = 'pgml' AND table_name = %s "
                        "AND column_name = %s", (table, column)).fetchone() is not None


# ------------------------------------------------------------------ (c) clients vanish

def _raw_client(port: int, app: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(m.StartupMessage({"user": "postgres", "database": "postgres", "application_name": app}).encode())
    framer = Framer()
    while True:
        data = sock.recv(65536)
        assert data
        framer.feed(data)
        if any(f.type == ord("Z") for f in framer.frames()):
            return sock


def _backends(admin, app: str) -> int:
    return admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)).fetchone()[0]


def test_client_vanishes_mid_result_and_mid_copy(server, upstream):
    with psycopg.connect(upstream.dsn, autocommit=True) as admin:
        admin.execute("CREATE TABLE IF NOT EXISTS fault_copy (a int, b text)")
        # mid-result: a huge SELECT, read a little, vanish
        sock = _raw_client(server.port, "fault-vanish-select")
        assert _backends(admin, "fault-vanish-select") == 1
        sock.sendall(m.Query("SELECT g, repeat('x', 100) FROM generate_series(1, 50000000) g").encode())
        got = 0
        while got < 256 << 10:
            got += len(sock.recv(65536))
        sock.close()
        _wait(lambda: _backends(admin, "fault-vanish-select") == 0, 10, "the SELECT's upstream backend to go")
        # mid-COPY FROM STDIN: some rows sent, no CopyDone, vanish
        sock = _raw_client(server.port, "fault-vanish-copy")
        sock.sendall(m.Query("COPY fault_copy FROM STDIN").encode())
        framer = Framer()
        while not any(f.type == ord("G") for f in framer.frames()):
            framer.feed(sock.recv(65536))
        for i in range(100):
            sock.sendall(m.CopyData(f"{i}\trow {i}\n".encode() * 100).encode())
        sock.close()
        _wait(lambda: _backends(admin, "fault-vanish-copy") == 0, 10, "the COPY's upstream backend to go")
        assert admin.execute("SELECT count(*) FROM fault_copy").fetchone() == (0,)   # rolled back
        # mid-result inside a transaction holding a lock: the lock is released too
        sock = _raw_client(server.port, "fault-vanish-tx")
        sock.sendall(m.Query("BEGIN; LOCK TABLE fault_copy; SELECT * FROM generate_series(1, 50000000)").encode())
        sock.recv(65536)
        sock.close()
        _wait(lambda: _backends(admin, "fault-vanish-tx") == 0, 10, "the locked transaction's backend to go")
        with admin.transaction():
            admin.execute("SET LOCAL lock_timeout = '2s'")
            admin.execute("LOCK TABLE fault_copy")      # would time out if the lock were still held
        admin.execute("DROP TABLE fault_copy")
