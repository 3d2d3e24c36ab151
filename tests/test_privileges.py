"""Privileges are the upstream's: pgml.train reads and writes with the client's own role, predict
checks the client may read pgml.models, and tampered model artifacts are refused (XX001)."""
from __future__ import annotations

import psycopg
import pytest

PW = "pw-Priv1"
ROLES = ("priv_noselect", "priv_nowrite", "priv_reader", "priv_full")
FEATURES = "ARRAY[1,2,3,4,5,6,7,8,9,10]::real[]"


def _admin(upstream):
    return psycopg.connect(upstream.dsn, autocommit=True)


@pytest.fixture(scope="module")
def roles(server, upstream):
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        conn.execute("SELECT * FROM pgml.train('priv-proj', 'regression', 'pgml.diabetes', 'target', 'linear')")
    with _admin(upstream) as conn:
        conn.execute("DROP TABLE IF EXISTS priv_secret")
        conn.execute("CREATE TABLE priv_secret AS SELECT * FROM pgml.diabetes")
        for role in ROLES:
            conn.execute(f"DROP OWNED BY {role}") if conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() else None
            conn.execute(f"DROP ROLE IF EXISTS {role}")
            conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PW}'")
        # may write the registry, may not read the relation
        for role in ("priv_noselect", "priv_full"):
            conn.execute(f"GRANT USAGE, CREATE ON SCHEMA pgml TO {role}")
            conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA pgml TO {role}")
            conn.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA pgml TO {role}")
        conn.execute("GRANT SELECT ON priv_secret TO priv_full")
        # may read the relation and the registry, may not write it
        conn.execute("GRANT USAGE ON SCHEMA pgml TO priv_nowrite")
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA pgml TO priv_nowrite")
        conn.execute("GRANT SELECT ON priv_secret TO priv_nowrite")
        # may use the schema, may not read pgml.models
        conn.execute("GRANT USAGE ON SCHEMA pgml TO priv_reader")
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA pgml TO priv_reader")
        conn.execute("REVOKE SELECT ON pgml.models FROM priv_reader")
    yield server
    with _admin(upstream) as conn:
        for role in ROLES:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute("DROP TABLE IF EXISTS priv_secret")


def _as(srv, role):
    return psycopg.connect(srv.dsn(user=role, password=PW), autocommit=True)


def test_train_needs_select_on_the_relation(roles):
    with _as(roles, "priv_noselect") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute("SELECT * FROM pgml.train('priv-a', 'regression', 'public.priv_secret', 'target')")
        assert info.value.sqlstate == "42501"
        assert conn.execute("SELECT current_user").fetchone() == ("priv_noselect",)
    # the same grants plus SELECT on the relation: training works, so the relation was the reason
    with _as(roles, "priv_full") as conn:
        row = conn.execute("SELECT * FROM pgml.train('priv-full', 'regression', 'public.priv_secret', 'target', "
                           "'linear')").fetchone()
        assert row[0] == "priv-full"
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE schemaname = 'pgml' AND tablename = "
                             "(SELECT 'snapshot_' || snapshot_id FROM pgml.models m JOIN pgml.projects p "
                             "ON p.id = m.project_id WHERE p.name = 'priv-full' ORDER BY m.id DESC LIMIT 1)"
                             ).fetchone()
        assert owner == ("priv_full",)      # the snapshot was made by the client's own role


def test_registry_writes_use_the_clients_role(roles, upstream):
    with _admin(upstream) as admin:
        models_before = admin.execute("SELECT count(*) FROM pgml.models").fetchone()[0]
    with _as(roles, "priv_nowrite") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM pgml.train('priv-b', 'regression', 'public.priv_secret', 'target')")
        # deploy writes the registry too
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM pgml.deploy('priv-proj', 'most_recent')")
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with _admin(upstream) as admin:
        assert admin.execute("SELECT count(*) FROM pgml.models").fetchone()[0] == models_before
        assert admin.execute("SELECT count(*) FROM pgml.projects WHERE name = 'priv-b'").fetchone() == (0,)


def test_predict_needs_select_on_models(roles):
    # the model is in the shared cache already (trained through this server)
    with psycopg.connect(roles.dsn(), autocommit=True) as conn:
        expected = conn.execute(f"SELECT pgml.predict('priv-proj', {FEATURES})").fetchone()[0]
    with _as(roles, "priv_reader") as conn:
        for query in (f"SELECT pgml.predict('priv-proj', {FEATURES})",
                      f"SELECT pgml.predict(m.id, {FEATURES}) FROM (SELECT 1 AS id) m"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(query)
        # and in the extended protocol, twice (the check is per session, not skipped the 2nd time)
        for _ in range(2):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT pgml.predict(%s, %s::real[])", ("priv-proj", list(range(1, 11))))
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with _as(roles, "priv_full") as conn:
        assert conn.execute(f"SELECT pgml.predict('priv-proj', {FEATURES})").fetchone()[0] == pytest.approx(expected)


def test_tampered_artifact_is_refused(server, upstream, start_server):
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        conn.execute("SELECT * FROM pgml.train('tamper-proj', 'regression', 'pgml.diabetes', 'target', 'linear')")
        good = conn.execute(f"SELECT pgml.predict('tamper-proj', {FEATURES})").fetchone()[0]
    with _admin(upstream) as admin:
        model_id = admin.execute(
            "SELECT d.model_id FROM pgml.deployments d JOIN pgml.projects p ON p.id = d.project_id "
            "WHERE p.name = 'tamper-proj' ORDER BY d.id DESC LIMIT 1").fetchone()[0]
        parts = admin.execute("SELECT id, data FROM pgml.files WHERE model_id = %s ORDER BY part",
                              (model_id,)).fetchall()
        assert parts
        # flip one byte in the middle of the first part: the pickle may even still load, the HMAC may not
        fid, data = parts[0]
        data = bytes(data)
        i = len(data) // 2
        admin.execute("UPDATE pgml.files SET data = %s WHERE id = %s",
                      (data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:], fid))
    try:
        fresh = start_server()          # a cold cache: the artifact is read from the upstream
        with psycopg.connect(fresh.dsn(), autocommit=True) as conn:
            for query in (f"SELECT pgml.predict('tamper-proj', {FEATURES})",
                          f"SELECT pgml.predict({model_id}, {FEATURES})"):
                with pytest.raises(psycopg.Error) as info:
                    conn.execute(query)
                assert info.value.sqlstate == "XX001", (info.value.sqlstate, str(info.value))
                assert "signature" in str(info.value).lower()
            assert conn.execute("SELECT 1").fetchone() == (1,)
            # other projects still predict on the same server
            conn.execute("SELECT * FROM pgml.train('tamper-other', 'regression', 'pgml.diabetes', 'target', 'linear')")
            assert conn.execute(f"SELECT pgml.predict('tamper-other', {FEATURES})").fetchone()[0] is not None
    finally:
        with _admin(upstream) as admin:
            admin.execute("UPDATE pgml.files SET data = %s WHERE id = %s", (data, fid))
    # restored: a fresh server predicts as before
    again = start_server()
    with psycopg.connect(again.dsn(), autocommit=True) as conn:
        assert conn.execute(f"SELECT pgml.predict('tamper-proj', {FEATURES})").fetchone()[0] == pytest.approx(good)
