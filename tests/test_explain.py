"""pgml.feature_importance and pgml.explain through the server, and the numpy TreeSHAP against
brute-force Shapley values."""
from __future__ import annotations

import itertools
import math

import numpy as np
import psycopg
import pytest
from psycopg import errors

from pgml_server.ml.explain import ExplainModel, aggregate, contributions, path_table, tree_shap

DIABETES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
IRIS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
REGRESSORS = {
    "linear": "{}",
    "lightgbm": '{"n_estimators": 30}',
    "xgboost": '{"n_estimators": 30}',
    "random_forest": '{"n_estimators": 20}',
    "gradient_boosting_trees": '{"n_estimators": 30}',
    "hist_gradient_boosting": '{"max_iter": 20}',
}
CLASSIFIERS = {
    "linear": '{"max_iter": 5000}',
    "lightgbm": '{"n_estimators": 20}',
    "xgboost": '{"n_estimators": 20}',
    "random_forest": '{"n_estimators": 20}',
    "gradient_boosting_trees": '{"n_estimators": 20}',
}


@pytest.fixture(scope="module")
def trained(server):
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        for name in ("diabetes", "breast_cancer", "iris"):
            conn.execute("SELECT pgml.load_dataset(%s)", (name,))
        for algorithm, params in REGRESSORS.items():
            conn.execute("SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target', %s, %s)",
                         (f"ex-reg-{algorithm}", algorithm, params))
        for algorithm, params in CLASSIFIERS.items():
            conn.execute("SELECT * FROM pgml.train(%s, 'classification', 'pgml.breast_cancer', 'malignant', %s, %s)",
                         (f"ex-bin-{algorithm}", algorithm, params))
            conn.execute("SELECT * FROM pgml.train(%s, 'classification', 'pgml.iris', 'target', %s, %s)",
                         (f"ex-iris-{algorithm}", algorithm, params))
        conn.execute("SELECT * FROM pgml.train('ex-svm', 'regression', 'pgml.diabetes', 'target', 'svm')")
        conn.execute("SELECT * FROM pgml.train('ex-pca', 'decomposition', 'pgml.diabetes', 'target', 'pca')")
    return server


def rows(conn, sql, params=None):
    return conn.execute(sql, params).fetchall()


def table_rows(conn, table, columns, n=5):
    return [list(r) for r in rows(conn, f"SELECT {', '.join(columns)} FROM {table} ORDER BY ctid LIMIT {n}")]


def array_sql(values) -> str:
    return "ARRAY[" + ", ".join(repr(float(v)) for v in values) + "]"


def check_shape(out, names):
    assert out[0][0] == "(base)" and out[0][1] is None
    assert [r[0] for r in out[1:]] == names
    return out[0][2] + sum(r[2] for r in out[1:])


def test_regression_contributions_add_up_to_the_prediction(trained):
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        for algorithm in REGRESSORS:
            project = f"ex-reg-{algorithm}"
            for x in table_rows(conn, "pgml.diabetes", DIABETES):
                prediction = rows(conn, "SELECT pgml.predict(%s, %s::real[])", (project, x))[0][0]
                constant = rows(conn, f"SELECT * FROM pgml.explain('{project}', {array_sql(x)})")
                bound = rows(conn, "SELECT * FROM pgml.explain(%s, %s)", (project, x))
                assert constant == bound
                total = check_shape(constant, DIABETES)
                assert total == pytest.approx(prediction, rel=1e-4, abs=1e-3), algorithm
                assert [r[1] for r in constant[1:]] == pytest.approx(x, rel=1e-6)


def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def test_classification_contributions_add_up_to_the_raw_score(trained):
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        columns = [r[0] for r in rows(conn, "SELECT attname FROM pg_attribute "
                                            "WHERE attrelid = 'pgml.breast_cancer'::regclass AND attnum > 0 "
                                            "AND NOT attisdropped AND attname <> 'malignant' ORDER BY attnum")]
        for algorithm in CLASSIFIERS:
            project = f"ex-bin-{algorithm}"
            for x in table_rows(conn, "pgml.breast_cancer", columns, 3):
                proba = rows(conn, "SELECT pgml.predict_proba(%s, %s::real[])", (project, x))[0][0]
                total = check_shape(rows(conn, "SELECT * FROM pgml.explain(%s, %s)", (project, x)), columns)
                if algorithm == "random_forest":     # the predicted class's probability
                    assert total == pytest.approx(max(proba), abs=1e-5)
                else:                                 # the positive class's log-odds
                    assert _sigmoid(total) == pytest.approx(proba[1], abs=1e-4), algorithm
        for algorithm in CLASSIFIERS:                 # multi-class: the predicted class's raw score
            project = f"ex-iris-{algorithm}"
            for x in table_rows(conn, "pgml.iris", IRIS, 150)[::50]:
                total = check_shape(rows(conn, "SELECT * FROM pgml.explain(%s, %s)", (project, x)), IRIS)
                proba = rows(conn, "SELECT pgml.predict_proba(%s, %s::real[])", (project, x))[0][0]
                if algorithm == "random_forest":
                    assert total == pytest.approx(max(proba), abs=1e-5)
                else:
                    assert math.isfinite(total)


