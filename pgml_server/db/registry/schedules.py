"""Schedules (`pgml.schedules`) and their runs (`pgml.schedule_history`, the view `pgml.schedule_runs`).

A due run is claimed in one transaction (`claim_due_run`): the schedule row is locked with
`FOR UPDATE SKIP LOCKED`, so of several servers polling at once exactly one gets it; its
`next_run` moves to the first time after now (a schedule missed while every server was down runs
once, not once per missed period) and a `running` history row records the claiming backend's pid.
A schedule with a run still `running` is not claimed again; a run whose backend is gone (its
server died) is failed by `fail_orphaned_runs`, which any server calls while it polls.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

from ..executor import Executor

SCHEDULE_CHANNEL = "pgml_schedule"     # NOTIFY'd when a schedule is created, replaced or removed


class Claim(NamedTuple):
    run_id: int
    schedule_id: int
    project_id: int
    project_name: str
    arguments: dict
    owner: str
    reason: str            # 'schedule' or 'drift'
    due_at: str
    next_run: str


_SCHEDULE_FIELDS = ("project_name", "every", "cron", "arguments", "retrain_on_drift", "next_run", "last_run",
                    "last_status", "last_model_id", "last_error", "owner")


async def upsert_schedule(ex: Executor, project_id: int, project_name: str, every: str | None, cron: str | None,
                          arguments: dict, retrain_on_drift: float | None,
                          first_run_epoch: float | None) -> tuple[str, str]:
    """Create or replace the project's schedule; the owner is the calling role. Returns (project, next_run).

    `every` runs first one interval from now; a cron schedule at `first_run_epoch` (computed by the caller).
    """
    row = await ex.fetchrow(
        "INSERT INTO pgml.schedules (project_id, project_name, every, cron, arguments, retrain_on_drift, "
        "next_run, owner) VALUES ($1::bigint, $2::text, $3::text::interval, $4::text, $5::jsonb, $6::real, "
        "CASE WHEN $3::text IS NOT NULL THEN now() + $3::text::interval ELSE to_timestamp($7::float8) END, "
        "current_user) "
        "ON CONFLICT (project_id) DO UPDATE SET project_name = excluded.project_name, every = excluded.every, "
        "cron = excluded.cron, arguments = excluded.arguments, retrain_on_drift = excluded.retrain_on_drift, "
        "next_run = excluded.next_run, drift_pending = false, owner = excluded.owner "
        "RETURNING project_name, next_run::text",
        project_id, project_name, every, cron, arguments, retrain_on_drift, first_run_epoch)
    await ex.execute("SELECT pg_notify($1::text, $2::text)", SCHEDULE_CHANNEL, project_name)
    return row[0], row[1]


async def delete_schedule(ex: Executor, project_name: str) -> bool:
    """Remove the project's schedule (its history stays); False when it had none."""
    deleted = await ex.fetchval("WITH d AS (DELETE FROM pgml.schedules WHERE project_name = $1::text RETURNING 1) "
                                "SELECT count(*) > 0 FROM d", project_name)
    if deleted:
        await ex.execute("SELECT pg_notify($1::text, $2::text)", SCHEDULE_CHANNEL, project_name)
    return deleted


async def interval_seconds(ex: Executor, interval: str) -> float:
    """The length of an interval in seconds, parsed by the upstream (its error for bad syntax)."""
    return float(await ex.fetchval("SELECT extract(epoch FROM $1::text::interval)::float8", interval))


async def now_epoch(ex: Executor) -> float:
    return float(await ex.fetchval("SELECT extract(epoch FROM now())::float8"))


class ScheduleState(NamedTuple):
    schedules: int
    next_due: float | None       # epoch seconds of the earliest next_run of a schedule not running now
    running: int                 # runs 'running' on any server
    drift_watched: int           # schedules with retrain_on_drift
    now: float                   # the upstream's clock, epoch seconds


async def schedule_state(ex: Executor) -> ScheduleState:
    """What a scheduler needs to know to stay away from the upstream until something is due."""
    row = await ex.fetchrow(
        "SELECT count(*), extract(epoch FROM min(s.next_run) FILTER (WHERE NOT EXISTS (SELECT 1 FROM "
        "pgml.schedule_history h WHERE h.schedule_id = s.id AND h.status = 'running')))::float8, "
        "(SELECT count(*) FROM pgml.schedule_history WHERE status = 'running'), "
        "count(*) FILTER (WHERE s.retrain_on_drift IS NOT NULL), extract(epoch FROM now())::float8 "
        "FROM pgml.schedules s")
    return ScheduleState(int(row[0]), row[1], int(row[2]), int(row[3]), float(row[4]))


async def claim_due_run(ex: Executor, server: str, next_cron: Callable[[str, float], float]) -> Claim | None:
    """Claim one due run (see the module docstring); None when nothing is due or every due one is taken.

    `ex` must be the connection that will train (its backend pid marks the run as alive).
    `next_cron(expression, now_epoch)` is the next cron time after now, as epoch seconds.
    """
    await ex.execute("BEGIN")
    try:
        claim = await _claim(ex, server, next_cron)
    except BaseException:
        await ex.execute("ROLLBACK")
        raise
    await ex.execute("COMMIT")
    return claim


