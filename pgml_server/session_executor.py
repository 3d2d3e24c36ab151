"""SQL the server runs for a client on that client's own upstream connection.

Registry writes, snapshots and dataset loads made for a client go through here, so the client's
role, GRANTs, transaction and temp tables apply. Statements use a named statement and portal of
their own (never the client's unnamed ones) and end with Sync unless the client's pipeline holds
an open implicit transaction, in which case they join it (Flush).
"""
from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING, Any

import numpy as np

from protocol import messages as m
from protocol import types
from protocol.errors import PgError

from . import pending as pq
from .pending import Consumer

if TYPE_CHECKING:
    from .session import Session

_STMT = "__pgml_internal"
_FLUSH = b"H\x00\x00\x00\x04"
_SYNC = b"S\x00\x00\x00\x04"
_I32 = struct.Struct("!i")


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


def decode_text_value(oid: int, data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        value = types.decode(oid, bytes(data), False)
    except Exception:
        return bytes(data).decode()
    if type(value).__name__ == "Decimal":
        return float(value)
    return value


class _Collector(Consumer):
    """Collects one internal statement's results: columns, rows, command tag, COPY data, error."""

    quiet = True
    bulk_copy = True

    def __init__(self) -> None:
        super().__init__()
        self.oids: list[int] = []
        self.rows: list[tuple] = []
        self.tag = ""
        self.copy_chunks: list[bytes] = []
        self.error: PgError | None = None

    def on_message(self, t: int, payload: bytes) -> None:
        if t == 0x44:  # 'D'
            row = m.DataRow.decode(payload).values
            self.rows.append(tuple(decode_text_value(o, v) for o, v in zip(self.oids, row)))
        elif t == 0x54:  # 'T'
            self.oids = [f.type_oid for f in m.RowDescription.decode(payload).fields]
        elif t == 0x43:  # 'C'
            self.tag = m.CommandComplete.decode(payload).tag
        elif t == 0x64:  # 'd'
            self.copy_chunks.append(bytes(payload))
        elif t == 0x45 and self.error is None:  # 'E'
            self.error = PgError.from_fields(m.ErrorResponse.decode(payload).fields)

    def on_copy_data(self, buf: bytes, start: int, end: int) -> int:
        """Take the run of CopyData messages at `start` that have the first one's length (rows of
        fixed-width columns): one numpy copy strips their headers; the rest come one by one."""
        size = 1 + _I32.unpack_from(buf, start + 1)[0]
        count = (end - start) // size
        if count < 2:
            return start
        block = np.frombuffer(buf, np.uint8, count * size, start).reshape(count, size)
        same = (block[:, :5] == block[0, :5]).all(axis=1)
        k = count if same.all() else int(np.argmin(same))
        if k < 2:
            return start
        self.copy_chunks.append(block[:k, 5:].tobytes())
        return start + k * size


class SessionExecutor:
    """The Executor contract (docs/internals.md) over a client's session."""

    def __init__(self, session: "Session", *, extended: bool) -> None:
        self.session = session
        self.extended = extended

    async def _run(self, sql: str, args: tuple, tail: bytes = b"") -> _Collector:
        session = self.session
        if session.phase != "ready" or session.upstream is None:
            raise ConnectionError("the client's upstream connection is closed")
        use_sync = not (self.extended and session.batch_dirty)
        params = [encode_text_param(a) for a in args]
        data = b"".join((
            m.Close("S", _STMT).encode(),
            m.Parse(_STMT, sql, []).encode(),
            m.Bind(_STMT, _STMT, [], params, []).encode(),
            m.Describe("P", _STMT).encode(),
            m.Execute(_STMT, 0).encode(),
            tail,
            m.Close("S", _STMT).encode(),
            _SYNC if use_sync else _FLUSH,
        ))
        kinds = [pq.EXT] * 6 + ([pq.SYNC] if use_sync else [])
        collector = _Collector()
        session.send_internal(data, kinds, collector)
        await collector.done
        if collector.error is not None:
            raise collector.error
        return collector

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

    async def copy_in(self, table: str, columns: list[str], data: bytes, format: str = "text") -> str:
        from .sqlnames import quote_ident_list, quote_qualified
        sql = f"COPY {quote_qualified(table)} ({quote_ident_list(columns)}) FROM STDIN WITH (FORMAT {format})"
        # CopyData may follow Execute at once: the backend reads it when it enters COPY mode, and
        # ignores it if the statement failed before that.
        chunks = [m.CopyData(data[i:i + 65536]).encode() for i in range(0, len(data), 65536)]
        tail = b"".join(chunks) + m.CopyDone().encode()
        return (await self._run(sql, (), tail)).tag

    async def copy_out(self, query: str, format: str = "binary") -> bytes:
        sql = f"COPY ({query}) TO STDOUT WITH (FORMAT {format})"
        return b"".join((await self._run(sql, ())).copy_chunks)

    async def notice(self, message: str) -> None:
        self.session.notice(message)
