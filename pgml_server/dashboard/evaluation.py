"""A model's predictions on its test split, computed through pgml-server, for the model page.

The split is recomputed exactly as training made it (training/split.py with the worker's seed
0, over the snapshot's rows in table order, which is what training's sequential COPY reads):
the row count gives the test indices for 'last' and 'random'; 'stratified' also reads the
label column. Up to SAMPLE test rows (the first ones in table order) are then predicted by
`pgml.predict(model_id, ARRAY[...])` over `pgml.snapshot_<id>` on a connection to pgml-server
as the logged-in role; the page says whether it shows the whole test split or that sample.
Charts are built from those (actual, predicted) pairs; nothing is unpickled here.
"""
from __future__ import annotations

import re
from typing import Any

import asyncpg
import numpy as np

from ..ml.training import TrainingError
from ..ml.training.split import _stratified_test_index, count_test_rows
from . import charts
from .explorer import NUMERIC_TYPES, _q

SAMPLE = 500
SEED = 0                      # TrainingJob.seed's default: pgml.train does not pass another
_BOOL = 16


def _feature_expr(name: str, oid: int) -> str:
    return f"s.{_q(name)}::int4::float8" if oid == _BOOL else f"s.{_q(name)}::float8"


async def test_split(db: asyncpg.Connection, through: asyncpg.Pool, model: dict, snap: dict,
                     cols: list[tuple[str, int, str]]) -> dict[str, Any]:
    labels = list(snap["y_column_name"] or [])
    if len(labels) != 1:
        return {"unavailable": "test-split charts are drawn for single-label models only"}
    label = labels[0]
    features = [(n, o) for n, o, _ in cols if n != label]
    if not features:
        return {"unavailable": "the snapshot has no feature columns"}
    # Numbers go as an ARRAY (arrays of numbers spliced in); other columns (text, dates, …) as a
    # row of the snapshot's own values, which the model's preprocessing reads column by column.
    numeric = all(o in NUMERIC_TYPES or o == _BOOL for _, o in features)
    table = f"pgml.snapshot_{int(snap['id'])}"
    n_rows = await db.fetchval(f"SELECT count(*) FROM {table}")
    try:
        size = float(f"{snap['test_size']:.6g}")       # a real column: 0.2 comes back as 0.2000000029…
        n_test = count_test_rows(n_rows, size if size < 1 else int(size))
    except TrainingError as exc:
        return {"unavailable": exc.message}
    sampling = snap["test_sampling"]
    note = None
    if sampling == "last":
        index = np.arange(n_rows - n_test, n_rows)
    elif sampling == "stratified":
        ys = await db.fetch(f"SELECT {_q(label)}::text FROM {table} ORDER BY ctid")
        index, note = _stratified_test_index(np.asarray([r[0] for r in ys]), n_test, SEED)
        if index is None:
            index = np.random.default_rng(SEED).permutation(n_rows)[:n_test]
    else:
        index = np.random.default_rng(SEED).permutation(n_rows)[:n_test]
    index = np.sort(index)
    shown = index[:SAMPLE]
    task = model["task"]
    if numeric:
        feats = "ARRAY[" + ", ".join(_feature_expr(n, o) for n, o in features) + "]"
    else:
        feats = "ROW(" + ", ".join(f"s.{_q(n)}" for n, _ in features) + ")"
    mid = int(model["id"])
    metrics = model.get("metrics") or {}
    classes = metrics.get("classes")
    binary = task == "classification" and (len(classes) == 2 if classes else None)
    proba = f", pgml.predict_proba({mid}, {feats}) AS proba" if task == "classification" else ""
    sql = (f"SELECT s.{_q(label)} AS actual, pgml.predict({mid}, {feats}) AS predicted{proba} "
           f"FROM (SELECT row_number() OVER (ORDER BY ctid) - 1 AS pgml_row_, * FROM {table}) s "
           f"WHERE s.pgml_row_ = ANY('{{{','.join(str(int(i)) for i in shown)}}}'::int8[]) ORDER BY s.pgml_row_")
    try:
        async with through.acquire() as conn:
            # The row numbers are inlined (integers only): a bound $1 here met a pgml-server bug
            # (08P01 "bind message supplies 1 parameters, but prepared statement requires 0").
            rows = await conn.fetch(sql)
    except asyncpg.PostgresError as exc:
        return {"error": f"{exc.sqlstate}: {exc}"}
    out: dict[str, Any] = {
        "n_rows": n_rows, "n_test": n_test, "n_shown": len(rows), "sampling": sampling, "note": note,
        "scope": ("the whole test split" if len(shown) == n_test else
                  f"the first {len(shown)} of the {n_test} test rows (in table order)"),
        "sql": re.sub(r"ANY\('\{[0-9,]*\}'", "ANY('{<test row numbers>}'", sql),
    }
    if task == "regression":
        actual = [float(r["actual"]) for r in rows if r["actual"] is not None and r["predicted"] is not None]
        pred = [float(r["predicted"]) for r in rows if r["actual"] is not None and r["predicted"] is not None]
        out["scatter"] = charts.scatter(actual, pred, "actual", "predicted", diagonal=True, kind="predicted-actual")
        out["residuals"] = charts.scatter(pred, [a - p for a, p in zip(actual, pred)], "predicted",
                                          "residual (actual − predicted)", zero_line=True, kind="residuals")
        if len(actual) > 1:
            mean = sum(actual) / len(actual)
            total = sum((a - mean) ** 2 for a in actual)
            if total > 0:
                out["recomputed"] = ("r2", 1 - sum((a - p) ** 2 for a, p in zip(actual, pred)) / total)
        return out
    # classification: text labels were trained as indices into metrics['classes']
    if classes:
        position = {str(c): i for i, c in enumerate(classes)}
        actual = [position.get(str(r["actual"])) for r in rows]
        names = [str(c) for c in classes]
    else:
        actual = [None if r["actual"] is None else float(r["actual"]) for r in rows]
        names = None
    pred = [None if r["predicted"] is None else float(r["predicted"]) for r in rows]
    pairs = [(a, p) for a, p in zip(actual, pred) if a is not None and p is not None]
    values = sorted({v for pair in pairs for v in pair})
    label_names = [names[int(v)] if names and 0 <= int(v) < len(names) else _num(v) for v in values]
    where = {v: i for i, v in enumerate(values)}
    matrix = [[0] * len(values) for _ in values]
    for a, p in pairs:
        matrix[where[a]][where[p]] += 1
    out["confusion"] = charts.confusion_matrix(label_names, matrix)
    if pairs:
        out["recomputed"] = ("accuracy", sum(a == p for a, p in pairs) / len(pairs))
    if binary is None:
        binary = len(values) == 2
    if binary and rows and rows[0]["proba"] is not None and len(rows[0]["proba"]) == 2:
        positive = values[-1] if not names else 1
        y_true = [int(a == positive) for a, r in zip(actual, rows) if a is not None and r["proba"] is not None]
        scores = [float(r["proba"][1]) for a, r in zip(actual, rows) if a is not None and r["proba"] is not None]
        fpr, tpr, auc = charts.roc_points(y_true, scores)
        out["roc"] = charts.roc_curve(fpr, tpr, auc)
    return out


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"
