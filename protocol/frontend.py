"""Messages a client sends: startup-phase packets (no type byte) and typed frontend messages.

Decode a startup packet with decode_startup_packet() and a typed message with decode_frontend();
'p' is ambiguous on the wire (password, SASLInitialResponse, SASLResponse), so decode_frontend
returns it raw as PasswordMessage and the authentication step picks the right .decode().
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from protocol.errors import ProtocolViolation
from protocol.wire import (
    CANCEL_REQUEST_CODE,
    EmptyMessage,
    GSSENC_REQUEST_CODE,
    I16,
    I32,
    I32X2,
    MAX_SECRET,
    PROTOCOL_VERSION_3,
    Reader,
    SSL_REQUEST_CODE,
    U32,
    cstring_bytes,
    pack_count,
    pack_int16s,
    pack_message,
    pack_values,
    read_choice,
)

# --- startup-phase packets (no type byte) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartupMessage:
    params: dict[str, str]
    version: int = PROTOCOL_VERSION_3
    TYPE: ClassVar[bytes] = b""

    def encode(self) -> bytes:
        parts = [I32.pack(self.version)]
        for key, value in self.params.items():
            parts.append(cstring_bytes(key) + cstring_bytes(value))
        parts.append(b"\0")
        return pack_message(b"", *parts)

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> StartupMessage:
        reader = Reader(payload)
        version = reader.int32()
        params = {}
        while True:
            key = reader.cstring()
            if not key:
                break
            params[key] = reader.cstring()
        reader.end()
        return cls(params, version)


def _code_only(code: int) -> bytes:
    return I32X2.pack(8, code)


@dataclass(frozen=True, slots=True)
class SSLRequest:
    TYPE: ClassVar[bytes] = b""
    _BYTES: ClassVar[bytes] = _code_only(SSL_REQUEST_CODE)

    def encode(self) -> bytes:
        return self._BYTES


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    TYPE: ClassVar[bytes] = b""
    _BYTES: ClassVar[bytes] = _code_only(GSSENC_REQUEST_CODE)

    def encode(self) -> bytes:
        return self._BYTES


@dataclass(frozen=True, slots=True)
class CancelRequest:
    pid: int
    secret: bytes
    TYPE: ClassVar[bytes] = b""

    def encode(self) -> bytes:
        return pack_message(b"", I32.pack(CANCEL_REQUEST_CODE), I32.pack(self.pid), self.secret)

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> CancelRequest:
        reader = Reader(payload)
        if reader.int32() != CANCEL_REQUEST_CODE:
            raise ProtocolViolation("not a CancelRequest")
        pid = reader.int32()
        secret = reader.rest()
        if not 4 <= len(secret) <= MAX_SECRET:
            raise ProtocolViolation(f"invalid cancel key length {len(secret)}")
        return cls(pid, secret)


def decode_startup_packet(
    payload: bytes | memoryview,
) -> StartupMessage | SSLRequest | GSSENCRequest | CancelRequest:
    """Decode a startup-phase packet (payload after the length word)."""
    code = Reader(payload).int32()
    if code == SSL_REQUEST_CODE or code == GSSENC_REQUEST_CODE:
        if len(payload) != 4:
            raise ProtocolViolation("SSLRequest/GSSENCRequest must be 8 bytes")
        return SSLRequest() if code == SSL_REQUEST_CODE else GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        return CancelRequest.decode(payload)
    if code >> 16 != 3:
        raise ProtocolViolation(
            f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}",
            hint="This server speaks protocol 3.0 and later minor versions.",
        )
    return StartupMessage.decode(payload)


# --- frontend messages ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    """'p' as the raw payload: a password, or a SASL/GSS response, depending on the auth step."""

    data: bytes
    TYPE: ClassVar[bytes] = b"p"

    def encode(self) -> bytes:
        return pack_message(b"p", self.data)

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> PasswordMessage:
        return cls(bytes(payload))

    @classmethod
    def cleartext(cls, password: str) -> PasswordMessage:
        """A password (cleartext or an "md5..." digest) as a NUL-terminated string."""
        return cls(cstring_bytes(password))

    @property
    def password(self) -> str:
        """The payload read as a NUL-terminated password string."""
        reader = Reader(self.data)
        password = reader.cstring()
        reader.end()
        return password


@dataclass(frozen=True, slots=True)
class SASLInitialResponse:
    mechanism: str
    data: bytes | None
    TYPE: ClassVar[bytes] = b"p"

    def encode(self) -> bytes:
        return pack_message(b"p", cstring_bytes(self.mechanism), pack_values([self.data]))

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> SASLInitialResponse:
        reader = Reader(payload)
        mechanism = reader.cstring()
        data = reader.value()
        reader.end()
        return cls(mechanism, data)


@dataclass(frozen=True, slots=True)
class SASLResponse:
    data: bytes
    TYPE: ClassVar[bytes] = b"p"

    def encode(self) -> bytes:
        return pack_message(b"p", self.data)

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> SASLResponse:
        return cls(bytes(payload))


@dataclass(frozen=True, slots=True)
class Query:
    sql: str
    TYPE: ClassVar[bytes] = b"Q"

    def encode(self) -> bytes:
        return pack_message(b"Q", cstring_bytes(self.sql))

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> Query:
        reader = Reader(payload)
        sql = reader.cstring()
        reader.end()
        return cls(sql)


@dataclass(frozen=True, slots=True)
class Parse:
    name: str
    query: str
    param_oids: list[int] = field(default_factory=list)
    TYPE: ClassVar[bytes] = b"P"

    def encode(self) -> bytes:
        oids = b"".join(U32.pack(oid) for oid in self.param_oids)
        return pack_message(
            b"P",
            cstring_bytes(self.name),
            cstring_bytes(self.query),
            pack_count(self.param_oids),
            oids,
        )

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> Parse:
        reader = Reader(payload)
        name, query = reader.cstring(), reader.cstring()
        oids = [reader.uint32() for _ in range(reader.uint16())]
        reader.end()
        return cls(name, query, oids)


@dataclass(frozen=True, slots=True)
class Bind:
    portal: str
    statement: str
    param_formats: list[int] = field(default_factory=list)
    params: list[bytes | None] = field(default_factory=list)
    result_formats: list[int] = field(default_factory=list)
    TYPE: ClassVar[bytes] = b"B"

    def encode(self) -> bytes:
        return pack_message(
            b"B",
            cstring_bytes(self.portal),
            cstring_bytes(self.statement),
            pack_int16s(self.param_formats),
            pack_count(self.params),
            pack_values(self.params),
            pack_int16s(self.result_formats),
        )

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> Bind:
        reader = Reader(payload)
        portal, statement = reader.cstring(), reader.cstring()
        param_formats = reader.int16s(reader.uint16())
        params = reader.values(reader.uint16())
        result_formats = reader.int16s(reader.uint16())
        reader.end()
        if len(param_formats) not in (0, 1, len(params)):
            raise ProtocolViolation(
                f"bind message has {len(param_formats)} parameter formats "
                f"but {len(params)} parameters"
            )
        return cls(portal, statement, param_formats, params, result_formats)

    def param_format(self, index: int) -> int:
        """The format code of parameter ``index`` (0 text, 1 binary), per the protocol's rules."""
        if not self.param_formats:
            return 0
        if len(self.param_formats) == 1:
            return self.param_formats[0]
        return self.param_formats[index]


