"""Explanations of fitted models: feature importances and per-row contributions (SHAP values).

Pure numpy over a fitted estimator and what training stored with it (pgml.models.metrics:
`feature_names`, `feature_stats` {mean, std}, `permutation_importance`); no SQL here.

Importance (`importances`), per model feature, then summed per source column:
- tree ensembles: the library's own — LightGBM total gain (`feature_importance('gain')`),
  XGBoost total gain (`get_score('total_gain')`), scikit-learn `feature_importances_` (mean
  decrease in impurity, normalised to sum 1 by scikit-learn);
- linear models: |coef| × the feature's standard deviation on the training rows (the mean over
  classes of a multi-class model), i.e. how much a one-std change of the feature moves the
  decision function;
- anything else: permutation importance computed at training on the test rows (the mean drop of
  the estimator's own score, r2 or accuracy, over 3 shuffles); without it, Unsupported.

Contributions (`contributions`), exact, summing to the raw output:
- linear: coef × (x − mean of the training rows); base = intercept + coef · mean. The raw output
  is the prediction (regression) or the decision function (classification);
- LightGBM (`pred_contrib=True`) and XGBoost (`pred_contribs=True`): their TreeSHAP; the raw
  output is the prediction (regression) or the margin (log-odds for binary logistic objectives);
- scikit-learn decision trees, random forests, extra trees, gradient boosting and histogram
  gradient boosting (without categorical splits): TreeSHAP
  (path-dependent, Lundberg et al. 2018) computed here in numpy (`tree_shap`); the raw output is
  the prediction (regression; histogram gradient boosting: the raw score before its loss's link,
  the prediction for the default squared error), the predicted class's probability (trees and
  forests: the mean of the leaves' class fractions) or the predicted class's raw score (gradient
  boosting: log-odds).
For a binary classifier the libraries give one margin, the positive class's (classes_[1]): that
one is explained whatever class is predicted. Multi-class models explain the predicted class.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import factorial
from typing import Any

import numpy as np

from .inference.linear import compile_linear

BASE = "(base)"
SUPPORTED_EXPLAIN = ("linear models (linear, ridge, lasso, elastic_net, linear_svm, …)", "lightgbm", "xgboost",
                     "random_forest", "extra_trees", "gradient_boosting_trees", "hist_gradient_boosting")
_SK_TREES = ("DecisionTreeRegressor", "DecisionTreeClassifier", "ExtraTreeRegressor", "ExtraTreeClassifier")
_SK_FORESTS = ("RandomForestRegressor", "RandomForestClassifier", "ExtraTreesRegressor", "ExtraTreesClassifier")
_SK_BOOSTING = ("GradientBoostingRegressor", "GradientBoostingClassifier")
_SK_HIST = ("HistGradientBoostingRegressor", "HistGradientBoostingClassifier")


class Unsupported(Exception):
    """The model cannot be explained this way; `hint` says what can."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


@dataclass
class ExplainModel:
    """A fitted estimator with what training stored about its features."""
    model_id: int
    task: str
    algorithm: str
    estimator: Any
    metrics: dict
    num_features: int
    cache: dict = field(default_factory=dict)     # TreeSHAP path tables, built on first use

    @property
    def feature_names(self) -> list[str]:
        names = (self.metrics or {}).get("feature_names")
        if isinstance(names, list) and len(names) == self.num_features:
            return [str(n) for n in names]
        return [f"feature_{i + 1}" for i in range(self.num_features)]


def feature_sources(model: ExplainModel) -> list[str]:
    """Model feature index → the relation's column it comes from; THE one place of that mapping.

    Today the model's features are the snapshot's columns in order, array columns expanded into
    `col[1]`, `col[2]`, … (functions/train.py `_load`), so this is the identity on those names.
    Preprocessing that encodes one column into several features (one-hot) maps them all to it:
    training stores that list as metrics["feature_sources"] (the preprocessor's
    feature_sources()), and importances and contributions are summed per source."""
    sources = (model.metrics or {}).get("feature_sources")
    if isinstance(sources, list) and len(sources) == model.num_features:
        return [str(s) for s in sources]
    return model.feature_names


def aggregate(values: np.ndarray, sources: list[str]) -> list[tuple[str, float, int]]:
    """(source, summed value, feature count) per source, in order of first appearance."""
    order: dict[str, list] = {}
    for value, source in zip(np.asarray(values, dtype=np.float64), sources):
        entry = order.setdefault(source, [0.0, 0])
        entry[0] += float(value)
        entry[1] += 1
    return [(s, v, n) for s, (v, n) in order.items()]


