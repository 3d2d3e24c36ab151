"""Real binary COPY bytes from PostgreSQL, of every supported type through the canonical SQL, decoded to numpy."""
from __future__ import annotations

import math

import numpy as np
import psycopg
import pytest

from protocol.errors import PgError
from pgml_server.ml.preprocessing import columns as C
from pgml_server.ml.preprocessing.decode import TextColumn, decode_copy
from pgml_server.ml.preprocessing.sql import (RELATION_COLUMNS_SQL, copy_query, kinds_from_rows, quote_ident,
                                              select_canonical, wire_types)

TYPES = """
CREATE TYPE pp_mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN pp_pos AS numeric(10,2) CHECK (VALUE >= 0);
CREATE DOMAIN pp_pos2 AS pp_pos;
CREATE TABLE pp_all (
  "i2" int2, "i4" int4, "i8" int8, "f4" real, "f8" float8, "num" numeric(10,2), "dom" pp_pos2, "o" oid,
  "b" bool, "t" text, "vc" varchar(10), "ch" char(3), "c1" "char", "nm" name, "mood" pp_mood,
  "d" date, "ts" timestamp, "tstz" timestamptz, "tm" time, "tmtz" timetz, "iv" interval,
  "ra" real[], "ia" int[], "ba" bool[], "na" numeric[],
  "Odd ""name"" x" int4
);
INSERT INTO pp_all VALUES
 (1, 2, 3, 1.5, 2.25, 12.34, 5.5, 7, true, 'Paris', 'ab', 'x', 'q', 'nm1', 'happy',
  '2024-03-15', '2024-03-15 13:45:30', '2024-03-15 13:45:30+02', '13:45:30', '13:45:30+02', '1 mon 2 days 03:00:04',
  '{1.5,2.5}', '{1,2,3}', '{true,false}', '{1.25,2}', 42),
 (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (-4, -5, 9000000000, 'NaN', '-Infinity', -0.5, 0, 0, false, 'Zürich ✓', '', 'abc', 'z', 'n', 'sad',
  '1969-12-31', '1970-01-01 00:00:00', '1970-01-01 00:00:00+00', '00:00:00', '00:00:00-01', '-1 year',
  '{NULL,4}', '{4,5,6}', '{NULL,true}', '{3,NULL}', 0);
"""


@pytest.fixture(scope="module")
def conn(upstream):
    with psycopg.connect(upstream.dsn, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS pp_all; DROP DOMAIN IF EXISTS pp_pos2; DROP DOMAIN IF EXISTS pp_pos; "
                  "DROP TYPE IF EXISTS pp_mood")
        c.execute(TYPES)
        yield c


def copy_bytes(conn, query: str) -> bytes:
    with conn.cursor().copy(f"COPY ({query}) TO STDOUT (FORMAT binary)") as copy:
        return b"".join(bytes(block) for block in copy)


def relation_kinds(conn, relation: str) -> list[C.ColumnKind]:
    """What the integrator does: RELATION_COLUMNS_SQL (domains resolved, enums flagged), then the kinds."""
    rows = conn.execute(RELATION_COLUMNS_SQL.replace("$1", "%s"), (relation,)).fetchall()
    return kinds_from_rows(rows)


