"""Linear plans agree with the estimators' own predict / predict_proba, and are fast on one row."""
from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from sklearn import linear_model, svm
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, make_regression
from sklearn.multioutput import MultiOutputRegressor
from sklearn.preprocessing import StandardScaler

from pgml_server.ml.inference import PlanError, compile_plan


def _regression_data():
    X, y = load_diabetes(return_X_y=True)
    return X[:350], y[:350], X[350:]


def _classification_data(binary: bool):
    X, y = load_breast_cancer(return_X_y=True) if binary else load_iris(return_X_y=True)
    X = StandardScaler().fit_transform(X)     # keeps the iterative solvers quiet and quick
    rng = np.random.default_rng(0)
    order = rng.permutation(len(X))
    X, y = X[order], y[order]
    cut = int(len(X) * 0.7)
    return X[:cut], y[:cut], X[cut:]


REGRESSORS = [
    linear_model.LinearRegression(), linear_model.Ridge(alpha=0.5), linear_model.Lasso(alpha=0.1),
    linear_model.ElasticNet(alpha=0.01), linear_model.Lars(), linear_model.LassoLars(alpha=0.01),
    linear_model.OrthogonalMatchingPursuit(), linear_model.BayesianRidge(), linear_model.ARDRegression(),
    linear_model.SGDRegressor(random_state=0), linear_model.HuberRegressor(max_iter=1000),
    linear_model.QuantileRegressor(alpha=0.0), linear_model.TheilSenRegressor(random_state=0, max_subpopulation=200),
    linear_model.RANSACRegressor(random_state=0), svm.LinearSVR(random_state=0, max_iter=5000),
    linear_model.PoissonRegressor(max_iter=1000),
]


@pytest.mark.parametrize("estimator", REGRESSORS, ids=lambda e: type(e).__name__)
def test_regressors_agree(estimator):
    X, y, X_test = _regression_data()
    if isinstance(estimator, linear_model.PoissonRegressor):
        X, X_test = StandardScaler().fit(X).transform(X), StandardScaler().fit(X).transform(X_test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator.fit(X, y)
    plan = compile_plan(estimator, "regression")
    assert plan.kind == "linear"
    assert plan.num_features == X.shape[1] and plan.task == "regression" and plan.classes is None
    np.testing.assert_allclose(plan.predict(X_test), estimator.predict(X_test), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(plan.predict(X_test[:1]), estimator.predict(X_test[:1]), rtol=1e-7)
    assert plan.predict(X_test).shape == (len(X_test),)


def test_passive_aggressive_regressor_agrees():
    X, y, X_test = _regression_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # deprecated from scikit-learn 1.8 on, still loadable
        estimator = linear_model.PassiveAggressiveRegressor(random_state=0).fit(X, y)
    plan = compile_plan(estimator, "regression")
    assert plan.kind == "linear"
    np.testing.assert_allclose(plan.predict(X_test), estimator.predict(X_test), rtol=1e-7)


def _classifiers():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pa = linear_model.PassiveAggressiveClassifier(random_state=0)
    return [
        linear_model.LogisticRegression(max_iter=1000), linear_model.RidgeClassifier(),
        linear_model.SGDClassifier(loss="log_loss", random_state=0),
        linear_model.SGDClassifier(loss="modified_huber", random_state=0),
        linear_model.SGDClassifier(loss="hinge", random_state=0),
        linear_model.Perceptron(random_state=0), pa, svm.LinearSVC(random_state=0),
    ]


def _name(e):
    return type(e).__name__ + (f"-{e.loss}" if hasattr(e, "loss") and isinstance(e.loss, str) else "")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "multiclass"])
