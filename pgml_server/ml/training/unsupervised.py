"""Training without a label: clustering and decomposition, and what supervised models keep for
their explanations (per-feature statistics, permutation importance).

Unsupervised jobs are split like supervised ones (split.py, with a dummy label, so 'random' and
'last' mean the same; 'stratified' falls back to random): fitted on the training rows, scored on
the test rows with metrics.score_clustering / score_decomposition.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from .metrics import score_clustering, score_decomposition
from .split import train_test_split

# Permutation importance is computed at training for models whose importances cannot be read
# from the fitted model (explain.importance_source(...) is None), within these bounds.
PERMUTATION_ROWS = 1000          # test rows used at most (a seeded sample beyond)
PERMUTATION_REPEATS = 3
PERMUTATION_MAX_FEATURES = 200
PERMUTATION_BUDGET_S = 10.0      # estimated CPU seconds above which it is skipped (feature_importance: 0A000)


def fit_unsupervised(task: str, estimator, X: np.ndarray, test_size, test_sampling: str, seed,
                     progress: Callable[[str], None]):
    """(fitted estimator, metrics, fit_time, score_time, training feature count)."""
    sampling = "random" if test_sampling == "stratified" else test_sampling
    split = train_test_split(X, np.zeros(X.shape[0]), test_size, sampling, seed)
    rows, features = split.X_train.shape
    progress(f"fitting {type(estimator).__name__} on {rows} rows × {features} features")
    started = time.perf_counter()
    estimator.fit(split.X_train)
    fit_time = time.perf_counter() - started
    progress(f"scoring on {split.X_test.shape[0]} test rows")
    started = time.perf_counter()
    if task == "clustering":
        metrics = score_clustering(split.X_test, estimator.predict(split.X_test), seed)
    else:
        metrics = score_decomposition(estimator, split.X_test)
    score_time = time.perf_counter() - started
    return estimator, metrics, fit_time, score_time, features


def _dbscan_class():
    from sklearn.cluster import DBSCAN

    class NearestCoreDBSCAN(DBSCAN):
        """DBSCAN that labels new rows: a row within `eps` of a core sample takes the cluster of the
        nearest core sample (what DBSCAN does for border points), any other row is noise (-1)."""

        def predict(self, X):
            from sklearn.metrics import pairwise_distances_argmin_min
            X = np.asarray(X, dtype=np.float64)
            labels = np.full(X.shape[0], -1, dtype=np.int64)
            if len(getattr(self, "core_sample_indices_", ())) == 0:
                return labels
            nearest, distance = pairwise_distances_argmin_min(X, self.components_, metric=self.metric,
                                                              metric_kwargs=self.metric_params or {})
            core_labels = self.labels_[self.core_sample_indices_]
            near = distance <= self.eps
            labels[near] = core_labels[nearest[near]]
            return labels

    NearestCoreDBSCAN.__module__ = __name__
    NearestCoreDBSCAN.__qualname__ = "NearestCoreDBSCAN"
    return NearestCoreDBSCAN


def __getattr__(name: str):
    # The class is built on first use (importing scikit-learn is slow) and found here when unpickled.
    if name == "NearestCoreDBSCAN":
        cls = _dbscan_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


def feature_stats(X_train: np.ndarray) -> dict[str, list]:
    """Mean and (population) standard deviation of each training feature, NaN ignored.

    pgml.explain centres linear contributions on the mean; pgml.feature_importance weighs a
    linear model's |coef| by the std."""
    with np.errstate(all="ignore"):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mean = np.nanmean(X_train, axis=0) if X_train.size else np.zeros(X_train.shape[1])
            std = np.nanstd(X_train, axis=0) if X_train.size else np.zeros(X_train.shape[1])
    return {"mean": [_finite(v) for v in mean], "std": [_finite(v) for v in std]}


def permutation_importance(estimator, X_test: np.ndarray, y_test: np.ndarray, seed,
                           progress: Callable[[str], None]) -> list[float] | None:
    """Mean drop of the estimator's own score (r2 or accuracy) when one feature's test values are
    shuffled; None when it would cost more than the bounds above."""
    n, features = X_test.shape
    if features > PERMUTATION_MAX_FEATURES or n < 2 or (y_test.ndim > 1):
        return None
    rng = np.random.default_rng(seed)
    if n > PERMUTATION_ROWS:
        index = rng.choice(n, PERMUTATION_ROWS, replace=False)
        X_test, y_test = X_test[index], y_test[index]
    # CPU time, not wall time: the worker runs under SCHED_IDLE, so a busy machine stretches its
    # wall time without making the work any larger (found by a flaky test under load).
    started = time.process_time()
    try:
        estimator.score(X_test, y_test)
    except Exception:
        return None
    one = time.process_time() - started
    if one * features * PERMUTATION_REPEATS > PERMUTATION_BUDGET_S:
        progress(f"permutation importance skipped: about {one * features * PERMUTATION_REPEATS:.0f} s")
        return None
    from sklearn.inspection import permutation_importance as sk_permutation
    try:
        result = sk_permutation(estimator, X_test, y_test, n_repeats=PERMUTATION_REPEATS,
                                random_state=int(seed or 0) % (2 ** 32))
    except Exception:
        return None
    return [_finite(v) for v in result.importances_mean]


def _finite(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None
