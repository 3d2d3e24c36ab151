"""Compiling a statement made only of pgml.* calls into a LocalStatement.

`SELECT pgml.f(...)[, ...]` and `SELECT * FROM pgml.f(...)` with constant or bound arguments are
answered by the server itself: the arguments become evaluators over the statement's parameter
values, bound to the function's signature once (functions/base.py), so running the statement
again only evaluates them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pglast import ast

from protocol import sqlstate, types
from protocol.errors import PgError

from ..functions import FUNCTIONS, Function
from ..functions.base import ANY, RECORD, BoundArgs, bind, evaluate
from ..ml import temporal
from .astutil import func_name, is_pgml_call


@dataclass
class LocalCall:
    function: Function
    bound: BoundArgs
    column: str

    def arguments(self, params: list) -> dict[str, Any]:
        return evaluate(self.function, self.bound, params)


@dataclass
class LocalStatement:
    """A statement made only of pgml.* calls with constant or bound arguments."""
    calls: list[LocalCall]
    columns: list[tuple[str, int]]
    param_types: list[int]
    expand: bool            # SELECT * FROM pgml.f(...): the function's columns become the row

    @property
    def returns_set(self) -> bool:
        return any(c.function.returns_set for c in self.calls)


def compile_local(stmt) -> LocalStatement | None:
    """Compile `SELECT pgml.f(...)[, ...]` or `SELECT * FROM pgml.f(...)`, else None."""
    if not isinstance(stmt, ast.SelectStmt) or not _plain_select(stmt):
        return None
    params: dict[int, int] = {}
    if stmt.fromClause:
        return _compile_from_form(stmt, params)
    calls = []
    for target in stmt.targetList or ():
        if not is_pgml_call(target.val):
            return None
        call = _compile_call(target.val, params, target.name)
        if call is None:
            return None
        calls.append(call)
    columns = [(c.column, c.function.columns[0][1] if not c.function.composite else RECORD) for c in calls]
    return LocalStatement(calls, columns, _param_list(params), expand=False)


def _plain_select(stmt: ast.SelectStmt) -> bool:
    return not (stmt.whereClause or stmt.groupClause or stmt.havingClause or stmt.sortClause
                or stmt.limitCount or stmt.limitOffset or stmt.withClause or stmt.op
                or stmt.distinctClause or stmt.valuesLists or stmt.intoClause or stmt.windowClause
                or stmt.lockingClause)


def _compile_from_form(stmt: ast.SelectStmt, params: dict[int, int]) -> LocalStatement | None:
    if len(stmt.fromClause) != 1 or not isinstance(stmt.fromClause[0], ast.RangeFunction):
        return None
    rf = stmt.fromClause[0]
    if rf.lateral or rf.ordinality or len(rf.functions) != 1:
        return None
    func = rf.functions[0][0]
    if not is_pgml_call(func):
        return None
    targets = stmt.targetList or ()
    if not (len(targets) == 1 and isinstance(targets[0].val, ast.ColumnRef)
            and isinstance(targets[0].val.fields[-1], ast.A_Star)):
        return None
    alias = rf.alias.aliasname if rf.alias else None
    call = _compile_call(func, params, None)
    if call is None:
        return None
    columns = list(call.function.columns)
    if alias and not call.function.composite:
        columns = [(alias, columns[0][1])]
    return LocalStatement([call], columns, _param_list(params), expand=True)


def _param_list(params: dict[int, int]) -> list[int]:
    if not params:
        return []
    return [params.get(i, types.TEXT) for i in range(1, max(params) + 1)]


def _compile_call(node: ast.FuncCall, params: dict[int, int], alias: str | None) -> LocalCall | None:
    name = func_name(node)
    fn = FUNCTIONS.get(name)
    if fn is None:
        return None
    if node.agg_star or node.agg_distinct or node.over or node.agg_filter or node.agg_order:
        return None
    positional, named = [], {}
    fixed = [p for p in fn.params if not p.variadic]
    args = node.args or ()
    n_positional = sum(not isinstance(a, ast.NamedArgExpr) for a in args)
    for i, arg in enumerate(args):
        if isinstance(arg, ast.NamedArgExpr):
            param = next((p for p in fn.params if p.name == arg.name), None)
            ev = compile_expr(arg.arg, params, param.type if param else types.TEXT)
            if ev is None:
                return None
            named[arg.name] = ev
        else:
            if i < len(fixed):
                expected = fixed[i].type
            elif n_positional == len(fixed) + 1 and fn.params[-1].variadic:
                # A single value where VARIADIC real[] starts: an untyped $n there is the whole
                # feature array (what clients bind), not one feature.
                expected = fn.params[-1].type
            else:
                expected = _variadic_elem(fn)
            ev = compile_expr(arg, params, expected)
            if ev is None:
                return None
            positional.append(ev)
    bound = bind(fn, positional, named)
    return LocalCall(fn, bound, alias or fn.name)


def _variadic_elem(fn: Function) -> int:
    # Past the fixed parameters only a VARIADIC real[] can take more; bind() reports anything else.
    return types.FLOAT4 if fn.params and fn.params[-1].variadic else types.TEXT


class Evaluator:
    """A compiled argument expression: evaluator(params) → Python value."""
    __slots__ = ("fn", "is_array")

    def __init__(self, fn: Callable[[list], Any], is_array: bool = False) -> None:
        self.fn = fn
        self.is_array = is_array

    def __call__(self, params: list) -> Any:
        return self.fn(params)


# Temporal types: a bound value arrives as its epoch (encoding.decode_param), a constant in a row
# constructor is read the same way (_row_item); the model's preprocessing takes epochs for them.
_TEMPORAL_CASTS = {"timestamp": temporal.TIMESTAMP, "timestamptz": temporal.TIMESTAMPTZ, "date": temporal.DATE,
                   "time": temporal.TIME, "timetz": temporal.TIMETZ, "interval": temporal.INTERVAL}

_CAST_TYPES = {
    "float4": types.FLOAT4, "real": types.FLOAT4, "float8": types.FLOAT8, "double precision": types.FLOAT8,
    "int2": types.INT2, "smallint": types.INT2, "int4": types.INT4, "integer": types.INT4, "int": types.INT4,
    "int8": types.INT8, "bigint": types.INT8, "numeric": types.NUMERIC, "decimal": types.NUMERIC,
    "text": types.TEXT, "varchar": types.VARCHAR, "bpchar": types.TEXT, "name": types.TEXT,
    "bool": types.BOOL, "boolean": types.BOOL, "json": types.JSON, "jsonb": types.JSONB,
    **_TEMPORAL_CASTS,    # outside rows a temporal constant keeps its text (pgml.schedule's every)
}


def _row_item(node, params: dict[int, int]) -> Evaluator | None:
    """One value of a row constructor, which the model's preprocessing reads by its column's kind:
    what compile_expr compiles; a temporal cast as its epoch; a constant cast to a type the server
    does not know (an enum: 'pro'::shop.tier) as its text."""
    if isinstance(node, ast.TypeCast) and not node.typeName.arrayBounds:
        name = node.typeName.names[-1].sval.lower()
        oid = _TEMPORAL_CASTS.get(name)
        if oid is None and name not in _CAST_TYPES and isinstance(node.arg, ast.A_Const):
            value = None if node.arg.isnull else _const_value(node.arg.val)
            return Evaluator(lambda p, v=value: v)
        if oid is not None:
            if isinstance(node.arg, ast.ParamRef):
                params[node.arg.number] = oid
                return Evaluator(lambda p, i=node.arg.number - 1: p[i])
            if isinstance(node.arg, ast.A_Const):
                text = None if node.arg.isnull else _const_value(node.arg.val)
                if text is None:
                    return Evaluator(lambda p: None)
                if isinstance(text, str):
                    try:
                        value = temporal.epoch_of_wire(oid, text.encode(), False)
                    except Exception:          # the upstream reads what this cannot (and reports errors)
                        return None
                    return Evaluator(lambda p, v=value: v)
            return None
    return compile_expr(node, params, types.TEXT)


def cast_type(type_name: ast.TypeName) -> int | None:
    base = _CAST_TYPES.get(type_name.names[-1].sval.lower())
    if base is None:
        return None
    if type_name.arrayBounds:
        return types.ARRAY_OF.get(base)
    return base


def compile_expr(node, params: dict[int, int], expected: int) -> Evaluator | None:
    """Compile a constant/parameter expression; None when only the upstream could evaluate it."""
    if isinstance(node, ast.A_Const):
        value = None if node.isnull else _const_value(node.val)
        return Evaluator(lambda p, v=value: v)
    if isinstance(node, ast.ParamRef):
        n = node.number
        params.setdefault(n, expected if expected != ANY else types.TEXT)
        return Evaluator(lambda p, i=n - 1: p[i], is_array=_is_array(params[n]))
    if isinstance(node, ast.TypeCast):
        target = cast_type(node.typeName)
        if target is None:
            return None
        if isinstance(node.arg, ast.ParamRef):
            params[node.arg.number] = target
        inner = compile_expr(node.arg, params, target)
        if inner is None:
            return None
        return Evaluator(lambda p, f=inner, t=target: _cast(f(p), t), is_array=_is_array(target))
    if isinstance(node, ast.RowExpr):
        # A row constructor of mixed values (a row of the relation's columns): a tuple, which
        # the model's preprocessing reads column by column. Untyped $n in it are text.
        items = [_row_item(e, params) for e in node.args or ()]
        if any(i is None for i in items):
            return None
        # is_array: the row is the whole features value, as an array would be (not one VARIADIC element)
        return Evaluator(lambda p, its=items: tuple(i(p) for i in its), is_array=True)
    if isinstance(node, ast.A_ArrayExpr):
        elem = types.ELEMENT_OF.get(expected, types.FLOAT8) if _is_array(expected) else types.FLOAT8
        items = [compile_expr(e, params, elem) for e in node.elements or ()]
        if any(i is None for i in items):
            return None
        return Evaluator(lambda p, its=items: [i(p) for i in its], is_array=True)
    if isinstance(node, ast.A_Expr) and node.lexpr is None and len(node.name) == 1 \
            and node.name[0].sval in ("-", "+"):
        inner = compile_expr(node.rexpr, params, expected)
        if inner is None:
            return None
        sign = -1 if node.name[0].sval == "-" else 1
        return Evaluator(lambda p, f=inner: None if (v := f(p)) is None else sign * v)
    return None


def _is_array(oid: int) -> bool:
    return oid in types.ELEMENT_OF


def _const_value(val) -> Any:
    if isinstance(val, ast.Integer):
        return val.ival
    if isinstance(val, ast.Float):
        text = val.fval
        return int(text) if text.lstrip("-").isdigit() else float(text)
    if isinstance(val, ast.Boolean):
        return val.boolval
    if isinstance(val, ast.String):
        return val.sval
    if isinstance(val, ast.BitString):
        return val.bsval
    return None


def _cast(value: Any, oid: int) -> Any:
    """A constant cast the way PostgreSQL would read it (strings parse as the target type's input)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return types.decode(oid, value.encode(), False)
        except Exception as exc:
            raise PgError(sqlstate.INVALID_TEXT_REPRESENTATION,
                          f"invalid input syntax for type {oid}: \"{value}\"", detail=str(exc)) from None
    if oid in (types.FLOAT4, types.FLOAT8, types.NUMERIC):
        return float(value)
    if oid in (types.INT2, types.INT4, types.INT8):
        return int(round(value)) if isinstance(value, float) else int(value)
    if oid == types.TEXT or oid == types.VARCHAR:
        return str(value)
    if _is_array(oid) and isinstance(value, list):
        elem = types.ELEMENT_OF[oid]
        return [_cast(v, elem) if not isinstance(v, list) else _cast(v, oid) for v in value]
    return value

