"""Relational data end to end: a view over joined tables with text, timestamps, intervals,
booleans, enums, arrays and NULLs; automatic and explicit preprocessing; predictions from rows in
every position; text labels; bad inputs that leave the registry as it was."""
from __future__ import annotations

import asyncio
import datetime as dt
import json

import asyncpg
import psycopg
import pytest
from psycopg import errors

SCHEMA = """
DROP VIEW IF EXISTS rel.customer_features;
DROP SCHEMA IF EXISTS rel CASCADE;
CREATE SCHEMA rel;
CREATE TYPE rel.tier AS ENUM ('free', 'pro', 'team');
CREATE TABLE rel.plans (id int PRIMARY KEY, name text NOT NULL, tier rel.tier NOT NULL, price numeric(8,2));
INSERT INTO rel.plans VALUES (1, 'starter', 'free', 0), (2, 'growth', 'pro', 29.5), (3, 'scale', 'team', 99);
CREATE TABLE rel.users (
    id int PRIMARY KEY, created_at timestamptz NOT NULL, age int, location varchar(20), plan_id int REFERENCES rel.plans,
    newsletter boolean, last_seen date, session interval, scores real[]);
INSERT INTO rel.users
SELECT g,
       timestamptz '2023-01-01 00:00+00' + g * interval '7 hours',
       CASE WHEN g % 17 = 0 THEN NULL ELSE 18 + g % 50 END,
       CASE WHEN g % 11 = 0 THEN NULL ELSE (ARRAY['Paris', 'Berlin', 'Lisbon', 'Oslo', 'Rome'])[1 + g % 5] END,
       1 + g % 3,
       CASE WHEN g % 13 = 0 THEN NULL ELSE g % 2 = 0 END,
       date '2024-01-01' + (g % 90),
       (g % 60) * interval '1 minute',
       ARRAY[(g % 7)::real, (g % 5)::real]
FROM generate_series(1, 600) g;
CREATE TABLE rel.purchases (user_id int REFERENCES rel.users, amount float8);
INSERT INTO rel.purchases
SELECT u.id, 10 + u.age * 1.5 + p.price * 2 + CASE u.location WHEN 'Paris' THEN 40 WHEN 'Oslo' THEN -20 ELSE 0 END
       + (u.id % 4) * 3
FROM rel.users u JOIN rel.plans p ON p.id = u.plan_id WHERE u.age IS NOT NULL;
CREATE VIEW rel.customer_features AS
SELECT now() - u.created_at AS user_tenure, u.age, u.location, p.tier, p.name AS plan, u.newsletter, u.last_seen,
       u.session, coalesce(sum(x.amount), 0) AS total_purchases,
       CASE WHEN coalesce(sum(x.amount), 0) > 150 THEN 'big' ELSE 'small' END AS segment
FROM rel.users u JOIN rel.plans p ON p.id = u.plan_id LEFT JOIN rel.purchases x ON x.user_id = u.id
GROUP BY u.id, p.id;
"""
ROW = "(interval '300 days', 42, 'Paris', 'pro'::rel.tier, 'growth', true, date '2024-02-01', interval '5 minutes')"


@pytest.fixture(scope="module")
def conn(server):
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute(SCHEMA)
        yield c
        c.execute("DROP SCHEMA rel CASCADE")


@pytest.fixture(scope="module")
def trained(conn):
    """A regression on the view with its text, temporal, enum, bool and NULL columns (segment left out)."""
    conn.execute("CREATE VIEW rel.spend AS SELECT user_tenure, age, location, tier, plan, newsletter, last_seen, "
                 "session, total_purchases FROM rel.customer_features")
    notices: list[str] = []

    def handler(diag):
        notices.append(diag.message_primary)
    conn.add_notice_handler(handler)
    try:
        row = conn.execute("SELECT * FROM pgml.train('rel-spend', 'regression', 'rel.spend', 'total_purchases', "
                           "'lightgbm', '{\"n_estimators\": 60}')").fetchone()
    finally:
        conn.remove_notice_handler(handler)
    return row, notices


def test_training_on_a_relational_view_with_automatic_preprocessing(conn, trained):
    row, notices = trained
    assert row[:3] == ("rel-spend", "regression", "lightgbm")
    joined = "\n".join(notices)
    assert "preprocessing" in joined and "location" in joined and "user_tenure" in joined
    r2 = conn.execute("SELECT (metrics->>'r2')::float FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
                      "WHERE p.name = 'rel-spend'").fetchone()[0]
    assert r2 > 0.8
    analysis, columns = conn.execute(
        "SELECT s.analysis, s.columns FROM pgml.snapshots s JOIN pgml.models m ON m.snapshot_id = s.id "
        "JOIN pgml.projects p ON p.id = m.project_id WHERE p.name = 'rel-spend'").fetchone()
    by_name = {c["name"]: c for c in analysis["columns"]}
    assert by_name["age"]["nulls"] > 0 and by_name["age"]["preprocess"]["impute"] == "mean"
    assert by_name["location"]["kind"] == "categorical" and by_name["tier"]["kind"] == "categorical"
    assert by_name["user_tenure"]["kind"] == "temporal" and by_name["last_seen"]["subkind"] == "date"
    assert analysis["rows"] < 600            # statistics of the training split only
    assert {c["name"] for c in columns} >= {"age", "location", "tier"}


