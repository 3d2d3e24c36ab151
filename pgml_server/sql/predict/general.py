"""The general two-pass strategy for pgml.predict* inside SQL over tables.

Pass one, for each call: `SELECT DISTINCT model::text, features::float8[] FROM <the FROM items
that feed the call> WHERE <the call's predict-free conjuncts>` (a superset of what the statement
needs). The pairs are predicted per model in one batch and copied into the session temp table
`pg_temp.pgml_predictions`. Pass two is the statement with each call replaced by a lookup into
that table, so PostgreSQL keeps its full semantics (filters, sorts, joins, writes).
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import struct

import numpy as np
from pglast import ast, enums

from protocol import messages as m
from protocol import sqlstate, types
from protocol.errors import PgError

from ...functions.predict import batch_features, run_plan
from ...pipeline.consumers import Collector, Relay
from ...pipeline.internal import InternalStatement, run_internal
from ...pipeline.session_executor import SessionExecutor
from ..arrays import float8_arrays
from ..astutil import deparse, has_pgml_call, is_pgml_call, param_count
from ..encoding import with_formats
from .common import as_float8_array, as_text, feature_input, model_node, predict_function, resolve_model

TEMP_TABLE = "pg_temp.pgml_predictions"
# No key while the pairs are copied in: the unique index is built after the load, in one sort,
# features first (cheap float8 comparisons before the text columns). Loading into a table that
# already has the index costs several times more (one B-tree insertion per pair).
_CREATE = ("CREATE TEMP TABLE IF NOT EXISTS pgml_predictions (fn text NOT NULL, model text NOT NULL, "
           "features float8[] NOT NULL, prediction real, prediction_array real[], prediction_label text)")
_INDEX = "pgml_predictions_key"
_DROP_INDEX = f"DROP INDEX IF EXISTS pg_temp.{_INDEX}"
_CREATE_INDEX = f"CREATE UNIQUE INDEX {_INDEX} ON {TEMP_TABLE} (features, fn, model)"
_STMT = "__pgml_general"
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_FUNCTIONS = {"predict": "prediction", "predict_proba": "prediction_array", "predict_joint": "prediction_array",
              "predict_label": "prediction_label", "decompose": "prediction_array"}
_SCOPES = (ast.SelectStmt, ast.UpdateStmt, ast.DeleteStmt)


class _Call:
    """One predict call: its function, model and features, and the pass-one query candidates."""

    def __init__(self, function: str, model, features, passes: list[str], canonical: bool = False) -> None:
        self.function = function
        self.model = model
        self.features = features
        self.passes = passes
        self.canonical = canonical      # features are a row of pgml.feature() values (common.feature_input)


def _walk(node, scopes: list, found: list) -> None:
    """Find pgml predict calls with the chain of statements (innermost last) that encloses each."""
    if isinstance(node, _SCOPES):
        scopes = scopes + [node]
    if isinstance(node, ast.FuncCall) and is_pgml_call(node):
        found.append((node, scopes))
    if isinstance(node, ast.Node):
        for name in node:
            _walk(getattr(node, name), scopes, found)
    elif isinstance(node, (tuple, list)):
        for item in node:
            _walk(item, scopes, found)


def _conjuncts(where) -> list:
    if where is None:
        return []
    if isinstance(where, ast.BoolExpr) and where.boolop == enums.BoolExprType.AND_EXPR:
        return [c for arg in where.args for c in _conjuncts(arg)]
    return [where]


def _contains(node, target) -> bool:
    if node is target:
        return True
    if isinstance(node, ast.Node):
        return any(_contains(getattr(node, n), target) for n in node)
    if isinstance(node, (tuple, list)):
        return any(_contains(x, target) for x in node)
    return False


def _from_items(scope, lookup, lookups: list) -> tuple[list, list]:
    """FROM items and predict-free WHERE conjuncts of one enclosing statement (the calls are
    lookups by now: `lookup` is this call's, `lookups` every call's)."""
    if isinstance(scope, ast.SelectStmt):
        items = list(scope.fromClause or ())
    elif isinstance(scope, ast.UpdateStmt):
        items = [scope.relation] + list(scope.fromClause or ())
    else:
        items = [scope.relation] + list(scope.usingClause or ())
    # An item that holds the call itself (a LATERAL subquery) is replaced by the call's own scope.
    items = [i for i in items if not _contains(i, lookup)]
    where = [c for c in _conjuncts(scope.whereClause) if not any(_contains(c, x) for x in lookups)]
    return items, where


def _pass_one_queries(call: "_Call", lookup, lookups: list, scopes: list, withs: list) -> list[str]:
    """Candidate pass-one queries, from the innermost scope outwards (outer columns need more FROM).

    They are built once every call of the statement is a lookup, so a call whose features come
    from another call's predictions (a subquery or CTE that predicts) reads them from the temp
    table: the inner call is collected first. Whatever the candidates hold, no pgml call reaches
    the upstream, which knows no pgml.predict."""
    model, feats = as_text(call.model), as_float8_array(call.features)
    queries, items, where = [], [], []
    for scope in reversed(scopes):
        more_items, more_where = _from_items(scope, lookup, lookups)
        items = items + more_items
        where = where + more_where
        select = ast.SelectStmt(
            targetList=(ast.ResTarget(val=model), ast.ResTarget(val=feats)),
            distinctClause=(None,),
            fromClause=tuple(items) or None,
            whereClause=(ast.BoolExpr(boolop=enums.BoolExprType.AND_EXPR, args=tuple(where)) if len(where) > 1
                         else (where[0] if where else None)),
            withClause=withs[0] if withs else None,
            op=enums.SetOperation.SETOP_NONE, limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT)
        if has_pgml_call(select):     # cannot happen once every call is a lookup: a guard, not a path
            raise PgError(sqlstate.INTERNAL_ERROR, "pgml-server left a pgml call in a pass-one query")
        queries.append(deparse(select))
    return queries


class GeneralPredict:
    def __init__(self, sql: str, calls: list[_Call]) -> None:
        self.sql = sql
        self.calls = calls
        self.param_types: list[int] = []
        self.columns = None

    @classmethod
    def build(cls, stmt) -> "GeneralPredict | None":
        n_params = param_count(stmt)
        stmt = copy.deepcopy(stmt)
        _name_predict_columns(stmt)
        found: list = []
        _walk(stmt, [], found)
        withs = [s.withClause for s in ([stmt] + [getattr(stmt, "query", None)])
                 if s is not None and getattr(s, "withClause", None) is not None]
        calls = []
        for node, scopes in found:
            name = predict_function(node)
            if name not in _FUNCTIONS or not node.args:
                raise PgError(sqlstate.FEATURE_NOT_SUPPORTED,
                              f"pgml.{name} cannot be used inside a query over tables",
                              hint="Only pgml.predict (pgml.score), predict_proba, predict_joint, predict_label "
                                   "and decompose run per row.")
            if not scopes:
                return None
            features, canonical = feature_input(node)
            call = _Call(name, model_node(node), features, [], canonical)
            calls.append((node, scopes, call, _lookup(call)))
        if not calls:
            return None
        for node, _, _, lookup in calls:
            _replace(stmt, node, lookup)
        lookups = [lookup for *_, lookup in calls]
        for _, scopes, call, lookup in calls:
            call.passes = _pass_one_queries(call, lookup, lookups, scopes, withs)
        # The walk meets an outer call before the calls inside its FROM (or its CTEs): collecting
        # in reverse order stores every inner prediction before an outer pass one reads it.
        ordered = [call for _, _, call, _ in reversed(calls)]
        if has_pgml_call(stmt):
            raise PgError(sqlstate.INTERNAL_ERROR, "pgml-server left a pgml call in a rewritten statement")
        plan = cls(deparse(stmt), ordered)
        # Every $n, typed by the client or by the upstream (0): a client that declares no types
        # (node-postgres) binds as many values as the statement has parameters.
        plan.param_types = [0] * n_params
        return plan

    # -- pass one

    async def _collect(self, session, call: _Call, raw_params, param_oids, done: set,
                       stored: set | None) -> None:
        last_error = None
        # Inside a transaction block a candidate that fails would abort it: each try gets a
        # savepoint, so a failed one is undone (its portal too) and the next can run.
        guarded = session.tx_status == "T" and len(call.passes) > 1
        ex = session_executor(session)
        for query in call.passes:
            if (call.function, query) in done:      # the same pairs were collected for an earlier call
                return
            try:
                if guarded:
                    await ex.execute("SAVEPOINT pgml_pass_one")
                data = await _fetch_binary(session, query, raw_params, param_oids)
                if guarded:
                    await ex.execute("RELEASE SAVEPOINT pgml_pass_one")
                break
            except PgError as err:
                if err.sqlstate not in ("42P01", "42703", "42P10", "42803"):
                    raise
                if guarded:
                    await ex.execute("ROLLBACK TO SAVEPOINT pgml_pass_one")
                last_error = err
        else:
            raise PgError(sqlstate.FEATURE_NOT_SUPPORTED,
                          "pgml-server could not work out which rows this pgml.predict call needs",
                          detail=last_error.message if last_error else None,
                          hint="Supported: predict in the target list, WHERE, ORDER BY, GROUP BY, aggregates, "
                               "CTEs, subqueries, LATERAL joins, CREATE TABLE AS, INSERT … SELECT, UPDATE … SET.")
        done.add((call.function, query))
        models, feats = _parse_pairs(data)
        if stored is not None:      # several calls: a pair an earlier call stored is not stored twice
            keep = [i for i, key in enumerate(zip(models, feats)) if (call.function,) + key not in stored]
            if len(keep) < len(models):
                models, feats = [models[i] for i in keep], [feats[i] for i in keep]
            stored.update((call.function, mo, f) for mo, f in zip(models, feats))
        if models:
            await _store(session, call.function, models, feats, call.canonical)

    async def _prepare(self, session, raw_params=None, param_oids=None) -> None:
        ex = session_executor(session)
        await ex.execute(_CREATE)
        await ex.execute(_DROP_INDEX)
        await ex.execute(f"TRUNCATE {TEMP_TABLE}")
        done: set = set()
        stored: set | None = set() if len(self.calls) > 1 else None
        for i, call in enumerate(self.calls):
            await self._collect(session, call, raw_params, param_oids, done, stored)
            if i == 0:
                # After the first load, before any pass one reads the table (a later call's
                # features may come from these predictions): PostgreSQL refuses CREATE INDEX on a
                # table that a query of the same transaction has used (55006).
                await ex.execute(_CREATE_INDEX)

    # -- pass two

    async def run_simple(self, session, sql: str) -> None:
        if session.tx_status == "E":
            raise PgError(sqlstate.IN_FAILED_SQL_TRANSACTION,
                          "current transaction is aborted, commands ignored until end of transaction block")
        async with _one_transaction(session):
            await self._prepare(session)
            await _relay(session, self.sql, None, None, [0], describe=True)

    async def run_extended(self, session, portal) -> None:
        raw = portal.raw_params
        oids = portal.prepared.param_oids
        async with _one_transaction(session):
            await self._prepare(session, raw, oids)
            await _relay(session, self.sql, raw, oids, portal.result_formats, describe=False)

    async def describe(self, session, prepared, portal) -> bytes:
        await session_executor(session).execute(_CREATE)
        oids = list(prepared.param_oids) if prepared is not None else list(portal.prepared.param_oids)
        stmt = InternalStatement(self.sql, _STMT, oids, execute=False)
        consumer = await run_internal(session, stmt, Collector(), extended=True)
        fields = consumer.fields or []
        if portal is not None:
            fields = with_formats(fields, portal.result_formats)
            return m.RowDescription(fields).encode() if fields else m.NoData().encode()
        if prepared is not None:
            prepared.param_oids = [o or types.TEXT for o in consumer.param_oids]
        desc = m.ParameterDescription(prepared.param_oids).encode()
        return desc + (m.RowDescription(fields).encode() if fields else m.NoData().encode())


def _name_predict_columns(node) -> None:
    """Keep PostgreSQL's default column name (the function's) once the call becomes a lookup."""
    if isinstance(node, ast.ResTarget) and node.name is None and is_pgml_call(node.val):
        node.name = node.val.funcname[-1].sval.lower()
    if isinstance(node, ast.Node):
        for name in node:
            _name_predict_columns(getattr(node, name))
    elif isinstance(node, tuple):
        for item in node:
            _name_predict_columns(item)


@contextlib.asynccontextmanager
async def _one_transaction(session):
    """Both passes in one transaction: pass two must find the pairs pass one computed, and a
    volatile feature (now() - created_at) is the same in both only within one transaction. A
    client outside any transaction gets BEGIN … COMMIT around them (what autocommit would have
    committed anyway; an error rolls back, as it would have); inside one, nothing is added."""
    if session.tx_status != "I" or session.batch_dirty:
        yield
        return
    ex = session_executor(session)
    await ex.execute("BEGIN")
    try:
        yield
    except BaseException:
        if session.phase == "ready" and session.tx_status != "I":
            await asyncio.shield(ex.execute("ROLLBACK"))
        raise
    await ex.execute("COMMIT")


def session_executor(session) -> SessionExecutor:
    return SessionExecutor(session, extended=True)


def _lookup(call: _Call) -> ast.SubLink:
    """(SELECT prediction FROM pg_temp.pgml_predictions WHERE model = … AND features = …)"""
    column = _FUNCTIONS[call.function]
    model, feats = as_text(call.model), as_float8_array(call.features)

    def eq(col, value):
        return ast.A_Expr(kind=enums.A_Expr_Kind.AEXPR_OP, name=(ast.String(sval="="),),
                          lexpr=ast.ColumnRef(fields=(ast.String(sval="pgml_p"), ast.String(sval=col))), rexpr=value)

    sub = ast.SelectStmt(
        targetList=(ast.ResTarget(val=ast.ColumnRef(fields=(ast.String(sval="pgml_p"), ast.String(sval=column)))),),
        fromClause=(ast.RangeVar(schemaname="pg_temp", relname="pgml_predictions", inh=True, relpersistence="p",
                                 alias=ast.Alias(aliasname="pgml_p")),),
        whereClause=ast.BoolExpr(boolop=enums.BoolExprType.AND_EXPR, args=(
            eq("fn", ast.A_Const(isnull=False, val=ast.String(sval=call.function))),
            eq("model", model), eq("features", feats))),
        op=enums.SetOperation.SETOP_NONE, limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT)
    return ast.SubLink(subLinkType=enums.SubLinkType.EXPR_SUBLINK, subselect=sub)


def _replace(node, target, replacement) -> bool:
    """Replace `target` (by identity) inside the tree; tuples are rebuilt, they are immutable."""
    if not isinstance(node, ast.Node):
        return False
    for name in node:
        value = getattr(node, name)
        if value is target:
            setattr(node, name, replacement)
            return True
        if isinstance(value, tuple):
            if any(item is target for item in value):
                setattr(node, name, tuple(replacement if item is target else item for item in value))
                return True
            if any(_replace(item, target, replacement) for item in value):
                return True
        elif _replace(value, target, replacement):
            return True
    return False


async def _fetch_binary(session, sql: str, raw, param_oids) -> list[bytes]:
    """The rows of a query as binary DataRow payloads. Not COPY: COPY takes no bind parameters,
    and pass one must see the client's $n."""
    stmt = InternalStatement(sql, _STMT, list(param_oids or []), list(raw.params) if raw is not None else [],
                             list(raw.param_formats) if raw is not None else [], [1])
    return (await run_internal(session, stmt, Collector(), extended=True)).rows


