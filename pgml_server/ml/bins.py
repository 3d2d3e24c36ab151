"""Reference bins of a model's features and the population stability index (numpy only: the
training worker computes the reference on its training split, the server the observed counts)."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

N_BINS = 10                      # quantile bins per feature; one more cell counts NaN
CELLS = N_BINS + 1
PSI_EPS = 1e-4                   # floor of a bin fraction (an empty bin would make PSI infinite)
_FEW_ROWS = 64


def reference_bins(X: np.ndarray) -> dict[str, Any] | None:
    """Decile edges per feature (rows: features, +inf padding) and the rows of X in each bin."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        return None
    qs = np.linspace(0.0, 1.0, N_BINS + 1)[1:-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # an all-NaN column has no quantiles
        edges = np.nanquantile(X, qs, axis=0).T
    edges = np.where(np.isnan(edges), np.inf, edges)
    counts = bin_counts(edges, X)
    return {"edges": edges.tolist(), "counts": counts.tolist(), "rows": int(X.shape[0])}


def bin_counts(edges: np.ndarray, X: np.ndarray) -> np.ndarray:
    """features × CELLS counts of the rows of X: bin i holds edges[i-1] < x ≤ edges[i]; the last cell NaN."""
    n_features = edges.shape[0]
    if X.shape[0] < _FEW_ROWS:    # a few sampled rows: one broadcast comparison, a handful of numpy calls
        idx = (X[:, :, None] > edges[None, :, :]).sum(axis=2)
        idx[np.isnan(X)] = N_BINS
        flat = (idx + np.arange(n_features) * CELLS).ravel()
        return np.bincount(flat, minlength=n_features * CELLS).reshape(n_features, CELLS)
    out = np.empty((n_features, CELLS), dtype=np.int64)
    for j in range(n_features):   # many rows: a binary search per value (edges are sorted, +inf last)
        column = X[:, j]
        idx = np.searchsorted(edges[j], column, side="left")
        idx[np.isnan(column)] = N_BINS
        out[j] = np.bincount(idx, minlength=CELLS)
    return out


def psi(reference: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """PSI per feature (rows) between two count matrices; NaN where nothing was observed."""
    reference = np.asarray(reference, dtype=np.float64)
    observed = np.asarray(observed, dtype=np.float64)
    r_tot = reference.sum(axis=1, keepdims=True)
    o_tot = observed.sum(axis=1, keepdims=True)
    r = np.maximum(reference / np.maximum(r_tot, 1), PSI_EPS)
    with np.errstate(invalid="ignore", divide="ignore"):
        o = np.maximum(observed / o_tot, PSI_EPS)
        value = ((o - r) * np.log(o / r)).sum(axis=1)
    return np.where(o_tot[:, 0] > 0, value, np.nan)
