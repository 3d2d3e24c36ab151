"""Temporal predict inputs as seconds, exactly as PostgreSQL's extract(epoch from …) gives them.

The training rows arrive as epochs computed by the upstream; a value bound to a local predict call
arrives in the client's wire format instead: binary (int64 microseconds since 2000-01-01, int32
days, ...) or text in PostgreSQL's output style or ISO 8601 (psycopg, asyncpg, JDBC all send one
of those). Both become the same float: timestamptz absolute, timestamp and date read as UTC,
time as seconds since midnight (timetz in UTC), interval in total seconds with a year of 365.25
days and a month of 30 days (PostgreSQL's own rule for the epoch of an interval).
"""
from __future__ import annotations

import math
import re
import struct
from datetime import date, datetime, time, timedelta, timezone

from protocol import sqlstate
from protocol.errors import PgError

DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, TIMETZ = 1082, 1083, 1114, 1184, 1186, 1266
OIDS = frozenset({DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, TIMETZ})
_SUBKINDS = {DATE: "date", TIME: "time", TIMETZ: "timetz", TIMESTAMP: "timestamp",
             TIMESTAMPTZ: "timestamptz", INTERVAL: "interval"}

_PG_EPOCH = 946684800.0                 # 2000-01-01 00:00:00 UTC in Unix seconds
_DAY = 86400.0
_YEAR = 365.25 * _DAY
_MONTH = 30 * _DAY
_I64, _I32, _I64_I32, _I64_I32_I32 = (struct.Struct(f) for f in ("!q", "!i", "!qi", "!qii"))


def epoch_of_wire(oid: int, data: bytes, binary: bool) -> float:
    """A bound temporal parameter (binary or text wire format) as seconds."""
    if binary:
        return _binary(oid, bytes(data))
    return epoch_of_text(_SUBKINDS[oid], bytes(data).decode())


