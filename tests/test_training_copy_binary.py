"""Binary COPY → numpy, against bytes produced by a real PostgreSQL (the session's upstream)."""
import asyncio
import io
import struct

import asyncpg
import numpy as np
import pytest

from pgml_server.ml.training import TrainingError
from pgml_server.ml.training.copy_binary import (BOOL, FLOAT4, FLOAT8, INT2, INT4, INT8, NUMERIC, TEXT, VARCHAR,
                                              copy_binary_matrix, parse_copy_binary)


@pytest.fixture(scope="module")
def copy_out(upstream_dsn):
    """copy_out(sql) → the bytes of COPY (sql) TO STDOUT (FORMAT binary), from the real upstream."""
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(upstream_dsn))

    def run(sql: str) -> bytes:
        out = io.BytesIO()
        loop.run_until_complete(conn.copy_from_query(sql, output=out, format="binary"))
        return out.getvalue()

    yield run
    loop.run_until_complete(conn.close())
    loop.close()


FIXED = ("SELECT i::int2 AS a, i::int4 AS b, (i::int8 * 10000000000) AS c, (i / 4.0)::float4 AS d, "
         "(i / 3.0)::float8 AS e, i % 2 = 0 AS f FROM generate_series(-5, 994) AS i")
FIXED_OIDS = [INT2, INT4, INT8, FLOAT4, FLOAT8, BOOL]


def test_fixed_width_columns(copy_out):
    cols = parse_copy_binary(copy_out(FIXED), FIXED_OIDS, list("abcdef"))
    i = np.arange(-5, 995)
    assert list(cols) == list("abcdef")
    assert cols["a"].dtype == np.int16 and (cols["a"] == i).all()
    assert cols["b"].dtype == np.int32 and (cols["b"] == i).all()
    assert cols["c"].dtype == np.int64 and (cols["c"] == i * 10_000_000_000).all()
    assert cols["d"].dtype == np.float32 and np.allclose(cols["d"], i / 4)
    assert cols["e"].dtype == np.float64 and np.allclose(cols["e"], i / 3, rtol=1e-15)
    assert cols["f"].dtype == bool and (cols["f"] == (i % 2 == 0)).all()


def test_fixed_width_matrix_equals_the_general_path(copy_out, monkeypatch):
    data = copy_out(FIXED)
    fast = copy_binary_matrix(data, FIXED_OIDS)
    from pgml_server.ml.training import copy_binary
    monkeypatch.setattr(copy_binary, "_fast_path", lambda *args: None)
    general = copy_binary_matrix(data, FIXED_OIDS)
    assert fast.shape == (1000, 6) and fast.dtype == np.float64 and fast.flags.c_contiguous
    assert np.array_equal(fast, general)


def test_fast_path_reads_the_body_as_one_structured_array(copy_out, monkeypatch):
    from pgml_server.ml.training import copy_binary
    monkeypatch.setattr(copy_binary, "_general_path", lambda *args: pytest.fail("took the general path"))
    cols = parse_copy_binary(copy_out("SELECT x::float8 FROM generate_series(1, 50000) x"), [FLOAT8], ["x"])
    assert cols["x"].sum() == 50000 * 50001 / 2


def test_numeric_and_text(copy_out):
    sql = ("SELECT * FROM (VALUES (0::numeric, 'a'::text, 'x'::varchar), (-12345.6789, 'été', 'y'), "
           "(0.000012, '', 'z'), (1e30, 'tab\tnew\nline', 'w'), ('NaN', 'b', 'v'), (123456789012345678.5, 'c', 'u')"
           ") AS t(n, label, v)")
    cols = parse_copy_binary(copy_out(sql), [NUMERIC, TEXT, VARCHAR], ["n", "label", "v"])
    assert cols["n"][:4].tolist() == [0.0, -12345.6789, 0.000012, 1e30]
    assert np.isnan(cols["n"][4]) and cols["n"][5] == 123456789012345678.5
    assert cols["label"].tolist() == ["a", "été", "", "tab\tnew\nline", "b", "c"]
    assert cols["v"].tolist() == list("xyzwvu")


def test_numeric_matches_postgres_float8_cast(copy_out):
    sql = "SELECT (random() * 10 ^ (random() * 20 - 10))::numeric(40, 20) AS n FROM generate_series(1, 300)"
    data = copy_out(f"SELECT n, n::float8 FROM ({sql}) s")
    cols = parse_copy_binary(data, [NUMERIC, FLOAT8], ["n", "f"])
    assert np.array_equal(cols["n"], cols["f"])


def test_null_names_the_column(copy_out):
    data = copy_out("SELECT 1.0::float8 AS a, CASE WHEN i = 3 THEN NULL ELSE i END::float8 AS b "
                    "FROM generate_series(1, 5) i")
    with pytest.raises(TrainingError) as err:
        parse_copy_binary(data, [FLOAT8, FLOAT8], ["a", "b"])
    assert err.value.sqlstate == "22004" and '"b"' in err.value.message and "row 3" in err.value.message
    assert "IS NOT NULL" in err.value.hint


def test_empty_result(copy_out):
    cols = parse_copy_binary(copy_out("SELECT 1::float8 AS a WHERE false"), [FLOAT8], ["a"])
    assert cols["a"].shape == (0,)
    assert copy_binary_matrix(copy_out("SELECT 1::float8, 2::int4 WHERE false"), [FLOAT8, INT4]).shape == (0, 2)


