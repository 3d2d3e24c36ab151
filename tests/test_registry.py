"""The `pgml` registry and AsyncpgExecutor against a real PostgreSQL (the embedded upstream).

Each test gets a fresh connection in `asyncio.run`; the registry tests share one migrated
database, created for this module, and use project names of their own.
"""
from __future__ import annotations

import asyncio
import itertools
import uuid

import asyncpg
import pytest

from pgml_server.db import registry
from pgml_server.db.executor import AsyncpgExecutor
from pgml_server.db.registry import models as registry_models
from protocol.errors import PgError

_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}_{next(_names)}"


def database_dsn(upstream, name: str) -> str:
    return f"postgresql://postgres@{upstream.host}:{upstream.port}/{name}"


async def _admin(upstream, sql: str) -> None:
    conn = await asyncpg.connect(upstream.dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def fresh_db(upstream):
    """The DSN of a new, empty database (dropped afterwards)."""
    name = "reg_" + uuid.uuid4().hex[:12]
    asyncio.run(_admin(upstream, f"CREATE DATABASE {name}"))
    yield database_dsn(upstream, name)
    asyncio.run(_admin(upstream, f"DROP DATABASE {name} WITH (FORCE)"))


@pytest.fixture(scope="module")
def db(upstream):
    """A migrated database shared by this module's tests."""
    name = "reg_" + uuid.uuid4().hex[:12]
    asyncio.run(_admin(upstream, f"CREATE DATABASE {name}"))
    dsn = database_dsn(upstream, name)
    run(dsn, registry.migrate)
    yield dsn
    asyncio.run(_admin(upstream, f"DROP DATABASE {name} WITH (FORCE)"))


def run(dsn: str, fn, *args):
    """Run `await fn(executor, *args)` on a new connection to `dsn`."""
    async def body():
        conn = await asyncpg.connect(dsn)
        try:
            return await fn(AsyncpgExecutor(conn), *args)
        finally:
            await conn.close()
    return asyncio.run(body())


# ---------------------------------------------------------------- migrations

def test_migrate_twice_applies_once(fresh_db):
    assert run(fresh_db, registry.schema_version) == 0
    assert run(fresh_db, registry.migrate) == [v for v, _ in registry.MIGRATIONS]
    assert run(fresh_db, registry.migrate) == []
    assert run(fresh_db, registry.schema_version) == registry.MIGRATIONS[-1][0]
    names = run(fresh_db, lambda ex: ex.fetch(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'pgml' AND c.relkind IN ('r', 'v') ORDER BY 1"))
    assert [n for (n,) in names] == ["deployed_models", "deployments", "files", "model_bins", "models",
                                     "notebook_cells", "notebooks", "overview", "prediction_samples",
                                     "prediction_stats", "projects", "schedule_history", "schedule_runs", "schedules",
                                     "schema_migrations", "settings", "snapshots", "trained_models"]


def test_concurrent_migrations_from_four_connections(fresh_db):
    async def body():
        conns = [await asyncpg.connect(fresh_db) for _ in range(4)]
        try:
            return await asyncio.gather(*(registry.migrate(AsyncpgExecutor(c)) for c in conns))
        finally:
            for c in conns:
                await c.close()
    results = asyncio.run(body())
    # one connection applies every migration, the other three find nothing left to do
    assert sorted(map(len, results)) == [0, 0, 0, len(registry.MIGRATIONS)]
    assert run(fresh_db, lambda ex: ex.fetchval("SELECT count(*) FROM pgml.schema_migrations")) == \
        len(registry.MIGRATIONS)


def test_views_are_readable_by_any_role(db, upstream):
    role = unique("reader")
    run(db, lambda ex: ex.execute(f"CREATE ROLE {role} LOGIN"))
    conn_dsn = db.replace("postgres@", f"{role}@")

    async def body():
        conn = await asyncpg.connect(conn_dsn)
        try:
            for view in ("overview", "trained_models", "deployed_models"):
                await conn.fetch(f"SELECT * FROM pgml.{view}")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch("SELECT * FROM pgml.settings")
        finally:
            await conn.close()
    # The superuser is trusted over TCP by name only; other roles use SCRAM, so trust this one here.
    before = list(upstream.extra_hba)
    upstream.set_hba([f"host all {role} 127.0.0.1/32 trust", *before])
    try:
        asyncio.run(body())
    finally:
        upstream.set_hba(before)


# ---------------------------------------------------------------- executor

def test_executor_types_and_copy(db):
    async def body(ex):
        await ex.execute("CREATE TEMP TABLE t (a int, b text, j jsonb, n numeric, ts timestamptz, arr float8[])")
        tag = await ex.copy_in("t", ["a", "b"], b"1\tone\n2\ttwo\n")
        assert tag == "COPY 2"
        await ex.execute("UPDATE t SET j = $1::jsonb, n = $2::numeric, ts = '2024-01-02 03:04:05+00', "
                         "arr = ARRAY[1.5, 2]", {"k": [1, 2]}, 2.5)
        rows = await ex.fetch("SELECT a, b, j, n, ts IS NOT NULL, arr FROM t ORDER BY a")
        assert rows == [(1, "one", {"k": [1, 2]}, 2.5, True, [1.5, 2.0]),
                        (2, "two", {"k": [1, 2]}, 2.5, True, [1.5, 2.0])]
        assert isinstance(await ex.fetchval("SELECT ts FROM t LIMIT 1"), str)
        assert await ex.fetchrow("SELECT 1 WHERE false") is None
        text = await ex.copy_out("SELECT a, b FROM t ORDER BY a", "text")
        assert text == b"1\tone\n2\ttwo\n"
        binary = await ex.copy_out("SELECT a FROM t")
        assert binary.startswith(b"PGCOPY\n\xff\r\n\x00")
        await ex.notice("logged, not sent")
    run(db, body)


def test_executor_copy_into_quoted_schema_table(db):
    async def body(ex):
        await ex.execute('CREATE SCHEMA IF NOT EXISTS "Copy Schema"')
        await ex.execute('CREATE TABLE "Copy Schema"."Odd ""T""" ("X y" int)')
        await ex.copy_in('"Copy Schema"."Odd ""T"""', ["X y"], b"7\n8\n")
        return await ex.fetch('SELECT "X y" FROM "Copy Schema"."Odd ""T""" ORDER BY 1')
    assert run(db, body) == [(7,), (8,)]


# ---------------------------------------------------------------- projects and snapshots

def test_get_or_create_project(db):
    name = unique("proj")
    assert run(db, registry.get_project, name) is None
    first = run(db, registry.get_or_create_project, name, "regression")
    again = run(db, registry.get_or_create_project, name, "regression")
    assert first == again and first.name == name and first.task == "regression"
    assert run(db, registry.get_project, name) == first
    with pytest.raises(PgError) as err:
        run(db, registry.get_or_create_project, name, "classification")
    assert err.value.sqlstate == "22023"


RELATION = '"Snap Schema"."Mixed ""Quoted"" Table"'


def _make_relation(ex):
    return ex.execute(
        'CREATE SCHEMA IF NOT EXISTS "Snap Schema";'
        f'CREATE TABLE IF NOT EXISTS {RELATION} (x1 int, x2 float8, "Y label" text);'
        f"TRUNCATE {RELATION};"
        f"INSERT INTO {RELATION} VALUES (1, 0.5, 'a'), (2, 1.5, 'b'), (3, 2.5, 'a')")


def test_snapshot_of_a_quoted_schema_qualified_relation(db):
    run(db, _make_relation)
    snap = run(db, registry.create_snapshot, RELATION, ["Y label"], 0.25, "random")
    assert (snap.relation_name, snap.y_column_name, snap.test_size, snap.test_sampling, snap.status) == \
        (RELATION, ["Y label"], 0.25, "random", "snapshot")
    assert snap.columns == {"x1": "integer", "x2": "double precision", "Y label": "text"}
    assert run(db, registry.snapshot_columns, snap.id) == [
        ("x1", 23, "integer"), ("x2", 701, "double precision"), ("Y label", 25, "text")]
    rows = run(db, lambda ex: ex.fetch(f"SELECT * FROM {snap.table} ORDER BY x1"))
    assert rows == [(1, 0.5, "a"), (2, 1.5, "b"), (3, 2.5, "a")]
    assert run(db, registry.get_snapshot, snap.id) == snap


def test_snapshot_folds_unquoted_names_and_follows_search_path(db):
    run(db, lambda ex: ex.execute("CREATE TABLE IF NOT EXISTS plain_rel AS SELECT 1 AS a, 2 AS b"))
    snap = run(db, registry.create_snapshot, "PLAIN_Rel", ["b"], 0.5, "last")
    assert run(db, lambda ex: ex.fetch(f"SELECT a, b FROM {snap.table}")) == [(1, 2)]


def test_unmaterialized_snapshot_is_a_view_of_the_relation(db):
    run(db, lambda ex: ex.execute("CREATE TABLE IF NOT EXISTS live_rel (a int)"))
    snap = run(db, registry.create_snapshot, "public.live_rel", ["a"], 0.25, "random", False)
    run(db, lambda ex: ex.execute("INSERT INTO live_rel VALUES (5)"))
    assert not snap.materialized
    assert run(db, lambda ex: ex.fetch(f"SELECT a FROM {snap.table}")) == [(5,)]


def test_snapshot_of_a_missing_relation_raises_42P01_and_writes_nothing(db):
    count = "SELECT count(*) FROM pgml.snapshots"
    before = run(db, lambda ex: ex.fetchval(count))
    with pytest.raises(asyncpg.UndefinedTableError):
        run(db, registry.create_snapshot, "public.no_such_table", ["y"], 0.25, "random")
    assert run(db, lambda ex: ex.fetchval(count)) == before


def test_snapshot_name_cannot_smuggle_sql(db):
    run(db, lambda ex: ex.execute("CREATE TABLE IF NOT EXISTS victim (a int)"))
    with pytest.raises(asyncpg.PostgresError):
        run(db, registry.create_snapshot, "victim; DROP TABLE victim", ["a"], 0.25, "random")
    assert run(db, lambda ex: ex.fetchval("SELECT to_regclass('victim') IS NOT NULL"))


# ---------------------------------------------------------------- models and artifacts

def _project_with_snapshot(db, task="regression"):
    run(db, _make_relation)
    project = run(db, registry.get_or_create_project, unique("p"), task)
    snap = run(db, registry.create_snapshot, RELATION, ["Y label"], 0.25, "random")
    return project, snap


def _trained(db, project, snap, algorithm: str, metrics: dict, artifact: bytes = b"model") -> int:
    model_id = run(db, registry.create_model, project.id, snap.id, algorithm, {"alpha": 1}, None, {}, {})
    run(db, lambda ex: registry.finish_model(ex, model_id, num_features=2, metrics=metrics,
                                             hyperparams={"alpha": 1}, artifact=artifact))
    return model_id


def test_model_lifecycle_and_artifact_parts(db, monkeypatch):
    project, snap = _project_with_snapshot(db)
    model_id = run(db, registry.create_model, project.id, snap.id, "ridge", {"alpha": 2}, "grid",
                   {"alpha": [1, 2]}, {"cv": 3})
    info = run(db, registry.model_info, model_id)
    assert (info["status"], info["project_name"], info["task"], info["algorithm"], info["search"],
            info["search_params"], info["search_args"]) == \
        ("in_progress", project.name, "regression", "ridge", "grid", {"alpha": [1, 2]}, {"cv": 3})
    monkeypatch.setattr(registry_models, "PART_SIZE", 4)
    blob = bytes(range(10))
    run(db, lambda ex: registry.finish_model(ex, model_id, num_features=2, metrics={"r2": 0.5, "mae": float("nan")},
                                             hyperparams={"alpha": 2}, artifact=blob))
    info = run(db, registry.model_info, model_id)
    assert (info["status"], info["num_features"], info["metrics"]) == ("successful", 2, {"r2": 0.5, "mae": None})
    assert run(db, registry.model_artifact, model_id) == blob
    parts = run(db, lambda ex: ex.fetch("SELECT part, length(data) FROM pgml.files WHERE model_id = $1::bigint "
                                        "ORDER BY part", model_id))
    assert parts == [(0, 4), (1, 4), (2, 2)]
    run(db, registry.fail_model, model_id, "too late")          # a successful model stays so
    assert run(db, registry.model_info, model_id)["status"] == "successful"
    assert run(db, registry.last_snapshot, project.id) == snap
    assert run(db, registry.model_info, 10**12) is None
    assert run(db, registry.model_artifact, 10**12) is None


def test_fail_model_keeps_the_reason(db):
    project, snap = _project_with_snapshot(db)
    model_id = run(db, registry.create_model, project.id, snap.id, "linear", {}, None, {}, {})
    run(db, registry.fail_model, model_id, "canceled")
    info = run(db, registry.model_info, model_id)
    assert (info["status"], info["metrics"]) == ("failed", {"error": "canceled"})


def test_orphaned_and_stale_models_are_failed(db):
    project, snap = _project_with_snapshot(db)
    # An orphan: its training connection is gone. A live one: its connection is still open.
    orphan = run(db, registry.create_model, project.id, snap.id, "linear", {}, None, {}, {})

    async def body():
        live_conn = await asyncpg.connect(db)
        try:
            ex = AsyncpgExecutor(live_conn)
            live = await registry.create_model(ex, project.id, snap.id, "linear", {}, None, {}, {})
            await registry.fail_orphaned_models(ex)
            return live
        finally:
            await live_conn.close()
    live = asyncio.run(body())
    assert run(db, registry.model_info, orphan)["status"] == "failed"
    assert run(db, registry.model_info, live)["status"] == "in_progress"
    run(db, lambda ex: ex.execute("UPDATE pgml.models SET updated_at = now() - interval '1 hour' "
                                  "WHERE id = $1::bigint", live))
    assert run(db, registry.fail_stale_models, 600) >= 1
    assert run(db, registry.model_info, live)["status"] == "failed"


def test_hmac_key_is_created_once(db):
    key = run(db, registry.get_or_create_hmac_key)
    assert len(key) == 32
    assert run(db, registry.get_or_create_hmac_key) == key


# ---------------------------------------------------------------- deployments

def test_deploy_strategies(db):
    project, snap = _project_with_snapshot(db)
    low = _trained(db, project, snap, "linear", {"r2": 0.5})
    best = _trained(db, project, snap, "xgboost", {"r2": 0.9})
    recent = _trained(db, project, snap, "linear", {"r2": 0.7})
    failed = run(db, registry.create_model, project.id, snap.id, "linear", {}, None, {}, {})
    run(db, registry.fail_model, failed, "boom")
    name = project.name

    assert run(db, registry.deployed_model, name) is None
    assert run(db, registry.deploy, name, "rollback", None) is None          # nothing to roll back from
    assert run(db, registry.deploy, name, "best_score", None) == best
    assert run(db, registry.deployed_model, name) == (best, "regression", 2, "xgboost")
    assert run(db, registry.deploy, name, "best_score", "linear") == recent
    assert run(db, registry.deploy, name, "rollback", None) == best
    assert run(db, registry.deploy, name, "rollback", None) == recent        # as PostgresML: alternates
    assert run(db, registry.deploy, name, "most_recent", None) == recent
    assert run(db, registry.deploy_model_id, low) == low
    assert run(db, registry.deployed_model, name)[0] == low
    assert run(db, registry.deploy_model_id, failed) is None
    assert run(db, registry.deploy, "no_such_project", "best_score", None) is None
    with pytest.raises(PgError):
        run(db, registry.deploy, name, "worst_score", None)
    deployed = run(db, lambda ex: ex.fetch("SELECT id, name, algorithm FROM pgml.deployed_models "
                                           "WHERE name = $1::text", name))
    assert deployed == [(low, name, "linear")]
    overview = run(db, lambda ex: ex.fetch("SELECT relation_name, y_column_name FROM pgml.overview "
                                           "WHERE name = $1::text", name))
    assert overview and overview[0] == (RELATION, ["Y label"])


def test_classification_best_score_uses_f1(db):
    project, snap = _project_with_snapshot(db, "classification")
    _trained(db, project, snap, "svm", {"f1": 0.6, "accuracy": 0.99})
    better = _trained(db, project, snap, "svm", {"f1": 0.8, "accuracy": 0.5})
    assert run(db, registry.deploy, project.name, "best_score", None) == better


def test_should_auto_deploy(db):
    project, snap = _project_with_snapshot(db)
    first = _trained(db, project, snap, "linear", {"r2": 0.8})
    assert run(db, registry.should_auto_deploy, project.id, first, "r2")      # nothing deployed yet
    run(db, registry.deploy_model_id, first, "new_score")
    worse = _trained(db, project, snap, "linear", {"r2": 0.7})
    equal = _trained(db, project, snap, "linear", {"r2": 0.8})
    unscored = _trained(db, project, snap, "linear", {})
    assert not run(db, registry.should_auto_deploy, project.id, worse, "r2")
    assert run(db, registry.should_auto_deploy, project.id, equal, "r2")
    assert not run(db, registry.should_auto_deploy, project.id, unscored, "r2")


def test_deploy_notifies_listeners(db):
    project, snap = _project_with_snapshot(db)
    model_id = _trained(db, project, snap, "linear", {"r2": 0.1})

    async def body():
        listener = await asyncpg.connect(db)
        got: asyncio.Queue = asyncio.Queue()
        await listener.add_listener(registry.DEPLOY_CHANNEL, lambda *a: got.put_nowait(a[3]))
        conn = await asyncpg.connect(db)
        try:
            await registry.deploy_model_id(AsyncpgExecutor(conn), model_id)
            return await asyncio.wait_for(got.get(), 5)
        finally:
            await conn.close()
            await listener.close()
    assert asyncio.run(body()) == project.name
