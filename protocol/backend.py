"""Messages a server sends, and the hot-path encoders for locally answered results.

data_row(), command_complete() and ready_for_query() skip the dataclasses and build bytes with
one join: they run once per row or statement answered by this server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from struct import error as StructError
from typing import ClassVar

from protocol import types
from protocol.errors import ProtocolViolation, encode_fields
from protocol.frontend import CopyData, CopyDone
from protocol.wire import (
    EmptyMessage,
    FIELD,
    I32,
    I8,
    MAX_SECRET,
    NULL_LENGTH,
    Reader,
    U16,
    U32,
    cstring_bytes,
    pack_count,
    pack_int16s,
    pack_message,
    pack_values,
    read_choice,
)

# --- backend messages -------------------------------------------------------------------------

_AUTH_OK = 0
_AUTH_CLEARTEXT = 3
_AUTH_MD5 = 5
_AUTH_SASL = 10
_AUTH_SASL_CONTINUE = 11
_AUTH_SASL_FINAL = 12


def _auth(code: int, *parts: bytes) -> bytes:
    return pack_message(b"R", I32.pack(code), *parts)


@dataclass(frozen=True, slots=True)
class AuthenticationOk:
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = _AUTH_OK

    def encode(self) -> bytes:
        return _auth(self.CODE)

    @classmethod
    def decode(cls, reader: Reader) -> AuthenticationOk:
        return cls()


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword:
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = _AUTH_CLEARTEXT

    def encode(self) -> bytes:
        return _auth(self.CODE)

    @classmethod
    def decode(cls, reader: Reader) -> AuthenticationCleartextPassword:
        return cls()


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password:
    salt: bytes
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = _AUTH_MD5

    def encode(self) -> bytes:
        if len(self.salt) != 4:
            raise ValueError("MD5 salt must be 4 bytes")
        return _auth(self.CODE, self.salt)

    @classmethod
    def decode(cls, reader: Reader) -> AuthenticationMD5Password:
        return cls(reader.take(4))


@dataclass(frozen=True, slots=True)
class AuthenticationSASL:
    mechanisms: list[str]
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = _AUTH_SASL

    def encode(self) -> bytes:
        return _auth(self.CODE, *(cstring_bytes(m) for m in self.mechanisms), b"\0")

    @classmethod
    def decode(cls, reader: Reader) -> AuthenticationSASL:
        mechanisms = []
        while mechanism := reader.cstring():
            mechanisms.append(mechanism)
        return cls(mechanisms)


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue:
    data: bytes
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = _AUTH_SASL_CONTINUE

    def encode(self) -> bytes:
        return _auth(self.CODE, self.data)

    @classmethod
    def decode(cls, reader: Reader) -> AuthenticationSASLContinue:
        return cls(reader.rest())


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal:
    data: bytes
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = _AUTH_SASL_FINAL

    def encode(self) -> bytes:
        return _auth(self.CODE, self.data)

    @classmethod
    def decode(cls, reader: Reader) -> AuthenticationSASLFinal:
        return cls(reader.rest())


_AUTHENTICATIONS = {
    cls.CODE: cls
    for cls in (
        AuthenticationOk,
        AuthenticationCleartextPassword,
        AuthenticationMD5Password,
        AuthenticationSASL,
        AuthenticationSASLContinue,
        AuthenticationSASLFinal,
    )
}


def decode_authentication(payload: bytes | memoryview):
    """Decode an 'R' message into the Authentication* class its request code names."""
    reader = Reader(payload)
    code = reader.int32()
    cls = _AUTHENTICATIONS.get(code)
    if cls is None:
        raise ProtocolViolation(f"unsupported authentication request {code}")
    message = cls.decode(reader)
    reader.end()
    return message


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse(EmptyMessage):
    TYPE: ClassVar[bytes] = b"I"


@dataclass(frozen=True, slots=True)
class ParseComplete(EmptyMessage):
    TYPE: ClassVar[bytes] = b"1"


@dataclass(frozen=True, slots=True)
class BindComplete(EmptyMessage):
    TYPE: ClassVar[bytes] = b"2"


@dataclass(frozen=True, slots=True)
class CloseComplete(EmptyMessage):
    TYPE: ClassVar[bytes] = b"3"


@dataclass(frozen=True, slots=True)
class NoData(EmptyMessage):
    TYPE: ClassVar[bytes] = b"n"


@dataclass(frozen=True, slots=True)
class PortalSuspended(EmptyMessage):
    TYPE: ClassVar[bytes] = b"s"


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    name: str
    value: str
    TYPE: ClassVar[bytes] = b"S"

    def encode(self) -> bytes:
        return pack_message(b"S", cstring_bytes(self.name), cstring_bytes(self.value))

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> ParameterStatus:
        reader = Reader(payload)
        name, value = reader.cstring(), reader.cstring()
        reader.end()
        return cls(name, value)


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    pid: int
    secret: bytes
    TYPE: ClassVar[bytes] = b"K"

    def encode(self) -> bytes:
        return pack_message(b"K", I32.pack(self.pid), self.secret)

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> BackendKeyData:
        reader = Reader(payload)
        pid = reader.int32()
        secret = reader.rest()
        if not 4 <= len(secret) <= MAX_SECRET:
            raise ProtocolViolation(f"invalid cancel key length {len(secret)}")
        return cls(pid, secret)


_READY = {status: pack_message(b"Z", status.encode()) for status in "ITE"}


def ready_for_query(status: str) -> bytes:
    """Encoded ReadyForQuery: 'I' idle, 'T' in a transaction, 'E' in a failed transaction."""
    return _READY[status]


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    status: str  # 'I' | 'T' | 'E'
    TYPE: ClassVar[bytes] = b"Z"

    def encode(self) -> bytes:
        return _READY[self.status]

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> ReadyForQuery:
        reader = Reader(payload)
        status = read_choice(reader, "ITE", "transaction status")
        reader.end()
        return cls(status)


@dataclass(frozen=True, slots=True)
class FieldDescription:
    """One RowDescription column, fields in wire order. The defaults describe a text column."""

    name: str
    table_oid: int = 0
    column_attr: int = 0
    type_oid: int = types.TEXT
    type_size: int = -1
    type_mod: int = -1
    format: int = 0

    @classmethod
    def for_type(cls, name: str, type_oid: int, format: int = 0) -> FieldDescription:
        """A computed column of type ``type_oid`` (no source table), with the type's size."""
        return cls(name, type_oid=type_oid, type_size=types.type_size(type_oid), format=format)

    def encode(self) -> bytes:
        return cstring_bytes(self.name) + FIELD.pack(
            self.table_oid,
            self.column_attr,
            self.type_oid,
            self.type_size,
            self.type_mod,
            self.format,
        )

    @classmethod
    def read(cls, reader: Reader) -> FieldDescription:
        name = reader.cstring()
        return cls(name, *FIELD.unpack(reader.take(FIELD.size)))


