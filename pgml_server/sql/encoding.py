"""Values on the wire for local answers: bound parameters in, result rows out, and PostgreSQL's
one rule for format codes.
"""
from __future__ import annotations

import struct
from typing import Any

from protocol import messages as m
from protocol import types

from ..functions.base import RECORD
from ..ml import temporal
from .arrays import float_array

_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_FLOAT_ARRAYS = frozenset({types.ARRAY_OF[types.FLOAT8], types.ARRAY_OF[types.FLOAT4]})


def format_code(formats, i: int) -> int:
    """The format of column (or parameter) i: no codes mean text for all, one code applies to
    all, otherwise one code per position (PostgreSQL's rule for Bind's parameter and result codes)."""
    if not formats:
        return 0
    if len(formats) == 1:
        return formats[0]
    return formats[i] if i < len(formats) else 0


# ---------------------------------------------------------------- parameters

def decode_param(oid: int, data, binary: bool) -> Any:
    """A bound parameter as a Python value; a binary float array without NULLs goes straight into
    numpy (the hot path of a prepared pgml.predict: no per-element Python work)."""
    if binary and oid in _FLOAT_ARRAYS:
        X = float_array(data)
        if X is not None:
            return X
    if oid in temporal.OIDS:        # a date, timestamp, time or interval feature: its epoch, as SQL gives it
        return temporal.epoch_of_wire(oid, data, binary)
    return types.decode(oid, bytes(data), binary)


# ---------------------------------------------------------------- results

def encode_value(oid: int, value: Any, binary: bool) -> bytes | None:
    if value is None:
        return None
    if oid == RECORD:
        return _record_binary(value) if binary else _record_text(value)
    return types.encode(oid, value, binary)


def _record_text(values: tuple) -> bytes:
    parts = []
    for v in values:
        if v is None:
            parts.append("")
            continue
        text = types.encode(_guess_oid(v), v, False).decode()
        if text == "" or any(c in text for c in ',()"\\ '):
            text = '"' + text.replace("\\", "\\\\").replace('"', '""') + '"'
        parts.append(text)
    return ("(" + ",".join(parts) + ")").encode()


def _record_binary(values: tuple) -> bytes:
    out = [_I32.pack(len(values))]
    for v in values:
        oid = _guess_oid(v)
        out.append(_U32.pack(oid))
        if v is None:
            out.append(_I32.pack(-1))
        else:
            data = types.encode(oid, v, True)
            out.append(_I32.pack(len(data)) + data)
    return b"".join(out)


def _guess_oid(v: Any) -> int:
    if isinstance(v, bool):
        return types.BOOL
    if isinstance(v, int):
        return types.INT8
    if isinstance(v, float):
        return types.FLOAT8
    if isinstance(v, (dict, list)):
        return types.JSONB
    return types.TEXT


def row_description(columns: list[tuple[str, int]], formats: list[int]) -> bytes:
    return m.RowDescription([m.FieldDescription(name, 0, 0, oid, types.type_size(oid), -1, format_code(formats, i))
                             for i, (name, oid) in enumerate(columns)]).encode()


def encode_rows(columns: list[tuple[str, int]], rows: list[tuple], formats: list[int]) -> bytes:
    n = len(columns)
    fmts = [bool(format_code(formats, i)) for i in range(n)]
    oids = [oid for _, oid in columns]
    data_row = m.data_row
    return b"".join(data_row([encode_value(oids[i], r[i], fmts[i]) for i in range(n)]) for r in rows)


def with_formats(fields: list, formats: list[int]) -> list:
    """An upstream RowDescription's fields with the result formats a client's portal asked for."""
    return [m.FieldDescription(f.name, f.table_oid, f.column_attr, f.type_oid, f.type_size, f.type_mod,
                               format_code(formats, i)) for i, f in enumerate(fields)]
