"""One client connection: startup, relayed authentication, then the message loop.

The session is driven by asyncio Protocol callbacks (no per-message coroutine on the hot path):
client bytes are framed and routed by `_pump`; upstream bytes are scanned by `_on_upstream_data`
and relayed in whole runs. Ordering rests on one FIFO of `Pending`/`LocalItem` entries
(see pending.py): every upstream answer and every local answer is emitted when its entry reaches
the head, so mixed pipelines come out exactly in the order PostgreSQL would produce them.
"""
from __future__ import annotations

import asyncio
import logging
import re
import struct
from collections import deque
from itertools import islice
from typing import TYPE_CHECKING

from protocol import messages as m
from protocol import sqlstate
from protocol.errors import PgError, ProtocolViolation, error_response, notice_response
from protocol.framing import FRONTEND_LIMITS, Framer

from . import pending as pq
from .local import LocalPortal, LocalPrepared, LocalRunner
from .pending import Consumer, LocalItem, Pending

if TYPE_CHECKING:
    from .server import ServerContext

log = logging.getLogger("pgml_server.session")

_PGML = re.compile(rb"pgml", re.IGNORECASE)
_I32 = struct.Struct("!i")
_HDR = struct.Struct("!cI")
_FLUSH = b"H\x00\x00\x00\x04"
_SYNC = b"S\x00\x00\x00\x04"
_TERMINATE = b"X\x00\x00\x00\x04"
# A statement the upstream cannot parse: sent after a local error so the upstream, too, fails
# the transaction (or the pipeline's implicit transaction) exactly as PostgreSQL would.
_FAIL_SQL = "pgml local statement failed"

# Bytes of a client's outgoing buffer above which we stop reading the upstream (and vice versa).
_HIGH_WATER = 1 << 20

Q, P, B, D, E, S, H, C, X, F = (ord(c) for c in "QPBDESHCXF")
COPY_DATA, COPY_DONE, COPY_FAIL = ord("d"), ord("c"), ord("f")
Z, ERR = ord("Z"), ord("E")


class ClientProtocol(asyncio.Protocol):
    def __init__(self, ctx: "ServerContext") -> None:
        self.ctx = ctx
        self.session: Session | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.session = Session(self.ctx, transport, self)

    def data_received(self, data: bytes) -> None:
        self.session.on_client_data(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.session.on_client_lost()

    def pause_writing(self) -> None:
        self.session.set_upstream_reading(False)

    def resume_writing(self) -> None:
        self.session.set_upstream_reading(True)


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, session: "Session") -> None:
        self.session = session
        self.handshake: asyncio.Future | None = None    # SSL negotiation answer byte

    def data_received(self, data: bytes) -> None:
        if self.handshake is not None and not self.handshake.done():
            self.handshake.set_result(data)
            return
        self.session.on_upstream_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handshake is not None and not self.handshake.done():
            self.handshake.set_exception(ConnectionError("upstream closed the connection"))
        self.session.on_upstream_lost()

    def pause_writing(self) -> None:
        self.session.set_client_reading(False)

    def resume_writing(self) -> None:
        self.session.set_client_reading(True)