def _binary(oid: int, data: bytes) -> float:
    try:
        if oid in (TIMESTAMP, TIMESTAMPTZ):
            return _finite(_I64.unpack(data)[0], 1e-6) + _PG_EPOCH
        if oid == DATE:
            return _finite(_I32.unpack(data)[0], _DAY, bound=2**31 - 1) + _PG_EPOCH
        if oid == TIME:
            return _I64.unpack(data)[0] / 1e6
        if oid == TIMETZ:
            micros, zone = _I64_I32.unpack(data)        # zone: seconds WEST of UTC
            return micros / 1e6 + zone
        micros, days, months = _I64_I32_I32.unpack(data)
        years, months = divmod(months, 12) if months >= 0 else (-((-months) // 12), -((-months) % 12))
        return micros / 1e6 + days * _DAY + years * _YEAR + months * _MONTH
    except struct.error:
        raise PgError(sqlstate.INVALID_BINARY_REPRESENTATION,
                      f"incorrect binary data format for a {_SUBKINDS[oid]} parameter") from None


def _finite(value: int, unit: float, bound: int = 2**63 - 1) -> float:
    if value >= bound:
        return math.inf
    if value <= -bound - 1:
        return -math.inf
    return value * unit


_ZONE = re.compile(r"(?:\s*(Z|UTC|[+-]\d{1,2}(?::?\d{2}(?::?\d{2})?)?))$", re.IGNORECASE)


def epoch_of_text(subkind: str, text: str) -> float:
    """PostgreSQL's text output (or ISO 8601) of a date, time or interval as seconds."""
    value = text.strip()
    low = value.lower()
    if low in ("infinity", "+infinity"):
        return math.inf
    if low == "-infinity":
        return -math.inf
    try:
        if subkind == "interval":
            return _interval(value)
        if subkind in ("time", "timetz"):
            clock, offset = _split_zone(value)
            return _seconds_of_day(time.fromisoformat(clock)) + (-offset if offset is not None else 0.0)
        if subkind == "date" and len(value) <= 10:
            return (date.fromisoformat(value) - date(1970, 1, 1)).days * _DAY
        stamp, offset = _split_zone(value.replace("T", " ", 1))
        moment = datetime.fromisoformat(stamp)
        if offset is not None:
            moment = moment.replace(tzinfo=timezone(timedelta(seconds=offset)))
        elif moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)       # timestamp without time zone: read as UTC
        return moment.timestamp()
    except ValueError:
        raise PgError(sqlstate.INVALID_DATETIME_FORMAT,
                      f'invalid input syntax for a {subkind} input: "{text[:80]}"',
                      hint=f"Give it as PostgreSQL prints a {subkind}, or cast it in SQL: $n::{subkind}.") from None


def _split_zone(value: str) -> tuple[str, float | None]:
    """('2024-01-02 03:04:05', +7200.0) from '2024-01-02 03:04:05+02'; offset None when there is none."""
    found = _ZONE.search(value)
    if not found or (found.group(1)[0] in "+-" and value[:found.start()].count("-") < 2 and ":" not in value):
        return value, None
    zone = found.group(1).upper()
    head = value[:found.start()].strip()
    if zone in ("Z", "UTC"):
        return head, 0.0
    sign = -1.0 if zone[0] == "-" else 1.0
    digits = zone[1:].replace(":", "")
    hours, minutes, seconds = int(digits[:2] if len(digits) > 2 else digits), int(digits[2:4] or 0), \
        int(digits[4:6] or 0)
    if len(digits) <= 2:
        minutes = seconds = 0
    return head, sign * (hours * 3600 + minutes * 60 + seconds)


def _seconds_of_day(t: time) -> float:
    return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6


_UNITS = {"year": _YEAR, "yr": _YEAR, "mon": _MONTH, "month": _MONTH, "week": 7 * _DAY, "day": _DAY,
          "hour": 3600.0, "hr": 3600.0, "min": 60.0, "minute": 60.0, "sec": 1.0, "second": 1.0,
          "millisecond": 1e-3, "msec": 1e-3, "microsecond": 1e-6, "usec": 1e-6}
_TOKEN = re.compile(r"([+-]?\d+(?:\.\d+)?)\s*([a-z]+)")
_CLOCK = re.compile(r"([+-])?(\d+):(\d{2})(?::(\d{2}(?:\.\d+)?))?")
_ISO = re.compile(r"P(?:(?P<Y>[\d.]+)Y)?(?:(?P<M>[\d.]+)M)?(?:(?P<W>[\d.]+)W)?(?:(?P<D>[\d.]+)D)?"
                  r"(?:T(?:(?P<h>[\d.]+)H)?(?:(?P<m>[\d.]+)M)?(?:(?P<s>[\d.]+)S)?)?$")


def _interval(value: str) -> float:
    """PostgreSQL's interval output ('1 year 2 mons 3 days 04:05:06', '-1 days +02:00:00'),
    unit words ('3 days 2 hours', 'N day N second'), or ISO 8601 ('P1DT2H')."""
    iso = _ISO.match(value.upper())
    if iso and value.upper() != "P":
        parts = {k: float(v) for k, v in iso.groupdict().items() if v}
        return (parts.get("Y", 0) * _YEAR + parts.get("M", 0) * _MONTH + parts.get("W", 0) * 7 * _DAY
                + parts.get("D", 0) * _DAY + parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0))
    text = value.lower().replace(",", " ")
    total, used = 0.0, 0
    ago = text.endswith(" ago")
    if ago:
        text = text[:-4]
    clock = _CLOCK.search(text)
    if clock:
        sign = -1.0 if clock.group(1) == "-" else 1.0
        total += sign * (int(clock.group(2)) * 3600 + int(clock.group(3)) * 60 + float(clock.group(4) or 0))
        text = text[:clock.start()] + text[clock.end():]
        used += 1
    for number, unit in _TOKEN.findall(text):
        base = unit[:-1] if unit.endswith("s") and unit[:-1] in _UNITS else unit
        if base not in _UNITS:
            raise ValueError(unit)
        total += float(number) * _UNITS[base]
        used += 1
    if not used:
        total = float(text)            # a bare number of seconds
    return -total if ago else total
