"""The seed's short forms: pgml.score, a task inferred from the label column, and
pgml.train('my_data', 'total_purchases') with the relation as project name."""
from __future__ import annotations

import psycopg
import pytest
from psycopg import errors


@pytest.fixture(scope="module")
def conn(server):
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute("SELECT pgml.load_dataset('diabetes')")
        c.execute("DROP TABLE IF EXISTS public.forms_data, public.forms_text")
        c.execute("CREATE TABLE public.forms_data AS SELECT i::float8 AS x, (i % 7) AS few, i AS many, "
                  "(i * 2.5)::numeric AS total_purchases, i % 3 = 0 AS fizz FROM generate_series(1, 200) i")
        c.execute("CREATE TABLE public.forms_text AS SELECT i::float8 AS x, "
                  "CASE WHEN i % 2 = 0 THEN 'even' ELSE 'odd' END AS parity FROM generate_series(1, 200) i")
        yield c
        c.execute("DROP TABLE IF EXISTS public.forms_data, public.forms_text")


def notices_of(conn, sql):
    seen: list[str] = []

    def handler(diag):
        seen.append(diag.message_primary)
    conn.add_notice_handler(handler)
    try:
        row = conn.execute(sql).fetchone()
    finally:
        conn.remove_notice_handler(handler)
    return row, seen


def test_score_is_predict(conn):
    conn.execute("SELECT * FROM pgml.train('forms-score', 'regression', 'pgml.diabetes', 'target', 'ridge')")
    features = "ARRAY[age,sex,bmi,bp,s1,s2,s3,s4,s5,s6]"
    one = conn.execute("SELECT pgml.score('forms-score', ARRAY[0.03,0.05,0.06,0.02,-0.04,-0.03,-0.04,-0.002,0.02,-0.017]), "
                       "pgml.predict('forms-score', ARRAY[0.03,0.05,0.06,0.02,-0.04,-0.03,-0.04,-0.002,0.02,-0.017])"
                       ).fetchone()
    assert one[0] == one[1]
    cur = conn.execute(f"SELECT pgml.score('forms-score', {features}), pgml.predict('forms-score', {features}) "
                       "FROM pgml.diabetes LIMIT 5")
    assert [d.name for d in cur.description] == ["score", "predict"]
    assert all(a == b for a, b in cur.fetchall())
    n = conn.execute(f"SELECT count(*) FROM pgml.diabetes WHERE pgml.score('forms-score', {features}) "
                     f"= pgml.predict('forms-score', {features})").fetchone()[0]
    assert n == 442


@pytest.mark.parametrize("relation, label, task", [
    ("forms_data", "x", "regression"), ("forms_data", "total_purchases", "regression"),
    ("forms_data", "few", "classification"), ("forms_data", "many", "regression"),
    ("forms_text", "parity", "classification"), ("forms_data", "fizz", "classification")])
def test_task_inferred_from_the_label_column(conn, relation, label, task):
    row, notices = notices_of(conn, f"SELECT * FROM pgml.train(project_name => 'forms-infer-{label}', "
                                    f"relation_name => 'public.{relation}', y_column_name => '{label}')")
    assert row[1] == task
    assert any(f"task {task} inferred" in n for n in notices), notices


def test_relation_as_project_and_label_in_the_task_place(conn):
    row = conn.execute("SELECT * FROM pgml.train('public.forms_data', 'total_purchases')").fetchone()
    assert row[:2] == ("public.forms_data", "regression")
    snapshot = conn.execute("SELECT s.relation_name, s.y_column_name FROM pgml.models m JOIN pgml.projects p "
                            "ON p.id = m.project_id JOIN pgml.snapshots s ON s.id = m.snapshot_id "
                            "WHERE p.name = 'public.forms_data'").fetchone()
    assert snapshot == ("public.forms_data", ["total_purchases"])


def test_an_unknown_task_that_is_no_column_is_still_an_error(conn):
    with pytest.raises(errors.InvalidParameterValue) as info:
        conn.execute("SELECT * FROM pgml.train('public.forms_data', 'regresion')")
    assert "unknown task" in str(info.value)
    with pytest.raises(errors.UndefinedObject):
        conn.execute("SELECT * FROM pgml.train('forms-never-trained')")
