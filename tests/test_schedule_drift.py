"""Drift monitoring (issue 13): sampled feature histograms flushed by the server, pgml.drift's PSI
against the training split, the pgml.prediction_stats view, and retrain_on_drift."""
from __future__ import annotations

import psycopg

from tests.fix_schedule import FAST_ENV, db, wait_for  # noqa: F401 (db is a fixture)

FEATURES = "ARRAY[x1, x2, x3]"


def _setup(conn) -> None:
    conn.execute("SELECT setseed(0.42)")
    conn.execute("CREATE TABLE drift_rows AS SELECT random() * 10 AS x1, random() AS x2, "
                 "sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()) AS x3 FROM generate_series(1, 2000)")
    conn.execute("ALTER TABLE drift_rows ADD COLUMN y float8")
    conn.execute("UPDATE drift_rows SET y = 2 * x1 - x2 + 0.5 * x3 + random() * 0.1")
    for project in ("drift-same", "drift-shift", "drift-retrain"):
        conn.execute(f"SELECT * FROM pgml.train('{project}', 'regression', 'drift_rows', 'y', 'linear')")


def _drift(conn, project: str, rows: int) -> dict[str, tuple]:
    def ready():
        result = conn.execute(f"SELECT * FROM pgml.drift('{project}', since => interval '1 hour')").fetchall()
        return result if result and all(r[2] >= rows for r in result) else None
    result = wait_for(ready, 60, f"{rows} sampled rows of {project} to be flushed")
    return {r[0]: r[1:] for r in result}


def test_drift_against_the_training_split(db, start_server):
    srv = start_server("--monitor-sample", "1.0", upstream_dsn=db.dsn, env=FAST_ENV)
    with db.client(srv) as conn:
        _setup(conn)
        # the same distribution: the training rows themselves, through the batch (stream) path
        conn.execute(f"SELECT pgml.predict('drift-same', {FEATURES}) FROM drift_rows").fetchall()
        # a shifted one: x1 moved up, x3 spread out, x2 unchanged; plus single-row predictions
        conn.execute(f"SELECT pgml.predict('drift-shift', ARRAY[x1 + 5, x2, x3 * 3]) FROM drift_rows").fetchall()
        for _ in range(20):
            conn.execute("SELECT pgml.predict('drift-shift', ARRAY[12.0, 0.5, 0.0])").fetchone()
        same = _drift(conn, "drift-same", 2000)
        shift = _drift(conn, "drift-shift", 2020)
        assert set(same) == {"x1", "x2", "x3"}, same
        assert all(v[0] < 0.05 for v in same.values()), same
        assert shift["x1"][0] > 1.0 and shift["x3"][0] > 0.5, shift
        assert shift["x2"][0] < 0.05, shift
        assert all(v[2] and v[3] and v[2] <= v[3] for v in shift.values()), shift   # the window
        stats = conn.execute("SELECT project_name, predictions, calls, p50_latency_us, p99_latency_us "
                             "FROM pgml.prediction_stats WHERE project_name = 'drift-shift'").fetchall()
        assert len(stats) == 1 and stats[0][1] >= 2020 and stats[0][2] >= 21, stats
        assert 0 < stats[0][3] <= stats[0][4], stats


def test_retrain_on_drift(db, start_server):
    srv = start_server("--monitor-sample", "1.0", upstream_dsn=db.dsn, env=FAST_ENV)
    with db.client(srv) as conn:
        _setup(conn)
        # a cron schedule that will not come due during the test: only drift can start a run
        conn.execute("SELECT * FROM pgml.schedule('drift-retrain', cron => '0 0 1 1 *', retrain_on_drift => 0.2)")
        conn.execute(f"SELECT pgml.predict('drift-retrain', {FEATURES}) FROM drift_rows").fetchall()
        with db.admin() as admin:
            # no drift, no run (the samples were flushed and checked: drift stays near zero)
            _drift(conn, "drift-retrain", 2000)
            assert admin.execute("SELECT count(*) FROM pgml.schedule_runs").fetchone() == (0,)
        conn.execute(f"SELECT pgml.predict('drift-retrain', ARRAY[x1 * 3, x2, x3]) FROM drift_rows").fetchall()
        with db.admin() as admin:
            run = wait_for(lambda: admin.execute("SELECT reason, status, model_id FROM pgml.schedule_runs "
                                                 "WHERE status <> 'running'").fetchone(), 90, "a drift run")
            assert run[:2] == ("drift", "successful"), run
            assert admin.execute("SELECT next_run > now() + interval '1 day', drift_pending FROM pgml.schedules"
                                 ).fetchone() == (True, False)


