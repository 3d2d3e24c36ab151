"""pgml.predict, predict_proba, predict_joint, predict_batch and decompose with constant or bound features.

The hot path: a cached model answers synchronously (no await, no upstream, no parser); only a
cache miss returns a coroutine that loads the model first.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from protocol import sqlstate, types
from protocol.errors import PgError

from ..ml.cache import CachedModel, features_matrix
from ..ml.inference import PlanError
from .base import ANY, Param, register

REAL = types.FLOAT4
_INF = float("inf")
# np.add.reduce over the whole array: what ndarray.sum() calls, without its Python-level wrapper frame.
_SUM = np.add.reduce
REAL_ARRAY = types.ARRAY_OF[types.FLOAT4]


def model_for(ctx, project: Any):
    """The cached model for a project name or model id, or an awaitable that loads it."""
    models = ctx.models
    if project is None:
        raise PgError(sqlstate.NULL_VALUE_NOT_ALLOWED, "pgml.predict needs a project name or model id")
    if isinstance(project, str) and not project.lstrip("-").isdigit():
        entry = models.cache.deployed(project)
        return entry if entry is not None else _load_deployed(models, project)
    try:
        model_id = int(project)
    except (TypeError, ValueError, OverflowError):   # an array, JSON, NaN...: a clean error, not XX000
        raise PgError(sqlstate.DATATYPE_MISMATCH,
                      f"pgml.predict needs a project name (text) or a model id (bigint), not {type(project).__name__}"
                      ) from None
    entry = models.cache.model(model_id)
    return entry if entry is not None else _load_model(models, model_id)


async def _load_deployed(models, project: str) -> CachedModel:
    entry = await models.cache.load_deployed(project)
    if entry is None:
        raise PgError(sqlstate.UNDEFINED_OBJECT, f'no deployed model for project "{project}"',
                      hint="Train one with pgml.train(...) or deploy one with pgml.deploy(...); "
                           "SELECT * FROM pgml.overview lists projects.")
    return entry


async def _load_model(models, model_id: int) -> CachedModel:
    entry = await models.cache.load_model(model_id)
    if entry is None:
        raise PgError(sqlstate.UNDEFINED_OBJECT, f"model {model_id} does not exist or has no artifact",
                      hint="SELECT id, status FROM pgml.models lists the models.")
    return entry


def with_model(ctx, project, compute):
    """compute(model) now when the model is cached and this session may read it, else later."""
    entry = model_for(ctx, project)
    if isinstance(entry, CachedModel) and entry.model_id in ctx.session.readable_models:
        return _checked(compute, entry)

    async def later():
        model = entry if isinstance(entry, CachedModel) else await entry
        await authorize(ctx, model)
        return _checked(compute, model)
    return later()


def _checked(compute, model):
    """A prediction the plan refuses (missing values for a model that takes none, no probabilities)
    is the caller's input error (22023), not an internal one (found by tests/test_pgml_arguments.py)."""
    try:
        return compute(model)
    except PlanError as exc:
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, str(exc)) from None


async def authorize(ctx, model: CachedModel) -> None:
    """The cache is shared, the GRANTs are not: the first use of a model in a session reads its row
    with the client's own role, so REVOKE SELECT ON pgml.models keeps a role from predicting."""
    if model.model_id in ctx.session.readable_models:
        return
    await ctx.executor.fetchval("SELECT 1 FROM pgml.models WHERE id = $1::bigint", model.model_id)
    ctx.session.readable_models.add(model.model_id)


