"""What the layers above may ask of a client session: the seam between them and `proxy`.

The local statement runner, the session executor, the predict strategies and the pgml.*
functions see a session only through this Protocol; `proxy.session.Session` implements it. So
nothing below the proxy imports it, and the proxy imports none of them (the server injects the
runner).
"""
from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from .fifo import Consumer, LocalItem


class SessionPort(Protocol):
    ctx: Any                         # the worker's shared parts: config, router, model service
    queue: deque                     # the FIFO of Pending / LocalItem entries
    phase: str                       # 'ready' while statements can run
    upstream: Any                    # the upstream transport, None before it is connected
    tx_status: str                   # the upstream's last ReadyForQuery status: 'I', 'T' or 'E'
    batch_dirty: bool                # an Execute ran since the last Sync (implicit transaction open)
    prepared: dict                   # local prepared statements by name
    portals: dict                    # local portals by name
    readable_models: set[int]        # models this client's role was seen to read
    startup_params: dict[str, str]

    def push_local(self, item: LocalItem) -> None: ...
    def route_after_answers(self, frame) -> None: ...
    def send_internal(self, data: bytes, kinds: list[int], consumer: Consumer) -> None: ...
    def emit(self, data: bytes) -> None: ...
    def flush_client(self) -> None: ...
    def notice(self, message: str, *, detail: str | None = None) -> None: ...
