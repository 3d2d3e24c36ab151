"""A/B of two source trees of pgml-server in one run: forwarding TPS, CPU per transaction and
single-row predict latency, measured alternately against one upstream.

For a design change, check out the old commit in a second folder (`git worktree add /tmp/old
<commit>`) and compare: each round runs every cell for tree A, then for tree B, with the same
upstream and the same trained model, so machine noise hits both alike. Both trees run with this
interpreter (a pgml-server process started with cwd=tree imports that tree's code).

Usage: python benchmarks/ab_trees.py --a /tmp/old --b . [--rounds 3] [--seconds 5]
       [--clients 1,8] [--protocols simple,prepared]
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import describe_machine, load_average, percentile, timed_calls
from forwarding import cpu_seconds, find_program, process_tree, run_select_only
from pgml_server.embedded import EmbeddedPostgres
from tests.fix_servers import free_port, wait_port

import asyncpg


class TreeServer:
    """One pgml-server process running the code of `tree`."""

    def __init__(self, tree: Path, upstream_dsn: str, log: Path) -> None:
        self.port = free_port()
        self.log = open(log, "ab")
        # A tree from before --dashboard existed has no such flag (and no dashboard to turn off).
        extra = ["--dashboard", "off"] if accepts_dashboard_flag(tree) else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pgml_server.cli", "--host", "127.0.0.1", "--port", str(self.port),
             "--upstream", upstream_dsn, "--log-level", "warning", *extra],
            cwd=tree, stdout=self.log, stderr=self.log)
        wait_port(self.port, self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


@functools.cache
def accepts_dashboard_flag(tree: Path) -> bool:
    """Once per tree: asking costs a Python start-up, and every round starts a server per tree."""
    out = subprocess.run([sys.executable, "-m", "pgml_server.cli", "--help"], cwd=tree, capture_output=True,
                         text=True).stdout
    return "--dashboard" in out


async def predict_p50(port: int, seconds: float) -> tuple[float, float]:
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres")
    stmt = await conn.prepare("SELECT pgml.predict($1, $2::float8[])")
    features = [0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, -0.002, 0.02, -0.02]
    times = await timed_calls(stmt, ("ab-lgbm", features), seconds, warmup=200)
    await conn.close()
    return percentile(times, 50), percentile(times, 99)


async def direct_p50(dsn: str, seconds: float) -> float:
    conn = await asyncpg.connect(dsn)
    stmt = await conn.prepare("SELECT $1::float8[]")
    times = await timed_calls(stmt, ([0.03] * 10,), seconds)
    await conn.close()
    return percentile(times, 50)


async def train(port: int) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres")
    await conn.execute("SELECT pgml.load_dataset('diabetes')")
    await conn.execute("SELECT * FROM pgml.train('ab-lgbm', 'regression', 'pgml.diabetes', 'target', 'lightgbm', "
                       "'{\"n_estimators\": 100}')")
    await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, type=Path, help="tree A (e.g. the commit before the change)")
    parser.add_argument("--b", required=True, type=Path, help="tree B (e.g. this checkout)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--protocols", default="simple,prepared")
    args = parser.parse_args()
    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    pgbench = find_program("pgbench")
    if pgbench is None:
        raise SystemExit("pgbench not found (Debian: postgresql-client)")
    clients = [int(c) for c in args.clients.split(",")]
    protocols = args.protocols.split(",")
    print(f"machine: {describe_machine()}; load average before: {load_average()}")
    print(f"A = {trees['A']}\nB = {trees['B']}")
    tps: dict[tuple, list[float]] = {}
    cpu: dict[tuple, list[float]] = {}
    lat: dict[str, list[float]] = {"A": [], "B": []}
    direct: list[float] = []
    with tempfile.TemporaryDirectory(prefix="pgml-ab-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "data", fast=True)
        pg.start()
        try:
            subprocess.run([pgbench, "-i", "-s", "10", "-q", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres",
                            "postgres"], check=True, capture_output=True)
            first = TreeServer(trees["A"], pg.dsn, Path(tmp) / "a.log")
            asyncio.run(train(first.port))
            first.stop()
            for rnd in range(args.rounds):
                for name, tree in trees.items():
                    srv = TreeServer(tree, pg.dsn, Path(tmp) / f"{name}.log")
                    try:
                        for protocol in protocols:
                            for c in clients:
                                pids = process_tree(srv.proc.pid)
                                before = cpu_seconds(pids)
                                t = run_select_only(pgbench, srv.port, "postgres", "postgres", c, protocol,
                                                    args.seconds)
                                used = cpu_seconds(pids) - before
                                tps.setdefault((name, protocol, c), []).append(t)
                                cpu.setdefault((name, protocol, c), []).append(used / (t * args.seconds) * 1e6)
                        p50, _ = asyncio.run(predict_p50(srv.port, args.seconds))
                        lat[name].append(p50)
                    finally:
                        srv.stop()
                direct.append(asyncio.run(direct_p50(pg.dsn, args.seconds)))
                print(f"round {rnd + 1} done; load average {load_average()}", flush=True)
        finally:
            pg.stop()
    print("\nforwarding (pgbench -S, best of rounds; CPU µs per transaction of the pgml-server process, median)")
    for protocol in protocols:
        for c in clients:
            a, b = max(tps[("A", protocol, c)]), max(tps[("B", protocol, c)])
            ca, cb = statistics.median(cpu[("A", protocol, c)]), statistics.median(cpu[("B", protocol, c)])
            print(f"  {protocol:8s} {c:2d} clients: A {a:9.0f} tps {ca:5.1f} µs/tx   B {b:9.0f} tps {cb:5.1f} µs/tx"
                  f"   B/A {b / a:5.2f}x tps")
    d = statistics.median(direct)
    la, lb = min(lat["A"]), min(lat["B"])
    print("\nsingle-row predict (asyncpg prepared, 100-tree LightGBM; best p50 of rounds)")
    print(f"  direct trivial round trip p50 {d * 1e6:7.1f} µs")
    print(f"  A p50 {la * 1e6:7.1f} µs ({la / d:4.2f}x direct)   B p50 {lb * 1e6:7.1f} µs ({lb / d:4.2f}x direct)"
          f"   B/A {lb / la:5.2f}x")
    print(f"\nload average after: {load_average()}")


if __name__ == "__main__":
    main()