# ---------------------------------------------------------------- importance

def _library(estimator) -> str:
    return type(estimator).__module__.split(".")[0]


def _linear(estimator):
    try:
        return compile_linear(estimator, "regression")
    except Exception:
        return None


def importance_source(estimator) -> str | None:
    """'trees' (the model's own importances), 'linear' (|coef| × std) or None (permutation)."""
    if _library(estimator) in ("lightgbm", "xgboost", "catboost"):
        return "trees"
    try:
        if getattr(estimator, "feature_importances_", None) is not None:
            return "trees"
    except Exception:        # a property that raises (e.g. a booster without trees)
        pass
    return "linear" if _linear(estimator) is not None else None


def importances(model: ExplainModel) -> tuple[np.ndarray, str]:
    """Per model feature importance and its definition's name."""
    est, n = model.estimator, model.num_features
    if model.task in ("clustering", "decomposition"):
        raise Unsupported(f"pgml.feature_importance does not apply to {model.task} models",
                          hint="Feature importance is defined for regression and classification models.")
    source = importance_source(est)
    if source == "trees":
        return _tree_importances(est, n)
    if source == "linear":
        plan = _linear(est)
        std = _stat(model, "std")
        if std is None:
            raise Unsupported(f"model {model.model_id} was trained before feature statistics were stored",
                              hint="Retrain it: pgml.train(project_name) on the last snapshot.")
        return np.abs(plan.coef).mean(axis=1) * std, "abs(coef) * std"
    stored = (model.metrics or {}).get("permutation_importance")
    if isinstance(stored, list) and len(stored) == n:
        return np.array([0.0 if v is None else v for v in stored], dtype=np.float64), "permutation"
    raise Unsupported(f"no feature importance for {model.algorithm} (model {model.model_id})",
                      hint="Tree ensembles and linear models have one; other algorithms get permutation "
                           "importance at training when it is cheap enough (at most 200 features).")


def _tree_importances(est, n: int) -> tuple[np.ndarray, str]:
    lib = _library(est)
    if lib == "lightgbm":
        return np.asarray(est.booster_.feature_importance(importance_type="gain"), dtype=np.float64), "gain"
    if lib == "xgboost":
        scores = est.get_booster().get_score(importance_type="total_gain")
        names = est.get_booster().feature_names or [f"f{i}" for i in range(n)]
        return np.array([float(scores.get(name, 0.0)) for name in names], dtype=np.float64), "total_gain"
    if lib == "catboost":
        return np.asarray(est.get_feature_importance(), dtype=np.float64), "PredictionValuesChange"
    return np.asarray(est.feature_importances_, dtype=np.float64), "impurity"


def _stat(model: ExplainModel, name: str) -> np.ndarray | None:
    stats = (model.metrics or {}).get("feature_stats") or {}
    values = stats.get(name)
    if not isinstance(values, list) or len(values) != model.num_features:
        return None
    return np.array([0.0 if v is None else v for v in values], dtype=np.float64)


# ---------------------------------------------------------------- contributions

@dataclass
class Explanation:
    base: float
    contributions: np.ndarray      # per model feature
    raw: float                     # what base + contributions add up to
    output: str                    # what `raw` is, for messages


def contributions(model: ExplainModel, x: np.ndarray) -> Explanation:
    """Exact contributions of one row `x` (1 × features); see the module docstring."""
    est = model.estimator
    if model.task in ("clustering", "decomposition"):
        raise Unsupported(f"pgml.explain does not apply to {model.task} models",
                          hint="pgml.explain explains regression and classification models.")
    x = np.asarray(x, dtype=np.float64).reshape(1, -1)
    lib = _library(est)
    if lib == "lightgbm":
        return _lightgbm(est, x, model.task)
    if lib == "xgboost":
        return _xgboost(est, x, model.task)
    name = type(est).__name__
    if name in _SK_TREES + _SK_FORESTS + _SK_BOOSTING:
        return _sklearn_trees(model, x)
    if name in _SK_HIST:
        return _hist_gradient_boosting(model, x)
    plan = _linear(est)
    if plan is not None:
        return _linear_contributions(model, plan, x)
    raise Unsupported(f"pgml.explain does not support {model.algorithm} ({name})",
                      hint="Supported: " + ", ".join(SUPPORTED_EXPLAIN) + ".")


