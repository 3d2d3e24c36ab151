"""pgml.train, train_joint, snapshot and deploy: the registry side of the SQL API.

Everything here runs on the client's own upstream session (ctx.executor), so the client's role
decides what it may read and write; only the model fitting itself leaves it, for a worker process.
"""
from __future__ import annotations

import asyncio
import logging

import numpy as np

from protocol import sqlstate, types
from protocol.errors import PgError

from ..db import registry
from ..db.names import quote_ident
from ..ml import artifacts
from ..ml.training import TrainingError
from ..ml.training.algorithms import DEFAULT_ALGORITHMS, TASKS, UNSUPERVISED, make_estimator
from ..ml.training.copy_binary import copy_binary_matrix, parse_copy_binary
from ..ml.training.metrics import key_metric
from ..ml.training.worker import TrainingJob, train_in_subprocess
from .base import ANY, Param, register

log = logging.getLogger("pgml_server.train")

TEXT, BOOL, JSONB, REAL = types.TEXT, types.BOOL, types.JSONB, types.FLOAT4
TEXT_ARRAY = types.ARRAY_OF[types.TEXT]
STRATEGIES = ("best_score", "most_recent", "rollback")
_NUMERIC_TYPES = {types.BOOL, types.INT2, types.INT4, types.INT8, types.FLOAT4, types.FLOAT8, types.NUMERIC}

_TRAIN_PARAMS = [
    Param("project_name", TEXT),
    Param("task", TEXT, None),
    Param("relation_name", TEXT, None),
    Param("y_column_name", TEXT, None),
    Param("algorithm", TEXT, None),          # None: the task's default (linear, kmeans, pca)
    Param("hyperparams", JSONB, {}),
    Param("search", TEXT, None),
    Param("search_params", JSONB, {}),
    Param("search_args", JSONB, {}),
    Param("test_size", REAL, 0.25),
    Param("test_sampling", TEXT, "random"),
    Param("runtime", TEXT, "python"),
    Param("automatic_deploy", BOOL, True),
    Param("materialize_snapshot", BOOL, False),
    Param("preprocess", JSONB, {}),
]
_TRAIN_COLUMNS = [("project", TEXT), ("task", TEXT), ("algorithm", TEXT), ("deployed", BOOL)]


@register("train", _TRAIN_PARAMS, _TRAIN_COLUMNS, description="train a model on a table or view")
async def train(ctx, **args):
    return await _train(ctx, args, joint=False)


_JOINT_PARAMS = [p if p.name != "y_column_name" else Param("y_column_name", TEXT_ARRAY, None) for p in _TRAIN_PARAMS]


@register("train_joint", _JOINT_PARAMS, _TRAIN_COLUMNS, description="train one model for several targets")
async def train_joint(ctx, **args):
    return await _train(ctx, args, joint=True)


async def _train(ctx, args: dict, *, joint: bool):
    # Checked when the statement runs (not when it is queued), so BEGIN earlier in a pipeline counts.
    if ctx.transaction_block():
        raise PgError(sqlstate.ACTIVE_SQL_TRANSACTION,
                      f"pgml.{'train_joint' if joint else 'train'} cannot run inside a transaction block",
                      hint="Run it on its own, outside BEGIN … COMMIT, as VACUUM is run.")
    task = _task(args["task"])
    if args["runtime"] not in (None, "python"):
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, f"unknown runtime {args['runtime']!r}",
                      hint="pgml-server trains with the python runtime.")
    return await _run_training(ctx, args, task, joint)


def _task(task: str | None) -> str | None:
    if task is None:
        return None
    task = task.lower()
    if task not in TASKS:
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, f"unknown task {task!r}",
                      hint="The task is one of " + ", ".join(TASKS) + ".")
    return task