@dataclass(frozen=True, slots=True)
class RowDescription:
    fields: list[FieldDescription]
    TYPE: ClassVar[bytes] = b"T"

    def encode(self) -> bytes:
        return pack_message(b"T", pack_count(self.fields), *(f.encode() for f in self.fields))

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> RowDescription:
        reader = Reader(payload)
        fields = [FieldDescription.read(reader) for _ in range(reader.uint16())]
        reader.end()
        return cls(fields)


def data_row(values: Sequence[bytes | None]) -> bytes:
    """Encoded DataRow. Built in one join: this runs once per row sent to a client."""
    parts: list[bytes] = [b"D", b"", U16.pack(len(values))]
    size = 6  # length word + column count
    pack = I32.pack
    for value in values:
        if value is None:
            parts.append(NULL_LENGTH)
            size += 4
        else:
            parts.append(pack(len(value)))
            parts.append(value)
            size += 4 + len(value)
    parts[1] = pack(size)
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class DataRow:
    values: list[bytes | None]
    TYPE: ClassVar[bytes] = b"D"

    def encode(self) -> bytes:
        return data_row(self.values)

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> DataRow:
        # Inlined rather than via Reader: relayed result sets decode one of these per row.
        data = bytes(payload)
        try:
            (count,) = U16.unpack_from(data, 0)
            pos, values = 2, []
            for _ in range(count):
                (size,) = I32.unpack_from(data, pos)
                pos += 4
                if size < 0:
                    if size != -1:
                        raise ProtocolViolation(f"invalid value length {size}")
                    values.append(None)
                    continue
                if pos + size > len(data):
                    raise ProtocolViolation("message is truncated")
                values.append(data[pos : pos + size])
                pos += size
        except StructError:
            raise ProtocolViolation("message is truncated") from None
        if pos != len(data):
            raise ProtocolViolation("message has trailing bytes")
        return cls(values)


@lru_cache(maxsize=512)
def command_complete(tag: str) -> bytes:
    """Encoded CommandComplete; cached because the same few tags ("SELECT 1") repeat."""
    return pack_message(b"C", cstring_bytes(tag))


@dataclass(frozen=True, slots=True)
class CommandComplete:
    tag: str
    TYPE: ClassVar[bytes] = b"C"

    def encode(self) -> bytes:
        return command_complete(self.tag)

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> CommandComplete:
        reader = Reader(payload)
        tag = reader.cstring()
        reader.end()
        return cls(tag)


