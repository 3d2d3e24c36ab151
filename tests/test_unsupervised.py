"""Clustering and decomposition end to end through the server: training without a label, their
metrics and key metrics, pgml.predict (cluster id) and pgml.decompose (components) with constant,
bound and per-row features, and the errors of the wrong task for a function."""
from __future__ import annotations

import asyncio

import asyncpg
import numpy as np
import psycopg
import pytest
from psycopg import errors

from pgml_server.ml.inference import PlanError, compile_plan
from pgml_server.ml.training.algorithms import ALGORITHMS, UNSUPERVISED, make_estimator

COLS = "sepal_length, sepal_width, petal_length, petal_width"
FEATURES = f"ARRAY[{COLS}]"
ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def trained(server):
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pgml.load_dataset('iris')")
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        conn.execute(f"CREATE OR REPLACE VIEW unsup_iris AS SELECT {COLS} FROM pgml.iris")
        conn.execute("SELECT * FROM pgml.train('unsup-km', 'clustering', 'unsup_iris', NULL, 'kmeans', "
                     "'{\"n_clusters\": 3}')")
        conn.execute("SELECT * FROM pgml.train('unsup-pca', 'decomposition', 'unsup_iris', NULL, 'pca', "
                     "'{\"n_components\": 2}')")
        conn.execute("SELECT * FROM pgml.train('unsup-reg', 'regression', 'pgml.diabetes', 'target', 'linear')")
    return server


def rows(conn, sql, params=None):
    return conn.execute(sql, params).fetchall()


def metrics_of(conn, project):
    return rows(conn, "SELECT m.metrics FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
                      "WHERE p.name = %s ORDER BY m.id", (project,))


def test_clustering_trains_without_a_label_and_stores_its_metrics(trained):
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        (metrics,), = metrics_of(conn, "unsup-km")
        # (on standardised features, as kmeans trains by default)
        assert metrics["silhouette"] > 0.3 and metrics["calinski_harabasz"] > 50
        assert metrics["davies_bouldin"] > 0 and metrics["n_clusters"] == 3
        assert metrics["feature_names"] == COLS.split(", ")
        # named arguments, y_column_name omitted; a named label column is left out of the features
        out = rows(conn, "SELECT * FROM pgml.train(project_name => 'unsup-birch', task => 'clustering', "
                         "relation_name => 'unsup_iris', algorithm => 'birch', hyperparams => '{\"n_clusters\": 3}')")
        assert out == [("unsup-birch", "clustering", "birch", True)]
        rows(conn, "SELECT * FROM pgml.train('unsup-labelled', 'clustering', 'pgml.iris', 'target', 'kmeans', "
                   "'{\"n_clusters\": 3}')")
        assert rows(conn, "SELECT m.num_features FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
                          "WHERE p.name = 'unsup-labelled'") == [(4,)]
        for algorithm, params in [("mini_batch_kmeans", '{"n_clusters": 3}'), ("bisecting_kmeans", '{"n_clusters": 3}'),
                                  ("mean_shift", "{}"), ("affinity_propagation", '{"damping": 0.9}'),
                                  ("dbscan", '{"eps": 0.6}')]:
            out = rows(conn, "SELECT * FROM pgml.train('unsup-algos', 'clustering', 'unsup_iris', NULL, %s, %s)",
                       (algorithm, params))
            assert out[0][:3] == ("unsup-algos", "clustering", algorithm)
            assert rows(conn, "SELECT pgml.predict('unsup-algos', ARRAY[5.1, 3.5, 1.4, 0.2])")[0][0] is not None
        statuses = rows(conn, "SELECT m.status, m.metrics ? 'silhouette' FROM pgml.models m "
                              "JOIN pgml.projects p ON p.id = m.project_id WHERE p.name = 'unsup-algos'")
        assert statuses == [("successful", True)] * 5
        # retraining with the project name alone: the last snapshot and the task's default algorithm
        assert rows(conn, "SELECT * FROM pgml.train('unsup-km', hyperparams => '{\"n_clusters\": 2}')") == \
            [("unsup-km", "clustering", "kmeans", True)]        # 2 clusters of iris have a higher silhouette
        # best_score ranks by silhouette (higher is better)
        best = rows(conn, "SELECT m.algorithm, m.metrics->>'n_clusters' FROM pgml.models m JOIN pgml.projects p "
                          "ON p.id = m.project_id WHERE p.name = 'unsup-km' "
                          "ORDER BY (m.metrics->>'silhouette')::float8 DESC LIMIT 1")
        assert rows(conn, "SELECT * FROM pgml.deploy('unsup-km', 'best_score')")[0][2] == best[0][0]


