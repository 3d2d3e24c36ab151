"""CLI flags and their environment fallbacks; libpq connection strings."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pgml_server.config import from_args
from pgml_server.dsn import parse_dsn


def test_defaults(monkeypatch):
    for name in ("PGML_UPSTREAM", "DATABASE_URL", "PGML_HOST", "PGML_PORT", "PGML_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    config = from_args([])
    assert (config.host, config.port, config.upstream, str(config.data_dir)) == ("127.0.0.1", 5433, None, "pgml-data")


def test_environment_fallbacks(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db/app")
    monkeypatch.setenv("PGML_HOST", "0.0.0.0")
    monkeypatch.setenv("PGML_PORT", "6000")
    monkeypatch.setenv("PGML_DATA_DIR", "/tmp/x")
    config = from_args([])
    assert (config.upstream, config.host, config.port, str(config.data_dir)) == \
        ("postgresql://u@db/app", "0.0.0.0", 6000, "/tmp/x")
    monkeypatch.setenv("PGML_UPSTREAM", "postgresql://v@db2/app")
    assert from_args([]).upstream == "postgresql://v@db2/app"      # PGML_UPSTREAM wins over DATABASE_URL
    assert from_args(["--upstream", "postgresql://w@h/d", "--port", "7"]).port == 7


def test_tls_flags_go_together():
    with pytest.raises(SystemExit):
        from_args(["--tls-cert", "c.pem"])


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "pgml_server.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--host", "--port", "--upstream", "--data-dir", "--workers", "--log-level"):
        assert flag in out.stdout


@pytest.mark.parametrize("dsn, host, port, user, db, sslmode", [
    ("postgresql://alice:pw@db.example:6432/app?sslmode=require", "db.example", 6432, "alice", "app", "require"),
    ("postgresql://postgres@/postgres?host=/tmp/sock", "/tmp/sock", 5432, "postgres", "postgres", "disable"),
    ("host=127.0.0.1 port=5555 user=bob dbname='my db'", "127.0.0.1", 5555, "bob", "my db", "prefer"),
])
def test_parse_dsn(dsn, host, port, user, db, sslmode):
    a = parse_dsn(dsn)
    assert (a.host, a.port, a.user, a.dbname, a.sslmode) == (host, port, user, db, sslmode)
