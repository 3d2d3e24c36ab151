"""One client connection after its startup: the message loop, the upstream side, the lifecycle.

The session is driven by asyncio Protocol callbacks (no per-message coroutine on the hot path):
client bytes are framed and routed by `_pump`; upstream bytes are scanned by `on_upstream_data`
and relayed in whole runs. Ordering rests on one FIFO of `Pending`/`LocalItem` entries
(pipeline/fifo.py): every upstream answer and every local answer is emitted when its entry
reaches the head, so mixed pipelines come out exactly in the order PostgreSQL would produce
them. Which message queues which entry, and which answer finishes it, is the table in
pipeline/rules.py; the general path and both relay fast paths use it alike. Local statements go
to the runner the server gives the session (`ctx.new_runner`), so this layer imports no SQL.
"""
from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from itertools import islice
from typing import Any

from protocol import messages as m
from protocol import sqlstate
from protocol.errors import PgError, ProtocolViolation, error_response, notice_response
from protocol.framing import Framer

from ..pipeline.consumers import Discard
from ..pipeline.fifo import Consumer, LocalItem, Pending, awaits_upstream
from ..pipeline.internal import FLUSH
from ..pipeline.rules import (ANSWER_KIND, ASYNC, B, C, D, E, ERROR, EXT, FINISHED_BY, NOTICE, P, Q, READY, S,
                              SIMPLE, SYNC, X, finishes, forwarded_kind, mentions_pgml, skips_to_sync)
from .context import ProxyContext
from .linger import close_after_eof
from .relay import RelayCore
from .startup import StartupPhase

log = logging.getLogger("pgml_server.session")

_I32 = struct.Struct("!i")
_TERMINATE = b"X\x00\x00\x00\x04"
# A statement the upstream cannot parse: sent after a local error so the upstream, too, fails
# the transaction (or the pipeline's implicit transaction) exactly as PostgreSQL would.
_FAIL_SQL = "pgml local statement failed"

# Bytes of a client's outgoing buffer above which we stop reading the upstream (and vice versa).
_HIGH_WATER = 1 << 20


