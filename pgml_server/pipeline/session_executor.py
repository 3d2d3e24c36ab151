"""SQL the server runs for a client on that client's own upstream connection.

Registry writes, snapshots and dataset loads made for a client go through here, so the client's
role, GRANTs, transaction and temp tables apply. Each statement is an `InternalStatement`
(pipeline/internal.py): a name of its own, and Sync or, inside the client's open implicit
transaction, Flush.
"""
from __future__ import annotations

import json
from typing import Any

from protocol import messages as m

from ..db.names import quote_ident_list, quote_qualified
from .consumers import Collector
from .internal import InternalStatement, run_internal
from .port import SessionPort

_COPY_CHUNK = 65536
_COPY_DATA = b"d"


def encode_text_param(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return b"\\x" + bytes(value).hex().encode()
    if isinstance(value, float):
        if value != value:
            return b"NaN"
        if value in (float("inf"), float("-inf")):
            return b"Infinity" if value > 0 else b"-Infinity"
        return repr(value).encode()
    if isinstance(value, (dict, list)):
        return json.dumps(value).encode()
    return str(value).encode()


class SessionExecutor:
    """The Executor contract (docs/internals.md) over a client's session."""

    def __init__(self, session: SessionPort, *, extended: bool) -> None:
        self.session = session
        self.extended = extended

    async def _run(self, sql: str, args: tuple, copy_data=b"") -> Collector:
        session = self.session
        if session.phase != "ready" or session.upstream is None:
            raise ConnectionError("the client's upstream connection is closed")
        stmt = InternalStatement(sql, params=[encode_text_param(a) for a in args], describe=True,
                                 copy_data=copy_data)
        return await run_internal(session, stmt, Collector(decode_rows=True, quiet=True), extended=self.extended)

    async def fetch(self, sql: str, *args) -> list[tuple]:
        return (await self._run(sql, args)).rows

    async def fetchrow(self, sql: str, *args) -> tuple | None:
        rows = (await self._run(sql, args)).rows
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args) -> Any:
        row = await self.fetchrow(sql, *args)
        return row[0] if row else None

    async def execute(self, sql: str, *args) -> str:
        return (await self._run(sql, args)).tag

    async def copy_in(self, table: str, columns: list[str], data, format: str = "text") -> str:
        """COPY FROM STDIN of `data`: bytes, or a list of buffers (bytes, memoryviews) in order,
        framed into CopyData messages by views, so that the stream is copied once, when sent."""
        sql = f"COPY {quote_qualified(table)} ({quote_ident_list(columns)}) FROM STDIN WITH (FORMAT {format})"
        frames: list = []
        for part in ([data] if isinstance(data, (bytes, bytearray)) else data):
            view = memoryview(part)
            for i in range(0, len(view), _COPY_CHUNK):
                chunk = view[i:i + _COPY_CHUNK]
                frames += (_COPY_DATA + (len(chunk) + 4).to_bytes(4, "big"), chunk)
        frames.append(m.CopyDone().encode())
        return (await self._run(sql, (), tuple(frames))).tag

    async def copy_out(self, query: str, format: str = "binary") -> bytes:
        sql = f"COPY ({query}) TO STDOUT WITH (FORMAT {format})"
        return b"".join((await self._run(sql, ())).copy_chunks)

    async def notice(self, message: str) -> None:
        self.session.notice(message)
