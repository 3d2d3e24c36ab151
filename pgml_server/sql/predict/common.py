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
OUTPUT = {"predict": types.FLOAT4, "predict_proba": REAL_ARRAY, "predict_joint": REAL_ARRAY,
          "predict_label": types.TEXT, "decompose": REAL_ARRAY}
# Other names of those functions: pgml.score is pgml.predict (the seed's PRODUCT.md spells it so).
ALIASES = {"score": "predict"}


def predict_function(call: ast.FuncCall) -> str:
    """The predict function a call runs, aliases resolved (its column keeps the name written)."""
    name = call.funcname[-1].sval.lower()
    return ALIASES.get(name, name)


def type_name(name: str, *, array: bool = False) -> ast.TypeName:
    return ast.TypeName(names=(ast.String(sval=name),), arrayBounds=(ast.Integer(ival=-1),) if array else None,
                        typemod=-1)


def as_text(node) -> ast.TypeCast:
    return ast.TypeCast(arg=node, typeName=type_name("text"))


def as_float8_array(node) -> ast.TypeCast:
    return ast.TypeCast(arg=node, typeName=type_name("float8", array=True))


def feature_input(call: ast.FuncCall):
    """(expression, canonical) for the features of a predict call, as one float8[] for the upstream.

    An array (or a single array-valued argument) is sent as it is. A row constructor, `(a, b, c)`
    or `ROW(a, b, c)`, and VARIADIC scalars become `ARRAY[pgml.feature(a), pgml.feature(b), ...]`:
    the upstream turns each value of whatever type into one float8 (migration 2), and the model's
    inputs read them as canonical rows (ml/model.py), so mixed types take the same float8[] path."""
    args = [a.arg if isinstance(a, ast.NamedArgExpr) else a for a in call.args or ()]
    named = {a.name: a.arg for a in call.args or () if isinstance(a, ast.NamedArgExpr)}
    node = named["features"] if "features" in named else (args[1] if len(args) == 2 else None)
    if node is None:
        return _canonical_row(args[1:]), True
    if isinstance(node, ast.RowExpr):
        return _canonical_row(node.args or ()), True
    return node, False


def _canonical_row(values) -> ast.A_ArrayExpr:
    """`ARRAY[coalesce(pgml.feature(a), 'NaN'), ...]`: a NULL value comes as NaN (missing, as the model's
    inputs read it), so every array has the same binary layout and the stream path rewrites whole
    blocks of rows with numpy (an array with a NULL element, which carries a NULL bitmap and a
    shorter body, ends a block: with 5 % NULLs in 5 columns the blocks were ~4 rows long)."""
    feature = (ast.String(sval="pgml"), ast.String(sval="feature"))
    nan = ast.TypeCast(arg=ast.A_Const(val=ast.String(sval="NaN")), typeName=type_name("float8"))
    return ast.A_ArrayExpr(elements=tuple(
        ast.CoalesceExpr(args=(ast.FuncCall(funcname=feature, args=(v,), funcformat=0), nan)) for v in values))


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


def encode_predictions(function: str, values, binary: bool) -> list[bytes]:
    if function == "predict_label":                  # text is the same bytes in both formats
        return [v.encode() for v in values]
    if function == "predict":
        vals = np.asarray(values, dtype=np.float32).ravel()
        if binary:
            raw = vals.astype(">f4").tobytes()
            return [raw[i:i + 4] for i in range(0, len(raw), 4)]
        return [types.encode(types.FLOAT4, float(v), False) for v in vals]
    rows = np.asarray(values, dtype=np.float32)
    rows = rows.reshape(rows.shape[0], -1)
    return [types.encode(REAL_ARRAY, [float(x) for x in r], binary) for r in rows]
