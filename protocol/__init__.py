"""Sans-IO PostgreSQL v3 wire protocol: framing, messages, type codecs and SQLSTATE errors.

Bytes in, messages and bytes out; nothing here opens a socket or imports asyncio, so every
piece is testable byte by byte and usable from both the client- and the upstream-facing side.
"""

from protocol.errors import PgError, ProtocolViolation, error_response, notice_response
from protocol.framing import Frame, Framer

__all__ = ["Frame", "Framer", "PgError", "ProtocolViolation", "error_response", "notice_response"]