def _pick_class(raw: np.ndarray, task: str = "classification") -> int:
    """Column of the explained class: the only one (regression, binary margin) or the argmax."""
    raw = np.ravel(raw)
    if raw.size > 1 and task == "regression":
        raise Unsupported("pgml.explain does not support joint (multi-target) regression models",
                          hint="Train one model per target column to explain its predictions.")
    return 0 if raw.size == 1 else int(np.argmax(raw))


def _linear_contributions(model: ExplainModel, plan, x: np.ndarray) -> Explanation:
    if np.isnan(x).any():
        raise ValueError(f"{model.algorithm} does not accept missing values (NULL or NaN)")
    d = (x @ plan.coef + plan.intercept)[0]
    c = _pick_class(d, model.task)
    coef, intercept = plan.coef[:, c], float(plan.intercept[c])
    mean = _stat(model, "mean")
    if mean is None:           # a model trained before the statistics were stored: base = intercept
        mean = np.zeros_like(coef)
    phi = coef * (x[0] - mean)
    output = "prediction" if model.task == "regression" else "decision function" + _of_class(plan.classes, c, d)
    return Explanation(intercept + float(coef @ mean), phi, float(d[c]), output)


def _of_class(classes, c: int, raw) -> str:
    if classes is None:
        return ""
    classes = list(np.ravel(classes))
    index = c + 1 if np.ravel(raw).size == 1 and len(classes) == 2 else c
    return f" of class {classes[index]}" if index < len(classes) else ""


def _lightgbm(est, x: np.ndarray, task: str) -> Explanation:
    booster = est.booster_
    raw = np.ravel(booster.predict(x, raw_score=True))
    contrib = np.ravel(booster.predict(x, pred_contrib=True))
    k = raw.size
    c = _pick_class(raw, task)
    width = contrib.size // k
    row = contrib[c * width:(c + 1) * width]
    output = "prediction" if task == "regression" else \
        "raw score (margin)" + _of_class(getattr(est, "classes_", None), c, raw)
    return Explanation(float(row[-1]), row[:-1].copy(), float(raw[c]), output)


def _xgboost(est, x: np.ndarray, task: str) -> Explanation:
    import xgboost
    booster = est.get_booster()
    matrix = xgboost.DMatrix(x, missing=np.nan)
    raw = np.ravel(booster.predict(matrix, output_margin=True))
    contrib = np.asarray(booster.predict(matrix, pred_contribs=True))
    c = _pick_class(raw, task)
    row = contrib[0, c] if contrib.ndim == 3 else contrib[0]
    output = "prediction" if task == "regression" else \
        "raw score (margin)" + _of_class(getattr(est, "classes_", None), c, raw)
    return Explanation(float(row[-1]), np.asarray(row[:-1], dtype=np.float64), float(raw[c]), output)


# ---------------------------------------------------------------- TreeSHAP for scikit-learn trees

@dataclass
class PathTable:
    """Every root-to-leaf path of some trees, padded to `depth` steps, features merged into slots.

    A step is one split on the path (its feature, threshold, which side the path takes, where a
    missing value goes, and the slot of its feature within the path); a slot is one distinct
    feature of the path with `z`, the product of the cover fractions of its steps (how often
    training rows took this path's side there)."""
    step_feature: np.ndarray      # (L, D) int
    step_threshold: np.ndarray    # (L, D)
    step_left: np.ndarray         # (L, D) bool: the path goes left
    step_missing_left: np.ndarray  # (L, D) bool
    step_slot: np.ndarray         # (L, D) int
    step_valid: np.ndarray        # (L, D) bool
    slot_feature: np.ndarray      # (L, S) int, -1 unused; S = the most distinct features of a path
    slot_z: np.ndarray            # (L, S), 1 for unused slots
    n_slots: np.ndarray           # (L,)
    value: np.ndarray             # (L,) the leaf's value times its tree's weight
    round32: bool = True