def test_every_type_with_nulls_decodes(conn):
    kinds = relation_kinds(conn, "pp_all")
    by = {k.name: k for k in kinds}
    assert by["dom"].kind == C.NUMERIC and by["mood"].kind == C.CATEGORICAL and by["ch"].kind == C.CATEGORICAL
    assert by["dom"].type_name == "numeric(10,2)" and by["vc"].type_name == "character varying(10)"
    assert by["iv"].subkind == "interval" and by["ba"].subkind == C.BOOLEAN and by["ia"].integer
    conn.execute("SET TimeZone = 'America/New_York'")
    data = copy_bytes(conn, select_canonical("pp_all", kinds))
    cols = dict(zip(by, decode_copy(data, wire_types(kinds), list(by))))
    np.testing.assert_array_equal(cols["i2"], [1, np.nan, -4])
    np.testing.assert_array_equal(cols["i8"], [3, np.nan, 9e9])
    assert cols["f4"][0] == 1.5 and np.isnan(cols["f4"][1:]).all()        # NaN stays NaN
    assert cols["f8"][2] == -math.inf
    np.testing.assert_array_equal(cols["num"], [12.34, np.nan, -0.5])
    np.testing.assert_array_equal(cols["dom"], [5.5, np.nan, 0])
    np.testing.assert_array_equal(cols["b"], [1, np.nan, 0])
    assert cols["t"].tolist() == ["Paris", None, "Zürich ✓"]
    assert cols["vc"].tolist() == ["ab", None, ""]                       # '' is not NULL
    assert cols["ch"].tolist() == ["x", None, "abc"]                     # char(n)::text drops the padding
    assert cols["c1"].tolist() == ["q", None, "z"]
    assert cols["mood"].tolist() == ["happy", None, "sad"]
    assert cols["nm"].tolist() == ["nm1", None, "n"]
    day = 19797 * 86400.0                                                # 2024-03-15
    np.testing.assert_array_equal(cols["d"], [day, np.nan, -86400])
    np.testing.assert_array_equal(cols["ts"], [day + 13 * 3600 + 45 * 60 + 30, np.nan, 0])
    np.testing.assert_array_equal(cols["tstz"], [day + 11 * 3600 + 45 * 60 + 30, np.nan, 0])
    np.testing.assert_array_equal(cols["tm"], [13 * 3600 + 45 * 60 + 30, np.nan, 0])
    np.testing.assert_array_equal(cols["tmtz"], [11 * 3600 + 45 * 60 + 30, np.nan, 3600])
    np.testing.assert_array_equal(cols["iv"], [32 * 86400 + 3 * 3600 + 4, np.nan, -365.25 * 86400])
    np.testing.assert_array_equal(cols["ra"], [[1.5, 2.5], [np.nan, np.nan], [np.nan, 4]])
    np.testing.assert_array_equal(cols["ia"], [[1, 2, 3], [np.nan] * 3, [4, 5, 6]])
    np.testing.assert_array_equal(cols["ba"], [[1, 0], [np.nan] * 2, [np.nan, 1]])
    np.testing.assert_array_equal(cols["na"], [[1.25, 2], [np.nan] * 2, [3, np.nan]])
    np.testing.assert_array_equal(cols['Odd "name" x'], [42, np.nan, 0])
    # The session TimeZone changes nothing.
    conn.execute("SET TimeZone = 'Asia/Kolkata'")
    again = decode_copy(copy_bytes(conn, select_canonical("pp_all", kinds)), wire_types(kinds), list(by))
    for a, b in zip(cols.values(), again):
        if isinstance(a, TextColumn):
            assert a.tolist() == b.tolist()
        else:
            np.testing.assert_array_equal(a, b)
    conn.execute("RESET TimeZone")


def test_fixed_layout_numbers_and_arrays(conn):
    kinds = [C.column_kind("a", 701), C.column_kind("b", 16), C.column_kind("c", 1021)]
    data = copy_bytes(conn, "SELECT coalesce(g::float8 / 3, 'NaN'), (g % 2 = 0)::int::float8, "
                            "ARRAY[g, -g]::float8[] FROM generate_series(1, 1000) g")
    a, b, c = decode_copy(data, wire_types(kinds))
    np.testing.assert_array_equal(a, np.arange(1, 1001) / 3)
    np.testing.assert_array_equal(b, (np.arange(1, 1001) % 2 == 0).astype(float))
    np.testing.assert_array_equal(c, np.column_stack([np.arange(1, 1001), -np.arange(1, 1001)]))


def test_null_float8_without_coalesce_takes_the_exact_path(conn):
    data = copy_bytes(conn, "SELECT CASE WHEN g % 3 = 0 THEN NULL ELSE g END::float8, g::text "
                            "FROM generate_series(1, 50) g")
    x, t = decode_copy(data, ["float8", "text"])
    expected = np.where(np.arange(1, 51) % 3 == 0, np.nan, np.arange(1, 51))
    np.testing.assert_array_equal(x, expected)
    assert t.tolist() == [str(i) for i in range(1, 51)]
    x, = decode_copy(copy_bytes(conn, "SELECT NULLIF(g, 2)::float8 FROM generate_series(1, 3) g"), ["float8"])
    np.testing.assert_array_equal(x, [1, np.nan, 3])


def test_text_shapes(conn):
    data = copy_bytes(conn, "SELECT lpad('', g % 5, 'é'), 'abc'::text, repeat('x', g * 300) "
                            "FROM generate_series(1, 6) g")
    a, b, c = decode_copy(data, ["text"] * 3)
    assert a.tolist() == ["é" * (g % 5) for g in range(1, 7)]
    assert b.values.dtype == np.dtype("S3") and b.tolist() == ["abc"] * 6
    assert c.values.dtype == object and c.tolist() == ["x" * g * 300 for g in range(1, 7)]  # too wide for 'S'


