"""Pass two of the general strategy as a hash join: a predict call becomes a column of a LEFT JOIN.

A correlated lookup `(SELECT prediction FROM pg_temp.pgml_predictions WHERE … features = ARRAY[…])`
costs an index probe per row, and the index a build per statement: over 1M rows 9.3 s of probes
(B-tree) and 3.4 s of build, where PostgreSQL hash-joins the same rows in 0.9 s with no index
(benchmarks/README.md, issue 11). So where it keeps the statement's meaning, the call becomes

    FROM (<the scope's FROM items, CROSS JOINed>)
         LEFT JOIN (SELECT model, features, <value> FROM pg_temp.pgml_predictions WHERE call_id = K)
                   AS pgml_pK (pgml_pK_model, pgml_pK_features, pgml_pK_value)
           ON pgml_pK.pgml_pK_model = <model>::text AND pgml_pK.pgml_pK_features = <features>::float8[]

and the call `pgml_pK.pgml_pK_value`. LEFT: a row whose pair was not predicted (NULL model or
features) gets NULL, as the lookup gave. The pairs of one call id are unique (one DISTINCT pass
one), so no row is repeated. A subquery, not the table: it has no system columns (a `ctid` of
the statement stays unambiguous) and its columns are renamed so that none shadows a user column.

Where that could change the statement, the call keeps the lookup (general.py builds a hash index
for it): a scope that may run more than once (inside a SubLink, a LATERAL item or a recursive
CTE), UPDATE/DELETE (their target relation is not a FROM item), a call in a JOIN … ON or LIMIT,
FOR UPDATE (not allowed on the nullable side of an outer join), a `*` over items this cannot
spell out, and in a grouped scope a call outside WHERE and outside an aggregate's arguments (the
joined column would have to be grouped: `SELECT g, predict(…, ARRAY[g]) … GROUP BY g`).
"""
from __future__ import annotations

import copy

from pglast import ast, enums

from ..astutil import is_pgml_call
from .common import as_float8_array, as_text

# Aggregates of PostgreSQL (pg_catalog): a call inside one is evaluated per input row, before grouping.
AGGREGATES = frozenset("""
    any_value array_agg avg bit_and bit_or bit_xor bool_and bool_or corr count covar_pop covar_samp every
    json_agg json_object_agg jsonb_agg jsonb_object_agg max min mode percentile_cont percentile_disc
    range_agg range_intersect_agg regr_avgx regr_avgy regr_count regr_intercept regr_r2 regr_slope regr_sxx
    regr_sxy regr_syy stddev stddev_pop stddev_samp string_agg sum var_pop var_samp variance xmlagg
""".split())
# Clauses of a scope whose expressions are evaluated per row of its FROM (or, grouped, per group).
_ROW_CLAUSES = ("targetList", "sortClause", "distinctClause", "windowClause", "groupClause", "havingClause")
# An explicit JOIN hides its members' system columns from unqualified names: `SELECT ctid FROM t`
# works, `SELECT ctid FROM t LEFT JOIN …` is 42703. Such names are qualified with the scope's table.
_SYSTEM_COLUMNS = frozenset({"ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"})


def alias(call_id: int) -> str:
    return f"pgml_p{call_id}"


def column(call_id: int) -> ast.ColumnRef:
    name = alias(call_id)
    return ast.ColumnRef(fields=(ast.String(sval=name), ast.String(sval=f"{name}_value")))


def _is_aggregate(node) -> bool:
    if not isinstance(node, ast.FuncCall) or node.over is not None or is_pgml_call(node):
        return False
    names = [n.sval.lower() for n in node.funcname]
    if len(names) == 2 and names[0] != "pg_catalog":
        return bool(node.agg_star or node.agg_distinct or node.agg_order or node.agg_filter or node.agg_within_group)
    return (names[-1] in AGGREGATES or bool(node.agg_star or node.agg_distinct or node.agg_order
                                            or node.agg_filter or node.agg_within_group))


def _path(node, target, trail: list) -> list | None:
    """The nodes from `node` down to `target` (by identity), both included; None if absent."""
    if node is target:
        return trail + [node]
    if isinstance(node, ast.Node):
        for name in node:
            found = _path(getattr(node, name), target, trail + [node])
            if found is not None:
                return found
    elif isinstance(node, (tuple, list)):
        for item in node:
            found = _path(item, target, trail)
            if found is not None:
                return found
    return None


def _contains(node, found, nested: bool = True) -> bool:
    """Whether `found(n)` holds for a node under `node`; nested=False: not looking into nested
    statements (their own scopes)."""
    if found(node):
        return True
    if not nested and isinstance(node, (ast.SelectStmt, ast.SubLink)):
        return False
    if isinstance(node, ast.Node):
        return any(_contains(getattr(node, n), found, nested) for n in node)
    if isinstance(node, (tuple, list)):
        return any(_contains(x, found, nested) for x in node)
    return False


def _has_aggregate(node) -> bool:
    """A known aggregate in `node`, not looking into nested statements (their own scopes)."""
    return _contains(node, _is_aggregate, nested=False)


def _has_column(node) -> bool:
    return _contains(node, lambda n: isinstance(n, ast.ColumnRef))


def _star_items(scope: ast.SelectStmt) -> list | None:
    """`*` spelled out as `item.*` per FROM item, or None where that is not sure to be the same."""
    stars = []
    for item in scope.fromClause:
        if isinstance(item, ast.RangeVar):
            names = _table_names(item)
        elif isinstance(item, (ast.RangeSubselect, ast.RangeFunction)) and item.alias is not None:
            names = (item.alias.aliasname,)
        else:
            return None     # a JOIN (USING and NATURAL merge columns), an unaliased function, …
        stars.append(ast.ResTarget(val=ast.ColumnRef(fields=tuple(ast.String(sval=n) for n in names)
                                                     + (ast.A_Star(),))))
    return stars