async def _run_training(ctx, args: dict, task: str | None, joint: bool):
    ex = ctx.executor
    name = args["project_name"]
    project = await registry.get_project(ex, name)
    if project is None and task is None:
        raise PgError(sqlstate.UNDEFINED_OBJECT, f'project "{name}" does not exist',
                      hint="The first pgml.train of a project names its task, relation and label column.")
    task = task or project.task
    if args["algorithm"] is None:
        args["algorithm"] = DEFAULT_ALGORITHMS[task]
    _validate(args, task)
    if project is None:
        project = await registry.get_or_create_project(ex, name, task)
    elif project.task != task:
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE,
                      f'project "{name}" is a {project.task} project, not {task}')
    snapshot = await _snapshot_for(ex, project, args, joint)
    features, labels = await _columns(ex, snapshot)
    unsupervised = task in UNSUPERVISED     # a label column, if named, is left out and not used
    X, y, classes, names = await _load(ex, snapshot, features, [] if unsupervised else labels, task)
    if unsupervised and labels:
        ctx.notice(f"pgml.train: {task} does not use a label: column {', '.join(l[0] for l in labels)} is left out")
    ctx.notice(f"pgml.train: {X.shape[0]} rows × {X.shape[1]} features from snapshot {snapshot.id}")
    model_id = await registry.create_model(ex, project.id, snapshot.id, args["algorithm"], args["hyperparams"],
                                           args["search"], args["search_params"], args["search_args"])
    job = TrainingJob(task=task, algorithm=args["algorithm"], hyperparams=args["hyperparams"] or {},
                      X=X, y=y, test_size=args["test_size"], test_sampling=args["test_sampling"],
                      search=args["search"], search_params=args["search_params"] or {},
                      search_args=args["search_args"] or {})
    try:
        result = await train_in_subprocess(job, ctx.notice)
    except BaseException as exc:
        await _mark_failed(ctx, model_id, exc)
        if isinstance(exc, TrainingError):
            raise _pg(exc) from None
        raise
    metrics = dict(result.metrics)
    if classes is not None:
        metrics["classes"] = classes
    metrics["feature_names"] = names        # ml/explain.py feature_sources
    artifact = artifacts.sign(ctx.models.key, result.estimator_bytes)
    await registry.finish_model(ex, model_id, num_features=X.shape[1], metrics=metrics,
                                hyperparams=result.hyperparams, artifact=artifact)
    deployed = False
    if args["automatic_deploy"] and await registry.should_auto_deploy(ex, project.id, model_id, key_metric(task)):
        await registry.deploy_model_id(ex, model_id, strategy="new_score")
        _forget_deployed(ctx, name)
        deployed = True
    score = metrics.get(key_metric(task))
    ctx.notice(f"pgml.train: model {model_id} ({args['algorithm']}) {key_metric(task)}="
               f"{score if score is None else round(score, 6)}{', deployed' if deployed else ''}")
    return (name, task, args["algorithm"], deployed)


def _validate(args: dict, task: str) -> None:
    """Reject a bad algorithm or hyperparameter before any registry row is written."""
    try:
        make_estimator(args["algorithm"], task, args["hyperparams"] or {})
    except TrainingError as exc:
        raise _pg(exc) from None
    if args["search"] is not None and task in UNSUPERVISED:
        raise PgError(sqlstate.FEATURE_NOT_SUPPORTED, f"hyperparameter search is not supported for {task}",
                      hint="Train one model per setting; the key metric ranks them for pgml.deploy.")
    if args["search"] not in (None, "grid", "random"):
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, f"unknown search {args['search']!r}",
                      hint="search is 'grid' or 'random'.")
    if args["test_sampling"] not in ("random", "last", "stratified"):
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, f"unknown test_sampling {args['test_sampling']!r}",
                      hint="test_sampling is 'random', 'last' or 'stratified'.")
    size = args["test_size"]
    if size is None or not (0 < size < 1 or (size >= 1 and float(size).is_integer())):
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, f"test_size must be a fraction in (0, 1) or a row count, "
                      f"got {size}")


def _pg(exc: TrainingError) -> PgError:
    return PgError(exc.sqlstate, exc.message, detail=exc.detail, hint=exc.hint)


async def _mark_failed(ctx, model_id: int, exc: BaseException) -> None:
    """A failed, cancelled or abandoned training leaves its model row 'failed', never 'in_progress'."""
    reason = "canceled" if isinstance(exc, asyncio.CancelledError) else str(exc) or type(exc).__name__
    try:
        await asyncio.shield(ctx.models.run(registry.fail_model, model_id, reason))
    except Exception as err:  # the upstream may be gone too; start-up repairs orphans
        log.warning("could not mark model %d failed: %s", model_id, err)


