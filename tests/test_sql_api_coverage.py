"""Breadth of the SQL API through the server: every dataset, every algorithm for both tasks, search,
train_joint/predict_joint, feature array types, and the errors users hit first."""
from __future__ import annotations

import asyncio
import json

import asyncpg
import numpy as np
import psycopg
import pytest
from psycopg import errors

from pgml_server.ml import artifacts
from pgml_server.ml.model import unbundle
from pgml_server.ml.training.algorithms import ALGORITHMS, SUPERVISED

DIABETES = "ARRAY[age,sex,bmi,bp,s1,s2,s3,s4,s5,s6]"
IRIS = "ARRAY[sepal_length,sepal_width,petal_length,petal_width]"

# Small hyperparameters so that every algorithm trains in well under a second on small data.
SMALL = {
    "random_forest": {"n_estimators": 5}, "extra_trees": {"n_estimators": 5}, "bagging": {"n_estimators": 3},
    "ada_boost": {"n_estimators": 5}, "gradient_boosting_trees": {"n_estimators": 5},
    "hist_gradient_boosting": {"max_iter": 5}, "lightgbm": {"n_estimators": 5},
    "xgboost": {"n_estimators": 5}, "theil_sen": {"max_subpopulation": 200},
}


@pytest.fixture(scope="module")
def conn(server):
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        yield c


@pytest.fixture(scope="module")
def small_tables(conn):
    """iris (150 rows) for classification and the first 150 diabetes rows for regression."""
    conn.execute("SELECT pgml.load_dataset('iris')")
    conn.execute("SELECT pgml.load_dataset('diabetes')")
    conn.execute("DROP TABLE IF EXISTS cov_diabetes_small")
    conn.execute("CREATE TABLE cov_diabetes_small AS SELECT * FROM pgml.diabetes LIMIT 150")
    return conn


@pytest.mark.parametrize("name, table, rows", [
    ("diabetes", "pgml.diabetes", 442), ("iris", "pgml.iris", 150), ("breast_cancer", "pgml.breast_cancer", 569),
    ("digits", "pgml.digits", 1797), ("wine", "pgml.wine", 178), ("linnerud", "pgml.linnerud", 20),
])
def test_every_dataset_loads(conn, name, table, rows):
    assert conn.execute("SELECT * FROM pgml.load_dataset(%s)", (name,)).fetchone() == (table, rows)
    assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == rows


def test_unknown_dataset_lists_the_available_ones(conn):
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT pgml.load_dataset('titanic')")
    assert "diabetes" in str(info.value) and "linnerud" in str(info.value)
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_dataset_layouts_match_postgresml(conn):
    def columns(table):
        return [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'pgml' AND table_name = %s "
            "ORDER BY ordinal_position", (table,))]
    conn.execute("SELECT pgml.load_dataset('linnerud')")
    conn.execute("SELECT pgml.load_dataset('breast_cancer')")
    assert columns("diabetes") == ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6", "target"]
    assert columns("iris") == ["sepal_length", "sepal_width", "petal_length", "petal_width", "target"]
    assert columns("linnerud") == ["chins", "situps", "jumps", "weight", "waist", "pulse"]
    bc = columns("breast_cancer")
    assert len(bc) == 31 and bc[-1] == "malignant" and "mean_radius" in bc


# Unsupervised entries are tests/test_unsupervised.py's.
@pytest.mark.parametrize("algorithm, task", sorted(p for p in ALGORITHMS if p[1] in SUPERVISED))
def test_every_algorithm_trains_and_predicts_through_sql(small_tables, algorithm, task):
    conn = small_tables
    table, label, feats = (("cov_diabetes_small", "target", DIABETES) if task == "regression"
                           else ("pgml.iris", "target", IRIS))
    project = f"cov-{algorithm}-{task}"
    got = conn.execute("SELECT * FROM pgml.train(%s, %s, %s, %s, %s, %s::jsonb)",
                       (project, task, table, label, algorithm, json.dumps(SMALL.get(algorithm, {})))).fetchone()
    assert got[:3] == (project, task, algorithm)
    preds = conn.execute(f"SELECT pgml.predict(%s, {feats}) FROM {table}", (project,)).fetchall()
    assert len(preds) == 150 and all(p[0] is not None and np.isfinite(p[0]) for p in preds)
    if task == "classification":
        assert {p[0] for p in preds} <= {0.0, 1.0, 2.0}


