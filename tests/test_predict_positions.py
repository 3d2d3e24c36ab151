"""Predictions mixed with other columns: formats, `*`, ORDER BY a prediction, DISTINCT, and no
notices from the server's own bookkeeping statements."""
from __future__ import annotations

import psycopg
import pytest

FEATURES = "ARRAY[age,sex,bmi,bp,s1,s2,s3,s4,s5,s6]"
ONE = "ARRAY[0.03,0.05,0.06,0.02,-0.04,-0.03,-0.04,-0.002,0.02,-0.017]"


@pytest.fixture(scope="module")
def conn(server):
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute("SELECT pgml.load_dataset('diabetes')")
        c.execute("SELECT * FROM pgml.train('pos-reg', 'regression', 'pgml.diabetes', 'target', 'ridge')")
        yield c


@pytest.fixture(scope="module")
def expected(conn):
    """Predictions by ctid, computed one row at a time with constant features."""
    rows = conn.execute(f"SELECT ctid::text, {FEATURES}::float8[] FROM pgml.diabetes").fetchall()
    out = {}
    for ctid, feats in rows:
        out[ctid] = conn.execute("SELECT pgml.predict('pos-reg', %s::float8[])", (feats,)).fetchone()[0]
    return out


@pytest.mark.parametrize("binary", [False, True])
def test_other_columns_keep_their_types_in_text_and_binary(conn, binary):
    cur = conn.cursor(binary=binary)
    row = cur.execute(f"SELECT pgml.predict('pos-reg', {ONE}), now() IS NOT NULL AS t, 'x'::text AS y, 7 AS n"
                      ).fetchone()
    assert isinstance(row[0], float) and row[1:] == (True, "x", 7)
    rows = cur.execute(f"SELECT sex > 0 AS male, pgml.predict('pos-reg', {FEATURES}), target "
                       "FROM pgml.diabetes LIMIT 3").fetchall()
    assert all(isinstance(r[0], bool) and isinstance(r[1], float) and isinstance(r[2], (int, float)) for r in rows)


def test_star_and_order_by_the_prediction(conn, expected):
    rows = conn.execute(f"SELECT ctid::text AS id, *, pgml.predict('pos-reg', {FEATURES}) AS score "
                        "FROM pgml.diabetes ORDER BY score DESC LIMIT 25").fetchall()
    top = sorted(expected, key=expected.get, reverse=True)[:25]
    assert [r[0] for r in rows] == top
    assert all(r[-1] == pytest.approx(expected[r[0]]) for r in rows)
    by_position = conn.execute(f"SELECT ctid::text, pgml.predict('pos-reg', {FEATURES}) FROM pgml.diabetes "
                               "ORDER BY 2 LIMIT 5").fetchall()
    assert [r[0] for r in by_position] == sorted(expected, key=expected.get)[:5]


def test_distinct_predictions(conn, expected):
    n = conn.execute(f"SELECT count(*) FROM (SELECT DISTINCT pgml.predict('pos-reg', {FEATURES}) "
                     "FROM pgml.diabetes) d").fetchone()[0]
    assert n == len({round(v, 3) for v in expected.values()}) or n == len(set(expected.values()))


def test_no_bookkeeping_notices_reach_the_client(conn):
    notices: list[str] = []
    def handler(diag):
        notices.append(diag.message_primary)
    conn.add_notice_handler(handler)
    try:
        for _ in range(2):
            conn.execute(f"SELECT count(*) FROM pgml.diabetes WHERE pgml.predict('pos-reg', {FEATURES}) > 100")
        conn.execute("DO $$ BEGIN RAISE NOTICE 'the client''s own'; END $$")
    finally:
        conn.remove_notice_handler(handler)
    assert notices == ["the client's own"]


NULL_S6 = "ARRAY[age,sex,bmi,bp,s1,s2,s3,s4,s5,CASE WHEN target > 300 THEN NULL ELSE s6 END]"


@pytest.fixture(scope="module")
def strict(conn):
    """A model whose s6 may not be missing (impute: error); the default imputes the training mean."""
    conn.execute("SELECT * FROM pgml.train('pos-strict', 'regression', 'pgml.diabetes', 'target', 'ridge', "
                 "preprocess => '{\"s6\": {\"impute\": \"error\"}}')")
    return "pos-strict"


