"""Tree plans agree with scikit-learn, LightGBM and XGBoost's own predictions, NaN rows included."""
from __future__ import annotations

import functools

import warnings

import numpy as np
import pytest
from sklearn import ensemble, tree
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, make_classification, make_regression
from sklearn.multioutput import MultiOutputRegressor

from pgml_server.ml.inference import PlanError, compile_plan as _compile_plan

# These tests are about the compiled numpy walk, so every batch size must take it: without
# native=False, batches from a few dozen rows on go to the library's own predictor instead.
compile_plan = functools.partial(_compile_plan, native=False)

lightgbm = pytest.importorskip("lightgbm")
xgboost = pytest.importorskip("xgboost")


def _split(X, y, seed=0):
    order = np.random.default_rng(seed).permutation(len(X))
    X, y = X[order], y[order]
    cut = int(len(X) * 0.7)
    return X[:cut], y[:cut], X[cut:]


def _with_nan(X, fraction=0.15, seed=1):
    X = X.copy()
    X[np.random.default_rng(seed).random(X.shape) < fraction] = np.nan
    return X


def regression_data():
    return _split(*load_diabetes(return_X_y=True))


def binary_data():
    return _split(*load_breast_cancer(return_X_y=True))


def multiclass_data():
    return _split(*load_iris(return_X_y=True))


def _agree_regression(estimator, X, y, X_test, *, kind="trees", rtol=1e-6):
    estimator.fit(X, y)
    plan = compile_plan(estimator, "regression")
    assert plan.kind == kind, f"compiled as {plan.kind}"
    np.testing.assert_allclose(plan.predict(X_test), estimator.predict(X_test), rtol=rtol, atol=1e-6)
    np.testing.assert_allclose(plan.predict(X_test[:1]), estimator.predict(X_test[:1]), rtol=rtol, atol=1e-6)
    return plan


def _agree_classification(estimator, X, y, X_test, *, proba=True, rtol=1e-6):
    estimator.fit(X, y)
    plan = compile_plan(estimator, "classification")
    assert plan.kind == "trees", f"compiled as {plan.kind}"
    np.testing.assert_array_equal(plan.predict(X_test), estimator.predict(X_test))
    np.testing.assert_array_equal(plan.predict(X_test[:1]), estimator.predict(X_test[:1]))
    if proba:
        np.testing.assert_allclose(plan.predict_proba(X_test), estimator.predict_proba(X_test), rtol=rtol, atol=1e-7)
        np.testing.assert_allclose(plan.predict_proba(X_test[:1]), estimator.predict_proba(X_test[:1]),
                                   rtol=rtol, atol=1e-7)
    return plan


# ---------------------------------------------------------------- scikit-learn

SK_REGRESSORS = [
    tree.DecisionTreeRegressor(max_depth=6, random_state=0),
    ensemble.RandomForestRegressor(n_estimators=10, max_depth=6, random_state=0),
    ensemble.ExtraTreesRegressor(n_estimators=10, max_depth=6, random_state=0),
    ensemble.GradientBoostingRegressor(n_estimators=20, max_depth=3, random_state=0),
    ensemble.GradientBoostingRegressor(n_estimators=10, loss="huber", random_state=0),
    ensemble.HistGradientBoostingRegressor(max_iter=20, random_state=0),
    ensemble.HistGradientBoostingRegressor(max_iter=20, loss="poisson", random_state=0),
    ensemble.AdaBoostRegressor(tree.DecisionTreeRegressor(max_depth=3), n_estimators=10, random_state=0),
]


@pytest.mark.parametrize("estimator", SK_REGRESSORS, ids=lambda e: type(e).__name__)
def test_sklearn_regressors_agree(estimator):
    _agree_regression(estimator, *regression_data())


SK_CLASSIFIERS = [
    tree.DecisionTreeClassifier(max_depth=6, random_state=0),
    ensemble.RandomForestClassifier(n_estimators=10, max_depth=6, random_state=0),
    ensemble.ExtraTreesClassifier(n_estimators=10, max_depth=6, random_state=0),
    ensemble.GradientBoostingClassifier(n_estimators=15, max_depth=3, random_state=0),
    ensemble.HistGradientBoostingClassifier(max_iter=15, random_state=0),
    ensemble.AdaBoostClassifier(tree.DecisionTreeClassifier(max_depth=2), n_estimators=10, random_state=0),
]


@pytest.mark.parametrize("data", [binary_data, multiclass_data], ids=["binary", "multiclass"])
@pytest.mark.parametrize("estimator", SK_CLASSIFIERS, ids=lambda e: type(e).__name__)
def test_sklearn_classifiers_agree(estimator, data):
    _agree_classification(estimator, *data())


def test_gradient_boosting_exponential_loss():
    _agree_classification(ensemble.GradientBoostingClassifier(n_estimators=10, loss="exponential", random_state=0),
                          *binary_data())