def test_predict_one_row_in_sql_and_in_a_query_agree(conn, trained):
    local = conn.execute(f"SELECT pgml.predict('rel-spend', {ROW})").fetchone()[0]
    via_row = conn.execute(f"SELECT pgml.predict('rel-spend', ROW{ROW})").fetchone()[0]
    assert local == pytest.approx(via_row)
    in_query = conn.execute(f"SELECT pgml.predict('rel-spend', {ROW}) FROM (VALUES (1)) v").fetchone()[0]
    assert in_query == pytest.approx(local, rel=1e-6)
    # the same row as a table row (stream path) and inside WHERE (general path)
    conn.execute(f"CREATE TEMP TABLE one_row AS SELECT * FROM (VALUES {ROW}) t(user_tenure, age, location, tier, "
                 "plan, newsletter, last_seen, session)")
    cols = "(user_tenure, age, location, tier, plan, newsletter, last_seen, session)"
    stream = conn.execute(f"SELECT pgml.predict('rel-spend', {cols}) FROM one_row").fetchone()[0]
    assert stream == pytest.approx(local, rel=1e-6)
    general = conn.execute(f"SELECT count(*) FROM one_row WHERE pgml.predict('rel-spend', {cols}) "
                           f"BETWEEN {local - 1e-3} AND {local + 1e-3}").fetchone()[0]
    assert general == 1


def test_predict_over_the_view_in_every_position(conn, trained):
    cols = "(user_tenure, age, location, tier, plan, newsletter, last_seen, session)"
    rows = conn.execute(f"SELECT pgml.predict('rel-spend', {cols}), total_purchases FROM rel.customer_features"
                        ).fetchall()
    assert len(rows) == 600 and all(isinstance(p, float) for p, _ in rows)
    top = conn.execute(f"SELECT age FROM rel.customer_features ORDER BY pgml.predict('rel-spend', {cols}) DESC "
                       "LIMIT 3").fetchall()
    assert len(top) == 3
    n = conn.execute(f"WITH s AS (SELECT pgml.predict('rel-spend', {cols}) AS p FROM rel.customer_features) "
                     "SELECT count(*) FROM s WHERE p IS NOT NULL").fetchone()[0]
    assert n == 600
    avg = conn.execute(f"SELECT avg(pgml.predict('rel-spend', {cols})) FROM rel.customer_features").fetchone()[0]
    assert 50 < avg < 400


def test_nulls_and_unseen_categories_predict(conn, trained):
    nulls = conn.execute("SELECT pgml.predict('rel-spend', (NULL::interval, NULL::int, NULL::text, NULL::rel.tier, "
                         "NULL::text, NULL::bool, NULL::date, NULL::interval))").fetchone()[0]
    unseen = conn.execute("SELECT pgml.predict('rel-spend', (interval '3 days', 30, 'Atlantis', 'free'::rel.tier, "
                          "'unknown plan', false, date '2024-01-05', interval '1 minute'))").fetchone()[0]
    assert isinstance(nulls, float) and isinstance(unseen, float)


def test_bound_mixed_parameters_psycopg_and_asyncpg(conn, server, trained):
    local = conn.execute(f"SELECT pgml.predict('rel-spend', {ROW})").fetchone()[0]
    params = (dt.timedelta(days=300), 42, "Paris", "pro", "growth", True, dt.date(2024, 2, 1), dt.timedelta(minutes=5))
    got = conn.execute("SELECT pgml.predict('rel-spend', (%s, %s, %s, %s, %s, %s, %s, %s))", params).fetchone()[0]
    assert got == pytest.approx(local, rel=1e-6)
    with_null = conn.execute("SELECT pgml.predict('rel-spend', (%s, %s, %s, %s, %s, %s, %s, %s))",
                             (None, None, "Paris", None, None, None, None, None)).fetchone()[0]
    assert isinstance(with_null, float)

    async def main():
        c = await asyncpg.connect(server.dsn())
        try:
            stmt = await c.prepare("SELECT pgml.predict('rel-spend', ($1, $2, $3, $4, $5, $6, $7, $8))")
            untyped = await stmt.fetchval("300 days", "42", "Paris", "pro", "growth", "true", "2024-02-01",
                                          "00:05:00")
            typed = await c.fetchval("SELECT pgml.predict('rel-spend', ($1::interval, $2::int, $3::text, $4::text, "
                                     "$5::text, $6::bool, $7::date, $8::interval))", *params)
            return untyped, typed
        finally:
            await c.close()
    untyped, typed = asyncio.run(main())
    assert untyped == pytest.approx(local, rel=1e-6) and typed == pytest.approx(local, rel=1e-6)