def test_feature_importance(trained):
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        for algorithm in list(REGRESSORS) + ["svm"]:
            project = "ex-svm" if algorithm == "svm" else f"ex-reg-{algorithm}"
            out = rows(conn, "SELECT * FROM pgml.feature_importance(%s)", (project,))
            assert sorted(r[0] for r in out) == sorted(DIABETES), algorithm
            values = [r[1] for r in out]
            assert values == sorted(values, reverse=True)
            if algorithm not in ("svm", "hist_gradient_boosting"):   # permutation importance may be < 0
                assert min(values) >= 0 and max(values) > 0
            if algorithm in ("random_forest", "gradient_boosting_trees"):
                assert sum(values) == pytest.approx(1.0, rel=1e-5)
        # bmi and s5 carry diabetes progression in every model
        for algorithm in REGRESSORS:
            top = [r[0] for r in rows(conn, "SELECT * FROM pgml.feature_importance(%s)", (f"ex-reg-{algorithm}",))[:3]]
            assert "bmi" in top or "s5" in top, (algorithm, top)
        model_id = rows(conn, "SELECT m.id FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
                              "WHERE p.name = 'ex-reg-linear'")[0][0]
        assert rows(conn, "SELECT * FROM pgml.feature_importance(%s::bigint)", (model_id,)) == \
            rows(conn, "SELECT * FROM pgml.feature_importance('ex-reg-linear')")
        out = rows(conn, "SELECT * FROM pgml.feature_importance('ex-iris-linear')")
        assert sorted(r[0] for r in out) == sorted(IRIS)


def test_explanation_errors(trained):
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        x = table_rows(conn, "pgml.diabetes", DIABETES, 1)[0]
        with pytest.raises(errors.FeatureNotSupported) as err:
            rows(conn, "SELECT * FROM pgml.explain('ex-svm', %s)", (x,))
        assert "lightgbm" in err.value.diag.message_hint and "random_forest" in err.value.diag.message_hint
        with pytest.raises(errors.WrongObjectType):
            rows(conn, "SELECT * FROM pgml.explain('ex-pca', %s)", (x,))
        with pytest.raises(errors.WrongObjectType):
            rows(conn, "SELECT * FROM pgml.feature_importance('ex-pca')")
        with pytest.raises(errors.InvalidParameterValue):
            rows(conn, "SELECT * FROM pgml.explain('ex-reg-linear', ARRAY[1, 2, 3])")
        # a NULL feature is imputed as at training: explained like any row
        assert len(rows(conn, "SELECT * FROM pgml.explain('ex-reg-linear', %s)", ([None] + x[1:],))) == len(x) + 1
        with pytest.raises(errors.UndefinedObject):
            rows(conn, "SELECT * FROM pgml.explain('ex-nothing', %s)", (x,))
        with pytest.raises(errors.UndefinedObject):
            rows(conn, "SELECT * FROM pgml.feature_importance('ex-nothing')")
        conn.execute("SELECT * FROM pgml.train_joint('ex-joint', 'regression', 'pgml.diabetes', ARRAY['target', 's6'], "
                     "'linear')")
        with pytest.raises(errors.FeatureNotSupported) as err:
            rows(conn, "SELECT * FROM pgml.explain('ex-joint', %s)", (x[:9],))
        assert "one model per target" in err.value.diag.message_hint
        # a missing value goes the way the trees send it: LightGBM explains it
        out = rows(conn, "SELECT * FROM pgml.explain('ex-reg-lightgbm', %s)", ([None] + x[1:],))
        assert out[1][0] == "age" and out[1][1] is None


def test_array_columns_are_explained_as_their_column(trained):
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS ex_arrays")
        conn.execute("CREATE TABLE ex_arrays AS SELECT bmi AS a, ARRAY[bp, s5] AS v, target AS y FROM pgml.diabetes")
        conn.execute("SELECT * FROM pgml.train('ex-arrays', 'regression', 'ex_arrays', 'y', 'linear')")
        out = rows(conn, "SELECT * FROM pgml.explain('ex-arrays', ARRAY[0.05, 0.01, 0.02])")
        assert [r[0] for r in out] == ["(base)", "a", "v"]          # v[1] and v[2] sum back to v
        prediction = rows(conn, "SELECT pgml.predict('ex-arrays', ARRAY[0.05, 0.01, 0.02])")[0][0]
        assert sum(r[2] for r in out) == pytest.approx(prediction, rel=1e-4)
        names = [r[0] for r in rows(conn, "SELECT * FROM pgml.feature_importance('ex-arrays')")]
        assert sorted(names) == ["a", "v"]


