"""Train/test split: sizes, the three sampling modes, reproducibility and the stratified fallback."""
import numpy as np
import pytest

from pgml_server.ml.training import TrainingError
from pgml_server.ml.training.split import count_test_rows, train_test_split


def _data(rows=100):
    X = np.arange(rows * 2, dtype=np.float64).reshape(rows, 2)
    return X, X[:, 0].copy()  # y equals the first feature, so rows can be matched up


def test_sizes_fraction_and_count():
    assert count_test_rows(100, 0.25) == 25 and count_test_rows(10, 0.25) == 3 and count_test_rows(10, 4) == 4
    X, y = _data()
    split = train_test_split(X, y, 0.2, "random", seed=1)
    assert split.X_train.shape == (80, 2) and split.X_test.shape == (20, 2) and split.warning is None
    assert (split.X_train[:, 0] == split.y_train).all() and (split.X_test[:, 0] == split.y_test).all()
    assert sorted(np.concatenate([split.y_train, split.y_test])) == list(y)


@pytest.mark.parametrize("size", [0, 1.5, -1, 100, 1.0 * 200, "x"])
def test_bad_test_size(size):
    X, y = _data()
    with pytest.raises(TrainingError) as err:
        train_test_split(X, y, size, "random")
    assert err.value.sqlstate == "22023"


def test_last_holds_out_the_tail_without_copying():
    X, y = _data()
    split = train_test_split(X, y, 10, "last")
    assert list(split.y_test) == list(range(180, 200, 2))
    assert np.shares_memory(split.X_train, X)


def test_random_is_reproducible_by_seed():
    X, y = _data()
    a, b, c = (train_test_split(X, y, 0.3, "random", seed=s) for s in (7, 7, 8))
    assert (a.y_test == b.y_test).all() and not (a.y_test == c.y_test).all()


def test_stratified_keeps_class_shares():
    X = np.zeros((100, 1))
    y = np.array([0] * 80 + [1] * 20)
    split = train_test_split(X, y, 0.25, "stratified", seed=3)
    assert split.warning is None and (split.y_test == 1).sum() == 5 and (split.y_test == 0).sum() == 20


def test_stratified_falls_back_with_a_warning():
    X = np.zeros((20, 1))
    y = np.array([0] * 10 + [1] * 9 + [2])
    split = train_test_split(X, y, 0.25, "stratified", seed=3)
    assert len(split.y_test) == 5 and "class 2 has 1" in split.warning and "random" in split.warning


def test_unknown_sampling():
    X, y = _data()
    with pytest.raises(TrainingError) as err:
        train_test_split(X, y, 0.25, "first")
    assert err.value.sqlstate == "22023" and "random, last, stratified" in err.value.hint
