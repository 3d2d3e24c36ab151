"""Framer: the same frames come out however the stream is split (h11-style), lengths checked."""

import random

import pytest
from hypothesis import given, settings, strategies as st

from protocol import messages as m
from protocol.errors import ProtocolViolation
from protocol.framing import Frame, Framer

TYPED_STREAM = [
    m.Query("SELECT 1").encode(),
    m.Parse("s1", "SELECT $1::int", [23]).encode(),
    m.Bind("", "s1", [0], [b"42"], [1]).encode(),
    m.Sync().encode(),
    m.CopyData(b"x" * 300).encode(),
    m.Terminate().encode(),
]
STARTUP_STREAM = [
    m.SSLRequest().encode(),
    m.StartupMessage({"user": "alice", "database": "db"}).encode(),
]


def frames_of(framer: Framer) -> list[tuple[int, bytes, bytes]]:
    return [(f.type, bytes(f.payload), bytes(f.raw)) for f in framer.frames()]


def frame_in_chunks(stream: bytes, cuts: list[int], startup: bool = False) -> list[tuple]:
    framer = Framer(startup=startup)
    out = []
    previous = 0
    for cut in sorted(set(cuts)) + [len(stream)]:
        framer.feed(stream[previous:cut])
        previous = cut
        out.extend(frames_of(framer))
    assert framer.buffered() == 0
    return out


def expected_typed(messages: list[bytes]) -> list[tuple]:
    return [(raw[0], raw[5:], raw) for raw in messages]


def test_whole_stream():
    framer = Framer()
    framer.feed(b"".join(TYPED_STREAM))
    assert frames_of(framer) == expected_typed(TYPED_STREAM)
    assert framer.next_frame() is None
    assert framer.buffered() == 0


def test_one_byte_at_a_time():
    stream = b"".join(TYPED_STREAM)
    assert frame_in_chunks(stream, list(range(len(stream)))) == expected_typed(TYPED_STREAM)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, sum(map(len, TYPED_STREAM))), max_size=40))
def test_random_splits(cuts):
    stream = b"".join(TYPED_STREAM)
    assert frame_in_chunks(stream, cuts) == expected_typed(TYPED_STREAM)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, len(TYPED_STREAM[1]) - 1))
def test_trailing_partial_bytes_wait(extra):
    partial = TYPED_STREAM[1][:extra]
    framer = Framer()
    framer.feed(TYPED_STREAM[0] + partial)
    assert frames_of(framer) == expected_typed(TYPED_STREAM[:1])
    assert framer.next_frame() is None
    assert framer.buffered() == len(partial)
    framer.feed(TYPED_STREAM[1][extra:])
    assert frames_of(framer) == expected_typed(TYPED_STREAM[1:2])


def test_startup_packets_then_typed():
    stream = b"".join(STARTUP_STREAM)
    frames = frame_in_chunks(stream, list(range(len(stream))), startup=True)
    assert [(t, p) for t, p, _ in frames] == [(0, raw[4:]) for raw in STARTUP_STREAM]
    framer = Framer(startup=True)
    framer.feed(STARTUP_STREAM[1] + TYPED_STREAM[0])
    first = framer.next_frame()
    assert first.type == 0 and bytes(first.raw) == STARTUP_STREAM[1]
    framer.set_typed()
    assert framer.typed
    assert frames_of(framer) == expected_typed(TYPED_STREAM[:1])


def test_whole_messages_are_not_copied():
    stream = b"".join(TYPED_STREAM)
    framer = Framer()
    framer.feed(stream)
    for frame in framer.frames():
        assert frame.payload.obj is stream
        assert frame.raw.obj is stream


def test_frames_stay_valid_after_more_data():
    framer = Framer()
    framer.feed(TYPED_STREAM[0] + TYPED_STREAM[1][:3])
    first = framer.next_frame()
    framer.feed(TYPED_STREAM[1][3:])
    second = framer.next_frame()
    framer.feed(TYPED_STREAM[2])
    third = framer.next_frame()
    assert bytes(first.raw) == TYPED_STREAM[0]
    assert bytes(second.raw) == TYPED_STREAM[1]
    assert bytes(third.raw) == TYPED_STREAM[2]


def test_large_message_in_many_chunks():
    big = m.CopyData(bytes(random.Random(1).randbytes(200_000))).encode()
    framer = Framer()
    for i in range(0, len(big), 1000):
        framer.feed(big[i : i + 1000])
        if i + 1000 < len(big):
            assert framer.next_frame() is None
    frame = framer.next_frame()
    assert bytes(frame.raw) == big
    assert framer.buffered() == 0


