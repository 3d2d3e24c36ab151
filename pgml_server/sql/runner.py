"""The local statement runner: pgml.* statements in the simple and the extended protocol.

The session hands the runner the client messages that concern local statements: Parse of SQL
that calls pgml.*, and Bind/Describe/Execute/Close naming a local statement or portal. Answers
are queued as LocalItems so they interleave correctly with forwarded answers. The server gives
each session its runner (`LocalRunner(session)`), so the proxy never imports this layer.
"""
from __future__ import annotations

import inspect
import struct
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from protocol import messages as m
from protocol import sqlstate, types
from protocol.errors import PgError, ProtocolViolation

from ..functions.context import CallContext
from ..pipeline.consumers import Relay
from ..pipeline.fifo import LocalItem, Pending, may_be_skipped
from ..pipeline.port import SessionPort
from ..pipeline.rules import EXT, READY, SIMPLE, mentions_pgml
from .compiler import LocalStatement
from .encoding import decode_param, encode_rows, format_code, row_description
from .router import ERROR, FORWARD, LOCAL, MULTI, REWRITE, Route

_PARSE_COMPLETE = m.ParseComplete().encode()
_BIND_COMPLETE = m.BindComplete().encode()
_CLOSE_COMPLETE = m.CloseComplete().encode()
_NO_DATA = m.NoData().encode()
_SYNC = m.Sync().encode()
_SELECT_1 = m.command_complete("SELECT 1")
# DataRow of one binary real: 'D', length 14, one column, 4 bytes, the value (what encode_rows
# gives for pgml.predict's result in binary, without its per-call lists and lookups).
_REAL_ROW = struct.Struct("!BIHIf")

# What a prepared statement may run on the one-packet path (LocalRunner.answer_packet): functions
# that only read the model cache and answer synchronously once the model is cached, so running
# one again when the fast path gives up (an error, a cache miss) changes nothing.
_ONE_PACKET_FUNCTIONS = frozenset({"predict", "score", "predict_proba", "predict_joint", "predict_label",
                                   "decompose"})


@dataclass
class LocalPrepared:
    name: str
    sql: str
    route: Route
    param_oids: list[int]
    one_packet: bool = False      # Bind+Execute+Sync of it may be answered by answer_packet


def _one_packet(route: Route) -> bool:
    if route.kind != LOCAL:
        return False
    stmt = route.statement
    return (len(stmt.calls) == 1 and not stmt.expand and not stmt.returns_set
            and stmt.calls[0].function.name in _ONE_PACKET_FUNCTIONS)


@dataclass
class LocalPortal:
    name: str
    prepared: LocalPrepared
    params: list[Any]
    result_formats: list[int]
    raw_params: m.Bind | None = None     # rewritten statements pass the client's values on as sent


# ---------------------------------------------------------------- running a statement

# Results that are never awaitable: inspect.isawaitable's ABC check is skipped for them (hot path).
_PLAIN = frozenset({float, int, str, bool, list, tuple, dict, type(None), np.ndarray})


def _awaitable(value: Any) -> bool:
    return type(value) not in _PLAIN and inspect.isawaitable(value)


def run_statement(stmt: LocalStatement, ctx: CallContext, params: list) -> Any:
    """Rows of a local statement, or an awaitable of them when a function must wait."""
    if stmt.expand or stmt.returns_set:
        call = stmt.calls[0]
        result = call.function.impl(ctx, **call.arguments(params))
        if _awaitable(result):
            return _finish_expand(stmt, result)
        return _rows_of(stmt, result)
    values: list[Any] = []
    for i, call in enumerate(stmt.calls):
        result = call.function.impl(ctx, **call.arguments(params))
        if _awaitable(result):
            return _finish_row(stmt, ctx, params, values, result, i)
        values.append(result)
    return [tuple(values)]


async def _finish_expand(stmt: LocalStatement, awaitable) -> list[tuple]:
    return _rows_of(stmt, await awaitable)


async def _finish_row(stmt, ctx, params, values, awaitable, i) -> list[tuple]:
    values.append(await awaitable)
    for call in stmt.calls[i + 1:]:
        result = call.function.impl(ctx, **call.arguments(params))
        values.append(await result if inspect.isawaitable(result) else result)
    return [tuple(values)]