# (function, task) → hint, for the pairs that do not go together (SQLSTATE 42809 wrong_object_type).
_WRONG_TASK = {
    ("predict", "decomposition"): "A decomposition model transforms rows: use pgml.decompose(project_name, features).",
    ("predict_joint", "decomposition"): "Use pgml.decompose(project_name, features) for a decomposition model.",
    ("predict_batch", "decomposition"): "Use pgml.decompose(project_name, features) for a decomposition model.",
    ("predict_proba", "regression"): "Use pgml.predict for regression models.",
    ("predict_proba", "clustering"): "A clustering model gives a cluster id: use pgml.predict.",
    ("predict_proba", "decomposition"): "Use pgml.decompose(project_name, features) for a decomposition model.",
    ("decompose", "regression"): "pgml.decompose needs a decomposition model (pca, …): use pgml.predict.",
    ("decompose", "classification"): "pgml.decompose needs a decomposition model (pca, …): use pgml.predict.",
    ("decompose", "clustering"): "pgml.decompose needs a decomposition model (pca, …): use pgml.predict for "
                                 "the cluster id.",
    ("predict_label", "regression"): "Use pgml.predict for regression models.",
    ("predict_label", "clustering"): "A clustering model gives a cluster id: use pgml.predict.",
    ("predict_label", "decomposition"): "Use pgml.decompose(project_name, features) for a decomposition model.",
}
_NEEDS = {"predict_proba": "a classification model", "predict_label": "a classification model",
          "decompose": "a decomposition model"}


def check_task(model: CachedModel, function: str) -> None:
    """A model of the wrong task for the function is a clear error (42809) with a hint."""
    hint = _WRONG_TASK.get((function, model.task))
    if hint is not None:
        needs = _NEEDS.get(function, "a regression, classification or clustering model")
        raise PgError(sqlstate.WRONG_OBJECT_TYPE,
                      f"pgml.{function} needs {needs}, but model {model.model_id} is a {model.task} model",
                      hint=hint)


def run_plan(model: CachedModel, function: str, X: np.ndarray):
    """A block of rows through the model's plan, for the batch paths; a refusal by the plan (NaN
    features for a model that takes none, no probabilities) is the caller's input error (22023)."""
    check_task(model, function)
    if function == "decompose":
        return _checked(lambda m: m.plan.transform(X), model)
    if function == "predict_proba":
        return _checked(lambda m: m.plan.predict_proba(X), model)
    if function == "predict_label":
        return labels_of(model, _checked(lambda m: m.plan.predict(X), model))
    return _checked(lambda m: m.plan.predict(X), model)


def labels_of(model: CachedModel, predicted) -> list[str]:
    """Predicted classes as their labels' text (class indices of text labels, else the values)."""
    values = np.ravel(np.asarray(predicted, dtype=np.float64))
    if model.labels is not None:
        return [str(v) for v in model.labels.decode(values)]
    return [str(int(v)) if float(v).is_integer() else str(float(v)) for v in values]


def batch_features(model: CachedModel, X: np.ndarray, canonical: bool) -> np.ndarray:
    """A block of feature rows from the upstream → the model's features: numeric arrays, or
    canonical rows of pgml.feature() values (row constructors rewritten by sql/predict)."""
    if model.inputs is None:
        return check_features(model, X)
    return model.inputs.from_canonical(X) if canonical else model.inputs.from_numbers(X)


def model_features(model: CachedModel, features) -> np.ndarray:
    """One predict call's features (from _inputs) → the model's feature matrix."""
    if type(features) is tuple:                  # a row constructor or VARIADIC values
        if model.inputs is not None:
            return model.inputs.from_row(features)
        return check_features(model, _features(list(features)))
    if model.inputs is not None:
        return model.inputs.from_numbers(features)
    return check_features(model, features)


def check_features(model: CachedModel, X: np.ndarray) -> np.ndarray:
    if model.num_features and X.shape[1] != model.num_features:
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE,
                      f"wrong number of features: the model expects {model.num_features}, got {X.shape[1]}",
                      hint="Pass the features in the order of the training relation's columns, label excluded.")
    return X


def _inputs(features):
    """A row (tuple) stays as it is, for the model's preprocessing; numbers become a matrix."""
    if type(features) is tuple:
        return features
    return _features(features)


