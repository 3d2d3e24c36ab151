"""Binary float8[]/real[] values straight into numpy: bound features, streamed feature columns.

PostgreSQL's binary array: int32 ndim, int32 has-null flag, uint32 element type, then per
dimension int32 length and lower bound, then per element an int32 length and the value. Values
of one byte length and one header are a regular block: one numpy view reads them all, with no
per-element Python.
"""
from __future__ import annotations

import struct

import numpy as np

from protocol import sqlstate, types
from protocol.errors import PgError

FLOAT8_ARRAY = types.ARRAY_OF[types.FLOAT8]
REAL_ARRAY = types.ARRAY_OF[types.FLOAT4]

_HEADER = struct.Struct("!iiI")                 # ndim, has_null, element oid
_RECORDS = {types.FLOAT8: np.dtype([("len", ">i4"), ("v", ">f8")]),
            types.FLOAT4: np.dtype([("len", ">i4"), ("v", ">f4")])}


def float_matrix(cells: np.ndarray) -> np.ndarray | None:
    """Binary float8[]/real[] values of one byte length, one per row of `cells` (uint8, n × size)
    → an (n, k) float64 matrix; None when they are not one regular block (NULL elements, other
    element types, headers that differ), for the caller's general decoding."""
    n, size = cells.shape
    if size < 12:
        return None
    ndim, has_null, elem = _HEADER.unpack(cells[0, :12].tobytes())
    record = _RECORDS.get(elem)
    if record is None or has_null or ndim < 1:
        return None
    header = 12 + 8 * ndim
    count, rest = divmod(size - header, record.itemsize)
    if rest or count < 0 or (n > 1 and not (cells[:, :header] == cells[0, :header]).all()):
        return None
    body = cells[:, header:]
    # A view in place where the rows are contiguous (a slice of wider rows, as pass one's are):
    # copying 100+ MB first costs more than the decoding (fresh pages).
    body = (body if body.strides[-1] == 1 else np.ascontiguousarray(body)).view(record).reshape(n, count)
    if not (body["len"] == record.itemsize - 4).all():
        return None
    return body["v"].astype(np.float64)


# One bound float8[]/real[] value of up to this many elements is read with one struct call (a
# prepared pgml.predict's features): ≈ 1 µs, where the numpy views of float_matrix cost ≈ 6 µs.
_SHORT = 256
_ONE_DIM = struct.Struct("!iiIii")              # ndim, has_null, element oid, length, lower bound
_ELEMENTS: dict[tuple[int, int], struct.Struct] = {}


def float_array(data) -> np.ndarray | None:
    """One binary one-dimensional float8[]/real[] value → a float64 vector; None otherwise."""
    if len(data) < 20:
        return None
    ndim, has_null, elem, length, _ = _ONE_DIM.unpack_from(data)
    if ndim != 1:
        return None
    if not has_null and 0 < length <= _SHORT and (elem == types.FLOAT8 or elem == types.FLOAT4):
        size = 12 if elem == types.FLOAT8 else 8
        if len(data) != 20 + size * length:
            return None
        layout = _ELEMENTS.get((elem, length))
        if layout is None:
            layout = _ELEMENTS[(elem, length)] = struct.Struct("!" + ("id" if size == 12 else "if") * length)
        values = layout.unpack_from(data, 20)
        if values[0::2].count(size - 4) != length:        # an element of another length: not ours to read
            return None
        return np.array(values[1::2], dtype=np.float64)
    data = bytes(data)                          # no numpy view into the framer's buffer
    X = float_matrix(np.frombuffer(data, np.uint8).reshape(1, -1))
    return None if X is None else X[0]


def float8_arrays(values: list[bytes | None]) -> np.ndarray:
    """Binary float8[] values (one per row) → a float64 matrix; NULL elements become NaN."""
    first = next((v for v in values if v is not None), None)
    if first is None:
        raise PgError(sqlstate.NULL_VALUE_NOT_ALLOWED, "features must not be NULL")
    if all(v is not None and len(v) == len(first) for v in values):
        X = float_matrix(np.frombuffer(b"".join(values), np.uint8).reshape(len(values), len(first)))
        if X is not None:
            return X
    rows = [types.decode(FLOAT8_ARRAY, bytes(v), True) if v is not None else None for v in values]
    if any(r is None for r in rows):
        raise PgError(sqlstate.NULL_VALUE_NOT_ALLOWED, "features must not be NULL")
    flat = [list(_flatten(r)) for r in rows]
    width = len(flat[0])
    if any(len(r) != width for r in flat):
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, "rows have different numbers of features")
    return np.array([[np.nan if x is None else x for x in r] for r in flat], dtype=np.float64)


def float8_array_block(cells: np.ndarray) -> np.ndarray:
    """A block of binary float8[] cells of one byte length (uint8, n × size) → float64 matrix."""
    X = float_matrix(cells)
    return X if X is not None else float8_arrays([bytes(r) for r in cells])


def _flatten(v):
    for x in v:
        if isinstance(x, list):
            yield from _flatten(x)
        else:
            yield x