def _system_refs(node, found: list) -> list:
    """Unqualified system-column references of one scope (not of the statements nested in it)."""
    if isinstance(node, ast.ColumnRef):
        if len(node.fields) == 1 and isinstance(node.fields[0], ast.String) and node.fields[0].sval in _SYSTEM_COLUMNS:
            found.append(node)
    elif isinstance(node, ast.SelectStmt):
        pass
    elif isinstance(node, ast.Node):
        for name in node:
            _system_refs(getattr(node, name), found)
    elif isinstance(node, (tuple, list)):
        for item in node:
            _system_refs(item, found)
    return found


def _scope_system_refs(scope: ast.SelectStmt) -> list:
    found: list = []
    for clause in _ROW_CLAUSES + ("whereClause",):
        _system_refs(getattr(scope, clause), found)
    return found


def _table_names(item: ast.RangeVar) -> tuple:
    if item.alias is not None:
        return (item.alias.aliasname,)
    return tuple(n for n in (item.catalogname, item.schemaname, item.relname) if n)


def joinable(scope, lookup, features, once: bool) -> bool:
    """May this occurrence of a call (now `lookup`, innermost in `scope`) become a joined column?"""
    if not once or not isinstance(scope, ast.SelectStmt) or scope.op != enums.SetOperation.SETOP_NONE:
        return False
    if not scope.fromClause or scope.lockingClause:
        return False
    if (_scope_system_refs(scope)
            and sum(isinstance(i, ast.RangeVar) for i in scope.fromClause) != 1):
        return False
    if any(isinstance(t.val, ast.ColumnRef) and len(t.val.fields) == 1 and isinstance(t.val.fields[0], ast.A_Star)
           for t in scope.targetList or ()) and _star_items(scope) is None:
        return False
    path = _path(scope.whereClause, lookup, [])
    if path is not None:
        return True
    grouped = bool(scope.groupClause or scope.havingClause
                   or _has_aggregate(scope.targetList) or _has_aggregate(scope.sortClause))
    for clause in _ROW_CLAUSES:
        path = _path(getattr(scope, clause), lookup, [])
        if path is None:
            continue
        if grouped:
            return any(_is_aggregate(n) for n in path)
        # A call of constants only in an aggregated query is valid as a lookup, not as a column.
        return _has_column(features)
    return False            # in a JOIN … ON, a FROM function's arguments, LIMIT, …


class JoinedCall:
    """One call id turned into a LEFT JOIN of its scope."""

    def __init__(self, call_id: int, value_column: str, model, features) -> None:
        self.call_id = call_id
        self.value_column = value_column
        self.model = model
        self.features = features


def attach(scope: ast.SelectStmt, joined: list[JoinedCall]) -> None:
    """Add the LEFT JOINs of `joined` (in order: a later one may read an earlier one's column) to
    `scope`'s FROM, and spell out a bare `*` of its target list (it would list our columns too)."""
    targets = []
    for t in scope.targetList or ():
        if isinstance(t.val, ast.ColumnRef) and len(t.val.fields) == 1 and isinstance(t.val.fields[0], ast.A_Star):
            targets.extend(_star_items(scope))
        else:
            targets.append(t)
    scope.targetList = tuple(targets)
    items = list(scope.fromClause)
    refs = _scope_system_refs(scope)
    if refs:        # joinable() saw exactly one table
        table = _table_names(next(i for i in items if isinstance(i, ast.RangeVar)))
        for ref in refs:
            ref.fields = tuple(ast.String(sval=n) for n in table) + ref.fields
    tree = items[0]
    for item in items[1:]:
        tree = ast.JoinExpr(jointype=enums.JoinType.JOIN_INNER, isNatural=False, larg=tree, rarg=item)
    for j in joined:
        name = alias(j.call_id)
        sub = ast.SelectStmt(
            targetList=tuple(ast.ResTarget(val=ast.ColumnRef(fields=(ast.String(sval=c),)))
                             for c in ("model", "features", j.value_column)),
            fromClause=(ast.RangeVar(schemaname="pg_temp", relname="pgml_predictions", inh=True,
                                     relpersistence="p"),),
            whereClause=_eq(ast.ColumnRef(fields=(ast.String(sval="call_id"),)),
                            ast.A_Const(isnull=False, val=ast.Integer(ival=j.call_id))),
            op=enums.SetOperation.SETOP_NONE, limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT)
        cols = (f"{name}_model", f"{name}_features", f"{name}_value")
        rarg = ast.RangeSubselect(lateral=False, subquery=sub,
                                  alias=ast.Alias(aliasname=name, colnames=tuple(ast.String(sval=c) for c in cols)))
        on = ast.BoolExpr(boolop=enums.BoolExprType.AND_EXPR, args=(
            _eq(_col(name, cols[0]), as_text(copy.deepcopy(j.model))),
            _eq(_col(name, cols[1]), as_float8_array(copy.deepcopy(j.features)))))
        tree = ast.JoinExpr(jointype=enums.JoinType.JOIN_LEFT, isNatural=False, larg=tree, rarg=rarg, quals=on)
    scope.fromClause = (tree,)


def _col(table: str, name: str) -> ast.ColumnRef:
    return ast.ColumnRef(fields=(ast.String(sval=table), ast.String(sval=name)))


def _eq(left, right) -> ast.A_Expr:
    return ast.A_Expr(kind=enums.A_Expr_Kind.AEXPR_OP, name=(ast.String(sval="="),), lexpr=left, rexpr=right)
