"""Test-set metrics for a trained model, as stored in `pgml.models.metrics`.

Names follow PostgresML: regression r2, mean_squared_error, mean_absolute_error,
explained_variance; classification f1, precision, recall (macro averages), accuracy, mcc, and
roc_auc / log_loss for binary problems with probabilities. Every value is a plain float, so the
dict is JSON-ready. The key metric decides automatic deployment; for both tasks higher is better.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

KEY_METRICS = {"regression": "r2", "classification": "f1"}


def key_metric(task: str) -> str:
    """The metric that ranks models of `task` ('r2' or 'f1'; higher is better for both)."""
    return KEY_METRICS[task]


def score(task: str, y_true, y_pred, y_proba=None) -> dict[str, float]:
    """Metrics of predictions `y_pred` against `y_true` for `task`.

    Regression with a 2-D y (several targets) averages each metric over the outputs.
    `y_proba` (n_samples × n_classes) adds roc_auc and log_loss for a binary classifier.
    """
    with warnings.catch_warnings():
        # An undefined metric (e.g. r2 on one sample) is reported as NaN → None below, not a warning.
        warnings.simplefilter("ignore")
        if task == "regression":
            values = _regression(np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64))
        elif task == "classification":
            values = _classification(np.asarray(y_true), np.asarray(y_pred), y_proba)
        else:
            raise ValueError(f"unknown task {task!r}")
    return {name: _json_float(v) for name, v in values.items()}


def _regression(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    from sklearn import metrics as m
    # uniform_average is sklearn's default for 2-D y: the mean over outputs, as joint models need.
    return {
        "r2": m.r2_score(y_true, y_pred),
        "mean_squared_error": m.mean_squared_error(y_true, y_pred),
        "mean_absolute_error": m.mean_absolute_error(y_true, y_pred),
        "explained_variance": m.explained_variance_score(y_true, y_pred),
    }


def _classification(y_true: np.ndarray, y_pred: np.ndarray, y_proba) -> dict[str, float]:
    from sklearn import metrics as m
    values = {
        "f1": m.f1_score(y_true, y_pred, average="macro", zero_division=0),
        "precision": m.precision_score(y_true, y_pred, average="macro", zero_division=0),
        "recall": m.recall_score(y_true, y_pred, average="macro", zero_division=0),
        "accuracy": m.accuracy_score(y_true, y_pred),
        "mcc": m.matthews_corrcoef(y_true, y_pred),
    }
    if y_proba is not None:
        values.update(_probability_metrics(y_true, np.asarray(y_proba, dtype=np.float64)))
    return values


def _probability_metrics(y_true: np.ndarray, y_proba: np.ndarray) -> dict[str, float]:
    """roc_auc and log_loss of a binary classifier whose column 1 is the positive class."""
    from sklearn import metrics as m
    if y_proba.ndim != 2 or y_proba.shape[1] != 2:
        return {}
    labels = np.unique(y_true)
    if len(labels) != 2:  # the test set holds one class only: AUC is undefined
        return {}
    positive = y_true == labels[1]
    return {
        "roc_auc": m.roc_auc_score(positive, y_proba[:, 1]),
        "log_loss": m.log_loss(positive, y_proba[:, 1], labels=[False, True]),
    }


def _json_float(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
