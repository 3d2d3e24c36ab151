"""Soak: N concurrent clients for M minutes against one pgml-server (issue 5, load).

Each client loops over a mix of forwarded queries, predictions (simple and prepared), COPY FROM
STDIN, transactions with savepoints, and deliberate errors (division by zero, a missing table,
an unknown pgml project) whose SQLSTATEs are expected. Reported: operations by kind, unexpected
errors (must be 0), upstream connections before/after (no leaks), server RSS after warm-up and at
the end.

    python benchmarks/soak.py --clients 200 --minutes 3
    python benchmarks/soak.py --dsn postgresql://... --upstream-dsn ...   # an already running pair
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import io
import random
import sys
import time

import asyncpg
import psutil

from common import describe_machine, load_average, upstream_and_server  # noqa: E402

EXPECTED = {"22012", "42P01", "42704", "23505", "25P02"}


async def upstream_connections(upstream_dsn: str) -> int:
    conn = await asyncpg.connect(upstream_dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                                   "AND pid <> pg_backend_pid()")
    finally:
        await conn.close()


async def prepare(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pgml.load_dataset('diabetes')")
        await conn.execute("SELECT * FROM pgml.train('soak', 'regression', 'pgml.diabetes', 'target', 'linear')")
        await conn.execute("CREATE TABLE IF NOT EXISTS soak_copy (client int, n int, payload text)")
        await conn.execute("CREATE TABLE IF NOT EXISTS soak_kv (k int PRIMARY KEY, v int)")
        await conn.execute("TRUNCATE soak_copy, soak_kv")
    finally:
        await conn.close()


class Stats:
    def __init__(self) -> None:
        self.ops = collections.Counter()
        self.expected_errors = collections.Counter()
        self.unexpected: list[str] = []


async def client(i: int, dsn: str, stop_at: float, stats: Stats) -> None:
    rnd = random.Random(i)
    conn = await asyncpg.connect(dsn)
    features = [0.01 * (i % 7)] * 10
    stmt = await conn.prepare("SELECT pgml.predict('soak', $1::real[])")
    n = 0
    try:
        while time.monotonic() < stop_at:
            n += 1
            kind = rnd.choices(["query", "predict", "prepared", "copy", "tx", "error"],
                               [30, 20, 20, 8, 15, 7])[0]
            try:
                if kind == "query":
                    v = await conn.fetchval("SELECT sum(x) FROM generate_series(1, $1::int) x", 100 + n % 50)
                    assert v == (100 + n % 50) * (101 + n % 50) // 2
                elif kind == "predict":
                    v = await conn.fetchval(f"SELECT pgml.predict('soak', ARRAY{features}::real[])")
                    assert v is not None
                elif kind == "prepared":
                    assert await stmt.fetchval(features) is not None
                elif kind == "copy":
                    rows = [(i, n * 100 + k, "x" * (k % 40)) for k in range(100)]
                    await conn.copy_records_to_table("soak_copy", records=rows)
                elif kind == "tx":
                    async with conn.transaction():
                        await conn.execute("INSERT INTO soak_kv VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = "
                                           "soak_kv.v + 1", i * 1_000_000 + n % 100, n)
                        try:
                            async with conn.transaction():      # a savepoint rolled back on purpose
                                await conn.execute("SELECT 1/0")
                        except asyncpg.DivisionByZeroError:
                            stats.expected_errors["22012"] += 1
                        await conn.fetchval("SELECT count(*) FROM soak_kv WHERE k = $1", i * 1_000_000)
                else:
                    bad = rnd.choice(["SELECT 1/0", "SELECT * FROM soak_missing_table",
                                      "SELECT pgml.predict('soak-no-such-project', ARRAY[1.0]::real[])"])
                    try:
                        await conn.fetchval(bad)
                        stats.unexpected.append(f"no error from {bad}")
                    except asyncpg.PostgresError as exc:
                        if exc.sqlstate not in EXPECTED:
                            raise
                        stats.expected_errors[exc.sqlstate] += 1
                stats.ops[kind] += 1
            except Exception as exc:   # noqa: BLE001 - counted and reported
                stats.unexpected.append(f"client {i} {kind}: {type(exc).__name__}: {exc}")
                if conn.is_closed():
                    conn = await asyncpg.connect(dsn)
                    stmt = await conn.prepare("SELECT pgml.predict('soak', $1::real[])")
    finally:
        await conn.close()


async def soak(dsn: str, upstream_dsn: str, server_pid: int | None, clients: int, minutes: float) -> dict:
    await prepare(dsn)
    before = await upstream_connections(upstream_dsn)
    stats = Stats()
    start = time.monotonic()
    stop_at = start + minutes * 60
    proc = psutil.Process(server_pid) if server_pid else None
    rss: dict[str, int] = {}

    async def sample() -> None:
        await asyncio.sleep(min(30.0, minutes * 60 / 4))
        if proc:
            rss["warm"] = proc.memory_info().rss
        peak = await upstream_connections(upstream_dsn)
        rss["upstream_during"] = peak

    sampler = asyncio.ensure_future(sample())
    # connect in waves so the listen backlog and the upstream see a realistic ramp
    tasks = []
    for i in range(clients):
        tasks.append(asyncio.ensure_future(client(i, dsn, stop_at, stats)))
        if i % 20 == 19:
            await asyncio.sleep(0.05)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await sampler
    for r in results:
        if isinstance(r, BaseException):
            stats.unexpected.append(f"client task: {type(r).__name__}: {r}")
    elapsed = time.monotonic() - start
    if proc:
        rss["end"] = proc.memory_info().rss
    await asyncio.sleep(1.0)      # closes reach the upstream asynchronously
    after = await upstream_connections(upstream_dsn)
    return {"clients": clients, "seconds": elapsed, "ops": dict(stats.ops), "total": sum(stats.ops.values()),
            "expected_errors": dict(stats.expected_errors), "unexpected": stats.unexpected,
            "upstream_before": before, "upstream_during": rss.get("upstream_during"), "upstream_after": after,
            "rss_warm": rss.get("warm"), "rss_end": rss.get("end")}


def report(r: dict) -> str:
    mib = lambda b: f"{b / (1 << 20):.1f} MiB" if b else "n/a"   # noqa: E731
    lines = [
        f"machine: {describe_machine()}; load average after: {load_average()}",
        f"{r['clients']} clients for {r['seconds']:.0f} s: {r['total']} operations "
        f"({r['total'] / r['seconds']:.0f}/s) {r['ops']}",
        f"expected errors: {r['expected_errors']}",
        f"unexpected errors: {len(r['unexpected'])}",
        f"upstream client backends: before {r['upstream_before']}, during {r['upstream_during']}, "
        f"after {r['upstream_after']}",
        f"server RSS: after warm-up {mib(r['rss_warm'])}, at the end {mib(r['rss_end'])}",
    ]
    lines += [f"  {u}" for u in r["unexpected"][:20]]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--dsn", help="a running pgml-server (default: start an embedded upstream and a server)")
    p.add_argument("--upstream-dsn", help="its upstream, for pg_stat_activity")
    p.add_argument("--server-pid", type=int, help="its process id, for RSS")
    a = p.parse_args()
    if a.dsn:
        r = asyncio.run(soak(a.dsn, a.upstream_dsn or a.dsn, a.server_pid, a.clients, a.minutes))
    else:
        with upstream_and_server() as (pg, server):
            r = asyncio.run(soak(server.dsn(), pg.dsn, server.proc.pid, a.clients, a.minutes))
    print(report(r))
    leaked = r["upstream_after"] - r["upstream_before"]
    return 1 if r["unexpected"] or leaked > 0 else 0


if __name__ == "__main__":
    sys.exit(main())
