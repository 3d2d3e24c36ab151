"""Do other clients keep their latency while a long pgml.train runs? (issue 5, "Load")

Clients (asyncpg, prepared statements) run forwarded `SELECT $1::int` round trips and single-row
predictions in a closed loop, first with nothing else going on, then while one client runs a long
pgml.train. Prints p50/p99 of both phases and the ratio (goal: p99 with training ≤ 1.5× without).

Usage: python benchmarks/train_interference.py [--clients 8] [--seconds 10] [--train-rows 300000]
"""
from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg

from common import describe_machine, load_average, percentile, upstream_and_server

FEATURES = [0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, -0.002, 0.02, -0.017]


async def setup(dsn: str, train_rows: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pgml.load_dataset('diabetes')")
        await conn.execute("SELECT * FROM pgml.train('interference', 'regression', 'pgml.diabetes', 'target')")
        await conn.execute("DROP TABLE IF EXISTS interference_big")
        cols = ", ".join(f"random() AS f{i}" for i in range(10))
        await conn.execute(f"CREATE TABLE interference_big AS SELECT {cols}, random() AS y "
                           f"FROM generate_series(1, {train_rows})")
    finally:
        await conn.close()


async def client(dsn: str, until: float, forwarded: list, predicted: list) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        ping = await conn.prepare("SELECT $1::int")
        predict = await conn.prepare("SELECT pgml.predict($1, $2::float8[])")
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            await ping.fetchval(1)
            t1 = time.perf_counter()
            await predict.fetchval("interference", FEATURES)
            t2 = time.perf_counter()
            forwarded.append(t1 - t0)
            predicted.append(t2 - t1)
    finally:
        await conn.close()


async def phase(dsn: str, clients: int, seconds: float, train: bool) -> tuple[list, list, float | None]:
    forwarded: list[float] = []
    predicted: list[float] = []
    train_time = None
    trainer = None
    if train:
        async def run_training() -> float:
            conn = await asyncpg.connect(dsn)
            try:
                t0 = time.perf_counter()
                await conn.execute("SELECT * FROM pgml.train('interference-long', 'regression', "
                                   "'interference_big', 'y', 'random_forest', '{\"n_estimators\": 200}')")
                return time.perf_counter() - t0
            except asyncpg.QueryCanceledError:
                return float("nan")
            finally:
                await conn.close()
        trainer = asyncio.ensure_future(run_training())
        await asyncio.sleep(2.0)          # let it get past the snapshot into fitting
    until = time.perf_counter() + seconds
    await asyncio.gather(*(client(dsn, until, forwarded, predicted) for _ in range(clients)))
    if trainer is not None:
        if not trainer.done():
            trainer.cancel()
        try:
            train_time = await trainer
        except asyncio.CancelledError:
            train_time = None
    return forwarded, predicted, train_time


def line(name: str, values: list[float]) -> str:
    return (f"{name:<10} n={len(values):7d}  p50 {percentile(values, 50) * 1e3:7.3f} ms  "
            f"p99 {percentile(values, 99) * 1e3:7.3f} ms")


async def run(dsn: str, clients: int, seconds: float) -> None:
    base_fwd, base_pred, _ = await phase(dsn, clients, seconds, train=False)
    busy_fwd, busy_pred, _ = await phase(dsn, clients, seconds, train=True)
    print("without training:")
    print("  " + line("forwarded", base_fwd))
    print("  " + line("predict", base_pred))
    print("while pgml.train runs (random_forest, 200 trees):")
    print("  " + line("forwarded", busy_fwd))
    print("  " + line("predict", busy_pred))
    for name, base, busy in (("forwarded", base_fwd, busy_fwd), ("predict", base_pred, busy_pred)):
        ratio = percentile(busy, 99) / percentile(base, 99)
        print(f"p99 ratio {name:<10} {ratio:5.2f}×  (goal ≤ 1.5×)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--train-rows", type=int, default=300_000)
    args = parser.parse_args()
    print(f"machine: {describe_machine()}; load before: {load_average()}")
    with upstream_and_server() as (pg, server):
        asyncio.run(setup(server.dsn(), args.train_rows))
        asyncio.run(run(server.dsn(), args.clients, args.seconds))
    print(f"load after: {load_average()}")


if __name__ == "__main__":
    main()
