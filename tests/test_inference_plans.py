"""compile_plan over the whole algorithm table: every (algorithm, task) that pgml.train offers
compiles to the plan family issue 4 promises, and the plan agrees with the estimator's own
predict / predict_proba on the same rows. A GPU section runs the same agreement on a CUDA device
and skips cleanly where CuPy or a device is missing (CI has none)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import ensemble, tree
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.preprocessing import StandardScaler

from pgml_server.ml.inference import PlanError, compile_plan, gpu
from pgml_server.ml.training.algorithms import ALGORITHMS, SUPERVISED, make_estimator



@pytest.fixture(autouse=True)
def _numpy_tree_plans(monkeypatch):
    """These tests are about the numpy plans (and their hand-off to the library's predictor): the
    native-code tree plans have their own tests (test_inference_native.py)."""
    monkeypatch.setenv("PGML_NATIVE_TREES", "0")


LINEAR = {
    "linear", "ridge", "lasso", "elastic_net", "least_angle", "lasso_least_angle", "orthogonal_matching_pursuit",
    "bayesian_ridge", "automatic_relevance_determination", "stochastic_gradient_descent", "perceptron",
    "passive_aggressive", "ransac", "theil_sen", "huber", "quantile", "linear_svm",
}
# Issue 4's tree ensembles (DecisionTree is not in the training table; it is covered below).
TREES = {"ada_boost", "extra_trees", "gradient_boosting_trees", "random_forest", "hist_gradient_boosting",
         "lightgbm", "xgboost"}
# Everything else is served by the estimator's own predict.
ESTIMATOR = {"svm", "nu_svm", "kernel_ridge", "gaussian_process", "bagging", "catboost"}

# Small and quick, but every family keeps its structure (several trees, several classes).
HYPERPARAMS = {
    "random_forest": {"n_estimators": 15, "max_depth": 6},
    "extra_trees": {"n_estimators": 15, "max_depth": 6},
    "gradient_boosting_trees": {"n_estimators": 20},
    "hist_gradient_boosting": {"max_iter": 20},
    "ada_boost": {"n_estimators": 15},
    "bagging": {"n_estimators": 5},
    "lightgbm": {"n_estimators": 20},
    "xgboost": {"n_estimators": 20},
    "theil_sen": {"max_subpopulation": 200},
}


def expected_kind(algorithm: str) -> str:
    if algorithm in LINEAR:
        return "linear"
    if algorithm in TREES:
        return "trees"
    return "estimator"


def _split(X, y, seed=0):
    order = np.random.default_rng(seed).permutation(len(X))
    X, y = X[order], y[order]
    cut = int(len(X) * 0.7)
    return X[:cut], y[:cut], X[cut:]


def regression_data():
    X, y = load_diabetes(return_X_y=True)
    return _split(X, y)


def classification_data(binary: bool):
    X, y = load_breast_cancer(return_X_y=True) if binary else load_iris(return_X_y=True)
    return _split(StandardScaler().fit_transform(X), y)


def _fit(algorithm: str, task: str, X, y):
    estimator = make_estimator(algorithm, task, HYPERPARAMS.get(algorithm), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")            # convergence warnings of the quick fits
        estimator.fit(X, y)
    return estimator


def _has_proba(estimator) -> bool:
    try:
        return hasattr(estimator, "predict_proba")
    except Exception:
        return False


def assert_agrees(plan, estimator, task: str, X_test, *, rtol=1e-6, atol=1e-6) -> None:
    """The plan's predictions (many rows, and one row) equal the estimator's within float tolerance."""
    for rows in (X_test, X_test[:1]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = np.asarray(estimator.predict(rows))
        got = plan.predict(rows)
        if task == "classification":
            np.testing.assert_array_equal(got, expected.astype(got.dtype))
        else:
            np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
        if task == "classification" and _has_proba(estimator):
            np.testing.assert_allclose(plan.predict_proba(rows), estimator.predict_proba(rows), rtol=rtol, atol=1e-7)
    if task == "classification" and not _has_proba(estimator):
        with pytest.raises(PlanError):
            plan.predict_proba(X_test[:1])


# Supervised entries; clustering and decomposition plans are tests/test_unsupervised.py's.
PAIRS = sorted(p for p in ALGORITHMS if p[1] in SUPERVISED)


def test_every_algorithm_is_classified_here():
    """A new table entry must be given its expected plan family in this file."""
    assert {alg for alg, _ in PAIRS} <= LINEAR | TREES | ESTIMATOR
    assert not (LINEAR & TREES) and not (LINEAR & ESTIMATOR) and not (TREES & ESTIMATOR)


@pytest.mark.parametrize("algorithm,task", PAIRS, ids=[f"{a}-{t}" for a, t in PAIRS])
def test_every_table_entry_compiles_to_its_family_and_agrees(algorithm, task):
    if task == "regression":
        datasets = [regression_data()]
    else:
        datasets = [classification_data(True), classification_data(False)]
    for X, y, X_test in datasets:
        estimator = _fit(algorithm, task, X, y)
        # The compiled walk at every batch size (native=False), and the plan as served, which
        # may hand large batches to the library's own predictor.
        for plan in (compile_plan(estimator, task, native=False), compile_plan(estimator, task)):
            assert plan.kind == expected_kind(algorithm), f"{algorithm}/{task} compiled as {plan.kind}"
            assert plan.task == task and plan.num_features == X.shape[1]
            assert plan.nbytes > 0
            if task == "classification":
                np.testing.assert_array_equal(plan.classes, np.unique(y).astype(np.float64))
            assert_agrees(plan, estimator, task, X_test)


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_large_cpu_batches_go_to_the_librarys_own_predictor(task, monkeypatch):
    """A LightGBM plan walks small batches itself and hands batches of native_min_batch rows or
    more to the booster (faster there); both agree with the estimator. With the GPU chosen for a
    batch, the GPU plan keeps it."""
    lightgbm = pytest.importorskip("lightgbm")
    X, y, X_test = regression_data() if task == "regression" else classification_data(True)
    cls = lightgbm.LGBMRegressor if task == "regression" else lightgbm.LGBMClassifier
    estimator = cls(n_estimators=20, verbose=-1).fit(X, y)
    plan = compile_plan(estimator, task)
    assert plan.native is not None and 1 < plan.native_min_batch <= len(X_test)
    calls = []
    native_predict = plan.native.predict
    monkeypatch.setattr(plan.native, "predict", lambda rows: calls.append(len(rows)) or native_predict(rows))
    small = X_test[:plan.native_min_batch - 1]
    assert_agrees(plan, estimator, task, X_test)
    np.testing.assert_allclose(plan.predict(small), estimator.predict(small), rtol=1e-6, atol=1e-6)
    assert calls == [len(X_test)]                   # the full batch only, not the small one
    monkeypatch.setattr(gpu, "use_gpu", lambda mode, n: True)
    assert plan._native_for(X_test) is None
    assert compile_plan(estimator, task, native=False).native is None
    plain = ensemble.AdaBoostRegressor(n_estimators=5).fit(*regression_data()[:2])
    assert compile_plan(plain, "regression").native is None   # the walk is faster at every size


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_decision_tree_is_a_tree_plan(task):
    X, y, X_test = regression_data() if task == "regression" else classification_data(False)
    cls = tree.DecisionTreeRegressor if task == "regression" else tree.DecisionTreeClassifier
    estimator = cls(max_depth=8, random_state=0).fit(X, y)
    plan = compile_plan(estimator, task)
    assert plan.kind == "trees"
    assert_agrees(plan, estimator, task, X_test)


@pytest.mark.parametrize("algorithm", ["linear", "random_forest", "lightgbm", "xgboost", "svm"])
def test_joint_regression_plans_agree(algorithm):
    X, _, X_test = regression_data()
    rng = np.random.default_rng(3)
    Y = np.column_stack([X @ rng.normal(size=X.shape[1]), X[:, 0] * 3 + rng.normal(size=len(X))])
    estimator = make_estimator(algorithm, "regression", HYPERPARAMS.get(algorithm), outputs=2, seed=0)
    estimator.fit(X, Y)
    plan = compile_plan(estimator, "regression")
    assert plan.predict(X_test).shape == (len(X_test), 2)
    np.testing.assert_allclose(plan.predict(X_test), estimator.predict(X_test), rtol=1e-6, atol=1e-6)


def test_gpu_mode_is_validated():
    X, y, _ = regression_data()
    estimator = _fit("linear", "regression", X, y)
    for mode in ("auto", "on", "off"):
        assert compile_plan(estimator, "regression", gpu=mode).gpu == mode
    with pytest.raises(ValueError):
        compile_plan(estimator, "regression", gpu="yes")


# ---------------------------------------------------------------- choosing the GPU

def test_use_gpu_follows_mode_and_min_batch(monkeypatch):
    monkeypatch.setattr(gpu, "gpu_available", lambda: True)
    monkeypatch.setattr(gpu, "GPU_MIN_BATCH", 1000)
    assert not gpu.use_gpu("off", 10**7)
    assert gpu.use_gpu("on", 1)
    assert not gpu.use_gpu("auto", 999)
    assert gpu.use_gpu("auto", 1000)
    gpu.set_min_batch(50)
    assert gpu.min_batch() == 50 and gpu.use_gpu("auto", 50) and not gpu.use_gpu("auto", 49)
    with pytest.raises(ValueError):
        gpu.set_min_batch(-1)
    monkeypatch.setattr(gpu, "gpu_available", lambda: False)
    assert not gpu.use_gpu("on", 10**7) and not gpu.use_gpu("auto", 10**7)


def test_without_a_device_gpu_on_still_predicts_on_the_cpu():
    if gpu.gpu_available():
        pytest.skip("a GPU is present: the CPU fallback is not what runs")
    X, y, X_test = classification_data(True)
    estimator = _fit("random_forest", "classification", X, y)
    plan = compile_plan(estimator, "classification", gpu="on")
    assert_agrees(plan, estimator, "classification", X_test)


# ---------------------------------------------------------------- on a GPU (skipped without one)

def _require_gpu():
    pytest.importorskip("cupy")
    if not gpu.gpu_available():
        pytest.skip("CuPy imports but sees no CUDA device")


GPU_PAIRS = [(a, t) for a, t in PAIRS if expected_kind(a) in ("linear", "trees")]


@pytest.mark.gpu
@pytest.mark.parametrize("algorithm,task", GPU_PAIRS, ids=[f"{a}-{t}" for a, t in GPU_PAIRS])
def test_gpu_plans_agree_with_the_estimator(algorithm, task):
    _require_gpu()
    X, y, X_test = regression_data() if task == "regression" else classification_data(False)
    estimator = _fit(algorithm, task, X, y)
    plan = compile_plan(estimator, task, gpu="on")
    assert plan.kind == expected_kind(algorithm)
    assert_agrees(plan, estimator, task, X_test)
    # Many rows (on the device under 'on'; under 'auto' wherever --gpu-min-batch sends them): as the CPU.
    big = np.repeat(X_test, 100, axis=0)
    cpu = compile_plan(estimator, task, gpu="off")
    auto = compile_plan(estimator, task, gpu="auto")
    if task == "classification":
        np.testing.assert_array_equal(plan.predict(big), cpu.predict(big))
    else:
        np.testing.assert_allclose(plan.predict(big), cpu.predict(big), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.asarray(auto.predict(big), np.float64), np.asarray(cpu.predict(big), np.float64),
                               rtol=1e-9, atol=1e-9)


@pytest.mark.gpu
def test_gpu_tree_walk_handles_missing_values():
    _require_gpu()
    import lightgbm
    X, y, X_test = regression_data()
    X_test = X_test.copy()
    X_test[np.random.default_rng(1).random(X_test.shape) < 0.15] = np.nan
    estimator = lightgbm.LGBMRegressor(n_estimators=30, verbose=-1).fit(X, y)
    plan = compile_plan(estimator, "regression", gpu="on")
    np.testing.assert_allclose(plan.predict(X_test), estimator.predict(X_test), rtol=1e-6, atol=1e-6)
