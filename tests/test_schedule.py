"""Scheduled retraining (pgml.schedule / pgml.unschedule, issue 13) against a real upstream.

Every test gets its own database (tests/fix_schedule.py) and its own servers; nothing is mocked
and nothing asserts durations: conditions are awaited with generous timeouts.
"""
from __future__ import annotations

import signal

import psycopg
import pytest

from tests.fix_schedule import FAST_ENV, db, wait_for  # noqa: F401 (db is a fixture)


def _table(conn, name: str, rows: int, start: int = 0) -> None:
    conn.execute(f"CREATE TABLE IF NOT EXISTS {name} (x1 float8, x2 float8, y float8)")
    conn.execute(f"INSERT INTO {name} SELECT i, (i * 7) % 13, 3 * i + (i * 7) % 13 + (i % 5) * 0.1 "
                 f"FROM generate_series({start + 1}, {start + rows}) i")


def _runs(conn, project: str) -> list[tuple]:
    return conn.execute("SELECT id, status, model_id, error, server, due_at, reason FROM pgml.schedule_runs "
                        "WHERE project_name = %s ORDER BY id", (project,)).fetchall()


def _deployed(conn, project: str) -> int:
    return conn.execute("SELECT d.model_id FROM pgml.deployments d JOIN pgml.projects p ON p.id = d.project_id "
                        "WHERE p.name = %s ORDER BY d.id DESC LIMIT 1", (project,)).fetchone()[0]


def _snapshot_rows(conn, model_id: int) -> int:
    snap = conn.execute("SELECT snapshot_id FROM pgml.models WHERE id = %s", (model_id,)).fetchone()[0]
    return conn.execute(f"SELECT count(*) FROM pgml.snapshot_{int(snap)}").fetchone()[0]


def _idle(conn, project: str) -> bool:
    return not any(r[1] == "running" for r in _runs(conn, project))


def test_schedule_retrains_on_a_fresh_snapshot_and_unschedule_stops_it(db, start_server):
    srv = start_server(upstream_dsn=db.dsn, env=FAST_ENV)
    with db.client(srv) as conn:
        _table(conn, "sched_rows", 200)
        conn.execute("SELECT * FROM pgml.train('sched-a', 'regression', 'sched_rows', 'y', 'linear')")
        first = _deployed(conn, "sched-a")
        project, next_run = conn.execute("SELECT * FROM pgml.schedule('sched-a', every => '2 seconds')").fetchone()
        # a timestamptz, as the signature says (psycopg: an aware datetime)
        assert project == "sched-a" and next_run.tzinfo is not None, next_run
        _table(conn, "sched_rows", 100, start=200)           # new rows: the next run must see them
        run = wait_for(lambda: [r for r in _runs(conn, "sched-a") if r[1] == "successful"
                                and _snapshot_rows(conn, r[2]) == 300], 90, "a run trained on the new rows")[0]
        assert run[4] and run[6] == "schedule"
        model = conn.execute("SELECT algorithm, status FROM pgml.models WHERE id = %s", (run[2],)).fetchone()
        assert model == ("linear", "successful")             # the latest model's algorithm, reused
        sched = conn.execute("SELECT last_status, last_model_id, owner, every, cron FROM pgml.schedules "
                             "WHERE project_name = 'sched-a'").fetchone()
        assert sched[0] in ("successful", "running") and sched[2] == "postgres" and sched[4] is None
        # the usual deploy rule: the retrained model (same data + more) was deployed unless it scored lower
        assert _deployed(conn, "sched-a") != first or conn.execute(
            "SELECT bool_or(deployed) IS NOT TRUE FROM pgml.schedule_runs WHERE project_name = 'sched-a'"
        ).fetchone()[0]
        assert conn.execute("SELECT pgml.unschedule('sched-a')").fetchone() == (True,)
        assert conn.execute("SELECT pgml.unschedule('sched-a')").fetchone() == (False,)
        wait_for(lambda: _idle(conn, "sched-a"), 60, "the last run to finish")
        count = len(_runs(conn, "sched-a"))
        import time
        time.sleep(5)                                       # 2.5 periods: an active schedule would have run
        assert len(_runs(conn, "sched-a")) == count
        assert conn.execute("SELECT count(*) FROM pgml.schedules").fetchone() == (0,)


