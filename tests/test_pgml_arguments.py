"""pgml.* arguments from hostile or odd callers: names are quoted or bound, never spliced into SQL;
wrong types, NULLs, empty/huge arrays and NaN/Infinity features get clean errors and the session
stays usable."""
from __future__ import annotations

import math

import psycopg
import pytest
from psycopg import sql

ODD_SCHEMA = 'Schéma "X"; --'
ODD_TABLE = 'My "Odd" Table; DROP'
ODD_Y = "Größe Y"
ODD_X = ["a'b", 'c"d', "e; DROP TABLE canary; --", "Mixed Case", "ünï çødé ☃"]
ODD_PROJECT = "proj'; DROP TABLE canary; -- \"Ünïcode\" Mixed"


@pytest.fixture(scope="module")
def odd(server):
    """A table with hostile names holding y = 3*x0 - 2*x1 + x2 + 0.5*x3 + 7 (exactly linear)."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS canary (id int)")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(ODD_SCHEMA)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(ODD_SCHEMA)))
        cols = sql.SQL(", ").join(sql.SQL("{} float8").format(sql.Identifier(c)) for c in ODD_X)
        table = sql.Identifier(ODD_SCHEMA, ODD_TABLE)
        conn.execute(sql.SQL("CREATE TABLE {} ({}, {} float8)").format(table, cols, sql.Identifier(ODD_Y)))
        rows = []
        for i in range(200):
            x = [(i * 7 % 13) / 3, (i * 5 % 11) / 2, (i % 17) / 4, (i * 3 % 19) / 5, (i % 5) / 7]
            rows.append((*x, 3 * x[0] - 2 * x[1] + x[2] + 0.5 * x[3] + 7))
        with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(table)) as copy:
            for row in rows:
                copy.write_row(row)
    return server


def _relation() -> str:
    """The relation name as a pgml.train argument: a qualified, quoted identifier."""
    return sql.Identifier(ODD_SCHEMA, ODD_TABLE).as_string(None)


def test_hostile_names_train_and_predict(odd):
    with psycopg.connect(odd.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT * FROM pgml.train(%s, 'regression', %s, %s, 'linear')",
                           (ODD_PROJECT, _relation(), ODD_Y)).fetchone()
        assert row[:2] == (ODD_PROJECT, "regression") and row[3] is True
        # the canary survived and nothing else was created next to it
        assert conn.execute("SELECT to_regclass('public.canary') IS NOT NULL").fetchone() == (True,)
        got = conn.execute("SELECT pgml.predict(%s, ARRAY[1, 2, 3, 4, 5]::float8[])", (ODD_PROJECT,)).fetchone()[0]
        assert got == pytest.approx(3 - 4 + 3 + 2 + 7, rel=1e-3)
        # the same through a literal in the SQL text (quotes doubled as SQL wants)
        literal = ODD_PROJECT.replace("'", "''")
        got2 = conn.execute(f"SELECT pgml.predict('{literal}', ARRAY[1, 2, 3, 4, 5])").fetchone()[0]
        assert got2 == pytest.approx(got)
        # predict inside a query over the odd table itself, its odd columns as features
        feats = sql.SQL(", ").join(sql.Identifier(c) for c in ODD_X)
        q = sql.SQL("SELECT max(abs(pgml.predict({}, ARRAY[{}]) - {})) FROM {}").format(
            sql.Literal(ODD_PROJECT), feats, sql.Identifier(ODD_Y), sql.Identifier(ODD_SCHEMA, ODD_TABLE))
        assert conn.execute(q).fetchone()[0] < 1e-2
        # registry rows carry the names verbatim
        assert conn.execute("SELECT count(*) FROM pgml.projects WHERE name = %s", (ODD_PROJECT,)).fetchone() == (1,)
        # retrain by project name only (last snapshot), and deploy by name
        conn.execute("SELECT * FROM pgml.train(%s, algorithm => 'ridge')", (ODD_PROJECT,))
        assert conn.execute("SELECT * FROM pgml.deploy(%s, 'most_recent')", (ODD_PROJECT,)).fetchone()[:3] == \
            (ODD_PROJECT, "most_recent", "ridge")


@pytest.mark.parametrize("relation, code", [
    ('public.canary; DROP TABLE canary', "42"),           # not a relation name: never run as SQL
    ("canary' OR '1'='1", "42"),
    ('"My ""Odd"" Table; DROP"', "42P01"),               # right name, wrong schema: not found
    ("no_such_table", "42P01"),
])
def test_relation_names_are_not_sql(odd, relation, code):
    with psycopg.connect(odd.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT * FROM pgml.train('inj', 'regression', %s, 'id')", (relation,))
        assert info.value.sqlstate.startswith(code), info.value.sqlstate
        assert conn.execute("SELECT to_regclass('public.canary') IS NOT NULL").fetchone() == (True,)
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_column_names_are_not_sql(odd):
    with psycopg.connect(odd.dsn(), autocommit=True) as conn:
        for y in ("Größe Y; DROP TABLE canary", 'größe y', "1) FROM canary; --"):
            with pytest.raises(psycopg.Error) as info:
                conn.execute("SELECT * FROM pgml.train('inj-col', 'regression', %s, %s)", (_relation(), y))
            assert info.value.sqlstate[:2] in ("42", "22"), (y, info.value.sqlstate, info.value)
        assert conn.execute("SELECT to_regclass('public.canary') IS NOT NULL").fetchone() == (True,)


@pytest.fixture(scope="module")
def trained(odd):
    with psycopg.connect(odd.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        conn.execute("SELECT * FROM pgml.train('args-reg', 'regression', 'pgml.diabetes', 'target', 'linear')")
    return odd


BAD_CALLS = [
    # (SQL, params, acceptable SQLSTATE prefixes)
    # None among the codes: a NULL result is fine too
    ("SELECT pgml.predict(NULL::text, ARRAY[1,2,3,4,5,6,7,8,9,10]::real[])", None, ("22", None)),
    ("SELECT pgml.predict('args-reg', NULL::real[])", None, ("22", None)),
    ("SELECT pgml.predict('args-reg', ARRAY[]::real[])", None, ("22", "42")),
    ("SELECT pgml.predict('args-reg', ARRAY[1,2,3]::real[])", None, ("22",)),
    ("SELECT pgml.predict('args-reg', ARRAY[1,2,3,4,5,6,7,8,9,10,11]::real[])", None, ("22",)),
    ("SELECT pgml.predict('args-reg', ARRAY[[1,2],[3,4]]::real[])", None, ("22", "42")),
    ("SELECT pgml.predict('args-reg', ARRAY['a','b']::text[])", None, ("42", "22")),
    ("SELECT pgml.predict('args-reg', 'not an array')", None, ("22", "42")),
    ("SELECT pgml.predict('args-reg', 42)", None, ("42", "22")),       # VARIADIC: one feature
    ("SELECT pgml.predict(ARRAY[1], ARRAY[1,2])", None, ("42",)),
    ("SELECT pgml.predict('no such project ''\"', ARRAY[1,2,3,4,5,6,7,8,9,10]::real[])", None, ("42",)),
    ("SELECT pgml.predict(-1, ARRAY[1,2,3,4,5,6,7,8,9,10]::real[])", None, ("42", "22")),
    ("SELECT pgml.predict(99999999999, ARRAY[1,2,3,4,5,6,7,8,9,10]::real[])", None, ("42", "22")),
    # (a NULL feature is imputed now, as at training: tests/test_predict_positions.py)
    ("SELECT pgml.predict('args-reg', %s::real[])", (list(range(100_000)),), ("22",)),
    ("SELECT pgml.predict_proba('args-reg', ARRAY[1,2,3,4,5,6,7,8,9,10]::real[])", None, ("22", "42", "0A")),
    ("SELECT pgml.predict('args-reg')", None, ("42",)),
    ("SELECT pgml.predict('args-reg', ARRAY[1,2,3,4,5,6,7,8,9,10]::real[], 3)", None, ("42", "22")),
    # the registry's NOT NULL answers (23502), on the client's own session
    ("SELECT * FROM pgml.train(NULL, 'regression', 'pgml.diabetes', 'target')", None, ("22", "42", "23")),
    ("SELECT * FROM pgml.train('args-x', 'no-such-task', 'pgml.diabetes', 'target')", None, ("22", "42")),
    ("SELECT * FROM pgml.train('args-x', 'regression', 'pgml.diabetes', 'target', 'no_such_algo')", None,
     ("22", "42")),
    ("SELECT * FROM pgml.train('args-x', 'regression', 'pgml.diabetes', 'target', 'linear', 'not json')", None,
     ("22",)),
    ("SELECT * FROM pgml.train('args-x', 'regression', 'pgml.diabetes', 'target', 'linear', "
     "'{\"no_such_param\": 1}')", None, ("22", "42")),
    ("SELECT * FROM pgml.train('args-x', 'regression', 'pgml.diabetes', 'target', test_size => 1.5)", None,
     ("22",)),
    ("SELECT * FROM pgml.train('args-x', 'regression', 'pgml.diabetes', 'target', test_size => 'x')", None,
     ("22", "42")),
    ("SELECT * FROM pgml.train('args-never-trained')", None, ("42", "22", "P0")),
    ("SELECT * FROM pgml.deploy('args-reg', 'no_such_strategy')", None, ("22", "42")),
    ("SELECT * FROM pgml.deploy(NULL::text, 'best_score')", None, ("22", "42", None)),
    ("SELECT pgml.load_dataset('no_such_dataset')", None, ("22", "42")),
    ("SELECT pgml.load_dataset(NULL)", None, ("22", "42", None)),
]


@pytest.mark.parametrize("i", range(len(BAD_CALLS)))
def test_bad_arguments_clean_errors(trained, i):
    query, params, codes = BAD_CALLS[i]
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        if True:
            try:
                got = conn.execute(query, params).fetchall()
                assert None in codes and got == [(None,)], f"no error from {query}: {got[:3]}"
            except psycopg.Error as exc:
                assert exc.sqlstate is not None and exc.sqlstate[:2] in [c for c in codes if c] \
                    or exc.sqlstate in codes, (query, exc.sqlstate, str(exc))
                assert exc.sqlstate != "XX000", (query, str(exc))     # never an internal error
        # the session is still usable, in and out of a transaction
        assert conn.execute("SELECT 1").fetchone() == (1,)
        with conn.transaction():
            assert conn.execute("SELECT pgml.predict('args-reg', ARRAY[0,0,0,0,0,0,0,0,0,0]::real[])").fetchone()[0] \
                is not None


def test_nan_and_infinity_features(trained):
    """NaN/Infinity are valid real values: the answer is a float (NaN, ±inf or finite), never a crash."""
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        for bad in ("NaN", "Infinity", "-Infinity"):
            try:
                v = conn.execute(f"SELECT pgml.predict('args-reg', ARRAY[1,2,3,4,5,6,7,8,9,'{bad}']::real[])"
                                 ).fetchone()[0]
                assert isinstance(v, float)
                assert math.isnan(v) or math.isinf(v) or math.isfinite(v)
            except psycopg.Error as exc:
                assert exc.sqlstate[:2] == "22", (bad, exc.sqlstate, str(exc))
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_huge_feature_arrays_in_extended_protocol(trained):
    """100k-element arrays as bound parameters (binary and text), in a pipeline: clean 22xxx errors."""
    with psycopg.connect(trained.dsn(), autocommit=True) as conn:
        huge = [float(i) for i in range(100_000)]
        for binary in (False, True):
            with pytest.raises(psycopg.Error) as info:
                conn.cursor(binary=binary).execute("SELECT pgml.predict('args-reg', %s::real[])", (huge,))
            assert info.value.sqlstate[:2] == "22", info.value
        with pytest.raises(psycopg.Error) as info:
            with conn.pipeline():
                conn.execute("SELECT 1")
                conn.execute("SELECT pgml.predict('args-reg', %s::float8[])", (huge,))
                conn.execute("SELECT 2")
        assert info.value.sqlstate[:2] == "22", info.value
        assert conn.execute("SELECT 3").fetchone() == (3,)
