"""Training benchmark: pgml.train on a large table vs a plain Python script doing the same by hand.

The script reads the table with psycopg (binary cursor), builds numpy arrays and fits the same
estimator with the same split; pgml.train also snapshots the table and writes the registry.

Both sides run --rounds times, alternating, and the best time of each counts (a shared machine
disturbs single runs). pgml.train's progress NOTICEs are timestamped to show where its time goes.

Usage: python benchmarks/train.py [--rows 1000000] [--algorithm linear] [--rounds 2]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import psycopg

from common import describe_machine, upstream_and_server

COLUMNS = [f"f{i}" for i in range(10)]


def setup(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS train_bench")
        cols = ", ".join(f"random() AS {c}" for c in COLUMNS)
        conn.execute(f"CREATE TABLE train_bench AS SELECT {cols} FROM generate_series(1, {rows})")
        conn.execute("ALTER TABLE train_bench ADD COLUMN y float8")
        conn.execute("UPDATE train_bench SET y = f0 * 3 + f1 * f2 - f3 + random() * 0.1")
        conn.execute("VACUUM ANALYZE train_bench")


def by_hand(dsn: str, algorithm: str) -> float:
    from sklearn.model_selection import train_test_split
    from pgml_server.ml.training.algorithms import make_estimator
    t0 = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        with conn.cursor(binary=True) as cur:
            cur.execute(f"SELECT {', '.join(COLUMNS)}, y FROM train_bench")
            data = np.array(cur.fetchall(), dtype=np.float64)
    X, y = data[:, :-1], data[:, -1]
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25)
    model = make_estimator(algorithm, "regression", {})
    model.fit(X_train, y_train)
    model.score(X_test, y_test)
    return time.perf_counter() - t0


def through_server(dsn: str, algorithm: str) -> tuple[float, list[tuple[float, str]]]:
    steps: list[tuple[float, str]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: steps.append((time.perf_counter() - t0, d.message_primary)))
        t0 = time.perf_counter()
        conn.execute("SELECT * FROM pgml.train('train-bench', 'regression', 'train_bench', 'y', %s)", (algorithm,))
        return time.perf_counter() - t0, steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--algorithm", default="linear")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    scripts, ours_all = [], []
    with upstream_and_server() as (pg, server):
        setup(pg.dsn, args.rows)
        for _ in range(args.rounds):
            scripts.append(by_hand(pg.dsn, args.algorithm))
            ours_all.append(through_server(server.dsn(), args.algorithm))
    script = min(scripts)
    ours, steps = min(ours_all)
    print(f"machine: {describe_machine()}")
    print(f"training {args.algorithm} on {args.rows} rows × {len(COLUMNS)} features")
    print(f"  psycopg script (read + fit + score)   {script:7.2f} s")
    print(f"  pgml.train (snapshot + fit + registry) {ours:7.2f} s   ratio {ours / script:.2f}× (goal ≤ 1.2×)")
    print(f"  every round: script {', '.join(f'{t:.2f}' for t in scripts)} s; "
          f"pgml.train {', '.join(f'{t:.2f}' for t, _ in ours_all)} s")
    print("  pgml.train progress (seconds since the call, best round):")
    for at, message in steps:
        print(f"    {at:6.2f}  {message}")


if __name__ == "__main__":
    main()
