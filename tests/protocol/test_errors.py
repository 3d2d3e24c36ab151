"""PgError fields and encodings, ProtocolViolation, SQLSTATE names and class fallback."""

import re

import pytest

from protocol import messages as m
from protocol import sqlstate
from protocol.errors import PgError, ProtocolViolation, error_response, notice_response
from protocol.framing import Framer


def decode_one(encoded: bytes):
    framer = Framer()
    framer.feed(encoded)
    frame = framer.next_frame()
    assert framer.buffered() == 0
    return m.decode_backend(frame.type, frame.payload)


def test_fields_in_postgres_order_and_only_when_present():
    error = PgError(sqlstate.UNDEFINED_OBJECT, "model not found")
    assert error.fields() == {"S": "ERROR", "V": "ERROR", "C": "42704", "M": "model not found"}
    full = PgError("22023", "bad", detail="d", hint="h", severity="FATAL", position=7)
    assert full.fields() == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "22023",
        "M": "bad",
        "D": "d",
        "H": "h",
        "P": "7",
    }
    assert list(full.fields()) == ["S", "V", "C", "M", "D", "H", "P"]


def test_to_response_is_an_error_response():
    error = PgError(sqlstate.QUERY_CANCELED, "canceling statement due to user request", hint="h")
    assert decode_one(error.to_response()) == m.ErrorResponse(error.fields())


def test_from_fields_round_trip():
    error = PgError("23505", "duplicate key", detail="Key (id)=(1) exists.", position=12)
    again = PgError.from_fields(error.fields())
    assert again.fields() == error.fields()
    assert isinstance(again, Exception) and str(again) == "duplicate key"
    assert again.condition_name == "UNIQUE_VIOLATION"


def test_error_and_notice_helpers():
    assert decode_one(error_response("42601", "syntax error", hint="check it")) == m.ErrorResponse(
        {"S": "ERROR", "V": "ERROR", "C": "42601", "M": "syntax error", "H": "check it"}
    )
    assert decode_one(notice_response("model deployed")) == m.NoticeResponse(
        {"S": "NOTICE", "V": "NOTICE", "C": "00000", "M": "model deployed"}
    )


def test_nul_in_message_does_not_corrupt_the_stream():
    decoded = decode_one(error_response("XX000", "a\0b"))
    assert decoded.fields["M"] == "ab"


def test_protocol_violation():
    error = ProtocolViolation("invalid message length")
    assert isinstance(error, PgError)
    assert (error.sqlstate, error.severity) == ("08P01", "ERROR")
    assert ProtocolViolation("x", severity="FATAL").fields()["S"] == "FATAL"


@pytest.mark.parametrize(
    "name, code",
    [
        ("QUERY_CANCELED", "57014"),
        ("UNDEFINED_OBJECT", "42704"),
        ("PROTOCOL_VIOLATION", "08P01"),
        ("FEATURE_NOT_SUPPORTED", "0A000"),
        ("INVALID_TEXT_REPRESENTATION", "22P02"),
        ("UNIQUE_VIOLATION", "23505"),
        ("IN_FAILED_SQL_TRANSACTION", "25P02"),
        ("INVALID_PASSWORD", "28P01"),
        ("INVALID_CATALOG_NAME", "3D000"),
        ("SERIALIZATION_FAILURE", "40001"),
        ("UNDEFINED_FUNCTION", "42883"),
        ("OUT_OF_MEMORY", "53200"),
        ("PROGRAM_LIMIT_EXCEEDED", "54000"),
        ("OBJECT_IN_USE", "55006"),
        ("ADMIN_SHUTDOWN", "57P01"),
        ("SYSTEM_ERROR", "58000"),
        ("INTERNAL_ERROR", "XX000"),
        ("NULL_VALUE_NOT_ALLOWED", "22004"),
        ("E_R_I_E_NULL_VALUE_NOT_ALLOWED", "39004"),
    ],
)
def test_sqlstate_constants(name, code):
    assert getattr(sqlstate, name) == code
    assert sqlstate.name_of(code) == name


def test_every_code_is_unique_and_well_formed():
    constants = {k: v for k, v in vars(sqlstate).items() if k.isupper() and isinstance(v, str)}
    assert len(set(constants.values())) == len(constants)
    assert all(re.fullmatch("[0-9A-Z]{5}", code) for code in constants.values())
    assert len(constants) > 250


def test_name_of_falls_back_to_the_class():
    assert sqlstate.class_of("23505") == "23"
    assert sqlstate.name_of("23999") == "INTEGRITY_CONSTRAINT_VIOLATION"
    assert sqlstate.name_of("42ZZZ") == "SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION"
    assert sqlstate.name_of("ZZ999") is None


def test_is_error():
    assert not sqlstate.is_error("00000")
    assert not sqlstate.is_error("01000")
    assert sqlstate.is_error("42704")
