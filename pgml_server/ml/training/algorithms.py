"""The algorithm table: PostgresML algorithm names → scikit-learn-compatible estimators.

One table, `(algorithm, task) → factory`, as PostgresML's own sklearn binding has it. A factory
takes no arguments and returns an estimator with our quiet defaults; `make_estimator` then applies
the user's hyperparameters, checking their names against the estimator's `get_params()` so a typo
is a clear SQL error instead of a silently ignored setting.

Optional libraries (LightGBM, XGBoost, CatBoost) are imported lazily by their factories, and an
entry is listed only when its library imports.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable

from . import TrainingError

SUPERVISED = ("regression", "classification")
UNSUPERVISED = ("clustering", "decomposition")     # trained without a label column
TASKS = SUPERVISED + UNSUPERVISED
default_algorithm = "linear"
# The algorithm pgml.train uses for a task when none is named (linear needs a label).
DEFAULT_ALGORITHMS = {"regression": "linear", "classification": "linear", "clustering": "kmeans",
                      "decomposition": "pca"}

# The seed README spells it this way; PostgresML users' SQL may still say it.
ALIASES = {"orthoganl_matching_pursuit": "orthogonal_matching_pursuit"}


def usable_cpus() -> int:
    """CPUs this process may run on (cgroup/affinity aware where the OS says so)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _sk(module: str, name: str, **defaults: Any) -> Callable[[], Any]:
    """A factory for a scikit-learn estimator, imported on first use (importing all of sklearn is slow)."""
    def factory():
        cls = getattr(importlib.import_module(f"sklearn.{module}"), name)
        return cls(**defaults)
    factory.estimator_name = name
    return factory


def _passive_aggressive(task: str) -> Callable[[], Any]:
    """PassiveAggressive* is deprecated from scikit-learn 1.8 on; its documented replacement is SGD with 'pa1'."""
    import sklearn
    major, minor = (int(p) for p in sklearn.__version__.split(".")[:2])
    if (major, minor) < (1, 8):
        name = "PassiveAggressiveRegressor" if task == "regression" else "PassiveAggressiveClassifier"
        return _sk("linear_model", name)
    if task == "regression":
        return _sk("linear_model", "SGDRegressor", loss="epsilon_insensitive", penalty=None,
                   learning_rate="pa1", eta0=1.0)
    return _sk("linear_model", "SGDClassifier", loss="hinge", penalty=None, learning_rate="pa1", eta0=1.0)


def _lightgbm(task: str) -> Callable[[], Any]:
    def factory():
        import lightgbm
        cls = lightgbm.LGBMRegressor if task == "regression" else lightgbm.LGBMClassifier
        # verbose=-1: LightGBM otherwise prints to the server's stdout on every fit.
        return cls(verbose=-1, n_jobs=usable_cpus())
    factory.estimator_name = "LGBMRegressor" if task == "regression" else "LGBMClassifier"
    return factory


def _xgboost(task: str) -> Callable[[], Any]:
    def factory():
        import xgboost
        cls = xgboost.XGBRegressor if task == "regression" else xgboost.XGBClassifier
        return cls(verbosity=0, n_jobs=usable_cpus())
    factory.estimator_name = "XGBRegressor" if task == "regression" else "XGBClassifier"
    return factory


def _catboost(task: str) -> Callable[[], Any]:
    def factory():
        import catboost
        cls = catboost.CatBoostRegressor if task == "regression" else catboost.CatBoostClassifier
        # allow_writing_files=False: CatBoost otherwise writes catboost_info/ into the working directory.
        return cls(verbose=False, allow_writing_files=False, thread_count=usable_cpus())
    factory.estimator_name = "CatBoostRegressor" if task == "regression" else "CatBoostClassifier"
    return factory


def _dbscan():
    from .unsupervised import NearestCoreDBSCAN
    return NearestCoreDBSCAN()


_dbscan.estimator_name = "NearestCoreDBSCAN"


def _both(module: str, regressor: str | None, classifier: str | None, **defaults) -> dict[str, Callable]:
    entry = {}
    if regressor:
        entry["regression"] = _sk(module, regressor, **defaults)
    if classifier:
        entry["classification"] = _sk(module, classifier, **defaults)
    return entry


