"""The registry's SQL for the pages: projects, models, deployments, snapshots.

Every function takes a connection of the logged-in role, so PostgreSQL's privileges decide
what comes back (a role without SELECT on `pgml.models` gets 42501, shown as such). Queries
are shaped for the indexes of migrations 1 and 3: per-project lateral lookups on
`models (project_id, id DESC)` and `deployments (project_id, id)`, never a scan of all models.
"""
from __future__ import annotations

from typing import Any

import asyncpg

KEY_METRICS = {"regression": "r2", "classification": "f1"}
MODELS_SHOWN = 500           # rows of the project page's model table
CHART_MODELS = 2000          # models on the project page's chart (the most recent)


def key_metric(task: str) -> str:
    return KEY_METRICS.get(task, "score")


async def projects(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch("""
        SELECT p.id, p.name, p.task, dm.id AS deployed_id, dm.algorithm AS deployed_algorithm,
               (dm.metrics ->> CASE p.task WHEN 'regression' THEN 'r2' ELSE 'f1' END)::float8 AS key_value,
               mc.n AS models, mc.last_trained
        FROM pgml.projects p
        LEFT JOIN LATERAL (SELECT d.model_id FROM pgml.deployments d WHERE d.project_id = p.id
                           ORDER BY d.id DESC LIMIT 1) d ON true
        LEFT JOIN pgml.models dm ON dm.id = d.model_id
        LEFT JOIN LATERAL (SELECT count(*) AS n, max(m.created_at) AS last_trained
                           FROM pgml.models m WHERE m.project_id = p.id) mc ON true
        ORDER BY p.name""")
    return [dict(r) | {"key_metric": key_metric(r["task"])} for r in rows]


async def project(conn: asyncpg.Connection, project_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow("""
        SELECT p.id, p.name, p.task, p.created_at,
               (SELECT d.model_id FROM pgml.deployments d WHERE d.project_id = p.id ORDER BY d.id DESC LIMIT 1)
                 AS deployed_id,
               (SELECT count(*) FROM pgml.models m WHERE m.project_id = p.id) AS models
        FROM pgml.projects p WHERE p.id = $1""", project_id)
    return None if row is None else dict(row) | {"key_metric": key_metric(row["task"])}


async def project_models(conn: asyncpg.Connection, project_id: int, sort: str | None, descending: bool,
                         limit: int = MODELS_SHOWN) -> list[dict[str, Any]]:
    """Models of a project, sorted by a metric (any key of `metrics`), the id or the algorithm."""
    direction = "DESC" if descending else "ASC"
    if sort in (None, "", "id"):
        order = f"m.id {direction}"
        args: tuple = ()
    elif sort == "algorithm":
        order = f"m.algorithm {direction}, m.id DESC"
        args = ()
    else:
        # jsonb_typeof guards the cast: a non-numeric value sorts as NULL rather than failing
        order = (f"CASE WHEN jsonb_typeof(m.metrics -> $3::text) = 'number' THEN (m.metrics ->> $3::text)::float8 END "
                 f"{direction} NULLS LAST, m.id DESC")
        args = (sort,)
    rows = await conn.fetch(f"""
        SELECT m.id, m.algorithm, m.status, m.metrics, m.hyperparams, m.search, m.snapshot_id, m.created_at
        FROM pgml.models m WHERE m.project_id = $1 ORDER BY {order} LIMIT $2""", project_id, limit, *args)
    return [dict(r) for r in rows]


async def metric_series(conn: asyncpg.Connection, project_id: int, metric: str) -> list[tuple[int, float | None]]:
    """(model id, metric) of the project's latest CHART_MODELS models, in training order."""
    rows = await conn.fetch("""
        SELECT id, CASE WHEN jsonb_typeof(metrics -> $2::text) = 'number' THEN (metrics ->> $2::text)::float8 END AS v
        FROM (SELECT id, metrics FROM pgml.models WHERE project_id = $1 AND status = 'successful'
              ORDER BY id DESC LIMIT $3) m ORDER BY id""", project_id, metric, CHART_MODELS)
    return [(r["id"], r["v"]) for r in rows]


async def deployments(conn: asyncpg.Connection, project_id: int, limit: int = 50) -> list[dict[str, Any]]:
    rows = await conn.fetch("""
        SELECT d.id, d.model_id, d.strategy, d.created_at, m.algorithm
        FROM pgml.deployments d JOIN pgml.models m ON m.id = d.model_id
        WHERE d.project_id = $1 ORDER BY d.id DESC LIMIT $2""", project_id, limit)
    return [dict(r) for r in rows]


async def model(conn: asyncpg.Connection, model_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow("""
        SELECT m.id, m.project_id, p.name AS project_name, p.task, m.snapshot_id, m.num_features, m.algorithm,
               m.runtime, m.hyperparams, m.status, m.metrics, m.search, m.search_params, m.search_args,
               m.created_at, m.updated_at,
               (SELECT d.model_id FROM pgml.deployments d WHERE d.project_id = m.project_id
                ORDER BY d.id DESC LIMIT 1) = m.id AS deployed
        FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id WHERE m.id = $1""", model_id)
    return None if row is None else dict(row)


async def snapshots(conn: asyncpg.Connection, limit: int = 500) -> list[dict[str, Any]]:
    rows = await conn.fetch("""
        SELECT s.id, s.relation_name, s.y_column_name, s.test_size, s.test_sampling, s.status, s.created_at,
               c.reltuples::bigint AS rows_estimate, (c.oid IS NOT NULL) AS has_table
        FROM pgml.snapshots s
        LEFT JOIN pg_class c ON c.oid = to_regclass('pgml.snapshot_' || s.id)
        ORDER BY s.id DESC LIMIT $1""", limit)
    return [dict(r) for r in rows]


async def snapshot(conn: asyncpg.Connection, snapshot_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow("""
        SELECT s.id, s.relation_name, s.y_column_name, s.test_size, s.test_sampling, s.status, s.columns,
               s.analysis, s.materialized, s.created_at, to_regclass('pgml.snapshot_' || s.id) IS NOT NULL AS has_table
        FROM pgml.snapshots s WHERE s.id = $1""", snapshot_id)
    return None if row is None else dict(row)


async def snapshot_columns(conn: asyncpg.Connection, snapshot_id: int) -> list[tuple[str, int, str]]:
    rows = await conn.fetch("""
        SELECT attname::text, atttypid::int8, format_type(atttypid, atttypmod) FROM pg_attribute
        WHERE attrelid = to_regclass('pgml.snapshot_' || $1::int8) AND attnum > 0 AND NOT attisdropped
        ORDER BY attnum""", snapshot_id)
    return [(r[0], int(r[1]), r[2]) for r in rows]


async def in_progress(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch("""
        SELECT m.id, p.name AS project_name, m.algorithm, m.created_at, m.backend_pid,
               round(extract(epoch FROM clock_timestamp() - m.created_at)::numeric, 1)::float8 AS seconds
        FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id
        WHERE m.status = 'in_progress' ORDER BY m.id""")
    return [dict(r) for r in rows]


async def schedules(conn: asyncpg.Connection) -> tuple[list[str], list[list]] | None:
    """Rows of pgml.schedules (added by another change) when that table exists, else None."""
    if not await conn.fetchval("SELECT to_regclass('pgml.schedules') IS NOT NULL"):
        return None
    stmt = await conn.prepare("SELECT * FROM pgml.schedules LIMIT 100")
    rows = await stmt.fetch()
    return [a.name for a in stmt.get_attributes()], [list(r) for r in rows]


def numeric_metrics(models: list[dict[str, Any]]) -> list[str]:
    """The numeric metric names over these models, key metrics first."""
    names: dict[str, None] = {}
    for m in models:
        for k, v in (m.get("metrics") or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                names.setdefault(k, None)
    first = [k for k in ("r2", "f1", "accuracy", "mean_squared_error") if k in names]
    return first + sorted(k for k in names if k not in first)
