"""Text and binary codecs for the PostgreSQL types this server reads and writes.

decode(oid, data, binary) turns a column or parameter value into a Python value and
encode(oid, value, binary) does the reverse, in the text or the binary wire format:

  bool -> bool; int2/int4/int8/oid -> int; float4/float8 -> float; numeric -> Decimal;
  text/varchar/name/bpchar/unknown -> str; bytea -> bytes; json/jsonb -> parsed Python value;
  arrays of any of these (any number of dimensions) -> nested lists, None for NULL elements.

Text output matches what PostgreSQL prints (floats in shortest round-trip form, 'NaN',
'Infinity', bytea in hex, arrays with PostgreSQL's quoting), so a client cannot tell a value
we made from one the upstream made. Bad input raises PgError with PostgreSQL's SQLSTATE
(22P02 text, 22P03 binary, 22003 out of range, 22021 bad encoding, 42804 wrong Python type).

In arrays a Python list (or tuple) is always a dimension; so a json[]/jsonb[] element cannot
itself be a top-level JSON list (objects holding lists are fine). And None is always SQL NULL:
a JSON null at the top level decodes to None too, so encode the text 'null' yourself if needed.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import operator
import re
from collections.abc import Callable
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, ROUND_HALF_UP, Context, Decimal
import struct
from struct import Struct, error as StructError
from typing import Any, NamedTuple

from protocol import sqlstate
from protocol.errors import PgError

# --- OIDs (pg_type.dat) -----------------------------------------------------------------------

BOOL = 16
BYTEA = 17
NAME = 19
INT8 = 20
INT2 = 21
INT4 = 23
TEXT = 25
OID = 26
JSON = 114
FLOAT4 = 700
FLOAT8 = 701
UNKNOWN = 705
BPCHAR = 1042
VARCHAR = 1043
NUMERIC = 1700
JSONB = 3802
TIMESTAMPTZ = 1184

BOOL_ARRAY = 1000
BYTEA_ARRAY = 1001
NAME_ARRAY = 1003
INT2_ARRAY = 1005
INT4_ARRAY = 1007
TEXT_ARRAY = 1009
BPCHAR_ARRAY = 1014
VARCHAR_ARRAY = 1015
INT8_ARRAY = 1016
FLOAT4_ARRAY = 1021
FLOAT8_ARRAY = 1022
OID_ARRAY = 1028
JSON_ARRAY = 199
NUMERIC_ARRAY = 1231
JSONB_ARRAY = 3807

ARRAY_OF = {
    BOOL: BOOL_ARRAY,
    BYTEA: BYTEA_ARRAY,
    NAME: NAME_ARRAY,
    INT8: INT8_ARRAY,
    INT2: INT2_ARRAY,
    INT4: INT4_ARRAY,
    TEXT: TEXT_ARRAY,
    OID: OID_ARRAY,
    JSON: JSON_ARRAY,
    FLOAT4: FLOAT4_ARRAY,
    FLOAT8: FLOAT8_ARRAY,
    BPCHAR: BPCHAR_ARRAY,
    VARCHAR: VARCHAR_ARRAY,
    NUMERIC: NUMERIC_ARRAY,
    JSONB: JSONB_ARRAY,
}
ELEMENT_OF = {array: element for element, array in ARRAY_OF.items()}

_NAMES = {
    BOOL: "boolean",
    BYTEA: "bytea",
    NAME: "name",
    INT8: "bigint",
    INT2: "smallint",
    INT4: "integer",
    TEXT: "text",
    OID: "oid",
    JSON: "json",
    FLOAT4: "real",
    FLOAT8: "double precision",
    UNKNOWN: "unknown",
    BPCHAR: "character",
    VARCHAR: "character varying",
    NUMERIC: "numeric",
    JSONB: "jsonb",
    TIMESTAMPTZ: "timestamp with time zone",
}
# pg_type.typlen: what RowDescription reports as the type size.
_SIZES = {BOOL: 1, INT2: 2, INT4: 4, OID: 4, INT8: 8, FLOAT4: 4, FLOAT8: 8, NAME: 64, UNKNOWN: -2, TIMESTAMPTZ: 8}


def array_oid(element_oid: int) -> int | None:
    """The OID of the array type of ``element_oid`` (None when we know none)."""
    return ARRAY_OF.get(element_oid)


def element_oid(array_oid: int) -> int | None:
    """The element OID of an array type, or None when ``array_oid`` is not an array we know."""
    return ELEMENT_OF.get(array_oid)


def type_size(oid: int) -> int:
    """pg_type.typlen of ``oid``: 1/2/4/8 for fixed-size scalars, 64 for name, -1 varlena."""
    return _SIZES.get(oid, -1)


def type_name(oid: int) -> str:
    """The SQL name of ``oid`` as PostgreSQL writes it in messages."""
    element = ELEMENT_OF.get(oid)
    if element is not None:
        return _NAMES[element] + "[]"
    return _NAMES.get(oid, f"oid {oid}")


class Codec(NamedTuple):
    text_in: Callable[[str], Any]
    text_out: Callable[[Any], str]
    binary_in: Callable[[bytes], Any]
    binary_out: Callable[[Any], bytes]


def _out_of_range(value: object, oid: int) -> PgError:
    return PgError(
        sqlstate.NUMERIC_VALUE_OUT_OF_RANGE,
        f'value "{value}" is out of range for type {type_name(oid)}',
    )


# --- bool ------------------------------------------------------------------------------------

_TRUE = frozenset(("t", "true", "y", "yes", "on", "1"))
_FALSE = frozenset(("f", "false", "n", "no", "off", "0"))


def _to_bool(value: Any) -> bool:
    if isinstance(value, (str, bytes)):
        raise TypeError("a string is not a boolean")
    return bool(value)


def _bool_text_in(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(text)


def _bool_binary_in(data: bytes) -> bool:
    if len(data) != 1:
        raise ValueError("boolean must be one byte")
    return data != b"\0"


BOOL_CODEC = Codec(
    _bool_text_in,
    lambda v: "t" if _to_bool(v) else "f",
    _bool_binary_in,
    lambda v: b"\x01" if _to_bool(v) else b"\x00",
)


# --- integers --------------------------------------------------------------------------------

_DIGITS = re.compile(r"\s*[+-]?[0-9]+(?:_[0-9]+)*\s*\Z", re.ASCII)


def _int_codec(oid: int, st: Struct, low: int, high: int) -> Codec:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise _out_of_range(value, oid)
        return value

    def text_in(text: str) -> int:
        if not _DIGITS.match(text):
            raise ValueError(text)
        return check(int(text))

    def binary_in(data: bytes) -> int:
        if len(data) != st.size:
            raise ValueError(f"expected {st.size} bytes")
        return st.unpack(data)[0]

    return Codec(
        text_in,
        lambda v: str(check(operator.index(v))),
        binary_in,
        lambda v: st.pack(check(operator.index(v))),
    )


INT2_CODEC = _int_codec(INT2, Struct("!h"), -(1 << 15), (1 << 15) - 1)
INT4_CODEC = _int_codec(INT4, Struct("!i"), -(1 << 31), (1 << 31) - 1)
INT8_CODEC = _int_codec(INT8, Struct("!q"), -(1 << 63), (1 << 63) - 1)
OID_CODEC = _int_codec(OID, Struct("!I"), 0, (1 << 32) - 1)


# --- floats ----------------------------------------------------------------------------------

_F4 = Struct("!f")
_F8 = Struct("!d")


def _to_float(value: Any) -> float:
    if isinstance(value, (str, bytes)):
        raise TypeError("a string is not a number")
    return float(value)


def _to_float4(value: float) -> float:
    """Round a double to the nearest float4, as storing it in a real column would."""
    try:
        return _F4.unpack(_F4.pack(value))[0]
    except (OverflowError, StructError):
        raise _out_of_range(value, FLOAT4) from None


def _shortest_digits(value: float, float4: bool) -> tuple[str, int]:
    """Shortest digits that read back as ``value`` (> 0), and the exponent of the first digit."""
    if float4:
        for precision in range(1, 10):
            text = f"{value:.{precision - 1}e}"
            try:
                if _F4.unpack(_F4.pack(float(text)))[0] == value:
                    break
            except OverflowError:  # rounded up past the largest float4: needs more digits
                continue
    else:
        text = repr(value)
    _, digits, exponent = Decimal(text).as_tuple()
    digit_text = "".join(map(str, digits)).rstrip("0")
    return digit_text, exponent + len(digits) - 1


def _format_float(value: float, float4: bool) -> str:
    """PostgreSQL 12+ float output: shortest exact digits, fixed or exponent form like ryu."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0"
    digits, exp = _shortest_digits(abs(value), float4)
    # The switch to exponent form follows printf's %g with FLT_DIG/DBL_DIG digits, as ryu does.
    if -4 <= exp < (6 if float4 else 15):
        if exp < 0:
            return f"{sign}0.{'0' * (-exp - 1)}{digits}"
        whole, fraction = digits[: exp + 1].ljust(exp + 1, "0"), digits[exp + 1 :]
        return f"{sign}{whole}.{fraction}" if fraction else sign + whole
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{sign}{mantissa}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"


