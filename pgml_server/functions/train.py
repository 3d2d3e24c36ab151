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
from ..ml.model import ModelBundle, categorical_vocabularies
from ..ml.preprocessing import CATEGORICAL, Labels, column_kind, decode_copy, infer_task, parse_preprocess
from ..ml.preprocessing.sql import RELATION_COLUMNS_SQL, kinds_from_rows, select_canonical, wire_types
from ..ml.training import TrainingError
from ..ml.training.algorithms import DEFAULT_ALGORITHMS, TASKS, UNSUPERVISED, make_estimator
from ..ml.training.metrics import key_metric
from ..ml.training.worker import TrainingJob, train_in_subprocess
from .base import ANY, REQUIRED, Param, register

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
    await _short_form(ctx.executor, args)
    task = _task(args["task"])
    if args["runtime"] not in (None, "python"):
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, f"unknown runtime {args['runtime']!r}",
                      hint="pgml-server trains with the python runtime.")
    return await _run_training(ctx, args, task, joint)


async def _short_form(ex, args: dict) -> None:
    """PRODUCT.md's pgml.train('my_data', 'total_purchases'): the relation as project name and a
    label column in the task's place. Taken so only when the second argument is no task name,
    nothing else names the relation or the label, and it is a column of that relation."""
    task = args["task"]
    if (task is None or task.lower() in TASKS or args["relation_name"] is not None
            or args["y_column_name"] is not None):
        return
    if await ex.fetchval("SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1::text) "
                         "AND attname = $2::text AND attnum > 0 AND NOT attisdropped)", args["project_name"], task):
        args["relation_name"], args["y_column_name"], args["task"] = args["project_name"], task, None


def _task(task: str | None) -> str | None:
    if task is None:
        return None
    task = task.lower()
    if task not in TASKS:
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, f"unknown task {task!r}",
                      hint="The task is one of " + ", ".join(TASKS) + ".")
    return task


async def _run_training(ctx, args: dict, task: str | None, joint: bool, report: dict | None = None):
    ex = ctx.executor
    name = args["project_name"]
    project = await registry.get_project(ex, name)
    if project is None and task is None and args["relation_name"] is None:
        raise PgError(sqlstate.UNDEFINED_OBJECT, f'project "{name}" does not exist',
                      hint="The first pgml.train of a project names its relation and label column "
                           "(and its task, or the label column's type decides it).")
    if project is not None and task is None:
        task = project.task
    if task is not None:
        _settle(args, task)
    if args["relation_name"] is not None:
        # Column types, the preprocess spec and impute: error are checked on the relation itself,
        # before the snapshot: a refused training writes nothing to the registry.
        await _check_relation(ex, args, joint, task)
    snapshot = await _snapshot_for(ex, project, name, task, args, joint)
    data = await _load(ex, snapshot, args)
    if task is None:
        task = _inferred_task(data)
        ctx.notice(f'pgml.train: task {task} inferred from the label column "{data.labels[0].name}"')
        _settle(args, task)
    if project is None:
        project = await registry.get_or_create_project(ex, name, task)
    elif project.task != task:
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE,
                      f'project "{name}" is a {project.task} project, not {task}')
    unsupervised = task in UNSUPERVISED     # a label column, if named, is left out and not used
    if unsupervised:
        y, labels = np.zeros(len(next(iter(data.columns.values())))), None
        if data.labels:
            ctx.notice(f"pgml.train: {task} does not use a label: column "
                       f"{', '.join(k.name for k in data.labels)} is left out")
    else:
        y, labels = _labels(data, task)
    ctx.notice(f"pgml.train: {len(y)} rows × {len(data.kinds)} columns from snapshot {snapshot.id}")
    model_id = await registry.create_model(ex, project.id, snapshot.id, args["algorithm"], args["hyperparams"],
                                           args["search"], args["search_params"], args["search_args"])
    if report is not None:
        report["model_id"] = model_id
    job = TrainingJob(task=task, algorithm=args["algorithm"], hyperparams=args["hyperparams"] or {},
                      X=None, y=y, test_size=args["test_size"], test_sampling=args["test_sampling"],
                      search=args["search"], search_params=args["search_params"] or {},
                      search_args=args["search_args"] or {}, columns=data.columns, kinds=data.kinds,
                      preprocess=data.spec)
    try:
        result = await train_in_subprocess(job, ctx.notice)
        pre = result.preprocessor
        hashes = await _category_hashes(ex, pre)
    except BaseException as exc:
        await _mark_failed(ctx, model_id, exc)
        if isinstance(exc, TrainingError):
            raise _pg(exc) from None
        raise
    metrics = dict(result.metrics)
    if labels is not None:
        metrics["classes"] = labels.classes
    # What pgml.explain and pgml.feature_importance speak of: the relation's columns (ml/explain.py).
    metrics["feature_names"] = pre.feature_names()
    metrics["feature_sources"] = pre.feature_sources()
    bundle = ModelBundle(result.estimator_bytes, pre, labels, hashes)
    artifact = artifacts.sign(ctx.models.key, bundle.dumps())
    await registry.record_snapshot_analysis(ex, snapshot.id, pre.postgresml_columns(), pre.analysis())
    await registry.finish_model(ex, model_id, num_features=pre.num_features, metrics=metrics,
                                hyperparams=result.hyperparams, artifact=artifact)
    ctx.notice("pgml.train: preprocessing " + _describe_preprocessing(pre))
    await _save_bins(ctx, model_id, _feature_names(pre), result)
    deployed = False
    if args["automatic_deploy"] and await registry.should_auto_deploy(ex, project.id, model_id, key_metric(task)):
        await registry.deploy_model_id(ex, model_id, strategy="new_score")
        _forget_deployed(ctx, name)
        deployed = True
    score = metrics.get(key_metric(task))
    ctx.notice(f"pgml.train: model {model_id} ({args['algorithm']}) {key_metric(task)}="
               f"{score if score is None else round(score, 6)}{', deployed' if deployed else ''}")
    return (name, task, args["algorithm"], deployed)