async def _snapshot_for(ex, project, args: dict, joint: bool):
    relation = args["relation_name"]
    if relation is None:
        snapshot = await registry.last_snapshot(ex, project.id)
        if snapshot is None:
            raise PgError(sqlstate.UNDEFINED_OBJECT, f'project "{project.name}" has no snapshot yet',
                          hint="Name the relation and the label column the first time.")
        return snapshot
    y = args["y_column_name"]
    if y is None and project.task in UNSUPERVISED:
        return await registry.create_snapshot(ex, relation, [], args["test_size"], args["test_sampling"],
                                              materialized=True)
    if y is None:
        raise PgError(sqlstate.NULL_VALUE_NOT_ALLOWED,
                      f"y_column_name is required with relation_name for {project.task}",
                      hint="Only clustering and decomposition train without a label column.")
    ys = list(y) if joint else [y]
    return await registry.create_snapshot(ex, relation, ys, args["test_size"], args["test_sampling"],
                                          materialized=True)


async def _columns(ex, snapshot) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    columns = await registry.snapshot_columns(ex, snapshot.id)
    names = {c[0] for c in columns}
    for y in snapshot.y_column_name:
        if y not in names:
            raise PgError(sqlstate.UNDEFINED_COLUMN, f'column "{y}" does not exist in {snapshot.relation_name}',
                          hint="Available columns: " + ", ".join(c[0] for c in columns))
    labels = [(c[0], c[1]) for y in snapshot.y_column_name for c in columns if c[0] == y]
    features = [(c[0], c[1]) for c in columns if c[0] not in snapshot.y_column_name]
    if not features:
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, "the relation has no feature columns besides the label")
    return features, labels


async def _load(ex, snapshot, features, labels, task):
    """Snapshot rows → (X, y, classes, feature names) by binary COPY; arrays (of any dimension) are
    flattened into their elements, named col[1], col[2], …; no labels (unsupervised): y is (n, 0)."""
    table = f"pgml.snapshot_{int(snapshot.id)}"
    exprs, oids, names, laterals = [], [], [], []
    for name, oid in features:
        if oid in types.ELEMENT_OF and types.ELEMENT_OF[oid] in _NUMERIC_TYPES:
            col = quote_ident(name)
            width = await ex.fetchval(f"SELECT max(cardinality({col})) FROM {table}")
            # Flattened once per row in a LATERAL, so indexing it width times costs no re-evaluation.
            flat = f"_flat{len(laterals)}"
            laterals.append(f"LATERAL (SELECT ARRAY(SELECT {_as_float8('u', types.ELEMENT_OF[oid])} "
                            f"FROM unnest(s.{col}) u) AS v) {flat}")
            for i in range(1, int(width or 0) + 1):
                exprs.append(f"{flat}.v[{i}]")
                oids.append(types.FLOAT8)
                names.append(f"{name}[{i}]")
        elif oid in _NUMERIC_TYPES:
            exprs.append(_as_float8(f"s.{quote_ident(name)}", oid))
            oids.append(types.FLOAT8)
            names.append(name)
        else:
            raise PgError(sqlstate.DATATYPE_MISMATCH, f'feature column "{name}" is not numeric',
                          hint="Features must be numbers, booleans or arrays of them; cast or encode text first.")
    text_label = bool(labels) and labels[0][1] not in _NUMERIC_TYPES
    for name, oid in labels:
        exprs.append(f"s.{quote_ident(name)}::text" if text_label else _as_float8(f"s.{quote_ident(name)}", oid))
        oids.append(types.TEXT if text_label else types.FLOAT8)
        names.append(name)
    query = f"SELECT {', '.join(exprs)} FROM {table} s" + "".join(f", {l}" for l in laterals)
    data = await ex.copy_out(query, "binary")
    n_features = len(exprs) - len(labels)
    if not text_label and n_features:
        # Every column is float8 here: one matrix straight from the COPY stream, no per-column arrays.
        try:
            matrix = copy_binary_matrix(data, oids, names)
        except TrainingError as exc:
            raise _pg(exc) from None
        X = matrix[:, :n_features]
        y = matrix[:, n_features] if len(labels) == 1 else matrix[:, n_features:]
        if X.shape[0] == 0:
            raise PgError(sqlstate.INVALID_PARAMETER_VALUE, f"{snapshot.relation_name} has no rows to train on")
        return X, y, None, names[:n_features]
    try:
        cols = parse_copy_binary(data, oids, names)
    except TrainingError as exc:
        raise _pg(exc) from None
    X = np.column_stack([np.asarray(cols[n], dtype=np.float64) for n in names[:n_features]]) \
        if n_features else np.empty((0, 0))
    classes = None
    if text_label:
        if task != "classification":
            raise PgError(sqlstate.DATATYPE_MISMATCH, f'label column "{labels[0][0]}" is text',
                          hint="Regression needs a numeric label.")
        classes, y = np.unique(np.asarray(cols[labels[0][0]]), return_inverse=True)
        classes = [str(c) for c in classes]
        y = y.astype(np.float64)
    elif len(labels) == 1:
        y = np.asarray(cols[labels[0][0]], dtype=np.float64)
    else:
        y = np.column_stack([np.asarray(cols[l[0]], dtype=np.float64) for l in labels])
    if X.shape[0] == 0:
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, f"{snapshot.relation_name} has no rows to train on")
    return X, y, classes, names[:n_features]


