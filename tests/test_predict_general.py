"""The general path's pass two: a call as a column of a LEFT JOIN (joins.py) or, where a join could
change the statement, a lookup. Each test compares with predictions made one row at a time."""
from __future__ import annotations

import psycopg
import pytest

MODEL = "gen-reg"


@pytest.fixture(scope="module")
def conn(server):
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS gen_train, gen")
        c.execute("CREATE TABLE gen_train AS SELECT i::float8 AS a, (i % 7)::float8 AS b, "
                  "(2 * i + (i % 7))::float8 AS y FROM generate_series(1, 200) i")
        c.execute(f"SELECT * FROM pgml.train('{MODEL}', 'regression', 'gen_train', 'y', 'linear')")
        # Duplicate feature rows, a NULL feature array, 0.0 and -0.0 (equal as float8, not as bytes),
        # and columns named like the temp table's (model, features, prediction, call_id).
        c.execute("CREATE TABLE gen (id int, g int, a float8, b float8, model text, features text, "
                  "prediction text, call_id text)")
        c.execute("INSERT INTO gen SELECT i, i % 3, (i % 5)::float8, (i % 2)::float8, 'm', 'f', 'p', 'c' "
                  "FROM generate_series(1, 40) i")
        c.execute("INSERT INTO gen VALUES (41, 0, 0.0, 0.0, 'm', 'f', 'p', 'c'), (42, 0, '-0'::float8, 0.0, "
                  "'m', 'f', 'p', 'c'), (43, 1, NULL, NULL, 'm', 'f', 'p', 'c')")
        yield c


@pytest.fixture(scope="module")
def expected(conn):
    """Predictions of ARRAY[a, b] by id, one row at a time (id 43's NULL elements are imputed)."""
    return {id_: conn.execute(f"SELECT pgml.predict('{MODEL}', ARRAY[%s, %s]::float8[])", (a, b)).fetchone()[0]
            for id_, a, b in conn.execute("SELECT id, a, b FROM gen").fetchall()}


# id 43's features as a NULL array (not an array of NULLs): its prediction is NULL
NULL_ARRAY = "CASE WHEN a IS NULL THEN NULL ELSE ARRAY[a, b] END"


def above(expected, t):
    return sorted(k for k, v in expected.items() if v > t)


def test_duplicates_zeros_and_null_features_keep_every_row_once(conn, expected):
    rows = conn.execute(f"SELECT id, pgml.predict('{MODEL}', {NULL_ARRAY}) AS p FROM gen "
                        "ORDER BY p NULLS LAST, id").fetchall()
    assert sorted(r[0] for r in rows) == sorted(expected)          # no row lost or repeated
    assert rows[-1] == (43, None)
    assert dict(rows[:-1]) == pytest.approx({k: v for k, v in expected.items() if k != 43})
    zeros = conn.execute(f"SELECT id FROM gen WHERE pgml.predict('{MODEL}', ARRAY[a, b]) = "
                         f"pgml.predict('{MODEL}', ARRAY[0.0, 0.0]::float8[]) ORDER BY id").fetchall()
    assert [r[0] for r in zeros] == [id_ for id_ in sorted(expected) if expected[id_] == expected[41]]
    assert {41, 42} <= {r[0] for r in zeros}


def test_where_with_columns_named_like_the_temp_table_and_system_columns(conn, expected):
    rows = conn.execute(f"SELECT id, model, features, prediction, call_id, ctid IS NOT NULL, xmin IS NOT NULL "
                        f"FROM gen WHERE pgml.predict('{MODEL}', ARRAY[a, b]) > 5 ORDER BY id").fetchall()
    assert [r[0] for r in rows] == above(expected, 5)
    assert all(r[1:] == ("m", "f", "p", "c", True, True) for r in rows)


def test_star_over_two_items_lists_only_their_columns(conn, expected):
    cur = conn.execute(f"SELECT * FROM gen, (SELECT 1 AS one) o WHERE pgml.predict('{MODEL}', ARRAY[a, b]) > 5 "
                       "ORDER BY id")
    names = [d.name for d in cur.description]
    assert names == ["id", "g", "a", "b", "model", "features", "prediction", "call_id", "one"]
    assert [r[0] for r in cur.fetchall()] == above(expected, 5)


