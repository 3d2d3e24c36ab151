"""Test-set metrics: values agree with scikit-learn's, are JSON-ready, and joint metrics average outputs."""
import json

import numpy as np
import pytest
from sklearn import metrics as m

from pgml_server.ml.training.metrics import key_metric, score


def test_regression_metrics():
    y, p = np.array([3.0, -0.5, 2.0, 7.0]), np.array([2.5, 0.0, 2.0, 8.0])
    values = score("regression", y, p)
    assert set(values) == {"r2", "mean_squared_error", "mean_absolute_error", "explained_variance"}
    assert values["r2"] == pytest.approx(m.r2_score(y, p))
    assert values["mean_squared_error"] == pytest.approx(0.375)
    assert values["mean_absolute_error"] == pytest.approx(0.5)
    json.dumps(values)


def test_joint_regression_averages_over_outputs():
    y = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]])
    p = y + np.array([[0.5, 0.0]] * 4)
    values = score("regression", y, p)
    single = [score("regression", y[:, i], p[:, i]) for i in range(2)]
    for name in values:
        assert values[name] == pytest.approx((single[0][name] + single[1][name]) / 2)


def test_binary_classification_with_probabilities():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0, 1, 1, 1, 0, 0])
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.8, 0.2]])
    values = score("classification", y, p, proba)
    assert values["f1"] == pytest.approx(m.f1_score(y, p, average="macro"))
    assert values["accuracy"] == pytest.approx(4 / 6)
    assert values["mcc"] == pytest.approx(m.matthews_corrcoef(y, p))
    assert values["roc_auc"] == pytest.approx(m.roc_auc_score(y, proba[:, 1]))
    assert values["log_loss"] == pytest.approx(m.log_loss(y, proba))


def test_multiclass_has_no_binary_only_metrics():
    y, p = np.array(["a", "b", "c", "a"]), np.array(["a", "b", "b", "a"])
    values = score("classification", y, p, np.full((4, 3), 1 / 3))
    assert "roc_auc" not in values and "log_loss" not in values
    assert values["precision"] == pytest.approx(m.precision_score(y, p, average="macro", zero_division=0))
    assert values["recall"] == pytest.approx(m.recall_score(y, p, average="macro"))


def test_undefined_metric_becomes_none():
    values = score("regression", np.array([1.0]), np.array([1.0]))  # r2 of one sample is undefined
    assert values["r2"] is None and values["mean_squared_error"] == 0.0
    json.dumps(values)


def test_key_metric():
    assert key_metric("regression") == "r2" and key_metric("classification") == "f1"