def _as_float8(expr: str, oid: int) -> str:
    # PostgreSQL has no bool → float8 cast, only bool → int4.
    return f"{expr}::int4::float8" if oid == types.BOOL else f"{expr}::float8"


# ---------------------------------------------------------------- snapshot and deploy

@register("snapshot", [Param("relation_name", TEXT), Param("y_column_name", TEXT_ARRAY),
                       Param("test_size", REAL, 0.25), Param("test_sampling", TEXT, "random"),
                       Param("materialized", BOOL, True)],
          [("relation", TEXT), ("y_column_name", TEXT_ARRAY)], description="snapshot a relation for training")
async def snapshot(ctx, relation_name, y_column_name, test_size, test_sampling, materialized):
    snap = await registry.create_snapshot(ctx.executor, relation_name, list(y_column_name), test_size,
                                          test_sampling, materialized=True)
    return (relation_name, list(y_column_name))


@register("deploy", [Param("project_name", ANY), Param("strategy", TEXT, "best_score"),
                     Param("algorithm", TEXT, None)],
          [("project", TEXT), ("strategy", TEXT), ("algorithm", TEXT)], description="deploy a model")
async def deploy(ctx, project_name, strategy, algorithm):
    if isinstance(project_name, int) or (isinstance(project_name, str) and project_name.isdigit()):
        return await _deploy_id(ctx, int(project_name))
    if strategy == "best_fit":      # the name in PostgresML's first README
        strategy = "best_score"
    if strategy not in STRATEGIES:
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, f"unknown deploy strategy {strategy!r}",
                      hint="The strategy is one of " + ", ".join(STRATEGIES) + ".")
    return await _deploy(ctx, project_name, strategy, algorithm)


async def _deploy(ctx, project_name: str, strategy: str, algorithm: str | None):
    ex = ctx.executor
    if await registry.get_project(ex, project_name) is None:
        raise PgError(sqlstate.UNDEFINED_OBJECT, f'project "{project_name}" does not exist')
    model_id = await registry.deploy(ex, project_name, strategy, algorithm)
    if model_id is None:
        raise PgError(sqlstate.UNDEFINED_OBJECT,
                      f'no model of project "{project_name}" qualifies for strategy {strategy}'
                      + (f" with algorithm {algorithm}" if algorithm else ""),
                      hint="Only successfully trained models can be deployed; rollback needs an earlier deployment.")
    _forget_deployed(ctx, project_name)
    info = await registry.model_info(ex, model_id)
    return (project_name, strategy, info["algorithm"])


async def _deploy_id(ctx, model_id: int):
    ex = ctx.executor
    info = await registry.model_info(ex, model_id)
    if info is None or info.get("status") != "successful":
        raise PgError(sqlstate.UNDEFINED_OBJECT, f"model {model_id} does not exist or did not train successfully")
    await registry.deploy_model_id(ex, model_id, strategy="specific")
    _forget_deployed(ctx, info["project_name"])
    return (info["project_name"], "specific", info["algorithm"])


def _forget_deployed(ctx, project_name: str) -> None:
    """This server's cache drops the project's deployed model at once. Every server (this one too)
    also gets the NOTIFY, but it arrives on another connection a moment later, and the client that
    deployed may predict before that (found by tests/test_cache.py: a stale first prediction).
    If the deploy is not committed yet, a prediction meanwhile reloads the old model and the
    NOTIFY at commit drops it again."""
    ctx.models.cache.invalidate_project(project_name)
