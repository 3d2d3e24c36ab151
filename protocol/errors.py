"""Errors that travel to a PostgreSQL client: PgError carries a real SQLSTATE and encodes itself.

Every error this server makes is a PgError (or subclass) so that it reaches the client as an
ErrorResponse with the SQLSTATE PostgreSQL itself would use, never a generic one. The
ErrorResponse/NoticeResponse field encoding lives here (not in messages.py) so that messages.py
can import ProtocolViolation without an import cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from struct import Struct

from protocol import sqlstate

_I32 = Struct("!i")

# Field codes of ErrorResponse/NoticeResponse, in the order PostgreSQL sends them.
SEVERITY = "S"
SEVERITY_NONLOCALIZED = "V"
CODE = "C"
MESSAGE = "M"
DETAIL = "D"
HINT = "H"
POSITION = "P"


def encode_fields(type_byte: bytes, fields: Mapping[str, str]) -> bytes:
    """Encode an ErrorResponse (b'E') or NoticeResponse (b'N') from its field dict."""
    parts = []
    for code, value in fields.items():
        if len(code) != 1:
            raise ValueError(f"error field code must be one character, got {code!r}")
        # A NUL would end the field early and corrupt the stream; PostgreSQL text never has one.
        parts.append(code.encode() + value.replace("\0", "").encode() + b"\0")
    parts.append(b"\0")
    body = b"".join(parts)
    return type_byte + _I32.pack(len(body) + 4) + body


def _fields(
    severity: str,
    code: str,
    message: str,
    detail: str | None,
    hint: str | None,
    position: int | None,
) -> dict[str, str]:
    fields = {SEVERITY: severity, SEVERITY_NONLOCALIZED: severity, CODE: code, MESSAGE: message}
    if detail is not None:
        fields[DETAIL] = detail
    if hint is not None:
        fields[HINT] = hint
    if position is not None:
        fields[POSITION] = str(position)
    return fields


class PgError(Exception):
    """An error with a SQLSTATE, ready to be sent to a client as an ErrorResponse."""

    def __init__(
        self,
        sqlstate: str,
        message: str,
        detail: str | None = None,
        hint: str | None = None,
        severity: str = "ERROR",
        position: int | None = None,
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        self.hint = hint
        self.severity = severity
        self.position = position

    def fields(self) -> dict[str, str]:
        """The ErrorResponse fields: S, V, C, M and, when set, D, H, P."""
        return _fields(
            self.severity, self.sqlstate, self.message, self.detail, self.hint, self.position
        )

    def to_response(self) -> bytes:
        """This error encoded as an ErrorResponse message."""
        return encode_fields(b"E", self.fields())

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> PgError:
        """Rebuild an error from the fields of an ErrorResponse (e.g. one from the upstream)."""
        position = fields.get(POSITION)
        return cls(
            fields.get(CODE, sqlstate.INTERNAL_ERROR),
            fields.get(MESSAGE, ""),
            detail=fields.get(DETAIL),
            hint=fields.get(HINT),
            severity=fields.get(SEVERITY_NONLOCALIZED) or fields.get(SEVERITY, "ERROR"),
            position=int(position) if position and position.isdigit() else None,
        )

    @property
    def condition_name(self) -> str | None:
        """PostgreSQL's name for this SQLSTATE (or for its class when the code is unknown)."""
        return sqlstate.name_of(self.sqlstate)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.sqlstate!r}, {self.message!r})"


class ProtocolViolation(PgError):
    """The peer broke the wire protocol (SQLSTATE 08P01).

    Severity defaults to ERROR, which suits a malformed message inside an intact stream; the
    framer raises it as FATAL because after a bad length the stream cannot be resynchronised.
    """

    def __init__(
        self,
        message: str,
        detail: str | None = None,
        hint: str | None = None,
        severity: str = "ERROR",
    ) -> None:
        super().__init__(sqlstate.PROTOCOL_VIOLATION, message, detail, hint, severity)


def error_response(
    sqlstate: str,
    message: str,
    *,
    detail: str | None = None,
    hint: str | None = None,
    severity: str = "ERROR",
) -> bytes:
    """An encoded ErrorResponse."""
    return encode_fields(b"E", _fields(severity, sqlstate, message, detail, hint, None))


def notice_response(
    message: str,
    *,
    severity: str = "NOTICE",
    sqlstate: str = "00000",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """An encoded NoticeResponse."""
    return encode_fields(b"N", _fields(severity, sqlstate, message, detail, hint, None))