def _settle(args: dict, task: str) -> None:
    """The task is known: the algorithm defaults to the task's own (linear, kmeans, pca), then
    everything is checked before any registry row is written."""
    if args["algorithm"] is None:
        args["algorithm"] = DEFAULT_ALGORITHMS[task]
    _validate(args, task)


def _feature_names(pre) -> list[str]:
    try:
        return list(pre.feature_names())
    except Exception:  # noqa: BLE001 - names are for display only
        return []


async def _save_bins(ctx, model_id: int, names: list[str], result) -> None:
    """The drift reference of the new model (ml/bins.py), written on the server's connection before
    any deploy, so every replica that loads the model monitors it; best effort."""
    bins = getattr(result, "feature_bins", None)
    if not bins:
        return
    width = len(bins["edges"])
    if len(names) != width:
        names = [f"feature_{i}" for i in range(width)]
    try:
        await ctx.models.run(registry.save_model_bins, model_id, names, bins["edges"], bins["counts"],
                             bins["rows"])
    except Exception as err:
        log.warning("could not store the reference bins of model %d: %s", model_id, err)


class _Caller:
    """What the training code path needs of its caller, for callers without a client session."""
    __slots__ = ("executor", "notice", "models")

    def __init__(self, executor, notice, models) -> None:
        self.executor, self.notice, self.models = executor, notice, models


async def train_with(executor, notice, models, args: dict, *, joint: bool = False,
                     report: dict | None = None) -> tuple:
    """pgml.train's code path for a caller without a session (the scheduler): `executor` reads and writes
    with its own role, `notice(text)` gets the progress lines, `models` is the ModelService. `args` are
    pgml.train's arguments (missing ones take their defaults). Returns pgml.train's row; `report`, when
    given, receives "model_id" as soon as the model row exists (also when training then fails).
    Raises PgError as pgml.train does."""
    params = _JOINT_PARAMS if joint else _TRAIN_PARAMS
    full = {p.name: p.default for p in params if p.default is not REQUIRED}
    full.update({k: v for k, v in args.items() if v is not None})
    return await _run_training(_Caller(executor, notice, models), full, _task(full.get("task")), joint, report)


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


