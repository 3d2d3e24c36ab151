"""The plan contract: what every compiled plan offers, its errors, and the estimator fallback.

A plan is a fitted model turned, once, into plain arrays that a prediction walks without
scikit-learn's per-call validation: that overhead, not the arithmetic, is what a one-row
prediction costs inside the library. Everything a compiler does not recognise becomes an
`EstimatorPlan`, which calls the estimator itself, so every model can be served. The compilers
(linear.py, trees.py) import this module; compiler.py chooses between them.
"""
from __future__ import annotations

import pickle
from typing import Any, Protocol

import numpy as np


class PlanError(TypeError, ValueError):
    """A prediction the model cannot make (no probabilities, missing values it does not accept).

    Both a TypeError (the operation does not apply to this model) and a ValueError (what
    scikit-learn raises for bad input), so callers catching either see it."""


class Plan(Protocol):
    num_features: int
    task: str                      # 'regression' | 'classification'
    classes: np.ndarray | None     # class labels of a classifier, in the order of predict_proba's columns
    kind: str                      # 'linear' | 'trees' | 'native' | 'estimator' | 'multi-output'
    nbytes: int                    # approximate memory footprint, for the cache's byte bound

    def predict(self, X: np.ndarray) -> np.ndarray: ...
    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...


def as_rows(X: Any, num_features: int) -> np.ndarray:
    """X as a C-contiguous float64 (n, num_features) matrix; a cheap no-op for the common case."""
    if type(X) is not np.ndarray or X.dtype != np.float64 or X.ndim != 2 or not X.flags.c_contiguous:
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X.reshape(1, -1)
    if X.shape[1] != num_features:
        raise PlanError(f"the model takes {num_features} features, got {X.shape[1]}")
    return X


def labels_array(classes: Any) -> np.ndarray | None:
    """Class labels as float64 where they are numbers (predictions are returned as floats), else as they are."""
    if classes is None:
        return None
    classes = np.asarray(classes)
    if classes.dtype.kind in "biuf":
        return classes.astype(np.float64)
    return classes


def no_proba(plan_name: str) -> PlanError:
    return PlanError(f"{plan_name} does not compute class probabilities")


class EstimatorPlan:
    """The estimator's own predict/predict_proba: correct for every model, but with its overhead."""

    kind = "estimator"

    def __init__(self, estimator: Any, task: str) -> None:
        self.estimator = estimator
        self.task = task
        self.num_features = int(getattr(estimator, "n_features_in_", 0) or 0)
        self.classes = labels_array(getattr(estimator, "classes_", None)) if task == "classification" else None
        self.nbytes = _pickled_size(estimator)

    def predict(self, X: np.ndarray) -> np.ndarray:
        out = np.asarray(self.estimator.predict(X))
        if out.dtype.kind in "biuf":
            return out.astype(np.float64, copy=False)
        return out

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        proba = getattr(self.estimator, "predict_proba", None)
        if proba is None:
            raise no_proba(type(self.estimator).__name__)
        try:
            return np.asarray(proba(X), dtype=np.float64)
        except (AttributeError, NotImplementedError) as exc:   # e.g. SGDClassifier(loss='hinge')
            raise PlanError(str(exc)) from None


class MultiOutputPlan:
    """One sub-plan per target (MultiOutputRegressor), columns side by side."""

    kind = "multi-output"
    classes = None

    def __init__(self, plans: list, task: str) -> None:
        self.plans = plans
        self.task = task
        self.num_features = plans[0].num_features
        self.nbytes = sum(p.nbytes for p in plans)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.column_stack([np.ravel(p.predict(X)) for p in self.plans])

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raise no_proba("a multi-output regressor")


def _pickled_size(estimator: Any) -> int:
    try:
        return len(pickle.dumps(estimator, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:     # an unpicklable estimator still gets a nominal size
        return 1 << 20