# ---------------------------------------------------------------- without the server

def test_aggregate_sums_features_of_one_source():
    values = np.array([0.5, 1.0, 2.0, -0.25])
    assert aggregate(values, ["age", "city", "city", "size"]) == [("age", 0.5, 1), ("city", 3.0, 2),
                                                                   ("size", -0.25, 1)]


def test_one_hot_features_sum_back_to_their_source_column():
    """A stored feature_sources list (what preprocessing will write) maps several model features
    to one column: explain and feature_importance sum them there."""
    from sklearn.linear_model import LinearRegression
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(size=200), rng.integers(0, 2, 200), rng.integers(0, 2, 200)]).astype(float)
    y = X @ [1.0, 2.0, -3.0] + 0.5
    estimator = LinearRegression().fit(X, y)
    metrics = {"feature_names": ["size", "color_red", "color_blue"], "feature_sources": ["size", "color", "color"],
               "feature_stats": {"mean": list(X.mean(axis=0)), "std": list(X.std(axis=0))}}
    model = ExplainModel(1, "regression", "linear", estimator, metrics, 3)
    from pgml_server.ml.explain import feature_sources, importances
    assert feature_sources(model) == ["size", "color", "color"]
    out = contributions(model, X[:1])
    summed = aggregate(out.contributions, feature_sources(model))
    assert [s for s, _, _ in summed] == ["size", "color"] and summed[1][2] == 2
    assert summed[1][1] == pytest.approx(out.contributions[1] + out.contributions[2])
    assert out.base + sum(v for _, v, _ in summed) == pytest.approx(float(estimator.predict(X[:1])[0]))
    values, _ = importances(model)
    np.testing.assert_allclose(values, np.abs(estimator.coef_) * X.std(axis=0))


def _brute_force_shapley(tree, x, n):
    def expectation(node, S):
        if tree.children_left[node] < 0:
            return tree.value[node, 0, 0]
        f, left, right = tree.feature[node], tree.children_left[node], tree.children_right[node]
        if f in S:
            return expectation(left if np.float32(x[f]) <= tree.threshold[node] else right, S)
        w = tree.weighted_n_node_samples
        return (w[left] * expectation(left, S) + w[right] * expectation(right, S)) / w[node]

    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            for S in itertools.combinations(others, k):
                weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
                phi[i] += weight * (expectation(0, set(S) | {i}) - expectation(0, set(S)))
    return expectation(0, set()), phi


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tree_shap_matches_brute_force_shapley_values(seed):
    from sklearn.tree import DecisionTreeRegressor
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(300, 5))
    y = X[:, 0] * 2 + X[:, 1] * X[:, 2] - np.abs(X[:, 3]) + rng.normal(size=300) * 0.1
    tree = DecisionTreeRegressor(max_depth=5, random_state=seed).fit(X, y).tree_
    table = path_table([tree], [tree.value[:, 0, 0]], [1.0])
    for x in X[:5]:
        expected, phi = tree_shap(table, x, 5)
        want_expected, want_phi = _brute_force_shapley(tree, x, 5)
        assert expected == pytest.approx(want_expected, abs=1e-9)
        np.testing.assert_allclose(phi, want_phi, atol=1e-9)


def test_sklearn_ensembles_explain_exactly():
    from sklearn.datasets import load_iris
    from sklearn.ensemble import (ExtraTreesRegressor, GradientBoostingClassifier, GradientBoostingRegressor,
                                  HistGradientBoostingClassifier, HistGradientBoostingRegressor,
                                  RandomForestClassifier)
    X, y = load_iris(return_X_y=True)
    missing = X.copy()
    missing[::11, 2] = np.nan            # HistGradientBoosting: each node's own direction for NaN
    cases = [(GradientBoostingRegressor(n_estimators=20, random_state=0), "regression", X[:, 1:], X[:, 0]),
             (ExtraTreesRegressor(n_estimators=10, random_state=0), "regression", X[:, 1:], X[:, 0]),
             (GradientBoostingClassifier(n_estimators=10, random_state=0), "classification", X, y),
             (GradientBoostingClassifier(n_estimators=10, random_state=0), "classification", X, y == 1),
             (RandomForestClassifier(n_estimators=10, random_state=0), "classification", X, y),
             (HistGradientBoostingRegressor(max_iter=15), "regression", missing[:, 1:], X[:, 0]),
             (HistGradientBoostingClassifier(max_iter=10), "classification", missing, y),
             (HistGradientBoostingClassifier(max_iter=10), "classification", missing, y == 2)]
    for estimator, task, features, target in cases:
        estimator.fit(features, target)
        model = ExplainModel(1, task, type(estimator).__name__, estimator, {}, features.shape[1])
        for row in features[::7]:
            out = contributions(model, row.reshape(1, -1))
            assert out.base + out.contributions.sum() == pytest.approx(out.raw, abs=1e-9)