class Session:
    """The state of one client connection and its private upstream connection."""

    def __init__(self, ctx: "ServerContext", transport: asyncio.Transport, protocol: ClientProtocol) -> None:
        self.ctx = ctx
        self.client = transport
        self.client_protocol = protocol
        self.upstream: asyncio.Transport | None = None
        self.upstream_tls = False
        self.framer = Framer(startup=True, max_message_size=ctx.config.max_message_size)
        self.phase = "startup"          # startup → connecting → auth → ready → closed
        self.startup_params: dict[str, str] = {}
        self.key = ctx.cancel_keys.allocate(self)
        self.upstream_key: tuple[int, bytes] | None = None
        self.queue: deque = deque()
        self.out: list = []             # bytes for the client, in order, written once per callback
        self.ubuf = b""                 # incomplete upstream message bytes
        self.relay_left = 0             # bytes of a client-bound message still to pass through
        self.tx_status = "I"
        self.batch_dirty = False        # an Execute ran since the last Sync (implicit transaction open)
        self.failed_until_sync = False  # extended protocol error: discard client messages until Sync
        self.unsynced = False           # a client message went upstream since the client's last Sync
        self.blocked = False            # a local coroutine owns the session; client frames wait
        self.local_task: asyncio.Task | None = None
        self.prepared: dict[str, LocalPrepared] = {}
        self.portals: dict[str, LocalPortal] = {}
        self.runner = LocalRunner(self)
        self.readable_models: set[int] = set()   # models this client's role was seen to read
        self._frame_type = 0                      # type of the frame being routed (for _malformed)
        self._deferred = None                     # a frame to route again (route_after_answers)
        self.startup_timer = asyncio.get_running_loop().call_later(
            ctx.config.startup_timeout, self._startup_timed_out)
        ctx.sessions.add(self)

    # ------------------------------------------------------------------ client side

    def on_client_data(self, data: bytes) -> None:
        if self.phase == "closed":
            return
        if self.phase == "ready" and self._forward_packet(data):
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

    def _startup_frames(self) -> None:
        while self.phase == "startup" and (frame := self.framer.next_frame()) is not None:
            msg = m.decode_startup_packet(frame.payload)
            if isinstance(msg, m.SSLRequest):
                self._answer_ssl()
            elif isinstance(msg, m.GSSENCRequest):
                self.client.write(b"N")
            elif isinstance(msg, m.CancelRequest):
                self.ctx.cancel_keys.cancel(msg.pid, msg.secret)
                self._close()
            else:
                self._start(msg)

    def _answer_ssl(self) -> None:
        if self.ctx.tls_context is None:
            self.client.write(b"N")
            return
        if self.framer.buffered():
            raise ProtocolViolation("received unencrypted data after SSL request", severity="FATAL")
        self.client.write(b"S")
        self.phase = "tls"
        asyncio.ensure_future(self._upgrade_client_tls())

    async def _upgrade_client_tls(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.client = await loop.start_tls(self.client, self.client_protocol, self.ctx.tls_context,
                                               server_side=True)
        except Exception as exc:  # handshake failure: nothing useful can be sent
            log.info("client TLS handshake failed: %s", exc)
            self._close()
            return
        self.phase = "startup"

    @property
    def client_tls(self) -> bool:
        return self.client.get_extra_info("sslcontext") is not None

    def _start(self, msg: m.StartupMessage) -> None:
        if msg.version >> 16 != 3:
            raise PgError(sqlstate.FEATURE_NOT_SUPPORTED,
                          f"unsupported frontend protocol {msg.version >> 16}.{msg.version & 0xFFFF}: "
                          "server supports 3.0 to 3.0", severity="FATAL")
        if self.ctx.client_count() > self.ctx.config.max_clients:
            raise PgError(sqlstate.TOO_MANY_CONNECTIONS, "sorry, too many clients already", severity="FATAL")
        self.startup_params = dict(msg.params)
        self.startup_msg = msg
        self.framer.set_typed()
        self.phase = "connecting"
        self.client.pause_reading()
        asyncio.ensure_future(self._connect_upstream())

    async def _connect_upstream(self) -> None:
        try:
            await self.ctx.open_upstream(self)
        except PgError as err:
            self._fatal(err)
            return
        except OSError as exc:
            self._fatal(PgError(sqlstate.CONNECTION_FAILURE,
                                f"pgml-server could not connect to the upstream PostgreSQL: {exc}",
                                severity="FATAL"))
            return
        if self.phase == "closed":
            self._close_upstream()
            return
        self.phase = "auth"
        self.upstream.write(self.startup_msg.encode())
        self.client.resume_reading()
        self._auth_frames()
        self._flush_client()

    def _auth_frames(self) -> None:
        # Password, SASLInitialResponse and SASLResponse messages pass through unchanged.
        while self.phase == "auth" and (frame := self.framer.next_frame()) is not None:
            if frame.type != ord("p"):
                if frame.type == X:
                    self._close()
                    return
                raise ProtocolViolation(f"expected password response, got message type {chr(frame.type)!r}",
                                        severity="FATAL")
            self._check_channel_binding(frame.payload)
            self.upstream.write(frame.raw)

    def _check_channel_binding(self, payload: memoryview) -> None:
        """A client that supports channel binding over TLS says so with gs2 flag 'y'; an upstream that
        itself runs TLS then refuses the login as a downgrade attack. Say clearly why, and what to do."""
        if not (self.upstream_tls and self.client_tls):
            return
        raw = bytes(payload)
        nul = raw.find(b"\x00")
        if nul < 0 or not raw.startswith(b"SCRAM-SHA-256\x00"):
            return
        if raw[nul + 5: nul + 6] == b"y":
            raise PgError(
                sqlstate.INVALID_AUTHORIZATION_SPECIFICATION,
                "SCRAM channel binding cannot pass through pgml-server",
                detail="Both the client link and the upstream link use TLS, so the client offers channel "
                       "binding, which binds to pgml-server's certificate, not the upstream's.",
                hint="Connect with channel_binding=disable, or let pgml-server reach the upstream "
                     "without TLS (sslmode=disable in --upstream) on a trusted network.",
                severity="FATAL")

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
                or self.upstream is None or _PGML.search(data) is not None):
            return False
        kinds = self.framer.whole_message_types(data)
        if kinds is None:
            return False
        pending: list[int] = []
        unsynced, dirty = self.unsynced, self.batch_dirty
        for t in kinds:
            if t == S:
                if not unsynced and not any(type(item) is Pending for item in self.queue):
                    return False            # perhaps answered locally: _pump_frames decides
                pending.append(pq.SYNC)
                unsynced = dirty = False
                continue
            if t == Q or t == F:
                pending.append(pq.SIMPLE)
            elif t == P or t == B or t == D or t == C or t == E:
                pending.append(pq.EXT)
                if t == E:
                    dirty = True
            elif t == X:
                return False
            unsynced = True                 # Flush and COPY messages too, as in _pump_frames
        self.queue.extend(map(Pending, pending))
        self.unsynced, self.batch_dirty = unsynced, dirty
        self.upstream.write(data)
        self._drain()
        return True

    def _malformed(self, err: PgError) -> None:
        """A malformed message on the local path (a pgml statement or a name a local one owns):
        PostgreSQL answers ERROR and goes on (skipping to Sync in the extended protocol), so the
        error takes its place in the FIFO rather than closing the connection (found by the fuzz)."""
        async def fail() -> None:
            raise err
        self.push_local(LocalItem(run=fail, extended=self._frame_type != Q))
        if self.upstream is not None and any(type(item) is Pending for item in self.queue):
            # The error waits for the answers to what the pump forwarded before it, which went
            # out without Sync or Flush (the pump stopped on the bad message): ask for them now
            # (found by the live fuzz test: a malformed Bind after a forwarded Parse hung).
            self.upstream.write(_FLUSH)
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
                    if _PGML.search(frame.payload) is None:
                        out.append(frame.raw)
                        queue.append(Pending(pq.SIMPLE))
                    else:
                        self._local_query(frame, out)
                elif t == P:
                    if _PGML.search(frame.payload) is None and not self.prepared:
                        out.append(frame.raw)
                        queue.append(Pending(pq.EXT))
                    else:
                        self.runner.parse(frame, out)
                elif t == E:
                    if self.portals and self.runner.is_local_portal(frame.payload):
                        self.runner.execute(frame)
                    else:
                        out.append(frame.raw)
                        queue.append(Pending(pq.EXT))
                        self.batch_dirty = True
                elif t == B or t == D or t == C:
                    if (self.prepared or self.portals) and self.runner.handles(t, frame.payload):
                        self.runner.dispatch(t, frame, out)
                    else:
                        out.append(frame.raw)
                        queue.append(Pending(pq.EXT))
                elif t == S:
                    # (a Sync with a body is malformed: the upstream answers it with 08P01; fuzz)
                    if (self.unsynced or len(out) > synced_at or self.failed_until_sync or len(frame.payload)
                            or any(type(item) is Pending for item in queue)):
                        out.append(frame.raw)
                        queue.append(Pending(pq.SYNC))
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
                elif t == F:
                    out.append(frame.raw)
                    queue.append(Pending(pq.SIMPLE))
                else:
                    # Flush, CopyData/CopyDone/CopyFail and anything unknown: the upstream decides.
                    out.append(frame.raw)
                    if t == H and len(frame.payload):
                        # A Flush with a body is malformed: PostgreSQL answers 08P01 and skips
                        # to Sync, so this one has an answer to wait for (found by the fuzz test).
                        queue.append(Pending(pq.EXT))
        finally:
            if len(out) > synced_at:
                self.unsynced = True
            if self.upstream is not None:
                if self.blocked and not was_blocked and any(type(item) is Pending for item in queue):
                    # A local step waits for the upstream's answers to what precedes it, which a
                    # pipelining client may have sent in an earlier packet without Sync or Flush.
                    # (Any forwarded message counts, not only the head: local answers ahead of it
                    # are emitted at once and must not leave the upstream holding its answer.)
                    out.append(_FLUSH)
                if out:
                    self.upstream.write(b"".join(out))
        self._drain()

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

    def _local_query(self, frame, out: list) -> None:
        self.runner.simple_query(frame, out)

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
        consumer = _Discard()
        if extended:
            # A named statement: a failed Parse creates nothing and leaves the client's unnamed one alone.
            self.send_internal(m.Parse("__pgml_fail", _FAIL_SQL, []).encode() + _FLUSH, [pq.EXT], consumer)
        else:
            self.send_internal(m.Query(_FAIL_SQL).encode(), [pq.SIMPLE], consumer)
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
            consumer = head.consumer if head is not None and t not in pq.ASYNC else None
            if end > n:
                if consumer is None and t != Z and not isinstance(head, LocalItem):
                    # Relay what we have of a large message, the rest as it arrives.
                    self._account(t, head, None)
                    self.relay_left = end - n
                    pos = n
                break
            if t == 0x4E and end <= n and head is not None and head.consumer is not None \
                    and head.consumer.quiet:
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
            if head is not None and t not in pq.ASYNC:
                self._account(t, head, buf[pos + 5:end] if t == Z else None)
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

    def _relay_packet(self, data: bytes) -> bool:
        """The relay fast path: when `data` is exactly whole messages, none an ErrorResponse, and
        the FIFO entries they can advance are plain relayed ones (no consumer, no local answer),
        only the FIFO needs the messages' types; the packet goes to the client as received.
        Returns False, having changed nothing, otherwise (the general loop below handles it)."""
        n, pos = len(data), 0
        unpack = _I32.unpack_from
        ends = []
        while pos < n:
            if n - pos < 5 or data[pos] == ERR:     # an error skips entries to Sync: the general loop
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
            if t not in pq.ASYNC and queue:
                if queue[0].kind == pq.EXT:
                    if t in pq.EXT_DONE:
                        queue.popleft()
                elif t == Z:
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
        return True

    def _account(self, t: int, head, payload) -> None:
        """Advance the FIFO for one upstream response of type t."""
        if head is None or isinstance(head, LocalItem):
            return
        kind = head.kind
        if kind == pq.EXT:
            if t == ERR:
                self._finish(self.queue.popleft())
                self._drop_until_sync()
            elif t in pq.EXT_DONE:
                self._finish(self.queue.popleft())
        elif t == Z:
            self.tx_status = chr(payload[0])
            self._finish(self.queue.popleft())

    def _finish(self, item) -> None:
        if isinstance(item, Pending) and item.consumer is not None:
            item.consumer.item_finished()

    def _drop_until_sync(self) -> None:
        """After an error the upstream skips everything up to Sync; so do we."""
        queue = self.queue
        while queue:
            head = queue[0]
            if isinstance(head, Pending) and head.kind == pq.SYNC:
                return
            queue.popleft()
            self._finish(head)
            if isinstance(head, LocalItem) and head.run is not None:
                self.blocked = False
        self.failed_until_sync = True

    def _auth_upstream(self, data: bytes) -> None:
        """Relay authentication; keep the upstream's cancel key and hand the client our own."""
        buf = self.ubuf + data if self.ubuf else data
        self.ubuf = b""
        pos, n = 0, len(buf)
        while n - pos >= 5:
            t = buf[pos]
            end = pos + 1 + _I32.unpack_from(buf, pos + 1)[0]
            if end > n:
                break
            payload = buf[pos + 5:end]
            if t == ord("K"):
                key = m.BackendKeyData.decode(payload) if hasattr(m.BackendKeyData, "decode") else None
                self.upstream_key = (_I32.unpack_from(payload, 0)[0], bytes(payload[4:]))
                self.out.append(m.BackendKeyData(self.key[0], self.key[1]).encode())
            elif t == ord("R"):
                self.out.append(self._filter_sasl(buf[pos:end], payload))
            elif t == Z:
                self.tx_status = chr(payload[0])
                self.out.append(buf[pos:end])
                self.phase = "ready"
                self.startup_timer.cancel()
                # PostgreSQL's per-type length limits from now on: an unknown type byte or an
                # oversized Sync/Describe/... closes the connection at once instead of waiting.
                self.framer.type_limits = FRONTEND_LIMITS
                pos = end
                break
            else:
                self.out.append(buf[pos:end])
                if t == ERR:
                    self._flush_client()
                    self._close()
                    return
            pos = end
        rest = buf[pos:]
        if self.phase == "ready":
            if rest:
                self.on_upstream_data(rest)
            self._pump()
        else:
            self.ubuf = rest

    @staticmethod
    def _filter_sasl(raw: bytes, payload: bytes) -> bytes:
        """SCRAM-SHA-256-PLUS binds to the TLS channel and cannot survive a relay: offer only plain SCRAM."""
        if _I32.unpack_from(payload, 0)[0] != 10:
            return raw
        mechanisms = [x for x in bytes(payload[4:]).split(b"\x00") if x and not x.endswith(b"-PLUS")]
        return m.AuthenticationSASL([x.decode() for x in mechanisms]).encode()

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
        if self.phase in ("auth", "ready"):
            self.out.append(error_response(
                sqlstate.ADMIN_SHUTDOWN if self.phase == "ready" else sqlstate.CONNECTION_FAILURE,
                "terminating connection because the upstream PostgreSQL closed it",
                severity="FATAL"))
        self._flush_client()
        self._close()

    def _close(self) -> None:
        if self.phase == "closed":
            return
        self.phase = "closed"
        self.startup_timer.cancel()
        self.ctx.sessions.discard(self)
        self.ctx.cancel_keys.release(self.key)
        if self.local_task is not None:
            self.local_task.cancel()
        self._close_upstream()
        self.client.close()

    def _close_upstream(self) -> None:
        if self.upstream is not None:
            try:
                self.upstream.write(_TERMINATE)
            except Exception:
                pass
            self.upstream.close()

    async def forward_simple_part(self, sql: str) -> bool:
        """Forward one statement of a multi-statement Query; relay its answer except ReadyForQuery."""
        consumer = _RelayExceptReady(self)
        self.send_internal(m.Query(sql).encode(), [pq.SIMPLE], consumer)
        await consumer.done
        return not consumer.failed

    def notice(self, message: str, *, detail: str | None = None) -> None:
        """Send a NOTICE to the client now (used for training progress)."""
        self.out.append(notice_response(message, detail=detail))
        self._flush_client()


class _Discard(Consumer):
    def on_message(self, msg_type: int, payload: bytes) -> None:
        pass


class _RelayExceptReady(Consumer):
    """Relays a forwarded statement's answer to the client, keeping its ReadyForQuery back."""

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self.failed = False

    def on_message(self, msg_type: int, payload: bytes) -> None:
        if msg_type == Z:
            return
        if msg_type == ERR:
            self.failed = True
        self.session.emit(bytes((msg_type,)) + _I32.pack(len(payload) + 4) + bytes(payload))