def _build_table() -> dict[tuple[str, str], Callable[[], Any]]:
    lm, ens = "linear_model", "ensemble"
    by_algorithm: dict[str, dict[str, Callable]] = {
        # Linear models
        "linear": _both(lm, "LinearRegression", "LogisticRegression"),
        "ridge": _both(lm, "Ridge", "RidgeClassifier"),
        "lasso": _both(lm, "Lasso", None),
        "elastic_net": _both(lm, "ElasticNet", None),
        "least_angle": _both(lm, "Lars", None),
        "lasso_least_angle": _both(lm, "LassoLars", None),
        "orthogonal_matching_pursuit": _both(lm, "OrthogonalMatchingPursuit", None),
        "bayesian_ridge": _both(lm, "BayesianRidge", None),
        "automatic_relevance_determination": _both(lm, "ARDRegression", None),
        "stochastic_gradient_descent": _both(lm, "SGDRegressor", "SGDClassifier"),
        "perceptron": _both(lm, None, "Perceptron"),
        "passive_aggressive": {t: _passive_aggressive(t) for t in SUPERVISED},
        "ransac": _both(lm, "RANSACRegressor", None),
        "theil_sen": _both(lm, "TheilSenRegressor", None),
        "huber": _both(lm, "HuberRegressor", None),
        "quantile": _both(lm, "QuantileRegressor", None),
        # Support vector machines
        "svm": _both("svm", "SVR", "SVC"),
        "nu_svm": _both("svm", "NuSVR", "NuSVC"),
        "linear_svm": _both("svm", "LinearSVR", "LinearSVC"),
        # Ensembles
        "ada_boost": _both(ens, "AdaBoostRegressor", "AdaBoostClassifier"),
        "bagging": _both(ens, "BaggingRegressor", "BaggingClassifier"),
        "extra_trees": _both(ens, "ExtraTreesRegressor", "ExtraTreesClassifier"),
        "gradient_boosting_trees": _both(ens, "GradientBoostingRegressor", "GradientBoostingClassifier"),
        "random_forest": _both(ens, "RandomForestRegressor", "RandomForestClassifier"),
        "hist_gradient_boosting": _both(ens, "HistGradientBoostingRegressor", "HistGradientBoostingClassifier"),
        # Other
        "kernel_ridge": _both("kernel_ridge", "KernelRidge", None),
        "gaussian_process": _both("gaussian_process", "GaussianProcessRegressor", "GaussianProcessClassifier"),
    }
    # Unsupervised. Only clusterers that label new rows are listed: dbscan does through its core
    # samples (unsupervised.NearestCoreDBSCAN); spectral, agglomerative and optics label only the
    # rows they were fitted on.
    by_algorithm.update({
        "dbscan": {"clustering": _dbscan},
        "kmeans": {"clustering": _sk("cluster", "KMeans")},
        "mini_batch_kmeans": {"clustering": _sk("cluster", "MiniBatchKMeans")},
        "bisecting_kmeans": {"clustering": _sk("cluster", "BisectingKMeans")},
        "birch": {"clustering": _sk("cluster", "Birch")},
        "mean_shift": {"clustering": _sk("cluster", "MeanShift")},
        "affinity_propagation": {"clustering": _sk("cluster", "AffinityPropagation")},
        "pca": {"decomposition": _sk("decomposition", "PCA")},
        "incremental_pca": {"decomposition": _sk("decomposition", "IncrementalPCA")},
        "kernel_pca": {"decomposition": _sk("decomposition", "KernelPCA")},
        "fast_ica": {"decomposition": _sk("decomposition", "FastICA")},
        "nmf": {"decomposition": _sk("decomposition", "NMF")},
        "truncated_svd": {"decomposition": _sk("decomposition", "TruncatedSVD")},
    })
    optional = {"lightgbm": _lightgbm, "xgboost": _xgboost, "catboost": _catboost}
    for name, make in optional.items():
        if importlib.util.find_spec(name) is not None:
            by_algorithm[name] = {t: make(t) for t in SUPERVISED}
    return {(alg, task): f for alg, entry in by_algorithm.items() for task, f in entry.items()}


ALGORITHMS: dict[tuple[str, str], Callable[[], Any]] = _build_table()


def canonical_name(algorithm: str) -> str:
    """The table's name for `algorithm` (aliases resolved, case and surrounding blanks ignored)."""
    name = algorithm.strip().lower()
    return ALIASES.get(name, name)


def algorithms_for(task: str) -> list[str]:
    """The algorithm names available for `task`, in table order."""
    return [alg for alg, t in ALGORITHMS if t == task]


