"""The algorithm table: every (algorithm, task) entry builds and fits, and bad input is a clear 22023."""
import numpy as np
import pytest

from pgml_server.ml.training import TrainingError
from pgml_server.ml.training.algorithms import (ALGORITHMS, SUPERVISED, algorithms_for, canonical_name,
                                             default_algorithm, estimator_name, make_estimator,
                                             supports_multi_output)

SEED_REGRESSION_ONLY = ["lasso", "elastic_net", "least_angle", "lasso_least_angle", "orthogonal_matching_pursuit",
                        "bayesian_ridge", "automatic_relevance_determination", "ransac", "theil_sen", "huber",
                        "quantile", "kernel_ridge"]
SEED_BOTH = ["linear", "ridge", "stochastic_gradient_descent", "passive_aggressive", "svm", "nu_svm", "linear_svm",
             "ada_boost", "bagging", "extra_trees", "gradient_boosting_trees", "random_forest",
             "hist_gradient_boosting", "gaussian_process", "lightgbm", "xgboost"]


def _data(task, rows=60, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 3))
    y = X @ [1.5, -2.0, 0.5] + rng.normal(scale=0.1, size=rows)
    return X, (y > 0).astype(np.float64) if task == "classification" else y


def test_availability_follows_the_seed_table():
    regression, classification = set(algorithms_for("regression")), set(algorithms_for("classification"))
    assert set(SEED_REGRESSION_ONLY) <= regression and not set(SEED_REGRESSION_ONLY) & classification
    assert set(SEED_BOTH) <= regression & classification
    assert "perceptron" in classification and "perceptron" not in regression
    assert default_algorithm == "linear"


@pytest.mark.parametrize("algorithm,task,expected", [
    ("linear", "regression", "LinearRegression"), ("linear", "classification", "LogisticRegression"),
    ("ridge", "classification", "RidgeClassifier"), ("least_angle", "regression", "Lars"),
    ("automatic_relevance_determination", "regression", "ARDRegression"),
    ("lightgbm", "regression", "LGBMRegressor"), ("xgboost", "classification", "XGBClassifier"),
    ("svm", "classification", "SVC"), ("hist_gradient_boosting", "regression", "HistGradientBoostingRegressor"),
])
def test_estimator_classes(algorithm, task, expected):
    assert type(make_estimator(algorithm, task, {})).__name__ == expected == estimator_name(algorithm, task)


@pytest.mark.parametrize("algorithm,task", sorted(p for p in ALGORITHMS if p[1] in SUPERVISED))
def test_every_entry_fits_and_predicts(algorithm, task):
    X, y = _data(task)
    light = {"n_estimators": 5} if "n_estimators" in make_estimator(algorithm, task, {}).get_params() else {}
    estimator = make_estimator(algorithm, task, light, seed=1).fit(X, y)
    assert estimator.predict(X).shape == (len(X),)


def test_misspelled_seed_name_is_accepted():
    assert canonical_name("orthoganl_matching_pursuit") == "orthogonal_matching_pursuit"
    assert type(make_estimator("orthoganl_matching_pursuit", "regression", {})).__name__ == "OrthogonalMatchingPursuit"


def test_hyperparameters_are_applied_and_seed_sets_random_state():
    estimator = make_estimator("random_forest", "classification", {"n_estimators": 7, "max_depth": 3}, seed=42)
    assert (estimator.n_estimators, estimator.max_depth, estimator.random_state) == (7, 3, 42)
    assert make_estimator("random_forest", "regression", {"random_state": 5}, seed=42).random_state == 5


def test_quiet_defaults():
    assert make_estimator("lightgbm", "regression", {}).get_params()["verbose"] == -1
    assert make_estimator("xgboost", "regression", {}).get_params()["verbosity"] == 0


def test_unknown_algorithm_lists_the_valid_ones():
    with pytest.raises(TrainingError) as err:
        make_estimator("neural_magic", "regression", {})
    assert err.value.sqlstate == "22023" and "neural_magic" in err.value.message
    assert err.value.hint.startswith("valid algorithms for regression: linear, ridge")


def test_algorithm_not_available_for_the_task():
    with pytest.raises(TrainingError) as err:
        make_estimator("lasso", "classification", {})
    assert err.value.sqlstate == "22023"
    assert "not available for classification" in err.value.message and "lasso" not in err.value.hint


def test_unknown_hyperparameter_lists_the_estimators_parameters():
    with pytest.raises(TrainingError) as err:
        make_estimator("ridge", "regression", {"alpah": 1.0})
    assert err.value.sqlstate == "22023" and "'alpah'" in err.value.message
    assert "alpha" in err.value.hint and "fit_intercept" in err.value.hint


def test_bad_hyperparameter_value_is_caught_before_training():
    with pytest.raises(TrainingError) as err:
        make_estimator("ridge", "regression", {"alpha": -1})
    assert err.value.sqlstate == "22023" and "alpha" in err.value.message


def test_lightgbm_core_parameter_aliases_are_accepted():
    assert make_estimator("lightgbm", "regression", {"num_iterations": 3}).get_params()["num_iterations"] == 3


def test_multi_output_native_and_wrapped():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(40, 3)), rng.normal(size=(40, 2))
    assert supports_multi_output("linear") and supports_multi_output("random_forest")
    assert not supports_multi_output("svm") and not supports_multi_output("lightgbm")
    native = make_estimator("linear", "regression", {}, outputs=2)
    wrapped = make_estimator("svm", "regression", {"C": 2.0}, outputs=2)
    assert type(native).__name__ == "LinearRegression"
    assert type(wrapped).__name__ == "MultiOutputRegressor" and wrapped.estimator.C == 2.0
    for estimator in (native, wrapped):
        assert estimator.fit(X, Y).predict(X).shape == (40, 2)


def test_joint_classification_is_refused():
    with pytest.raises(TrainingError, match="regression"):
        make_estimator("linear", "classification", {}, outputs=2)
