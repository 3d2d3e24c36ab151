"""Helpers of tests/test_schedule*.py: a fresh database per test on the shared upstream (so the
session's own server, which runs a scheduler loop too, never sees these schedules), and waiting."""
from __future__ import annotations

import time
import uuid

import psycopg
import pytest

FAST_ENV = {"PGML_SCHEDULE_POLL_SECONDS": "0.3", "PGML_MONITOR_FLUSH_SECONDS": "1",
            "PGML_DRIFT_CHECK_SECONDS": "1"}


class Database:
    def __init__(self, upstream, name: str) -> None:
        self.name = name
        self.dsn = upstream.dsn.rsplit("/", 1)[0] + "/" + name

    def admin(self) -> psycopg.Connection:
        """The upstream superuser, in this database, directly (not through a server)."""
        return psycopg.connect(self.dsn, autocommit=True)

    def client(self, srv, user: str = "postgres", password: str | None = None) -> psycopg.Connection:
        return psycopg.connect(srv.dsn(user=user, password=password, dbname=self.name), autocommit=True,
                               connect_timeout=10)


@pytest.fixture
def db(upstream):
    name = f"sched_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(upstream.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield Database(upstream, name)
    with psycopg.connect(upstream.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def wait_for(predicate, timeout: float, what: str, step: float = 0.3):
    """Poll until predicate() is truthy and return its value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except psycopg.OperationalError as exc:
            last_error = exc
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}" + (f" ({last_error})" if last_error else ""))
        time.sleep(step)