def test_monitoring_off(db, start_server):
    srv = start_server("--monitor-sample", "0", upstream_dsn=db.dsn, env=FAST_ENV)
    with db.client(srv) as conn:
        _setup(conn)
        conn.execute(f"SELECT pgml.predict('drift-same', {FEATURES}) FROM drift_rows").fetchall()
        assert conn.execute("SELECT count(*) FROM pgml.model_bins").fetchone()[0] == 3   # still stored
    srv.stop()                                   # a monitoring server would flush at shutdown
    with db.admin() as admin:
        assert admin.execute("SELECT count(*) FROM pgml.prediction_samples").fetchone() == (0,)


def test_monitor_sample_flag_and_environment(monkeypatch):
    import pytest

    from pgml_server.config import Config, from_args
    assert Config().monitor_sample == 0.01
    assert from_args([]).monitor_sample == 0.01
    assert from_args(["--monitor-sample", "0"]).monitor_sample == 0.0
    monkeypatch.setenv("PGML_MONITOR_SAMPLE", "0.5")
    monkeypatch.setenv("PGML_MONITOR_FLUSH_SECONDS", "2.5")
    config = from_args([])
    assert (config.monitor_sample, config.monitor_flush_seconds) == (0.5, 2.5)
    for bad in ("1.5", "-0.1", "lots"):
        with pytest.raises(SystemExit):
            from_args(["--monitor-sample", bad])
    monkeypatch.setenv("PGML_MONITOR_FLUSH_SECONDS", "0")
    with pytest.raises(SystemExit):
        from_args([])


def test_bins_and_psi_in_process():
    import numpy as np

    from pgml_server.ml.bins import CELLS, bin_counts, psi, reference_bins
    from pgml_server.ml.monitor import ModelMonitor, MonitoredPlan

    rng = np.random.default_rng(3)
    X = rng.normal(size=(5000, 3))
    X[:10, 1] = np.nan
    X[:, 2] = np.round(X[:, 2])            # ties on the edges
    ref = reference_bins(X)
    edges = np.asarray(ref["edges"])
    counts = np.asarray(ref["counts"])
    assert edges.shape == (3, 9) and counts.shape == (3, CELLS)
    assert (counts.sum(axis=1) == 5000).all() and counts[1, -1] == 10
    assert np.all(np.diff(edges, axis=1) >= 0)
    # the small-block and the large-block code paths bin alike
    few = sum(bin_counts(edges, X[i:i + 50]) for i in range(0, 5000, 50))
    assert (few == counts).all()
    def like_x():
        Y = rng.normal(size=(5000, 3))
        Y[:, 2] = np.round(Y[:, 2])
        return Y
    same = bin_counts(edges, like_x())
    shifted = bin_counts(edges, like_x() + [2.0, 0.0, 0.0])
    assert psi(counts, same).max() < 0.05
    value = psi(counts, shifted)
    assert value[0] > 1.0 and value[1] < 0.05
    assert np.isnan(psi(counts, np.zeros_like(counts))).all()       # nothing observed: no PSI

    class Plan:
        task, classes = "regression", None

        def predict(self, X):
            return X[:, 0]

    monitor = ModelMonitor(7, edges, 0.5)
    plan = MonitoredPlan(Plan(), monitor)
    for _ in range(200):
        plan.predict(X[:1])
    plan.predict(X[:4000])
    window = monitor.take()
    assert window["calls"] == 201 and window["predictions"] == 4200
    assert 1500 < window["sampled_rows"] < 2700 and sum(window["latency_hist"]) == 201
    assert monitor.take() is None                                    # a fresh window