def _read_fields(payload: bytes | memoryview) -> dict[str, str]:
    reader = Reader(payload)
    fields = {}
    while (code := reader.take(1)) != b"\0":
        fields[chr(code[0])] = reader.cstring()
    reader.end()
    return fields


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    fields: dict[str, str]
    TYPE: ClassVar[bytes] = b"E"

    def encode(self) -> bytes:
        return encode_fields(b"E", self.fields)

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> ErrorResponse:
        return cls(_read_fields(payload))


@dataclass(frozen=True, slots=True)
class NoticeResponse:
    fields: dict[str, str]
    TYPE: ClassVar[bytes] = b"N"

    def encode(self) -> bytes:
        return encode_fields(b"N", self.fields)

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> NoticeResponse:
        return cls(_read_fields(payload))


@dataclass(frozen=True, slots=True)
class NotificationResponse:
    pid: int
    channel: str
    payload: str
    TYPE: ClassVar[bytes] = b"A"

    def encode(self) -> bytes:
        return pack_message(
            b"A", I32.pack(self.pid), cstring_bytes(self.channel), cstring_bytes(self.payload)
        )

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> NotificationResponse:
        reader = Reader(payload)
        pid, channel, text = reader.int32(), reader.cstring(), reader.cstring()
        reader.end()
        return cls(pid, channel, text)


@dataclass(frozen=True, slots=True)
class ParameterDescription:
    oids: list[int]
    TYPE: ClassVar[bytes] = b"t"

    def encode(self) -> bytes:
        return pack_message(b"t", pack_count(self.oids), *(U32.pack(oid) for oid in self.oids))

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> ParameterDescription:
        reader = Reader(payload)
        oids = [reader.uint32() for _ in range(reader.uint16())]
        reader.end()
        return cls(oids)


class _CopyResponse:
    """Shared codec of CopyIn/CopyOut/CopyBothResponse: overall format and per-column formats."""

    __slots__ = ()

    def encode(self) -> bytes:
        return pack_message(self.TYPE, I8.pack(self.format), pack_int16s(self.column_formats))

    @classmethod
    def decode(cls, payload: bytes | memoryview):
        reader = Reader(payload)
        overall = reader.int8()
        formats = reader.int16s(reader.uint16())
        reader.end()
        return cls(overall, formats)


@dataclass(frozen=True, slots=True)
class CopyInResponse(_CopyResponse):
    format: int
    column_formats: list[int]
    TYPE: ClassVar[bytes] = b"G"


@dataclass(frozen=True, slots=True)
class CopyOutResponse(_CopyResponse):
    format: int
    column_formats: list[int]
    TYPE: ClassVar[bytes] = b"H"


@dataclass(frozen=True, slots=True)
class CopyBothResponse(_CopyResponse):
    format: int
    column_formats: list[int]
    TYPE: ClassVar[bytes] = b"W"


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    newest_minor: int
    unrecognized_options: list[str] = field(default_factory=list)
    TYPE: ClassVar[bytes] = b"v"

    def encode(self) -> bytes:
        options = self.unrecognized_options
        return pack_message(
            b"v",
            I32.pack(self.newest_minor),
            I32.pack(len(options)),
            *(cstring_bytes(o) for o in options),
        )

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> NegotiateProtocolVersion:
        reader = Reader(payload)
        newest_minor, count = reader.int32(), reader.int32()
        if count < 0:
            raise ProtocolViolation(f"invalid option count {count}")
        options = [reader.cstring() for _ in range(min(count, len(reader.data)))]
        if len(options) != count:
            raise ProtocolViolation("message is truncated")
        reader.end()
        return cls(newest_minor, options)


@dataclass(frozen=True, slots=True)
class FunctionCallResponse:
    value: bytes | None
    TYPE: ClassVar[bytes] = b"V"

    def encode(self) -> bytes:
        return pack_message(b"V", pack_values([self.value]))

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> FunctionCallResponse:
        reader = Reader(payload)
        value = reader.value()
        reader.end()
        return cls(value)


_BACKEND = {
    ord(cls.TYPE): cls.decode
    for cls in (
        ParameterStatus,
        BackendKeyData,
        ReadyForQuery,
        RowDescription,
        DataRow,
        CommandComplete,
        EmptyQueryResponse,
        ErrorResponse,
        NoticeResponse,
        NotificationResponse,
        ParseComplete,
        BindComplete,
        CloseComplete,
        ParameterDescription,
        NoData,
        PortalSuspended,
        CopyInResponse,
        CopyOutResponse,
        CopyBothResponse,
        CopyData,
        CopyDone,
        NegotiateProtocolVersion,
        FunctionCallResponse,
    )
}
_BACKEND[ord("R")] = decode_authentication


def decode_backend(type: int, payload: bytes | memoryview):
    """Decode a typed message sent by a server."""
    decoder = _BACKEND.get(type)
    if decoder is None:
        raise ProtocolViolation(f"invalid backend message type {type}")
    return decoder(payload)
