"""Test-set metrics for a trained model, as stored in `pgml.models.metrics`.

Names follow PostgresML: regression r2, mean_squared_error, mean_absolute_error,
explained_variance; classification f1, precision, recall (macro averages), accuracy, mcc, and
roc_auc / log_loss for binary problems with probabilities. Clustering: silhouette (on a sample
of at most SILHOUETTE_SAMPLE rows), calinski_harabasz, davies_bouldin (lower is better, but not a
key metric) and n_clusters; decomposition: explained_variance_ratio (the kept components' total)
and explained_variance_ratio_per_component. Every value is a plain float (or a list of them), so
the dict is JSON-ready. The key metric decides automatic deployment; for every task higher is
better.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

KEY_METRICS = {"regression": "r2", "classification": "f1", "clustering": "silhouette",
               "decomposition": "explained_variance_ratio"}
SILHOUETTE_SAMPLE = 5000        # silhouette is O(n²) in memory and time: scored on a sample beyond this


def key_metric(task: str) -> str:
    """The metric that ranks models of `task` (higher is better for every task)."""
    return KEY_METRICS[task]


def score_clustering(X: np.ndarray, labels, seed: int | None = 0) -> dict[str, float | None]:
    """Internal cluster-validity indices of `labels` on rows `X` (the test rows).

    All three need at least 2 clusters and fewer clusters than rows; otherwise they are None.
    Rows labelled -1 (noise, e.g. AffinityPropagation that did not converge) count as a cluster.
    """
    from sklearn import metrics as m
    labels = np.asarray(labels)
    n_clusters = int(len(np.unique(labels))) if labels.size else 0
    values: dict[str, float | None] = {"n_clusters": float(n_clusters)}
    if not 2 <= n_clusters <= X.shape[0] - 1:
        values.update(silhouette=None, calinski_harabasz=None, davies_bouldin=None)
        return values
    sample = SILHOUETTE_SAMPLE if X.shape[0] > SILHOUETTE_SAMPLE else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values["silhouette"] = _json_float(m.silhouette_score(X, labels, sample_size=sample, random_state=seed))
        values["calinski_harabasz"] = _json_float(m.calinski_harabasz_score(X, labels))
        values["davies_bouldin"] = _json_float(m.davies_bouldin_score(X, labels))
    return values


def score_decomposition(estimator, X: np.ndarray) -> dict[str, Any]:
    """How much of the variance of rows `X` (the test rows) the fitted decomposition keeps.

    Orthogonal projections (PCA, IncrementalPCA, TruncatedSVD): per component k, the variance of
    the rows projected on component k over the total variance of X (scikit-learn's own definition
    of explained_variance_ratio_, computed on these rows; whitening does not change it), and their
    sum. Other decompositions (kernel PCA, ICA, NMF): the total is 1 − residual / total sum of
    squares of the reconstruction `inverse_transform(transform(X))` when the estimator has one (no
    per-component list); without one, None.
    """
    X = np.asarray(X, dtype=np.float64)
    total_ss = float(((X - X.mean(axis=0)) ** 2).sum())
    name = type(estimator).__name__
    values: dict[str, Any] = {"n_components": None, "explained_variance_ratio": None,
                              "explained_variance_ratio_per_component": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        T = np.asarray(estimator.transform(X), dtype=np.float64)
        values["n_components"] = float(T.shape[1])
        if total_ss <= 0:
            return values
        if name in ("PCA", "IncrementalPCA", "TruncatedSVD"):
            V = np.asarray(estimator.components_, dtype=np.float64)
            center = np.asarray(getattr(estimator, "mean_", 0.0), dtype=np.float64)
            P = (X - center) @ V.T
            var = P.var(axis=0) * X.shape[0]          # sums of squares about the projection's mean
            ratios = var / total_ss
            values["explained_variance_ratio"] = _json_float(ratios.sum())
            values["explained_variance_ratio_per_component"] = [_json_float(r) for r in ratios]
            return values
        try:
            R = np.asarray(estimator.inverse_transform(T), dtype=np.float64)
        except (AttributeError, NotImplementedError, ValueError):   # e.g. KernelPCA without fit_inverse_transform
            return values
        values["explained_variance_ratio"] = _json_float(1.0 - float(((X - R) ** 2).sum()) / total_ss)
    return values


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