def path_table(trees: list, values: list[np.ndarray], weights: list[float], round32: bool = True) -> PathTable:
    """`trees`: scikit-learn `tree_` objects; `values[t]`: the value of each node of tree t."""
    paths, leaf_values = [], []
    for tree, value, weight in zip(trees, values, weights):
        left, right = tree.children_left, tree.children_right
        cover = np.asarray(tree.weighted_n_node_samples, dtype=np.float64)
        missing = getattr(tree, "missing_go_to_left", None)
        stack = [(0, [])]
        while stack:
            node, path = stack.pop()
            if left[node] < 0:
                paths.append(path)
                leaf_values.append(float(value[node]) * weight)
                continue
            f, thr = int(tree.feature[node]), float(tree.threshold[node])
            ml = bool(missing[node]) if missing is not None else False
            for child, goes_left in ((left[node], True), (right[node], False)):
                ratio = cover[child] / cover[node] if cover[node] > 0 else 0.0
                stack.append((child, path + [(f, thr, goes_left, ml, ratio)]))
    L = len(paths)
    D = max(1, max((len(p) for p in paths), default=1))
    S = max(1, max((len({step[0] for step in p}) for p in paths), default=1))
    t = PathTable(
        step_feature=np.zeros((L, D), np.intp), step_threshold=np.zeros((L, D)),
        step_left=np.zeros((L, D), bool), step_missing_left=np.zeros((L, D), bool),
        step_slot=np.zeros((L, D), np.intp), step_valid=np.zeros((L, D), bool),
        slot_feature=np.full((L, S), -1, np.intp), slot_z=np.ones((L, S)), n_slots=np.zeros(L, np.intp),
        value=np.asarray(leaf_values, dtype=np.float64), round32=round32)
    for i, path in enumerate(paths):
        slots: dict[int, int] = {}
        for j, (f, thr, goes_left, ml, ratio) in enumerate(path):
            s = slots.setdefault(f, len(slots))
            t.step_feature[i, j], t.step_threshold[i, j] = f, thr
            t.step_left[i, j], t.step_missing_left[i, j] = goes_left, ml
            t.step_slot[i, j], t.step_valid[i, j] = s, True
            t.slot_feature[i, s] = f
            t.slot_z[i, s] *= ratio
        t.n_slots[i] = len(slots)
    return t


def _shapley_weights(n_slots: np.ndarray, depth: int) -> np.ndarray:
    """w[l, k] = k! (d-k-1)! / d! for a subset of k of the other d-1 features of path l."""
    w = np.zeros((len(n_slots), depth))
    for d in np.unique(n_slots):
        if d == 0:
            continue
        row = np.array([factorial(k) * factorial(d - k - 1) / factorial(d) if k < d else 0.0
                        for k in range(depth)])
        w[n_slots == d] = row
    return w


def tree_shap(table: PathTable, x: np.ndarray, n_features: int) -> tuple[float, np.ndarray]:
    """(expected value, SHAP value of each feature) of row `x` (1-D) over the table's trees.

    For one leaf with distinct path features j, z_j (cover fraction) and o_j (1 when x takes the
    path's side at every split on j, else 0), the path-dependent expectation of the tree given
    the features in S is value × Π_{j∈S} o_j × Π_{j∉S} z_j, and feature i's Shapley value is
    value × (o_i − z_i) × Σ_k w(k, d) · [t^k] Π_{j≠i} (z_j + o_j t): a polynomial product per
    path, divided by one factor per feature (Lundberg's extend/unwind), vectorised over paths."""
    L, D = table.step_feature.shape
    S = table.slot_feature.shape[1]
    xv = x.astype(np.float32).astype(np.float64) if table.round32 else np.asarray(x, dtype=np.float64)
    xs = xv[table.step_feature]
    go_left = np.where(np.isnan(xs), table.step_missing_left, xs <= table.step_threshold)
    follows = (go_left == table.step_left) | ~table.step_valid
    o = np.ones((L, S))
    rows = np.arange(L)
    for j in range(D):
        o[rows, table.step_slot[:, j]] *= follows[:, j]
    used = table.slot_feature >= 0
    o = np.where(used, o, 0.0)
    z = table.slot_z
    # P(t) = Π_s (z_s + o_s t), coefficients 0..S
    P = np.zeros((L, S + 1))
    P[:, 0] = 1.0
    for s in range(S):
        zs, os_ = z[:, s:s + 1], o[:, s:s + 1]
        shifted = np.zeros_like(P)
        shifted[:, 1:] = P[:, :-1]
        P = P * zs + shifted * os_
    expected = float(table.value @ P[:, 0])
    w = _shapley_weights(table.n_slots, S)
    phi = np.zeros(n_features)
    for s in range(S):
        active = np.flatnonzero(used[:, s])
        if not active.size:
            continue
        Pa, wa = P[active], w[active]
        zs, os_ = z[active, s], o[active, s]
        # Q = P / (z_s + o_s t): synthetic division from the top when o_s = 1, a scaling when 0.
        Q = np.empty((active.size, S))
        carry = Pa[:, S].copy()
        for k in range(S - 1, -1, -1):
            Q[:, k] = carry
            carry = Pa[:, k] - zs * carry
        one = os_ > 0
        totals = np.einsum("ij,ij->i", Q, wa)
        if not one.all():
            zero = ~one
            with np.errstate(divide="ignore", invalid="ignore"):
                scaled = np.einsum("ij,ij->i", Pa[zero, :S], wa[zero]) / zs[zero]
            totals[zero] = np.where(zs[zero] > 0, scaled, 0.0)
        contrib = table.value[active] * (os_ - zs) * totals
        phi += np.bincount(table.slot_feature[active, s], weights=contrib, minlength=n_features)
    return expected, phi


