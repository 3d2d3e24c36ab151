"""Small batches in tree plans: Forest._leaves_small (every node's branch decided at once, for a
few rows) must reach exactly the leaves of the level walk, and the plan's predictions on those
rows must agree with the library's own, for LightGBM, XGBoost and scikit-learn forests."""
from __future__ import annotations

import functools

import numpy as np
import pytest
from sklearn import ensemble
from sklearn.datasets import make_classification, make_regression

import pgml_server.ml.inference.trees as trees
from pgml_server.ml.inference import compile_plan as _compile_plan

# These tests are about the compiled numpy walk, so every batch size must take it: without
# native=False, batches from a few dozen rows on go to the library's own predictor instead.
compile_plan = functools.partial(_compile_plan, native=False)

lgb = pytest.importorskip("lightgbm")
xgb = pytest.importorskip("xgboost")


def _data(task, seed=0, nan=True):
    if task == "regression":
        X, y = make_regression(n_samples=600, n_features=8, noise=5.0, random_state=seed)
    else:
        X, y = make_classification(n_samples=600, n_features=8, n_informative=5, n_classes=3,
                                   random_state=seed)
    if nan:
        rng = np.random.default_rng(seed + 1)
        X = X.copy()
        X[rng.random(X.shape) < 0.1] = np.nan
        X[rng.random(X.shape) < 0.05] = 0.0           # LightGBM's zero_as_missing case
    return X, y


def _estimators(task):
    if task == "regression":
        return [lgb.LGBMRegressor(n_estimators=60, verbose=-1),
                lgb.LGBMRegressor(n_estimators=30, zero_as_missing=True, verbose=-1),
                xgb.XGBRegressor(n_estimators=40, max_depth=5),
                ensemble.RandomForestRegressor(n_estimators=20, max_depth=6, random_state=0),
                ensemble.HistGradientBoostingRegressor(max_iter=30)]
    return [lgb.LGBMClassifier(n_estimators=40, verbose=-1),
            xgb.XGBClassifier(n_estimators=30, max_depth=4),
            ensemble.RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0),
            ensemble.ExtraTreesClassifier(n_estimators=15, max_depth=5, random_state=0)]


def _walk(forest, X):
    """leaves() forced through the level walk."""
    saved = trees._SMALL_CELLS_PER_LEVEL
    trees._SMALL_CELLS_PER_LEVEL = -1
    try:
        return forest.leaves(X)
    finally:
        trees._SMALL_CELLS_PER_LEVEL = saved


def _small(forest, X):
    saved = trees._SMALL_CELLS_PER_LEVEL
    trees._SMALL_CELLS_PER_LEVEL = 1 << 40
    try:
        return forest.leaves(X)
    finally:
        trees._SMALL_CELLS_PER_LEVEL = saved


def _cases():
    for task in ("regression", "classification"):
        for i, est in enumerate(_estimators(task)):
            yield pytest.param(task, est, id=f"{task}-{type(est).__name__}-{i}")


@pytest.mark.parametrize("task, estimator", list(_cases()))
def test_small_batches_reach_the_walks_leaves_and_agree_with_the_library(task, estimator):
    X, y = _data(task, nan=not isinstance(estimator, (ensemble.RandomForestRegressor,
                                                     ensemble.RandomForestClassifier,
                                                     ensemble.ExtraTreesClassifier)))
    estimator.fit(X[:500], y[:500])
    plan = compile_plan(estimator, task)
    assert plan.kind == "trees"
    forest = plan.forest
    X_test = X[500:]
    for n in (1, 2, 3, 8, 32):
        for start in range(0, 96, n * 3 + 1):
            rows = X_test[start:start + n]
            if rows.shape[0] == 0:
                continue
            assert np.array_equal(_small(forest, rows), _walk(forest, rows))
            expected = estimator.predict(rows)
            got = plan.predict(rows)                  # through whichever path the size picks
            if task == "classification":
                assert np.array_equal(got, expected)
                np.testing.assert_allclose(plan.predict_proba(rows), estimator.predict_proba(rows),
                                           rtol=1e-6, atol=1e-9)
            else:
                np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_one_row_takes_the_small_path_and_many_rows_the_walk(monkeypatch):
    X, y = _data("regression", nan=False)
    plan = compile_plan(lgb.LGBMRegressor(n_estimators=50, verbose=-1).fit(X, y), "regression")
    calls = []
    original = trees.Forest._leaves_small
    monkeypatch.setattr(trees.Forest, "_leaves_small",
                        lambda self, *a: calls.append(a[0].shape[0]) or original(self, *a))
    one = plan.predict(X[:1])
    assert calls == [1]
    many = plan.predict(X[:400])
    assert calls == [1]                               # 400 rows: the level walk
    np.testing.assert_allclose(one[0], many[0], rtol=1e-12)   # same leaves; BLAS may sum in another order


def test_single_row_with_nan_everywhere():
    X, y = _data("regression")
    for est in (lgb.LGBMRegressor(n_estimators=20, verbose=-1), xgb.XGBRegressor(n_estimators=20)):
        est.fit(X, y)
        plan = compile_plan(est, "regression")
        row = np.full((1, X.shape[1]), np.nan)
        assert np.array_equal(_small(plan.forest, row), _walk(plan.forest, row))
        np.testing.assert_allclose(plan.predict(row), est.predict(row), rtol=1e-6, atol=1e-6)
