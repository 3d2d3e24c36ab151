"""Messages: encode -> frame -> decode round trips, PostgreSQL byte layouts, malformed input."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from protocol import messages as m
from protocol.errors import ProtocolViolation
from protocol.framing import Framer

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=30)
int16 = st.integers(-(1 << 15), (1 << 15) - 1)
int32 = st.integers(-(1 << 31), (1 << 31) - 1)
uint32 = st.integers(0, (1 << 32) - 1)
values = st.lists(st.none() | st.binary(max_size=20), max_size=8)
formats = st.lists(st.sampled_from([0, 1]), max_size=8)
kind = st.sampled_from("SP")
secret = st.binary(min_size=4, max_size=256)


@st.composite
def binds(draw):
    params = draw(values)
    param_formats = draw(st.sampled_from([[], [draw(st.sampled_from([0, 1]))], [0] * len(params)]))
    return m.Bind(draw(text), draw(text), param_formats, params, draw(formats))


field_descriptions = st.builds(
    m.FieldDescription, text, uint32, int16, uint32, int16, int32, st.sampled_from([0, 1])
)
error_fields = st.dictionaries(st.sampled_from("SVCMDHPWsqtcdnFLR"), text, max_size=8)

STARTUP = [
    st.builds(
        m.StartupMessage,
        st.dictionaries(text.filter(bool), text, max_size=5),
        st.sampled_from([m.PROTOCOL_VERSION_3, m.PROTOCOL_VERSION_3_2]),
    ),
    st.just(m.SSLRequest()),
    st.just(m.GSSENCRequest()),
    st.builds(m.CancelRequest, int32, secret),
]
FRONTEND = [
    st.builds(m.PasswordMessage, st.binary(max_size=40)),
    st.builds(m.Query, text),
    st.builds(m.Parse, text, text, st.lists(uint32, max_size=8)),
    binds(),
    st.builds(m.Describe, kind, text),
    st.builds(m.Execute, text, int32),
    st.just(m.Sync()),
    st.just(m.Flush()),
    st.builds(m.Close, kind, text),
    st.just(m.Terminate()),
    st.builds(m.CopyData, st.binary(max_size=50)),
    st.just(m.CopyDone()),
    st.builds(m.CopyFail, text),
    st.builds(m.FunctionCall, uint32, formats, values, st.sampled_from([0, 1])),
]
BACKEND = [
    st.just(m.AuthenticationOk()),
    st.just(m.AuthenticationCleartextPassword()),
    st.builds(m.AuthenticationMD5Password, st.binary(min_size=4, max_size=4)),
    st.builds(m.AuthenticationSASL, st.lists(text.filter(bool), max_size=3)),
    st.builds(m.AuthenticationSASLContinue, st.binary(max_size=40)),
    st.builds(m.AuthenticationSASLFinal, st.binary(max_size=40)),
    st.builds(m.ParameterStatus, text, text),
    st.builds(m.BackendKeyData, int32, secret),
    st.builds(m.ReadyForQuery, st.sampled_from("ITE")),
    st.builds(m.RowDescription, st.lists(field_descriptions, max_size=5)),
    st.builds(m.DataRow, values),
    st.builds(m.CommandComplete, text),
    st.just(m.EmptyQueryResponse()),
    st.builds(m.ErrorResponse, error_fields),
    st.builds(m.NoticeResponse, error_fields),
    st.builds(m.NotificationResponse, int32, text, text),
    st.just(m.ParseComplete()),
    st.just(m.BindComplete()),
    st.just(m.CloseComplete()),
    st.builds(m.ParameterDescription, st.lists(uint32, max_size=8)),
    st.just(m.NoData()),
    st.just(m.PortalSuspended()),
    st.builds(m.CopyInResponse, st.sampled_from([0, 1]), formats),
    st.builds(m.CopyOutResponse, st.sampled_from([0, 1]), formats),
    st.builds(m.CopyBothResponse, st.sampled_from([0, 1]), formats),
    st.builds(m.CopyData, st.binary(max_size=50)),
    st.just(m.CopyDone()),
    st.builds(m.NegotiateProtocolVersion, int32, st.lists(text, max_size=3)),
    st.builds(m.FunctionCallResponse, st.none() | st.binary(max_size=30)),
]


def only_frame(encoded: bytes, startup: bool = False):
    framer = Framer(startup=startup)
    framer.feed(encoded)
    frames = list(framer.frames())
    assert len(frames) == 1 and framer.buffered() == 0
    return frames[0]


@settings(max_examples=40, deadline=None)
@given(st.one_of(STARTUP))
def test_startup_round_trip(message):
    frame = only_frame(message.encode(), startup=True)
    assert m.decode_startup_packet(frame.payload) == message


@settings(max_examples=400, deadline=None)
@given(st.one_of(FRONTEND))
def test_frontend_round_trip(message):
    frame = only_frame(message.encode())
    assert m.decode_frontend(frame.type, frame.payload) == message


@settings(max_examples=600, deadline=None)
@given(st.one_of(BACKEND))
def test_backend_round_trip(message):
    frame = only_frame(message.encode())
    assert m.decode_backend(frame.type, frame.payload) == message


@settings(max_examples=50, deadline=None)
@given(text, st.none() | st.binary(max_size=40), st.binary(max_size=40))
def test_sasl_responses_round_trip(mechanism, initial, response):
    first = m.SASLInitialResponse(mechanism, initial)
    frame = only_frame(first.encode())
    assert frame.type == ord("p")
    assert m.SASLInitialResponse.decode(frame.payload) == first
    second = m.SASLResponse(response)
    assert m.SASLResponse.decode(only_frame(second.encode()).payload) == second
    # decode_frontend cannot tell the 'p' kinds apart; it keeps the raw payload.
    assert m.decode_frontend(ord("p"), frame.payload) == m.PasswordMessage(bytes(frame.payload))


@settings(max_examples=100, deadline=None)
@given(values)
def test_data_row_helper_matches_dataclass(row):
    assert m.data_row(row) == m.DataRow(row).encode()
    assert m.data_row(tuple(row)) == m.data_row(row)


# --- golden bytes: layouts as PostgreSQL puts them on the wire -------------------------------


def test_golden_ssl_request():
    assert m.SSLRequest().encode() == bytes.fromhex("00000008 04d2162f")


def test_golden_startup_message():
    expected = b"\x00\x00\x00\x17\x00\x03\x00\x00user\x00postgres\x00\x00"
    assert m.StartupMessage({"user": "postgres"}).encode() == expected


def test_golden_cancel_request():
    expected = bytes.fromhex("00000010 04d2162e 00003039 deadbeef")
    assert m.CancelRequest(12345, bytes.fromhex("deadbeef")).encode() == expected


def test_golden_query_and_simple_responses():
    assert m.Query("SELECT 1").encode() == b"Q\x00\x00\x00\x0dSELECT 1\x00"
    assert m.AuthenticationOk().encode() == b"R\x00\x00\x00\x08\x00\x00\x00\x00"
    assert m.ready_for_query("I") == b"Z\x00\x00\x00\x05I"
    assert m.command_complete("SELECT 1") == b"C\x00\x00\x00\x0dSELECT 1\x00"
    assert m.ParseComplete().encode() == b"1\x00\x00\x00\x04"
    assert m.data_row([b"1", None]) == b"D\x00\x00\x00\x0f\x00\x02\x00\x00\x00\x011\xff\xff\xff\xff"


def test_golden_row_description_of_select_1():
    field = m.FieldDescription.for_type("?column?", 23)
    expected = b"T\x00\x00\x00\x21\x00\x01?column?\x00" + bytes.fromhex(
        "00000000 0000 00000017 0004 ffffffff 0000"
    )
    assert m.RowDescription([field]).encode() == expected


def test_golden_error_response():
    encoded = m.ErrorResponse({"S": "ERROR", "C": "42601", "M": "syntax error"}).encode()
    body = b"SERROR\x00C42601\x00Msyntax error\x00\x00"
    assert encoded == b"E" + struct.pack("!i", len(body) + 4) + body


def test_golden_parse_and_bind():
    parse = m.Parse("", "SELECT $1", [23]).encode()
    assert parse == b"P\x00\x00\x00\x15\x00SELECT $1\x00\x00\x01\x00\x00\x00\x17"
    bind = m.Bind("", "", [1], [b"\x00\x00\x00\x2a", None], [1]).encode()
    body = (
        b"\x00\x00"
        + b"\x00\x01\x00\x01"
        + b"\x00\x02"
        + b"\x00\x00\x00\x04\x00\x00\x00\x2a"
        + b"\xff\xff\xff\xff"
        + b"\x00\x01\x00\x01"
    )
    assert bind == b"B" + struct.pack("!i", len(body) + 4) + body


def test_golden_authentication_sasl():
    encoded = m.AuthenticationSASL(["SCRAM-SHA-256"]).encode()
    assert encoded == b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00"


def test_password_message_helpers():
    message = m.PasswordMessage.cleartext("s3cret")
    assert message.data == b"s3cret\x00"
    assert message.password == "s3cret"


def test_bind_param_format_rules():
    assert m.Bind("", "", [], [b"1", b"2"]).param_format(1) == 0
    assert m.Bind("", "", [1], [b"1", b"2"]).param_format(1) == 1
    assert m.Bind("", "", [0, 1], [b"1", b"2"]).param_format(1) == 1


def test_field_description_defaults_describe_text():
    field = m.FieldDescription("name")
    assert (field.type_oid, field.type_size, field.type_mod, field.format) == (25, -1, -1, 0)


# --- malformed input -------------------------------------------------------------------------

MALFORMED = [
    (m.decode_frontend, "Q", b"SELECT 1"),  # no NUL terminator
    (m.decode_frontend, "Q", b"SELECT 1\x00junk"),  # trailing bytes
    (m.decode_frontend, "P", b"s\x00q\x00\x00\x02\x00\x00\x00\x17"),  # 2 oids promised, 1 sent
    (m.decode_frontend, "B", b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x05ab"),  # value truncated
    (m.decode_frontend, "B", b"\x00\x00\x00\x02\x00\x00\x00\x00\x00\x01\xff\xff\xff\xff\x00\x00"),
    (m.decode_frontend, "B", b"\x00\x00\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00"),  # length -2
    (m.decode_frontend, "D", b"X\x00"),  # bad describe kind
    (m.decode_frontend, "E", b"\x00\x00\x00"),  # max_rows truncated
    (m.decode_frontend, "S", b"\x00"),  # Sync has no payload
    (m.decode_frontend, "Z", b""),  # not a frontend type
    (m.decode_frontend, "Q", b"\xff\xfe\x00"),  # invalid UTF-8
    (m.decode_backend, "Z", b"X"),
    (m.decode_backend, "Z", b""),
    (m.decode_backend, "T", b"\x00\x01name\x00\x00\x00"),
    (m.decode_backend, "D", b"\x00\x02\x00\x00\x00\x01a"),
    (m.decode_backend, "R", b"\x00\x00\x00\x05ab"),  # md5 salt truncated
    (m.decode_backend, "R", b"\x00\x00\x00\x63"),  # unknown auth request
    (m.decode_backend, "R", b"\x00\x00\x00\x0aSCRAM"),  # mechanism list unterminated
    (m.decode_backend, "E", b"SERROR\x00"),  # fields not terminated
    (m.decode_backend, "K", b"\x00\x00\x00\x01ab"),  # cancel key too short
    (m.decode_backend, "v", b"\x00\x00\x00\x00\x7f\xff\xff\xff"),  # huge option count
    (m.decode_backend, "v", b"\x00\x00\x00\x00\xff\xff\xff\xff"),  # negative option count
]


@pytest.mark.parametrize("decoder, kind, payload", MALFORMED)
def test_malformed_payloads_raise_protocol_violation(decoder, kind, payload):
    with pytest.raises(ProtocolViolation) as err:
        decoder(ord(kind), payload)
    assert err.value.sqlstate == "08P01"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00\x03",
        b"\x00\x02\x00\x00user\x00x\x00\x00",  # protocol 2
        b"\x00\x03\x00\x00user\x00x\x00",  # missing final NUL
        b"\x00\x03\x00\x00user\x00",  # key without value
        b"\x04\xd2\x16\x2f\x00",  # SSLRequest with extra byte
        b"\x04\xd2\x16\x2e\x00\x00\x00\x01\x00",  # cancel key too short
    ],
)
def test_malformed_startup_packets(payload):
    with pytest.raises(ProtocolViolation):
        m.decode_startup_packet(payload)


def test_encoding_rejects_nul_in_strings():
    with pytest.raises(ValueError):
        m.Query("SELECT '\0'").encode()


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=60))
def test_fuzz_decoders_raise_only_protocol_violation(kind, payload):
    for decoder in (m.decode_frontend, m.decode_backend):
        try:
            decoder(kind, payload)
        except ProtocolViolation:
            pass
    try:
        m.decode_startup_packet(payload)
    except ProtocolViolation:
        pass


@settings(max_examples=300, deadline=None)
@given(st.one_of(BACKEND + FRONTEND), st.data())
def test_fuzz_mutated_messages(message, data):
    payload = bytearray(message.encode()[5:])
    if payload:
        cut = data.draw(st.integers(0, len(payload)))
        flips = data.draw(
            st.lists(st.tuples(st.integers(0, len(payload) - 1), st.integers(0, 255)))
        )
        for index, byte in flips:
            payload[index] = byte
        payload = payload[:cut]
    for decoder in (m.decode_frontend, m.decode_backend):
        try:
            decoder(ord(message.TYPE), bytes(payload))
        except ProtocolViolation:
            pass