@pytest.mark.parametrize("estimator", [
    tree.DecisionTreeRegressor(max_depth=5, random_state=0),
    ensemble.RandomForestRegressor(n_estimators=8, max_depth=5, random_state=0),
    ensemble.HistGradientBoostingRegressor(max_iter=15, random_state=0),
], ids=lambda e: type(e).__name__)
def test_sklearn_regressors_with_missing_values(estimator):
    X, y, X_test = regression_data()
    _agree_regression(estimator, _with_nan(X), y, _with_nan(X_test, seed=2))


def test_missing_values_unseen_in_training_follow_the_estimator():
    X, y, X_test = multiclass_data()
    estimator = ensemble.HistGradientBoostingClassifier(max_iter=10, random_state=0)
    estimator.fit(X, y)
    X_nan = _with_nan(X_test, 0.3)
    plan = compile_plan(estimator, "classification")
    np.testing.assert_array_equal(plan.predict(X_nan), estimator.predict(X_nan))
    np.testing.assert_allclose(plan.predict_proba(X_nan), estimator.predict_proba(X_nan), rtol=1e-6)


def test_sklearn_classifier_with_missing_values():
    X, y, X_test = binary_data()
    _agree_classification(ensemble.RandomForestClassifier(n_estimators=8, max_depth=5, random_state=0),
                          _with_nan(X), y, _with_nan(X_test, seed=3))


def test_native_multi_output_forest():
    X, Y = make_regression(n_samples=300, n_features=8, n_targets=3, random_state=0)
    X, Y, X_test = _split(X, Y)
    estimator = ensemble.RandomForestRegressor(n_estimators=8, max_depth=6, random_state=0)
    plan = _agree_regression(estimator, X, Y, X_test)
    assert plan.predict(X_test[:1]).shape == (1, 3)


def test_multi_output_regressor_of_trees():
    X, Y = make_regression(n_samples=300, n_features=8, n_targets=2, random_state=0)
    X, Y, X_test = _split(X, Y)
    estimator = MultiOutputRegressor(lightgbm.LGBMRegressor(n_estimators=10, verbose=-1)).fit(X, Y)
    plan = compile_plan(estimator, "regression")
    assert plan.kind == "multi-output" and all(p.kind == "trees" for p in plan.plans)
    np.testing.assert_allclose(plan.predict(X_test), estimator.predict(X_test), rtol=1e-6)
    assert plan.predict(X_test[:1]).shape == (1, 2)


def test_thresholds_compare_as_float32_like_sklearn():
    """Values between a float64 threshold and its float32 rounding land where scikit-learn puts them."""
    X, y, _ = regression_data()
    estimator = tree.DecisionTreeRegressor(max_depth=4, random_state=0).fit(X, y)
    plan = compile_plan(estimator, "regression")
    t = estimator.tree_
    probes = []
    for node in np.flatnonzero(t.children_left >= 0):
        for v in np.nextafter(t.threshold[node], [-np.inf, np.inf]):
            row = X[0].copy()
            row[t.feature[node]] = v
            probes.append(row)
    probes = np.array(probes)
    np.testing.assert_allclose(plan.predict(probes), estimator.predict(probes), rtol=1e-12)


def test_many_rows_are_chunked_the_same():
    X, y = make_regression(n_samples=3000, n_features=5, random_state=0)
    estimator = ensemble.RandomForestRegressor(n_estimators=120, max_depth=4, random_state=0).fit(X[:500], y[:500])
    plan = compile_plan(estimator, "regression")
    np.testing.assert_allclose(plan.predict(X), estimator.predict(X), rtol=1e-9)


# ---------------------------------------------------------------- LightGBM

def test_lightgbm_regressor():
    _agree_regression(lightgbm.LGBMRegressor(n_estimators=20, verbose=-1), *regression_data())


def test_lightgbm_poisson():
    X, y, X_test = regression_data()
    _agree_regression(lightgbm.LGBMRegressor(n_estimators=15, objective="poisson", verbose=-1), X, y, X_test)


@pytest.mark.parametrize("data", [binary_data, multiclass_data], ids=["binary", "multiclass"])
def test_lightgbm_classifier(data):
    _agree_classification(lightgbm.LGBMClassifier(n_estimators=15, verbose=-1), *data())


@pytest.mark.parametrize("use_missing,zero_as_missing", [(True, False), (True, True), (False, False)])
def test_lightgbm_missing_values(use_missing, zero_as_missing):
    X, y, X_test = regression_data()
    X, X_test = _with_nan(X), _with_nan(X_test, seed=2)
    X_test[::7, 2] = 0.0
    X[::5, 2] = 0.0
    estimator = lightgbm.LGBMRegressor(n_estimators=20, verbose=-1, use_missing=use_missing,
                                       zero_as_missing=zero_as_missing)
    _agree_regression(estimator, X, y, X_test)


def test_lightgbm_random_forest_mode():
    X, y, X_test = regression_data()
    estimator = lightgbm.LGBMRegressor(boosting_type="rf", n_estimators=10, subsample=0.7, subsample_freq=1,
                                       verbose=-1)
    _agree_regression(estimator, X, y, X_test)