def test_predict_returns_the_cluster_id_everywhere(trained):
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        rows(conn, "SELECT * FROM pgml.train('unsup-km3', 'clustering', 'unsup_iris', NULL, 'kmeans', "
                   "'{\"n_clusters\": 3}')")
        one = rows(conn, "SELECT pgml.predict('unsup-km3', ARRAY[5.1, 3.5, 1.4, 0.2])")[0][0]
        assert one in (0.0, 1.0, 2.0)
        assert rows(conn, "SELECT pgml.predict('unsup-km3', %s)", (ROW,))[0][0] == one          # bound real[]
        stream = rows(conn, f"SELECT pgml.predict('unsup-km3', {FEATURES}) FROM pgml.iris")
        labels = [r[0] for r in stream]
        assert set(labels) == {0.0, 1.0, 2.0} and labels[0] == one
        groups = rows(conn, f"SELECT pgml.predict('unsup-km3', {FEATURES}) AS c, count(*) FROM pgml.iris "
                            "GROUP BY 1 ORDER BY 1")
        assert [g[0] for g in groups] == [0.0, 1.0, 2.0]
        assert [g[1] for g in groups] == [labels.count(c) for c in (0.0, 1.0, 2.0)]
        # clusters follow the species: each species lies mostly in one cluster
        by_species = rows(conn, "SELECT target, mode() WITHIN GROUP "
                                f"(ORDER BY pgml.predict('unsup-km3', {FEATURES})) "
                                "FROM pgml.iris GROUP BY target ORDER BY target")
        assert len({r[1] for r in by_species}) == 3


def test_decomposition_metrics_and_decompose(trained):
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        (metrics,), = metrics_of(conn, "unsup-pca")
        per = metrics["explained_variance_ratio_per_component"]
        assert len(per) == 2 and per[0] > per[1] > 0
        assert metrics["explained_variance_ratio"] == pytest.approx(sum(per)) and metrics["explained_variance_ratio"] > 0.9
        one = rows(conn, "SELECT pgml.decompose('unsup-pca', ARRAY[5.1, 3.5, 1.4, 0.2])")[0][0]
        assert len(one) == 2 and all(isinstance(v, float) for v in one)
        assert rows(conn, "SELECT pgml.decompose('unsup-pca', %s)", (ROW,))[0][0] == one
        assert rows(conn, "SELECT pgml.decompose('unsup-pca', 5.1, 3.5, 1.4, 0.2)")[0][0] == one     # VARIADIC
        stream = rows(conn, f"SELECT pgml.decompose('unsup-pca', {FEATURES}) FROM pgml.iris")
        assert stream[0][0] == pytest.approx(one, rel=1e-6) and len(stream) == 150
        general = rows(conn, f"SELECT (pgml.decompose('unsup-pca', {FEATURES}))[1] FROM pgml.iris")
        assert [g[0] for g in general] == pytest.approx([s[0][0] for s in stream], rel=1e-6)
        first = np.array([s[0][0] for s in stream])
        # PCA components are centred: the first one separates setosa from the rest
        assert abs(first.mean()) < 0.5 and first.std() > 1
        for algorithm, params in [("kernel_pca", '{"n_components": 2}'), ("fast_ica", '{"n_components": 2}'),
                                  ("nmf", '{"n_components": 2, "max_iter": 1000}'),
                                  ("truncated_svd", '{"n_components": 2}'), ("incremental_pca", "{}")]:
            out = rows(conn, "SELECT * FROM pgml.train('unsup-decomp', 'decomposition', 'unsup_iris', NULL, %s, %s)",
                       (algorithm, params))
            assert out[0][:3] == ("unsup-decomp", "decomposition", algorithm)
            model = rows(conn, "SELECT max(m.id) FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
                               "WHERE p.name = 'unsup-decomp'")[0][0]
            values = rows(conn, "SELECT pgml.decompose(%s::bigint, ARRAY[5.1, 3.5, 1.4, 0.2])", (model,))[0][0]
            assert len(values) == (4 if algorithm == "incremental_pca" else 2)
        (ica,) = [m for (m,) in metrics_of(conn, "unsup-decomp") if m.get("n_components") == 2.0][1:2]
        assert 0.9 < ica["explained_variance_ratio"] <= 1.0


