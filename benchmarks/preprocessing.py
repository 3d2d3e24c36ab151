"""Preprocessing throughput: binary COPY decode, Preprocessor fit / fit_transform / transform, one row.

The rows come from a real (embedded) PostgreSQL through the canonical SQL: 8 float8 columns with
NULLs (coalesced to NaN in SQL), 3 text columns (50 and 7 values, one with NULLs; a unique md5),
1 float8. Prints medians of --repeat runs; no server process is involved.

Usage: python benchmarks/preprocessing.py [--rows 1000000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psycopg  # noqa: E402

from pgml_server.embedded import EmbeddedPostgres  # noqa: E402
from pgml_server.ml.preprocessing import (Preprocessor, column_kind, copy_query, decode_copy,  # noqa: E402
                                          wire_types)


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    kinds = [column_kind(f"f{j}", 701) for j in range(8)] + \
        [column_kind(n, 25) for n in ("city", "k", "md5")] + [column_kind("g", 701)]
    numbers = ", ".join(f"CASE WHEN g % 97 = {j} THEN NULL ELSE random() END AS f{j}" for j in range(8))
    table = (f"CREATE TABLE bench AS SELECT {numbers}, 'city' || (g % 50) AS city, "
             f"CASE WHEN g % 13 = 0 THEN NULL ELSE 'k' || (g % 7) END AS k, md5(g::text) AS md5, g::float8 AS g "
             f"FROM generate_series(1, {args.rows}) g")
    with tempfile.TemporaryDirectory(prefix="pgml-bench-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "data", fast=True)
        pg.start()
        try:
            with psycopg.connect(pg.dsn, autocommit=True) as conn:
                conn.execute(table)
                t = time.perf_counter()
                with conn.cursor().copy(copy_query("bench", kinds)) as copy:
                    data = b"".join(bytes(b) for b in copy)
                copy_s = time.perf_counter() - t
        finally:
            pg.stop()
    names = [k.name for k in kinds]
    decode_s, decoded = timed(lambda: decode_copy(data, wire_types(kinds), names), args.repeat)
    cols = dict(zip(names, decoded))
    y = np.random.default_rng(0).normal(size=args.rows)
    results = [("copy out (PostgreSQL)", copy_s), ("decode", decode_s)]
    for algorithm in ("xgboost", "ridge"):
        pre = Preprocessor(kinds)
        results.append((f"fit ({algorithm})", timed(lambda: pre.fit(cols, y, task="regression", algorithm=algorithm),
                                                     args.repeat)[0]))
        results.append((f"fit_transform ({algorithm})",
                        timed(lambda: pre.fit_transform(cols, y, task="regression", algorithm=algorithm), 1)[0]))
        results.append((f"transform ({algorithm})", timed(lambda: pre.transform(cols), args.repeat)[0]))
        results.append((f"transform order=F ({algorithm})", timed(lambda: pre.transform(cols, order="F"),
                                                                  args.repeat)[0]))
    row = [c.tolist()[0] if hasattr(c, "null") else float(c[0]) for c in decoded]
    one, _ = timed(lambda: [pre.transform_row(row) for _ in range(1000)], 1)
    print(f"machine: {len(__import__('os').sched_getaffinity(0))} CPUs; {args.rows} rows × 12 columns "
          f"({len(data) >> 20} MiB of COPY), {pre.num_features} features")
    print("summary")
    for name, seconds in results:
        print(f"  {name:32s} {seconds:7.3f} s")
    print(f"  {'transform_row':32s} {one * 1000:7.1f} µs per row")
    return 0


if __name__ == "__main__":
    sys.exit(main())