async def _snapshot_for(ex, project, name: str, task: str | None, args: dict, joint: bool):
    relation = args["relation_name"]
    if relation is None:
        snapshot = await registry.last_snapshot(ex, project.id)
        if snapshot is None:
            raise PgError(sqlstate.UNDEFINED_OBJECT, f'project "{name}" has no snapshot yet',
                          hint="Name the relation and the label column the first time.")
        return snapshot
    y = args["y_column_name"]
    if y is None and task in UNSUPERVISED:
        return await registry.create_snapshot(ex, relation, [], args["test_size"], args["test_sampling"],
                                              materialized=True)
    if y is None:
        raise PgError(sqlstate.NULL_VALUE_NOT_ALLOWED,
                      f"y_column_name is required with relation_name for {task or 'a supervised task'}",
                      hint="Only clustering and decomposition train without a label column.")
    ys = list(y) if joint else [y]
    return await registry.create_snapshot(ex, relation, ys, args["test_size"], args["test_sampling"],
                                          materialized=True)


class RelationData:
    """A snapshot's rows as the preprocessing reads them: feature kinds and decoded columns, the
    label columns' kinds and values, and the validated preprocess spec."""

    def __init__(self, kinds, columns, labels, label_values, spec, relation: str) -> None:
        self.kinds, self.columns, self.spec, self.relation = kinds, columns, spec, relation
        self.labels, self.label_values = labels, label_values


async def _kinds(ex, relation: str, label_names: list[str]):
    """Feature and label column kinds of `relation` (domains resolved, enums flagged); a column
    of a type the preprocessing cannot use is an error naming it (0A000/42804)."""
    rows = await ex.fetch(RELATION_COLUMNS_SQL, relation)
    names = [r[0] for r in rows]
    for y in label_names:
        if y not in names:
            raise PgError(sqlstate.UNDEFINED_COLUMN, f'column "{y}" does not exist in {relation}',
                          hint="Available columns: " + ", ".join(names))
    by_name = {r[0]: r for r in rows}
    labels = [column_kind(y, int(by_name[y][1]), by_name[y][2], enum=bool(by_name[y][3])) for y in label_names]
    kinds = kinds_from_rows(rows, exclude=label_names)
    if not kinds:
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, "the relation has no feature columns besides the label")
    return kinds, labels


async def _check_relation(ex, args: dict, joint: bool, task: str | None) -> None:
    """Refuse a bad training before anything is written: unusable column types, a preprocess spec
    that names no column or an unknown option, impute: error on a column that has NULLs."""
    relation = args["relation_name"]
    ys = list(args["y_column_name"] or []) if joint else [args["y_column_name"]]
    if ys == [None] and task in UNSUPERVISED:
        ys = []                                 # clustering and decomposition need no label
    elif ys == [None]:
        raise PgError(sqlstate.NULL_VALUE_NOT_ALLOWED, "y_column_name is required with relation_name",
                      hint="Name the label column; only clustering and decomposition train without one.")
    kinds, _ = await _kinds(ex, relation, ys)
    spec = parse_preprocess(args["preprocess"], kinds)
    strict = [name for name, s in spec.items() if s.impute == "error"]
    if strict:
        counts = await ex.fetchrow("SELECT " + ", ".join(f"count(*) FILTER (WHERE {quote_ident(c)} IS NULL)"
                                                           for c in strict)
                                   + f" FROM {await _quoted(ex, relation)}")
        for name, count in zip(strict, counts):
            if count:
                raise PgError(sqlstate.NULL_VALUE_NOT_ALLOWED,
                              f'column "{name}" has {count} NULL values and its preprocess says impute: error',
                              hint=f'Choose another impute for "{name}" (mean, median, mode, min, max, zero), '
                                   "or filter the NULL rows out in the relation.")


async def _quoted(ex, relation: str) -> str:
    return await ex.fetchval("SELECT $1::text::regclass::text", relation)


