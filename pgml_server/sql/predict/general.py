"""The general two-pass strategy for pgml.predict* inside SQL over tables.

Each distinct call of a scope (function, model and features as written) gets a call id. Pass
one, per call id: `SELECT DISTINCT model::text, features::float8[] FROM <the FROM items that feed
the call> WHERE <the call's predict-free conjuncts>` (a superset of what the statement needs).
The pairs are predicted per model in one batch and copied (binary COPY, store.py) into the
session temp table `pg_temp.pgml_predictions` under their call id: unique per call id, so no
cross-call bookkeeping is needed. Pass two is the statement with each call replaced by a column
of a LEFT JOIN to that call id's rows, which PostgreSQL hash-joins (joins.py), or, where a join
could change the statement's meaning, by a lookup subquery that probes a hash index on the
features. PostgreSQL thus keeps its full semantics (filters, sorts, joins, writes).

Both passes run in one transaction (BEGIN … COMMIT added for a client outside one) and see the
rows through the features, not a row identity: a row that a concurrent transaction changes
between the passes (READ COMMITTED takes a snapshot per statement) is predicted if its features
are unchanged, and gets NULL if they changed, never another row's prediction. (A ctid key would
miss such a row even with unchanged features, and could name another row after VACUUM.)
"""
from __future__ import annotations

import asyncio
import contextlib
import copy

from pglast import ast, enums

from protocol import messages as m
from protocol import sqlstate, types
from protocol.errors import PgError

from ...pipeline.consumers import Collector, Relay
from ...pipeline.internal import InternalStatement, run_internal
from ...pipeline.session_executor import SessionExecutor
from ..astutil import deparse, has_pgml_call, is_pgml_call, param_count
from ..encoding import with_formats
from . import joins
from .common import as_float8_array, as_text, feature_input, model_node, predict_function
from .store import VALUE_COLUMNS, copy_rows, read_pairs

TEMP_TABLE = "pg_temp.pgml_predictions"
_CREATE = ("CREATE TEMP TABLE IF NOT EXISTS pgml_predictions (call_id int4 NOT NULL, model text NOT NULL, "
           "features float8[] NOT NULL, prediction real, prediction_array real[], prediction_label text)")
# Only lookups (not joins) need an index: a hash index on the features, built after the first
# load (0.6 s for 1M pairs, where a B-tree took 3.4 s), one probe per looked-up row.
_INDEX = "pgml_predictions_features"
_DROP_INDEX = f"DROP INDEX IF EXISTS pg_temp.{_INDEX}"
_CREATE_INDEX = f"CREATE INDEX {_INDEX} ON {TEMP_TABLE} USING hash (features)"
_STMT = "__pgml_general"
_FUNCTIONS = VALUE_COLUMNS
_SCOPES = (ast.SelectStmt, ast.UpdateStmt, ast.DeleteStmt)


class _Call:
    """One predict call: its function, model and features, its call id, and the pass-one query
    candidates. Occurrences of the same call in one scope share the id (and one pass one)."""

    def __init__(self, function: str, model, features, passes: list[str], canonical: bool = False,
                 call_id: int = 0) -> None:
        self.function = function
        self.model = model
        self.features = features
        self.passes = passes
        self.canonical = canonical      # features are a row of pgml.feature() values (common.feature_input)
        self.call_id = call_id


def _walk(node, scopes: list, found: list, once: bool = True) -> None:
    """Find pgml predict calls with the chain of statements (innermost last) that encloses each,
    and whether that chain runs once per statement (not inside a SubLink, a LATERAL item or a
    recursive WITH, which PostgreSQL may run again per outer row or per iteration)."""
    if isinstance(node, _SCOPES):
        scopes = scopes + [node]
    if isinstance(node, ast.FuncCall) and is_pgml_call(node):
        found.append((node, scopes, once))
    if (isinstance(node, ast.SubLink) or (isinstance(node, (ast.RangeSubselect, ast.RangeFunction)) and node.lateral)
            or (isinstance(node, ast.WithClause) and node.recursive)):
        once = False
    if isinstance(node, ast.Node):
        for name in node:
            _walk(getattr(node, name), scopes, found, once)
    elif isinstance(node, (tuple, list)):
        for item in node:
            _walk(item, scopes, found, once)


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


def _pass_one_queries(call: "_Call", lookup, lookups: list, scopes: list, withs: list) -> tuple[list[str], bool]:
    """Candidate pass-one queries, from the innermost scope outwards (outer columns need more FROM).

    They are built once every call of the statement is a lookup, so a call whose features come
    from another call's predictions (a subquery or CTE that predicts) reads them from the temp
    table: the inner call is collected first. Whatever the candidates hold, no pgml call reaches
    the upstream, which knows no pgml.predict. Also returns whether any candidate holds a lookup
    (it then probes the temp table, which needs its index)."""
    model, feats = as_text(call.model), as_float8_array(call.features)
    queries, items, where = [], [], []
    reads = False
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
        reads = reads or any(_contains(select, x) for x in lookups)
        queries.append(deparse(select))
    return queries, reads


