"""The Executor contract, and its implementation over the server's own asyncpg connection.

Registry, snapshot and dataset code runs SQL through an Executor so the same code works on a
client's own upstream session (SessionExecutor, in session_executor.py) and on the server's pool
(AsyncpgExecutor, here). Both take the same Python values and give back the same ones; see
docs/internals.md for the rules (every `$n` carries an explicit cast).
"""
from __future__ import annotations

import json
import logging
import weakref
from typing import Any, AsyncIterator, Protocol

import asyncpg

from .names import split_qualified

log = logging.getLogger("pgml_server.executor")

_COPY_CHUNK = 1 << 20


class Executor(Protocol):
    async def fetch(self, sql: str, *args) -> list[tuple]: ...
    async def fetchrow(self, sql: str, *args) -> tuple | None: ...
    async def fetchval(self, sql: str, *args) -> Any: ...
    async def execute(self, sql: str, *args) -> str: ...
    async def copy_in(self, table: str, columns: list[str], data: bytes, format: str = "text") -> str: ...
    async def copy_out(self, query: str, format: str = "binary") -> bytes: ...
    async def notice(self, message: str) -> None: ...


def _json_encode(value: Any) -> str:
    # A str is taken as JSON text already, as SessionExecutor sends it unchanged.
    return value if isinstance(value, str) else json.dumps(value)


# Codecs that make asyncpg speak the contract's Python types: json/jsonb ↔ dict/list,
# numeric → float, timestamps → str (what a text-format session gives).
_TEXT_CODECS = {
    "json": (_json_encode, json.loads),
    "jsonb": (_json_encode, json.loads),
    "numeric": (str, float),
    "timestamptz": (str, str),
    "timestamp": (str, str),
    "date": (str, str),
}

# Connections whose codecs are set; weak, so closed connections drop out.
_configured: "weakref.WeakSet[asyncpg.Connection]" = weakref.WeakSet()


async def configure_connection(conn: asyncpg.Connection) -> None:
    """Install the contract's type codecs on a connection (usable as a pool's `init=`)."""
    for typename, (encoder, decoder) in _TEXT_CODECS.items():
        await conn.set_type_codec(typename, schema="pg_catalog", encoder=encoder, decoder=decoder,
                                  format="text")
    _configured.add(_raw(conn))


def _raw(conn: asyncpg.Connection) -> asyncpg.Connection:
    # A pool hands out proxies, a new one per acquire; the codecs live on the connection behind it.
    return getattr(conn, "_con", None) or conn


class AsyncpgExecutor:
    """The Executor contract over an asyncpg connection (the server's own, from --upstream)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def _ready(self) -> asyncpg.Connection:
        if _raw(self.conn) not in _configured:
            await configure_connection(self.conn)
        return self.conn

    async def fetch(self, sql: str, *args) -> list[tuple]:
        conn = await self._ready()
        return [tuple(r) for r in await conn.fetch(sql, *args)]

    async def fetchrow(self, sql: str, *args) -> tuple | None:
        conn = await self._ready()
        row = await conn.fetchrow(sql, *args)
        return None if row is None else tuple(row)

    async def fetchval(self, sql: str, *args) -> Any:
        conn = await self._ready()
        return await conn.fetchval(sql, *args)

    async def execute(self, sql: str, *args) -> str:
        conn = await self._ready()
        return await conn.execute(sql, *args)

    async def copy_in(self, table: str, columns: list[str], data: bytes, format: str = "text") -> str:
        """COPY `data` (already in `format`) into `table` (`name` or `schema.name`, quoted or not)."""
        conn = await self._ready()
        *schema, name = split_qualified(table)
        return await conn.copy_to_table(name, schema_name=schema[0] if schema else None, columns=columns,
                                        source=_chunks(data), format=format)

    async def copy_out(self, query: str, format: str = "binary") -> bytes:
        """All bytes of `COPY (query) TO STDOUT WITH (FORMAT format)`."""
        conn = await self._ready()
        parts: list[bytes] = []

        async def sink(chunk: bytes) -> None:
            parts.append(chunk)

        await conn.copy_from_query(query, output=sink, format=format)
        return b"".join(parts)

    async def notice(self, message: str) -> None:
        # The server's own connection has no client to tell; the log is the closest reader.
        log.info("%s", message)


async def _chunks(data: bytes) -> AsyncIterator[memoryview]:
    view = memoryview(data)
    for start in range(0, len(view), _COPY_CHUNK):
        yield view[start:start + _COPY_CHUNK]