def test_text_labels_classify_and_predict_label_returns_the_label(conn):
    conn.execute("SELECT * FROM pgml.train('rel-segment', 'classification', 'rel.customer_features', 'segment', "
                 "'random_forest', '{\"n_estimators\": 20}')")
    cols = "(user_tenure, age, location, tier, plan, newsletter, last_seen, session, total_purchases)"
    index, label = conn.execute(f"SELECT pgml.predict('rel-segment', {cols}), pgml.predict_label('rel-segment', "
                                f"{cols}) FROM rel.customer_features LIMIT 1").fetchone()
    assert index in (0.0, 1.0) and label == ["big", "small"][int(index)]
    one = conn.execute("SELECT pgml.predict_label('rel-segment', (interval '1 day', 30, 'Paris', 'team'::rel.tier, "
                       "'scale', true, date '2024-01-02', interval '1 minute', 500.0))").fetchone()[0]
    assert one in ("big", "small")


def test_explicit_preprocess_overrides_per_column(conn):
    spec = {"age": {"impute": "median", "scale": "robust"}, "location": {"encode": "target"},
            "plan": {"encode": {"ordinal": ["starter", "growth", "scale"]}}}
    conn.execute("SELECT * FROM pgml.train('rel-explicit', 'regression', 'rel.spend', 'total_purchases', 'ridge', "
                 "preprocess => %s)", (json.dumps(spec),))
    analysis = conn.execute("SELECT s.analysis FROM pgml.snapshots s JOIN pgml.models m ON m.snapshot_id = s.id "
                            "JOIN pgml.projects p ON p.id = m.project_id WHERE p.name = 'rel-explicit' "
                            "ORDER BY m.id DESC LIMIT 1").fetchone()[0]
    by_name = {c["name"]: c["preprocess"] for c in analysis["columns"]}
    assert by_name["age"]["impute"] == "median" and by_name["age"]["scale"] == "robust"
    assert by_name["location"]["encode"] == "target" and by_name["plan"]["encode"] == "ordinal"
    assert by_name["newsletter"]["scale"] == "standard"        # automatic for a linear model
    assert conn.execute(f"SELECT pgml.predict('rel-explicit', {ROW})").fetchone()[0] is not None


@pytest.mark.parametrize("preprocess, message", [
    ({"nope": {"impute": "mean"}}, "nope"),
    ({"age": {"impute": "sideways"}}, "impute"),
    ({"age": {"colour": "red"}}, "colour"),
    ({"age": {"impute": "error"}}, "NULL"),
])
def test_bad_preprocess_is_refused_and_writes_nothing(conn, preprocess, message):
    before = conn.execute("SELECT (SELECT count(*) FROM pgml.snapshots), (SELECT count(*) FROM pgml.models)").fetchone()
    with pytest.raises((errors.InvalidParameterValue, errors.NullValueNotAllowed)) as info:
        conn.execute("SELECT * FROM pgml.train('rel-bad', 'regression', 'rel.spend', 'total_purchases', 'ridge', "
                     "preprocess => %s)", (json.dumps(preprocess),))
    assert message in str(info.value)
    after = conn.execute("SELECT (SELECT count(*) FROM pgml.snapshots), (SELECT count(*) FROM pgml.models)").fetchone()
    assert after == before


def test_unsupported_column_type_names_the_column(conn):
    conn.execute("CREATE TABLE rel.with_json AS SELECT '{}'::jsonb AS doc, 1.0::float8 AS y")
    with pytest.raises(errors.FeatureNotSupported) as info:
        conn.execute("SELECT * FROM pgml.train('rel-json', 'regression', 'rel.with_json', 'y')")
    assert "doc" in str(info.value) and "jsonb" in str(info.value)


def test_a_row_of_the_wrong_arity_lists_the_columns(conn, trained):
    with pytest.raises(errors.InvalidParameterValue) as info:
        conn.execute("SELECT pgml.predict('rel-spend', (1, 2))")
    assert "location" in str(info.value) or "location" in (info.value.diag.message_detail or "")


def test_predict_label_of_a_regression_model_is_wrong_object_type(conn, trained):
    cols = "(user_tenure, age, location, tier, plan, newsletter, last_seen, session)"
    for sql in (f"SELECT pgml.predict_label('rel-spend', {ROW})",                          # local
                f"SELECT pgml.predict_label('rel-spend', {cols}) FROM rel.customer_features",  # stream
                f"SELECT count(*) FROM rel.customer_features WHERE pgml.predict_label('rel-spend', {cols}) = 'x'"):
        with pytest.raises(errors.WrongObjectType) as info:
            conn.execute(sql)
        assert "classification" in str(info.value)
    assert conn.execute("SELECT 1").fetchone() == (1,)