class GeneralPredict:
    def __init__(self, sql: str, calls: list[_Call], needs_index: bool = True) -> None:
        self.sql = sql
        self.calls = calls              # one per call id, in collection order (inner calls first)
        self.needs_index = needs_index  # some lookup (pass two's or a pass one's) probes the table
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
        ids: dict[tuple, _Call] = {}
        for node, scopes, once in found:
            name = predict_function(node)
            if name not in _FUNCTIONS or not node.args:
                raise PgError(sqlstate.FEATURE_NOT_SUPPORTED,
                              f"pgml.{name} cannot be used inside a query over tables",
                              hint="Only pgml.predict (pgml.score), predict_proba, predict_joint, predict_label "
                                   "and decompose run per row.")
            if not scopes:
                return None
            features, canonical = feature_input(node)
            model = model_node(node)
            # The same call written twice in one scope (WHERE and ORDER BY) is one call id: its
            # occurrences share one pass one and one join, so GROUP BY sees one expression.
            key = (name, id(scopes[-1]), deparse(model), deparse(features))
            first = ids.get(key)
            call = _Call(name, model, features, [], canonical, first.call_id if first else len(ids) + 1)
            if first is None:
                ids[key] = call
            calls.append((node, scopes, once, call, _lookup(call), first is None))
        if not calls:
            return None
        for node, _, _, _, lookup, _ in calls:
            _replace(stmt, node, lookup)
        lookups = [c[4] for c in calls]
        reads_table = False
        for _, scopes, _, call, lookup, first in calls:
            if first:
                call.passes, reads = _pass_one_queries(call, lookup, lookups, scopes, withs)
                reads_table = reads_table or reads
        looked_up = _join_calls(stmt, calls)
        # The walk meets an outer call before the calls inside its FROM (or its CTEs): collecting
        # in reverse order stores every inner prediction before an outer pass one reads it.
        ordered = [call for _, _, _, call, _, first in reversed(calls) if first]
        if has_pgml_call(stmt):
            raise PgError(sqlstate.INTERNAL_ERROR, "pgml-server left a pgml call in a rewritten statement")
        plan = cls(deparse(stmt), ordered, needs_index=looked_up or reads_table)
        # Every $n, typed by the client or by the upstream (0): a client that declares no types
        # (node-postgres) binds as many values as the statement has parameters.
        plan.param_types = [0] * n_params
        return plan

    # -- pass one

    async def _collect(self, session, call: _Call, raw_params, param_oids, done: dict) -> None:
        last_error = None
        # Inside a transaction block a candidate that fails would abort it: each try gets a
        # savepoint, so a failed one is undone (its portal too) and the next can run.
        guarded = session.tx_status == "T" and len(call.passes) > 1
        ex = session_executor(session)
        for query in call.passes:
            earlier = done.get((call.function, query))
            if earlier is not None:     # the same pairs were collected for another call id: copied
                await ex.execute(f"INSERT INTO {TEMP_TABLE} SELECT {call.call_id}, model, features, prediction, "
                                 f"prediction_array, prediction_label FROM {TEMP_TABLE} WHERE call_id = {earlier}")
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
        done[(call.function, query)] = call.call_id
        pairs = read_pairs(data)
        del data
        if pairs:
            stream = await copy_rows(session, call.function, call.call_id, pairs, call.canonical)
            await ex.copy_in(TEMP_TABLE, ["call_id", "model", "features", _FUNCTIONS[call.function]], stream, "binary")

    async def _prepare(self, session, raw_params=None, param_oids=None) -> None:
        ex = session_executor(session)
        await ex.execute(_CREATE)
        await ex.execute(_DROP_INDEX)
        await ex.execute(f"TRUNCATE {TEMP_TABLE}")
        done: dict = {}
        for i, call in enumerate(self.calls):
            await self._collect(session, call, raw_params, param_oids, done)
            if i == 0 and self.needs_index:
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


def _join_calls(stmt, calls: list) -> bool:
    """Turn the occurrences that joins.joinable allows into joined columns; True if any lookup is
    left. Inner calls first: an outer call's join condition holds the inner call's column."""
    by_scope: dict[int, tuple] = {}
    looked_up = False
    for _, scopes, once, call, lookup, _ in reversed(calls):
        scope = scopes[-1]
        if not joins.joinable(scope, lookup, call.features, once):
            looked_up = True
            continue
        _, joined = by_scope.setdefault(id(scope), (scope, {}))
        if not _replace(stmt, lookup, joins.column(call.call_id)):
            looked_up = True        # not reachable (inside a lookup that stays): keep it
            continue
        if call.call_id not in joined:
            joined[call.call_id] = joins.JoinedCall(call.call_id, _FUNCTIONS[call.function], call.model, call.features)
    for scope, joined in by_scope.values():
        if joined:
            joins.attach(scope, list(joined.values()))
    return looked_up


def _lookup(call: _Call) -> ast.SubLink:
    """(SELECT prediction FROM pg_temp.pgml_predictions WHERE call_id = … AND model = … AND features = …)"""
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
            eq("call_id", ast.A_Const(isnull=False, val=ast.Integer(ival=call.call_id))),
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
