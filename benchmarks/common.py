"""Shared pieces of the benchmark scripts: an embedded upstream and pgml-server processes."""
from __future__ import annotations

import contextlib
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pgml_server.embedded import EmbeddedPostgres  # noqa: E402
from tests.fix_servers import ServerProcess  # noqa: E402


@contextlib.contextmanager
def upstream_and_server(*server_args: str, bin_dir: Path | None = None):
    """An embedded PostgreSQL and one pgml-server in front of it, both stopped afterwards.

    bin_dir: run the cluster from other PostgreSQL binaries (e.g. /usr/lib/postgresql/15/bin,
    whose extensions such as plpython3u the wheel's binaries lack)."""
    with tempfile.TemporaryDirectory(prefix="pgml-bench-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "data", fast=True)
        if bin_dir is not None:
            pg.bin_dir = Path(bin_dir)
        pg.start()
        server = None
        try:
            server = ServerProcess(pg.dsn, *server_args, log_path=Path(tmp) / "server.log")
            yield pg, server
        finally:
            if server is not None:
                server.stop()
            pg.stop()


async def timed_calls(stmt, args: tuple, seconds: float, warmup: int = 0) -> list[float]:
    """Seconds per `await stmt.fetchval(*args)` (an asyncpg prepared statement) for `seconds`,
    after `warmup` untimed calls."""
    for _ in range(warmup):
        await stmt.fetchval(*args)
    samples = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        await stmt.fetchval(*args)
        samples.append(time.perf_counter() - t0)
    return samples


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


def describe_machine() -> str:
    import os
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def summary(values: list[float]) -> str:
    return (f"p50 {percentile(values, 50) * 1e6:8.1f} µs  p99 {percentile(values, 99) * 1e6:8.1f} µs  "
            f"mean {statistics.fmean(values) * 1e6:8.1f} µs")


def load_average() -> str:
    """The 1/5/15-minute load averages, to judge whether other work disturbed a run."""
    import os
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"
