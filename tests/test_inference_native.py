"""Native-code tree plans (ml/inference/compiled.py): they agree with the libraries' own predict and
predict_proba (NaN rows included), fall back to the numpy plan whenever they cannot be had, and
count their size."""
from __future__ import annotations

import builtins
import os

import numpy as np
import pytest
from sklearn import ensemble
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from pgml_server.ml.inference import compile_plan, compiled
from pgml_server.ml.inference.trees import compile_trees

lightgbm = pytest.importorskip("lightgbm")
xgboost = pytest.importorskip("xgboost")

needs_native = pytest.mark.skipif(not compiled.available(),
                                  reason="treelite/tl2cgen (the 'compiled' extra) or a C compiler (gcc) missing")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each test builds into its own cache folder, so a cached .so from elsewhere proves nothing."""
    monkeypatch.setattr(compiled.tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv(compiled.ENV_SWITCH, raising=False)


def _data(kind: str, nan: bool):
    load = {"regression": load_diabetes, "binary": load_breast_cancer, "multiclass": load_iris}[kind]
    X, y = load(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(X))
    X, y = X[order], y[order]
    if nan:
        X = X.copy()
        X[np.random.default_rng(1).random(X.shape) < 0.15] = np.nan
    cut = int(len(X) * 0.7)
    return X[:cut], y[:cut], X[cut:]


CASES = [
    ("regression", lambda: lightgbm.LGBMRegressor(n_estimators=40, verbose=-1)),
    ("binary", lambda: lightgbm.LGBMClassifier(n_estimators=30, verbose=-1)),
    ("multiclass", lambda: lightgbm.LGBMClassifier(n_estimators=20, verbose=-1)),
    ("regression", lambda: lightgbm.LGBMRegressor(n_estimators=20, objective="poisson", verbose=-1)),
    ("regression", lambda: xgboost.XGBRegressor(n_estimators=30, max_depth=4)),
    ("binary", lambda: xgboost.XGBClassifier(n_estimators=20, max_depth=3)),
    ("multiclass", lambda: xgboost.XGBClassifier(n_estimators=10, max_depth=3)),
    ("regression", lambda: ensemble.HistGradientBoostingRegressor(max_iter=20, random_state=0)),
    ("binary", lambda: ensemble.HistGradientBoostingClassifier(max_iter=20, random_state=0)),
    ("multiclass", lambda: ensemble.HistGradientBoostingClassifier(max_iter=10, random_state=0)),
    # scikit-learn's float32-comparing trees: the shim rounds each value to float32 first
    ("regression", lambda: ensemble.RandomForestRegressor(n_estimators=20, max_depth=6, random_state=0)),
    ("binary", lambda: ensemble.RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0)),
    ("multiclass", lambda: ensemble.ExtraTreesClassifier(n_estimators=10, max_depth=5, random_state=0)),
]


@needs_native
@pytest.mark.parametrize("nan", [False, True], ids=["dense", "nan"])
@pytest.mark.parametrize("kind, make", CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)])
def test_native_plan_agrees_with_the_library(kind, make, nan):
    X, y, X_test = _data(kind, nan)
    estimator = make().fit(X, y)
    task = "regression" if kind == "regression" else "classification"
    plan = compiled.compile_native(estimator, task)
    assert plan is not None and plan.kind == "native"
    # XGBoost sums float32 leaves (its own predict returns float32): agreement to float32 precision.
    rtol = 1e-5 if type(estimator).__module__.startswith("xgboost") else 1e-7
    for rows in (X_test[:1], X_test[:5], X_test[:16], X_test[:17], X_test, np.tile(X_test, (4, 1))):
        if task == "regression":
            np.testing.assert_allclose(plan.predict(rows), estimator.predict(rows), rtol=rtol, atol=1e-6)
        else:
            np.testing.assert_array_equal(plan.predict(rows), estimator.predict(rows).astype(np.float64))
            np.testing.assert_allclose(plan.predict_proba(rows), estimator.predict_proba(rows), rtol=rtol, atol=1e-7)
    if task == "classification":
        np.testing.assert_array_equal(plan.classes, estimator.classes_.astype(np.float64))
    assert plan.task == task and plan.num_features == X.shape[1]


@needs_native
def test_compile_plan_serves_numpy_until_the_native_plan_is_built_then_from_the_cache():
    X, y, X_test = _data("regression", nan=True)
    estimator = lightgbm.LGBMRegressor(n_estimators=30, verbose=-1).fit(X, y)
    pending = compile_plan(estimator, "regression", gpu="off")
    assert isinstance(pending, compiled.PendingNativePlan)
    np.testing.assert_allclose(pending.predict(X_test), estimator.predict(X_test), rtol=1e-7, atol=1e-6)
    assert pending.ready.wait(120)
    assert pending.kind == "native"
    np.testing.assert_allclose(pending.predict(X_test[:1]), estimator.predict(X_test[:1]), rtol=1e-7, atol=1e-6)
    again = compile_plan(estimator, "regression")         # the .so is cached: native at once
    assert again.kind == "native" and isinstance(again, compiled.NativePlan)
    np.testing.assert_allclose(again.predict(X_test), estimator.predict(X_test), rtol=1e-7, atol=1e-6)
    assert compile_plan(estimator, "regression", native=False).kind == "trees"
    assert compile_plan(estimator, "regression", gpu="on").kind == "trees"   # GPU batches: the numpy/GPU plan


@needs_native
def test_the_switch_turns_native_plans_off(monkeypatch):
    X, y, _ = _data("regression", nan=False)
    estimator = lightgbm.LGBMRegressor(n_estimators=10, verbose=-1).fit(X, y)
    monkeypatch.setenv(compiled.ENV_SWITCH, "0")
    assert compile_plan(estimator, "regression").kind == "trees"
    assert compiled.compile_native(estimator, "regression") is None


def test_a_missing_library_falls_back_to_the_numpy_plan(monkeypatch):
    real_import = builtins.__import__

    def no_treelite(name, *args, **kwargs):
        if name.split(".")[0] in ("treelite", "tl2cgen"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_treelite)
    X, y, X_test = _data("binary", nan=False)
    estimator = lightgbm.LGBMClassifier(n_estimators=10, verbose=-1).fit(X, y)
    assert not compiled.available()
    assert compiled.compile_native(estimator, "classification") is None
    plan = compile_plan(estimator, "classification")
    assert plan.kind == "trees"
    np.testing.assert_allclose(plan.predict_proba(X_test), estimator.predict_proba(X_test), rtol=1e-7, atol=1e-7)


@needs_native
def test_a_failing_build_falls_back_to_the_numpy_plan(monkeypatch):
    X, y, X_test = _data("regression", nan=False)
    estimator = lightgbm.LGBMRegressor(n_estimators=10, verbose=-1).fit(X, y)
    monkeypatch.setenv("CC", "false")                      # "compiles" nothing, with or without -fopenmp
    monkeypatch.setattr(compiled.shutil, "which", lambda cc: "/bin/false")
    with pytest.raises(RuntimeError):
        compiled.compile_native(estimator, "regression")
    pending = compile_plan(estimator, "regression")
    assert pending.ready.wait(60)
    assert pending.kind == "trees"                         # logged, still the numpy plan
    np.testing.assert_allclose(pending.predict(X_test), estimator.predict(X_test), rtol=1e-7, atol=1e-6)


@needs_native
def test_a_disagreeing_build_is_refused(monkeypatch):
    X, y, _ = _data("regression", nan=False)
    estimator = lightgbm.LGBMRegressor(n_estimators=10, verbose=-1).fit(X, y)
    fallback = compile_trees(estimator, "regression", native=False)
    original = fallback.raw
    monkeypatch.setattr(fallback, "raw", lambda rows: original(rows) + 1.0)
    assert compiled.compile_native(estimator, "regression", fallback) is None
    assert compiled.compile_native(estimator, "regression", fallback) is None   # remembered: not rebuilt
    assert compiled.native_later(estimator, "regression", fallback) is fallback


@needs_native
def test_unsupported_models_stay_on_the_numpy_plan():
    X, y, _ = _data("regression", nan=False)
    boosting = ensemble.GradientBoostingRegressor(n_estimators=5, max_depth=3, random_state=0).fit(X, y)
    assert compiled.compile_native(boosting, "regression") is None     # NaN routing: the walk's own
    assert compile_plan(boosting, "regression").kind == "trees"
    linear = lightgbm.LGBMRegressor(n_estimators=5, linear_tree=True, verbose=-1).fit(X, y)
    assert compiled.compile_native(linear, "regression") is None       # the numpy plan refuses linear leaves


@needs_native
def test_size_accounting():
    X, y, _ = _data("multiclass", nan=False)
    estimator = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(X, y)
    plan = compiled.compile_native(estimator, "classification")
    assert plan.nbytes >= os.path.getsize(plan.lib_path) > 0
    assert plan.nbytes < 10 * os.path.getsize(plan.lib_path) + (1 << 16)
    pending = compiled.PendingNativePlan(compile_trees(estimator, "classification"))
    assert pending.nbytes == pending.plan.nbytes


@needs_native
def test_a_cache_folder_others_may_write_to_is_refused(tmp_path):
    """Another user must not be able to plant the code a plan loads: a group/world-writable cache
    folder turns native plans off (the numpy plan serves)."""
    root = tmp_path / f"pgml-native-trees-{os.getuid()}"
    root.mkdir()
    root.chmod(0o777)
    X, y, X_test = _data("regression", nan=False)
    estimator = lightgbm.LGBMRegressor(n_estimators=10, verbose=-1).fit(X, y)
    with pytest.raises(PermissionError):
        compiled.compile_native(estimator, "regression")
    plan = compile_plan(estimator, "regression")
    assert plan.kind == "trees"
    np.testing.assert_allclose(plan.predict(X_test), estimator.predict(X_test), rtol=1e-7, atol=1e-6)


@needs_native
def test_float32_rounded_training_data_lightgbm_is_native_and_agrees_on_its_thresholds():
    """What the server trains (features through a float4/float8 COPY). LightGBM puts such a model's
    thresholds at doubles whose low 32 bits are all ones, which tl2cgen's own missing-value test
    (`union Entry`'s int read over the double) took for missing; with the isnan() rewrite the plan
    is native and agrees with LightGBM on rows sitting exactly on, and beside, every threshold."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5000, 6)).astype(np.float32).astype(np.float64)
    y = X @ rng.standard_normal(6) + np.sin(3 * X[:, 0])
    from pgml_server.ml.training.algorithms import make_estimator
    estimator = make_estimator("lightgbm", "regression", {"n_estimators": 100}, seed=0).fit(X, y)
    plan = compiled.compile_native(estimator, "regression")
    assert plan is not None and plan.kind == "native"
    walk = compile_trees(estimator, "regression", native=False)
    split = ~walk.forest.is_leaf
    features, thresholds = walk.forest.feature[split], walk.forest.threshold[split]
    punned = np.array([np.frombuffer(t.tobytes()[:4], np.int32)[0] == -1 for t in thresholds])
    assert punned.any(), "the data no longer produces the thresholds this test is about"
    rows = np.zeros((3 * len(thresholds), X.shape[1]))
    for i, (j, t) in enumerate(zip(features, thresholds)):
        rows[3 * i:3 * i + 3, j] = (t, np.nextafter(t, -np.inf), np.nextafter(t, np.inf))
    rows[::7, 1] = np.nan
    np.testing.assert_allclose(plan.predict(rows), estimator.predict(rows), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(plan.predict(X), estimator.predict(X), rtol=1e-7, atol=1e-9)


def test_missing_value_tests_are_rewritten_to_isnan(tmp_path):
    """The source rewrite itself: every `data[i].missing != -1` becomes an isnan() test, and an
    unknown use of the union makes the build refuse instead of guessing."""
    (tmp_path / "main.c").write_text("if ((data[3].missing != -1) && (data[3].fvalue <= 1.5)) {}\n"
                                     "if (!(data[12].missing != -1) || x) {}\n")
    (tmp_path / "header.h").write_text("union Entry { int missing; double fvalue; int qvalue; };\n")
    compiled._exact_missing_tests(str(tmp_path))
    code = (tmp_path / "main.c").read_text()
    assert "(!isnan(data[3].fvalue))" in code and "!(!isnan(data[12].fvalue))" in code and ".missing" not in code
    (tmp_path / "tu1.c").write_text("if (data[4].missing == -1) {}\n")
    with pytest.raises(RuntimeError, match="tu1.c"):
        compiled._exact_missing_tests(str(tmp_path))