class Session(StartupPhase):
    """The state of one client connection and its private upstream connection."""

    def __init__(self, ctx: ProxyContext, transport: asyncio.Transport, protocol: asyncio.Protocol) -> None:
        self.ctx = ctx
        self.client = transport
        self.client_protocol = protocol
        self.upstream: asyncio.Transport | None = None
        self.upstream_tls = False
        self.framer = Framer(startup=True, max_message_size=ctx.config.max_message_size)
        self.phase = "startup"          # startup → connecting → auth → ready → closed
        self.startup_params: dict[str, str] = {}
        self.key: tuple[int, bytes] | None = None   # the client's BackendKeyData (upstream pid, our secret)
        self.upstream_key: tuple[int, bytes] | None = None
        self.queue: deque = deque()
        self.out: list = []             # bytes for the client, in order, written once per callback
        self.ubuf = b""                 # incomplete upstream message bytes
        self.relay_left = 0             # bytes of a client-bound message still to pass through
        self.upstream_said_fatal = False  # a FATAL ErrorResponse of the upstream was relayed
        self.tx_status = "I"
        self.batch_dirty = False        # an Execute ran since the last Sync (implicit transaction open)
        self.failed_until_sync = False  # extended protocol error: discard client messages until Sync
        self.unsynced = False           # a client message went upstream since the client's last Sync
        self.blocked = False            # a local coroutine owns the session; client frames wait
        self.local_task: asyncio.Task | None = None
        self.prepared: dict[str, Any] = {}       # local prepared statements (the runner's)
        self.portals: dict[str, Any] = {}        # local portals (the runner's)
        self.runner = ctx.new_runner(self)
        self.readable_models: set[int] = set()   # models this client's role was seen to read
        self._frame_type = 0                      # type of the frame being routed (for _malformed)
        self._deferred = None                     # a frame to route again (route_after_answers)
        # The compiled relay core (relay.py): set when the session is ready and eligible (no TLS);
        # None again once it must never attach (after end of file or a socket error it met).
        self.relay: RelayCore | None = None
        self.relayed = False                      # the relay thread owns both sockets now
        self.relay_id = 0
        self.relay_cooldown = 0                   # quiescent points to wait before attaching again
        self._resuming = False
        self.startup_timer = asyncio.get_running_loop().call_later(
            ctx.config.startup_timeout, self._startup_timed_out)
        ctx.sessions.add(self)

    # ------------------------------------------------------------------ client side

    def on_client_data(self, data: bytes) -> None:
        if self.phase == "closed":
            return
        if self.phase == "ready" and (self._answer_packet(data) if self.prepared else self._forward_packet(data)):
            self._flush_client()
            return
        try:
            self.framer.feed(data)
            if self.phase == "startup":
                self._startup_frames()
            elif self.phase == "auth":
                self._auth_frames()
            elif self.phase == "ready":
                self._pump()
            # 'connecting': frames wait in the framer
        except PgError as err:
            self._fatal(err)
        except Exception as exc:   # a bug must close this connection only, with a message
            log.exception("session failed")
            self._fatal(PgError(sqlstate.INTERNAL_ERROR, f"pgml-server internal error: {exc}", severity="FATAL"))
        self._flush_client()

    # ------------------------------------------------------------------ the message loop

    def _pump(self) -> None:
        """Route every buffered client message until a local coroutine must run first."""
        # The pump also runs after a local step and on upstream data, outside on_client_data's
        # handler: a framing error (bad length or type byte) met there must still end the
        # connection with its FATAL, not vanish in a task and leave the client hanging (fuzz).
        while True:
            try:
                self._pump_frames()
                return
            except PgError as err:
                if err.severity == "FATAL" or self.phase != "ready":
                    self._fatal(err)
                    return
                self._malformed(err)
            except UnicodeDecodeError:
                self._malformed(PgError(sqlstate.CHARACTER_NOT_IN_REPERTOIRE,
                                        'invalid byte sequence for encoding "UTF8"'))
            except ValueError:     # a missing NUL met while peeking at statement and portal names
                self._malformed(ProtocolViolation("invalid string in message"))   # PostgreSQL's wording
            except Exception as exc:   # a bug: this connection ends with a message, it never hangs
                log.exception("session failed")
                self._fatal(PgError(sqlstate.INTERNAL_ERROR, f"pgml-server internal error: {exc}",
                                    severity="FATAL"))
                return

    def _forward_packet(self, data: bytes) -> bool:
        """The forwarding fast path: a packet of whole messages, none of them ours, goes upstream
        as it came (one write, no per-message Frame) with the FIFO entries _pump_frames would
        queue for it. Returns False, having changed nothing, whenever _pump_frames could decide
        differently: a local statement or portal exists, 'pgml' occurs anywhere in the packet, a
        local step is running, an error is skipping to Sync, the packet holds a partial,
        malformed or Terminate message, or a Sync might be answered locally."""
        if (self.blocked or self.failed_until_sync or self.prepared or self.portals
                or self.upstream is None or mentions_pgml(data)):
            return False
        kinds = self.framer.whole_message_types(data)
        if kinds is None:
            return False
        pending: list[int] = []
        unsynced, dirty = self.unsynced, self.batch_dirty
        for t in kinds:
            kind = ANSWER_KIND[t]
            if kind == SYNC:
                if not unsynced and not awaits_upstream(self.queue):
                    return False            # perhaps answered locally: _pump_frames decides
                pending.append(SYNC)
                unsynced = dirty = False
                continue
            if t == X:
                return False
            if kind is not None:
                pending.append(kind)
            if t == E:
                dirty = True
            unsynced = True                 # Flush and COPY messages too, as in _pump_frames
        self.queue.extend(map(Pending, pending))
        self.unsynced, self.batch_dirty = unsynced, dirty
        self.upstream.write(data)
        self._drain()
        return True

    def _answer_packet(self, data: bytes) -> bool:
        """The local fast path: a packet that is one prepared pgml.predict call (Bind, Execute,
        Sync) answered whole by the runner, when nothing is outstanding, so its answer is the one
        _pump_frames would queue. False, having changed nothing, otherwise (the runner decides
        whether the packet is such a call)."""
        if (self.blocked or self.failed_until_sync or self.unsynced or self.queue or self._deferred is not None
                or self.tx_status == "E" or self.framer.buffered()):
            return False
        answer = self.runner.answer_packet(data)
        if answer is None:
            return False
        if self.out:
            self.out.append(answer)
        else:
            self.client.write(answer)       # one write, no join (the caller's flush finds nothing)
        self.batch_dirty = False
        return True

    def _malformed(self, err: PgError) -> None:
        """A malformed message on the local path (a pgml statement or a name a local one owns):
        PostgreSQL answers ERROR and goes on (skipping to Sync in the extended protocol), so the
        error takes its place in the FIFO rather than closing the connection (found by the fuzz)."""
        async def fail() -> None:
            raise err
        self.push_local(LocalItem(run=fail, extended=self._frame_type != Q))
        if self.upstream is not None and awaits_upstream(self.queue):
            # The error waits for the answers to what the pump forwarded before it, which went
            # out without Sync or Flush (the pump stopped on the bad message): ask for them now
            # (found by the live fuzz test: a malformed Bind after a forwarded Parse hung).
            self.upstream.write(FLUSH)
        self._drain()

    def _pump_frames(self) -> None:
        out: list = []
        queue = self.queue
        framer = self.framer
        was_blocked = self.blocked
        synced_at = 0                   # len(out) at this pump's last Sync
        try:
            while not self.blocked and (frame := self._deferred or framer.next_frame()) is not None:
                self._deferred = None
                t = self._frame_type = frame.type
                if self.failed_until_sync and t != S:
                    if t == X:
                        self._client_terminated()
                        return
                    continue
                if t == Q:
                    if mentions_pgml(frame.payload):
                        self.runner.simple_query(frame, out)
                    else:
                        self._forward(frame, out)
                elif t == P:
                    if mentions_pgml(frame.payload) or self.prepared:
                        self.runner.parse(frame, out)
                    else:
                        self._forward(frame, out)
                elif t == E:
                    if self.portals and self.runner.is_local_portal(frame.payload):
                        self.runner.execute(frame)
                    else:
                        self._forward(frame, out)
                        self.batch_dirty = True
                elif t == B or t == D or t == C:
                    if (self.prepared or self.portals) and self.runner.handles(t, frame.payload):
                        self.runner.dispatch(t, frame, out)
                    else:
                        self._forward(frame, out)
                elif t == S:
                    # (a Sync with a body is malformed: the upstream answers it with 08P01; fuzz)
                    if (self.unsynced or len(out) > synced_at or self.failed_until_sync or len(frame.payload)
                            or awaits_upstream(queue)):
                        self._forward(frame, out)
                    else:
                        # Only local messages since the last Sync (a prepared pgml.predict): the upstream
                        # has no implicit transaction to end and every answer it owed has arrived, so its
                        # status is known. Answering here keeps the hot path off the upstream.
                        queue.append(LocalItem(data=m.ready_for_query(self.tx_status)))
                    synced_at = len(out)
                    self.unsynced = False
                    self.failed_until_sync = False
                    self.batch_dirty = False
                elif t == X:
                    self._client_terminated()
                    return
                else:
                    # FunctionCall, Flush, CopyData/CopyDone/CopyFail and anything unknown: the
                    # upstream decides.
                    self._forward(frame, out)
        finally:
            if len(out) > synced_at:
                self.unsynced = True
            if self.upstream is not None:
                if self.blocked and not was_blocked and awaits_upstream(queue):
                    # A local step waits for the upstream's answers to what precedes it, which a
                    # pipelining client may have sent in an earlier packet without Sync or Flush.
                    # (Any forwarded message counts, not only the head: local answers ahead of it
                    # are emitted at once and must not leave the upstream holding its answer.)
                    out.append(FLUSH)
                if out:
                    self.upstream.write(b"".join(out))
        self._drain()

    def _forward(self, frame, out: list) -> None:
        """Send a client message upstream unchanged, with the FIFO entry its answer fills (if any)."""
        out.append(frame.raw)
        kind = forwarded_kind(frame.type, frame.payload)
        if kind is not None:
            self.queue.append(Pending(kind))

    def route_after_answers(self, frame) -> None:
        """Route `frame` again once every answer queued before it has arrived.

        Whether PostgreSQL stores (or closes) a statement or portal depends on the messages before
        it in the batch: after an error it skips everything up to Sync. A local Parse, Bind or
        Close routed while such an answer is outstanding therefore waits behind a barrier; if
        the batch fails, the barrier is dropped and the frame is skipped like the rest (found by
        the protocol fuzz test: a skipped local Parse must not make a later one a duplicate)."""
        self._deferred = frame

        async def barrier() -> None:
            return None
        self.push_local(LocalItem(run=barrier))

    def push_local(self, item: LocalItem) -> None:
        """Queue a local answer; a coroutine item stops the pump until it has run."""
        self.queue.append(item)
        if item.run is not None:
            self.blocked = True

    def _drain(self) -> None:
        """Emit local answers that reached the head; start a local coroutine that did."""
        queue = self.queue
        while queue and isinstance(queue[0], LocalItem):
            item = queue[0]
            if item.run is None:
                queue.popleft()
                self.out.append(item.data)
                continue
            if self.local_task is None:
                queue.popleft()
                self.local_task = asyncio.ensure_future(self._run_local(item))
            return

    async def _run_local(self, item: LocalItem) -> None:
        try:
            await item.run()
        except asyncio.CancelledError:
            if self.phase != "closed":
                await self._local_failed(PgError(sqlstate.QUERY_CANCELED,
                                                 "canceling statement due to user request"), item)
        except PgError as err:
            await self._local_failed(err, item)
        except Exception as exc:  # a bug must not take the session down with it
            log.exception("local statement failed")
            await self._local_failed(PgError(sqlstate.INTERNAL_ERROR, f"pgml-server internal error: {exc}"), item)
        finally:
            self.local_task = None
            self.blocked = False
        if self.phase == "ready":
            self._flush_client()
            self._pump()
            self._flush_client()
            if self.relay is not None:
                self._maybe_relay()

    async def _local_failed(self, err: PgError, item: LocalItem) -> None:
        """Report a local error the way PostgreSQL reports its own, upstream transaction included."""
        self.emit(err.to_response())
        try:
            if item.extended:
                # Unless the upstream already skips to Sync, make it fail too, so the transaction
                # (explicit, or the pipeline's implicit one) ends exactly as PostgreSQL would end it.
                if not self.failed_until_sync and (self.tx_status != "I" or self.batch_dirty):
                    await self.run_internal_failure(extended=True)
                self.failed_until_sync = True
            else:
                if self.tx_status == "T":
                    await self.run_internal_failure(extended=False)
                self.emit(m.ready_for_query(self.tx_status))
        except (ConnectionError, PgError):
            pass
        self._flush_client()

    async def run_internal_failure(self, *, extended: bool) -> None:
        consumer = Discard()
        if extended:
            # A named statement: a failed Parse creates nothing and leaves the client's unnamed one alone.
            self.send_internal(m.Parse("__pgml_fail", _FAIL_SQL, []).encode() + FLUSH, [EXT], consumer)
        else:
            self.send_internal(m.Query(_FAIL_SQL).encode(), [SIMPLE], consumer)
        await consumer.done

    def send_internal(self, data: bytes, kinds: list[int], consumer: Consumer) -> None:
        consumer.outstanding += len(kinds)
        for kind in kinds:
            self.queue.append(Pending(kind, consumer))
        self.upstream.write(data)

    def emit(self, data: bytes) -> None:
        self.out.append(data)

    def flush_client(self) -> None:
        self._flush_client()

    def _flush_client(self) -> None:
        if self.out:
            data = b"".join(self.out)
            self.out.clear()
            if self.phase != "closed":
                self.client.write(data)

    # ------------------------------------------------------------------ upstream side

    def on_upstream_data(self, data: bytes) -> None:
        if self.phase == "closed":
            return
        if self.phase == "auth":
            self._auth_upstream(data)
            self._flush_client()
            if self.phase == "ready":
                if not (self.upstream_tls or self.client_tls):
                    self.relay = getattr(self.ctx, "relay", None)
                self._maybe_relay()
            return
        if not self.relay_left and not self.ubuf and not self.blocked and self._relay_packet(data):
            return
        out = self.out
        if self.relay_left:
            # The tail of a large client-bound message: pass it through as it comes.
            n = len(data)
            if n <= self.relay_left:
                self.relay_left -= n
                out.append(data)
                self._flush_client()
                return
            out.append(data[: self.relay_left])
            data = data[self.relay_left:]
            self.relay_left = 0
        buf = self.ubuf + data if self.ubuf else data
        self.ubuf = b""
        n = len(buf)
        pos = run = 0
        queue = self.queue
        unpack = _I32.unpack_from
        while n - pos >= 5:
            t = buf[pos]
            end = pos + 1 + unpack(buf, pos + 1)[0]
            head = queue[0] if queue else None
            consumer = head.consumer if head is not None and t not in ASYNC else None
            if end > n:
                if consumer is None and t != READY and not isinstance(head, LocalItem):
                    # Relay what we have of a large message, the rest as it arrives.
                    self._account(t, head, None)
                    self.relay_left = end - n
                    pos = n
                break
            if t == NOTICE and head is not None and head.consumer is not None and head.consumer.quiet:
                # A notice raised by the server's own bookkeeping statement: not the client's.
                if pos > run:
                    out.append(buf[run:pos])
                pos = run = end
                continue
            if consumer is not None and ((t == 0x44 and consumer.bulk) or (t == 0x64 and consumer.bulk_copy)):
                # A run of DataRows or CopyData for a consumer that can take them as one block
                # (vectorised: a 1M-row training COPY is 1M messages).
                after = consumer.on_rows(buf, pos, n) if t == 0x44 else consumer.on_copy_data(buf, pos, n)
                if after > pos:
                    if pos > run:
                        out.append(buf[run:pos])
                    pos = run = after
                    continue
            if consumer is not None:
                if pos > run:
                    out.append(buf[run:pos])
                run = end
                consumer.on_message(t, buf[pos + 5:end])
            elif t == ERROR and _is_fatal(buf[pos + 5:end]):
                self.upstream_said_fatal = True     # relayed: the client has PostgreSQL's own last word
            if head is not None and t not in ASYNC:
                self._account(t, head, buf[pos + 5:end] if t == READY else None)
            pos = end
            if queue and isinstance(queue[0], LocalItem):
                if pos > run:
                    out.append(buf[run:pos])
                run = pos
                self._drain()
        if pos > run:
            out.append(buf[run:pos])
        if pos < n:
            self.ubuf = buf[pos:]
        self._flush_client()
        if self.queue and isinstance(self.queue[0], LocalItem):
            self._drain()
            self._flush_client()
        if not self.blocked and (self.framer.buffered() or self._deferred is not None):
            # An upstream error may have dropped the local step the pump was waiting for.
            self._pump()
            self._flush_client()
        if self.relay is not None:
            self._maybe_relay()

    def _relay_packet(self, data: bytes) -> bool:
        """The relay fast path: when `data` is exactly whole messages, none an ErrorResponse, and
        the FIFO entries they can advance are plain relayed ones (no consumer, no local answer),
        only the FIFO needs the messages' types; the packet goes to the client as received.
        Returns False, having changed nothing, otherwise (the general loop below handles it)."""
        n, pos = len(data), 0
        unpack = _I32.unpack_from
        ends = []
        while pos < n:
            if n - pos < 5 or data[pos] == ERROR:   # an error skips entries to Sync: the general loop
                return False
            pos += 1 + unpack(data, pos + 1)[0]
            ends.append(pos)
        if pos != n:
            return False
        queue = self.queue
        # Each message advances the FIFO by one entry at most, so only that many need checking
        # (not the whole FIFO, which a long pipeline makes long: quadratic otherwise).
        for item in islice(queue, len(ends)):
            if type(item) is not Pending or item.consumer is not None:
                return False
        start = 0
        for end in ends:
            t = data[start]
            if t not in ASYNC and queue and t in FINISHED_BY[queue[0].kind]:     # rules.finishes
                if t == READY:
                    self.tx_status = chr(data[start + 5])
                queue.popleft()
            start = end
        self.out.append(data)
        if queue and type(queue[0]) is LocalItem:    # a local answer right after these ones
            self._drain()
        self._flush_client()
        if self.framer.buffered() or self._deferred is not None:
            self._pump()
            self._flush_client()
        if self.relay is not None and not queue:
            self._maybe_relay()
        return True

    # ------------------------------------------------------------------ the compiled relay core

    def _maybe_relay(self) -> None:
        """Hand both sockets to the relay thread when nothing here needs them: nothing owed by the
        upstream or to a local step, nothing buffered either way, no local statement or portal
        (their Binds and Executes are the server's), no TLS (the thread relays plain sockets)."""
        if (self.relay is None or self.relayed or self._resuming or self.phase != "ready" or self.queue
                or self.blocked or self.prepared or self.portals or self.ubuf or self.relay_left
                or self.failed_until_sync or self.out or self._deferred is not None or self.local_task is not None
                or self.upstream is None or self.framer.buffered()):
            return
        if self.relay_cooldown:
            self.relay_cooldown -= 1
            return
        if self.relay.attach(self):
            self.relayed = True

    def resume_from_relay(self, state: tuple, *, resume: bool = True) -> None:
        """Carry on from the state the relay thread hands back: its FIFO entries and flags become
        ours, the bytes it had not written are written, and the bytes it had read but not passed
        on are handled as if they had just arrived (resume=False: the session is closing; only
        the writes are done)."""
        (_, reason, kinds, tx, unsynced, dirty, relay_left, client_in, upstream_in, to_client, to_upstream) = state
        self.relayed = False
        self.queue.extend(map(Pending, kinds))
        self.tx_status, self.unsynced, self.batch_dirty, self.relay_left = tx, bool(unsynced), bool(dirty), relay_left
        cooldown = RelayCore.cooldown_after(reason)
        if cooldown is None:
            self.relay = None
        else:
            self.relay_cooldown = cooldown
        if self.phase == "closed":
            return
        if resume:
            # Reading first: a write below may pause the other side again (flow control).
            self.client.resume_reading()
            self.upstream.resume_reading()
        if to_upstream:
            self.upstream.write(to_upstream)
        if to_client:
            self.client.write(to_client)
        if not resume:
            return
        self._resuming = True
        try:
            if upstream_in:
                self.on_upstream_data(upstream_in)
            if client_in and self.phase != "closed":
                self.on_client_data(client_in)
        finally:
            self._resuming = False
        if self.relay is not None:
            self._maybe_relay()

    def fail_internal(self) -> None:
        """End this session after a bug outside its callbacks (relay.py), with PostgreSQL's XX000."""
        self.relayed = False
        self._fatal(PgError(sqlstate.INTERNAL_ERROR, "pgml-server internal error", severity="FATAL"))

    def _take_back(self) -> None:
        """Before this code writes to or closes the sockets itself: the thread lets go of them."""
        if self.relayed:
            self.ctx.relay.detach(self, resume=False)

    def _account(self, t: int, head, payload) -> None:
        """Advance the FIFO for one upstream response of type t (the rules of pipeline/rules.py)."""
        if head is None or isinstance(head, LocalItem) or not finishes(head.kind, t):
            return
        if t == READY:
            self.tx_status = chr(payload[0])
        self._finish(self.queue.popleft())
        if skips_to_sync(head.kind, t):
            self._drop_until_sync()

    def _finish(self, item) -> None:
        if isinstance(item, Pending) and item.consumer is not None:
            item.consumer.item_finished()

    def _drop_until_sync(self) -> None:
        """After an error the upstream skips everything up to Sync; so do we."""
        queue = self.queue
        while queue:
            head = queue[0]
            if isinstance(head, Pending) and head.kind == SYNC:
                return
            queue.popleft()
            self._finish(head)
            if isinstance(head, LocalItem) and head.run is not None:
                self.blocked = False
        self.failed_until_sync = True

    # ------------------------------------------------------------------ lifecycle

    def set_upstream_reading(self, on: bool) -> None:
        if self.upstream is not None and self.phase != "closed":
            (self.upstream.resume_reading if on else self.upstream.pause_reading)()

    def set_client_reading(self, on: bool) -> None:
        if self.phase != "closed":
            (self.client.resume_reading if on else self.client.pause_reading)()

    def cancel(self) -> None:
        """A CancelRequest with this session's key: stop the upstream query and the local step."""
        asyncio.ensure_future(self._cancel())

    async def _cancel(self) -> None:
        # The upstream's cancel goes first and is complete (the backend signalled) before the
        # local step is stopped: the client can send its next statement only after the local
        # step's 57014, and by then a cancel that found the backend idle has been ignored rather
        # than left to hit that next statement (found by tests/test_sql_api.py's cancel test).
        task = self.local_task
        if self.upstream_key is not None:
            await self.ctx.cancel_upstream(*self.upstream_key)
        if task is not None and task is self.local_task and not task.done():
            task.cancel()

    def _startup_timed_out(self) -> None:
        if self.phase in ("startup", "tls", "connecting", "auth"):
            self._fatal(PgError(sqlstate.PROTOCOL_VIOLATION, "canceling authentication due to timeout",
                                severity="FATAL"))

    def _fatal(self, err: PgError) -> None:
        if self.phase == "closed":
            return
        self._take_back()
        self.out.append(err.to_response())
        self._flush_client()
        self._close()

    def on_client_lost(self) -> None:
        if self.phase == "closed":
            return
        # The client is gone: stop what runs for it upstream, then release the connection.
        if self.queue and self.upstream_key is not None:
            asyncio.ensure_future(self.ctx.cancel_upstream(*self.upstream_key))
        self._close()

    def _client_terminated(self) -> None:
        """Terminate while answers are still owed (asyncpg's terminate(), a killed pipeline): nobody
        will read them, so cancel what runs upstream, as for a lost client, instead of leaving the
        backend (and its locks) busy until the statement ends on its own."""
        if self.upstream_key is not None and any(isinstance(i, Pending) for i in self.queue):
            asyncio.ensure_future(self.ctx.cancel_upstream(*self.upstream_key))
        self._close()

    def on_upstream_lost(self) -> None:
        if self.phase == "closed":
            return
        for item in self.queue:
            if isinstance(item, Pending) and item.consumer is not None:
                item.consumer.aborted()
        if self.phase in ("auth", "ready") and not self.upstream_said_fatal:
            self.out.append(error_response(
                sqlstate.ADMIN_SHUTDOWN if self.phase == "ready" else sqlstate.CONNECTION_FAILURE,
                "terminating connection because the upstream PostgreSQL closed it",
                severity="FATAL"))
        self._flush_client()
        self._close(linger=True)

    def _close(self, *, linger: bool = False) -> None:
        """End the session; `linger`: the upstream ended it, so the client gets end-of-file and
        may still write (see linger.py) instead of a socket closed at once."""
        if self.phase == "closed":
            return
        self._take_back()
        self.phase = "closed"
        self.startup_timer.cancel()
        self.ctx.sessions.discard(self)
        self.ctx.cancel_keys.release(self.key)
        if self.local_task is not None:
            self.local_task.cancel()
        self._close_upstream()
        if linger:
            close_after_eof(self.client)
        else:
            self.client.close()

    def _close_upstream(self) -> None:
        if self.upstream is not None:
            try:
                self.upstream.write(_TERMINATE)
            except Exception:
                pass
            self.upstream.close()

    def notice(self, message: str, *, detail: str | None = None) -> None:
        """Send a NOTICE to the client now (used for training progress)."""
        self.out.append(notice_response(message, detail=detail))
        self._flush_client()


def _is_fatal(payload: bytes) -> bool:
    """Whether an ErrorResponse ends the backend (severity FATAL or PANIC, e.g. pg_terminate_backend)."""
    try:
        return m.ErrorResponse.decode(payload).fields.get("S") in ("FATAL", "PANIC")
    except Exception:       # a malformed error is the client's to see, not ours to judge
        return False
