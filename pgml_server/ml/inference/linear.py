"""Linear models as one weight matrix and intercept: a prediction is `X @ W + b` and a link.

scikit-learn's own predict spends tens of microseconds validating its input before a matmul
that takes one; a plan checks only what it must (shape, NaN), so one row costs a few
microseconds. Probabilities are computed the way each estimator computes them: softmax for
multinomial logistic regression, normalised sigmoids for one-vs-rest, SGD's modified-Huber
clipping; classifiers with no probabilities (hinge losses, ridge, perceptron) raise PlanError.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from . import gpu as gpu_backend
from .contract import PlanError, labels_array, no_proba

_REGRESSORS = (
    "LinearRegression", "Ridge", "RidgeCV", "Lasso", "LassoCV", "ElasticNet", "ElasticNetCV",
    "Lars", "LarsCV", "LassoLars", "LassoLarsCV", "LassoLarsIC", "OrthogonalMatchingPursuit",
    "OrthogonalMatchingPursuitCV", "BayesianRidge", "ARDRegression", "SGDRegressor",
    "PassiveAggressiveRegressor", "HuberRegressor", "QuantileRegressor", "TheilSenRegressor", "LinearSVR",
)
_LOG_LINK_REGRESSORS = ("PoissonRegressor", "GammaRegressor")
_CLASSIFIERS = ("LogisticRegression", "LogisticRegressionCV", "RidgeClassifier", "RidgeClassifierCV",
                "SGDClassifier", "Perceptron", "PassiveAggressiveClassifier", "LinearSVC")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _normalise(prob: np.ndarray) -> np.ndarray:
    """One-vs-rest scores → a distribution; an all-zero row becomes uniform, as scikit-learn does."""
    total = prob.sum(axis=1, keepdims=True)
    zero = total[:, 0] == 0
    if zero.any():
        prob[zero] = 1.0
        total[zero] = prob.shape[1]
    return prob / total


def _binary_columns(p: np.ndarray) -> np.ndarray:
    return np.column_stack([1.0 - p[:, 0], p[:, 0]])


def proba_logistic_binary(d: np.ndarray) -> np.ndarray:
    return _binary_columns(_sigmoid(d))


def proba_softmax(d: np.ndarray) -> np.ndarray:
    return _softmax(d)


def proba_ovr(d: np.ndarray) -> np.ndarray:
    return _normalise(_sigmoid(d))


def proba_modified_huber(d: np.ndarray) -> np.ndarray:
    p = (np.clip(d, -1.0, 1.0) + 1.0) / 2.0
    return _binary_columns(p) if p.shape[1] == 1 else _normalise(p)


class LinearPlan:
    """decision = X @ coef + intercept; regression returns it (through `link`), classification labels it."""

    kind = "linear"

    def __init__(self, coef: np.ndarray, intercept: np.ndarray, *, task: str, classes=None,
                 proba: Callable | None = None, link: Callable | None = None, flat: bool = True,
                 gpu: str = "off", name: str = "") -> None:
        self.coef = np.ascontiguousarray(coef, dtype=np.float64)           # (num_features, k)
        self.intercept = np.ascontiguousarray(intercept, dtype=np.float64).reshape(-1)  # (k,)
        self.num_features = self.coef.shape[0]
        self.task, self.name, self.gpu = task, name, gpu
        self.classes = labels_array(classes)
        self._proba, self._link = proba, link
        self._flat = flat and self.coef.shape[1] == 1            # predict returns (n,), not (n, 1)
        self._gpu = None
        self.nbytes = self.coef.nbytes + self.intercept.nbytes + 256

    def decision(self, X: np.ndarray) -> np.ndarray:
        if type(X) is not np.ndarray or X.dtype != np.float64 or X.ndim != 2:
            X = np.asarray(X, dtype=np.float64).reshape(-1, self.num_features)
        if X.shape[1] != self.num_features:
            raise PlanError(f"the model takes {self.num_features} features, got {X.shape[1]}")
        if self.gpu != "off" and gpu_backend.use_gpu(self.gpu, X.shape[0]):
            if self._gpu is None:
                self._gpu = gpu_backend.GpuLinear(self.coef, self.intercept)
            d = self._gpu.decision(X)
        else:
            d = X @ self.coef
            d += self.intercept
        if np.isnan(d).any():    # NaN in, NaN out: cheaper to find in the (n, k) result than in X
            raise PlanError(f"{self.name or 'a linear model'} does not accept missing values (NULL or NaN)")
        return d

    def predict(self, X: np.ndarray) -> np.ndarray:
        d = self.decision(X)
        if self.classes is not None:
            index = (d[:, 0] > 0).astype(np.intp) if d.shape[1] == 1 else d.argmax(axis=1)
            return self.classes[index]
        if self._link is not None:
            d = self._link(d)
        return d[:, 0] if self._flat else d

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if self._proba is None:
            raise no_proba(self.name or "this model")
        return self._proba(self.decision(X))


def _weights(est) -> tuple[np.ndarray, np.ndarray, bool]:
    """coef_/intercept_ of any shape → (num_features, k) and (k,); flat when coef_ is 1-D."""
    coef = np.asarray(est.coef_, dtype=np.float64)
    flat = coef.ndim == 1
    coef = coef.reshape(1, -1) if flat else coef
    intercept = np.broadcast_to(np.asarray(est.intercept_, dtype=np.float64).reshape(-1), (coef.shape[0],))
    return coef.T, intercept, flat


def _regressor(est, gpu: str) -> LinearPlan | None:
    name = type(est).__name__
    if name == "RANSACRegressor":
        inner = getattr(est, "estimator_", None)
        return None if inner is None else _regressor(inner, gpu)
    if name in _REGRESSORS:
        coef, intercept, flat = _weights(est)
        return LinearPlan(coef, intercept, task="regression", flat=flat, gpu=gpu, name=name)
    if name in _LOG_LINK_REGRESSORS:
        coef, intercept, flat = _weights(est)
        return LinearPlan(coef, intercept, task="regression", link=np.exp, flat=flat, gpu=gpu, name=name)
    return None


def _classifier(est, gpu: str) -> LinearPlan | None:
    name = type(est).__name__
    if name not in _CLASSIFIERS or np.ndim(est.classes_) != 1:
        return None
    coef, intercept, _ = _weights(est)
    binary = coef.shape[1] == 1
    return LinearPlan(coef, intercept, task="classification", classes=est.classes_,
                      proba=_proba_method(est, name, binary), gpu=gpu, name=name)


def _proba_method(est, name: str, binary: bool) -> Callable | None:
    if name.startswith("LogisticRegression"):
        if binary:
            return proba_logistic_binary
        # scikit-learn < 1.7 could fit one-vs-rest inside LogisticRegression itself.
        return proba_ovr if getattr(est, "multi_class", "auto") == "ovr" else proba_softmax
    if name == "SGDClassifier":
        if est.loss == "log_loss":
            return proba_logistic_binary if binary else proba_ovr
        if est.loss == "modified_huber":
            return proba_modified_huber
    return None


def compile_linear(estimator: Any, task: str, *, gpu: str = "off") -> LinearPlan | None:
    """A LinearPlan for a supported linear model; None for anything else."""
    if type(estimator).__module__.split(".")[0] != "sklearn" or not hasattr(estimator, "n_features_in_"):
        return None
    if hasattr(estimator, "classes_"):
        return _classifier(estimator, gpu)
    return _regressor(estimator, gpu)


def merge_regressors(estimators: list, *, gpu: str = "off") -> LinearPlan | None:
    """MultiOutputRegressor of identity-link linear regressors → one matrix with a column per target."""
    plans = [compile_linear(e, "regression", gpu=gpu) for e in estimators]
    if not plans or any(p is None or p.task != "regression" or p._link is not None for p in plans):
        return None
    coef = np.column_stack([p.coef for p in plans])
    intercept = np.concatenate([p.intercept for p in plans])
    return LinearPlan(coef, intercept, task="regression", flat=False, gpu=gpu, name="MultiOutputRegressor")
