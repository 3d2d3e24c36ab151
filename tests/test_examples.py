"""The examples/ scripts run top to bottom through pgml-server with psql and ON_ERROR_STOP=1, as
the README tells users to run them (`psql -f examples/<name>/run.sql`)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*/run.sql"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
def test_example_runs_through_the_server(upstream, server, script, tmp_path):
    done = subprocess.run([str(upstream.bin_dir / "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-P", "pager=off",
                           "-d", server.dsn(), "-f", str(script)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin", "PGAPPNAME": "examples"})
    assert done.returncode == 0, f"{script}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "ERROR" not in done.stderr
    assert "rows)" in done.stdout


def test_every_example_is_tested():
    assert {p.parent.name for p in EXAMPLES} >= {"regression", "classification", "relational"}