def test_lightgbm_early_stopping_uses_the_best_iteration():
    X, y, X_test = regression_data()
    estimator = lightgbm.LGBMRegressor(n_estimators=200, learning_rate=0.3, verbose=-1)
    estimator.fit(X[:200], y[:200], eval_X=(X[200:],), eval_y=(y[200:],),
                  callbacks=[lightgbm.early_stopping(3, verbose=False)])
    assert estimator.best_iteration_ < 200
    plan = compile_plan(estimator, "regression")
    np.testing.assert_allclose(plan.predict(X_test), estimator.predict(X_test), rtol=1e-6)


def test_lightgbm_categorical_splits_fall_back():
    X, y = load_iris(return_X_y=True)
    X = X.copy()
    X[:, 0] = np.array([2, 0, 1])[y]           # a category that decides the class: LightGBM splits on it
    X[np.random.default_rng(0).random(len(X)) < 0.1, 0] = 3
    X, y, X_test = _split(X, y)
    estimator = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1, min_data_per_group=5, cat_smooth=1)
    estimator.fit(X, y, categorical_feature=[0])
    assert "'=='" in str(estimator.booster_.dump_model())
    plan = compile_plan(estimator, "classification")
    assert plan.kind == "estimator"
    np.testing.assert_array_equal(plan.predict(X_test), estimator.predict(X_test))


# ---------------------------------------------------------------- XGBoost

@pytest.mark.parametrize("objective", ["reg:squarederror", "reg:absoluteerror", "count:poisson", "reg:gamma"])
def test_xgboost_regressor(objective):
    X, y, X_test = regression_data()
    _agree_regression(xgboost.XGBRegressor(n_estimators=15, max_depth=4, objective=objective), X, y, X_test,
                      rtol=1e-5)


@pytest.mark.parametrize("data", [binary_data, multiclass_data], ids=["binary", "multiclass"])
def test_xgboost_classifier(data):
    _agree_classification(xgboost.XGBClassifier(n_estimators=15, max_depth=4), *data(), rtol=1e-5)


def test_xgboost_missing_values():
    X, y, X_test = binary_data()
    _agree_classification(xgboost.XGBClassifier(n_estimators=15, max_depth=4), _with_nan(X), y,
                          _with_nan(X_test, seed=4), rtol=1e-5)


def test_xgboost_multi_target_regression():
    X, Y = make_regression(n_samples=300, n_features=6, n_targets=2, random_state=0)
    X, Y, X_test = _split(X, Y)
    plan = _agree_regression(xgboost.XGBRegressor(n_estimators=10, max_depth=3), X, Y, X_test, rtol=1e-5)
    assert plan.predict(X_test[:1]).shape == (1, 2)


def test_xgboost_early_stopping_uses_the_best_iteration():
    X, y, X_test = binary_data()
    estimator = xgboost.XGBClassifier(n_estimators=200, learning_rate=0.5, early_stopping_rounds=2)
    estimator.fit(X[:250], y[:250], eval_set=[(X[250:], y[250:])], verbose=False)
    assert estimator.best_iteration < 199
    plan = compile_plan(estimator, "classification")
    assert plan.kind == "trees"
    np.testing.assert_allclose(plan.predict_proba(X_test), estimator.predict_proba(X_test), rtol=1e-5)


def test_xgboost_split_is_strictly_less_than():
    """XGBoost sends x == split right: rows exactly on a split value must agree."""
    X, y = make_classification(n_samples=300, n_features=4, random_state=0)
    X = np.round(X, 1)                     # many rows sit exactly on split values
    estimator = xgboost.XGBRegressor(n_estimators=10, max_depth=3).fit(X, y.astype(float))
    plan = compile_plan(estimator, "regression")
    np.testing.assert_allclose(plan.predict(X), estimator.predict(X), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- fallbacks and errors

def test_regressor_has_no_proba():
    X, y, X_test = regression_data()
    plan = compile_plan(ensemble.RandomForestRegressor(n_estimators=3, random_state=0).fit(X, y), "regression")
    with pytest.raises(PlanError):
        plan.predict_proba(X_test)


def test_categorical_hist_gradient_boosting_falls_back():
    X, y, X_test = multiclass_data()
    X, X_test = X.copy(), X_test.copy()
    X[:, 0], X_test[:, 0] = np.round(X[:, 0]) - 4, np.round(X_test[:, 0]) - 4
    estimator = ensemble.HistGradientBoostingClassifier(max_iter=5, categorical_features=[0]).fit(X, y)
    plan = compile_plan(estimator, "classification")
    assert plan.kind == "estimator"
    np.testing.assert_array_equal(plan.predict(X_test), estimator.predict(X_test))


def test_bagging_is_served_by_the_estimator():
    X, y, X_test = regression_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator = ensemble.BaggingRegressor(n_estimators=3, random_state=0).fit(X, y)
    plan = compile_plan(estimator, "regression")
    assert plan.kind == "estimator"
    np.testing.assert_allclose(plan.predict(X_test), estimator.predict(X_test))
