"""Running SQL through pgml-server for a login, with its NOTICEs streamed live.

A Job runs the statements of a notebook cell (or the data explorer's `pgml.train`) on a
connection to pgml-server itself as the logged-in role, so `pgml.*` works. NOTICEs arrive
through asyncpg's log listener while the statement runs and are appended to the job's event
list; `/jobs/<id>/events` streams that list as server-sent events (replaying what was missed).
Cancelling the job cancels the asyncpg call, which sends a CancelRequest to pgml-server.
"""
from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import secrets
import time
from typing import Any, Callable

import asyncpg

MAX_ROWS = 1000          # rows kept of a result (the rest are counted)
KEEP_JOBS = 20           # finished jobs kept per login


def split_statements(sql: str) -> list[str]:
    """The statements of a cell, split by PostgreSQL's own scanner (pglast)."""
    text = sql.strip()
    if not text:
        return []
    try:
        from pglast import split
        parts = [p.strip() for p in split(text, with_parser=False)]
        return [p for p in parts if p]
    except Exception:          # unsplittable: send it whole and let the server report the error
        return [text]


def cell_value(value: Any) -> str | None:
    """A result value as text for display (escaping is the template's job)."""
    if value is None:
        return None
    if isinstance(value, (dict, list)) and not isinstance(value, asyncpg.Record):
        return json.dumps(value, default=str)
    if isinstance(value, bytes):
        return "\\x" + value[:64].hex() + ("…" if len(value) > 64 else "")
    if isinstance(value, float):
        return f"{value:.10g}"       # float4 arrives widened: 0.038075905 rather than 0.03807590529322624
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time, decimal.Decimal)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "{" + ",".join("NULL" if v is None else str(cell_value(v)) for v in value) + "}"
    return str(value)


class Job:
    def __init__(self, owner: Any, statements: list[str], on_done: Callable | None = None) -> None:
        self.id = secrets.token_urlsafe(12)
        self.owner = owner
        self.statements = statements
        self.events: list[tuple[str, Any]] = []
        self.changed = asyncio.Event()
        self.result: dict | None = None
        self.on_done = on_done
        self.finished_at: float | None = None
        self.task: asyncio.Task | None = None

    def start(self) -> "Job":
        self.task = asyncio.ensure_future(self._run())
        self.owner.jobs[self.id] = self
        _prune(self.owner.jobs)
        return self

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def _emit(self, kind: str, data: Any) -> None:
        self.events.append((kind, data))
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait(self) -> dict:
        if self.task is not None:
            await asyncio.shield(self.task)
        return self.result

    async def _run(self) -> None:
        started = time.monotonic()
        result: dict[str, Any] = {"columns": [], "rows": [], "total": 0, "status": None, "error": None,
                                  "notices": [], "statements": len(self.statements)}
        conn = None
        pool = None
        try:
            pool = await self.owner.through()
            conn = await pool.acquire()

            def listener(_conn, msg) -> None:
                notice = {"severity": getattr(msg, "severity", "NOTICE") or "NOTICE",
                          "message": getattr(msg, "message", str(msg))}
                result["notices"].append(notice)
                self._emit("notice", notice)

            conn.add_log_listener(listener)
            try:
                for sql in self.statements:
                    await self._statement(conn, sql, result)
            finally:
                conn.remove_log_listener(listener)
        except asyncio.CancelledError:
            result["error"] = {"sqlstate": "57014", "message": "canceled by the user"}
        except asyncpg.PostgresError as exc:
            result["error"] = {"sqlstate": getattr(exc, "sqlstate", None), "message": str(exc),
                               "detail": getattr(exc, "detail", None), "hint": getattr(exc, "hint", None)}
        except (OSError, asyncpg.InterfaceError) as exc:
            result["error"] = {"sqlstate": "08006", "message": f"connection to pgml-server failed: {exc}"}
        finally:
            if conn is not None:
                try:
                    await asyncio.shield(pool.release(conn, timeout=5))
                except Exception:
                    conn.terminate()
        result["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
        self.result = result
        if self.on_done is not None:
            try:
                await self.on_done(self, result)
            except Exception as exc:       # e.g. the role may not update the notebook
                result["save_error"] = str(exc)
        self.finished_at = time.monotonic()
        self._emit("done", result)

    async def _statement(self, conn: asyncpg.Connection, sql: str, result: dict) -> None:
        """One statement; the last statement's result is the cell's result."""
        stmt = await conn.prepare(sql)
        records = await stmt.fetch()
        rows = [[cell_value(v) for v in record] for record in records[:MAX_ROWS]]
        attrs = stmt.get_attributes()
        result.update(columns=[a.name for a in attrs], rows=rows, total=len(records),
                      status=stmt.get_statusmsg() or (f"SELECT {len(records)}" if attrs else "OK"))


def _prune(jobs: dict) -> None:
    finished = sorted((j for j in jobs.values() if j.finished_at is not None), key=lambda j: j.finished_at)
    for job in finished[:-KEEP_JOBS] if len(finished) > KEEP_JOBS else []:
        jobs.pop(job.id, None)
