"""The pgml SQL API end to end through the server: training, deployment, predictions in SQL, errors."""
from __future__ import annotations

import asyncio
import threading
import time

import asyncpg
import psycopg
import pytest
from psycopg import errors

FEATURES = "ARRAY[age,sex,bmi,bp,s1,s2,s3,s4,s5,s6]"


@pytest.fixture(scope="module")
def trained(server):
    """Diabetes loaded and two projects trained: a regression and a binary classification."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        conn.execute("SELECT pgml.load_dataset('breast_cancer')")
        conn.execute("SELECT * FROM pgml.train('api-reg', 'regression', 'pgml.diabetes', 'target', 'linear')")
        conn.execute("SELECT * FROM pgml.train('api-clf', 'classification', 'pgml.breast_cancer', 'malignant', "
                     "'linear', '{\"max_iter\": 2000}')")
    return server


def rows(conn, sql, params=None):
    return conn.execute(sql, params).fetchall()


def test_train_result_columns_and_named_arguments(trained):
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        cur = conn.execute("SELECT * FROM pgml.train(project_name => 'api-named', task => 'regression', "
                           "relation_name => 'pgml.diabetes', y_column_name => 'target', algorithm => 'ridge', "
                           "hyperparams => '{\"alpha\": 0.5}', test_size => 0.2, test_sampling => 'last')")
        assert [d.name for d in cur.description] == ["project", "task", "algorithm", "deployed"]
        assert cur.fetchone() == ("api-named", "regression", "ridge", True)
        # only the project name: retrain on the last snapshot
        assert rows(conn, "SELECT * FROM pgml.train('api-named', algorithm => 'lasso')")[0][:3] == \
            ("api-named", "regression", "lasso")
        status = rows(conn, "SELECT m.status, m.metrics ? 'r2', m.metrics ? 'fit_time' FROM pgml.models m "
                            "JOIN pgml.projects p ON p.id = m.project_id WHERE p.name = 'api-named'")
        assert status and all(s == ("successful", True, True) for s in status)


def test_predict_positions_agree(trained):
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        base = dict(rows(conn, f"SELECT ctid::text, pgml.predict('api-reg', {FEATURES}) FROM pgml.diabetes"))
        assert len(base) == 442
        where = rows(conn, f"SELECT ctid::text FROM pgml.diabetes WHERE pgml.predict('api-reg', {FEATURES}) > 150")
        assert {r[0] for r in where} == {k for k, v in base.items() if v > 150}
        ordered = rows(conn, f"SELECT ctid::text FROM pgml.diabetes ORDER BY pgml.predict('api-reg', {FEATURES}) "
                             "DESC LIMIT 5")
        assert [r[0] for r in ordered] == sorted(base, key=base.get, reverse=True)[:5]
        avg = rows(conn, f"SELECT avg(pgml.predict('api-reg', {FEATURES})) FROM pgml.diabetes")[0][0]
        assert avg == pytest.approx(sum(base.values()) / len(base), rel=1e-5)
        cte = rows(conn, f"WITH d AS (SELECT * FROM pgml.diabetes WHERE age > 0) "
                         f"SELECT count(*) FROM d WHERE pgml.predict('api-reg', {FEATURES}) > 100")[0][0]
        assert cte > 0
        sub = rows(conn, f"SELECT count(*) FROM (SELECT pgml.predict('api-reg', {FEATURES}) AS p "
                         f"FROM pgml.diabetes) s WHERE p > 150")[0][0]
        assert sub == sum(1 for v in base.values() if v > 150)


def test_predict_in_writes(trained):
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS api_scores")
        conn.execute(f"CREATE TABLE api_scores AS SELECT target, pgml.predict('api-reg', {FEATURES}) AS score "
                     "FROM pgml.diabetes")
        assert rows(conn, "SELECT count(*), count(score) FROM api_scores")[0] == (442, 442)
        conn.execute("ALTER TABLE api_scores ADD COLUMN again real")
        conn.execute("CREATE TEMP TABLE feats AS SELECT * FROM pgml.diabetes")
        conn.execute("INSERT INTO api_scores (target, score) "
                     f"SELECT target, pgml.predict('api-reg', {FEATURES}) FROM feats LIMIT 3")
        assert rows(conn, "SELECT count(*) FROM api_scores")[0][0] == 445
        conn.execute("ALTER TABLE feats ADD COLUMN pred real")
        conn.execute(f"UPDATE feats SET pred = pgml.predict('api-reg', {FEATURES})")
        assert rows(conn, "SELECT count(*) FROM feats WHERE pred IS NULL")[0][0] == 0


def test_lateral_per_row_model(trained):
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        ids = [r[0] for r in rows(conn, "SELECT m.id FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
                                        "WHERE p.name = 'api-reg' AND m.status = 'successful'")]
        out = rows(conn, "SELECT m.id, x.p FROM pgml.models m, LATERAL (SELECT pgml.predict(m.id, "
                         f"{FEATURES}) AS p FROM pgml.diabetes LIMIT 1) x WHERE m.id = ANY(%s)", (ids,))
        assert len(out) == len(ids) and all(p is not None for _, p in out)


def test_classification_proba_and_batch(trained):
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        cols = [r[0] for r in rows(conn, "SELECT column_name FROM information_schema.columns WHERE "
                                         "table_schema='pgml' AND table_name='breast_cancer' AND "
                                         "column_name <> 'malignant' ORDER BY ordinal_position")]
        feats = "ARRAY[" + ",".join(cols) + "]"
        got = rows(conn, f"SELECT malignant, pgml.predict('api-clf', {feats}), pgml.predict_proba('api-clf', {feats}) "
                         "FROM pgml.breast_cancer")
        correct = sum(1 for label, pred, _ in got if bool(pred) == label)
        assert correct / len(got) > 0.9
        assert all(abs(sum(p) - 1) < 1e-4 for _, _, p in got)
        one = rows(conn, f"SELECT {feats}::real[] FROM pgml.breast_cancer LIMIT 2")
        flat = one[0][0] + one[1][0]
        batch = rows(conn, "SELECT * FROM pgml.predict_batch('api-clf', %s::real[])", (flat,))
        assert len(batch) == 2


def test_bound_parameters_and_prepared_reuse(trained):
    async def main():
        conn = await asyncpg.connect(trained.dsn())
        try:
            feats = [0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, -0.002, 0.02, -0.017]
            stmt = await conn.prepare("SELECT pgml.predict($1, $2::float8[])")
            assert [a.name for a in stmt.get_attributes()] == ["predict"]
            values = [await stmt.fetchval("api-reg", feats) for _ in range(20)]
            assert len(set(values)) == 1
            direct = await conn.fetchval("SELECT pgml.predict('api-reg', ARRAY[0.03, 0.05, 0.06, 0.02, -0.04, "
                                         "-0.03, -0.04, -0.002, 0.02, -0.017])")
            assert values[0] == pytest.approx(direct)
            many = await conn.fetch(f"SELECT pgml.predict($1, {FEATURES}) AS p FROM pgml.diabetes LIMIT $2",
                                    "api-reg", 7)
            assert len(many) == 7
            where = await conn.fetchval(f"SELECT count(*) FROM pgml.diabetes WHERE pgml.predict($1, {FEATURES}) > $2",
                                        "api-reg", 150.0)
            assert where > 0
        finally:
            await conn.close()
    asyncio.run(main())


def test_pipeline_mixes_local_and_forwarded(trained):
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        with conn.pipeline():
            c1 = conn.execute("SELECT 1")
            c2 = conn.execute("SELECT pgml.predict('api-reg', ARRAY[0.03,0.05,0.06,0.02,-0.04,-0.03,-0.04,-0.002,0.02,-0.017])")
            c3 = conn.execute(f"SELECT pgml.predict('api-reg', {FEATURES}) FROM pgml.diabetes LIMIT 2")
            c4 = conn.execute("SELECT 4")
        assert c1.fetchall() == [(1,)]
        assert isinstance(c2.fetchone()[0], float)
        assert len(c3.fetchall()) == 2
        assert c4.fetchall() == [(4,)]


def test_errors_keep_session_usable(trained):
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        with pytest.raises(errors.UndefinedObject):
            conn.execute("SELECT pgml.predict('no such project', ARRAY[1,2])")
        with pytest.raises(errors.InvalidParameterValue) as info:
            conn.execute("SELECT pgml.predict('api-reg', ARRAY[1,2])")
        assert "takes 10 input values" in str(info.value) and "got 2" in str(info.value)
        with pytest.raises(errors.UndefinedTable):
            conn.execute("SELECT * FROM pgml.train('api-missing', 'regression', 'no_such_table', 'y')")
        with pytest.raises(errors.UndefinedColumn):
            conn.execute("SELECT * FROM pgml.train('api-missing', 'regression', 'pgml.diabetes', 'nope')")
        with pytest.raises(errors.InvalidParameterValue):
            conn.execute("SELECT * FROM pgml.train('api-missing', 'ranking', 'pgml.diabetes', 'target')")
        with pytest.raises(errors.InvalidParameterValue) as info:
            conn.execute("SELECT * FROM pgml.train('api-missing', 'regression', 'pgml.diabetes', 'target', 'nope')")
        assert info.value.diag.message_hint
        with pytest.raises(errors.InvalidParameterValue):
            conn.execute("SELECT * FROM pgml.deploy('api-reg', 'worst_score')")
        with pytest.raises(errors.InvalidParameterValue) as info:
            conn.execute("SELECT * FROM pgml.load_dataset('nope')")
        assert "diabetes" in (info.value.diag.message_hint or "") + str(info.value)
        assert conn.execute("SELECT 42").fetchone() == (42,)


def test_train_refused_in_transaction_block(trained):
    with psycopg.connect(trained.dsn()) as conn:
        with pytest.raises(errors.ActiveSqlTransaction):
            conn.execute("SELECT * FROM pgml.train('api-tx', 'regression', 'pgml.diabetes', 'target')")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_deploy_strategies(trained):
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        conn.execute("SELECT * FROM pgml.train('api-deploy', 'regression', 'pgml.diabetes', 'target', 'linear')")
        conn.execute("SELECT * FROM pgml.train('api-deploy', algorithm => 'ridge', automatic_deploy => false)")
        assert rows(conn, "SELECT algorithm FROM pgml.deployed_models WHERE name = 'api-deploy'") == [("linear",)]
        assert rows(conn, "SELECT * FROM pgml.deploy('api-deploy', 'most_recent')") == \
            [("api-deploy", "most_recent", "ridge")]
        assert rows(conn, "SELECT * FROM pgml.deploy('api-deploy', 'rollback')")[0][2] == "linear"
        best = rows(conn, "SELECT * FROM pgml.deploy('api-deploy', 'best_score')")[0][2]
        assert best in ("linear", "ridge")
        model_id = rows(conn, "SELECT m.id FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
                              "WHERE p.name = 'api-deploy' AND m.algorithm = 'ridge'")[0][0]
        assert rows(conn, "SELECT * FROM pgml.deploy(%s)", (model_id,))[0][2] == "ridge"


def test_cancel_training_marks_model_failed(trained):
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS api_big AS SELECT random() AS a, random() AS b, random() AS y "
                     "FROM generate_series(1, 3000)")

        def cancel_soon():
            time.sleep(3)
            conn.cancel()
        threading.Thread(target=cancel_soon).start()
        started = time.monotonic()
        with pytest.raises(errors.QueryCanceled):
            conn.execute("SELECT * FROM pgml.train('api-cancel', 'regression', 'api_big', 'y', 'gaussian_process')")
        assert time.monotonic() - started < 30
        status = rows(conn, "SELECT m.status FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
                            "WHERE p.name = 'api-cancel'")
        assert status == [("failed",)]
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_second_server_serves_same_models_and_follows_deploys(trained, start_server):
    other = start_server()
    feats = "ARRAY[0.03,0.05,0.06,0.02,-0.04,-0.03,-0.04,-0.002,0.02,-0.017]"
    with psycopg.connect(trained.dsn(), autocommit=True) as a, psycopg.connect(other.dsn(), autocommit=True) as b:
        a.execute("SELECT * FROM pgml.train('api-replica', 'regression', 'pgml.diabetes', 'target', 'linear')")
        first = b.execute(f"SELECT pgml.predict('api-replica', {feats})").fetchone()[0]
        assert first == pytest.approx(a.execute(f"SELECT pgml.predict('api-replica', {feats})").fetchone()[0])
        a.execute("SELECT * FROM pgml.train('api-replica', algorithm => 'lasso', hyperparams => '{\"alpha\": 1000}', "
                  "automatic_deploy => false)")
        a.execute("SELECT * FROM pgml.deploy('api-replica', 'most_recent')")
        expected = a.execute(f"SELECT pgml.predict('api-replica', {feats})").fetchone()[0]
        assert expected != pytest.approx(first)
        deadline = time.monotonic() + 10.0   # normally milliseconds; generous for loaded CI
        while True:
            got = b.execute(f"SELECT pgml.predict('api-replica', {feats})").fetchone()[0]
            if got == pytest.approx(expected) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert got == pytest.approx(expected)


def test_load_dataset_again_keeps_views_over_it(server):
    """Reloading a dataset that a user's view depends on replaces its rows; the view keeps working
    (DROP TABLE would fail with 2BP01 'other objects depend on it')."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pgml.load_dataset('wine')")
        conn.execute("CREATE OR REPLACE VIEW public.wine_view AS SELECT alcohol, target FROM pgml.wine")
        try:
            assert rows(conn, "SELECT * FROM pgml.load_dataset('wine', \"limit\" => 10)") == [("pgml.wine", 10)]
            assert rows(conn, "SELECT count(*) FROM public.wine_view") == [(10,)]
            assert rows(conn, "SELECT * FROM pgml.load_dataset('wine')") == [("pgml.wine", 178)]
            assert rows(conn, "SELECT count(*) FROM public.wine_view") == [(178,)]
        finally:
            conn.execute("DROP VIEW public.wine_view")