def test_bytearray_input_is_snapshotted():
    data = bytearray(TYPED_STREAM[0])
    framer = Framer()
    framer.feed(data)
    data[5:] = b"X" * (len(data) - 5)
    assert bytes(framer.next_frame().raw) == TYPED_STREAM[0]


@pytest.mark.parametrize("length", [-1, 0, 3])
def test_typed_length_too_small(length):
    framer = Framer()
    framer.feed(b"Q" + length.to_bytes(4, "big", signed=True))
    with pytest.raises(ProtocolViolation) as err:
        framer.next_frame()
    assert err.value.sqlstate == "08P01"
    assert err.value.severity == "FATAL"


def test_typed_length_over_max():
    framer = Framer(max_message_size=100)
    framer.feed(b"d" + (101).to_bytes(4, "big"))
    with pytest.raises(ProtocolViolation):
        framer.next_frame()
    framer = Framer(max_message_size=100)
    framer.feed(m.CopyData(b"x" * 95).encode())
    assert framer.next_frame().type == ord("d")


@pytest.mark.parametrize("length", [0, 3, 7, 10001, 1 << 30])
def test_startup_length_limits(length):
    framer = Framer(startup=True)
    framer.feed(length.to_bytes(4, "big") + b"\0" * 8)
    with pytest.raises(ProtocolViolation):
        framer.next_frame()


def test_empty_feed_is_ignored():
    framer = Framer()
    framer.feed(b"")
    assert framer.next_frame() is None
    assert framer.buffered() == 0


def test_frame_is_a_named_tuple():
    framer = Framer()
    framer.feed(m.Sync().encode())
    frame = framer.next_frame()
    assert isinstance(frame, Frame)
    kind, payload, raw = frame
    assert (kind, bytes(payload), bytes(raw)) == (ord("S"), b"", b"S\0\0\0\x04")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_fuzz_framer_raises_only_protocol_violation(data, startup):
    framer = Framer(startup=startup, max_message_size=1 << 16)
    try:
        framer.feed(data)
        frames = list(framer.frames())
    except ProtocolViolation:
        return
    consumed = sum(len(f.raw) for f in frames)
    assert consumed + framer.buffered() == len(data)


# ---------------------------------------------------------------- whole_message_types (relay fast path)

def _frontend_framer(max_message_size: int | None = None) -> Framer:
    from protocol.framing import FRONTEND_LIMITS
    framer = Framer() if max_message_size is None else Framer(max_message_size=max_message_size)
    framer.type_limits = FRONTEND_LIMITS
    return framer


def test_whole_message_types_lists_the_types_of_a_complete_packet():
    framer = _frontend_framer()
    packet = b"".join(TYPED_STREAM)
    assert framer.whole_message_types(packet) == bytes(raw[0] for raw in TYPED_STREAM)
    assert framer.buffered() == 0                      # nothing consumed: a check only


@given(st.integers(min_value=1, max_value=len(b"".join(TYPED_STREAM)) - 1))
def test_whole_message_types_refuses_a_partial_packet(cut):
    packet = b"".join(TYPED_STREAM)
    boundaries = set()
    pos = 0
    for raw in TYPED_STREAM:
        pos += len(raw)
        boundaries.add(pos)
    result = _frontend_framer().whole_message_types(packet[:cut])
    if cut in boundaries:
        assert result is not None
    else:
        assert result is None


def test_whole_message_types_leaves_anything_the_framer_would_refuse_to_the_framer():
    framer = _frontend_framer(max_message_size=1000)
    sync = m.Sync().encode()
    assert framer.whole_message_types(b"Z" + sync[1:]) is None                     # not a frontend type
    assert framer.whole_message_types(b"S\x00\x00\x00\x03") is None                # length below 4
    assert framer.whole_message_types(m.CopyData(b"x" * 2000).encode()) is None    # over --max-message-mb
    assert framer.whole_message_types(b"H\x00\x00\x27\x20" + b"\x00" * 9996) is None  # Flush over its limit
    assert framer.whole_message_types(sync) == b"S"
    assert framer.whole_message_types(b"H\x00\x00\x00\x05~") is None                # a Flush with a body
    assert framer.whole_message_types(b"S\x00\x00\x00\x05~") is None                # a Sync with a body
    framer.feed(sync[:3])                                                         # something is buffered
    assert framer.whole_message_types(sync) is None
    assert Framer().whole_message_types(sync) is None                             # no type limits: startup/upstream side
