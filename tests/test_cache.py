"""The model cache end to end (issue 4, "Cache" and "Hot path"): bounded in bytes with LRU
eviction, warmed at start-up, consistent across replicas through NOTIFY, signed artifacts, and a
prepared single-row prediction that touches neither the upstream nor the SQL parser.

Each test gets its own database in the shared upstream (and servers pointed at it), so the
deployments made by other test modules do not change what these servers load or count.
"""
from __future__ import annotations

import asyncio
import re
import secrets
import time
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psycopg
import pytest
from psycopg import errors

from pgml_server.sql.router import Router

FEATS = "ARRAY[0.03,0.05,0.06,0.02,-0.04,-0.03,-0.04,-0.002,0.02,-0.017]"
ROW = [0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, -0.002, 0.02, -0.017]
STATS = "SELECT * FROM pgml.cache_stats()"


# ---------------------------------------------------------------- helpers

def database_dsn(dsn: str, dbname: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + dbname))


@pytest.fixture
def fresh_db(upstream):
    """fresh_db(name) → the DSN of a new, empty database in the shared upstream."""
    made: list[str] = []

    def make(name: str) -> str:
        with psycopg.connect(upstream.dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return database_dsn(upstream.dsn, name)

    yield make
    # start_server's servers stop first (fixtures tear down in reverse); FORCE ends any other session
    with psycopg.connect(upstream.dsn, autocommit=True) as conn:
        for name in made:
            try:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except psycopg.Error:
                pass


def on(start_server, db: str, *args: str, **kw):
    """A pgml-server whose upstream is database `db`; clients connect to that database too."""
    srv = start_server(*args, upstream_dsn=db, **kw)
    srv.dbname = urlsplit(db).path.lstrip("/")
    return srv


def client_dsn(srv) -> str:
    return srv.dsn(dbname=srv.dbname)


def connect(srv) -> psycopg.Connection:
    return psycopg.connect(client_dsn(srv), autocommit=True)


def stats(conn) -> dict:
    cur = conn.execute(STATS)
    return dict(zip([d.name for d in cur.description], cur.fetchone()))


def predict(conn, project, feats: str = FEATS) -> float:
    return conn.execute(f"SELECT pgml.predict(%s, {feats})", (project,)).fetchone()[0]


def train(conn, project: str, algorithm: str, hyperparams: str = "{}", **extra) -> tuple:
    args = "".join(f", {k} => {v}" for k, v in extra.items())
    return conn.execute(f"SELECT * FROM pgml.train(%s, 'regression', 'pgml.diabetes', 'target', %s, "
                        f"%s::jsonb{args})", (project, algorithm, hyperparams)).fetchone()


def deployed_ids(conn) -> dict[str, int]:
    return dict(conn.execute("SELECT name, id FROM pgml.deployed_models").fetchall())


def wait_for(check, timeout: float, interval: float = 0.02):
    """Poll check() until it returns something truthy; returns (value, seconds waited)."""
    started = time.monotonic()
    while True:
        value = check()
        if value or time.monotonic() - started > timeout:
            return value, time.monotonic() - started
        time.sleep(interval)


# ---------------------------------------------------------------- (a) bounded in bytes, LRU

REPLICA_WAIT = 10.0   # seconds; a NOTIFY normally arrives in milliseconds
# The byte-bound tests count the numpy walk's node arrays: a native tree plan (a .so of a few
# hundred KB, or already built by an earlier run and loaded from the .so cache) would make the
# sizes depend on what ran before, so their servers keep tree models on the walk.
WALK = {"env": {"PGML_NATIVE_TREES": "0"}}
FOREST = '{"n_estimators": 150}'      # fully grown trees on diabetes: about 2.5 MB of node arrays


def test_cache_is_bounded_in_bytes_and_reloads_evicted_models(fresh_db, start_server):
    db = fresh_db("pgml_cache_bound")
    reference = on(start_server, db, **WALK)        # default 1 GiB: never evicts
    small = on(start_server, db, "--model-cache-mb", "1", **WALK)
    projects = ["bound-a", "bound-b", "bound-c"]
    with connect(reference) as ref, connect(small) as conn:
        ref.execute("SELECT pgml.load_dataset('diabetes')")
        for p in projects:
            train(ref, p, "random_forest", FOREST)
        expected = {p: predict(ref, p) for p in projects}
        s = stats(ref)
        assert s["models"] >= 3 and s["evictions"] == 0
        per_model = s["bytes"] / s["models"]
        assert per_model > (1 << 20), "the forests are meant to be larger than the small server's bound"

        assert stats(conn)["max_bytes"] == 1 << 20
        first = {p: predict(conn, p) for p in projects}
        assert first == pytest.approx(expected, rel=1e-6)
        s = stats(conn)
        assert s["evictions"] >= 2
        assert s["models"] < 3
        # Bounded: over the bound only with a single model that alone exceeds it.
        assert s["bytes"] <= s["max_bytes"] or s["models"] == 1
        assert len(s["model_ids"]) == s["models"]

        # The least recently used went first: predicting bound-a again reloads it, and the answer is the same.
        loads = s["loads"]
        again = predict(conn, "bound-a")
        assert again == pytest.approx(expected["bound-a"], rel=1e-6)
        after = stats(conn)
        assert after["loads"] == loads + 1
        assert after["model_ids"][-1] == deployed_ids(conn)["bound-a"]
        for p in reversed(projects):
            assert predict(conn, p) == pytest.approx(expected[p], rel=1e-6)
        assert stats(conn)["bytes"] <= (1 << 20) or stats(conn)["models"] == 1


def test_lru_keeps_what_fits_and_evicts_the_least_recently_used(fresh_db, start_server):
    """Models smaller than the bound: several fit, and the oldest is the one that goes."""
    db = fresh_db("pgml_cache_lru")
    srv = on(start_server, db, "--model-cache-mb", "4", **WALK)
    with connect(srv) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        forest = '{"n_estimators": 50}'                     # about 0.9 MB each: 4 fit in 4 MB, 5 do not
        for p in ("lru-1", "lru-2", "lru-3", "lru-4", "lru-5"):
            train(conn, p, "random_forest", forest)
        ids = deployed_ids(conn)
        for p in ("lru-1", "lru-2", "lru-3", "lru-4", "lru-5"):
            predict(conn, p)
        s = stats(conn)
        assert 1 < s["models"] < 5 and s["bytes"] <= s["max_bytes"] and s["evictions"] >= 1
        # The most recently used stay; lru-1 (least recent) is gone.
        assert s["model_ids"][-1] == ids["lru-5"]
        assert ids["lru-1"] not in s["model_ids"]
        assert set(s["model_ids"]) == {ids[p] for p in ("lru-1", "lru-2", "lru-3", "lru-4", "lru-5")[-s["models"]:]}
        # A hit refreshes recency: lru-{oldest cached} used now survives the next load.
        oldest = s["model_ids"][0]
        name = next(p for p, i in ids.items() if i == oldest)
        predict(conn, name)
        predict(conn, "lru-1")                                # a reload, which evicts someone else
        s2 = stats(conn)
        assert oldest in s2["model_ids"] and ids["lru-1"] in s2["model_ids"]
        assert s2["bytes"] <= s2["max_bytes"]


# ---------------------------------------------------------------- (b) warm-up

def test_deployed_models_are_loaded_at_start(fresh_db, start_server):
    db = fresh_db("pgml_cache_warm")
    trainer = on(start_server, db)
    with connect(trainer) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        train(conn, "warm-linear", "linear")
        train(conn, "warm-forest", "random_forest", '{"n_estimators": 10}')
        train(conn, "warm-forest", "linear", automatic_deploy="false")      # trained, not deployed
        ids = deployed_ids(conn)
    assert set(ids) == {"warm-linear", "warm-forest"}

    late = on(start_server, db)
    with connect(late) as conn:
        s, waited = wait_for(lambda: (lambda s: s if s["loads"] >= 2 else None)(stats(conn)), 15)
        assert s, f"the deployed models were not warmed: {stats(conn)}"
        assert sorted(s["model_ids"]) == sorted(ids.values())
        assert s["misses"] == 0 and s["hits"] == 0
        # The first predictions need no load: two hits, no miss, no new load.
        predict(conn, "warm-linear")
        predict(conn, "warm-forest")
        after = stats(conn)
        assert (after["hits"], after["misses"], after["loads"]) == (2, 0, s["loads"])
        # the scalar form is a record of the same columns
        record = conn.execute("SELECT pgml.cache_stats()").fetchone()[0]
        assert len(record) == len(after) and int(record[0]) == after["models"]
    log = late.log()
    assert "model cache warmed: 2 models" in log
    for model_id in ids.values():
        assert f"loaded model {model_id} " in log


def test_warm_up_stops_when_the_cache_is_full(fresh_db, start_server):
    db = fresh_db("pgml_cache_warm_full")
    trainer = on(start_server, db, **WALK)
    with connect(trainer) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        for p in ("full-a", "full-b", "full-c"):
            train(conn, p, "random_forest", FOREST)          # each larger than 1 MB
    small = on(start_server, db, "--model-cache-mb", "1", **WALK)
    wait_for(lambda: "model cache" in small.log() and ("warmed" in small.log()), 15)
    with connect(small) as conn:
        s = stats(conn)
        assert s["loads"] == 1 and s["evictions"] == 0 and s["models"] == 1
        # the others load on first use, with the same answers as the trainer's
        with connect(trainer) as ref:
            for p in ("full-a", "full-b", "full-c"):
                assert predict(conn, p) == pytest.approx(predict(ref, p), rel=1e-6)
    assert "model cache full after warming 1 models" in small.log()


# ---------------------------------------------------------------- --gpu and --gpu-min-batch reach the plans

def test_gpu_flags_reach_the_server_and_its_plans(fresh_db, start_server):
    db = fresh_db("pgml_cache_gpu_flags")
    off = on(start_server, db, "--gpu", "off", "--gpu-min-batch", "123")
    with connect(off) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        train(conn, "gpu-flags", "random_forest", '{"n_estimators": 5}')
        predict(conn, "gpu-flags")
        s = stats(conn)
        assert (s["gpu"], s["gpu_available"], s["gpu_min_batch"]) == ("off", False, 123)
    # native when its .so was built before (same model, an earlier run), else the walk until it is
    assert re.search(r"[ (](trees|native) plan, gpu off\)", off.log())
    auto = on(start_server, db, env={"PGML_GPU": "on", "PGML_GPU_MIN_BATCH": "7"})
    with connect(auto) as conn:
        predict(conn, "gpu-flags")
        s = stats(conn)
        assert (s["gpu"], s["gpu_min_batch"]) == ("on", 7)
    assert "trees plan, gpu on)" in auto.log()


# ---------------------------------------------------------------- (c) replicas

def test_the_deploying_server_uses_the_new_model_at_once(fresh_db, start_server):
    """The server that makes a deploy drops its cached model itself instead of waiting for its own
    NOTIFY: with its LISTEN connection just cut (it reconnects within about a second), a train
    that deploys and a rollback through it are what its very next predictions use."""
    db = fresh_db("pgml_cache_own_deploy")
    srv = on(start_server, db)
    listening = ("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' "
                 "AND datname = current_database()")
    with connect(srv) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")

        def cut_listen() -> None:
            assert wait_for(lambda: conn.execute(listening).fetchone()[0], REPLICA_WAIT)[0]
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE query LIKE 'LISTEN%' AND datname = current_database()")

        # alpha 1000 zeroes every coefficient, even on the standardised features lasso trains on
        assert train(conn, "own", "lasso", '{"alpha": 1000}')[3] is True
        weak = predict(conn, "own")                                     # now cached
        cut_listen()
        assert train(conn, "own", "linear")[3] is True                  # better: deployed at once
        linear_id = deployed_ids(conn)["own"]
        strong = conn.execute(f"SELECT pgml.predict(%s, {FEATS})", (linear_id,)).fetchone()[0]
        assert strong != pytest.approx(weak, rel=1e-3)
        assert predict(conn, "own") == pytest.approx(strong, rel=1e-6)
        cut_listen()
        assert conn.execute("SELECT * FROM pgml.deploy('own', 'rollback')").fetchone()[2] == "lasso"
        assert predict(conn, "own") == pytest.approx(weak, rel=1e-6)


def test_replica_follows_automatic_deploy_rollback_and_deploy_by_id(fresh_db, start_server):
    """Through server A: train (automatically deployed), rollback; through B: deploy a model id.
    The other server predicts with the new model each time (normally within a second; the wait is
    generous so that a loaded CI machine does not turn this into a timing test)."""
    db = fresh_db("pgml_cache_replicas")
    a_srv, b_srv = on(start_server, db), on(start_server, db)
    with connect(a_srv) as a, connect(b_srv) as b:
        a.execute("SELECT pgml.load_dataset('diabetes')")
        # A weak model first, so the next (better) one is deployed automatically.
        assert train(a, "rep", "lasso", '{"alpha": 1000}')[3] is True
        weak = predict(a, "rep")
        assert predict(b, "rep") == pytest.approx(weak, rel=1e-6)      # B caches the weak model
        weak_id = deployed_ids(a)["rep"]

        def follows(conn, expected):
            got, waited = wait_for(lambda: predict(conn, "rep") == pytest.approx(expected, rel=1e-6),
                                   REPLICA_WAIT)
            assert got, f"the replica still predicts {predict(conn, 'rep')}, not {expected}, after {waited:.2f}s"
            return waited

        # 1. train with automatic deploy through A
        assert train(a, "rep", "linear")[3] is True
        strong = predict(a, "rep")
        assert strong != pytest.approx(weak, rel=1e-3)
        follows(b, strong)

        # 2. rollback through A
        assert a.execute("SELECT * FROM pgml.deploy('rep', 'rollback')").fetchone()[2] == "lasso"
        assert predict(a, "rep") == pytest.approx(weak, rel=1e-6)
        follows(b, weak)

        # 3. deploy by model id through B; A follows
        strong_id = a.execute("SELECT m.id FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
                              "WHERE p.name = 'rep' AND m.algorithm = 'linear'").fetchone()[0]
        b.execute("SELECT * FROM pgml.deploy(%s)", (strong_id,))
        follows(a, strong)
        follows(b, strong)

        # 4. a model id names that model whatever is deployed
        assert b.execute(f"SELECT pgml.predict(%s, {FEATS})", (weak_id,)).fetchone()[0] == pytest.approx(weak, rel=1e-6)

        # 5. a deploy that is not an improvement leaves both on the strong model
        assert train(a, "rep", "lasso", '{"alpha": 10}')[3] is False
        time.sleep(0.3)
        assert predict(b, "rep") == pytest.approx(strong, rel=1e-6)


def test_replica_reloads_in_the_background_after_notify(fresh_db, start_server):
    """NOTIFY both drops and reloads: after a deploy the replica's next prediction is a cache hit."""
    db = fresh_db("pgml_cache_notify")
    a_srv, b_srv = on(start_server, db), on(start_server, db)
    with connect(a_srv) as a, connect(b_srv) as b:
        a.execute("SELECT pgml.load_dataset('diabetes')")
        train(a, "bg", "linear")
        train(a, "bg", "ridge", automatic_deploy="false")
        new_id = a.execute("SELECT m.id FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
                           "WHERE p.name = 'bg' AND m.algorithm = 'ridge'").fetchone()[0]
        a.execute("SELECT * FROM pgml.deploy('bg', 'most_recent')")
        s, _ = wait_for(lambda: (lambda s: s if new_id in s["model_ids"] else None)(stats(b)), REPLICA_WAIT)
        assert s, f"replica did not load model {new_id}: {stats(b)}"
        before = stats(b)
        predict(b, "bg")
        after = stats(b)
        assert after["loads"] == before["loads"] and after["misses"] == before["misses"]
        assert after["hits"] == before["hits"] + 1


# ---------------------------------------------------------------- (d) signed artifacts

def test_artifact_key_mismatch_is_refused_and_the_same_key_serves(fresh_db, start_server, upstream):
    db = fresh_db("pgml_cache_hmac")
    key = secrets.token_hex(32)
    signer = on(start_server, db, "--artifact-key", key)
    with connect(signer) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        train(conn, "signed", "linear")
        expected = predict(conn, "signed")
        model_id = deployed_ids(conn)["signed"]

    other = on(start_server, db, "--artifact-key", secrets.token_hex(32))
    default = on(start_server, db)          # the key generated and kept in the upstream
    for srv in (other, default):
        with connect(srv) as conn:
            for target in ("signed", model_id):
                with pytest.raises(psycopg.Error) as info:
                    predict(conn, target)
                assert info.value.sqlstate == "XX001"
                assert "signature" in str(info.value)
                assert info.value.diag.message_hint and "key" in info.value.diag.message_hint
            assert conn.execute("SELECT 1").fetchone() == (1,)        # the session goes on
            assert stats(conn)["models"] == 0
        assert f"refused model {model_id}" in srv.log()

    same = on(start_server, db, "--artifact-key", key)
    with connect(same) as conn:
        assert predict(conn, "signed") == pytest.approx(expected, rel=1e-6)

    # Altered bytes: refused even with the right key, before anything is unpickled.
    with psycopg.connect(db, autocommit=True) as direct:
        direct.execute("UPDATE pgml.files SET data = overlay(data placing '\\x00'::bytea from length(data) for 1) "
                       "WHERE model_id = %s", (model_id,))
    fresh = on(start_server, db, "--artifact-key", key)
    with connect(fresh) as conn:
        with pytest.raises(psycopg.Error) as info:
            predict(conn, "signed")
        assert info.value.sqlstate == "XX001"


# ---------------------------------------------------------------- hot path

def _activity(conn, dbname: str) -> dict:
    return {r[0]: r[1:] for r in conn.execute(
        "SELECT pid, backend_start, state_change, query FROM pg_stat_activity "
        "WHERE datname = %s AND backend_type = 'client backend'", (dbname,))}


def _xacts(conn, dbname: str) -> tuple:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute("SELECT xact_commit + xact_rollback, sessions FROM pg_stat_database WHERE datname = %s",
                        (dbname,)).fetchone()


# Backends flush their transaction counters at most once a second and, once idle, after
# PGSTAT_IDLE_INTERVAL (10 s): wait that long before reading pg_stat_database.
STATS_SETTLE = 11.0


def test_prepared_single_row_predictions_never_touch_the_upstream(fresh_db, start_server, upstream):
    dbname = "pgml_cache_hot"
    db = fresh_db(dbname)
    # Drift monitoring writes its samples to the upstream once a minute by design (issue 13): off here,
    # where every upstream transaction counts. (The scheduler never polls a database without schedules.)
    srv = on(start_server, db, "--monitor-sample", "0")
    with connect(srv) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        train(conn, "hot", "linear")
        expected = predict(conn, "hot")
    with psycopg.connect(db, autocommit=True) as direct:
        direct.execute("VACUUM ANALYZE")        # so autovacuum finds nothing to do while we count

    async def client():
        c = await asyncpg.connect(client_dsn(srv))
        try:
            backend = await c.fetchval("SELECT pg_backend_pid()")        # forwarded: the client's upstream backend
            stmt = await c.prepare("SELECT pgml.predict($1, $2::float8[])")
            bound = await c.prepare("SELECT pgml.predict('hot', ARRAY[0.03,0.05,0.06,0.02,-0.04,-0.03,-0.04,"
                                    "-0.002,0.02,-0.017])")
            first = await stmt.fetchval("hot", ROW)                      # first use: the per-session read check
            assert await bound.fetchval() == pytest.approx(first)
            return c, stmt, bound, backend, first
        except BaseException:
            await c.close()
            raise

    loop = asyncio.new_event_loop()
    try:
        c, stmt, bound, backend, first = loop.run_until_complete(client())
        assert first == pytest.approx(expected, rel=1e-6)
        with psycopg.connect(upstream.dsn, autocommit=True) as monitor:    # another database: not counted
            time.sleep(STATS_SETTLE)
            activity, xacts = _activity(monitor, dbname), _xacts(monitor, dbname)
            assert backend in activity

            async def hammer():
                values = set()
                for i in range(500):
                    values.add(await stmt.fetchval("hot", ROW))
                    values.add(await bound.fetchval())
                return values
            values = loop.run_until_complete(hammer())
            assert values == {first}

            # No backend of that database ran anything: same backends, same last state change, same query.
            assert _activity(monitor, dbname) == activity
            time.sleep(STATS_SETTLE)
            after = _xacts(monitor, dbname)
            assert after[1] == xacts[1], "a new upstream session was opened"
            # Autovacuum's own transactions in that database are the only ones allowed for.
            assert after[0] - xacts[0] <= 20, f"{after[0] - xacts[0]} upstream transactions for 1000 predictions"
        loop.run_until_complete(c.close())
    finally:
        loop.close()


def test_router_parses_a_statement_once(monkeypatch):
    """classify() caches by SQL text: the second call returns the cached Route without pglast."""
    import pglast
    calls = []
    real = pglast.parse_sql

    def counting(sql):
        calls.append(sql)
        return real(sql)
    monkeypatch.setattr(pglast, "parse_sql", counting)
    router = Router()
    sql = "SELECT pgml.predict('hot', ARRAY[1.0, 2.0])"
    first = router.classify(sql)
    assert calls == [sql] and first.kind == "local"
    prepared = "SELECT pgml.predict($1, $2::float8[])"
    p1 = router.classify(prepared)

    def refuse(sql):
        raise AssertionError(f"parsed again: {sql}")
    monkeypatch.setattr(pglast, "parse_sql", refuse)
    for _ in range(3):
        assert router.classify(sql) is first
        assert router.classify(prepared) is p1
    # The compiled call is reused as well: nothing is rebound per execution.
    assert router.classify(sql).statement.calls[0] is first.statement.calls[0]


def test_router_cache_is_bounded(monkeypatch):
    router = Router(cache_size=2)
    a, b, c = (f"SELECT pgml.predict('p{i}', ARRAY[1.0])" for i in range(3))
    ra = router.classify(a)
    router.classify(b)
    assert router.classify(a) is ra          # a is now the most recent
    router.classify(c)                        # evicts b
    import pglast
    parsed = []
    real = pglast.parse_sql
    monkeypatch.setattr(pglast, "parse_sql", lambda sql: parsed.append(sql) or real(sql))
    assert router.classify(a) is ra
    router.classify(b)
    assert parsed == [b]