def _rows_of(stmt: LocalStatement, result: Any) -> list[tuple]:
    fn = stmt.calls[0].function
    items = list(result) if fn.returns_set else [result]
    if stmt.expand and fn.composite:
        return [tuple(r) for r in items]
    return [(r,) for r in items]


def command_tag(stmt: LocalStatement, rows: list) -> str:
    return f"SELECT {len(rows)}"


# ---------------------------------------------------------------- the runner

class LocalRunner:
    def __init__(self, session: SessionPort) -> None:
        self.session = session

    # -- simple protocol

    def simple_query(self, frame, out: list) -> None:
        session = self.session
        sql = m.Query.decode(frame.payload).sql
        route = session.ctx.router.classify(sql)
        if route.kind == FORWARD:
            out.append(frame.raw)
            session.queue.append(Pending(SIMPLE))
            return
        session.push_local(LocalItem(run=lambda: self._run_simple(route, sql), extended=False))

    async def _run_simple(self, route: Route, sql: str) -> None:
        session = self.session
        if route.kind == MULTI:
            for part_sql, part in route.parts:
                if not await self._run_simple_part(part, part_sql):
                    break
        else:
            await self._run_simple_part(route, sql, last=True)
            return
        session.emit(m.ready_for_query(session.tx_status))

    async def _run_simple_part(self, route: Route, sql: str, last: bool = False) -> bool:
        """Run one statement of a simple Query; False when it failed (the rest is skipped)."""
        session = self.session
        if route.kind == FORWARD:
            return await self._forward_part(sql)
        if session.tx_status == "E":     # before analysis errors, as PostgreSQL checks
            raise _aborted_transaction()
        if route.kind == ERROR:
            raise route.error
        if route.kind == REWRITE:
            await route.rewrite.run_simple(session, sql)
            if last:
                session.emit(m.ready_for_query(session.tx_status))
            return True
        stmt = route.statement
        rows = run_statement(stmt, CallContext(session, extended=False), [])
        if inspect.isawaitable(rows):
            rows = await rows
        session.emit(row_description(stmt.columns, [0]))
        session.emit(encode_rows(stmt.columns, rows, [0]))
        session.emit(m.command_complete(command_tag(stmt, rows)))
        if last:
            session.emit(m.ready_for_query(session.tx_status))
        return True

    async def _forward_part(self, sql: str) -> bool:
        """Forward one statement of a multi-statement Query; relay its answer except ReadyForQuery."""
        consumer = Relay(self.session, frozenset((READY,)), relay_errors=True)
        self.session.send_internal(m.Query(sql).encode(), [SIMPLE], consumer)
        await consumer.done
        return not consumer.failed

    # -- extended protocol

    def parse(self, frame, out: list) -> None:
        session = self.session
        try:
            msg = m.Parse.decode(frame.payload)
        except ProtocolViolation:
            # PostgreSQL rejects a malformed Parse (truncated, a string without its NUL or not
            # UTF-8) while reading it, before it looks at names or text: its answer (08P01 or
            # 22021) is the right one, and nothing local changes (found by the live fuzz test).
            out.append(frame.raw)
            session.queue.append(Pending(EXT))
            return
        route = session.ctx.router.classify(msg.query) if mentions_pgml(frame.payload) else None
        if route is None or route.kind == FORWARD:
            if msg.name in session.prepared:
                if msg.name:
                    self._error(PgError(sqlstate.DUPLICATE_PREPARED_STATEMENT,
                                        f'prepared statement "{msg.name}" already exists'), parse=True)
                    return
                del session.prepared[msg.name]
            out.append(frame.raw)
            session.queue.append(Pending(EXT))
            return
        if may_be_skipped(session.queue):
            session.route_after_answers(frame)
            return
        if route.kind == ERROR:
            self._error(route.error, parse=True)
            return
        if msg.name and msg.name in session.prepared:
            self._error(PgError(sqlstate.DUPLICATE_PREPARED_STATEMENT, f'prepared statement "{msg.name}" already exists'),
                        parse=True)
            return
        declared = list(msg.param_oids)
        inferred = self._param_types(route)
        oids = [declared[i] if i < len(declared) and declared[i] else t for i, t in enumerate(inferred)]
        oids += declared[len(oids):]
        prepared = LocalPrepared(msg.name, msg.query, route, oids, _one_packet(route))
        self._reply_unless_aborted(_PARSE_COMPLETE, _store(session.prepared, msg.name, prepared))

    @staticmethod
    def _param_types(route: Route) -> list[int]:
        if route.kind == LOCAL:
            return list(route.statement.param_types)
        if route.kind == REWRITE:
            return list(route.rewrite.param_types)
        return []

    def handles(self, t: int, payload) -> bool:
        """Whether a Bind, Describe or Close names a local statement or portal. Anything else, a
        name that is not valid UTF-8 or an unknown Describe/Close subtype included, goes to the
        upstream, which answers it as PostgreSQL does, in PostgreSQL's order of checks (found by
        the live fuzz test: a garbage Close got 22021 here where PostgreSQL says 08P01)."""
        session = self.session
        raw = bytes(payload)
        if t == 0x42:  # Bind: portal\0statement\0
            first = raw.index(b"\x00")
            portal = _name(raw[:first])
            stmt = _name(raw[first + 1: raw.index(b"\x00", first + 1)])
            if stmt is not None and stmt in session.prepared:
                return True
            session.portals.pop(portal, None)   # a forwarded Bind replaces a local portal of that name
            return False
        kind, name = raw[:1], _name(raw[1:-1])
        if kind == b"S":
            return name in session.prepared
        return kind == b"P" and name in session.portals

    def is_local_portal(self, payload) -> bool:
        raw = bytes(payload)
        return _name(raw[: raw.index(b"\x00")]) in self.session.portals

    def dispatch(self, t: int, frame, out: list) -> None:
        if t != 0x44 and may_be_skipped(self.session.queue):     # Bind and Close store or drop a name
            self.session.route_after_answers(frame)
            return
        if t == 0x42:
            self._bind(m.Bind.decode(frame.payload))
        elif t == 0x44:
            self._describe(m.Describe.decode(frame.payload))
        else:
            self._close(m.Close.decode(frame.payload))

    def _bind(self, msg: m.Bind) -> None:
        session = self.session
        prepared = session.prepared[msg.statement]
        try:
            params = _bind_params(prepared, msg)
        except PgError as err:
            self._error(err)
            return
        rewritten = prepared.route.kind == REWRITE
        portal = LocalPortal(msg.portal, prepared, params, list(msg.result_formats), msg if rewritten else None)
        self._reply_unless_aborted(_BIND_COMPLETE, _store(session.portals, msg.portal, portal))

    def answer_packet(self, data: bytes) -> bytes | None:
        """The whole answer to a packet that is exactly Bind + Execute + Sync of a prepared
        one-packet statement (a prepared pgml.predict: what asyncpg, psycopg and JDBC send per
        call), or None, having changed nothing, for the message loop to handle as usual.

        The session calls it only when nothing is outstanding (empty FIFO, no error skipping to
        Sync, the transaction status known and not failed), so the answer is what the loop would
        queue: BindComplete, the row, CommandComplete and ReadyForQuery, in one write, without
        framing the packet into messages, FIFO entries or routing. Whatever the loop would answer
        differently (a bad Bind, a wrong parameter, an unknown project, a cache miss)
        returns None, and the loop then gives the same answer it always gives (running the
        function again: these only read the cache)."""
        n = len(data)
        if n < 25 or data[0] != 0x42 or data[n - 5:] != _SYNC:
            return None
        bind_end = 1 + int.from_bytes(data[1:5], "big")
        if bind_end + 10 > n - 5 or data[bind_end] != 0x45:
            return None
        if bind_end + 1 + int.from_bytes(data[bind_end + 1:bind_end + 5], "big") != n - 5:
            return None
        session = self.session
        try:
            msg = _plain_bind(data, 5, bind_end)
            # Execute: the portal's name, NUL, the row limit (not looked at, as in execute(): one
            # row, then CommandComplete)
            if msg is None or data.find(b"\x00", bind_end + 5) != n - 10 or \
                    data[bind_end + 5:n - 10] != msg.portal.encode():
                return None
            prepared = session.prepared.get(msg.statement)
            if prepared is None or not prepared.one_packet:
                return None
            params = _bind_params(prepared, msg)
            stmt = prepared.route.statement
            call = stmt.calls[0]
            value = call.function.impl(CallContext(session, extended=True), **call.arguments(params))
            if _awaitable(value):
                if inspect.iscoroutine(value):
                    value.close()            # a cache miss or a first use: the loop loads and authorizes
                return None
            portal = LocalPortal(msg.portal, prepared, params, list(msg.result_formats))
            if type(value) is float and stmt.columns[0][1] == types.FLOAT4 and format_code(msg.result_formats, 0):
                answer = _REAL_ROW.pack(0x44, 14, 1, 4, value) + _SELECT_1   # a real out of range raises
            else:
                answer = self._result(portal, [(value,)])
        except Exception:
            return None
        session.portals[msg.portal] = portal
        return _BIND_COMPLETE + answer + m.ready_for_query(session.tx_status)

    def _describe(self, msg: m.Describe) -> None:
        session = self.session
        prepared = session.prepared.get(msg.name) if msg.kind == "S" else session.portals[msg.name].prepared
        if prepared.route.kind == REWRITE:
            # Only the upstream knows the types of the columns around the predictions.
            portal = session.portals[msg.name] if msg.kind == "P" else None
            rewrite = prepared.route.rewrite

            async def describe() -> None:
                session.emit(await rewrite.describe(session, prepared if portal is None else None, portal))
            session.push_local(LocalItem(run=describe))
            return
        if msg.kind == "S":
            prepared = session.prepared[msg.name]
            columns = self._columns(prepared.route)
            desc = m.ParameterDescription(prepared.param_oids).encode()
            self._reply(desc + (row_description(columns, [0]) if columns else _NO_DATA))
        else:
            portal = session.portals[msg.name]
            columns = self._columns(portal.prepared.route)
            self._reply(row_description(columns, portal.result_formats) if columns else _NO_DATA)

    @staticmethod
    def _columns(route: Route) -> list[tuple[str, int]]:
        if route.kind == LOCAL:
            return route.statement.columns
        return route.rewrite.columns

    def _close(self, msg: m.Close) -> None:
        session = self.session
        if msg.kind == "S":
            session.prepared.pop(msg.name, None)
        else:
            session.portals.pop(msg.name, None)
        self._reply(_CLOSE_COMPLETE)

    def execute(self, frame) -> None:
        session = self.session
        msg = m.Execute.decode(frame.payload)
        portal = session.portals[msg.portal]
        route = portal.prepared.route
        if route.kind == REWRITE:
            session.push_local(LocalItem(run=lambda: route.rewrite.run_extended(session, portal)))
            return
        ctx = CallContext(session, extended=True)
        try:
            rows = run_statement(route.statement, ctx, portal.params)
        except PgError as err:
            self._error(err)
            return
        if _awaitable(rows):
            session.push_local(LocalItem(run=lambda: self._finish_execute(portal, rows)))
            return
        self._reply(self._result(portal, rows))

    async def _finish_execute(self, portal: LocalPortal, rows) -> None:
        self.session.emit(self._result(portal, await rows))

    @staticmethod
    def _result(portal: LocalPortal, rows: list[tuple]) -> bytes:
        stmt = portal.prepared.route.statement
        return encode_rows(stmt.columns, rows, portal.result_formats) + m.command_complete(command_tag(stmt, rows))

    # -- queueing answers

    def _reply(self, data: bytes) -> None:
        self.session.queue.append(LocalItem(data=data))

    def _reply_unless_aborted(self, data: bytes, undo) -> None:
        """PostgreSQL refuses Parse and Bind in a failed transaction (25P02, until ROLLBACK), so must we.
        The transaction status is certain only once every earlier ReadyForQuery has come back; while one
        is outstanding, decide when this answer reaches the head of the queue (rare: pipelines).
        undo takes back what the Parse or Bind stored if it is refused: PostgreSQL stores nothing then."""
        session = self.session
        if session.tx_status != "E" and not any(
                isinstance(item, Pending) and item.kind != EXT for item in session.queue):
            self._reply(data)
            return

        async def reply() -> None:
            if session.tx_status == "E":
                undo()
                raise _aborted_transaction()
            session.emit(data)
        session.push_local(LocalItem(run=reply))

    def _error(self, err: PgError, parse: bool = False) -> None:
        session = self.session

        async def fail() -> None:
            # PostgreSQL's Parse refuses a statement in a failed transaction (25P02) before it
            # analyses it or stores its name, so that error comes first.
            if parse and session.tx_status == "E":
                raise _aborted_transaction()
            raise err
        self.session.push_local(LocalItem(run=fail))


