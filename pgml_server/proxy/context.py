"""What a session needs from its worker: the seam between `proxy` and the server's wiring.

`server.ServerContext` implements it. `new_runner(session)` gives the session its local
statement runner (sql/runner.py), injected so this layer never imports the SQL layer.
"""
from __future__ import annotations

from typing import Any, Protocol

from .cancel import CancelKeys


class ProxyContext(Protocol):
    config: Any                      # config.Config
    cancel_keys: CancelKeys
    tls_context: Any                 # ssl.SSLContext for clients, or None
    sessions: set
    relay: Any                       # relay.RelayCore, or None (sessions relay in Python)

    def client_count(self) -> int: ...
    async def open_upstream(self, session) -> None: ...
    async def cancel_upstream(self, pid: int, secret: bytes) -> None: ...
    def new_runner(self, session) -> Any: ...