def test_asyncpg_prepared_predict_and_decompose(trained):
    async def go():
        conn = await asyncpg.connect(trained.dsn())
        try:
            decompose = await conn.prepare("SELECT pgml.decompose($1, $2::real[])")
            predict = await conn.prepare("SELECT pgml.predict($1, $2::real[])")
            first = await decompose.fetchval("unsup-pca", ROW)
            assert len(first) == 2 and await decompose.fetchval("unsup-pca", ROW) == first
            assert await predict.fetchval("unsup-km3", ROW) in (0.0, 1.0, 2.0)
            with pytest.raises(asyncpg.WrongObjectTypeError):
                await decompose.fetchval("unsup-km3", ROW)
        finally:
            await conn.close()
    asyncio.run(go())


def test_the_wrong_task_for_a_function_is_42809(trained):
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        cases = [
            ("SELECT pgml.predict('unsup-pca', ARRAY[5.1, 3.5, 1.4, 0.2])", "pgml.decompose"),
            ("SELECT pgml.predict_proba('unsup-km3', ARRAY[5.1, 3.5, 1.4, 0.2])", "pgml.predict"),
            ("SELECT pgml.decompose('unsup-reg', ARRAY[1,2,3,4,5,6,7,8,9,10])", "pgml.predict"),
            ("SELECT pgml.decompose('unsup-km3', ARRAY[5.1, 3.5, 1.4, 0.2])", "cluster id"),
            (f"SELECT pgml.predict('unsup-pca', {FEATURES}) FROM pgml.iris", "pgml.decompose"),
            (f"SELECT pgml.decompose('unsup-km3', {FEATURES}) FROM pgml.iris", "pgml.predict"),
            (f"SELECT count(*) FROM pgml.iris WHERE pgml.predict('unsup-pca', {FEATURES}) > 0", "pgml.decompose"),
        ]
        for sql, hint in cases:
            with pytest.raises(errors.WrongObjectType) as err:
                conn.execute(sql)
            assert hint in (err.value.diag.message_hint or ""), sql


