"""The asyncio Protocol adapters of a session: one for the client's socket, one for its upstream.

Callbacks only: bytes and flow control go straight to the `Session`, with no coroutine per message.
"""
from __future__ import annotations

import asyncio

from .context import ProxyContext
from .session import Session


class ClientProtocol(asyncio.Protocol):
    def __init__(self, ctx: ProxyContext) -> None:
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
    def __init__(self, session: Session) -> None:
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