def test_two_servers_run_each_due_run_once(db, start_server):
    one = start_server("--workers", "2", upstream_dsn=db.dsn, env=FAST_ENV)   # two scheduler loops
    two = start_server(upstream_dsn=db.dsn, env=FAST_ENV)
    with db.client(one) as conn:
        _table(conn, "sched_pair", 300)
        conn.execute("SELECT * FROM pgml.train('sched-pair', 'regression', 'sched_pair', 'y', 'linear')")
        before = conn.execute("SELECT count(*) FROM pgml.models").fetchone()[0]
        conn.execute("SELECT * FROM pgml.schedule('sched-pair', every => '1 second', algorithm => 'ridge')")
    with db.admin() as admin:
        wait_for(lambda: sum(r[1] == "successful" for r in _runs(admin, "sched-pair")) >= 6, 120, "six runs")
        with db.client(two) as conn:
            assert conn.execute("SELECT pgml.unschedule('sched-pair')").fetchone() == (True,)
        wait_for(lambda: _idle(admin, "sched-pair"), 60, "the last run to finish")
        runs = _runs(admin, "sched-pair")
        dues = [r[5] for r in runs]
        assert len(dues) == len(set(dues)), f"a due time was run twice: {runs}"
        models = admin.execute("SELECT count(*) FROM pgml.models").fetchone()[0] - before
        assert models == sum(r[2] is not None for r in runs), (models, runs)
        assert all(r[1] == "successful" for r in runs), runs
        assert admin.execute("SELECT count(DISTINCT algorithm) FROM pgml.models WHERE id IN "
                             "(SELECT model_id FROM pgml.schedule_runs)").fetchone() == (1,)
        servers = {r[4] for r in runs}
        assert servers and all(s for s in servers)


def test_sigkill_mid_run_fails_the_model_and_the_schedule_runs_on(db, start_server):
    servers = [start_server(upstream_dsn=db.dsn, env=FAST_ENV) for _ in range(2)]
    with db.client(servers[0]) as conn:
        conn.execute("CREATE TABLE sched_big AS SELECT random() AS a, random() AS b, random() AS c, "
                     "random() AS d, random() AS y FROM generate_series(1, 300)")
        conn.execute("SELECT * FROM pgml.train('sched-kill', 'regression', 'sched_big', 'y', 'linear')")
        deployed = _deployed(conn, "sched-kill")
        conn.execute("INSERT INTO sched_big SELECT random(), random(), random(), random(), random() "
                     "FROM generate_series(1, 60000)")
        conn.execute("SELECT * FROM pgml.schedule('sched-kill', every => '1 second', algorithm => 'random_forest', "
                     "hyperparams => '{\"n_estimators\": 300}')")
    with db.admin() as admin:
        model = wait_for(lambda: admin.execute(
            "SELECT m.id FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
            "WHERE p.name = 'sched-kill' AND m.status = 'in_progress'").fetchone(), 90, "a slow run to train")[0]
        run = wait_for(lambda: [r for r in _runs(admin, "sched-kill") if r[1] == "running" and r[2] == model],
                       30, "the running run to show its model")[0]
        victim = next(s for s in servers if f"pid {s.proc.pid} " in run[4])
        survivor = next(s for s in servers if s is not victim)
        admin.execute("DELETE FROM sched_big WHERE ctid NOT IN (SELECT ctid FROM sched_big LIMIT 300)")
        victim.stop(signal.SIGKILL)
        failed = wait_for(lambda: [r for r in _runs(admin, "sched-kill") if r[0] == run[0] and r[1] == "failed"],
                          60, "the killed run to be marked failed")[0]
        assert "orphaned" in failed[3] and failed[2] == model, failed
        wait_for(lambda: admin.execute("SELECT status FROM pgml.models WHERE id = %s", (model,)).fetchone()
                 == ("failed",), 60, "the killed run's model to be failed")
        assert admin.execute("SELECT last_status FROM pgml.schedules").fetchone()[0] in ("failed", "running")
        with db.client(survivor) as conn:     # the previous deployment still serves
            assert _deployed(conn, "sched-kill") == deployed
            conn.execute("SELECT pgml.predict('sched-kill', ARRAY[0.5, 0.5, 0.5, 0.5])").fetchone()
        later = wait_for(lambda: [r for r in _runs(admin, "sched-kill") if r[0] > run[0] and r[1] == "successful"],
                         180, "the schedule to run on on the surviving server")[0]
        assert f"pid {survivor.proc.pid} " in later[4]
        with db.client(survivor) as conn:
            conn.execute("SELECT pgml.unschedule('sched-kill')")
        wait_for(lambda: _idle(admin, "sched-kill"), 120, "the last run to finish")


