"""Labels: task inference and the class vocabulary of a classification label.

`infer_task(label, distinct_count)`: text/boolean → classification; float/numeric → regression;
integers → classification when they have ≤ 20 distinct values, else regression.

`Labels.fit(y, kind)`: the classes are the distinct (non-NULL) labels given, in sorted order
(text: by UTF-8 bytes = code point order; booleans: false, true; numbers: numeric order).
`encode(y)` → float64 class indices (a label not among the classes is -1: the caller decides;
NULL is PgError 22004 naming the label column); `decode(indices)` → the labels as Python values
(str, bool, int for integral numbers, float), for pgml.predict_label.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from protocol import sqlstate
from protocol.errors import PgError

from .columns import BOOLEAN, CATEGORICAL, NUMERIC, ColumnKind
from .decode import TextColumn

CLASSIFICATION_MAX_INTEGER_CLASSES = 20


def infer_task(label: ColumnKind | str, distinct_count: int) -> str:
    """'classification' or 'regression' for a label column (a ColumnKind, or 'text', 'boolean', 'integer', 'float')."""
    if isinstance(label, ColumnKind):
        if label.kind not in (CATEGORICAL, BOOLEAN, NUMERIC):
            raise PgError(sqlstate.DATATYPE_MISMATCH,
                          f'label column "{label.name}" has type {label.type_name}, which cannot be a label',
                          hint="Labels are numbers, booleans or text; cast the column in a view.")
        kind = {"categorical": "text", "boolean": "boolean"}.get(label.kind, "integer" if label.integer else "float")
    else:
        kind = label
    if kind in ("text", "boolean"):
        return "classification"
    if kind == "integer":
        return "classification" if distinct_count <= CLASSIFICATION_MAX_INTEGER_CLASSES else "regression"
    if kind == "float":
        return "regression"
    raise ValueError(f"unknown label kind {label!r}")


class Labels:
    """The classes of a classification label and the label ↔ index mapping."""

    def __init__(self, name: str, kind: str, classes: Sequence):
        self.name = name
        self.kind = kind                  # 'text', 'boolean' or 'number'
        self.classes = list(classes)      # Python values, sorted
        self._keys = _keys(self.kind, self.classes)

    @classmethod
    def fit(cls, y, label: ColumnKind | str = "number", name: str | None = None) -> "Labels":
        kind, col = _kind(label), label.name if isinstance(label, ColumnKind) else (name or "label")
        keys, null = _as_keys(y, kind)
        if null.any():
            raise _null(col)
        uniq = np.unique(keys)
        if kind == "text":
            classes = [bytes(k).decode("utf-8") for k in uniq.tolist()]
        elif kind == "boolean":
            classes = [bool(k) for k in uniq.tolist()]
        else:
            classes = [int(k) if float(k).is_integer() else float(k) for k in uniq.tolist()]
        return cls(col, kind, classes)

    def __len__(self) -> int:
        return len(self.classes)

    def encode(self, y) -> np.ndarray:
        keys, null = _as_keys(y, self.kind)
        if null.any():
            raise _null(self.name)
        if len(self._keys) == 0:
            return np.full(len(keys), -1.0)
        index = np.searchsorted(self._keys, keys)
        clipped = np.minimum(index, len(self._keys) - 1)
        return np.where(self._keys[clipped] == keys, clipped, -1).astype(np.float64)

    def decode(self, indices) -> list:
        index = np.asarray(indices, dtype=np.float64).reshape(-1)
        if ((index < 0) | (index >= len(self.classes)) | (index != np.floor(index))).any():
            raise PgError(sqlstate.INVALID_PARAMETER_VALUE, f"class index out of range for {len(self.classes)} classes")
        return [self.classes[i] for i in index.astype(np.int64).tolist()]

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "classes": self.classes}

    @classmethod
    def from_json(cls, obj: dict) -> "Labels":
        return cls(obj["name"], obj["kind"], obj["classes"])

    def __getstate__(self):
        return self.to_json()

    def __setstate__(self, state):
        self.__init__(state["name"], state["kind"], state["classes"])


def _kind(label) -> str:
    if isinstance(label, ColumnKind):
        return {"categorical": "text", "boolean": "boolean"}.get(label.kind, "number")
    return label if label in ("text", "boolean") else "number"


def _keys(kind: str, classes: list) -> np.ndarray:
    if kind == "text":
        return np.array([c.encode("utf-8") for c in classes], dtype=f"S{max([len(c.encode()) for c in classes] + [1])}")
    return np.array([float(c) for c in classes], dtype=np.float64)


def _as_keys(y: Any, kind: str) -> tuple[np.ndarray, np.ndarray]:
    if kind == "text":
        col = y if isinstance(y, TextColumn) else TextColumn.from_values(y)
        return col.values, col.null
    values = np.array([np.nan if v is None else float(v) for v in y], dtype=np.float64) \
        if isinstance(y, (list, tuple)) else np.asarray(y, dtype=np.float64)
    return values, np.isnan(values)


def _null(name: str) -> PgError:
    return PgError(sqlstate.NULL_VALUE_NOT_ALLOWED, f'label column "{name}" contains NULL',
                   hint=f'Train on the rows that have a label: a view with WHERE "{name}" IS NOT NULL.')
