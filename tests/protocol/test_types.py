"""Type codecs: round trips in both formats, PostgreSQL's own text forms, malformed input."""

import math
import struct
from decimal import Decimal

import pytest
from hypothesis import given, settings, strategies as st

from protocol import types as t
from protocol.errors import PgError

plain_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=20
)
tricky_text = st.sampled_from(
    ["", "NULL", "null", " ", "a b", 'say "hi"', "back\\slash", "a,b", "{}", "{", "}", "é", "\t\n"]
)
strings = tricky_text | plain_text
decimals = st.builds(
    lambda sign, digits, exponent: Decimal((sign, tuple(digits), exponent)),
    st.integers(0, 1),
    st.lists(st.integers(0, 9), min_size=1, max_size=40),
    st.integers(-40, 40),
) | st.sampled_from([Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | strings
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(strings, inner, max_size=3),
    max_leaves=8,
)

SCALARS = {
    t.BOOL: st.booleans(),
    t.INT2: st.integers(-(1 << 15), (1 << 15) - 1),
    t.INT4: st.integers(-(1 << 31), (1 << 31) - 1),
    t.INT8: st.integers(-(1 << 63), (1 << 63) - 1),
    t.OID: st.integers(0, (1 << 32) - 1),
    t.FLOAT4: st.floats(width=32),
    t.FLOAT8: st.floats(),
    t.NUMERIC: decimals,
    t.TEXT: strings,
    t.VARCHAR: strings,
    t.NAME: strings,
    t.BPCHAR: strings,
    t.UNKNOWN: strings,
    t.BYTEA: st.binary(max_size=20),
    # A top-level None is SQL NULL, not JSON null (which decodes to None as well).
    t.JSON: json_values.filter(lambda v: v is not None),
    t.JSONB: json_values.filter(lambda v: v is not None),
}
# In arrays a Python list is a dimension, so JSON elements there are anything but lists.
ARRAY_ELEMENTS = {
    **SCALARS,
    t.JSON: json_values.filter(lambda v: v is not None and not isinstance(v, list)),
    t.JSONB: json_values.filter(lambda v: v is not None and not isinstance(v, list)),
}


def same(a, b) -> bool:
    """Equality that also holds for NaN and tells 0.0 from -0.0."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, Decimal) and isinstance(b, Decimal):
        if a.is_nan() or b.is_nan():
            return a.is_nan() and b.is_nan()
    return type(a) is type(b) and a == b


@st.composite
def arrays(draw, element):
    dims = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    flat = draw(st.lists(st.none() | element, min_size=math.prod(dims), max_size=math.prod(dims)))
    for size in reversed(dims[1:]):
        flat = [flat[i : i + size] for i in range(0, len(flat), size)]
    return flat


def round_trip(oid, value, binary):
    encoded = t.encode(oid, value, binary)
    assert isinstance(encoded, bytes)
    return t.decode(oid, encoded, binary)


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize("oid", list(SCALARS), ids=t.type_name)
def test_scalar_round_trip(oid, binary):
    @settings(max_examples=60, deadline=None)
    @given(SCALARS[oid])
    def check(value):
        assert same(round_trip(oid, value, binary), value)

    check()


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize("oid", [o for o in SCALARS if o in t.ARRAY_OF], ids=t.type_name)
def test_array_round_trip(oid, binary):
    array = t.array_oid(oid)

    @settings(max_examples=30, deadline=None)
    @given(arrays(ARRAY_ELEMENTS[oid]) | st.just([]))
    def check(value):
        assert same(round_trip(array, value, binary), value)

    check()


def text_of(oid, value):
    return t.encode(oid, value).decode()


@pytest.mark.parametrize(
    "value, expected",
    [
        (1.0, "1"),
        (0.1, "0.1"),
        (-2.5, "-2.5"),
        (1e15, "1e+15"),
        (123456789012345.0, "123456789012345"),
        (1e-5, "1e-05"),
        (0.0001, "0.0001"),
        (1.5e300, "1.5e+300"),
        (-0.0, "-0"),
        (float("nan"), "NaN"),
        (float("inf"), "Infinity"),
        (float("-inf"), "-Infinity"),
    ],
)
def test_float8_text_as_postgres_prints_it(value, expected):
    assert text_of(t.FLOAT8, value) == expected


@pytest.mark.parametrize(
    "value, expected",
    [(0.1, "0.1"), (123456.0, "123456"), (1234567.0, "1.234567e+06"), (3.14159265, "3.1415927")],
)
def test_float4_text_as_postgres_prints_it(value, expected):
    assert text_of(t.FLOAT4, value) == expected


@pytest.mark.parametrize(
    "text", ["NaN", "nan", "Infinity", "-Infinity", "inf", "-inf", " 1.5 ", "1e3"]
)
def test_float_text_input_forms(text):
    value = t.decode(t.FLOAT8, text.encode())
    assert same(value, float(text.strip()))


def test_float4_out_of_range():
    with pytest.raises(PgError) as err:
        t.encode(t.FLOAT4, 1e39, True)
    assert err.value.sqlstate == "22003"
    with pytest.raises(PgError) as err:
        t.decode(t.FLOAT4, b"1e39")
    assert err.value.sqlstate == "22003"


@pytest.mark.parametrize(
    "value, hex_bytes",
    [
        (Decimal("1.50"), "0002 0000 0000 0002 0001 1388"),
        (Decimal("-12345.678"), "0003 0001 4000 0003 0001 0929 1a7c"),
        (Decimal("0"), "0000 0000 0000 0000"),
        (Decimal("0.0001"), "0001 ffff 0000 0004 0001"),
        (Decimal("NaN"), "0000 0000 c000 0000"),
        (Decimal("Infinity"), "0000 0000 d000 0000"),
        (Decimal("-Infinity"), "0000 0000 f000 0000"),
    ],
)
def test_numeric_binary_layout(value, hex_bytes):
    assert t.encode(t.NUMERIC, value, True) == bytes.fromhex(hex_bytes)
    assert same(t.decode(t.NUMERIC, bytes.fromhex(hex_bytes), True), value)


def test_numeric_infinity_as_postgres_sends_it():
    # PostgreSQL 18 sends dscale 32 with its infinities; the dscale of a special value is ignored.
    assert t.decode(t.NUMERIC, bytes.fromhex("00000000d0000020"), True) == Decimal("Infinity")
    assert t.decode(t.NUMERIC, bytes.fromhex("00000000f0000020"), True) == Decimal("-Infinity")


def test_fixed_size_arrays_with_and_without_nulls():
    for oid, values in [
        (t.FLOAT8, [1.5, -2.0, 3.25]),
        (t.INT2, [1, -2, 3]),
        (t.INT8, [1 << 40, 0]),
    ]:
        array = t.array_oid(oid)
        assert t.decode(array, t.encode(array, values, True), True) == values
        with_null = values[:1] + [None] + values[1:]
        assert t.decode(array, t.encode(array, with_null, True), True) == with_null


def test_numeric_keeps_scale_and_accepts_numbers():
    assert str(t.decode(t.NUMERIC, t.encode(t.NUMERIC, Decimal("2.500"), True), True)) == "2.500"
    assert text_of(t.NUMERIC, Decimal("1E+3")) == "1000"
    assert text_of(t.NUMERIC, Decimal("-0.00")) == "0.00"
    assert text_of(t.NUMERIC, 7) == "7"
    assert text_of(t.NUMERIC, 0.1) == "0.1"
    assert text_of(t.NUMERIC, float("nan")) == "NaN"
    assert t.decode(t.NUMERIC, t.encode(t.NUMERIC, 10**40, True), True) == 10**40
    big = Decimal("1" * 60 + "." + "9" * 60)
    assert t.decode(t.NUMERIC, t.encode(t.NUMERIC, big, True), True) == big


def test_bytea_formats():
    assert t.encode(t.BYTEA, b"\x00\xffA") == b"\\x00ff41"
    assert t.decode(t.BYTEA, b"\\x00ff41") == b"\x00\xffA"
    assert t.decode(t.BYTEA, b"a\\\\b\\001\\377") == b"a\\b\x01\xff"
    with pytest.raises(PgError) as err:
        t.decode(t.BYTEA, b"bad\\9")
    assert err.value.sqlstate == "22P02"


def test_json_and_jsonb():
    value = {"a": [1, 2.5, None], "b": "é"}
    assert t.encode(t.JSONB, value) == '{"a": [1, 2.5, null], "b": "é"}'.encode()
    assert t.encode(t.JSONB, value, True)[:1] == b"\x01"
    assert t.encode(t.JSON, value, True) == t.encode(t.JSON, value, False)
    assert t.decode(t.JSONB, b'\x01{"x": 1}', True) == {"x": 1}
    with pytest.raises(PgError):
        t.decode(t.JSONB, b'\x02{"x": 1}', True)
    with pytest.raises(PgError):
        t.decode(t.JSON, b"NaN")
    with pytest.raises(PgError):
        t.encode(t.JSON, float("nan"))


def test_bool_forms():
    assert t.encode(t.BOOL, True) == b"t" and t.encode(t.BOOL, False, True) == b"\x00"
    for word in ("t", "TRUE", "yes", "on", "1"):
        assert t.decode(t.BOOL, word.encode()) is True
    for word in ("f", "false", "No", "off", "0"):
        assert t.decode(t.BOOL, word.encode()) is False


def test_text_array_quoting_like_postgres():
    value = ["a", "", "NULL", 'x"y', "b\\c", "with space", "{}", "é", None, "a,b"]
    expected = '{a,"","NULL","x\\"y","b\\\\c","with space","{}",é,NULL,"a,b"}'
    assert text_of(t.TEXT_ARRAY, value) == expected
    assert t.decode(t.TEXT_ARRAY, expected.encode()) == value


@pytest.mark.parametrize(
    "oid, text, expected",
    [
        (t.INT4_ARRAY, "{}", []),
        (t.INT4_ARRAY, "{1,2,3}", [1, 2, 3]),
        (t.INT4_ARRAY, " { 1 , NULL , 3 } ", [1, None, 3]),
        (t.INT4_ARRAY, "{{1,2},{3,4}}", [[1, 2], [3, 4]]),
        (t.INT4_ARRAY, "[1:3]={1,2,3}", [1, 2, 3]),
        (t.INT4_ARRAY, "[0:1][1:2]={{1,2},{3,4}}", [[1, 2], [3, 4]]),
        (t.INT4_ARRAY, "{{{1},{2}},{{3},{4}}}", [[[1], [2]], [[3], [4]]]),
        (t.TEXT_ARRAY, '{"a b", c d ,"NULL",null}', ["a b", "c d", "NULL", None]),
        (t.TEXT_ARRAY, '{a\\,b,"q\\"",\\ x\\ }', ["a,b", 'q"', " x "]),
        (t.FLOAT8_ARRAY, "{NaN,Infinity,-Infinity,1.5}", [math.nan, math.inf, -math.inf, 1.5]),
        (t.BYTEA_ARRAY, '{"\\\\x0102",NULL}', [b"\x01\x02", None]),
        (t.JSONB_ARRAY, '{"{\\"a\\": 1}",NULL}', [{"a": 1}, None]),
        (t.BOOL_ARRAY, "{t,f,NULL}", [True, False, None]),
    ],
)
def test_array_text_decoding(oid, text, expected):
    assert same(t.decode(oid, text.encode()), expected)


@pytest.mark.parametrize(
    "text",
    ["{1,2", "1,2}", "{1,,2}", "{{1},2}", "{{1,2},{3}}", "{1}x", '{"a}', '{a"b}', "{1,{2}}", "{x}"],
)
def test_malformed_text_arrays(text):
    with pytest.raises(PgError) as err:
        t.decode(t.INT4_ARRAY, text.encode())
    assert err.value.sqlstate == "22P02"


def test_binary_array_layout():
    encoded = t.encode(t.INT4_ARRAY, [[1, None], [3, 4]], True)
    header = struct.pack("!iiI", 2, 1, t.INT4) + struct.pack("!iiii", 2, 1, 2, 1)
    elements = b"".join(
        [
            struct.pack("!ii", 4, 1),
            struct.pack("!i", -1),
            struct.pack("!ii", 4, 3),
            struct.pack("!ii", 4, 4),
        ]
    )
    assert encoded == header + elements
    assert t.encode(t.INT4_ARRAY, [], True) == struct.pack("!iiI", 0, 0, t.INT4)
    lower_bound_zero = (
        struct.pack("!iiI", 1, 0, t.INT4) + struct.pack("!ii", 1, 0) + struct.pack("!ii", 4, 7)
    )
    assert t.decode(t.INT4_ARRAY, lower_bound_zero, True) == [7]


def test_binary_array_wrong_element_type():
    data = t.encode(t.INT4_ARRAY, [1], True)
    with pytest.raises(PgError) as err:
        t.decode(t.INT8_ARRAY, data, True)
    assert err.value.sqlstate == "22P03"


def test_array_value_must_be_a_list():
    for binary in (False, True):
        with pytest.raises(PgError) as err:
            t.encode(t.INT4_ARRAY, 5, binary)
        assert err.value.sqlstate == "42804"
    assert t.encode(t.INT4_ARRAY, (1, 2)) == b"{1,2}"


def test_array_shape_must_be_rectangular():
    with pytest.raises(PgError):
        t.encode(t.INT4_ARRAY, [[1, 2], [3]])
    with pytest.raises(PgError):
        t.encode(t.INT4_ARRAY, [[1], 2], True)


@pytest.mark.parametrize(
    "oid, value, code",
    [
        (t.INT2, 1 << 15, "22003"),
        (t.INT4, -(1 << 31) - 1, "22003"),
        (t.INT4, "12", "42804"),
        (t.INT8, 1.5, "42804"),
        (t.TEXT, b"bytes", "42804"),
        (t.TEXT, "nul\0", "22021"),
        (t.BYTEA, "str", "42804"),
        (t.FLOAT8, "1.0", "42804"),
    ],
)
def test_encode_errors(oid, value, code):
    with pytest.raises(PgError) as err:
        t.encode(oid, value)
    assert err.value.sqlstate == code


@pytest.mark.parametrize(
    "oid, data, binary, code",
    [
        (t.INT4, b"12x", False, "22P02"),
        (t.INT2, b"40000", False, "22003"),
        (t.INT4, b"\x00\x01", True, "22P03"),
        (t.TEXT, b"\xff", False, "22021"),
        (t.NUMERIC, b"sNaN", False, "22P02"),
        (t.NUMERIC, b"\x00\x01\x00\x00\x00\x00\x00\x00\x27\x10", True, "22P03"),
        (t.BOOL, b"maybe", False, "22P02"),
    ],
)
def test_decode_errors(oid, data, binary, code):
    with pytest.raises(PgError) as err:
        t.decode(oid, data, binary)
    assert err.value.sqlstate == code


def test_null_passes_through():
    assert t.encode(t.INT4, None) is None
    assert t.decode(t.INT4, None) is None


def test_unknown_oid_falls_back_to_raw():
    assert t.decode(999999, b"abc") == "abc"
    assert t.decode(999999, b"\x00\x01", True) == b"\x00\x01"


def test_oid_maps_and_sizes():
    assert t.array_oid(t.FLOAT8) == t.FLOAT8_ARRAY == 1022
    assert t.element_oid(t.TEXT_ARRAY) == t.TEXT
    assert t.element_oid(t.TEXT) is None
    assert [t.type_size(o) for o in (t.BOOL, t.INT2, t.INT4, t.INT8, t.FLOAT8, t.TEXT)] == [
        1,
        2,
        4,
        8,
        8,
        -1,
    ]
    assert t.type_name(t.INT4_ARRAY) == "integer[]"


def test_memoryview_input():
    data = memoryview(b"xx42xx")[2:4]
    assert t.decode(t.INT4, data) == 42


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(t._CODECS)), st.binary(max_size=40), st.booleans())
def test_fuzz_decode_raises_only_pg_error(oid, data, binary):
    try:
        t.decode(oid, data, binary)
    except PgError:
        pass


def test_timestamptz_passes_the_upstreams_text_on_and_encodes_binary():
    types = t
    """Values the upstream computed (a schedule's next run, drift windows) keep PostgreSQL's text;
    binary is int64 microseconds since 2000-01-01 UTC."""
    import datetime as dt
    import struct
    text = "2026-12-03 08:20:02.123456+00"
    assert types.encode(types.TIMESTAMPTZ, text, False) == text.encode()
    raw = types.encode(types.TIMESTAMPTZ, text, True)
    moment = dt.datetime(2026, 12, 3, 8, 20, 2, 123456, tzinfo=dt.timezone.utc)
    micros = (moment - dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)
    assert struct.unpack("!q", raw)[0] == micros
    assert types.decode(types.TIMESTAMPTZ, raw, True) == text
    assert types.encode(types.TIMESTAMPTZ, "2026-12-03 10:20:02.123456+02", True) == raw
    assert types.decode(types.TIMESTAMPTZ, types.encode(types.TIMESTAMPTZ, "infinity", True), True) == "infinity"
    assert types.type_size(types.TIMESTAMPTZ) == 8