def _estimator_of(upstream_dsn: str, project: str):
    """The deployed model's (estimator, bundle), read and verified straight from the upstream registry."""
    async def main():
        conn = await asyncpg.connect(upstream_dsn)
        try:
            key = bytes.fromhex(await conn.fetchval("SELECT value FROM pgml.settings WHERE key = 'artifact_hmac_key'"))
            model_id = await conn.fetchval(
                    "SELECT d.model_id FROM pgml.deployments d JOIN pgml.projects p ON p.id = d.project_id "
                    "WHERE p.name = $1 ORDER BY d.id DESC LIMIT 1", project)
            blob = b"".join(bytes(r[0]) for r in await conn.fetch(
                "SELECT data FROM pgml.files WHERE model_id = $1 ORDER BY part", model_id))
            return unbundle(artifacts.loads_model(key, blob))
        finally:
            await conn.close()
    return asyncio.run(main())


@pytest.mark.parametrize("algorithm", ["linear", "random_forest", "lightgbm", "xgboost", "svm"])
def test_sql_predictions_equal_the_estimators_own(small_tables, upstream, algorithm):
    conn = small_tables
    project = f"cov-equal-{algorithm}"
    conn.execute("SELECT * FROM pgml.train(%s, 'regression', 'cov_diabetes_small', 'target', %s, %s::jsonb)",
                 (project, algorithm, json.dumps(SMALL.get(algorithm, {}))))
    data = conn.execute(f"SELECT {DIABETES}::float8[], pgml.predict(%s, {DIABETES}) FROM cov_diabetes_small",
                        (project,)).fetchall()
    X = np.array([r[0] for r in data])
    sql = np.array([r[1] for r in data])
    estimator, bundle = _estimator_of(upstream.dsn, project)
    # the estimator learned on the preprocessed features (scaled for linear and svm): same transform
    own = np.asarray(estimator.predict(bundle.preprocessor.transform_numbers(X)), dtype=np.float32)
    np.testing.assert_allclose(sql, own, rtol=1e-5, atol=1e-4)


def test_grid_and_random_search_store_results(small_tables):
    conn = small_tables
    conn.execute("SELECT * FROM pgml.train('cov-grid', 'regression', 'cov_diabetes_small', 'target', 'ridge', "
                 "search => 'grid', search_params => '{\"alpha\": [0.1, 1.0, 10.0]}', search_args => '{\"cv\": 3}')")
    metrics, hyper = conn.execute(
        "SELECT m.metrics, m.hyperparams FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
        "WHERE p.name = 'cov-grid'").fetchone()
    assert len(metrics["search_results"]["params"]) == 3
    assert hyper["alpha"] in (0.1, 1.0, 10.0)
    conn.execute("SELECT * FROM pgml.train('cov-random', 'classification', 'pgml.iris', 'target', 'random_forest', "
                 "'{\"n_estimators\": 5}', 'random', '{\"max_depth\": [2, 3, 4, 5]}', "
                 "'{\"n_iter\": 2, \"cv\": 2}')")
    metrics = conn.execute("SELECT m.metrics FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
                           "WHERE p.name = 'cov-random'").fetchone()[0]
    assert len(metrics["search_results"]["params"]) == 2


