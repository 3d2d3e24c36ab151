"""What a model artifact holds, and how predict inputs become the estimator's features.

Since preprocessing, an artifact is a `ModelBundle`: the estimator's own pickle, the fitted
Preprocessor, the Labels of text classes, and the pgml.feature() value of every category the
preprocessor knows. Artifacts from before hold the bare estimator; they load as models without
preprocessing, whose features are numbers in the relation's column order, as before.

`ModelInputs` turns each kind of predict input into features:
- numbers (`pgml.predict(p, ARRAY[...])`, bound float8[]): Preprocessor.transform_numbers, with the
  affine fast path (impute and scale elementwise) when every input is a plain number;
- a row of Python values (a row constructor or VARIADIC scalars answered locally): the row
  function compiled once per model (preprocessing/rows.py: per-column plans, a few µs, equal to
  Preprocessor.transform_row bit for bit, which answers what the plans do not cover);
- canonical rows (the SQL rewrites send `ARRAY[pgml.feature(a), pgml.feature(b), ...]`, computed by
  the upstream: numbers, booleans 0/1, temporal values in seconds, categories as their 53-bit
  hash): the hashes are mapped back to the categories by one searchsorted per column, then
  Preprocessor.transform as for a table. No per-value Python on the batch paths.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocol import sqlstate
from protocol.errors import PgError

from .preprocessing import ARRAY, CATEGORICAL, TEMPORAL, Labels, Preprocessor, TextColumn
from .preprocessing.rows import compile_row
from .temporal import epoch_of_text

_INF = float("inf")
# np.add.reduce over the whole array: what ndarray.sum() calls, without its Python-level wrapper frame.
_SUM = np.add.reduce

_NOT_TEXT = b"\xff"        # never a category: UTF-8 has no 0xFF byte (the "unknown" slot)


@dataclass
class ModelBundle:
    estimator_bytes: bytes
    preprocessor: Preprocessor | None = None
    labels: Labels | None = None
    category_hashes: dict[str, list[float]] = field(default_factory=dict)   # column → pgml.feature of each

    def dumps(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)


def unbundle(obj: Any) -> tuple[Any, ModelBundle | None]:
    """(estimator, bundle) from an unpickled artifact; a bare estimator has no bundle."""
    if isinstance(obj, ModelBundle):
        return pickle.loads(obj.estimator_bytes), obj
    return obj, None


def categorical_vocabularies(pre: Preprocessor) -> dict[str, list[str]]:
    """The categories (as text) of every text column the preprocessor encodes."""
    out = {}
    for column in pre._columns:
        if column.kind.kind == CATEGORICAL and getattr(column, "text", False):
            out[column.kind.name] = [bytes(v).decode("utf-8", "replace") for v in column.vocab.tolist()]
    return out


class ModelInputs:
    """Predict inputs → features for a model with a preprocessor (see the module docstring)."""

    def __init__(self, bundle: ModelBundle) -> None:
        pre = bundle.preprocessor
        self.pre = pre
        self.kinds = pre.kinds
        self.width = len(pre.input_names())
        self.affine = pre.affine()
        self.identity = self.affine is not None and bool((self.affine[1] == 0).all() and (self.affine[2] == 1).all())
        self.columns = [k.name for k in self.kinds]
        self.has_arrays = any(k.kind == ARRAY for k in self.kinds)
        self.temporal = [(i, k.subkind) for i, k in enumerate(self.kinds) if k.kind == TEMPORAL]
        self.row = compile_row(pre) or pre.transform_row
        # Per text column: its categories' hashes sorted, and the categories in that order.
        self.hashes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        # ... and, when there is one hash per category, the vocabulary index (code) in that order:
        # canonical rows then go hash → code → the fitted table row, without the words.
        self.codes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, values in categorical_vocabularies(pre).items():
            hashes = np.asarray(bundle.category_hashes.get(name, []), dtype=np.float64)
            order = np.argsort(hashes, kind="stable")
            words = np.array([v.encode("utf-8") for v in values] or [b""], dtype=object)
            words = words[order] if len(values) else words[:0]
            self.hashes[name] = (hashes[order], _fixed_width(words))
            if len(hashes) == len(values):
                self.codes[name] = (hashes[order], order.astype(np.int64))
        self.direct = [c if (c.kind.kind == CATEGORICAL and c.kind.name in self.codes
                             and getattr(c, "impute", None) != "error") else None for c in pre._columns]
        text_columns = [c for c in pre._columns if c.kind.kind == CATEGORICAL]
        if not text_columns or any(c is None for c, col in zip(self.direct, pre._columns)
                                   if col.kind.kind == CATEGORICAL):
            self.direct = None          # the words' path below (impute "error", a hash missing)

    # -- numbers

    def from_numbers(self, X: np.ndarray) -> np.ndarray:
        if self.affine is not None and X.ndim == 2 and X.shape[1] == self.width:
            fill, center, spread = self.affine
            # One reduction instead of isfinite + all on the hot path: a finite sum means every
            # value is finite; a NaN or infinite sum gets the exact test.
            total = _SUM(X, None)
            if not -_INF < total < _INF and not np.isfinite(X).all():
                X = np.where(np.isfinite(X), X, fill)
            # Trees take the numbers as they are (no scaling): nothing to compute then.
            return X if self.identity else (X - center) / spread
        return self.pre.transform_numbers(X)

    # -- one row of Python values

    def from_row(self, values) -> np.ndarray:
        texts = [(i, sub) for i, sub in self.temporal if i < len(values) and isinstance(values[i], str)]
        if texts:                                   # untyped (text) parameters for temporal columns
            values = list(values)
            for i, sub in texts:
                values[i] = epoch_of_text(sub, values[i])
        return self.row(values)

    # -- canonical rows from the upstream (pgml.feature values)

    def from_canonical(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        X = X.reshape(1, -1) if X.ndim == 1 else X
        if self.has_arrays:
            raise PgError(sqlstate.FEATURE_NOT_SUPPORTED,
                          "a row constructor cannot carry the model's array columns",
                          hint="Pass all features as one numeric ARRAY[...] instead, arrays spliced in order.")
        if X.shape[1] != len(self.kinds):
            raise _arity(self.kinds, X.shape[1])
        if self.direct is not None:
            return self.pre._assemble([self._coded(c, X[:, i]) if c is not None else col.transform(X[:, i])
                                       for i, (c, col) in enumerate(zip(self.direct, self.pre._columns))],
                                      X.shape[0], "C")
        columns = {}
        for i, kind in enumerate(self.kinds):
            x = X[:, i]
            if kind.kind == CATEGORICAL:
                columns[kind.name] = self._categories(kind.name, x)
            else:
                columns[kind.name] = x
        return self.pre.transform(columns)

    def _coded(self, column, x: np.ndarray) -> np.ndarray:
        """A text column's hashes → codes (vocabulary index; NULL m, unknown m + 1) → fitted table rows,
        as Preprocessor.transform gives them from the words (tests/test_row_fast_path.py)."""
        hashes, codes = self.codes[column.kind.name]
        m = len(hashes)
        null = np.isnan(x)
        if m == 0:
            return column.table[np.where(null, 0, 1)]
        index = np.minimum(np.searchsorted(hashes, x), m - 1)
        hit = hashes[index] == x
        return column.table[np.where(null, m, np.where(hit, codes[index], m + 1))]

    def _categories(self, name: str, x: np.ndarray) -> TextColumn:
        null = np.isnan(x)
        hashes, words = self.hashes.get(name, (np.empty(0), np.empty(0, dtype="S1")))
        if len(hashes) == 0:
            return TextColumn(np.full(len(x), _NOT_TEXT, dtype="S1"), null)
        index = np.minimum(np.searchsorted(hashes, x), len(hashes) - 1)
        hit = (hashes[index] == x) & ~null
        values = np.where(hit, words[index], np.array(_NOT_TEXT, dtype=words.dtype))
        return TextColumn(values, null)


def _fixed_width(words: np.ndarray) -> np.ndarray:
    width = max([len(w) for w in words] + [len(_NOT_TEXT)])
    return np.array(list(words), dtype=f"S{width}") if len(words) else np.empty(0, dtype=f"S{width}")


def _arity(kinds, got: int) -> PgError:
    expected = ", ".join(f"{k.name} {k.type_name}" for k in kinds)
    return PgError(sqlstate.INVALID_PARAMETER_VALUE,
                   f"the model takes {len(kinds)} input values, got {got}",
                   detail=f"The model's columns: {expected}.",
                   hint="Pass one value per column, in the relation's column order, label excluded.")
