"""A client connection's first phases: startup packets (SSL, GSSENC, cancel), the upstream
connection, and the relayed authentication exchange.

`StartupPhase` is the part of `Session` that runs before the message loop: the server admits
exactly whom the upstream admits (trust, md5, SCRAM-SHA-256 pass through unchanged), keeps the
upstream's cancel key and gives the client the server's own.
"""
from __future__ import annotations

import asyncio
import logging
import struct

from protocol import messages as m
from protocol import sqlstate
from protocol.errors import PgError, ProtocolViolation
from protocol.framing import FRONTEND_LIMITS

from ..pipeline.rules import ERROR, READY, X

log = logging.getLogger("pgml_server.session")

_I32 = struct.Struct("!i")


class StartupPhase:
    """Startup and authentication methods of `proxy.session.Session` (which holds the state)."""

    # ------------------------------------------------------------------ startup packets

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
                self.upstream_key = (_I32.unpack_from(payload, 0)[0], bytes(payload[4:]))
                self.key = self.ctx.cancel_keys.register(self.upstream_key[0], self)
                self.out.append(m.BackendKeyData(*self.key).encode())
            elif t == ord("R"):
                self.out.append(self._filter_sasl(buf[pos:end], payload))
            elif t == READY:
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
                if t == ERROR:
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

