"""Wire-level pieces shared by the message codecs: structs, packers, a bounds-checked reader.

Internal to protocol/: frontend.py and backend.py build on these; users import protocol.messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from struct import Struct, error as StructError
from typing import ClassVar

from protocol.errors import ProtocolViolation

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
PROTOCOL_VERSION_3 = 196608  # 3 << 16
PROTOCOL_VERSION_3_2 = 196610

I8 = Struct("!b")
I16 = Struct("!h")
U16 = Struct("!H")
I32 = Struct("!i")
U32 = Struct("!I")
I32X2 = Struct("!ii")
FIELD = Struct("!IhIhih")  # RowDescription: table oid, attnum, type oid, size, typmod, format
NULL_LENGTH = I32.pack(-1)
MAX_SECRET = 256  # protocol 3.2 allows a cancel key of up to 256 bytes


# --- encoding helpers -------------------------------------------------------------------------


def pack_message(type_byte: bytes, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return type_byte + I32.pack(len(body) + 4) + body


def cstring_bytes(text: str) -> bytes:
    data = text.encode()
    if b"\0" in data:
        raise ValueError(f"string for the wire contains a NUL byte: {text!r}")
    return data + b"\0"


def pack_count(values: Sequence[object]) -> bytes:
    if len(values) > 0xFFFF:
        raise ValueError(f"too many items for an int16 count: {len(values)}")
    return U16.pack(len(values))


def pack_int16s(values: Sequence[int]) -> bytes:
    return pack_count(values) + b"".join(I16.pack(v) for v in values)


def pack_values(values: Sequence[bytes | None]) -> bytes:
    """Length-prefixed values, -1 for NULL (Bind parameters, DataRow columns)."""
    parts = []
    for value in values:
        if value is None:
            parts.append(NULL_LENGTH)
        else:
            parts.append(I32.pack(len(value)))
            parts.append(bytes(value))
    return b"".join(parts)


# --- decoding helper --------------------------------------------------------------------------


class Reader:
    """Bounds-checked reads over one message payload."""

    __slots__ = ("data", "pos")

    def __init__(self, payload: bytes | memoryview) -> None:
        self.data = bytes(payload)
        self.pos = 0

    def _unpack(self, st: Struct) -> int:
        try:
            value = st.unpack_from(self.data, self.pos)[0]
        except StructError:
            raise ProtocolViolation("message is truncated") from None
        self.pos += st.size
        return value

    def int8(self) -> int:
        return self._unpack(I8)

    def int16(self) -> int:
        return self._unpack(I16)

    def uint16(self) -> int:
        return self._unpack(U16)

    def int32(self) -> int:
        return self._unpack(I32)

    def uint32(self) -> int:
        return self._unpack(U32)

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if size < 0 or end > len(self.data):
            raise ProtocolViolation("message is truncated")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk

    def cstring(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolViolation("string in message is not NUL-terminated")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise ProtocolViolation("invalid UTF-8 in message string") from None

    def char(self) -> str:
        return chr(self.take(1)[0])

    def value(self) -> bytes | None:
        """One length-prefixed value; -1 is NULL."""
        size = self.int32()
        if size == -1:
            return None
        if size < 0:
            raise ProtocolViolation(f"invalid value length {size}")
        return self.take(size)

    def values(self, count: int) -> list[bytes | None]:
        return [self.value() for _ in range(count)]

    def int16s(self, count: int) -> list[int]:
        return [self.int16() for _ in range(count)]

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolViolation("message has trailing bytes")

    def at_end(self) -> bool:
        return self.pos >= len(self.data)


def expect_empty(payload: bytes | memoryview, name: str) -> None:
    if len(payload):
        raise ProtocolViolation(f"{name} message must have no payload")


def read_choice(reader: Reader, allowed: str, what: str) -> str:
    char = reader.char()
    if char not in allowed:
        raise ProtocolViolation(f"invalid {what} {char!r}")
    return char


class EmptyMessage:
    """Shared codec of the payload-less messages; each one's bytes are built once."""

    __slots__ = ()
    TYPE: ClassVar[bytes]
    _BYTES: ClassVar[bytes]

    def __init_subclass__(cls) -> None:
        cls._BYTES = pack_message(cls.TYPE)

    def encode(self) -> bytes:
        return self._BYTES

    @classmethod
    def decode(cls, payload: bytes | memoryview):
        expect_empty(payload, cls.__name__)
        return cls()
