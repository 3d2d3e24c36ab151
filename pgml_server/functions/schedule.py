"""pgml.schedule, pgml.unschedule and pgml.drift: the SQL side of scheduled retraining and drift.

Schedules are rows in `pgml.schedules`, written on the client's own session (its role must be
allowed to write them, and that role — `current_user` — is the one the runs train as). The runs
themselves belong to the scheduler loop of every server (pgml_server/scheduling/), which this
layer does not import. Every check comes before the write: bad input writes nothing.
"""
from __future__ import annotations

from datetime import datetime, timezone

from protocol import sqlstate, types
from protocol.errors import PgError

from ..db import registry
from ..ml.monitor import feature_drift
from .base import Param, register
from .train import _task, _validate

TEXT, BOOL, JSONB, REAL, INT8 = types.TEXT, types.BOOL, types.JSONB, types.FLOAT4, types.INT8
MIN_EVERY_S = 1.0

_EVERY_HINT = "every is an interval of at least 1 second, e.g. '1 hour' or interval '30 minutes'."
_CRON_HINT = ("cron is a 5-field crontab expression in UTC (minute hour day-of-month month day-of-week), "
              "e.g. '0 3 * * *' for 03:00 every day.")

_SCHEDULE_ARGS = ("relation_name", "algorithm", "hyperparams", "preprocess", "search", "search_params",
                  "search_args", "test_size", "test_sampling", "automatic_deploy", "y_column_name")


@register("schedule", [
    Param("project_name", TEXT), Param("every", TEXT, None), Param("cron", TEXT, None),
    Param("relation_name", TEXT, None), Param("algorithm", TEXT, None), Param("hyperparams", JSONB, None),
    Param("preprocess", JSONB, None), Param("search", TEXT, None), Param("search_params", JSONB, None),
    Param("search_args", JSONB, None), Param("test_size", REAL, None), Param("test_sampling", TEXT, None),
    Param("automatic_deploy", BOOL, None), Param("retrain_on_drift", REAL, None),
    Param("y_column_name", TEXT, None),
], [("project", TEXT), ("next_run", types.TIMESTAMPTZ)], description="retrain a project on a fresh snapshot periodically")
async def schedule(ctx, project_name, every, cron, retrain_on_drift, **args):
    ex = ctx.executor
    project = await registry.get_project(ex, project_name) if project_name is not None else None
    if project is None:
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, f'project "{project_name}" does not exist',
                      hint="Schedule a project trained once with pgml.train(...); SELECT name FROM pgml.projects "
                           "lists them.")
    if (every is None) == (cron is None):
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, "pgml.schedule needs exactly one of every and cron",
                      hint=f"{_EVERY_HINT} Or: {_CRON_HINT}")
    first_run = None
    if every is not None:
        every = str(every).strip()
        try:
            seconds = await registry.interval_seconds(ex, every)
        except PgError as exc:
            raise PgError(sqlstate.INVALID_PARAMETER_VALUE, f"invalid every {every!r}: {exc.message}",
                          hint=_EVERY_HINT) from None
        if not seconds >= MIN_EVERY_S:
            raise PgError(sqlstate.INVALID_PARAMETER_VALUE, f"every {every!r} is shorter than 1 second",
                          hint=_EVERY_HINT)
    else:
        first_run = next_cron_time(cron, await registry.now_epoch(ex))
    if retrain_on_drift is not None and not retrain_on_drift > 0:
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, f"retrain_on_drift must be a PSI above 0, got {retrain_on_drift}",
                      hint="0.1 is a moderate shift, 0.25 a large one.")
    given = {k: args[k] for k in _SCHEDULE_ARGS if args.get(k) is not None}
    if given.get("relation_name") is not None and given.get("y_column_name") is None:
        settings = await registry.latest_model_settings(ex, project.id)
        if settings is None or not settings["y_column_name"]:
            raise PgError(sqlstate.INVALID_PARAMETER_VALUE, "relation_name needs y_column_name for this project",
                          hint="Name the label column with y_column_name => '...'.")
    _check_training_args(given, project.task)
    name, next_run = await registry.upsert_schedule(ex, project.id, project.name, every, cron, given,
                                                    retrain_on_drift, first_run)
    ctx.notice(f"pgml.schedule: {name} next runs at {next_run}")
    return (name, next_run)


def next_cron_time(expression: str, now_epoch: float) -> float:
    """The first time after `now_epoch` matching the cron expression (UTC), as epoch seconds; 22023 if invalid."""
    from croniter import croniter
    expression = str(expression).strip()
    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, f"invalid cron expression {expression!r}", hint=_CRON_HINT)
    start = datetime.fromtimestamp(now_epoch, timezone.utc)
    return croniter(expression, start).get_next(datetime).timestamp()


def _check_training_args(given: dict, task: str) -> None:
    """pgml.train's own checks of the given arguments, before anything is written (hyperparameters are
    checked against the given algorithm only: without one, the run uses the latest model's)."""
    if not given.keys() & {"algorithm", "search", "test_sampling", "test_size"}:
        return
    _validate({"algorithm": given.get("algorithm", "linear"),
               "hyperparams": given.get("hyperparams") or {} if "algorithm" in given else {},
               "search": given.get("search"), "test_sampling": given.get("test_sampling", "random"),
               "test_size": given.get("test_size", 0.25)}, _task(task))


@register("unschedule", [Param("project_name", TEXT)], [("unschedule", BOOL)],
          description="stop a project's scheduled retraining")
async def unschedule(ctx, project_name):
    return await registry.delete_schedule(ctx.executor, project_name)


@register("drift", [Param("project_name", TEXT), Param("since", TEXT, "1 day")],
          [("feature", TEXT), ("psi", REAL), ("rows", INT8), ("window_start", types.TIMESTAMPTZ),
           ("window_end", types.TIMESTAMPTZ)],
          returns_set=True, description="population stability index of each feature of the deployed model")
async def drift(ctx, project_name, since):
    ex = ctx.executor
    deployed = await registry.deployed_model(ex, project_name)
    if deployed is None:
        raise PgError(sqlstate.UNDEFINED_OBJECT, f'no deployed model for project "{project_name}"',
                      hint="pgml.drift compares the deployed model's predicted rows with its training split.")
    try:
        seconds = await registry.interval_seconds(ex, str(since))
    except PgError as exc:
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, f"invalid since {since!r}: {exc.message}",
                      hint="since is an interval, e.g. '1 hour'.") from None
    rows = await feature_drift(ex, int(deployed[0]), await registry.now_epoch(ex) - seconds)
    if rows is None:
        raise PgError(sqlstate.OBJECT_NOT_IN_PREREQUISITE_STATE,
                      f"model {deployed[0]} has no reference bins",
                      hint="Models trained before drift monitoring have none; retrain the project.")
    return rows
