"""The `preprocess` argument of pgml.train (PostgresML 2.x keys), validated against the relation's columns.

    {"col": {"impute": "mean", "scale": "standard", "encode": "one_hot"},
     "month": {"encode": {"ordinal": ["jan", "feb", "mar"]}}}

impute  mean | median | mode | min | max | zero | error
scale   preserve | standard | min_max | max_abs | robust
encode  native | target | one_hot | ordinal (as {"ordinal": [values in order]}); "none" is read as native

A column named here overrides only the keys it names; the rest stay automatic (fit.py). Every
problem is PgError 22023 (invalid_parameter_value) naming the column and the valid values.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from protocol import sqlstate
from protocol.errors import PgError

from .columns import ARRAY, TEMPORAL, ColumnKind

IMPUTE = ("mean", "median", "mode", "min", "max", "zero", "error")
SCALE = ("preserve", "standard", "min_max", "max_abs", "robust")
ENCODE = ("native", "target", "one_hot", "ordinal")
_KEYS = ("impute", "scale", "encode")


@dataclass(frozen=True)
class ColumnSpec:
    """What `preprocess` says about one column; None = choose automatically."""
    impute: str | None = None
    scale: str | None = None
    encode: str | None = None
    ordinal: tuple | None = None      # the ordered values of {"ordinal": [...]}

    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in _KEYS if getattr(self, k) is not None}
        if self.ordinal is not None:
            out["encode"] = {"ordinal": list(self.ordinal)}
        return out

    @classmethod
    def from_json(cls, obj: Mapping) -> "ColumnSpec":
        return _column_spec("?", obj, None)


def parse_preprocess(obj: Any, columns: Sequence[ColumnKind | str]) -> dict[str, ColumnSpec]:
    """`preprocess` (a dict, or its JSON text; None or {} for none) → {column: ColumnSpec}.

    `columns` are the feature columns (ColumnKind, or names when the kinds are not known yet: then
    only the names are checked, not whether an option suits the column's kind).
    """
    if obj is None:
        return {}
    if isinstance(obj, (str, bytes)):
        try:
            obj = json.loads(obj)
        except ValueError as exc:
            raise _bad(f"preprocess is not valid JSON: {exc}") from None
    if not isinstance(obj, Mapping):
        raise _bad("preprocess must be a JSON object of column names", hint='e.g. {"age": {"impute": "mean"}}')
    kinds = {c.name if isinstance(c, ColumnKind) else c: c for c in columns}
    out = {}
    for name, options in obj.items():
        if name not in kinds:
            raise _bad(f'preprocess names column "{name}", which is not a feature column of the relation',
                       hint="Feature columns: " + ", ".join(f'"{c}"' for c in kinds) + ".")
        kind = kinds[name] if isinstance(kinds[name], ColumnKind) else None
        out[name] = _column_spec(name, options, kind)
    return out


def _column_spec(name: str, options: Any, kind: ColumnKind | None) -> ColumnSpec:
    if not isinstance(options, Mapping):
        raise _bad(f'preprocess for column "{name}" must be an object with impute, scale and/or encode',
                   hint=f'e.g. {{"{name}": {{"impute": "mean"}}}}')
    for key in options:
        if key not in _KEYS:
            raise _bad(f'preprocess for column "{name}" has an unknown key "{key}"',
                       hint="Valid keys: impute, scale, encode.")
    impute = _choice(name, "impute", options.get("impute"), IMPUTE)
    scale = _choice(name, "scale", options.get("scale"), SCALE)
    encode, ordinal = options.get("encode"), None
    if isinstance(encode, Mapping):
        if list(encode) != ["ordinal"]:
            raise _bad(f'preprocess for column "{name}": encode as an object must be {{"ordinal": [...]}}',
                       hint="Valid encodings: " + ", ".join(ENCODE) + '; ordinal also as {"ordinal": ["low", "high"]}.')
        ordinal = _ordinal(name, encode["ordinal"])
        encode = "ordinal"
    elif encode == "none":
        encode = "native"
    else:
        encode = _choice(name, "encode", encode, ENCODE)
        if encode == "ordinal":
            raise _bad(f'preprocess for column "{name}": ordinal encoding needs the values in order',
                       hint=f'e.g. {{"{name}": {{"encode": {{"ordinal": ["low", "medium", "high"]}}}}}}')
    if kind is not None and encode not in (None, "native") and kind.kind in (TEMPORAL, ARRAY):
        raise _bad(f'preprocess for column "{name}": encode {encode} does not apply to a {kind.kind} column '
                   f"({kind.type_name})", hint="Encodings apply to categorical, numeric and boolean columns.")
    return ColumnSpec(impute, scale, encode, ordinal)


def _choice(name: str, key: str, value: Any, valid: tuple) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in valid:
        raise _bad(f'preprocess for column "{name}": unknown {key} {json.dumps(value)}',
                   hint=f"Valid values for {key}: " + ", ".join(valid) + ".")
    return value


def _ordinal(name: str, values: Any) -> tuple:
    if not isinstance(values, list) or not values:
        raise _bad(f'preprocess for column "{name}": {{"ordinal": ...}} needs a non-empty array of values')
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (str, int, float)) or \
                (isinstance(v, float) and not math.isfinite(v)):
            raise _bad(f'preprocess for column "{name}": ordinal values must be strings or numbers, '
                       f"got {json.dumps(v)}")
        out.append(v)
    if len(set(out)) != len(out):
        raise _bad(f'preprocess for column "{name}": ordinal values must be distinct')
    return tuple(out)


def _bad(message: str, hint: str | None = None) -> PgError:
    return PgError(sqlstate.INVALID_PARAMETER_VALUE, message, hint=hint)
