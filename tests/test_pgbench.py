"""pgbench through pgml-server: initialisation (COPY, DDL, VACUUM), select-only and TPC-B runs.

pgbench works in its own database, created and dropped through the server, so its tables do not
meet the other tests'.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest


def find_pgbench(upstream) -> str | None:
    for candidate in (Path(upstream.bin_dir) / "pgbench", Path("/usr/lib/postgresql/15/bin/pgbench")):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("pgbench")


@pytest.fixture(scope="module")
def bench_db(upstream, server):
    pgbench = find_pgbench(upstream)
    if pgbench is None:
        pytest.skip("pgbench is not installed")
    dbname = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {dbname}")
    yield pgbench, dbname
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")


def pgbench_run(pgbench: str, server, dbname: str, *args: str, timeout: float = 60) -> str:
    cmd = [pgbench, "-h", server.host, "-p", str(server.port), "-U", "postgres", *args, dbname]
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
    env.pop("PGPASSWORD", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} exited with {proc.returncode}:\n{output}"
    return output


def tps(output: str) -> float:
    match = re.search(r"^tps = ([0-9.]+)", output, re.MULTILINE)
    assert match, output
    return float(match.group(1))


def test_pgbench_init_select_only_and_tpcb(bench_db, server):
    pgbench, dbname = bench_db
    out = pgbench_run(pgbench, server, dbname, "-i", "-s", "1", "-q")
    assert "done" in out, out
    with psycopg.connect(server.dsn(dbname=dbname)) as conn:
        assert conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone()[0] == 100_000
        assert conn.execute("SELECT count(*) FROM pgbench_branches").fetchone()[0] == 1

    # Select-only, simple and prepared (extended protocol with named statements).
    for mode in ("simple", "prepared"):
        out = pgbench_run(pgbench, server, dbname, "-S", "-c", "4", "-j", "2", "-t", "200", "-M", mode)
        assert "number of transactions actually processed: 800/800" in out, out
        assert re.search(r"number of failed transactions: 0\b", out), out
        assert tps(out) > 0

    # TPC-B (the default script: UPDATE, SELECT, INSERT in explicit transactions).
    out = pgbench_run(pgbench, server, dbname, "-c", "2", "-t", "50", "-M", "extended")
    assert "number of transactions actually processed: 100/100" in out, out
    assert re.search(r"number of failed transactions: 0\b", out), out
    assert tps(out) > 0
    with psycopg.connect(server.dsn(dbname=dbname)) as conn:
        assert conn.execute("SELECT count(*) FROM pgbench_history").fetchone()[0] == 100
        # Each transaction adds the same delta to one account, its teller and its branch.
        sums = conn.execute("SELECT (SELECT sum(abalance) FROM pgbench_accounts), "
                            "(SELECT sum(tbalance) FROM pgbench_tellers), "
                            "(SELECT sum(bbalance) FROM pgbench_branches), "
                            "(SELECT sum(delta) FROM pgbench_history)").fetchone()
        assert len(set(sums)) == 1, sums