def test_metrics_per_task(small_tables):
    conn = small_tables
    conn.execute("SELECT * FROM pgml.train('cov-metrics-reg', 'regression', 'cov_diabetes_small', 'target')")
    reg = conn.execute("SELECT m.metrics FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
                       "WHERE p.name = 'cov-metrics-reg'").fetchone()[0]
    assert {"r2", "mean_squared_error", "mean_absolute_error", "explained_variance", "fit_time",
            "score_time"} <= set(reg)
    conn.execute("SELECT pgml.load_dataset('breast_cancer')")
    conn.execute("SELECT * FROM pgml.train('cov-metrics-bin', 'classification', 'pgml.breast_cancer', 'malignant', "
                 "'linear', '{\"max_iter\": 3000}')")
    clf = conn.execute("SELECT m.metrics FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
                       "WHERE p.name = 'cov-metrics-bin'").fetchone()[0]
    assert {"f1", "precision", "recall", "accuracy", "mcc", "roc_auc", "log_loss", "fit_time"} <= set(clf)


def test_train_joint_and_predict_joint(conn):
    conn.execute("SELECT pgml.load_dataset('linnerud')")
    got = conn.execute("SELECT * FROM pgml.train_joint('cov-joint', 'regression', 'pgml.linnerud', "
                       "ARRAY['weight', 'waist', 'pulse'], 'linear')").fetchone()
    assert got[:3] == ("cov-joint", "regression", "linear")
    out = conn.execute("SELECT pgml.predict_joint('cov-joint', ARRAY[chins, situps, jumps]) FROM pgml.linnerud").fetchall()
    assert len(out) == 20 and all(len(r[0]) == 3 for r in out)
    one = conn.execute("SELECT pgml.predict_joint('cov-joint', ARRAY[5, 162, 60])").fetchone()[0]
    assert len(one) == 3


def test_feature_array_types_and_variadic(small_tables):
    conn = small_tables
    conn.execute("DROP TABLE IF EXISTS cov_types")
    conn.execute("CREATE TABLE cov_types AS SELECT (g % 7)::int2 AS a, (g % 5)::int4 AS b, (g % 3)::int8 AS c, "
                 "(g % 2 = 0) AS d, (g / 10.0)::numeric AS e, (g % 7) * 2 + (g % 5) AS y "
                 "FROM generate_series(1, 200) g")
    conn.execute("SELECT * FROM pgml.train('cov-types', 'regression', 'cov_types', 'y', 'linear')")
    expected = conn.execute("SELECT pgml.predict('cov-types', ARRAY[3, 4, 2, 1, 1.5]::float8[])").fetchone()[0]
    variants = [
        "ARRAY[3, 4, 2, 1, 1.5]::real[]", "ARRAY[3, 4, 2, 1, 1.5]::numeric[]",
        "ARRAY[3::int2, 4::int2, 2::int2, 1::int2, 1.5::float4]::real[]",
    ]
    for v in variants:
        assert conn.execute(f"SELECT pgml.predict('cov-types', {v})").fetchone()[0] == pytest.approx(expected)
    assert conn.execute("SELECT pgml.predict('cov-types', 3, 4, 2, 1, 1.5)").fetchone()[0] == pytest.approx(expected)
    assert conn.execute("SELECT pgml.predict('cov-types', VARIADIC ARRAY[3, 4, 2, 1, 1.5])").fetchone()[0] == \
        pytest.approx(expected)
    ints = conn.execute("SELECT pgml.predict('cov-types', ARRAY[3, 4, 2, 1, 2]::int4[])").fetchone()[0]
    assert np.isfinite(ints)
    bools = conn.execute("SELECT pgml.predict('cov-types', ARRAY[true, false, true, true, false])").fetchone()[0]
    assert np.isfinite(bools)
    # features straight from the table's own mixed-type columns, in SQL
    table = conn.execute("SELECT pgml.predict('cov-types', ARRAY[a, b, c, d::int, e]) FROM cov_types").fetchall()
    assert len(table) == 200


