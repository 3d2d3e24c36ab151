"""Bound temporal predict inputs become the epochs PostgreSQL's extract(epoch from …) gives
(ml/temporal.py), from the binary and the text wire formats; bad text is 22007."""
import math
import struct

import pytest

from pgml_server.ml import temporal
from protocol.errors import PgError

T = "2024-01-02 03:04:05"


@pytest.mark.parametrize("subkind, text, seconds", [
    ("timestamptz", T + "+02", 1704157445.0),
    ("timestamptz", "2024-01-02T03:04:05Z", 1704164645.0),
    ("timestamptz", T + ".5-05:30", 1704164645.5 + 5.5 * 3600),
    ("timestamp", T, 1704164645.0),                       # read as UTC
    ("date", "2024-01-02", 1704153600.0),
    ("time", "03:04:05", 11045.0),
    ("timetz", "03:04:05+02", 11045.0 - 7200),
    ("interval", "1 day 02:00:00", 93600.0),
    ("interval", "1 year 2 mons 3 days 04:05:06", (365.25 + 60 + 3) * 86400 + 4 * 3600 + 5 * 60 + 6),
    ("interval", "-1 days +02:00:00", -79200.0),
    ("interval", "P1DT2H", 93600.0),
    ("interval", "3 days 2 hours", 266400.0),
    ("timestamptz", "infinity", math.inf),
    ("date", "-infinity", -math.inf),
])
def test_text(subkind, text, seconds):
    assert temporal.epoch_of_text(subkind, text) == pytest.approx(seconds)


def test_binary():
    micros = (1704157445 - 946684800) * 10**6
    assert temporal.epoch_of_wire(temporal.TIMESTAMPTZ, struct.pack("!q", micros), True) == 1704157445.0
    assert temporal.epoch_of_wire(temporal.DATE, struct.pack("!i", 8767), True) == 946684800.0 + 8767 * 86400
    assert temporal.epoch_of_wire(temporal.INTERVAL, struct.pack("!qii", 7200 * 10**6, 1, 14), True) == \
        7200 + 86400 + 365.25 * 86400 + 2 * 30 * 86400
    assert temporal.epoch_of_wire(temporal.TIMETZ, struct.pack("!qi", 3600 * 10**6, -7200), True) == 3600 - 7200
    assert temporal.epoch_of_wire(temporal.TIMESTAMP, struct.pack("!q", 2**63 - 1), True) == math.inf


@pytest.mark.parametrize("subkind, text", [("timestamptz", "yesterday-ish"), ("interval", "3 fortnights"),
                                           ("date", "2024-13-40")])
def test_bad_text_is_22007(subkind, text):
    with pytest.raises(PgError) as info:
        temporal.epoch_of_text(subkind, text)
    assert info.value.sqlstate == "22007" and subkind in info.value.message


def test_bad_binary_is_22p03():
    with pytest.raises(PgError) as info:
        temporal.epoch_of_wire(temporal.TIMESTAMPTZ, b"\x00\x01", True)
    assert info.value.sqlstate == "22P03"
