"""Feature importance for the model page.

First choice: `pgml.feature_importance(model_id)` through pgml-server, when the server offers
it (another change adds it). Until then, the importances the model itself carries, read from
the plan this very process already holds in its model cache (loaded — and signature-checked —
by the cache when the page's predictions ran): `feature_importances_` of estimators kept by
their plan (LightGBM, XGBoost, HistGradientBoosting, estimator plans), or |coefficients| of
linear plans. The web layer never reads or unpickles an artifact itself; a model that is not
in this process's cache (another --workers process answered) shows "not available".
"""
from __future__ import annotations

from typing import Any

import asyncpg
import numpy as np

from . import charts

TOP = 30


async def importance(login, cache, model: dict, feature_names: list[str]) -> dict[str, Any]:
    if model["status"] != "successful":
        return {"unavailable": "the model did not train successfully"}
    pool = await login.through()
    try:
        async with pool.acquire() as conn:
            stmt = await conn.prepare(f"SELECT * FROM pgml.feature_importance({int(model['id'])})")
            rows = await stmt.fetch()
        pairs = [(str(r[0]), float(r[1])) for r in rows if len(r) >= 2 and r[1] is not None]
        return _chart(pairs, "from pgml.feature_importance")
    except asyncpg.PostgresError as exc:
        if exc.sqlstate != "42883":
            return {"unavailable": f"not available ({exc.sqlstate}: {exc})"}
    entry = cache.model(int(model["id"])) if cache is not None else None
    if entry is None:
        return {"unavailable": "not available: pgml.feature_importance is not offered by this server yet, and the "
                               "model is not loaded in this process's model cache"}
    values, how = _from_plan(entry.plan)
    if values is None:
        return {"unavailable": f"not available: pgml.feature_importance is not offered by this server yet, and "
                               f"a {getattr(entry.plan, 'kind', '?')} plan of this algorithm carries no importances"}
    names = feature_names if len(feature_names) == len(values) else [f"feature {i}" for i in range(len(values))]
    return _chart(list(zip(names, (float(v) for v in values))), how)


def _from_plan(plan) -> tuple[np.ndarray | None, str]:
    for holder in (plan, getattr(plan, "native", None)):
        estimator = getattr(holder, "estimator", None)
        values = getattr(estimator, "feature_importances_", None)
        if values is not None:
            return np.asarray(values, dtype=np.float64).reshape(-1), "the model's own feature_importances_"
    coef = getattr(plan, "coef", None)
    if coef is not None and getattr(plan, "kind", None) == "linear":
        return (np.abs(np.asarray(coef, dtype=np.float64)).sum(axis=1),
                "|coefficients| of the linear model (on unscaled features: compare with care)")
    return None, ""


def _chart(pairs: list[tuple[str, float]], how: str) -> dict[str, Any]:
    if not pairs:
        return {"unavailable": "no importances"}
    pairs.sort(key=lambda p: -abs(p[1]))
    shown = pairs[:TOP]
    return {"chart": charts.bars([p[0] for p in shown], [p[1] for p in shown], "feature importance",
                                 kind="importance"), "how": how}