def test_multidimensional_arrays_flatten(conn):
    data = copy_bytes(conn, "SELECT '{{1,2},{3,4}}'::float8[] UNION ALL SELECT '{{5,NULL},{7,8}}'::float8[]")
    (m,) = decode_copy(data, ["float8[]"])
    np.testing.assert_array_equal(m, [[1, 2, 3, 4], [5, np.nan, 7, 8]])


def test_array_length_mismatch_names_the_column(conn):
    data = copy_bytes(conn, "SELECT '{1,2}'::float8[] UNION ALL SELECT '{1,2,3}'::float8[]")
    with pytest.raises(PgError) as err:
        decode_copy(data, ["float8[]"], ["vec"])
    assert err.value.sqlstate == "22023" and '"vec"' in err.value.message
    data = copy_bytes(conn, "SELECT '{1,2}'::float8[] UNION ALL SELECT '{}'::float8[]")
    with pytest.raises(PgError, match='"vec"'):
        decode_copy(data, ["float8[]"], ["vec"])


def test_empty_and_malformed(conn):
    data = copy_bytes(conn, "SELECT 1::float8, 'a'::text WHERE false")
    x, t = decode_copy(data, ["float8", "text"])
    assert len(x) == 0 and len(t) == 0
    good = copy_bytes(conn, "SELECT g::float8, g::text FROM generate_series(1, 3) g")
    for bad in (b"nope" + good, good[:-5], good[:-2], good + b"\x00"):
        with pytest.raises(PgError) as err:
            decode_copy(bad, ["float8", "text"])
        assert err.value.sqlstate == "22P03"
    with pytest.raises(PgError):
        decode_copy(good, ["float8", "text", "text"])          # field count


def test_unsupported_columns_of_a_real_relation_are_refused(conn):
    conn.execute("CREATE TEMP TABLE pp_bad (ok int, doc jsonb, id uuid, pay money, tags text[])")
    rows = conn.execute(RELATION_COLUMNS_SQL.replace("$1", "%s"), ("pp_bad",)).fetchall()
    for name, oid, type_name, enum in rows[1:]:
        with pytest.raises(PgError) as err:
            C.column_kind(name, oid, type_name, enum=enum)
        assert f'"{name}"' in err.value.message and err.value.hint
    assert kinds_from_rows(rows, exclude=["doc", "id", "pay", "tags"])[0].kind == C.NUMERIC


def test_canonical_sql_quotes_names():
    kinds = [C.column_kind('we"ird', 23), C.column_kind("d", 1082)]
    assert quote_ident('we"ird') == '"we""ird"'
    sql = copy_query("pgml.snapshot_3", kinds)
    assert sql.startswith('COPY (SELECT coalesce((s."we""ird")::float8') and "FROM pgml.snapshot_3 s" in sql
    assert 'extract(epoch from (s."d")::timestamp)' in sql and sql.endswith("TO STDOUT (FORMAT binary)")


def test_every_path_finds_the_same_rows(conn):
    """Count-like bytes inside values (a text length word 00 00 00 03 holds the count 00 03 of a
    3-field row; chr(3) in text; floats whose bytes look like counts) must not confuse the search."""
    from pgml_server.ml.preprocessing import decode as D
    data = copy_bytes(conn, "SELECT coalesce(CASE WHEN g % 7 = 0 THEN 3 * 2.0 ^ -1021 ELSE g END::float8, 'NaN'), "
                            "CASE WHEN g % 5 = 0 THEN NULL ELSE repeat(chr(3), g % 4) || repeat('x', g % 3) END, "
                            "'{1,2}'::float8[] FROM generate_series(1, 300) g")
    wire = ["float8", "text", "float8[]"]
    raw = np.frombuffer(data, dtype=np.uint8)
    start = D._body_start(data)
    found = [D._row_search(raw, start, wire), D._row_layout(data, raw, start, wire), D._exact_scan(data, start, 3)]
    assert all(f is not None for f in found)
    results = [[D._column(data, raw, w, "c", o, s) for w, o, s in zip(wire, *f)] for f in found]
    for other in results[1:]:
        np.testing.assert_array_equal(results[0][0], other[0])
        assert results[0][1].tolist() == other[1].tolist()
        np.testing.assert_array_equal(results[0][2], other[2])
    texts = results[0][1].tolist()
    assert texts[4] is None and texts[0] == "\x03x" and texts[2] == "\x03\x03\x03"
