"""The general strategy's pairs: pass one's rows read, predicted, and written as one binary COPY.

Pass one answers (model text, features float8[]) DataRows. Where every row has the same layout
(one model, features of one byte length: the usual `predict('p', ARRAY[a, b, …])` over a table)
they are read as one uint8 matrix, no Python per row: the model's features are decoded from its
columns, and the COPY rows are assembled around the same bytes by numpy. The feature arrays go
back byte for byte as pass one returned them, so pass two's `features = ARRAY[…]` finds them.
"""
from __future__ import annotations

import struct

import numpy as np

from protocol import sqlstate
from protocol.errors import PgError

from ...functions.predict import batch_features, run_plan
from ..arrays import float8_array_block, float8_arrays
from .common import resolve_model

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
COPY_TRAILER = b"\xff\xff"
_NULL = -1
_FLOAT4_OID = 700
# The temp table's column each function's predictions go to.
VALUE_COLUMNS = {"predict": "prediction", "predict_proba": "prediction_array", "predict_joint": "prediction_array",
                 "predict_label": "prediction_label", "decompose": "prediction_array"}


def read_pairs(rows: list[bytes]) -> list[tuple[str, np.ndarray | list[bytes]]]:
    """Binary DataRows of (text, float8[]) → [(model name, its feature cells)], the cells a uint8
    matrix (one row per pair) where they have one byte length, else a list of raw arrays. A pair
    with a NULL model or NULL features is left out: its lookup finds nothing and yields NULL, as
    predict of NULL would."""
    if not rows:
        return []
    block = _one_block(rows)
    if block is not None:
        return [block]
    by_model: dict[bytes, list[bytes]] = {}
    unpack32 = _I32.unpack_from
    for data in rows:
        # int16 column count (2), then int32 length and bytes of the model, then of the features
        length = unpack32(data, 2)[0]
        if length < 0:
            continue
        pos = 6 + length
        if unpack32(data, pos)[0] < 0:
            continue
        raw = data[6:pos]
        feats = by_model.get(raw)
        if feats is None:
            feats = by_model[raw] = []
        feats.append(data[pos + 4:])
    out = []
    for raw, feats in by_model.items():
        sizes = set(map(len, feats))
        if len(sizes) == 1:
            size = sizes.pop()
            feats = np.frombuffer(b"".join(feats), np.uint8).reshape(len(feats), size)
        out.append((raw.decode(), feats))
    return out


def _one_block(rows: list[bytes]) -> tuple[str, np.ndarray] | None:
    first = rows[0]
    width = len(first)
    length = _I32.unpack_from(first, 2)[0]
    if length < 0:
        return None
    pos = 6 + length
    if pos + 4 > width or _I32.unpack_from(first, pos)[0] != width - pos - 4:
        return None
    if len(rows) > 1 and len(set(map(len, rows))) != 1:
        return None
    cells = np.frombuffer(b"".join(rows), np.uint8).reshape(len(rows), width)
    prefix = pos + 4                                # column count, model, features length
    if len(rows) > 1 and not (cells[:, :prefix] == cells[0, :prefix]).all():
        return None
    return first[6:pos].decode(), cells[:, prefix:]


async def copy_rows(session, function: str, call_id: int, pairs, canonical: bool) -> list:
    """Predict the pairs of one call and return the binary COPY stream of (call_id, model,
    features, value) as a list of buffers (joined once, when sent)."""
    parts: list = [COPY_HEADER]
    head_id = _I16.pack(4) + _I32.pack(4) + _I32.pack(call_id)
    for name, cells in pairs:
        model = await resolve_model(session, name)
        regular = isinstance(cells, np.ndarray)
        X = batch_features(model, float8_array_block(cells) if regular else float8_arrays(cells), canonical)
        model_bytes = name.encode()
        head = head_id + _I32.pack(len(model_bytes)) + model_bytes
        values = run_plan(model, function, X)
        n = len(cells)
        if function == "predict_label":      # text: a width per row
            feats = [bytes(r) for r in cells] if regular else cells
            pack = _I32.pack
            for f, label in zip(feats, values):
                text = label.encode()
                parts += (head, pack(len(f)), f, pack(len(text)), text)
            continue
        pred = np.asarray(values, dtype=np.float64).reshape(n, -1)
        if function == "predict":
            pred = pred[:, :1]
        tails = _value_fields(function, pred)
        width = tails.shape[1]
        if regular:                     # one fixed-width block, assembled by numpy
            size = cells.shape[1]
            fixed = len(head) + 4
            block = np.empty((n, fixed + size + width), dtype=np.uint8)
            block[:, :fixed] = np.frombuffer(head + _I32.pack(size), dtype=np.uint8)
            block[:, fixed:fixed + size] = cells
            block[:, fixed + size:] = tails
            parts.append(block.reshape(-1).data)
        else:
            pack = _I32.pack
            for j, f in enumerate(cells):
                parts += (head, pack(len(f)), f, tails[j].tobytes())
    parts.append(COPY_TRAILER)
    return parts


def _float4(values: np.ndarray) -> np.ndarray:
    """float64 → float4 as PostgreSQL's real input does it: out of range (overflow, or a non-zero
    value that becomes 0) is an error, not inf or 0."""
    out = values.astype(np.float32)
    bad = (np.isinf(out) & np.isfinite(values)) | ((out == 0) & (values != 0))
    if bad.any():
        raise PgError(sqlstate.NUMERIC_VALUE_OUT_OF_RANGE,
                      f'"{float(values[bad][0])!r}" is out of range for type real')
    return out


def _value_fields(function: str, pred: np.ndarray) -> np.ndarray:
    """The binary COPY field of each row's value (real, or real[]) as a uint8 matrix, one row each."""
    n, k = pred.shape
    if function == "predict":
        block = np.empty(n, dtype=[("len", ">i4"), ("v", ">f4")])
        block["len"] = 4
        block["v"] = _float4(pred[:, 0])
    elif k == 0:        # an empty real[]: ndim 0
        row = _I32.pack(12) + struct.pack("!iii", 0, 0, _FLOAT4_OID)
        return np.tile(np.frombuffer(row, dtype=np.uint8), (n, 1))
    else:
        block = np.empty(n, dtype=[("len", ">i4"), ("ndim", ">i4"), ("hasnull", ">i4"), ("elem", ">i4"),
                                   ("dim", ">i4"), ("lb", ">i4"), ("vals", [("l", ">i4"), ("v", ">f4")], (k,))])
        block["len"] = 20 + 8 * k
        block["ndim"] = 1
        block["hasnull"] = 0
        block["elem"] = _FLOAT4_OID
        block["dim"] = k
        block["lb"] = 1
        block["vals"]["l"] = 4
        block["vals"]["v"] = _float4(pred)
    return block.view(np.uint8).reshape(n, -1)
