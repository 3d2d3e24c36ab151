"""A real upstream PostgreSQL (the embedded wheel) and real pgml-server processes for the tests."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgml_server.embedded import EmbeddedPostgres

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"pgml-server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


class ServerProcess:
    """One pgml-server process started with `python -m pgml_server.cli`."""

    def __init__(self, upstream_dsn: str | None, *args: str, port: int | None = None,
                 log_path: Path | None = None, env: dict | None = None) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        cmd = [sys.executable, "-m", "pgml_server.cli", "--host", self.host, "--port", str(self.port),
               "--log-level", "info", *args]
        if not any(a == "--dashboard" or a.startswith("--dashboard=") for a in args):
            cmd += ["--dashboard", "off"]     # many servers start in tests: none takes port 8000
        if upstream_dsn is not None:
            cmd += ["--upstream", upstream_dsn]
        self.log_path = log_path
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=out,
                                     env={**os.environ, **(env or {})})
        wait_port(self.port, self.proc)

    def dsn(self, user: str = "postgres", password: str | None = None, dbname: str = "postgres",
            **params: str) -> str:
        auth = user if password is None else f"{user}:{password}"
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{auth}@{self.host}:{self.port}/{dbname}" + (f"?{query}" if query else "")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""


@pytest.fixture(scope="session")
def upstream(tmp_path_factory) -> EmbeddedPostgres:
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("upstream") / "data", fast=True)
    pg.start()
    yield pg
    pg.stop()


@pytest.fixture(scope="session")
def upstream_dsn(upstream) -> str:
    return upstream.dsn


@pytest.fixture(scope="session")
def server(upstream, tmp_path_factory) -> ServerProcess:
    log = tmp_path_factory.mktemp("server") / "server.log"
    srv = ServerProcess(upstream.dsn, log_path=log)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def server_dsn(server) -> str:
    return server.dsn()


@pytest.fixture
def start_server(upstream, tmp_path):
    """Start extra pgml-server processes (other flags, replicas); all are stopped after the test."""
    started: list[ServerProcess] = []

    def start(*args: str, upstream_dsn: str | None = None, **kw) -> ServerProcess:
        srv = ServerProcess(upstream_dsn or upstream.dsn, *args,
                            log_path=tmp_path / f"server{len(started)}.log", **kw)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()