_U16 = struct.Struct("!H")
_I32 = struct.Struct("!i")


def _plain_bind(data: bytes, start: int, end: int) -> m.Bind | None:
    """The Bind message in data[start:end], read with a few slices and struct calls (what
    m.Bind.decode does with a Reader call per field, ≈ 5 µs for a prepared predict); None when it
    is anything but well-formed with names in ASCII (m.Bind.decode then gives the loop's answer)."""
    first = data.find(b"\x00", start, end)
    second = data.find(b"\x00", first + 1, end) if first >= 0 else -1
    if second < 0:
        return None
    names = data[start:second]
    if not names.isascii():
        return None
    portal, statement = names.decode().split("\x00")
    pos = second + 1
    (nformats,) = _U16.unpack_from(data, pos)
    formats = list(struct.unpack_from(f"!{nformats}h", data, pos + 2))
    pos += 2 + 2 * nformats
    (nparams,) = _U16.unpack_from(data, pos)
    pos += 2
    params: list[bytes | None] = []
    for _ in range(nparams):
        (size,) = _I32.unpack_from(data, pos)
        pos += 4
        if size == -1:
            params.append(None)
            continue
        if size < 0 or pos + size > end:
            return None
        params.append(data[pos:pos + size])
        pos += size
    (nresults,) = _U16.unpack_from(data, pos)
    results = list(struct.unpack_from(f"!{nresults}h", data, pos + 2))
    if pos + 2 + 2 * nresults != end or len(formats) not in (0, 1, nparams):
        return None
    return m.Bind(portal, statement, formats, params, results)