def estimator_name(algorithm: str, task: str) -> str:
    """The estimator class name behind `(algorithm, task)`, e.g. 'Ridge'; the entry must exist."""
    return ALGORITHMS[(canonical_name(algorithm), task)].estimator_name


def supports_multi_output(algorithm: str) -> bool:
    """Whether the regressor behind `algorithm` fits a 2-D y (several targets) natively.

    Those that do not are wrapped in MultiOutputRegressor by `make_estimator(..., outputs=n)`.
    """
    from sklearn.utils import get_tags
    factory = _factory(canonical_name(algorithm), "regression")
    try:
        return bool(get_tags(factory()).target_tags.multi_output)
    except (AttributeError, TypeError, ValueError):  # an estimator without scikit-learn ≥ 1.6 tags
        return False


def make_estimator(algorithm: str, task: str, hyperparams: dict | None = None, *,
                   outputs: int = 1, seed: int | None = None):
    """A fresh, unfitted estimator for `(algorithm, task)` with `hyperparams` applied.

    `outputs` > 1 asks for a multi-target ("joint") regressor; one that cannot fit a 2-D y itself
    is wrapped in MultiOutputRegressor. `seed` sets `random_state` unless the hyperparameters do.
    Raises TrainingError 22023 for an unknown algorithm, task, hyperparameter name or value.
    """
    if task not in TASKS:
        raise TrainingError("22023", f"unknown task {task!r}", hint="The task is one of " + ", ".join(TASKS) + ".")
    name = canonical_name(algorithm)
    estimator = _factory(name, task)()
    params = dict(hyperparams or {})
    _check_names(name, estimator, params)
    if seed is not None and "random_state" not in params and "random_state" in estimator.get_params(deep=False):
        params["random_state"] = seed
    estimator.set_params(**params)
    _check_values(name, estimator)
    if outputs > 1:
        estimator = _multi_output(name, task, estimator)
    return estimator


def _factory(name: str, task: str) -> Callable[[], Any]:
    factory = ALGORITHMS.get((name, task))
    if factory is not None:
        return factory
    valid = ", ".join(algorithms_for(task))
    if any(alg == name for alg, _ in ALGORITHMS):
        other = next(t for alg, t in ALGORITHMS if alg == name)
        raise TrainingError("22023", f"algorithm {name!r} is not available for {task}, only for {other}",
                            hint=f"valid algorithms for {task}: {valid}")
    raise TrainingError("22023", f"unknown algorithm {name!r}", hint=f"valid algorithms for {task}: {valid}")


def _check_names(name: str, estimator, params: dict) -> None:
    valid = set(estimator.get_params(deep=False)) | _extra_parameter_names(name)
    unknown = sorted(k for k in params if k not in valid)
    if unknown:
        shown = ", ".join(sorted(estimator.get_params(deep=False)))
        raise TrainingError("22023", f"unknown hyperparameter{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(map(repr, unknown))} for {name} ({type(estimator).__name__})",
                            hint=f"valid hyperparameters: {shown}")


def _extra_parameter_names(name: str) -> set[str]:
    """LightGBM takes its core parameters (and their aliases) as keyword arguments too."""
    if name != "lightgbm":
        return set()
    try:
        from lightgbm.basic import _ConfigAliases  # private, hence the guard
        aliases = _ConfigAliases._get_all_param_aliases()
    except (ImportError, AttributeError):
        return set()
    return set(aliases) | {a for names in aliases.values() for a in names}


def _check_values(name: str, estimator) -> None:
    """Check hyperparameter values now, not minutes later in the worker (scikit-learn estimators only)."""
    validate = getattr(estimator, "_validate_params", None)
    if validate is None or not hasattr(estimator, "_parameter_constraints"):
        return  # LightGBM/XGBoost subclass BaseEstimator without declaring constraints
    try:
        validate()
    except (ValueError, TypeError) as exc:
        raise TrainingError("22023", f"invalid hyperparameter for {name}: {exc}") from None


def _multi_output(name: str, task: str, estimator):
    if task != "regression":
        raise TrainingError("22023", "several label columns (train_joint) need the regression task",
                            hint="Train one classification model per label column.")
    if supports_multi_output(name):
        return estimator
    from sklearn.multioutput import MultiOutputRegressor
    return MultiOutputRegressor(estimator)
