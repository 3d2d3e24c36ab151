"""The local-function mechanism: signatures and argument binding (the call context is context.py).

Each `pgml.*` function is one `Function` registered by name with its PostgreSQL-style signature.
Binding (positional, named `=>`, defaults, VARIADIC) happens once, generically, when a statement
is compiled; a compiled call then only evaluates its argument expressions and calls `impl`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from protocol import sqlstate, types
from protocol.errors import PgError

REQUIRED = object()
ANY = 0           # a parameter whose type is decided by the value (project name or model id)
RECORD = 2249     # the record pseudo-type, for composite results in a target list


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    type: int
    default: Any = REQUIRED
    variadic: bool = False


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    params: tuple[Param, ...]
    columns: tuple[tuple[str, int], ...]   # result columns (one for a scalar function)
    impl: Callable[..., Any]                # impl(ctx, **bound_args) -> value | tuple | list | awaitable
    returns_set: bool = False
    description: str = ""

    @property
    def composite(self) -> bool:
        return len(self.columns) > 1

    def signature(self) -> str:
        def one(p: Param) -> str:
            text = f"{'VARIADIC ' if p.variadic else ''}{p.name} {type_name(p.type)}"
            return text if p.default is REQUIRED else f"{text} DEFAULT ..."
        return f"pgml.{self.name}({', '.join(one(p) for p in self.params)})"


FUNCTIONS: dict[str, Function] = {}


def register(name: str, params: list[Param], columns: list[tuple[str, int]], *,
             returns_set: bool = False, description: str = "") -> Callable:
    def wrap(impl: Callable) -> Callable:
        FUNCTIONS[name] = Function(name, tuple(params), tuple(columns), impl, returns_set, description)
        return impl
    return wrap


_TYPE_NAMES = {
    types.TEXT: "text", types.FLOAT4: "real", types.FLOAT8: "double precision", types.INT4: "integer",
    types.INT8: "bigint", types.BOOL: "boolean", types.JSONB: "jsonb", ANY: "text|bigint",
    types.ARRAY_OF[types.FLOAT4]: "real[]", types.ARRAY_OF[types.TEXT]: "text[]", RECORD: "record",
}


def type_name(oid: int) -> str:
    return _TYPE_NAMES.get(oid, str(oid))


_FLOAT_ARRAYS = frozenset({types.ARRAY_OF[types.FLOAT4], types.ARRAY_OF[types.FLOAT8]})


def coerce(value: Any, oid: int, what: str) -> Any:
    """Convert an evaluated argument to the Python value of the declared parameter type."""
    if value is None or oid == ANY:
        return value
    if type(value) is np.ndarray and oid in _FLOAT_ARRAYS:
        return value                 # bound float8[]/real[] features (the hot path of predict)
    try:
        if oid == types.TEXT:
            return value if isinstance(value, str) else str(value)
        if oid in (types.FLOAT4, types.FLOAT8):
            return float(value)
        if oid in (types.INT4, types.INT8, types.INT2):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if oid == types.BOOL:
            return _bool(value)
        if oid in (types.JSONB, types.JSON):
            return json.loads(value) if isinstance(value, str) else value
        if oid == types.ARRAY_OF[types.TEXT]:
            return [str(v) for v in (value if isinstance(value, list) else [value])]
        if oid in (types.ARRAY_OF[types.FLOAT4], types.ARRAY_OF[types.FLOAT8]):
            # a tuple is a row constructor: mixed values for the model's preprocessing
            return value if isinstance(value, (list, tuple, np.ndarray)) else [value]
    except (TypeError, ValueError, json.JSONDecodeError) as exc:
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE,
                      f"invalid value for argument {what} of type {type_name(oid)}: {value!r}",
                      detail=str(exc)) from None
    return value


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("t", "true", "y", "yes", "on", "1"):
        return True
    if text in ("f", "false", "n", "no", "off", "0"):
        return False
    raise ValueError(f"invalid input syntax for type boolean: {value!r}")


@dataclass
class BoundArgs:
    """Argument name → evaluator(params) → value; filled by `bind`."""
    evaluators: dict[str, Callable[[list], Any]] = field(default_factory=dict)
    variadic: list[Callable[[list], Any]] | None = None


def bind(fn: Function, positional: list, named: dict[str, Any]) -> BoundArgs:
    """Match call arguments to parameters the way PostgreSQL does (positional, then named)."""
    params = fn.params
    bound = BoundArgs()
    names = [p.name for p in params]
    variadic = params[-1] if params and params[-1].variadic else None
    fixed = params[:-1] if variadic else params
    if len(positional) > len(fixed) and variadic is None:
        raise _no_match(fn, f"pgml.{fn.name} takes at most {len(params)} arguments, got {len(positional)}")
    for param, arg in zip(fixed, positional):
        bound.evaluators[param.name] = arg
    extra = positional[len(fixed):]
    if variadic is not None and extra:
        if len(extra) == 1 and getattr(extra[0], "is_array", False):
            bound.evaluators[variadic.name] = extra[0]
        else:
            bound.variadic = extra
    for name, arg in named.items():
        if name not in names:
            raise _no_match(fn, f"pgml.{fn.name} has no parameter named \"{name}\"")
        if name in bound.evaluators:
            raise _no_match(fn, f"argument \"{name}\" of pgml.{fn.name} given more than once")
        bound.evaluators[name] = arg
    for param in params:
        given = param.name in bound.evaluators or (param.variadic and bound.variadic)
        if not given and param.default is REQUIRED:
            raise _no_match(fn, f"pgml.{fn.name} needs argument \"{param.name}\"")
    return bound


def _no_match(fn: Function, message: str) -> PgError:
    return PgError(sqlstate.UNDEFINED_FUNCTION, message,
                   hint=f"The signature is {fn.signature()}.")


def evaluate(fn: Function, bound: BoundArgs, params: list) -> dict[str, Any]:
    """Evaluate bound arguments against the statement's parameter values; apply defaults."""
    values: dict[str, Any] = {}
    for param in fn.params:
        ev = bound.evaluators.get(param.name)
        if ev is not None:
            values[param.name] = coerce(ev(params), param.type, param.name)
        elif param.variadic and bound.variadic is not None:
            # VARIADIC values are a row: one value per column, of any type (a tuple, as a row constructor)
            values[param.name] = tuple(e(params) for e in bound.variadic)
        else:
            values[param.name] = param.default
    return values