def _bind_params(prepared: LocalPrepared, msg: m.Bind) -> list:
    """A Bind's parameter values for a local statement, decoded by their types; PgError when
    the count or a value is wrong, as PostgreSQL words it."""
    oids = prepared.param_oids
    if len(msg.params) != len(oids):
        raise PgError(sqlstate.PROTOCOL_VIOLATION,
                      f'bind message supplies {len(msg.params)} parameters, but prepared statement '
                      f'"{msg.statement}" requires {len(oids)}')
    formats = msg.param_formats
    rewritten = prepared.route.kind == REWRITE
    try:
        return [None if v is None or (rewritten and not oids[i]) else decode_param(
            oids[i] or types.TEXT, v, bool(format_code(formats, i)))
            for i, v in enumerate(msg.params)]
    except PgError:
        raise
    except Exception as exc:
        raise PgError(sqlstate.INVALID_BINARY_REPRESENTATION,
                      f"incorrect binary data format in bind parameter: {exc}") from None


def _name(raw: bytes) -> str | None:
    """A statement or portal name; None when it is not UTF-8, so it can name nothing local."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def _store(names: dict, name: str, value) -> Callable[[], None]:
    """names[name] = value now; returns what restores the previous entry, if value is still there."""
    previous = names.get(name)
    names[name] = value

    def undo() -> None:
        if names.get(name) is value:
            if previous is None:
                del names[name]
            else:
                names[name] = previous
    return undo


def _aborted_transaction() -> PgError:
    return PgError(sqlstate.IN_FAILED_SQL_TRANSACTION,
                   "current transaction is aborted, commands ignored until end of transaction block")
