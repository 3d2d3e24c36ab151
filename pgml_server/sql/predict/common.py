"""What both predict strategies share: the call's parts, its output types, the model it names,
and the encoding of predictions."""
from __future__ import annotations

from typing import Any

import numpy as np
from pglast import ast

from protocol import types

from ...functions.context import CallContext
from ...functions.predict import authorize, model_for
from ...ml.cache import CachedModel
from ..arrays import REAL_ARRAY

# Function → the type of its result column.
OUTPUT = {"predict": types.FLOAT4, "predict_proba": REAL_ARRAY, "predict_joint": REAL_ARRAY, "decompose": REAL_ARRAY}


def type_name(name: str, *, array: bool = False) -> ast.TypeName:
    return ast.TypeName(names=(ast.String(sval=name),), arrayBounds=(ast.Integer(ival=-1),) if array else None,
                        typemod=-1)


def as_text(node) -> ast.TypeCast:
    return ast.TypeCast(arg=node, typeName=type_name("text"))


def as_float8_array(node) -> ast.TypeCast:
    return ast.TypeCast(arg=node, typeName=type_name("float8", array=True))


def features_node(call: ast.FuncCall):
    """The features argument of a predict call as one array expression (VARIADIC form included)."""
    args = [a.arg if isinstance(a, ast.NamedArgExpr) else a for a in call.args or ()]
    named = {a.name: a.arg for a in call.args or () if isinstance(a, ast.NamedArgExpr)}
    if "features" in named:
        return named["features"]
    rest = args[1:]
    if len(rest) == 1:
        return rest[0]
    return ast.A_ArrayExpr(elements=tuple(rest))


def model_node(call: ast.FuncCall):
    for a in call.args or ():
        if isinstance(a, ast.NamedArgExpr) and a.name == "project_name":
            return a.arg
    first = call.args[0]
    return first.arg if isinstance(first, ast.NamedArgExpr) else first


async def resolve_model(session, project: Any) -> CachedModel:
    """The cached model for a project name or model id, loaded if needed, that this session's
    role may read (its first use in the session reads its registry row as the client)."""
    ctx = CallContext(session, extended=True)
    entry = model_for(ctx, project)
    model = entry if isinstance(entry, CachedModel) else await entry
    await authorize(ctx, model)
    return model


def encode_predictions(function: str, values: np.ndarray, binary: bool) -> list[bytes]:
    if function == "predict":
        vals = np.asarray(values, dtype=np.float32).ravel()
        if binary:
            raw = vals.astype(">f4").tobytes()
            return [raw[i:i + 4] for i in range(0, len(raw), 4)]
        return [types.encode(types.FLOAT4, float(v), False) for v in vals]
    rows = np.asarray(values, dtype=np.float32)
    rows = rows.reshape(rows.shape[0], -1)
    return [types.encode(REAL_ARRAY, [float(x) for x in r], binary) for r in rows]