def test_several_calls_and_the_same_call_twice(conn, expected):
    rows = conn.execute(f"SELECT id, pgml.predict('{MODEL}', ARRAY[a, b]) AS p, "
                        f"pgml.predict('{MODEL}', ARRAY[b, a]) AS q FROM gen "
                        f"WHERE pgml.predict('{MODEL}', ARRAY[a, b]) > 5 "
                        f"ORDER BY pgml.predict('{MODEL}', ARRAY[a, b]), id").fetchall()
    want = sorted((k for k, v in expected.items() if v > 5), key=lambda k: (expected[k], k))
    assert [r[0] for r in rows] == want
    for id_, p, q in rows:
        a, b = conn.execute("SELECT a, b FROM gen WHERE id = %s", (id_,)).fetchone()
        assert p == pytest.approx(expected[id_])
        assert q == pytest.approx(conn.execute(f"SELECT pgml.predict('{MODEL}', ARRAY[%s, %s]::float8[])",
                                               (b, a)).fetchone()[0])


def test_the_same_pass_one_for_two_call_ids(conn, expected):
    """Two UNION arms with the same call: two call ids whose pass one is the same query, collected
    once and copied."""
    n = conn.execute(f"SELECT count(*) FROM (SELECT id FROM gen WHERE pgml.predict('{MODEL}', ARRAY[a, b]) > 5 "
                     f"UNION ALL SELECT id FROM gen WHERE pgml.predict('{MODEL}', ARRAY[a, b]) > 5) u").fetchone()[0]
    assert n == 2 * sum(1 for v in expected.values() if v > 5)


def test_grouped_positions_and_aggregates(conn, expected):
    by_g = dict(conn.execute(f"SELECT g, avg(pgml.predict('{MODEL}', ARRAY[a, b])) FROM gen GROUP BY g").fetchall())
    ids = conn.execute("SELECT id, g FROM gen").fetchall()
    for g, avg in by_g.items():
        values = [expected[i] for i, gg in ids if gg == g]
        assert avg == pytest.approx(sum(values) / len(values))
    # a call outside any aggregate, over a grouped column: stays a lookup
    rows = conn.execute(f"SELECT g, pgml.predict('{MODEL}', ARRAY[g, g]::float8[]) FROM gen GROUP BY g ORDER BY g"
                        ).fetchall()
    assert [r[0] for r in rows] == [0, 1, 2] and all(isinstance(r[1], float) for r in rows)
    # GROUP BY the prediction's alias, and HAVING over an aggregate of predictions
    groups = conn.execute(f"SELECT pgml.predict('{MODEL}', ARRAY[a, b]) AS p, count(*) FROM gen GROUP BY p").fetchall()
    assert sum(n for _, n in groups) == len(expected)
    having = conn.execute(f"SELECT g FROM gen GROUP BY g HAVING max(pgml.predict('{MODEL}', ARRAY[a, b])) > 0 "
                          "ORDER BY g").fetchall()
    assert [r[0] for r in having] == [0, 1, 2]


def test_correlated_subquery_for_update_and_update_keep_lookups(conn, expected):
    rows = conn.execute(f"SELECT o.id, (SELECT count(*) FROM gen i WHERE i.g = o.g AND "
                        f"pgml.predict('{MODEL}', ARRAY[i.a, o.b]) > 5) FROM gen o WHERE o.id <= 3 ORDER BY o.id"
                        ).fetchall()
    assert [r[0] for r in rows] == [1, 2, 3] and all(r[1] >= 0 for r in rows)
    with conn.transaction():
        locked = conn.execute(f"SELECT id FROM gen WHERE pgml.predict('{MODEL}', ARRAY[a, b]) > 5 FOR UPDATE"
                              ).fetchall()
    assert sorted(r[0] for r in locked) == above(expected, 5)
    conn.execute("DROP TABLE IF EXISTS gen_copy")
    conn.execute("CREATE TABLE gen_copy AS SELECT *, NULL::real AS pred FROM gen")
    conn.execute(f"UPDATE gen_copy SET pred = pgml.predict('{MODEL}', {NULL_ARRAY})")
    got = dict(conn.execute("SELECT id, pred FROM gen_copy").fetchall())
    assert got.pop(43) is None
    assert got == pytest.approx({k: v for k, v in expected.items() if k != 43})


