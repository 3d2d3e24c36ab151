"""Models, their artifacts (`pgml.files`) and the server settings in the `pgml` registry.

A model row goes `in_progress` → `successful` | `failed`. Its artifact parts are written before
the row turns `successful`, so a crash half-way leaves an `in_progress` row that start-up marks
`failed` (fail_orphaned_models), never a `successful` model without its bytes.
"""
from __future__ import annotations

import math
import secrets
from typing import Any

from ..executor import Executor

ARTIFACT_PATH = "estimator"
PART_SIZE = 100 << 20            # a bytea value and a protocol message are capped at 1 GB
HMAC_SETTING = "artifact_hmac_key"


async def create_model(ex: Executor, project_id: int, snapshot_id: int | None, algorithm: str,
                       hyperparams: dict | None, search: str | None, search_params: dict | None,
                       search_args: dict | None) -> int:
    """A new `in_progress` model row; the training backend's pid tells live trainings from orphans."""
    return await ex.fetchval(
        "INSERT INTO pgml.models (project_id, snapshot_id, algorithm, hyperparams, status, search, "
        "search_params, search_args, backend_pid) "
        "VALUES ($1::bigint, $2::bigint, $3::text, $4::jsonb, 'in_progress', $5::text, $6::jsonb, "
        "$7::jsonb, pg_backend_pid()) RETURNING id",
        project_id, snapshot_id, algorithm, hyperparams or {}, search, search_params or {}, search_args or {})


async def finish_model(ex: Executor, model_id: int, *, num_features: int, metrics: dict,
                       hyperparams: dict, artifact: bytes) -> None:
    """Store the artifact (in parts), then mark the model successful with its metrics."""
    await ex.execute("DELETE FROM pgml.files WHERE model_id = $1::bigint", model_id)
    view = memoryview(artifact)
    for part, start in enumerate(range(0, max(len(view), 1), PART_SIZE)):
        await ex.execute(
            "INSERT INTO pgml.files (model_id, path, part, data) "
            "VALUES ($1::bigint, $2::text, $3::integer, $4::bytea)",
            model_id, ARTIFACT_PATH, part, bytes(view[start:start + PART_SIZE]))
    await ex.execute(
        "UPDATE pgml.models SET status = 'successful', num_features = $2::integer, metrics = $3::jsonb, "
        "hyperparams = $4::jsonb, backend_pid = NULL, updated_at = clock_timestamp() "
        "WHERE id = $1::bigint", model_id, num_features, json_safe(metrics), json_safe(hyperparams or {}))


async def fail_model(ex: Executor, model_id: int, error: str) -> None:
    """Mark a model failed, keeping the reason in its metrics (a successful model stays so)."""
    await ex.execute(
        "UPDATE pgml.models SET status = 'failed', backend_pid = NULL, updated_at = clock_timestamp(), "
        "metrics = coalesce(metrics, '{}'::jsonb) || jsonb_build_object('error', $2::text) "
        "WHERE id = $1::bigint AND status <> 'successful'", model_id, error)


async def fail_orphaned_models(ex: Executor) -> int:
    """Fail `in_progress` models whose training backend is gone (its server crashed); returns how many.

    Trainings still running on another replica keep their live backend and are left alone.
    """
    tag = await ex.execute(
        "UPDATE pgml.models SET status = 'failed', backend_pid = NULL, updated_at = clock_timestamp(), "
        "metrics = coalesce(metrics, '{}'::jsonb) || '{\"error\": \"orphaned: the training server stopped\"}' "
        "WHERE status = 'in_progress' AND (backend_pid IS NULL OR backend_pid NOT IN "
        "(SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL))")
    return _count(tag)


async def fail_stale_models(ex: Executor, older_than_seconds: float) -> int:
    """Fail models `in_progress` for longer than `older_than_seconds`; returns how many."""
    tag = await ex.execute(
        "UPDATE pgml.models SET status = 'failed', backend_pid = NULL, updated_at = clock_timestamp(), "
        "metrics = coalesce(metrics, '{}'::jsonb) || '{\"error\": \"stale: training did not finish\"}' "
        "WHERE status = 'in_progress' "
        "AND updated_at < clock_timestamp() - make_interval(secs => $1::float8)", older_than_seconds)
    return _count(tag)


async def model_artifact(ex: Executor, model_id: int) -> bytes | None:
    """The model's artifact, parts joined in order; None when it has none."""
    rows = await ex.fetch("SELECT data FROM pgml.files WHERE model_id = $1::bigint AND path = $2::text "
                          "ORDER BY part", model_id, ARTIFACT_PATH)
    return b"".join(bytes(r[0]) for r in rows) if rows else None


_INFO_FIELDS = ("id", "project_id", "project_name", "task", "snapshot_id", "num_features", "algorithm",
                "runtime", "hyperparams", "status", "metrics", "search", "search_params", "search_args",
                "created_at", "updated_at")


async def model_info(ex: Executor, model_id: int) -> dict[str, Any] | None:
    """The model row with its project's name and task, as a dict; None for an unknown id."""
    row = await ex.fetchrow(
        "SELECT m.id, m.project_id, p.name, p.task, m.snapshot_id, m.num_features, m.algorithm, m.runtime, "
        "m.hyperparams, m.status, m.metrics, m.search, m.search_params, m.search_args, m.created_at, "
        "m.updated_at FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
        "WHERE m.id = $1::bigint", model_id)
    return None if row is None else dict(zip(_INFO_FIELDS, row))


async def get_or_create_hmac_key(ex: Executor) -> bytes:
    """The artifact signing key kept in the upstream; the first server to ask creates it."""
    await ex.execute("INSERT INTO pgml.settings (key, value) VALUES ($1::text, $2::text) "
                     "ON CONFLICT (key) DO NOTHING", HMAC_SETTING, secrets.token_hex(32))
    value = await ex.fetchval("SELECT value FROM pgml.settings WHERE key = $1::text", HMAC_SETTING)
    return bytes.fromhex(value)


def json_safe(value: Any) -> Any:
    """jsonb has no NaN or infinity: those become null (a metric that could not be computed)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):         # numpy scalars and arrays
        return json_safe(value.tolist())
    return value


def _count(tag: str) -> int:
    return int(tag.rsplit(" ", 1)[-1]) if tag and tag[-1].isdigit() else 0