def test_malformed_streams():
    with pytest.raises(TrainingError) as err:
        parse_copy_binary(b"not a copy stream at all", [FLOAT8], ["a"])
    assert err.value.sqlstate == "22P03"
    header = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
    truncated = header + struct.pack(">hi", 1, 8) + b"\x00" * 3
    with pytest.raises(TrainingError, match="malformed"):
        parse_copy_binary(truncated, [FLOAT8], ["a"])
    wrong_count = header + struct.pack(">hid", 2, 8, 1.0) + struct.pack(">h", -1)
    with pytest.raises(TrainingError, match="2 fields, expected 1"):
        parse_copy_binary(wrong_count, [FLOAT8], ["a"])


def test_unsupported_type_and_text_in_a_matrix(copy_out):
    with pytest.raises(TrainingError) as err:
        parse_copy_binary(copy_out("SELECT now()"), [1184], ["ts"])
    assert err.value.sqlstate == "0A000" and '"ts"' in err.value.message
    with pytest.raises(TrainingError, match='"label" is text'):
        copy_binary_matrix(copy_out("SELECT 'a'::text"), [TEXT], ["label"])


def test_bytearray_and_memoryview_input(copy_out):
    data = copy_out("SELECT x::float8, x::text FROM generate_series(1, 3) x")
    for buf in (bytearray(data), memoryview(data)):
        cols = parse_copy_binary(buf, [FLOAT8, TEXT], ["x", "t"])
        assert cols["x"].tolist() == [1.0, 2.0, 3.0] and cols["t"].tolist() == ["1", "2", "3"]


MIXED = ("SELECT i::float8 AS a, (i % 3)::int4 AS b, (ARRAY['cat', 'dog', 'mouse'])[i % 3 + 1] AS label, "
         "i % 2 = 0 AS c, (i * 1.5)::numeric AS n FROM generate_series(1, 2000) i")
MIXED_OIDS, MIXED_NAMES = [FLOAT8, INT4, TEXT, BOOL, NUMERIC], ["a", "b", "label", "c", "n"]


@pytest.mark.parametrize("sql,oids,names", [
    (MIXED, MIXED_OIDS, MIXED_NAMES),
    ("SELECT i::float8 AS a, (ARRAY['cat', 'dog', 'mouse'])[i % 3 + 1] AS label, i::int2 AS b "
     "FROM generate_series(1, 2000) i", [FLOAT8, TEXT, INT2], ["a", "label", "b"]),
])
def test_layout_scan_agrees_with_the_exact_scan(copy_out, monkeypatch, sql, oids, names):
    from pgml_server.ml.training import copy_binary
    data = copy_out(sql)
    scanned = parse_copy_binary(data, oids, names)
    monkeypatch.setattr(copy_binary, "_layout_scan", lambda *args: None)
    exact = parse_copy_binary(data, oids, names)
    i = np.arange(1, 2001)
    assert scanned["label"].tolist() == exact["label"].tolist() == [["cat", "dog", "mouse"][k % 3] for k in i]
    for name in names:
        assert np.array_equal(scanned[name], exact[name])
    assert (scanned["a"] == i).all()


@pytest.mark.parametrize("null_column", ["a", "label", "c"])
def test_null_among_variable_width_columns(copy_out, null_column):
    nulled = ", ".join(f"CASE WHEN a = 1000 THEN NULL ELSE {c} END AS {c}" if c == null_column else c
                       for c in MIXED_NAMES)
    with pytest.raises(TrainingError) as err:
        parse_copy_binary(copy_out(f"SELECT {nulled} FROM ({MIXED}) t"), MIXED_OIDS, MIXED_NAMES)
    assert err.value.sqlstate == "22004" and f'"{null_column}"' in err.value.message and "row 1000" in err.value.message


def test_all_float8_matrix(copy_out):
    data = copy_out("SELECT i::float8, -i::float8, i / 7.0::float8 FROM generate_series(1, 777) i")
    matrix = copy_binary_matrix(data, [FLOAT8] * 3)
    i = np.arange(1, 778)
    assert matrix.shape == (777, 3) and matrix.flags.c_contiguous and matrix.flags.writeable
    assert np.array_equal(matrix, np.column_stack([i, -i, i / 7.0]))


def test_session_collector_takes_runs_of_copy_data_as_blocks():
    """The session hands runs of CopyData to the collector at once: equal-length messages are taken
    in one piece, a message of another length stops the run; messages of different lengths are then
    taken one after another (rows of text), a partial one stops them; the bytes in order."""
    from pgml_server.pipeline.consumers import Collector

    def copy_data(body: bytes) -> bytes:
        return b"d" + struct.pack("!i", len(body) + 4) + body

    async def run():
        collector = Collector(decode_rows=True, quiet=True)
        rows = [bytes([i]) * 9 for i in range(5)]
        stream = b"".join(copy_data(r) for r in rows) + copy_data(b"longer row") + copy_data(b"tail")[:6]
        after = collector.on_copy_data(stream, 0, len(stream))
        assert after == 5 * 14 and collector.copy_chunks == [b"".join(rows)]
        # messages of different lengths are taken one by one, up to the partial one
        longer = copy_data(b"longer row")
        assert collector.on_copy_data(stream, after, len(stream)) == after + len(longer)
        assert collector.copy_chunks == [b"".join(rows), b"longer row"]
        single = copy_data(b"x")
        assert collector.on_copy_data(single, 0, len(single)) == len(single)
        assert collector.on_copy_data(single, 0, 3) == 0                   # not even a header: nothing
        assert collector.copy_chunks[-1] == b"x"
    asyncio.run(run())
