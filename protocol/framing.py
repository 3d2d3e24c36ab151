"""Incremental framing of a PostgreSQL v3 byte stream into messages (sans-IO).

Feed bytes as they arrive, then call next_frame() until it returns None. Two wire shapes:
- startup phase: int32 length (counting itself) + payload, no type byte (StartupMessage,
  SSLRequest, GSSENCRequest, CancelRequest);
- typed phase: type byte + int32 length (counting itself, not the type byte) + payload.

The buffer is an immutable bytes object plus a read offset, so the memoryviews handed out in
Frame stay valid after later feeds, and a chunk that holds only whole messages is framed without
copying a byte.
"""

from __future__ import annotations

from collections.abc import Iterator
from struct import Struct
from typing import NamedTuple

from protocol.errors import ProtocolViolation

_I32 = Struct("!i")

# PostgreSQL's MAX_STARTUP_PACKET_LENGTH: a startup packet larger than this is an attack or junk.
MAX_STARTUP_SIZE = 10000
# A startup packet holds at least its own length and a 4-byte protocol code.
_MIN_STARTUP_LENGTH = 8
# PostgreSQL's PQ_LARGE_MESSAGE_LIMIT (MaxAllocSize - 1) and PQ_SMALL_MESSAGE_LIMIT: the largest
# length word (counting itself) its backend accepts for each frontend message type. Found by the
# live fuzz (tests/test_fuzz_protocol.py): PostgreSQL rejects an unknown type byte, or a Sync/
# Describe/... longer than 10000, as soon as the header arrives; waiting for the body hung instead.
MAX_LARGE_MESSAGE = 0x3FFFFFFE
MAX_SMALL_MESSAGE = 10000
FRONTEND_LIMITS = {
    **{ord(t): MAX_LARGE_MESSAGE for t in "QFBPd"},
    **{ord(t): MAX_SMALL_MESSAGE for t in "XCDEHScf"},
}


# Frontend messages that have no body (their length is always 4).
_BODILESS = frozenset(b"SHcX")


class Frame(NamedTuple):
    """One complete message: type byte (0 in the startup phase), payload and the raw bytes."""

    type: int
    payload: memoryview
    raw: memoryview


class Framer:
    """Splits a byte stream into Frames; raises ProtocolViolation on impossible lengths."""

    def __init__(
        self,
        startup: bool = False,
        max_message_size: int = MAX_LARGE_MESSAGE,
        max_startup_size: int = MAX_STARTUP_SIZE,
    ) -> None:
        self._typed = not startup
        # Optional {type byte: largest length}; when set, other type bytes are refused at once
        # (as PostgreSQL does with a client's messages after authentication: FRONTEND_LIMITS).
        self.type_limits: dict[int, int] | None = None
        self._max_message_size = max_message_size
        self._max_startup_size = max_startup_size
        self._buf = b""
        self._view = memoryview(self._buf)
        self._pos = 0
        # Chunks of a message still incomplete, joined once it is whole: feeding a large
        # message in many small pieces then costs one copy, not one per piece.
        self._chunks: list[bytes] = []
        self._chunks_len = 0
        self._need = 0

    @property
    def max_message_size(self) -> int:
        return self._max_message_size

    def whole_message_types(self, data: bytes) -> bytes | None:
        """The type bytes of the messages in `data` when nothing is buffered and `data` is exactly
        a run of complete typed messages that next_frame() would accept; else None (and nothing
        is consumed: feed() and next_frame() then take the data and say what is wrong).

        A relay that only needs each message's type can then forward the packet as it came,
        without a Frame, a slice or a copy per message. A Sync, Flush, CopyDone or Terminate with
        a body also gives None: such a message is malformed and gets an answer of its own."""
        limits = self.type_limits
        if not self._typed or limits is None or self._pos < len(self._buf) or self._chunks:
            return None
        n, pos, max_size = len(data), 0, self._max_message_size
        unpack = _I32.unpack_from
        kinds = bytearray()
        while pos < n:
            if n - pos < 5:
                return None
            t = data[pos]
            limit = limits.get(t)
            length = unpack(data, pos + 1)[0]
            if limit is None or length < 4 or length > limit or length > max_size:
                return None
            if length != 4 and t in _BODILESS:     # malformed: left to the caller's general path
                return None
            kinds.append(t)
            pos += 1 + length
        return bytes(kinds) if pos == n else None

    def set_typed(self) -> None:
        """Switch from startup packets to typed messages (after the StartupMessage)."""
        self._typed = True

    @property
    def typed(self) -> bool:
        return self._typed

    def buffered(self) -> int:
        """Bytes received but not yet returned in a Frame."""
        return len(self._buf) - self._pos + self._chunks_len

    def feed(self, data: bytes) -> None:
        """Add received bytes. A bytes object is kept as is (never copied) when possible."""
        if not data:
            return
        chunk = bytes(data)
        if self._pos >= len(self._buf) and not self._chunks:
            self._adopt(chunk)
            return
        self._chunks.append(chunk)
        self._chunks_len += len(chunk)
        if len(self._buf) - self._pos + self._chunks_len >= self._need:
            self._adopt(b"".join([self._view[self._pos :], *self._chunks]))
            self._chunks.clear()
            self._chunks_len = 0

    def next_frame(self) -> Frame | None:
        """The next complete message, or None until more bytes are fed."""
        if self._typed:
            return self._next_typed()
        return self._next_startup()

    def frames(self) -> Iterator[Frame]:
        """Every complete message buffered now."""
        while (frame := self.next_frame()) is not None:
            yield frame

    def _adopt(self, buf: bytes) -> None:
        self._buf = buf
        self._view = memoryview(buf)
        self._pos = 0

    def _next_typed(self) -> Frame | None:
        buf, pos = self._buf, self._pos
        limits = self.type_limits
        if limits is not None and len(buf) > pos and buf[pos] not in limits:
            raise ProtocolViolation(f"invalid frontend message type {buf[pos]}", severity="FATAL")
        if len(buf) - pos < 5:
            return self._wait(5)
        length = _I32.unpack_from(buf, pos + 1)[0]
        limit = self._max_message_size if limits is None else min(limits[buf[pos]], self._max_message_size)
        if length < 4 or length > limit:
            raise ProtocolViolation(
                f"invalid message length {length} for message type {buf[pos]!r}",
                severity="FATAL",
            )
        end = pos + 1 + length
        if end > len(buf):
            return self._wait(1 + length)
        self._pos = end
        self._need = 0
        view = self._view
        return Frame(buf[pos], view[pos + 5 : end], view[pos:end])

    def _next_startup(self) -> Frame | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 4:
            return self._wait(4)
        length = _I32.unpack_from(buf, pos)[0]
        if length < _MIN_STARTUP_LENGTH or length > self._max_startup_size:
            raise ProtocolViolation(f"invalid length of startup packet: {length}", severity="FATAL")
        end = pos + length
        if end > len(buf):
            return self._wait(length)
        self._pos = end
        self._need = 0
        view = self._view
        return Frame(0, view[pos + 4 : end], view[pos:end])

    def _wait(self, need: int) -> None:
        # Remember how many buffered bytes the next frame needs, so feed() can defer joining.
        self._need = need
        return None
