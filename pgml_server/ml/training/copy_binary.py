"""PostgreSQL binary COPY output → numpy columns, for loading training data.

The stream is: the 11-byte signature `PGCOPY\\n\\377\\r\\n\\0`, int32 flags, int32 header-extension
length and the extension, then per row an int16 field count and per field an int32 length (-1 for
NULL) and that many bytes, and finally the int16 trailer -1. All integers are big-endian.

Two paths:
- fast: every column fixed-width (bool, int2/4/8, float4/8) and every row the same length, which
  holds whenever there is no NULL. The body is then one structured numpy array over the bytes —
  no Python loop over rows — and every count and length field is checked, which proves the layout.
- general (numeric or text columns): a Python pass over the rows reads only the lengths of the
  variable-width fields; numpy checks every other count and length word, gathers the fixed-width
  columns, and turns short ASCII text into a str array. Numeric is decoded per value. A NULL or a
  malformed stream falls back to an exact field-by-field scan that says what and where.

A NULL anywhere is an error (22004) naming its column: models cannot train on missing values.
"""
from __future__ import annotations

import struct
from typing import Sequence

import numpy as np

from . import TrainingError

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_HEADER = struct.Struct(">ii")
_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")

BOOL, INT2, INT4, INT8, FLOAT4, FLOAT8, NUMERIC = 16, 21, 23, 20, 700, 701, 1700
TEXT, VARCHAR, BPCHAR, NAME, CHAR = 25, 1043, 1042, 19, 18

# oid → (big-endian wire dtype, native dtype of the returned column)
FIXED_WIDTH = {
    BOOL: (np.dtype("u1"), np.dtype(bool)),
    INT2: (np.dtype(">i2"), np.dtype(np.int16)),
    INT4: (np.dtype(">i4"), np.dtype(np.int32)),
    INT8: (np.dtype(">i8"), np.dtype(np.int64)),
    FLOAT4: (np.dtype(">f4"), np.dtype(np.float32)),
    FLOAT8: (np.dtype(">f8"), np.dtype(np.float64)),
}
TEXT_TYPES = {TEXT, VARCHAR, BPCHAR, NAME, CHAR}
SUPPORTED = set(FIXED_WIDTH) | TEXT_TYPES | {NUMERIC}

_NUMERIC_NEG, _NUMERIC_NAN, _NUMERIC_PINF, _NUMERIC_NINF = 0x4000, 0xC000, 0xD000, 0xF000


def parse_copy_binary(data: bytes | bytearray | memoryview, oids: Sequence[int],
                      names: Sequence[str]) -> dict[str, np.ndarray]:
    """The columns of a binary COPY stream, by name, in order.

    `oids` are the columns' type OIDs as the query produced them; numeric becomes float64, text
    types become numpy str arrays, the others their own numpy dtype. Raises TrainingError 22004
    for a NULL, 0A000 for a type it cannot read and 22P03 (invalid_binary_representation) for a
    malformed stream.
    """
    if len(oids) != len(names):
        raise ValueError("one name per column type is needed")
    for oid, name in zip(oids, names):
        if oid not in SUPPORTED:
            raise TrainingError("0A000", f'column "{name}" has a type (oid {oid}) that training cannot read',
                                hint="Cast it to a number (or text, for a classification label).")
    buf = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    start = _body_start(buf)
    columns = _fast_path(buf, start, oids) if all(o in FIXED_WIDTH for o in oids) else None
    if columns is None:
        columns = _general_path(buf, start, oids, names)
    return dict(zip(names, columns))


def copy_binary_matrix(data: bytes | bytearray | memoryview, oids: Sequence[int],
                       names: Sequence[str] | None = None) -> np.ndarray:
    """The stream as one C-ordered float64 matrix (rows × columns); every column must be numeric."""
    names = list(names) if names is not None else [f"column{i + 1}" for i in range(len(oids))]
    for oid, name in zip(oids, names):
        if oid in TEXT_TYPES:
            raise TrainingError("42804", f'column "{name}" is text, not a number')
    if oids and all(oid == FLOAT8 for oid in oids):
        buf = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        matrix = _float8_matrix(buf, _body_start(buf), len(oids))
        if matrix is not None:
            return matrix
    columns = parse_copy_binary(data, oids, names)
    if not columns:
        return np.empty((0, 0))
    matrix = np.empty((len(next(iter(columns.values()))), len(columns)), dtype=np.float64)
    for j, column in enumerate(columns.values()):
        matrix[:, j] = column
    return matrix


