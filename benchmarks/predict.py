"""Prediction benchmark: pgml-server against the anchors, measured in one run.

1. single-row latency (asyncpg, prepared) vs a trivial round trip straight to the upstream, vs a
   FastAPI + uvicorn microservice serving the same model (joblib, JSON features) at 1/8/32
   clients, and the library's own in-process predict for one row;
2. batch over a table: predict in the target list and in WHERE vs reading the same feature
   arrays straight from the upstream (same client: asyncpg, binary results).

Usage: python benchmarks/predict.py [--rows 1000000] [--seconds 5]
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import numpy as np

from common import ROOT, describe_machine, percentile, summary, upstream_and_server

FEATURES = "ARRAY[f0,f1,f2,f3,f4,f5,f6,f7,f8,f9]::float8[]"
ROW = [0.1, -0.2, 0.3, 0.5, -1.0, 0.25, 0.0, 0.7, -0.3, 0.9]


async def setup(dsn: str, rows: int) -> None:
    conn = await asyncpg.connect(dsn)
    await conn.execute("DROP TABLE IF EXISTS bench")
    cols = ", ".join(f"random() AS f{i}" for i in range(10))
    await conn.execute(f"CREATE TABLE bench AS SELECT {cols} FROM generate_series(1, {rows})")
    await conn.execute("ALTER TABLE bench ADD COLUMN y float8")
    await conn.execute("UPDATE bench SET y = f0 * 3 + f1 * f2 - f3 + random() * 0.1")
    await conn.execute("CREATE TABLE IF NOT EXISTS bench_train AS SELECT * FROM bench LIMIT 20000")
    await conn.close()


async def latency(dsn: str, sql: str, args: tuple, seconds: float) -> list[float]:
    conn = await asyncpg.connect(dsn)
    stmt = await conn.prepare(sql)
    for _ in range(200):
        await stmt.fetchval(*args)
    samples = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        await stmt.fetchval(*args)
        samples.append(time.perf_counter() - t0)
    await conn.close()
    return samples


async def throughput_pg(dsn: str, sql: str, args: tuple, clients: int, seconds: float) -> float:
    async def one() -> int:
        conn = await asyncpg.connect(dsn)
        stmt = await conn.prepare(sql)
        n = 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            await stmt.fetchval(*args)
            n += 1
        await conn.close()
        return n
    counts = await asyncio.gather(*(one() for _ in range(clients)))
    return sum(counts) / seconds


MICROSERVICE = '''
import joblib, numpy as np
from fastapi import FastAPI
from pydantic import BaseModel
model = joblib.load({path!r})
app = FastAPI()
class Features(BaseModel):
    features: list[float]
@app.post("/predict")
def predict(body: Features):
    return {{"prediction": float(model.predict(np.asarray([body.features]))[0])}}
'''


def start_microservice(estimator, tmp: Path) -> tuple[subprocess.Popen, int]:
    import joblib
    path = tmp / "model.joblib"
    joblib.dump(estimator, path)
    (tmp / "service.py").write_text(MICROSERVICE.format(path=str(path)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "service:app", "--port", str(port), "--log-level",
                             "warning"], cwd=tmp)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, port


async def http_latency(port: int, seconds: float) -> list[float]:
    import httpx
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for _ in range(100):
            await client.post("/predict", json={"features": ROW})
        samples = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            await client.post("/predict", json={"features": ROW})
            samples.append(time.perf_counter() - t0)
    return samples


async def http_throughput(port: int, clients: int, seconds: float) -> float:
    import httpx
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits) as client:
        async def one() -> int:
            n = 0
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                await client.post("/predict", json={"features": ROW})
                n += 1
            return n
        counts = await asyncio.gather(*(one() for _ in range(clients)))
    return sum(counts) / seconds


async def timed_fetch(dsn: str, sql: str) -> float:
    conn = await asyncpg.connect(dsn)
    await conn.fetch(sql + " LIMIT 10")
    t0 = time.perf_counter()
    await conn.fetch(sql)
    elapsed = time.perf_counter() - t0
    await conn.close()
    return elapsed


async def main(args) -> None:
    with upstream_and_server() as (pg, server):
        await setup(pg.dsn, args.rows)
        conn = await asyncpg.connect(server.dsn())
        await conn.fetch("SELECT * FROM pgml.train('bench', 'regression', 'bench_train', 'y', 'lightgbm', "
                         "'{\"n_estimators\": 100}')")
        model_id = await conn.fetchval("SELECT id FROM pgml.deployed_models WHERE name = 'bench'")
        blob = await conn.fetchval("SELECT string_agg(data, ''::bytea ORDER BY part) FROM pgml.files "
                                   "WHERE model_id = $1", model_id)
        await conn.close()
        estimator = pickle.loads(blob[6 + 32:])     # artifact: b'PGMLv1' + HMAC tag + pickle

        print(f"machine: {describe_machine()}")
        print("\n1. single-row latency (asyncpg, prepared)")
        direct = await latency(pg.dsn, "SELECT $1::float8[]", (ROW,), args.seconds)
        ours = await latency(server.dsn(), "SELECT pgml.predict($1, $2::float8[])", ("bench", ROW), args.seconds)
        X = np.asarray([ROW])
        t0 = time.perf_counter()
        for _ in range(2000):
            estimator.predict(X)
        native = (time.perf_counter() - t0) / 2000
        print(f"  direct upstream round trip   {summary(direct)}")
        print(f"  pgml-server predict          {summary(ours)}")
        print(f"  native estimator.predict     {native * 1e6:8.1f} µs per row (in process)")
        ratio = percentile(ours, 50) / percentile(direct, 50)
        print(f"  ratio pgml-server / direct (p50): {ratio:.2f}× (goal ≤ 1.25×)")

        with tempfile.TemporaryDirectory() as tmp:
            proc, port = start_microservice(estimator, Path(tmp))
            try:
                http = await http_latency(port, args.seconds)
                print(f"  FastAPI microservice         {summary(http)}")
                print(f"  latency: microservice / pgml-server (p50): "
                      f"{percentile(http, 50) / percentile(ours, 50):.2f}× (goal ≥ 3×)")
                for clients in (1, 8, 32):
                    tp_ours = await throughput_pg(server.dsn(), "SELECT pgml.predict($1, $2::float8[])",
                                                  ("bench", ROW), clients, args.seconds)
                    tp_http = await http_throughput(port, clients, args.seconds)
                    print(f"  {clients:2d} clients: pgml-server {tp_ours:9.0f}/s  microservice {tp_http:9.0f}/s  "
                          f"ratio {tp_ours / tp_http:.2f}× (goal ≥ 3×)")
            finally:
                proc.terminate()
                proc.wait()

        print(f"\n2. batch over {args.rows} rows (asyncpg, binary results)")
        read = await timed_fetch(pg.dsn, f"SELECT {FEATURES} FROM bench")
        stream = await timed_fetch(server.dsn(), f"SELECT pgml.predict('bench', {FEATURES}) FROM bench")
        where = await timed_fetch(server.dsn(), f"SELECT f0 FROM bench WHERE pgml.predict('bench', {FEATURES}) > 1.0")
        print(f"  read features directly      {read:7.2f} s")
        print(f"  predict in target list      {stream:7.2f} s   ratio {stream / read:.2f}× (goal ≤ 1.5×)")
        print(f"  predict in WHERE            {where:7.2f} s   ratio {where / read:.2f}× (goal ≤ 3×)")
        print(f"  rows/s in target list: {args.rows / stream:,.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    asyncio.run(main(parser.parse_args()))