def _float_text_in(text: str) -> float:
    # float() takes what PostgreSQL takes, plus non-ASCII digits and "_" separators.
    if not text.isascii() or "_" in text:
        raise ValueError(text)
    return float(text)


def _float4_text_in(text: str) -> float:
    value = _float_text_in(text)
    if math.isinf(value) and "inf" not in text.lower():
        raise _out_of_range(text.strip(), FLOAT4)
    return _to_float4(value)


def _float8_text_in(text: str) -> float:
    value = _float_text_in(text)
    if math.isinf(value) and "inf" not in text.lower():
        raise _out_of_range(text.strip(), FLOAT8)
    return value


def _fixed_binary_in(st: Struct) -> Callable[[bytes], Any]:
    def binary_in(data: bytes) -> Any:
        if len(data) != st.size:
            raise ValueError(f"expected {st.size} bytes")
        return st.unpack(data)[0]

    return binary_in


FLOAT4_CODEC = Codec(
    _float4_text_in,
    lambda v: _format_float(_to_float4(_to_float(v)), True),
    _fixed_binary_in(_F4),
    lambda v: _F4.pack(_to_float4(_to_float(v))),
)


def _format_float8(value: float) -> str:
    # Fast path: repr() is already the shortest form, and where it uses an exponent
    # (below 1e-4, from 1e16) PostgreSQL does too, spelled the same way.
    text = repr(value)
    if "e" in text:
        return text
    if abs(value) < 1e15:
        return text[:-2] if text.endswith(".0") else text
    return _format_float(value, False)  # nan, inf, and [1e15, 1e16) which PG writes as 1e+15