def test_runs_missed_while_no_server_ran_happen_once(db, start_server):
    srv = start_server(upstream_dsn=db.dsn, env=FAST_ENV)
    with db.client(srv) as conn:
        _table(conn, "sched_missed", 100)
        conn.execute("SELECT * FROM pgml.train('sched-missed', 'regression', 'sched_missed', 'y', 'linear')")
        conn.execute("SELECT * FROM pgml.schedule('sched-missed', every => '1 minute')")
    srv.stop()
    with db.admin() as admin:
        # as if every server had been down for an hour: 60 periods missed
        admin.execute("UPDATE pgml.schedules SET next_run = next_run - interval '1 hour'")
        missed = admin.execute("SELECT next_run FROM pgml.schedules").fetchone()[0]
        start_server(upstream_dsn=db.dsn, env=FAST_ENV)
        run = wait_for(lambda: [r for r in _runs(admin, "sched-missed") if r[1] == "successful"], 60, "a run")[0]
        assert run[5] == missed
        next_run, later = admin.execute("SELECT next_run, next_run > now() FROM pgml.schedules").fetchone()
        assert later, next_run                     # the next one is in the future: the 59 others collapsed
        assert len(_runs(admin, "sched-missed")) == 1


def test_a_server_stopped_mid_run_fails_the_run_and_keeps_the_deployment(db, start_server):
    srv = start_server(upstream_dsn=db.dsn, env=FAST_ENV)
    with db.client(srv) as conn:
        conn.execute("CREATE TABLE sched_stop AS SELECT random() AS a, random() AS b, random() AS y "
                     "FROM generate_series(1, 300)")
        conn.execute("SELECT * FROM pgml.train('sched-stop', 'regression', 'sched_stop', 'y', 'linear')")
        deployed = _deployed(conn, "sched-stop")
        conn.execute("INSERT INTO sched_stop SELECT random(), random(), random() FROM generate_series(1, 60000)")
        conn.execute("SELECT * FROM pgml.schedule('sched-stop', every => '1 hour', algorithm => 'random_forest', "
                     "hyperparams => '{\"n_estimators\": 300}')")
    with db.admin() as admin:
        admin.execute("UPDATE pgml.schedules SET next_run = now()")          # due at once
        model = wait_for(lambda: admin.execute(
            "SELECT m.id FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
            "WHERE p.name = 'sched-stop' AND m.status = 'in_progress'").fetchone(), 90, "the run to train")[0]
        srv.stop(signal.SIGTERM)                                             # a clean shutdown mid-run
        run = _runs(admin, "sched-stop")[-1]
        assert run[1] == "failed" and "shutting down" in run[3] and run[2] == model, run
        assert admin.execute("SELECT status FROM pgml.models WHERE id = %s", (model,)).fetchone() == ("failed",)
        assert _deployed(admin, "sched-stop") == deployed
        assert admin.execute("SELECT last_status, next_run > now() + interval '50 minutes' FROM pgml.schedules"
                             ).fetchone() == ("failed", True)


PW = "pw-Sched1"


@pytest.fixture
def noselect_role(db):
    role = "sched_nosel_" + db.name[-6:]
    with db.admin() as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PW}'")
    yield role
    with db.admin() as admin:
        admin.execute(f"DROP OWNED BY {role}")
        admin.execute(f"DROP ROLE {role}")


