"""What the dashboard needs from its worker (server.ServerContext implements it): the seam that
keeps this package from importing the server that starts it."""
from __future__ import annotations

from typing import Any, Protocol


class DashboardContext(Protocol):
    config: Any                 # config.Config: the wire server's host/port, TLS, the dashboard's address
    upstream_dsn: str           # where logins are checked and page queries run (as the logged-in role)
    models: Any                 # ml.loader.ModelService (its pool and model cache), None before it starts