def _features(features) -> np.ndarray:
    if features is None:
        raise PgError(sqlstate.NULL_VALUE_NOT_ALLOWED, "features must not be NULL")
    if type(features) is np.ndarray and features.dtype == np.float64 and features.ndim == 1:
        X = features.reshape(1, -1)                 # a bound float8[]/real[] (local.decode_param)
    else:
        X = _features_of_values(features)
    if X.size == 0:
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, "features must not be empty")
    # One reduction instead of isinf + any on the hot path: a finite sum means no ±Infinity; a
    # NaN or infinite sum (a NaN feature, an overflow, or an Infinity) gets the exact test.
    total = _SUM(X, None)
    if not -_INF < total < _INF and np.isinf(X).any():
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, "features must be finite (Infinity given)",
                      hint="NULL or NaN mark a missing value; Infinity is not a valid feature.")
    return X


def _features_of_values(features) -> np.ndarray:
    try:
        return features_matrix(features)
    except (TypeError, ValueError) as exc:
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, f"features must be numbers: {exc}") from None


_PREDICT_PARAMS = [Param("project_name", ANY), Param("features", REAL_ARRAY, variadic=True)]


@register("predict", _PREDICT_PARAMS, [("predict", REAL)],
          description="predict one row with the project's deployed model (or a model id)")
def predict(ctx, project_name, features):
    X = _inputs(features)

    def compute(model):
        if model.task == "decomposition":
            check_task(model, "predict")
        return _first(model.plan.predict(model_features(model, X)))
    return with_model(ctx, project_name, compute)


def _first(out) -> float:
    """The first prediction as a float: one .item() call on the usual ndarray result."""
    return float(out.item(0) if type(out) is np.ndarray else np.ravel(out)[0])


@register("score", _PREDICT_PARAMS, [("score", REAL)],
          description="pgml.predict by its other name (PRODUCT.md's pgml.score)")
def score(ctx, project_name, features):
    return predict(ctx, project_name, features)


@register("predict_proba", _PREDICT_PARAMS, [("predict_proba", REAL_ARRAY)],
          description="class probabilities of one row")
def predict_proba(ctx, project_name, features):
    X = _inputs(features)

    def compute(model):
        check_task(model, "predict_proba")
        return [float(p) for p in model.plan.predict_proba(model_features(model, X))[0]]
    return with_model(ctx, project_name, compute)


@register("predict_joint", _PREDICT_PARAMS, [("predict_joint", REAL_ARRAY)],
          description="all targets of a joint (multi-target) regression model")
def predict_joint(ctx, project_name, features):
    X = _inputs(features)

    def compute(model):
        check_task(model, "predict_joint")
        out = np.asarray(model.plan.predict(model_features(model, X)))
        return [float(v) for v in np.ravel(out[0])]
    return with_model(ctx, project_name, compute)


@register("predict_batch", [Param("project_name", ANY), Param("features", REAL_ARRAY)],
          [("predict_batch", REAL)], returns_set=True,
          description="predictions for many rows given as one flat array, row after row")
def predict_batch(ctx, project_name, features):
    flat = _features(features).ravel()

    def compute(model):
        check_task(model, "predict_batch")
        n = model.inputs.width if model.inputs is not None else (model.num_features or flat.size)
        if flat.size % n:
            raise PgError(sqlstate.INVALID_PARAMETER_VALUE,
                          f"pgml.predict_batch got {flat.size} values, not a multiple of the model's {n} inputs")
        out = model.plan.predict(model_features(model, flat.reshape(-1, n)))
        return [float(v) for v in np.ravel(out)]
    return with_model(ctx, project_name, compute)


@register("predict_label", _PREDICT_PARAMS, [("predict_label", types.TEXT)],
          description="the predicted class of one row as its label (text), for classification")
def predict_label(ctx, project_name, features):
    X = _inputs(features)

    def compute(model):
        check_task(model, "predict_label")
        return labels_of(model, model.plan.predict(model_features(model, X)))[0]
    return with_model(ctx, project_name, compute)


@register("decompose", _PREDICT_PARAMS, [("decompose", REAL_ARRAY)],
          description="the components of one row under the project's deployed decomposition model (pca, …)")
def decompose(ctx, project_name, features):
    X = _inputs(features)

    def compute(model):
        check_task(model, "decompose")
        return [float(v) for v in np.ravel(model.plan.transform(model_features(model, X))[0])]
    return with_model(ctx, project_name, compute)