@pytest.mark.parametrize("estimator", _classifiers(), ids=_name)
def test_classifiers_agree(estimator, binary):
    X, y, X_test = _classification_data(binary)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator.fit(X, y)
    plan = compile_plan(estimator, "classification")
    assert plan.kind == "linear" and plan.task == "classification"
    np.testing.assert_array_equal(plan.classes, estimator.classes_)
    np.testing.assert_array_equal(plan.predict(X_test), estimator.predict(X_test))
    np.testing.assert_array_equal(plan.predict(X_test[:1]), estimator.predict(X_test[:1]))
    if _has_proba(estimator):
        np.testing.assert_allclose(plan.predict_proba(X_test), estimator.predict_proba(X_test), rtol=1e-7, atol=1e-12)
        np.testing.assert_allclose(plan.predict_proba(X_test[:1]), estimator.predict_proba(X_test[:1]), rtol=1e-7)
    else:
        with pytest.raises(PlanError):
            plan.predict_proba(X_test)


def _has_proba(estimator) -> bool:
    try:
        estimator.predict_proba
    except AttributeError:
        return False
    return True


def test_string_labels_are_kept():
    X, y, X_test = _classification_data(binary=False)
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    estimator = linear_model.LogisticRegression(max_iter=1000).fit(X, labels)
    plan = compile_plan(estimator, "classification")
    np.testing.assert_array_equal(plan.predict(X_test), estimator.predict(X_test))


def test_numeric_labels_come_back_as_floats():
    X, y, X_test = _classification_data(binary=True)
    estimator = linear_model.LogisticRegression(max_iter=1000).fit(X, y + 10)
    out = compile_plan(estimator, "classification").predict(X_test)
    assert out.dtype == np.float64 and set(np.unique(out)) <= {10.0, 11.0}


def test_multi_target_linear_regression_is_native():
    X, Y = make_regression(n_samples=200, n_features=6, n_targets=3, random_state=0)
    estimator = linear_model.Ridge().fit(X[:150], Y[:150])
    plan = compile_plan(estimator, "regression")
    assert plan.kind == "linear"
    np.testing.assert_allclose(plan.predict(X[150:]), estimator.predict(X[150:]), rtol=1e-9)
    assert plan.predict(X[150:151]).shape == (1, 3)


def test_multi_output_regressor_of_linear_models_is_one_matrix():
    X, Y = make_regression(n_samples=200, n_features=6, n_targets=2, random_state=1)
    estimator = MultiOutputRegressor(linear_model.Lasso(alpha=0.1)).fit(X[:150], Y[:150])
    plan = compile_plan(estimator, "regression")
    assert plan.kind == "linear" and plan.coef.shape == (6, 2)
    np.testing.assert_allclose(plan.predict(X[150:]), estimator.predict(X[150:]), rtol=1e-9)
    assert plan.predict(X[150:151]).shape == (1, 2)


def test_missing_values_are_refused_like_the_estimator():
    X, y, X_test = _regression_data()
    estimator = linear_model.LinearRegression().fit(X, y)
    row = X_test[:1].copy()
    row[0, 3] = np.nan
    with pytest.raises(ValueError):
        estimator.predict(row)
    with pytest.raises(PlanError):
        compile_plan(estimator, "regression").predict(row)


def test_wrong_number_of_features_is_refused():
    X, y, X_test = _regression_data()
    plan = compile_plan(linear_model.LinearRegression().fit(X, y), "regression")
    with pytest.raises(PlanError, match="10 features"):
        plan.predict(X_test[:, :4])


def test_one_row_is_fast():
    """The point of the plan: a single row costs microseconds, not scikit-learn's validation."""
    X, y, X_test = _regression_data()
    estimator = linear_model.LinearRegression().fit(X, y)
    plan = compile_plan(estimator, "regression")
    row = X_test[:1]

    def per_call(fn, n=2000):
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(n):
                fn(row)
            best = min(best, (time.perf_counter() - started) / n)
        return best

    plan_time, sklearn_time = per_call(plan.predict), per_call(estimator.predict, 300)
    assert plan_time < 20e-6, f"{plan_time * 1e6:.1f} µs per row"
    assert plan_time * 3 < sklearn_time