def test_bad_unsupervised_training_arguments(trained):
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        with pytest.raises(errors.InvalidParameterValue) as err:
            conn.execute("SELECT * FROM pgml.train('unsup-bad', 'clustering', 'unsup_iris', NULL, 'linear')")
        assert "kmeans" in err.value.diag.message_hint
        with pytest.raises(errors.InvalidParameterValue) as err:
            conn.execute("SELECT * FROM pgml.train('unsup-bad', 'clustering', 'unsup_iris', NULL, 'k_means')")
        assert "unknown algorithm" in err.value.diag.message_primary
        for params in ('{"n_clusters": 0}', '{"n_clusters": "three"}', '{"n_clusters": -2}'):
            with pytest.raises(errors.InvalidParameterValue) as err:
                conn.execute("SELECT * FROM pgml.train('unsup-bad', 'clustering', 'unsup_iris', NULL, 'kmeans', %s)",
                             (params,))
            assert "n_clusters" in err.value.diag.message_primary
        with pytest.raises(errors.InvalidParameterValue):
            conn.execute("SELECT * FROM pgml.train('unsup-bad', 'decomposition', 'unsup_iris', NULL, 'pca', "
                         "'{\"n_componentz\": 2}')")
        with pytest.raises(errors.FeatureNotSupported):
            conn.execute("SELECT * FROM pgml.train('unsup-bad', 'clustering', 'unsup_iris', NULL, 'kmeans', "
                         "search => 'grid', search_params => '{\"n_clusters\": [2, 3]}')")
        with pytest.raises(errors.InvalidParameterValue) as err:
            conn.execute("SELECT * FROM pgml.train('unsup-bad', 'clusterring', 'unsup_iris', NULL, 'kmeans')")
        assert "clustering" in err.value.diag.message_hint
        # a supervised task still needs its label
        with pytest.raises(errors.NullValueNotAllowed) as err:
            conn.execute("SELECT * FROM pgml.train('unsup-bad2', 'regression', 'unsup_iris', NULL, 'linear')")
        assert "clustering" in err.value.diag.message_hint
        # nothing was left behind for the refused trainings
        assert rows(conn, "SELECT count(*) FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
                          "WHERE p.name = 'unsup-bad' AND m.status <> 'failed'") == [(0,)]


def test_dbscan_labels_new_rows_by_their_nearest_core_sample(trained):
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        rows(conn, "SELECT * FROM pgml.train('unsup-dbscan', 'clustering', 'unsup_iris', NULL, 'dbscan', "
                   "'{\"eps\": 0.6, \"min_samples\": 4}')")
        labels = {r[0] for r in rows(conn, f"SELECT pgml.predict('unsup-dbscan', {FEATURES}) FROM pgml.iris")}
        assert {0.0, 1.0} <= labels <= {-1.0, 0.0, 1.0, 2.0}
        # far from every core sample: noise
        assert rows(conn, "SELECT pgml.predict('unsup-dbscan', ARRAY[50, 50, 50, 50])") == [(-1.0,)]


PLAN_KINDS = {"kmeans": "centroids", "mini_batch_kmeans": "centroids", "mean_shift": "centroids",
              "affinity_propagation": "centroids", "birch": "centroids", "bisecting_kmeans": "estimator",
              "dbscan": "estimator", "pca": "projection", "incremental_pca": "projection",
              "truncated_svd": "projection", "kernel_pca": "estimator", "fast_ica": "estimator", "nmf": "estimator"}
UNSUPERVISED_PAIRS = sorted(p for p in ALGORITHMS if p[1] in UNSUPERVISED)


def test_every_unsupervised_entry_is_classified_here():
    assert {a for a, _ in UNSUPERVISED_PAIRS} == set(PLAN_KINDS)


@pytest.mark.parametrize("algorithm,task", UNSUPERVISED_PAIRS, ids=[f"{a}-{t}" for a, t in UNSUPERVISED_PAIRS])
def test_every_unsupervised_plan_agrees_with_its_estimator(algorithm, task):
    from sklearn.datasets import load_iris
    X = load_iris().data
    params = {"n_clusters": 3} if algorithm in ("kmeans", "mini_batch_kmeans", "bisecting_kmeans", "birch") else \
        {"n_components": 2} if task == "decomposition" and algorithm != "incremental_pca" else {}
    estimator = make_estimator(algorithm, task, params, seed=0).fit(X[::2])
    plan = compile_plan(estimator, task)
    assert plan.kind == PLAN_KINDS[algorithm] and plan.task == task and plan.num_features == 4 and plan.nbytes > 0
    for rows in (X[1::2], X[1:2]):
        if task == "clustering":
            np.testing.assert_array_equal(plan.predict(rows), estimator.predict(rows).astype(np.float64))
            with pytest.raises(PlanError):
                plan.transform(rows)
        else:
            np.testing.assert_allclose(plan.transform(rows), estimator.transform(rows), rtol=1e-9, atol=1e-9)
            with pytest.raises(PlanError):
                plan.predict(rows)
        with pytest.raises(PlanError):
            plan.predict_proba(rows)