async def _claim(ex: Executor, server: str, next_cron) -> Claim | None:
    row = await ex.fetchrow(
        "SELECT s.id, s.project_id, s.project_name, s.cron, s.arguments, s.owner::text, s.drift_pending, "
        "s.next_run::text, extract(epoch FROM now())::float8 FROM pgml.schedules s "
        "WHERE s.next_run <= now() AND NOT EXISTS (SELECT 1 FROM pgml.schedule_history h "
        "WHERE h.schedule_id = s.id AND h.status = 'running') "
        "ORDER BY s.next_run FOR UPDATE OF s SKIP LOCKED LIMIT 1")
    if row is None:
        return None
    schedule_id, project_id, project_name, cron, arguments, owner, drift, due_at, now = row
    cron_next = next_cron(cron, now) if cron is not None else None
    next_run = await ex.fetchval(
        "UPDATE pgml.schedules SET next_run = CASE WHEN every IS NOT NULL THEN next_run + every * "
        "(floor(extract(epoch FROM now() - next_run) / greatest(extract(epoch FROM every), 1)) + 1) "
        "ELSE to_timestamp($2::float8) END, drift_pending = false, last_run = now(), last_status = 'running' "
        "WHERE id = $1::bigint RETURNING next_run::text", schedule_id, cron_next)
    reason = "drift" if drift else "schedule"
    run_id = await ex.fetchval(
        "INSERT INTO pgml.schedule_history (schedule_id, project_name, due_at, reason, status, server, "
        "backend_pid) VALUES ($1::bigint, $2::text, $3::timestamptz, $4::text, 'running', $5::text, "
        "pg_backend_pid()) RETURNING id", schedule_id, project_name, due_at, reason, server)
    return Claim(run_id, schedule_id, project_id, project_name, dict(arguments or {}), owner, reason, due_at,
                 next_run)


async def finish_run(ex: Executor, run_id: int, schedule_id: int, status: str, model_id: int | None,
                     deployed: bool | None, error: str | None) -> None:
    """Record a run's outcome on its history row and on its schedule (if it still exists)."""
    await ex.execute(
        "UPDATE pgml.schedule_history SET status = $2::text, finished_at = clock_timestamp(), "
        "model_id = $3::bigint, deployed = $4::boolean, error = $5::text, backend_pid = NULL "
        "WHERE id = $1::bigint", run_id, status, model_id, deployed, error)
    await ex.execute(
        "UPDATE pgml.schedules SET last_status = $2::text, last_model_id = coalesce($3::bigint, last_model_id), "
        "last_error = $4::text WHERE id = $1::bigint", schedule_id, status, model_id, error)


async def set_run_model(ex: Executor, run_id: int, model_id: int) -> None:
    """The model a running run is training (so its row shows it before the run ends)."""
    await ex.execute("UPDATE pgml.schedule_history SET model_id = $2::bigint WHERE id = $1::bigint",
                     run_id, model_id)


async def fail_orphaned_runs(ex: Executor) -> list[tuple[int, str]]:
    """Fail `running` runs whose claiming backend is gone (the server died mid-run); (run id, project)."""
    rows = await ex.fetch(
        "WITH o AS (UPDATE pgml.schedule_history h SET status = 'failed', finished_at = clock_timestamp(), "
        "error = 'orphaned: the server running it stopped', backend_pid = NULL, model_id = coalesce(h.model_id, "
        "(SELECT m.id FROM pgml.models m WHERE m.backend_pid = h.backend_pid AND m.status = 'in_progress' "
        "ORDER BY m.id DESC LIMIT 1)) "
        "WHERE status = 'running' AND (backend_pid IS NULL OR backend_pid NOT IN "
        "(SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL)) RETURNING id, schedule_id, project_name), "
        "s AS (UPDATE pgml.schedules SET last_status = 'failed', "
        "last_error = 'orphaned: the server running it stopped' WHERE id IN (SELECT schedule_id FROM o)) "
        "SELECT id, project_name FROM o")
    return [(int(r[0]), r[1]) for r in rows]


async def drift_watched(ex: Executor) -> list[tuple[int, str, float, str | None]]:
    """Schedules with a retrain_on_drift threshold and no run pending: (id, project, threshold, last_run)."""
    rows = await ex.fetch(
        "SELECT s.id, s.project_name, s.retrain_on_drift, coalesce(s.last_run, s.created_at)::text "
        "FROM pgml.schedules s WHERE s.retrain_on_drift IS NOT NULL AND s.next_run > now() "
        "AND NOT s.drift_pending AND NOT EXISTS (SELECT 1 FROM pgml.schedule_history h "
        "WHERE h.schedule_id = s.id AND h.status = 'running')")
    return [(int(r[0]), r[1], float(r[2]), r[3]) for r in rows]


async def trigger_drift_run(ex: Executor, schedule_id: int) -> bool:
    """Make the schedule due now, for a drift retrain (at most once until that run is claimed)."""
    tag = await ex.execute("UPDATE pgml.schedules SET next_run = now(), drift_pending = true "
                           "WHERE id = $1::bigint AND NOT drift_pending AND next_run > now()", schedule_id)
    return tag.endswith(" 1")


async def latest_model_settings(ex: Executor, project_id: int) -> dict[str, Any] | None:
    """What the project's most recent model was trained with (its snapshot's relation and label)."""
    row = await ex.fetchrow(
        "SELECT s.relation_name, s.y_column_name, s.test_size, s.test_sampling, m.algorithm, m.hyperparams, "
        "m.search, m.search_params, m.search_args FROM pgml.models m "
        "JOIN pgml.snapshots s ON s.id = m.snapshot_id WHERE m.project_id = $1::bigint "
        "ORDER BY m.id DESC LIMIT 1", project_id)
    if row is None:
        return None
    keys = ("relation_name", "y_column_name", "test_size", "test_sampling", "algorithm", "hyperparams",
            "search", "search_params", "search_args")
    return dict(zip(keys, row))
