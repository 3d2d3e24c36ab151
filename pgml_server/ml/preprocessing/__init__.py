"""Preprocessing for real tables: column kinds, canonical SQL, binary COPY decoding, the fitted Preprocessor.

The data path (the caller — pgml.train and the predict paths — wires these together):

1. `column_kind(name, type_oid, type_name, enum=...)` for every snapshot column (domains resolved to
   their base type by the caller) → ColumnKind (numeric, boolean, categorical, temporal, array),
   or a PgError (0A000/42804) that names the column and says what to do.
2. `copy_query(relation, kinds)` → `COPY (SELECT <canonical expressions> FROM relation s) TO STDOUT
   (FORMAT binary)`; PostgreSQL casts, so only float8, text and float8[] come back.
3. `decode_copy(data, wire_types(kinds), names)` → one array per column (float64 with NaN,
   TextColumn, (n, k) float64).
4. `parse_preprocess(preprocess_jsonb, kinds)` → {column: ColumnSpec};
   `Preprocessor(kinds).fit_transform(train_columns, y_train, task=…, algorithm=…, spec=…)` on the
   TRAINING rows only (target encoding cross-fitted); `transform(columns)` for test/predict
   batches, `transform_row(values)` for one
   predict row of Python values; `feature_names()`, `feature_sources()`, `num_features`,
   `analysis()` (JSON for pgml.snapshots), `to_json()`/`from_json()`, and it pickles.
5. Labels: `infer_task(label_kind, distinct)`, `Labels.fit(y, kind)` → classes, `encode`, `decode`.

See README.md in this folder for the integration contract (what the caller passes, what it gets).
"""
from .columns import ARRAY, BOOLEAN, CATEGORICAL, KINDS, NUMERIC, TEMPORAL, ColumnKind, column_kind
from .decode import TextColumn, decode_copy
from .fit import Preprocessor, needs_scaling, take_rows
from .labels import Labels, infer_task
from .spec import ColumnSpec, parse_preprocess
from .sql import (RELATION_COLUMNS_SQL, canonical_expr, copy_query, kinds_from_rows, quote_ident, select_canonical,
                  wire_types)

__all__ = [
    "ARRAY", "BOOLEAN", "CATEGORICAL", "KINDS", "NUMERIC", "TEMPORAL", "ColumnKind", "column_kind",
    "TextColumn", "decode_copy", "Preprocessor", "needs_scaling", "take_rows", "Labels", "infer_task", "ColumnSpec",
    "parse_preprocess", "RELATION_COLUMNS_SQL", "kinds_from_rows", "canonical_expr", "copy_query", "quote_ident",
    "select_canonical", "wire_types",
]