def test_a_run_has_the_privileges_of_the_role_that_scheduled_it(db, start_server, noselect_role):
    role = noselect_role
    srv = start_server(upstream_dsn=db.dsn, env=FAST_ENV)
    with db.client(srv) as conn:
        _table(conn, "sched_secret", 200)
        conn.execute("SELECT * FROM pgml.train('sched-priv', 'regression', 'sched_secret', 'y', 'linear')")
    with db.admin() as admin:
        admin.execute(f"GRANT USAGE, CREATE ON SCHEMA pgml TO {role}")
        admin.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA pgml TO {role}")
        admin.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA pgml TO {role}")
        models = admin.execute("SELECT count(*) FROM pgml.models").fetchone()[0]
        with db.client(srv, role, PW) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT count(*) FROM sched_secret")
            conn.execute("SELECT * FROM pgml.schedule('sched-priv', every => '1 second')")
        assert admin.execute("SELECT owner FROM pgml.schedules").fetchone() == (role,)
        with db.client(srv, role, PW) as conn:   # writing the row directly cannot borrow another role
            conn.execute("UPDATE pgml.schedules SET owner = 'postgres', arguments = '{}'")
        assert admin.execute("SELECT owner FROM pgml.schedules").fetchone() == (role,)
        run = wait_for(lambda: [r for r in _runs(admin, "sched-priv") if r[1] == "failed"], 60, "a failed run")[0]
        assert "permission denied" in run[3] and run[2] is None, run
        last = admin.execute("SELECT last_status, last_error FROM pgml.schedules").fetchone()
        assert last[0] in ("failed", "running") and "permission denied" in (last[1] or "permission denied")
        assert admin.execute("SELECT count(*) FROM pgml.models").fetchone()[0] == models   # nothing trained
        admin.execute(f"GRANT SELECT ON sched_secret TO {role}")                          # now it may
        ok = wait_for(lambda: [r for r in _runs(admin, "sched-priv") if r[1] == "successful"], 60, "a run")[0]
        owner = admin.execute("SELECT tableowner FROM pg_tables WHERE schemaname = 'pgml' AND tablename = "
                              "(SELECT 'snapshot_' || snapshot_id FROM pgml.models WHERE id = %s)", (ok[2],)).fetchone()
        assert owner == (role,)                              # the snapshot was made as the role
        admin.execute("DELETE FROM pgml.schedules")
        wait_for(lambda: _idle(admin, "sched-priv"), 60, "the last run to finish")


BAD = [
    ("SELECT * FROM pgml.schedule('no-such-project', every => '1 hour')", "does not exist"),
    ("SELECT * FROM pgml.schedule('sched-bad', every => '1 hour', cron => '0 * * * *')", "exactly one"),
    ("SELECT * FROM pgml.schedule('sched-bad')", "exactly one"),
    ("SELECT * FROM pgml.schedule('sched-bad', every => '500 milliseconds')", "shorter than 1 second"),
    ("SELECT * FROM pgml.schedule('sched-bad', every => interval '0 seconds')", "shorter than 1 second"),
    ("SELECT * FROM pgml.schedule('sched-bad', every => '-1 hour')", "shorter than 1 second"),
    ("SELECT * FROM pgml.schedule('sched-bad', every => 'banana')", "invalid every"),
    ("SELECT * FROM pgml.schedule('sched-bad', cron => 'banana')", "invalid cron"),
    ("SELECT * FROM pgml.schedule('sched-bad', cron => '61 * * * *')", "invalid cron"),
    ("SELECT * FROM pgml.schedule('sched-bad', cron => '* * * *')", "invalid cron"),
    ("SELECT * FROM pgml.schedule('sched-bad', every => '1 hour', retrain_on_drift => 0)", "retrain_on_drift"),
    ("SELECT * FROM pgml.schedule('sched-bad', every => '1 hour', algorithm => 'no_such_algo')", "no_such_algo"),
]


def test_bad_input_is_22023_and_writes_nothing(db, start_server):
    srv = start_server(upstream_dsn=db.dsn, env=FAST_ENV)
    with db.client(srv) as conn:
        _table(conn, "sched_bad", 50)
        conn.execute("SELECT * FROM pgml.train('sched-bad', 'regression', 'sched_bad', 'y', 'linear')")
        for sql, text in BAD:
            with pytest.raises(psycopg.Error) as info:
                conn.execute(sql)
            assert info.value.sqlstate == "22023", (sql, info.value.sqlstate, str(info.value))
            assert text in str(info.value), (sql, str(info.value))
            assert info.value.diag.message_hint or text == "no_such_algo", sql    # says what is accepted
        assert conn.execute("SELECT count(*) FROM pgml.schedules").fetchone() == (0,)
        # a valid cron schedule, then replaced by an interval one: one row, the second's settings
        project, next_run = conn.execute(
            "SELECT * FROM pgml.schedule('sched-bad', cron => '0 0 1 1 *', algorithm => 'ridge')").fetchone()
        utc = next_run.astimezone(__import__("datetime").timezone.utc)
        assert (utc.month, utc.day, utc.hour, utc.minute) == (1, 1, 0, 0), next_run
        conn.execute("SELECT * FROM pgml.schedule('sched-bad', every => interval '1 day', hyperparams => "
                     "'{\"fit_intercept\": false}')")
        rows = conn.execute("SELECT every::text, cron, arguments FROM pgml.schedules").fetchall()
        assert rows == [("1 day", None, {"hyperparams": {"fit_intercept": False}})], rows
        assert conn.execute("SELECT count(*) FROM pgml.schedule_runs").fetchone() == (0,)