@dataclass(frozen=True, slots=True)
class Describe:
    kind: str  # 'S' statement or 'P' portal
    name: str
    TYPE: ClassVar[bytes] = b"D"

    def encode(self) -> bytes:
        return pack_message(b"D", self.kind.encode(), cstring_bytes(self.name))

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> Describe:
        reader = Reader(payload)
        kind = read_choice(reader, "SP", "Describe kind")
        name = reader.cstring()
        reader.end()
        return cls(kind, name)


@dataclass(frozen=True, slots=True)
class Execute:
    portal: str
    max_rows: int = 0
    TYPE: ClassVar[bytes] = b"E"

    def encode(self) -> bytes:
        return pack_message(b"E", cstring_bytes(self.portal), I32.pack(self.max_rows))

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> Execute:
        reader = Reader(payload)
        portal = reader.cstring()
        max_rows = reader.int32()
        reader.end()
        return cls(portal, max_rows)


@dataclass(frozen=True, slots=True)
class Close:
    kind: str  # 'S' statement or 'P' portal
    name: str
    TYPE: ClassVar[bytes] = b"C"

    def encode(self) -> bytes:
        return pack_message(b"C", self.kind.encode(), cstring_bytes(self.name))

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> Close:
        reader = Reader(payload)
        kind = read_choice(reader, "SP", "Close kind")
        name = reader.cstring()
        reader.end()
        return cls(kind, name)


@dataclass(frozen=True, slots=True)
class Sync(EmptyMessage):
    TYPE: ClassVar[bytes] = b"S"


@dataclass(frozen=True, slots=True)
class Flush(EmptyMessage):
    TYPE: ClassVar[bytes] = b"H"


@dataclass(frozen=True, slots=True)
class Terminate(EmptyMessage):
    TYPE: ClassVar[bytes] = b"X"


@dataclass(frozen=True, slots=True)
class CopyDone(EmptyMessage):
    TYPE: ClassVar[bytes] = b"c"


@dataclass(frozen=True, slots=True)
class CopyData:
    data: bytes
    TYPE: ClassVar[bytes] = b"d"

    def encode(self) -> bytes:
        return pack_message(b"d", self.data)

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> CopyData:
        return cls(bytes(payload))


@dataclass(frozen=True, slots=True)
class CopyFail:
    message: str
    TYPE: ClassVar[bytes] = b"f"

    def encode(self) -> bytes:
        return pack_message(b"f", cstring_bytes(self.message))

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> CopyFail:
        reader = Reader(payload)
        message = reader.cstring()
        reader.end()
        return cls(message)


@dataclass(frozen=True, slots=True)
class FunctionCall:
    oid: int
    arg_formats: list[int] = field(default_factory=list)
    args: list[bytes | None] = field(default_factory=list)
    result_format: int = 0
    TYPE: ClassVar[bytes] = b"F"

    def encode(self) -> bytes:
        return pack_message(
            b"F",
            U32.pack(self.oid),
            pack_int16s(self.arg_formats),
            pack_count(self.args),
            pack_values(self.args),
            I16.pack(self.result_format),
        )

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> FunctionCall:
        reader = Reader(payload)
        oid = reader.uint32()
        arg_formats = reader.int16s(reader.uint16())
        args = reader.values(reader.uint16())
        result_format = reader.int16()
        reader.end()
        return cls(oid, arg_formats, args, result_format)


_FRONTEND = {
    ord(cls.TYPE): cls.decode
    for cls in (
        PasswordMessage,
        Query,
        Parse,
        Bind,
        Describe,
        Execute,
        Sync,
        Flush,
        Close,
        Terminate,
        CopyData,
        CopyDone,
        CopyFail,
        FunctionCall,
    )
}


def decode_frontend(type: int, payload: bytes | memoryview):
    """Decode a typed message sent by a client. 'p' decodes as PasswordMessage (raw payload)."""
    decoder = _FRONTEND.get(type)
    if decoder is None:
        raise ProtocolViolation(f"invalid frontend message type {type}")
    return decoder(payload)
