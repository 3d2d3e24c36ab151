"""Train/test split with PostgresML's test_sampling modes: 'random', 'last' and 'stratified'.

'last' keeps the snapshot's row order and holds out its tail (time-ordered data); its halves are
views, not copies. 'random' and 'stratified' draw with `seed`, so a retrain on the same snapshot
sees the same split. Stratification needs two rows of every class; when that fails the split is
random and the reason comes back as `warning`, for the caller to pass on as a NOTICE.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import TrainingError

SAMPLINGS = ("random", "last", "stratified")


class Split(NamedTuple):
    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    warning: str | None = None


def count_test_rows(n_rows: int, test_size: float | int) -> int:
    """How many of `n_rows` rows go to the test set: a fraction in (0, 1) rounded up, or a count ≥ 1."""
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float, np.integer, np.floating)):
        raise TrainingError("22023", f"test_size must be a number, got {test_size!r}")
    if 0 < test_size < 1:
        n_test = math.ceil(n_rows * float(test_size))
    elif test_size >= 1 and float(test_size).is_integer():
        n_test = int(test_size)
    else:
        raise TrainingError("22023", f"test_size must be a fraction in (0, 1) or a row count, got {test_size}")
    if n_test >= n_rows:
        raise TrainingError("22023", f"test_size {test_size} leaves no rows to train on ({n_rows} rows in all)",
                            hint="Use a smaller test_size or a relation with more rows.")
    return n_test


def train_test_split(X: np.ndarray, y: np.ndarray, test_size: float | int = 0.25,
                     sampling: str = "random", seed: int | None = 0) -> Split:
    """Split rows of `X` and `y` into training and test sets (see the module docstring)."""
    if sampling not in SAMPLINGS:
        raise TrainingError("22023", f"unknown test_sampling {sampling!r}",
                            hint="test_sampling is one of " + ", ".join(SAMPLINGS) + ".")
    n_rows = X.shape[0]
    n_test = count_test_rows(n_rows, test_size)
    if sampling == "last":
        cut = n_rows - n_test
        return Split(X[:cut], X[cut:], y[:cut], y[cut:])
    warning = None
    if sampling == "stratified":
        test_index, warning = _stratified_test_index(y, n_test, seed)
        if test_index is not None:
            return _take(X, y, test_index)
    rng = np.random.default_rng(seed)
    return _take(X, y, rng.permutation(n_rows)[:n_test], warning)


def _stratified_test_index(y: np.ndarray, n_test: int, seed) -> tuple[np.ndarray | None, str | None]:
    """Test row indices with each class in proportion, or (None, why not)."""
    labels, counts = np.unique(y, return_counts=True, axis=0 if y.ndim > 1 else None)
    if counts.min() < 2:
        rare = labels[counts.argmin()]
        return None, (f"stratified sampling needs at least 2 rows of every class, but class {_label(rare)} "
                      f"has {counts.min()}; the test set was drawn at random instead")
    from sklearn.model_selection import StratifiedShuffleSplit
    splitter = StratifiedShuffleSplit(n_splits=1, test_size=n_test, random_state=_sklearn_seed(seed))
    try:
        _, test_index = next(splitter.split(np.empty((len(y), 0)), y))
    except ValueError as exc:  # e.g. fewer test rows than classes
        return None, f"stratified sampling is not possible ({exc}); the test set was drawn at random instead"
    return test_index, None


def _take(X: np.ndarray, y: np.ndarray, test_index: np.ndarray, warning: str | None = None) -> Split:
    # A boolean mask keeps the original row order in both halves and costs one copy of each.
    is_test = np.zeros(X.shape[0], dtype=bool)
    is_test[test_index] = True
    is_train = ~is_test
    return Split(X[is_train], X[is_test], y[is_train], y[is_test], warning)


def _label(value) -> str:
    if isinstance(value, np.ndarray):
        return str(value.tolist())
    return repr(value.item() if isinstance(value, np.generic) else value)


def _sklearn_seed(seed) -> int | None:
    return None if seed is None else int(seed) % (2 ** 32)