@pytest.mark.parametrize("binary", [False, True])
def test_null_feature_in_a_table_stream_is_imputed_or_an_error_and_the_session_survives(conn, strict, binary):
    """A NULL inside the feature array of some rows is imputed as at training (the mean); with
    impute: error it is the statement's error (22004), not a dropped connection."""
    cur = conn.cursor(binary=binary)
    rows = cur.execute(f"SELECT pgml.predict('pos-reg', {NULL_S6}), target > 300 FROM pgml.diabetes").fetchall()
    assert len(rows) == 442 and all(p is not None for p, _ in rows)
    mean_row = conn.execute(f"SELECT pgml.predict('pos-reg', {ONE.replace('-0.017', 'NULL')})").fetchone()[0]
    assert mean_row is not None
    with pytest.raises(psycopg.errors.NullValueNotAllowed) as info:
        cur.execute(f"SELECT pgml.predict('{strict}', {NULL_S6}) FROM pgml.diabetes").fetchall()
    assert "s6" in str(info.value)
    assert cur.execute("SELECT 1").fetchone() == (1,)
    assert len(cur.execute(f"SELECT pgml.predict('pos-reg', {FEATURES}) FROM pgml.diabetes").fetchall()) == 442


def test_null_feature_in_the_general_path_is_imputed_or_an_error_and_the_session_survives(conn, strict):
    n = conn.execute(f"SELECT count(*) FROM pgml.diabetes WHERE pgml.predict('pos-reg', {NULL_S6}) IS NOT NULL"
                     ).fetchone()[0]
    assert n == 442
    with pytest.raises(psycopg.errors.NullValueNotAllowed) as info:
        conn.execute(f"SELECT count(*) FROM pgml.diabetes WHERE pgml.predict('{strict}', {NULL_S6}) > 100")
    assert "s6" in str(info.value)
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_predict_inside_a_cte_filtered_by_the_prediction(conn, expected):
    """Pass one must not carry the CTE's own (unrewritten) call to the upstream: PostgreSQL would
    answer `function pgml.predict(unknown, real[]) does not exist`."""
    n = conn.execute(f"WITH s AS (SELECT pgml.predict('pos-reg', {FEATURES}) p FROM pgml.diabetes) "
                     "SELECT count(*) FROM s WHERE p IS NOT NULL").fetchone()[0]
    assert n == 442
    above = conn.execute(f"WITH s AS (SELECT ctid::text AS id, pgml.predict('pos-reg', {FEATURES}) p "
                         "FROM pgml.diabetes), t AS (SELECT id FROM s WHERE p > 150) SELECT id FROM t").fetchall()
    assert sorted(r[0] for r in above) == sorted(k for k, v in expected.items() if v > 150)


def test_predict_from_the_predictions_of_a_subquery(conn, expected):
    """An outer call whose features are an inner call's predictions: the inner ones are stored first."""
    rows = conn.execute(f"SELECT s.id, pgml.predict('pos-reg', ARRAY[s.p / 1000, 0, 0, 0, 0, 0, 0, 0, 0, 0]) AS q, s.p "
                        f"FROM (SELECT ctid::text AS id, pgml.predict('pos-reg', {FEATURES}) AS p "
                        "FROM pgml.diabetes) s ORDER BY s.id LIMIT 5").fetchall()
    assert len(rows) == 5
    for id_, q, p in rows:
        assert p == pytest.approx(expected[id_], rel=1e-5)
        direct = conn.execute("SELECT pgml.predict('pos-reg', %s::float8[])",
                              ([p / 1000] + [0.0] * 9,)).fetchone()[0]
        assert q == pytest.approx(direct, rel=1e-4)


def test_bound_filters_beside_a_stream_prediction(conn, server):
    """A bound filter next to a predict in the target list: asyncpg with unnamed statements
    (statement_cache_size=0) declares no types, psycopg sends a typed float (found by the
    dashboard: 08P01 'bind message supplies 1 parameters' and 22P03 before)."""
    import asyncio

    import asyncpg
    sql = f"SELECT target, pgml.predict('pos-reg', {FEATURES}) FROM pgml.diabetes WHERE age > $1"
    expected = conn.execute(sql.replace("$1", "0.01")).fetchall()

    async def unnamed():
        c = await asyncpg.connect(server.dsn(), statement_cache_size=0)
        try:
            return await c.fetch(sql, 0.01)
        finally:
            await c.close()
    assert len(asyncio.run(unnamed())) == len(expected) > 0
    for binary in (False, True):
        got = conn.cursor(binary=binary).execute(sql.replace("$1", "%s"), (0.01,)).fetchall()
        assert [r[0] for r in got] == [r[0] for r in expected]