@pytest.mark.parametrize("binary", [False, True])
def test_bound_model_and_features_in_where(conn, expected, binary):
    cur = conn.cursor(binary=binary)
    rows = cur.execute("SELECT id FROM gen WHERE pgml.predict(%s, ARRAY[a, %s::float8 * b]) > %s ORDER BY id",
                       (MODEL, 1.0, 5.0)).fetchall()
    assert [r[0] for r in rows] == above(expected, 5)


def test_predict_proba_and_label_in_where(conn):
    conn.execute("DROP TABLE IF EXISTS gen_cls")
    conn.execute("CREATE TABLE gen_cls AS SELECT i::float8 AS a, (i % 3)::float8 AS b, "
                 "CASE WHEN i > 50 THEN 'hi' ELSE 'lo' END AS y FROM generate_series(1, 100) i")
    conn.execute("SELECT * FROM pgml.train('gen-cls', 'classification', 'gen_cls', 'y', 'linear')")
    direct = conn.execute("SELECT a, pgml.predict_label('gen-cls', ARRAY[a, b]), "
                          "pgml.predict_proba('gen-cls', ARRAY[a, b]) FROM gen_cls").fetchall()
    labels = conn.execute("SELECT a FROM gen_cls WHERE pgml.predict_label('gen-cls', ARRAY[a, b]) = 'hi' "
                          "ORDER BY a").fetchall()
    assert [r[0] for r in labels] == sorted(a for a, label, _ in direct if label == "hi")
    probs = conn.execute("SELECT a FROM gen_cls WHERE (pgml.predict_proba('gen-cls', ARRAY[a, b]))[1] > 0.5 "
                         "ORDER BY a").fetchall()
    assert [r[0] for r in probs] == sorted(a for a, _, p in direct if p[0] > 0.5)


P = f"pgml.predict('{MODEL}', ARRAY[a, b])"


@pytest.mark.parametrize("sql, joined, index", [
    (f"SELECT id FROM gen WHERE {P} > 5", True, False),
    (f"SELECT *, {P} AS p FROM gen ORDER BY p", True, False),
    (f"SELECT g, avg({P}) FROM gen GROUP BY g", True, False),
    (f"SELECT count(*) FILTER (WHERE {P} > 5) FROM gen", True, False),
    (f"SELECT g, pgml.predict('{MODEL}', ARRAY[g, g]) FROM gen GROUP BY g", False, True),
    (f"SELECT {P} AS p, count(*) FROM gen GROUP BY p", False, True),
    (f"SELECT id FROM gen WHERE {P} > 5 FOR UPDATE", False, True),
    (f"UPDATE gen SET prediction = {P}", False, True),
    (f"DELETE FROM gen WHERE {P} > 5", False, True),
    (f"SELECT (SELECT count(*) FROM gen i WHERE pgml.predict('{MODEL}', ARRAY[i.a, o.b]) > 5) FROM gen o", False, True),
    (f"SELECT * FROM gen JOIN gen_train USING (a) WHERE {P} > 5", False, True),
    (f"SELECT id FROM gen g1 JOIN gen g2 USING (id) WHERE {P} > 5", True, False),
])
def test_which_calls_become_joins(sql, joined, index):
    """Routing of pass two, on the parse tree alone: a join where it keeps the statement's meaning,
    a lookup (and then the hash index) elsewhere."""
    from pglast import parse_sql

    from pgml_server.sql.predict.general import GeneralPredict
    plan = GeneralPredict.build(parse_sql(sql)[0].stmt)
    assert ("LEFT JOIN (SELECT model, features" in plan.sql) is joined
    assert plan.needs_index is index