FLOAT8_CODEC = Codec(
    _float8_text_in,
    lambda v: _format_float8(_to_float(v)),
    _fixed_binary_in(_F8),
    lambda v: _F8.pack(_to_float(v)),
)


# --- numeric ---------------------------------------------------------------------------------

_NUMERIC_HEAD = Struct("!hhHH")  # ndigits, weight, sign, dscale
_NUMERIC_POS = 0x0000
_NUMERIC_NEG = 0x4000
_NUMERIC_NAN = 0xC000
_NUMERIC_PINF = 0xD000
_NUMERIC_NINF = 0xF000
_NUMERIC_DSCALE_MAX = 0x3FFF
# Numeric values can have thousands of digits; the default 28-digit context would round them.
_WIDE = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, rounding=ROUND_HALF_UP)
_NUMERIC_TEXT = re.compile(
    r"\s*[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)\s*\Z",
    re.ASCII | re.IGNORECASE,
)


def _to_decimal(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        # repr() gives the shortest text that reads back as this float, as float8 -> numeric does.
        return Decimal(repr(value))
    if isinstance(value, (str, bytes)):
        raise TypeError("a string is not a number")
    return Decimal(operator.index(value))


def _numeric_text_in(text: str) -> Decimal:
    if not _NUMERIC_TEXT.match(text):
        raise ValueError(text)
    value = Decimal(text.strip())
    return Decimal("NaN") if value.is_nan() else value


def _numeric_text_out(value: Any) -> str:
    number = _to_decimal(value)
    if number.is_nan():
        return "NaN"
    if number.is_infinite():
        return "Infinity" if number > 0 else "-Infinity"
    if number.is_zero():
        number = number.copy_abs()  # numeric has no negative zero
    return format(number, "f")


def _base10000_groups(digits: str, fraction_len: int) -> tuple[list[int], int]:
    """Split decimal digits (the last ``fraction_len`` after the point) into base-10000 groups."""
    split = max(len(digits) - fraction_len, 0)
    whole, fraction = digits[:split], digits[split:].rjust(fraction_len, "0")
    whole = whole.rjust(-(-len(whole) // 4) * 4, "0")
    fraction = fraction.ljust(-(-len(fraction) // 4) * 4, "0")
    padded = whole + fraction
    groups = [int(padded[i : i + 4]) for i in range(0, len(padded), 4)]
    weight = len(whole) // 4 - 1
    start = 0
    while start < len(groups) and groups[start] == 0:
        start += 1
    groups = groups[start:]
    while groups and groups[-1] == 0:
        groups.pop()
    return groups, (weight - start if groups else 0)


def _numeric_binary_out(value: Any) -> bytes:
    number = _to_decimal(value)
    if number.is_nan():
        return _NUMERIC_HEAD.pack(0, 0, _NUMERIC_NAN, 0)
    if number.is_infinite():
        return _NUMERIC_HEAD.pack(0, 0, _NUMERIC_PINF if number > 0 else _NUMERIC_NINF, 0)
    negative, digit_tuple, exponent = number.as_tuple()
    digits = "".join(map(str, digit_tuple)) + "0" * max(exponent, 0)
    dscale = max(-exponent, 0)
    groups, weight = _base10000_groups(digits, dscale)
    if dscale > _NUMERIC_DSCALE_MAX or not -(1 << 15) <= weight < (1 << 15):
        raise _out_of_range(value, NUMERIC)
    sign = _NUMERIC_NEG if negative and groups else _NUMERIC_POS
    head = _NUMERIC_HEAD.pack(len(groups), weight, sign, dscale)
    return head + Struct(f"!{len(groups)}H").pack(*groups)


_NUMERIC_SPECIALS = {
    _NUMERIC_NAN: Decimal("NaN"),
    _NUMERIC_PINF: Decimal("Infinity"),
    _NUMERIC_NINF: Decimal("-Infinity"),
}


def _numeric_binary_in(data: bytes) -> Decimal:
    ndigits, weight, sign, dscale = _NUMERIC_HEAD.unpack_from(data)
    if sign in _NUMERIC_SPECIALS:
        return _NUMERIC_SPECIALS[sign]
    if sign not in (_NUMERIC_POS, _NUMERIC_NEG) or dscale > _NUMERIC_DSCALE_MAX:
        raise ValueError("invalid sign or scale in numeric value")
    if ndigits < 0 or len(data) != 8 + 2 * ndigits:
        raise ValueError("invalid length in numeric value")
    groups = Struct(f"!{ndigits}H").unpack_from(data, 8)
    if any(group > 9999 for group in groups):
        raise ValueError("invalid digit in numeric value")
    digits = "".join(f"{group:04d}" for group in groups) or "0"
    exponent = (weight - ndigits + 1) * 4
    number = Decimal(f"{'-' if sign == _NUMERIC_NEG else ''}{digits}E{exponent}")
    return number.quantize(Decimal((0, (1,), -dscale)), context=_WIDE)


NUMERIC_CODEC = Codec(_numeric_text_in, _numeric_text_out, _numeric_binary_in, _numeric_binary_out)


# --- strings, bytea, json --------------------------------------------------------------------


def _to_text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected str, got {type(value).__name__}")
    if "\0" in value:
        raise PgError(
            sqlstate.CHARACTER_NOT_IN_REPERTOIRE,
            'invalid byte sequence for encoding "UTF8": 0x00',
        )
    return value


def _utf8(data: bytes) -> str:
    return data.decode("utf-8")


TEXT_CODEC = Codec(str, _to_text, _utf8, lambda v: _to_text(v).encode())


def _to_bytes(value: Any) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    return bytes(value)


_OCTAL_ESCAPE = re.compile(rb"\\([0-3][0-7][0-7])")


def _bytea_text_in(text: str) -> bytes:
    if text.startswith("\\x"):
        return bytes.fromhex(text[2:])
    # The older escape format: \\ is a backslash, \nnn an octal byte, all else literal.
    raw = text.encode()
    out = bytearray()
    pos = 0
    while (slash := raw.find(b"\\", pos)) >= 0:
        out += raw[pos:slash]
        if raw[slash + 1 : slash + 2] == b"\\":
            out.append(0x5C)
            pos = slash + 2
        elif match := _OCTAL_ESCAPE.match(raw, slash):
            out.append(int(match.group(1), 8))
            pos = match.end()
        else:
            raise ValueError("invalid escape in bytea")
    out += raw[pos:]
    return bytes(out)


BYTEA_CODEC = Codec(_bytea_text_in, lambda v: "\\x" + _to_bytes(v).hex(), bytes, _to_bytes)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _json_in(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


def _json_out(value: Any) -> str:
    # ", " and ": " separators are also how PostgreSQL prints jsonb.
    return _to_text(json.dumps(value, ensure_ascii=False, allow_nan=False))


def _jsonb_binary_in(data: bytes) -> Any:
    if data[:1] != b"\x01":
        raise ValueError("unsupported jsonb version number")
    return _json_in(data[1:].decode("utf-8"))


JSON_CODEC = Codec(
    _json_in, _json_out, lambda d: _json_in(_utf8(d)), lambda v: _json_out(v).encode()
)
JSONB_CODEC = Codec(
    _json_in, _json_out, _jsonb_binary_in, lambda v: b"\x01" + _json_out(v).encode()
)

# An OID we have no codec for: text stays str, binary stays bytes.
RAW_CODEC = Codec(str, lambda v: str(v), bytes, _to_bytes)


# --- timestamptz: values the upstream computed (schedules, drift windows), passed on ---------
# Text stays the text PostgreSQL printed (ISO style, as the session's DateStyle usually is); a
# datetime prints in that style. Binary is int64 microseconds since 2000-01-01 00:00 UTC.
_PG_EPOCH = _dt.datetime(2000, 1, 1, tzinfo=_dt.timezone.utc)
_I64 = Struct("!q")


def _timestamptz_text_out(value: Any) -> str:
    if isinstance(value, _dt.datetime):
        return value.isoformat(sep=" ")
    return str(value)


def _timestamptz_binary_out(value: Any) -> bytes:
    text = value.isoformat() if isinstance(value, _dt.datetime) else str(value).strip()
    if text.lower() in ("infinity", "-infinity"):
        return _I64.pack(2**63 - 1 if text[0] != "-" else -2**63)
    moment = value if isinstance(value, _dt.datetime) else _dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    delta = moment - _PG_EPOCH
    return _I64.pack((delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds)


def _timestamptz_binary_in(data: bytes) -> str:
    micros = _I64.unpack(data)[0]
    if micros in (2**63 - 1, -2**63):
        return "infinity" if micros > 0 else "-infinity"
    return (_PG_EPOCH + _dt.timedelta(microseconds=micros)).isoformat(sep=" ").replace("+00:00", "+00")


TIMESTAMPTZ_CODEC = Codec(str, _timestamptz_text_out, _timestamptz_binary_in, _timestamptz_binary_out)


# --- arrays ----------------------------------------------------------------------------------

_MAX_DIMS = 6  # PostgreSQL's MAXDIM
_ARRAY_HEAD = Struct("!iiI")  # ndim, has-null flag, element OID
_DIMENSION = Struct("!ii")  # size, lower bound
_I32 = Struct("!i")
_NULL_LENGTH = _I32.pack(-1)
_NEEDS_QUOTES = re.compile(r'[{}",\\ \t\n\r\v\f]')
_ARRAY_SPACE = " \t\n\r\v\f"
_DIMENSIONS_PREFIX = re.compile(r"(?:\s*\[\s*[+-]?\d+\s*(?::\s*[+-]?\d+\s*)?\])+\s*=", re.ASCII)
_SIMPLE_LIST = re.compile(r'[{}"\\]')


def _shape(value: Any) -> list[int]:
    """The dimensions of a nested list, checked to be rectangular."""
    dims = []
    probe = value
    while isinstance(probe, (list, tuple)):
        dims.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    if not dims:
        raise TypeError(f"an array value must be a list, got {type(value).__name__}")
    if len(dims) > _MAX_DIMS:
        raise PgError(
            sqlstate.PROGRAM_LIMIT_EXCEEDED,
            f"number of array dimensions ({len(dims)}) exceeds the maximum allowed ({_MAX_DIMS})",
        )
    _check_shape(value, dims)
    return dims


def _check_shape(value: Any, dims: list[int]) -> None:
    if not isinstance(value, (list, tuple)) or len(value) != dims[0]:
        raise _not_rectangular()
    if len(dims) == 1:
        if any(isinstance(item, (list, tuple)) for item in value):
            raise _not_rectangular()
        return
    for item in value:
        _check_shape(item, dims[1:])


def _not_rectangular() -> PgError:
    return PgError(
        sqlstate.INVALID_TEXT_REPRESENTATION,
        "multidimensional arrays must have sub-arrays with matching dimensions",
    )


def _flatten(value: Any, depth: int) -> list[Any]:
    if depth == 1:
        return list(value)
    return [leaf for item in value for leaf in _flatten(item, depth - 1)]


def _nest(flat: list[Any], dims: list[int]) -> list[Any]:
    for size in reversed(dims[1:]):
        flat = [flat[i : i + size] for i in range(0, len(flat), size)]
    return flat


def _quote_element(text: str) -> str:
    if text == "" or text.lower() == "null" or _NEEDS_QUOTES.search(text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _array_text_out(value: Any, element_out: Callable[[Any], str]) -> str:
    dims = _shape(value)
    if 0 in dims:
        return "{}"

    def level(items: Any, depth: int) -> str:
        if depth == 1:
            parts = ["NULL" if v is None else _quote_element(element_out(v)) for v in items]
        else:
            parts = [level(item, depth - 1) for item in items]
        return "{" + ",".join(parts) + "}"

    return level(value, len(dims))


class _ArrayTextParser:
    """PostgreSQL's array input syntax (ReadArrayStr): braces, quotes, escapes, NULL."""

    def __init__(self, text: str, element_in: Callable[[str], Any]) -> None:
        self.text = text
        self.pos = 0
        self.element_in = element_in

    def parse(self) -> list[Any]:
        if match := _DIMENSIONS_PREFIX.match(self.text):
            self.pos = match.end()  # lower bounds do not survive into Python lists
        self._skip_space()
        if self._peek() != "{":
            raise ValueError('array value must start with "{" or dimension information')
        value = self._level()
        self._skip_space()
        if self.pos != len(self.text):
            raise ValueError("junk after closing right brace")
        return value

    def _peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def _skip_space(self) -> None:
        while self._peek() and self._peek() in _ARRAY_SPACE:
            self.pos += 1

    def _level(self) -> list[Any]:
        self.pos += 1  # the opening brace
        items: list[Any] = []
        self._skip_space()
        if self._peek() == "}":
            self.pos += 1
            return items
        while True:
            self._skip_space()
            items.append(self._level() if self._peek() == "{" else self._element())
            self._skip_space()
            char = self._peek()
            self.pos += 1
            if char == "}":
                return items
            if char != ",":
                raise ValueError(f"unexpected {char!r} in array")

    def _element(self) -> Any:
        if self._peek() == '"':
            return self.element_in(self._quoted())
        text, escaped = self._unquoted()
        if not escaped and text.lower() == "null":
            return None
        return self.element_in(text)

    def _quoted(self) -> str:
        text, parts = self.text, []
        self.pos += 1
        while True:
            stop = min(_find(text, '"', self.pos), _find(text, "\\", self.pos))
            if stop >= len(text) or (text[stop] == "\\" and stop + 1 >= len(text)):
                raise ValueError("unterminated quoted array element")
            parts.append(text[self.pos : stop])
            if text[stop] == '"':
                self.pos = stop + 1
                return "".join(parts)
            parts.append(text[stop + 1])
            self.pos = stop + 2

    def _unquoted(self) -> tuple[str, bool]:
        text, chars = self.text, []
        kept = 0  # escaped characters are never trimmed as trailing space
        while self.pos < len(text) and text[self.pos] not in ",}":
            char = text[self.pos]
            if char in '{"':
                raise ValueError(f"unexpected {char!r} in array element")
            if char == "\\":
                if self.pos + 1 >= len(text):
                    raise ValueError("unexpected end of array")
                chars.append(text[self.pos + 1])
                kept = len(chars)
                self.pos += 2
            else:
                chars.append(char)
                self.pos += 1
        while len(chars) > kept and chars[-1] in _ARRAY_SPACE:
            chars.pop()
        if not chars:
            raise ValueError("empty unquoted array element")
        return "".join(chars), kept > 0


def _find(text: str, char: str, start: int) -> int:
    index = text.find(char, start)
    return len(text) if index < 0 else index


def _simple_list(text: str, element_in: Callable[[str], Any]) -> list[Any] | None:
    """Fast path for the common '{1,2,3}': one dimension, no quotes or escapes."""
    stripped = text.strip(_ARRAY_SPACE)
    if (
        stripped[:1] != "{"
        or stripped[-1:] != "}"
        or _SIMPLE_LIST.search(stripped, 1, len(stripped) - 1)
    ):
        return None
    inner = stripped[1:-1]
    if not inner.strip(_ARRAY_SPACE):
        return []
    items = []
    for raw in inner.split(","):
        item = raw.strip(_ARRAY_SPACE)
        if not item:
            raise ValueError("empty unquoted array element")
        items.append(None if item.lower() == "null" else element_in(item))
    return items


def _array_text_in(text: str, element_in: Callable[[str], Any]) -> list[Any]:
    value = _simple_list(text, element_in)
    if value is None:
        value = _ArrayTextParser(text, element_in).parse()
        if 0 in _shape(value):
            return []
    return value


def _array_binary_out(value: Any, element_oid: int, element_out: Callable[[Any], bytes]) -> bytes:
    dims = _shape(value)
    if 0 in dims:
        return _ARRAY_HEAD.pack(0, 0, element_oid)
    flat = _flatten(value, len(dims))
    parts = [_ARRAY_HEAD.pack(len(dims), int(None in flat), element_oid)]
    parts.extend(_DIMENSION.pack(size, 1) for size in dims)
    for item in flat:
        if item is None:
            parts.append(_NULL_LENGTH)
        else:
            data = element_out(item)
            parts.append(_I32.pack(len(data)))
            parts.append(data)
    return b"".join(parts)


def _array_binary_in(
    data: bytes, element_oid: int, element_in: Callable[[bytes], Any]
) -> list[Any]:
    ndim, flags, oid = _ARRAY_HEAD.unpack_from(data)
    if not 0 <= ndim <= _MAX_DIMS or flags not in (0, 1):
        raise ValueError("invalid array header")
    if oid != element_oid:
        raise ValueError(f"wrong element type {oid} (expected {element_oid})")
    pos = _ARRAY_HEAD.size
    dims = []
    for _ in range(ndim):
        size, _lower = _DIMENSION.unpack_from(data, pos)
        if size < 0:
            raise ValueError("negative array dimension")
        dims.append(size)
        pos += _DIMENSION.size
    count = math.prod(dims) if dims else 0
    if count * 4 > len(data) - pos:  # each element needs at least its length word
        raise ValueError("array is truncated")
    flat = _fixed_elements(data, pos, count, element_oid)
    if flat is not None:
        return _nest(flat, dims) if count else []
    flat = []
    for _ in range(count):
        (length,) = _I32.unpack_from(data, pos)
        pos += 4
        if length == -1:
            flat.append(None)
            continue
        if length < 0 or pos + length > len(data):
            raise ValueError("invalid array element length")
        flat.append(element_in(data[pos : pos + length]))
        pos += length
    if pos != len(data):
        raise ValueError("trailing bytes after array")
    return _nest(flat, dims) if count else []


# Fixed-size element types: a NULL-free array of these is one struct.unpack (feature vectors).
_FIXED_ELEMENTS = {INT2: "h", INT4: "i", INT8: "q", OID: "I", FLOAT4: "f", FLOAT8: "d"}


def _fixed_elements(data: bytes, pos: int, count: int, element_oid: int) -> list[Any] | None:
    code = _FIXED_ELEMENTS.get(element_oid)
    if code is None or not count:
        return None
    size = struct.calcsize(code)
    if len(data) - pos != count * (4 + size):
        return None
    fields = struct.unpack_from("!" + ("i" + code) * count, data, pos)
    if any(length != size for length in fields[0::2]):
        return None  # a NULL shifts the layout; the general path handles it
    return list(fields[1::2])


def _array_codec(element: int, codec: Codec) -> Codec:
    return Codec(
        lambda text: _array_text_in(text, codec.text_in),
        lambda value: _array_text_out(value, codec.text_out),
        lambda data: _array_binary_in(data, element, codec.binary_in),
        lambda value: _array_binary_out(value, element, codec.binary_out),
    )


# --- registry and entry points ---------------------------------------------------------------

_CODECS: dict[int, Codec] = {
    BOOL: BOOL_CODEC,
    INT2: INT2_CODEC,
    INT4: INT4_CODEC,
    INT8: INT8_CODEC,
    OID: OID_CODEC,
    FLOAT4: FLOAT4_CODEC,
    FLOAT8: FLOAT8_CODEC,
    NUMERIC: NUMERIC_CODEC,
    TEXT: TEXT_CODEC,
    VARCHAR: TEXT_CODEC,
    NAME: TEXT_CODEC,
    BPCHAR: TEXT_CODEC,
    UNKNOWN: TEXT_CODEC,
    BYTEA: BYTEA_CODEC,
    JSON: JSON_CODEC,
    JSONB: JSONB_CODEC,
    TIMESTAMPTZ: TIMESTAMPTZ_CODEC,
}
_CODECS.update({ARRAY_OF[e]: _array_codec(e, c) for e, c in list(_CODECS.items()) if e in ARRAY_OF})


def codec(oid: int) -> Codec:
    """The codec for ``oid``; unknown OIDs get RAW_CODEC (text as str, binary as bytes)."""
    return _CODECS.get(oid, RAW_CODEC)


def decode(oid: int, data: bytes | memoryview | None, binary: bool = False) -> Any:
    """A wire value as a Python value (None stays None, for SQL NULL)."""
    if data is None:
        return None
    chosen = codec(oid)
    try:
        if binary:
            return chosen.binary_in(bytes(data))
        return chosen.text_in(str(data, "utf-8"))
    except PgError:
        raise
    except UnicodeDecodeError:
        raise PgError(
            sqlstate.CHARACTER_NOT_IN_REPERTOIRE, 'invalid byte sequence for encoding "UTF8"'
        ) from None
    except (ValueError, ArithmeticError, StructError, RecursionError) as exc:
        raise _decode_error(oid, data, binary) from exc


def _decode_error(oid: int, data: bytes | memoryview, binary: bool) -> PgError:
    if binary:
        return PgError(
            sqlstate.INVALID_BINARY_REPRESENTATION,
            f"incorrect binary data format for type {type_name(oid)}",
        )
    shown = bytes(data[:200]).decode("utf-8", "replace")
    return PgError(
        sqlstate.INVALID_TEXT_REPRESENTATION,
        f'invalid input syntax for type {type_name(oid)}: "{shown}"',
    )


def encode(oid: int, value: Any, binary: bool = False) -> bytes | None:
    """A Python value in the wire format of ``oid`` (None stays None, for SQL NULL)."""
    if value is None:
        return None
    chosen = codec(oid)
    try:
        if binary:
            return chosen.binary_out(value)
        return chosen.text_out(value).encode()
    except PgError:
        raise
    except (OverflowError, StructError) as exc:
        raise _out_of_range(value, oid) from exc
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise PgError(
            sqlstate.DATATYPE_MISMATCH,
            f"cannot encode {type(value).__name__} value as {type_name(oid)}: {exc}",
        ) from exc
