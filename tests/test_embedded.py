"""EmbeddedPostgres: a real cluster from the wheel's binaries, reached by asyncpg and psql."""
from __future__ import annotations

import asyncio
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest

from pgml_server.embedded import EmbeddedPostgres


def psql(pg: EmbeddedPostgres, sql: str, dsn: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(pg.bin_dir / "psql"), dsn or pg.dsn, "-X", "-At", "-c", sql],
                          capture_output=True, text=True, timeout=30)


async def fetchval(dsn: str, sql: str):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("embedded") / "data", fast=True)
    pg.start()
    yield pg
    pg.stop()


def test_start_accepts_asyncpg_and_psql(cluster):
    assert cluster.dsn == f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
    assert asyncio.run(fetchval(cluster.dsn, "SELECT current_user")) == "postgres"
    out = psql(cluster, "SELECT 6 * 7")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"
    for tool in ("psql", "pgbench", "pg_ctl"):
        assert (cluster.bin_dir / tool).exists()


def test_unix_socket_and_server_settings(cluster):
    out = psql(cluster, "SHOW max_connections", dsn=f"host={cluster.socket_dir} port={cluster.port} "
                                                     "user=postgres dbname=postgres")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "300"
    assert psql(cluster, "SHOW fsync").stdout.strip() == "off"            # fast=True
    assert psql(cluster, "SHOW listen_addresses").stdout.strip() == "127.0.0.1"


def test_other_roles_need_a_password_over_tcp(cluster):
    assert psql(cluster, "CREATE ROLE alice LOGIN PASSWORD 's3cret'").returncode == 0
    dsn = f"postgresql://alice:s3cret@127.0.0.1:{cluster.port}/postgres"
    assert asyncio.run(fetchval(dsn, "SELECT current_user")) == "alice"
    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(fetchval(f"postgresql://alice:wrong@127.0.0.1:{cluster.port}/postgres", "SELECT 1"))


def test_set_hba_reloads(cluster):
    psql(cluster, "CREATE ROLE bob LOGIN PASSWORD 'pw'")
    dsn = f"postgresql://bob:pw@127.0.0.1:{cluster.port}/postgres"
    cluster.set_hba(["host all bob 127.0.0.1/32 reject"])      # extra lines come first
    try:
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
            asyncio.run(fetchval(dsn, "SELECT 1"))
    finally:
        cluster.set_hba([])
    assert asyncio.run(fetchval(dsn, "SELECT current_user")) == "bob"


def test_second_handle_reuses_the_running_cluster(cluster):
    started = asyncio.run(fetchval(cluster.dsn, "SELECT pg_postmaster_start_time()::text"))
    other = EmbeddedPostgres(cluster.data_dir)
    other.start()
    assert other.port == cluster.port
    assert asyncio.run(fetchval(other.dsn, "SELECT pg_postmaster_start_time()::text")) == started


def test_stop_and_restart_keep_the_data(tmp_path):
    pg = EmbeddedPostgres(tmp_path / "data", fast=True)
    pg.start()
    try:
        assert psql(pg, "CREATE TABLE kept AS SELECT 1 AS x").returncode == 0
        pg.stop()
        with pytest.raises(OSError):
            asyncio.run(fetchval(pg.dsn, "SELECT 1"))
        pg.start()                                     # existing data dir: no initdb
        assert asyncio.run(fetchval(pg.dsn, "SELECT x FROM kept")) == 1
        pg.restart()
        assert asyncio.run(fetchval(pg.dsn, "SELECT count(*) FROM kept")) == 1
    finally:
        pg.stop()


def test_stale_postmaster_pid_is_ignored(tmp_path):
    pg = EmbeddedPostgres(tmp_path / "data", fast=True)
    pg.start()
    pg.stop()
    # What a killed server leaves behind: a lock file naming a process that no longer exists.
    lines = ["4194000", str(pg.data_dir), "1700000000", str(pg.port), str(pg.socket_dir), "127.0.0.1",
             "0 0", "ready"]
    (pg.data_dir / "postmaster.pid").write_text("\n".join(lines) + "\n")
    pg.start()
    try:
        assert asyncio.run(fetchval(pg.dsn, "SELECT 1")) == 1
    finally:
        pg.stop()


def test_long_data_path_gets_a_short_socket_dir(tmp_path):
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 5, "data with space")
    pg = EmbeddedPostgres(deep, fast=True)
    assert len(str(pg.socket_dir)) < 40 and str(pg.socket_dir).startswith("/tmp/")
    pg.start()
    try:
        assert Path(pg.socket_dir, f".s.PGSQL.{pg.port}").is_socket()
        assert asyncio.run(fetchval(pg.dsn, "SELECT 1")) == 1
    finally:
        pg.stop()


def test_simultaneous_starts_share_one_cluster(tmp_path):
    first, second = (EmbeddedPostgres(tmp_path / "data", fast=True) for _ in range(2))
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda pg: pg.start(), (first, second)))
    try:
        assert first.port == second.port
        assert asyncio.run(fetchval(second.dsn, "SELECT 1")) == 1
    finally:
        first.stop()
