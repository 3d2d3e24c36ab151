"""Deployments: which model answers `pgml.predict('project', …)`, and the strategies that choose it.

The deployed model of a project is the model of its latest `pgml.deployments` row. Every deploy
sends `NOTIFY pgml_deploy, '<project>'` (delivered at commit) so each server replica drops or
reloads its cached model.
"""
from __future__ import annotations

from protocol import sqlstate
from protocol.errors import PgError

from ..executor import Executor
from .projects import Project, get_project

DEPLOY_CHANNEL = "pgml_deploy"
# Higher is better for every one (ml/training/metrics.py KEY_METRICS, which db may not import).
KEY_METRICS = {"regression": "r2", "classification": "f1", "clustering": "silhouette",
               "decomposition": "explained_variance_ratio"}
STRATEGIES = ("best_score", "most_recent", "rollback")


async def deployed_model(ex: Executor, project_name: str) -> tuple[int, str, int | None, str] | None:
    """(model_id, task, num_features, algorithm) of the project's deployed model, or None."""
    return await ex.fetchrow(
        "SELECT m.id, p.task, m.num_features, m.algorithm FROM pgml.deployments d "
        "JOIN pgml.projects p ON p.id = d.project_id JOIN pgml.models m ON m.id = d.model_id "
        "WHERE p.name = $1::text ORDER BY d.id DESC LIMIT 1", project_name)


async def deploy(ex: Executor, project_name: str, strategy: str, algorithm: str | None = None) -> int | None:
    """Deploy the project's model chosen by `strategy`; returns its id, None when none qualifies."""
    choose = _CHOOSERS.get(strategy)
    if choose is None:
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, f"unknown deploy strategy {strategy!r}",
                      hint="The strategy is one of " + ", ".join(STRATEGIES) + ".")
    project = await get_project(ex, project_name)
    if project is None:
        return None
    model_id = await choose(ex, project, algorithm)
    if model_id is None:
        return None
    await _record(ex, project.id, project.name, model_id, strategy)
    return model_id


async def deploy_model_id(ex: Executor, model_id: int, strategy: str = "specific") -> int | None:
    """Deploy one successful model by id; None when it does not exist or did not train successfully."""
    row = await ex.fetchrow(
        "SELECT m.project_id, p.name FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
        "WHERE m.id = $1::bigint AND m.status = 'successful'", model_id)
    if row is None:
        return None
    await _record(ex, row[0], row[1], model_id, strategy)
    return model_id


async def should_auto_deploy(ex: Executor, project_id: int, new_model_id: int, key_metric: str) -> bool:
    """Deploy a new model unless the one deployed now scores strictly better on `key_metric`."""
    current = await ex.fetchrow(
        "SELECT (m.metrics ->> $2::text)::float8 FROM pgml.deployments d JOIN pgml.models m ON m.id = d.model_id "
        "WHERE d.project_id = $1::bigint ORDER BY d.id DESC LIMIT 1", project_id, key_metric)
    if current is None or current[0] is None:
        return True
    new = await ex.fetchval("SELECT (metrics ->> $2::text)::float8 FROM pgml.models WHERE id = $1::bigint",
                            new_model_id, key_metric)
    return new is not None and new >= current[0]


async def _record(ex: Executor, project_id: int, project_name: str, model_id: int, strategy: str) -> None:
    await ex.execute("INSERT INTO pgml.deployments (project_id, model_id, strategy) "
                     "VALUES ($1::bigint, $2::bigint, $3::text)", project_id, model_id, strategy)
    await ex.execute("SELECT pg_notify($1::text, $2::text)", DEPLOY_CHANNEL, project_name)


# ---------------------------------------------------------------- strategies

_SUCCESSFUL = ("FROM pgml.models WHERE project_id = $1::bigint AND status = 'successful' "
               "AND ($2::text IS NULL OR algorithm = $2::text)")


async def _best_score(ex: Executor, project: Project, algorithm: str | None) -> int | None:
    metric = KEY_METRICS.get(project.task, "score")
    return await ex.fetchval(
        f"SELECT id {_SUCCESSFUL} ORDER BY (metrics ->> $3::text)::float8 DESC NULLS LAST, id DESC LIMIT 1",
        project.id, algorithm, metric)


async def _most_recent(ex: Executor, project: Project, algorithm: str | None) -> int | None:
    return await ex.fetchval(f"SELECT id {_SUCCESSFUL} ORDER BY id DESC LIMIT 1", project.id, algorithm)


async def _rollback(ex: Executor, project: Project, algorithm: str | None) -> int | None:
    """The model deployed before the current one (as PostgresML: repeated rollbacks alternate)."""
    current = await deployed_model(ex, project.name)
    if current is None:
        return None
    return await ex.fetchval(
        "SELECT d.model_id FROM pgml.deployments d JOIN pgml.models m ON m.id = d.model_id "
        "WHERE d.project_id = $1::bigint AND d.model_id <> $3::bigint AND m.status = 'successful' "
        "AND ($2::text IS NULL OR m.algorithm = $2::text) ORDER BY d.id DESC LIMIT 1",
        project.id, algorithm, current[0])


_CHOOSERS = {"best_score": _best_score, "most_recent": _most_recent, "rollback": _rollback}
