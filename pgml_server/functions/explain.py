"""pgml.feature_importance and pgml.explain: a model's importances and one row's contributions,
in terms of the relation's own columns (the computations are ml/explain.py).

Both name a project (its deployed model) or a model id, as pgml.predict does, and read the model
row with the client's role first (the GRANT check). The fitted estimator itself is unpickled from
its signed artifact once per model and kept in a small LRU of this process (the serving cache
holds compiled plans, which do not explain themselves).
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict

import numpy as np

from protocol import sqlstate, types
from protocol.errors import PgError

from ..db import registry
from ..ml import artifacts
from ..ml.cache import CachedModel
from ..ml.explain import BASE, ExplainModel, Unsupported, aggregate, contributions, feature_sources, importances
from .base import ANY, Param, register
from ..ml.model import unbundle
from .predict import REAL_ARRAY, _inputs, authorize, check_features, model_for, model_features

TEXT, REAL = types.TEXT, types.FLOAT4
MAX_MODELS = 8                 # estimators kept for explanations, least recently used dropped
SUM_TOLERANCE = 1e-6           # relative: contributions that do not add up are an internal error

_models: OrderedDict[int, ExplainModel] = OrderedDict()


async def _cached(ctx, project) -> CachedModel:
    entry = model_for(ctx, project)
    model = entry if isinstance(entry, CachedModel) else await entry
    await authorize(ctx, model)
    return model


async def explain_model(ctx, project, model: CachedModel | None = None) -> ExplainModel:
    model = model or await _cached(ctx, project)
    cached = _models.get(model.model_id)
    if cached is not None:
        _models.move_to_end(model.model_id)
        return cached
    info = await registry.model_info(ctx.executor, model.model_id)
    if info is None:
        raise PgError(sqlstate.UNDEFINED_OBJECT, f"model {model.model_id} does not exist")
    blob = await ctx.models.run(registry.model_artifact, model.model_id)
    if blob is None:
        raise PgError(sqlstate.UNDEFINED_OBJECT, f"model {model.model_id} has no artifact")
    try:
        estimator, _ = unbundle(await asyncio.get_running_loop().run_in_executor(None, artifacts.loads_model,
                                                                                 ctx.models.key, blob))
    except artifacts.ArtifactSignatureError as exc:
        raise PgError(exc.sqlstate, f"model {model.model_id}: {exc.message}", hint=exc.hint) from None
    loaded = ExplainModel(model.model_id, info["task"], info["algorithm"], estimator, info.get("metrics") or {},
                          int(info.get("num_features") or model.num_features or 0))
    _models[model.model_id] = loaded
    while len(_models) > MAX_MODELS:
        _models.popitem(last=False)
    return loaded


def _unsupported(exc: Unsupported) -> PgError:
    return PgError(sqlstate.FEATURE_NOT_SUPPORTED, exc.message, hint=exc.hint)


@register("feature_importance", [Param("project_name", ANY)], [("feature", TEXT), ("importance", REAL)],
          returns_set=True, description="importance of each column for the project's deployed model")
async def feature_importance(ctx, project_name):
    model = await explain_model(ctx, project_name)
    if model.task in ("clustering", "decomposition"):
        raise PgError(sqlstate.WRONG_OBJECT_TYPE,
                      f"pgml.feature_importance needs a regression or classification model, "
                      f"but model {model.model_id} is a {model.task} model",
                      hint="Feature importance is defined for supervised models.")
    try:
        values, _ = importances(model)
    except Unsupported as exc:
        raise _unsupported(exc) from None
    rows = [(source, value) for source, value, _ in aggregate(values, feature_sources(model))]
    rows.sort(key=lambda r: -r[1])
    return rows


@register("explain", [Param("project_name", ANY), Param("features", REAL_ARRAY, variadic=True)],
          [("feature", TEXT), ("value", REAL), ("contribution", REAL)], returns_set=True,
          description="each column's contribution to one row's prediction (raw score), plus the base value")
async def explain(ctx, project_name, features):
    given = _inputs(features)
    cached = await _cached(ctx, project_name)
    model = await explain_model(ctx, project_name, cached)
    if model.task in ("clustering", "decomposition"):
        raise PgError(sqlstate.WRONG_OBJECT_TYPE,
                      f"pgml.explain needs a regression or classification model, "
                      f"but model {model.model_id} is a {model.task} model",
                      hint="pgml.explain explains predictions of supervised models.")
    X = model_features(cached, given)        # the preprocessed features the estimator takes
    if model.num_features and X.shape[1] != model.num_features:
        check_features(_Width(model.num_features), X)
    try:
        # Off the event loop: TreeSHAP over a large forest takes tens of milliseconds.
        result = await asyncio.get_running_loop().run_in_executor(None, contributions, model, X)
    except Unsupported as exc:
        raise _unsupported(exc) from None
    except ValueError as exc:            # e.g. NaN for a linear model
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, str(exc)) from None
    total = result.base + float(result.contributions.sum())
    if not np.isclose(total, result.raw, rtol=SUM_TOLERANCE, atol=SUM_TOLERANCE * 10):
        raise PgError(sqlstate.INTERNAL_ERROR,
                      f"contributions add up to {total!r}, not to the {result.output} {result.raw!r}")
    sources = feature_sources(model)
    inputs = _input_values(cached, given, X[0], sources)
    rows = [(BASE, None, result.base)]
    for source, contribution, _ in aggregate(result.contributions, sources):
        rows.append((source, inputs.get(source), contribution))
    return rows


def _input_values(model: CachedModel, given, x: np.ndarray, sources: list[str]) -> dict[str, float | None]:
    """The value each source column had in the call, where it is one number (NULL otherwise: text,
    a date, an array, a missing value)."""
    if model.inputs is None:                 # no preprocessing: the features are the inputs
        values: dict[str, list[float]] = {}
        for value, source in zip(x, sources):
            values.setdefault(source, []).append(float(value))
        return {s: (v[0] if len(v) == 1 and not np.isnan(v[0]) else None) for s, v in values.items()}
    if type(given) is tuple:
        pairs = zip(model.inputs.columns, given)
    else:
        pairs = zip(model.inputs.pre.input_names(), np.ravel(given))
    out = {}
    for name, value in pairs:
        number = value if isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) else None
        out[name] = None if number is None or not np.isfinite(number) else float(number)
    return out


class _Width:
    """What check_features reads of a model: its feature count."""

    def __init__(self, n: int) -> None:
        self.num_features = n