def _sk_node_values(tree, task: str, c: int) -> np.ndarray:
    value = np.asarray(tree.value, dtype=np.float64)
    if task == "classification" and value.shape[2] > 1:
        fractions = value[:, 0, :]
        total = fractions.sum(axis=1, keepdims=True)
        total[total == 0] = 1.0
        return fractions[:, c] / total[:, 0]
    return value[:, 0, 0]


def _sklearn_trees(model: ExplainModel, x: np.ndarray) -> Explanation:
    est, task, n = model.estimator, model.task, model.num_features
    name = type(est).__name__
    if getattr(est, "n_outputs_", 1) != 1:
        raise Unsupported(f"pgml.explain does not support multi-output {name}",
                          hint="Explain one model per target.")
    classes = getattr(est, "classes_", None)
    if name in _SK_BOOSTING:
        raw_all = np.ravel(est.decision_function(x) if task == "classification" else est.predict(x))
        c = _pick_class(raw_all)
        init = float(np.ravel(est._raw_predict_init(x))[c])
        key = ("boosting", c)
        if key not in model.cache:
            trees = [t.tree_ for t in est.estimators_[:, c]]
            model.cache[key] = path_table(trees, [t.value[:, 0, 0] for t in trees],
                                          [float(est.learning_rate)] * len(trees))
        expected, phi = tree_shap(model.cache[key], x[0], n)
        output = "prediction" if task == "regression" else "raw score (log-odds)" + _of_class(classes, c, raw_all)
        return Explanation(init + expected, phi, float(raw_all[c]), output)
    members = [est] if name in _SK_TREES else list(est.estimators_)
    if task == "classification":
        proba = np.ravel(est.predict_proba(x))
        c = int(np.argmax(proba))
        raw = float(proba[c])
        output = f"probability of class {list(np.ravel(classes))[c]}"
    else:
        c, raw, output = 0, float(np.ravel(est.predict(x))[0]), "prediction"
    key = ("trees", c)
    if key not in model.cache:
        trees = [m.tree_ for m in members]
        model.cache[key] = path_table(trees, [_sk_node_values(t, task, c) for t in trees],
                                      [1.0 / len(trees)] * len(trees))
    expected, phi = tree_shap(model.cache[key], x[0], n)
    return Explanation(expected, phi, raw, output)


def _hist_gradient_boosting(model: ExplainModel, x: np.ndarray) -> Explanation:
    """HistGradientBoosting*: baseline + Σ tree values (shrinkage already in them), float64 splits,
    a missing value going where each node sends it; `count` is the cover."""
    from types import SimpleNamespace
    est, task = model.estimator, model.task
    if getattr(est, "is_categorical_", None) is not None and np.any(est.is_categorical_):
        raise Unsupported("pgml.explain does not support categorical splits of hist_gradient_boosting",
                          hint="Train it without categorical_features to explain it.")
    raw_all = np.ravel(est.decision_function(x) if task == "classification" else est._raw_predict(x))
    c = _pick_class(raw_all, task)
    key = ("hist", c)
    if key not in model.cache:
        trees, values = [], []
        for stage in est._predictors:
            nodes = stage[c].nodes
            leaf = nodes["is_leaf"].astype(bool)
            trees.append(SimpleNamespace(
                children_left=np.where(leaf, -1, nodes["left"].astype(np.intp)),
                children_right=np.where(leaf, -1, nodes["right"].astype(np.intp)),
                feature=nodes["feature_idx"].astype(np.intp), threshold=nodes["num_threshold"].astype(np.float64),
                weighted_n_node_samples=nodes["count"].astype(np.float64),
                missing_go_to_left=nodes["missing_go_to_left"].astype(bool)))
            values.append(nodes["value"].astype(np.float64))
        model.cache[key] = path_table(trees, values, [1.0] * len(trees), round32=False)
    expected, phi = tree_shap(model.cache[key], x[0], model.num_features)
    baseline = float(np.ravel(est._baseline_prediction)[c])
    classes = getattr(est, "classes_", None)
    output = "raw score" if task == "regression" else "raw score (log-odds)" + _of_class(classes, c, raw_all)
    return Explanation(baseline + expected, phi, float(raw_all[c]), output)