def _parse_pairs(rows: list[bytes]) -> tuple[list[str], list[bytes]]:
    """Binary DataRows of (text, float8[]) → model names and raw feature arrays."""
    models, feats = [], []
    names: dict[bytes, str] = {}
    unpack32 = _I32.unpack_from
    add_model, add_feat = models.append, feats.append
    for data in rows:
        # int16 column count (2), then int32 length and bytes of the model, then of the features
        length = unpack32(data, 2)[0]
        if length < 0:
            continue      # NULL model or features: the lookup yields NULL, as predict of NULL would
        pos = 6 + length
        if unpack32(data, pos)[0] < 0:
            continue
        raw = data[6:pos]
        name = names.get(raw)
        if name is None:
            name = names[raw] = raw.decode()
        add_model(name)
        add_feat(data[pos + 4:])
    return models, feats


async def _store(session, function: str, models: list[str], feats: list[bytes], canonical: bool) -> None:
    """Predict the pairs and load them with one binary COPY: the feature arrays go back as the exact
    float8[] bytes pass one returned (no decode/encode per row), the predictions as float4 bytes."""
    parts = [_COPY_HEADER]
    by_model: dict[str, list[int]] = {}
    for i, name in enumerate(models):
        by_model.setdefault(name, []).append(i)
    fn_field = _I32.pack(len(function)) + function.encode()
    for name, rows in by_model.items():
        model = await resolve_model(session, name)
        rows_feats = [feats[i] for i in rows]
        X = batch_features(model, float8_arrays(rows_feats), canonical)
        model_bytes = name.encode()
        head = _COLUMNS + fn_field + _I32.pack(len(model_bytes)) + model_bytes
        if function == "predict_label":      # text: a width per row
            for f, label in zip(rows_feats, run_plan(model, function, X)):
                text = label.encode()
                parts += (head, _I32.pack(len(f)), f, _NO_NUMBERS, _I32.pack(len(text)), text)
            continue
        pred = np.asarray(run_plan(model, function, X), dtype=np.float64).reshape(len(rows), -1)
        if function == "predict":
            pred = pred[:, :1]
        tails = _prediction_fields(function, pred)
        sizes = set(map(len, rows_feats))
        if len(sizes) == 1:     # one fixed-width block: assembled by numpy
            size = sizes.pop()
            n = len(rows_feats)
            block = np.empty((n, len(head) + 4 + size + len(tails) // n), dtype=np.uint8)
            fixed = len(head) + 4
            block[:, :fixed] = np.frombuffer(head + _I32.pack(size), dtype=np.uint8)
            block[:, fixed:fixed + size] = np.frombuffer(b"".join(rows_feats), dtype=np.uint8).reshape(n, size)
            block[:, fixed + size:] = np.frombuffer(tails, dtype=np.uint8).reshape(n, -1)
            parts.append(block.tobytes())
        else:
            pack = _I32.pack
            width = len(tails) // len(rows)
            for j, f in enumerate(rows_feats):
                parts += (head, pack(len(f)), f, tails[j * width:(j + 1) * width])
    parts.append(_COPY_TRAILER)
    await session_executor(session).copy_in(TEMP_TABLE, ["fn", "model", "features", "prediction", "prediction_array",
                                                         "prediction_label"], b"".join(parts), "binary")


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_COPY_TRAILER = b"\xff\xff"
_COLUMNS = _I16.pack(6)
_NULL = -1
_NO_NUMBERS = _I32.pack(_NULL) * 2          # prediction and prediction_array of a label row
_FLOAT4_OID = 700


def _float4(values: np.ndarray) -> np.ndarray:
    """float64 → float4 as PostgreSQL's real input does it: out of range (overflow, or a non-zero
    value that becomes 0) is an error, not inf or 0."""
    out = values.astype(np.float32)
    bad = (np.isinf(out) & np.isfinite(values)) | ((out == 0) & (values != 0))
    if bad.any():
        raise PgError(sqlstate.NUMERIC_VALUE_OUT_OF_RANGE,
                      f'"{float(values[bad][0])!r}" is out of range for type real')
    return out


def _prediction_fields(function: str, pred: np.ndarray) -> bytes:
    """The binary COPY fields prediction, prediction_array (and a NULL prediction_label) of each
    row, as one fixed-width block."""
    n, k = pred.shape
    if function == "predict":
        block = np.empty(n, dtype=[("len", ">i4"), ("v", ">f4"), ("null", ">i4"), ("label", ">i4")])
        block["len"] = 4
        block["v"] = _float4(pred[:, 0])
        block["null"] = _NULL
        block["label"] = _NULL
        return block.tobytes()
    if k == 0:      # an empty real[]: ndim 0
        row = _I32.pack(_NULL) + _I32.pack(12) + struct.pack("!iii", 0, 0, _FLOAT4_OID) + _I32.pack(_NULL)
        return row * n
    block = np.empty(n, dtype=[("null", ">i4"), ("len", ">i4"), ("ndim", ">i4"), ("hasnull", ">i4"),
                               ("elem", ">i4"), ("dim", ">i4"), ("lb", ">i4"),
                               ("vals", [("l", ">i4"), ("v", ">f4")], (k,)), ("label", ">i4")])
    block["null"] = _NULL
    block["label"] = _NULL
    block["len"] = 20 + 8 * k
    block["ndim"] = 1
    block["hasnull"] = 0
    block["elem"] = _FLOAT4_OID
    block["dim"] = k
    block["lb"] = 1
    block["vals"]["l"] = 4
    block["vals"]["v"] = _float4(pred)
    return block.tobytes()


# Pass two's answers the client must not see: our own Parse/Bind/CloseComplete, NoData and the
# ReadyForQuery of our own Sync (and, in the extended protocol, the portal's RowDescription: the
# client's Describe was answered already).
_OURS = frozenset(b"123nZ")


async def _relay(session, sql: str, raw, param_oids, result_formats, *, describe: bool) -> None:
    """Pass two: its answers go to the client as they come (RowDescription only in the simple protocol)."""
    stmt = InternalStatement(sql, _STMT, list(param_oids or []), list(raw.params) if raw is not None else [],
                             list(raw.param_formats) if raw is not None else [], list(result_formats),
                             describe=describe)
    consumer = Relay(session, _OURS if describe else _OURS | {0x54}, relay_errors=False)
    await run_internal(session, stmt, consumer, extended=raw is not None)
