"""The fast paths of mixed rows (issue 10's speed work) give the same predictions as the general ones:
typed temporal casts in a row constructor answered locally, NULLs in a table's row constructors
through the stream path's blocks (coalesce(pgml.feature(v), 'NaN')), and one row locally."""
from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import psycopg
import pytest
from pglast import parse_sql

from pgml_server.sql.compiler import compile_local

SCHEMA = """
DROP TABLE IF EXISTS fastrow;
CREATE TABLE fastrow AS
SELECT g AS id,
       CASE WHEN g % 9 = 0 THEN NULL ELSE (g % 37) * 0.5 END AS n,
       CASE WHEN g % 7 = 0 THEN NULL ELSE 'k' || (g % 23) END AS c,
       CASE WHEN g % 11 = 0 THEN NULL ELSE timestamp '2024-01-01' + g * interval '5 hours 7 minutes' END AS ts,
       CASE WHEN g % 13 = 0 THEN NULL ELSE g % 3 = 0 END AS flag,
       (g % 37) * 0.5 + (g % 23) * 0.3 + (g % 3 = 0)::int * 4 + extract(hour FROM timestamp '2024-01-01'
           + g * interval '5 hours 7 minutes') / 4.0 AS y
FROM generate_series(1, 3000) g;
"""
ROW = "(n, c, ts, flag)"


@pytest.fixture(scope="module")
def conn(server):
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute(SCHEMA)
        c.execute("CREATE OR REPLACE VIEW fastrow_train AS SELECT n, c, ts, flag, y FROM fastrow")
        c.execute("SELECT * FROM pgml.train('fastrow', 'regression', 'fastrow_train', 'y', 'lightgbm', "
                  "'{\"n_estimators\": 30}')")
        yield c
        c.execute("DROP VIEW fastrow_train")
        c.execute("DROP TABLE fastrow")


def _literal(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dt.datetime):
        return f"timestamp '{v.isoformat(sep=' ')}'"
    if isinstance(v, str):
        return "'" + v + "'"
    return repr(float(v))


def test_stream_blocks_with_nulls_equal_one_row_at_a_time(conn):
    """Rows with NULLs (every ~3rd row here) go through the same blocks as the others and predict as
    the same row given alone as constants (answered locally by the compiled row function)."""
    rows = conn.execute(f"SELECT id, n, c, ts, flag, pgml.predict('fastrow', {ROW}) FROM fastrow ORDER BY id").fetchall()
    assert len(rows) == 3000 and all(isinstance(r[5], float) for r in rows)
    assert sum(1 for r in rows if None in r[1:5]) > 600
    for r in rows[::41] + [r for r in rows if None in r[1:5]][:40]:
        one = conn.execute(f"SELECT pgml.predict('fastrow', ({', '.join(_literal(v) for v in r[1:5])}))").fetchone()[0]
        assert one == pytest.approx(r[5], rel=1e-6, abs=1e-6), r


def test_typed_temporal_casts_in_a_row_are_local_and_equal_the_upstream_path(conn, server):
    for sql in ("SELECT pgml.predict($1, ($2::float8, $3::text, $4::timestamp, $5::bool))",
                "SELECT pgml.predict('p', (1.5, 'k3', '2024-02-03 04:05:06'::timestamp, true))",
                "SELECT pgml.predict('p', ($1::date, $2::timestamptz, $3::interval, $4::time, $5::timetz))"):
        assert compile_local(parse_sql(sql)[0].stmt) is not None, sql
    args = ("fastrow", 3.5, "k5", dt.datetime(2024, 3, 9, 17, 45, 12), True)
    nulls = ("fastrow", None, None, None, None)

    async def main():
        c = await asyncpg.connect(server.dsn())
        try:
            stmt = await c.prepare("SELECT pgml.predict($1, ($2::float8, $3::text, $4::timestamp, $5::bool))")
            local = [await stmt.fetchval(*a) for a in (args, nulls)]
            # the same values through the upstream (a FROM clause: the stream rewrite with pgml.feature)
            upstream = [await c.fetchval("SELECT pgml.predict($1, ($2::float8, $3::text, $4::timestamp, $5::bool)) "
                                         "FROM (VALUES (1)) v", *a) for a in (args, nulls)]
            return local, upstream
        finally:
            await c.close()
    local, upstream = asyncio.run(main())
    assert local == pytest.approx(upstream, rel=1e-6)
    constant = conn.execute("SELECT pgml.predict('fastrow', (3.5, 'k5', timestamp '2024-03-09 17:45:12', true))"
                            ).fetchone()[0]
    assert constant == pytest.approx(local[0], rel=1e-6)


def test_same_run_probes_a_doubling_prefix_and_finds_every_run_length():
    import numpy as np
    from pgml_server.pipeline.consumers import same_run
    rng = np.random.default_rng(3)
    for count in (1, 2, 63, 64, 65, 256, 257, 1000, 5000):
        for stop in sorted({0, 1, count // 2, count - 1, count}):
            block = np.zeros((count, 9), dtype=np.uint8)
            block[:, 5:] = rng.integers(0, 255, (count, 4))
            if stop < count:
                block[stop:, 2] = 7 if stop else 0
                if stop == 0:
                    block[0, 2] = 7
                    block[1:, 2] = 0
            expected = count if stop >= count else max(stop, 1) if stop else 1
            assert same_run(block, [slice(0, 5)]) == expected, (count, stop)


def test_numeric_arrays_with_null_elements_stream_in_blocks_and_equal_one_row(conn):
    """ARRAY[...] features with NULL elements: the stream rewrite sends array_replace(…, NULL, 'NaN')
    (NULL and NaN are both missing), so those rows stay in the blocks; same values as one row alone."""
    conn.execute("CREATE OR REPLACE VIEW fastrow_num AS SELECT n, (id % 17)::float8 AS m, y FROM fastrow")
    conn.execute("SELECT * FROM pgml.train('fastnum', 'regression', 'fastrow_num', 'y', 'lightgbm', "
                 "'{\"n_estimators\": 20}')")
    rows = conn.execute("SELECT n, m, pgml.predict('fastnum', ARRAY[n, m]) FROM fastrow_num").fetchall()
    assert len(rows) == 3000 and sum(1 for r in rows if r[0] is None) > 300
    for n, m, p in [r for r in rows if r[0] is None][:20] + rows[::97]:
        one = conn.execute("SELECT pgml.predict('fastnum', ARRAY[%s, %s]::float8[])", (n, m)).fetchone()[0]
        assert one == pytest.approx(p, rel=1e-6, abs=1e-6)
    whole_null = conn.execute("SELECT pgml.predict('fastnum', CASE WHEN n IS NULL THEN NULL ELSE ARRAY[n, m] END) "
                              "FROM fastrow_num WHERE n IS NOT NULL LIMIT 5").fetchall()
    assert len(whole_null) == 5
    conn.execute("DROP VIEW fastrow_num")
