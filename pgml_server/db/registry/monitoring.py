"""Drift monitoring in the registry: each model's reference bins (`pgml.model_bins`, computed once
from its training split) and the prediction samples every server flushes (`pgml.prediction_samples`,
summed over replicas by readers; the view `pgml.prediction_stats` gives counts and latency percentiles)."""
from __future__ import annotations

from typing import Any

from ..executor import Executor


async def save_model_bins(ex: Executor, model_id: int, feature_names: list[str], edges: list[list[float]],
                          reference: list[list[int]], rows: int) -> None:
    await ex.execute(
        "INSERT INTO pgml.model_bins (model_id, feature_names, edges, reference, rows) "
        "VALUES ($1::bigint, $2::text[], $3::float8[], $4::int8[], $5::bigint) ON CONFLICT (model_id) DO NOTHING",
        model_id, feature_names, edges, reference, rows)


async def model_bins(ex: Executor, model_id: int) -> dict[str, Any] | None:
    row = await ex.fetchrow("SELECT feature_names, edges, reference, rows FROM pgml.model_bins "
                            "WHERE model_id = $1::bigint", model_id)
    if row is None:
        return None
    return {"feature_names": list(row[0]), "edges": row[1], "reference": row[2], "rows": int(row[3])}


async def insert_prediction_sample(ex: Executor, model_id: int, window_start: float, window_end: float,
                                   server: str, predictions: int, calls: int, sampled_rows: int,
                                   bins: list[list[int]] | None, latency_sum_us: float,
                                   latency_hist: list[int]) -> None:
    await ex.execute(
        "INSERT INTO pgml.prediction_samples (model_id, window_start, window_end, server, predictions, calls, "
        "sampled_rows, bins, latency_sum_us, latency_hist) VALUES ($1::bigint, to_timestamp($2::float8), "
        "to_timestamp($3::float8), $4::text, $5::bigint, $6::bigint, $7::bigint, $8::int8[], $9::float8, "
        "$10::int8[])",
        model_id, window_start, window_end, server, predictions, calls, sampled_rows, bins, latency_sum_us,
        latency_hist)


async def prediction_samples(ex: Executor, model_id: int, since_epoch: float) -> list[tuple]:
    """(bins, sampled_rows, window_start, window_end) of the model's samples whose window ends after `since`."""
    return await ex.fetch(
        "SELECT bins, sampled_rows, window_start::text, window_end::text FROM pgml.prediction_samples "
        "WHERE model_id = $1::bigint AND window_end > to_timestamp($2::float8) AND bins IS NOT NULL "
        "ORDER BY window_end", model_id, since_epoch)