async def _load(ex, snapshot, args: dict) -> RelationData:
    """The snapshot's rows by binary COPY of canonical expressions (PostgreSQL casts and takes
    epochs, so only float8, text and float8[] arrive), decoded into numpy columns."""
    table = f"pgml.snapshot_{int(snapshot.id)}"
    kinds, labels = await _kinds(ex, table, list(snapshot.y_column_name))
    spec = parse_preprocess(args["preprocess"], kinds)
    everything = kinds + labels
    data = await ex.copy_out(select_canonical(table, everything), "binary")
    names = [k.name for k in everything]
    decoded = decode_copy(data, wire_types(everything), names)
    columns = dict(zip(names[:len(kinds)], decoded[:len(kinds)]))
    if not decoded or len(decoded[0]) == 0:
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, f"{snapshot.relation_name} has no rows to train on")
    return RelationData(kinds, columns, labels, decoded[len(kinds):], spec, snapshot.relation_name)


def _inferred_task(data: RelationData) -> str:
    label, values = data.labels[0], data.label_values[0]
    distinct = len(np.unique(values[np.isfinite(values)])) if isinstance(values, np.ndarray) else 0
    return infer_task(label, distinct)


def _labels(data: RelationData, task: str):
    """y for the estimator, and the Labels when the classes are text (y is then class indices,
    and pgml.predict returns the index, as PostgresML does; pgml.predict_label the text)."""
    label, values = data.labels[0], data.label_values[0]
    if label.kind == CATEGORICAL:
        if task != "classification":
            raise PgError(sqlstate.DATATYPE_MISMATCH, f'label column "{label.name}" is {label.type_name}',
                          hint="Regression needs a numeric label; classify text labels.")
        labels = Labels.fit(values, label)
        return labels.encode(values), labels
    ys = [np.asarray(v, dtype=np.float64) for v in data.label_values]
    for kind, y in zip(data.labels, ys):
        if y.ndim != 1:
            raise PgError(sqlstate.DATATYPE_MISMATCH, f'label column "{kind.name}" is {kind.type_name}',
                          hint="A label is one number, boolean or text per row.")
        if np.isnan(y).any():
            raise PgError(sqlstate.NULL_VALUE_NOT_ALLOWED,
                          f'label column "{kind.name}" has {int(np.isnan(y).sum())} NULL values',
                          hint="Filter them out in the relation: a model cannot learn from a missing label.")
    return (ys[0] if len(ys) == 1 else np.column_stack(ys)), None


async def _category_hashes(ex, pre) -> dict[str, list[float]]:
    """pgml.feature() of every category the preprocessor knows, computed by the upstream itself,
    so predictions whose rows arrive as pgml.feature values (the SQL rewrites) find them."""
    hashes = {}
    for name, values in categorical_vocabularies(pre).items():
        rows = await ex.fetch("SELECT pgml.feature(v) FROM jsonb_array_elements_text($1::jsonb) "
                              "WITH ORDINALITY AS j(v, o) ORDER BY o", values)
        hashes[name] = [r[0] for r in rows]
    return hashes


def _describe_preprocessing(pre) -> str:
    """One line per choice, e.g. 'impute mean, scale standard: age, bmi (+8 more); one_hot: city'."""
    groups: dict[str, list[str]] = {}
    for column in pre.analysis().get("columns", []):
        chosen = column.get("preprocess") or {}
        what = ", ".join(f"{k} {v}" for k, v in chosen.items() if v not in (None, "preserve", "native", "category"))
        kind = column.get("subkind") or column.get("kind")
        groups.setdefault(f"{kind} {what or 'as is'}", []).append(column.get("name"))
    parts = [f"{what}: {', '.join(names[:4])}" + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")
             for what, names in groups.items()]
    return "; ".join(parts) + f" → {pre.num_features} features"


# ---------------------------------------------------------------- snapshot and deploy

@register("snapshot", [Param("relation_name", TEXT), Param("y_column_name", TEXT_ARRAY),
                       Param("test_size", REAL, 0.25), Param("test_sampling", TEXT, "random"),
                       Param("materialized", BOOL, True)],
          [("relation", TEXT), ("y_column_name", TEXT_ARRAY)], description="snapshot a relation for training")
async def snapshot(ctx, relation_name, y_column_name, test_size, test_sampling, materialized):
    await registry.create_snapshot(ctx.executor, relation_name, list(y_column_name), test_size,
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