def test_first_errors_users_hit(small_tables):
    conn = small_tables
    with pytest.raises(errors.UndefinedObject) as info:
        conn.execute("SELECT pgml.predict('cov-nobody', ARRAY[1, 2])")
    assert info.value.diag.sqlstate == "42704"
    with pytest.raises(errors.InvalidParameterValue) as info:
        conn.execute(f"SELECT pgml.predict('cov-metrics-reg', ARRAY[1, 2, 3])")
    assert "takes 10 input values" in str(info.value) and "got 3" in str(info.value)
    with pytest.raises(errors.InvalidParameterValue):
        conn.execute("SELECT * FROM pgml.deploy('cov-metrics-reg', 'worst_score')")
    with pytest.raises(errors.InvalidParameterValue):
        conn.execute("SELECT * FROM pgml.train('cov-bad-task', 'ranking', 'cov_diabetes_small', 'target')")
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT * FROM pgml.train('cov-bad-algo', 'regression', 'cov_diabetes_small', 'target', "
                     "'deep_magic')")
    assert "ridge" in str(info.value) or "ridge" in (info.value.diag.message_hint or "")
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT * FROM pgml.train('cov-bad-hp', 'regression', 'cov_diabetes_small', 'target', "
                     "'ridge', '{\"alphaa\": 1}')")
    assert "alpha" in str(info.value) + (info.value.diag.message_hint or "")
    # a project that exists but has no deployed model
    conn.execute("SELECT * FROM pgml.train('cov-undeployed', 'regression', 'cov_diabetes_small', 'target', "
                 "automatic_deploy => false)")
    with pytest.raises(psycopg.Error) as info:
        conn.execute(f"SELECT pgml.predict('cov-undeployed', {DIABETES}) FROM cov_diabetes_small")
    assert info.value.diag.sqlstate == "42704"
    assert "deploy" in str(info.value) + (info.value.diag.message_hint or "")
    # unsupported position: a clear 0A000
    with pytest.raises(errors.FeatureNotSupported):
        conn.execute("SELECT pgml.train('cov-x', 'regression', 'cov_diabetes_small', 'target') FROM generate_series(1, 2)")
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_null_feature_in_training_is_imputed_or_refused_by_name(conn):
    """NULL features are imputed by default (the mean, recorded in the snapshot's analysis);
    impute: error refuses the training, naming the column, and leaves no model behind."""
    conn.execute("DROP TABLE IF EXISTS cov_nulls")
    conn.execute("CREATE TABLE cov_nulls AS SELECT g::float8 AS x, CASE WHEN g = 7 THEN NULL ELSE g END::float8 "
                 "AS \"Odd Column\", g * 2.0 AS y FROM generate_series(1, 50) g")
    conn.execute("SELECT * FROM pgml.train('cov-nulls', 'regression', 'cov_nulls', 'y')")
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT * FROM pgml.train('cov-nulls-strict', 'regression', 'cov_nulls', 'y', "
                     "preprocess => '{\"Odd Column\": {\"impute\": \"error\"}}')")
    assert "Odd Column" in str(info.value)
    failed = conn.execute("SELECT count(*) FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
                          "WHERE p.name LIKE 'cov-nulls%' AND m.status <> 'successful'").fetchone()[0]
    assert failed == 0


def test_digits_image_arrays_train(conn):
    conn.execute("SELECT pgml.load_dataset('digits')")
    conn.execute("SELECT * FROM pgml.train('cov-digits', 'classification', 'pgml.digits', 'target', 'linear', "
                 "'{\"max_iter\": 200}')")
    got = conn.execute("SELECT target, pgml.predict('cov-digits', (SELECT array_agg(v) FROM unnest(image) v)) "
                       "FROM pgml.digits LIMIT 50").fetchall()
    assert sum(1 for t, p in got if t == p) >= 40


def test_best_fit_is_an_alias_of_best_score(small_tables):
    conn = small_tables
    conn.execute("SELECT * FROM pgml.train('cov-bestfit', 'regression', 'cov_diabetes_small', 'target')")
    assert conn.execute("SELECT * FROM pgml.deploy('cov-bestfit', 'best_fit')").fetchone()[1] == "best_score"