# ---------------------------------------------------------------- header

def _body_start(buf) -> int:
    if len(buf) < len(SIGNATURE) + _HEADER.size + 2 or bytes(buf[:len(SIGNATURE)]) != SIGNATURE:
        raise _malformed("the PGCOPY signature is missing")
    flags, extension = _HEADER.unpack_from(buf, len(SIGNATURE))
    if flags & (1 << 16):
        raise _malformed("rows carry OIDs, which this reader does not expect")
    start = len(SIGNATURE) + _HEADER.size + extension
    if extension < 0 or start + 2 > len(buf):
        raise _malformed("the header extension runs past the end")
    return start


def _malformed(why: str) -> TrainingError:
    return TrainingError("22P03", f"malformed binary COPY data: {why}")


# ---------------------------------------------------------------- fast path

def _fast_path(buf, start: int, oids: Sequence[int]) -> list[np.ndarray] | None:
    """Columns read through one structured dtype, or None when the rows are not uniform."""
    fields = [("count", ">i2")]
    for j, oid in enumerate(oids):
        fields += [(f"l{j}", ">i4"), (f"v{j}", FIXED_WIDTH[oid][0])]
    row = np.dtype(fields)
    body = len(buf) - start - 2
    if body % row.itemsize or _INT16.unpack_from(buf, len(buf) - 2)[0] != -1:
        return None
    rows = np.frombuffer(buf, dtype=row, count=body // row.itemsize, offset=start)
    # Row 0 starts at a true row boundary; each checked count and length then proves that the
    # next field starts where the dtype says, so passing every check means the layout is exact.
    if not (rows["count"] == len(oids)).all():
        return None
    for j, oid in enumerate(oids):
        if not (rows[f"l{j}"] == FIXED_WIDTH[oid][0].itemsize).all():
            return None
    return [_native(rows[f"v{j}"], oid) for j, oid in enumerate(oids)]


def _float8_matrix(buf, start: int, ncols: int) -> np.ndarray | None:
    """All-float8 rows as one matrix through 2-D strided views (the common training case)."""
    row_size = 2 + 12 * ncols
    body = len(buf) - start - 2
    if body % row_size or _INT16.unpack_from(buf, len(buf) - 2)[0] != -1:
        return None
    n = body // row_size
    counts = np.ndarray((n,), dtype=">i2", buffer=buf, offset=start, strides=(row_size,))
    lengths = np.ndarray((n, ncols), dtype=">i4", buffer=buf, offset=start + 2, strides=(row_size, 12))
    if not ((counts == ncols).all() and (lengths == 8).all()):  # the same proof as in _fast_path
        return None
    values = np.ndarray((n, ncols), dtype=">f8", buffer=buf, offset=start + 6, strides=(row_size, 12))
    return values.astype(np.float64)


def _native(values: np.ndarray, oid: int) -> np.ndarray:
    if oid == BOOL:
        return values != 0
    return values.astype(FIXED_WIDTH[oid][1])


# ---------------------------------------------------------------- general path

def _general_path(buf, start: int, oids: Sequence[int], names: Sequence[str]) -> list[np.ndarray]:
    raw = np.frombuffer(buf, dtype=np.uint8)
    located = _layout_scan(buf, raw, start, oids)
    if located is None:  # a NULL or a malformed stream: the exact scan says which and where
        located = _scan(buf, start, oids, names)
    offsets, lengths = located
    columns = []
    for j, oid in enumerate(oids):
        if oid in FIXED_WIDTH:
            columns.append(_gather_fixed(raw, np.asarray(offsets[j], dtype=np.int64), oid, names[j]))
        elif oid == NUMERIC:
            columns.append(np.array([_numeric(buf, o, n) for o, n in zip(offsets[j], lengths[j])],
                                    dtype=np.float64))
        else:
            columns.append(_texts(buf, raw, np.asarray(offsets[j], dtype=np.int64),
                                  np.asarray(lengths[j], dtype=np.int64)))
    return columns


def _layout_scan(buf, raw: np.ndarray, start: int, oids: Sequence[int]):
    """Field offsets when only the variable-width columns vary: the Python loop reads just their lengths.

    Fixed-width fields sit at constant distances from the row start or from the end of the
    variable field before them. The loop trusts that; numpy then checks every count and length
    word at the computed places, which (as in the fast path) proves the layout. Returns None on
    any surprise, for the exact scan to explain.
    """
    widths = [FIXED_WIDTH[o][0].itemsize if o in FIXED_WIDTH else None for o in oids]
    gaps, gap = [], 2                  # bytes from the previous variable field's end to its length word
    for width in widths:
        if width is None:
            gaps.append(gap)
            gap = 0
        else:
            gap += 4 + width
    row_starts, var_offsets, var_lengths = _walk_rows(buf, start, gaps, gap)
    if row_starts is None:
        return None
    return _verify_layout(raw, oids, widths, row_starts, var_offsets, var_lengths)


def _walk_rows(buf, pos: int, gaps: list[int], tail: int):
    if len(gaps) == 1:
        return _walk_rows_one_variable(buf, pos, gaps[0], tail)
    end, unpack32 = len(buf) - 2, _INT32.unpack_from
    row_starts: list[int] = []
    offsets: list[list[int]] = [[] for _ in gaps]
    lengths: list[list[int]] = [[] for _ in gaps]
    try:
        while pos < end:
            row_starts.append(pos)
            for k, gap in enumerate(gaps):
                pos += gap
                (length,) = unpack32(buf, pos)
                if length < 0:
                    return None, None, None
                pos += 4
                offsets[k].append(pos)
                lengths[k].append(length)
                pos += length
            pos += tail
    except struct.error:
        return None, None, None
    if pos != end or _INT16.unpack_from(buf, end)[0] != -1:
        return None, None, None
    return row_starts, offsets, lengths


def _walk_rows_one_variable(buf, pos: int, gap: int, tail: int):
    """_walk_rows for one variable-width column (a text label): the tightest loop we can write."""
    end, unpack32 = len(buf) - 2, _INT32.unpack_from
    offsets: list[int] = []
    append = offsets.append
    try:
        while pos < end:
            (length,) = unpack32(buf, pos + gap)
            if length < 0:
                return None, None, None
            pos += gap + 4
            append(pos)
            pos += length + tail
    except struct.error:
        return None, None, None
    if pos != end or _INT16.unpack_from(buf, end)[0] != -1:
        return None, None, None
    data = np.asarray(offsets, dtype=np.int64)
    # Row starts and lengths follow from the offsets: no need to collect them in the loop.
    following = np.append(data[1:], end + gap + 4)
    lengths = following - data - (tail + gap + 4)
    return data - 4 - gap, [data], [lengths]


def _verify_layout(raw, oids, widths, row_starts, var_offsets, var_lengths):
    starts = np.asarray(row_starts, dtype=np.int64)
    if len(starts) and not (_gather(raw, starts, np.dtype(">i2")) == len(oids)).all():
        return None
    offsets, lengths = [], []
    base, distance, k = starts, 2, 0
    for width in widths:
        if width is None:
            data = np.asarray(var_offsets[k], dtype=np.int64)
            size = np.asarray(var_lengths[k], dtype=np.int64)
            offsets.append(data)
            lengths.append(size)
            base, distance, k = data + size, 0, k + 1
            continue
        word = base + distance
        if len(word) and not (_gather(raw, word, np.dtype(">i4")) == width).all():
            return None
        offsets.append(word + 4)
        lengths.append(None)
        distance += 4 + width
    return offsets, lengths


def _gather(raw: np.ndarray, offsets: np.ndarray, wire: np.dtype) -> np.ndarray:
    # A sliding window of itemsize bytes at every position: indexing it copies only what is taken.
    windows = np.lib.stride_tricks.as_strided(raw, shape=(max(len(raw) - wire.itemsize + 1, 0), wire.itemsize),
                                              strides=(1, 1), writeable=False)
    return np.ascontiguousarray(windows[offsets]).reshape(-1).view(wire)


def _texts(buf, raw: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """UTF-8 fields → a numpy str array; short ASCII labels (the usual case) without a Python loop."""
    width = int(lengths.max()) if len(lengths) else 0
    if 0 < width <= 64:
        index = offsets[:, None] + np.arange(width, dtype=np.int64)
        inside = np.arange(width) < lengths[:, None]
        chars = np.where(inside, raw[np.minimum(index, len(raw) - 1)], 0).astype(np.uint8)
        # ASCII only (UTF-8 multibyte needs a real decode) and no NUL, which 'S' would strip.
        if chars.max() < 128 and (chars[inside] != 0).all():
            return chars.view(f"S{width}").reshape(-1).astype(f"U{width}")
    return np.array([str(buf[o:o + n], "utf-8") for o, n in zip(offsets.tolist(), lengths.tolist())], dtype=str)


def _scan(buf, pos: int, oids: Sequence[int], names: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
    """Where every field starts and how long it is, one row at a time."""
    ncols, end = len(oids), len(buf)
    offsets: list[list[int]] = [[] for _ in oids]
    lengths: list[list[int]] = [[] for _ in oids]
    unpack16, unpack32 = _INT16.unpack_from, _INT32.unpack_from
    row = 0
    try:
        while True:
            (count,) = unpack16(buf, pos)
            pos += 2
            if count == -1:
                break
            if count != ncols:
                raise _malformed(f"row {row + 1} has {count} fields, expected {ncols}")
            for j in range(ncols):
                (length,) = unpack32(buf, pos)
                pos += 4
                if length < 0:
                    raise _null(names[j], row)
                offsets[j].append(pos)
                lengths[j].append(length)
                pos += length
            row += 1
    except struct.error:
        raise _malformed("the data ends in the middle of a row") from None
    if pos > end:
        raise _malformed("a field runs past the end of the data")
    return offsets, lengths


def _null(name: str, row: int) -> TrainingError:
    return TrainingError("22004", f'column "{name}" contains NULL (row {row + 1} of the snapshot)',
                         hint="Filter those rows out (WHERE … IS NOT NULL) or impute the values "
                              "(coalesce(…)) in a view, and train on the view.")


def _gather_fixed(raw: np.ndarray, offsets: np.ndarray, oid: int, name: str) -> np.ndarray:
    wire = FIXED_WIDTH[oid][0]
    if len(offsets) and offsets.max() + wire.itemsize > len(raw):
        raise _malformed(f'column "{name}" runs past the end of the data')
    return _native(_gather(raw, offsets, wire), oid)


def _numeric(buf, pos: int, length: int) -> float:
    """One binary numeric: int16 ndigits, weight, sign, dscale, then base-10000 digits."""
    ndigits, weight, sign, _ = struct.unpack_from(">hhHh", buf, pos)
    if sign == _NUMERIC_NAN:
        return float("nan")
    if sign in (_NUMERIC_PINF, _NUMERIC_NINF):
        return float("inf") if sign == _NUMERIC_PINF else float("-inf")
    if ndigits == 0:
        return 0.0
    digits = struct.unpack_from(f">{ndigits}h", buf, pos + 8)
    mantissa = 0
    for d in digits:
        mantissa = mantissa * 10000 + d
    exponent = 4 * (weight - ndigits + 1)
    # int / int is correctly rounded in Python, so the float is the nearest to the exact value.
    value = mantissa * 10 ** exponent if exponent >= 0 else mantissa / 10 ** -exponent
    return -float(value) if sign == _NUMERIC_NEG else float(value)
