"""Cancel keys: the BackendKeyData the server gives each client, and where a CancelRequest goes.

The pid is the upstream backend's own, so `pg_backend_pid()`, the client's idea of its pid, the
pid of its notifications and `pg_stat_activity` agree (psycopg and others compare them). The
secret is the server's own, 32 random bits as PostgreSQL's: the upstream's secret never reaches
the client, and a CancelRequest with the server's key stops a local step as well as the upstream
query. With --workers N the kernel may hand the request's connection to any worker; one that
does not know the key passes it on to every other worker, whose owner acts on it.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from pathlib import Path
from typing import Protocol

from protocol import messages as m

log = logging.getLogger("pgml_server")


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class CancelKeys:
    """Our own BackendKeyData per session, so CancelRequest can reach local work and the upstream."""

    def __init__(self, worker: int, runtime_dir: Path | None, workers: int = 1) -> None:
        self.worker = worker
        self.runtime_dir = runtime_dir
        self.workers = workers
        self._sessions: dict[int, tuple[bytes, Cancellable]] = {}     # upstream pid → (our secret, session)

    def register(self, pid: int, session: Cancellable) -> tuple[int, bytes]:
        """The client's key for a session whose upstream backend is `pid`."""
        secret = secrets.token_bytes(4)
        self._sessions[pid] = (secret, session)
        return pid, secret

    def release(self, key: tuple[int, bytes] | None) -> None:
        entry = self._sessions.get(key[0]) if key is not None else None
        if entry is not None and entry[0] == key[1]:
            del self._sessions[key[0]]

    def cancel(self, pid: int, secret: bytes, *, forwarded: bool = False) -> None:
        """Act on a CancelRequest; one this worker cannot match goes to the others (once)."""
        entry = self._sessions.get(pid)
        if entry is not None and hmac.compare_digest(entry[0], secret):
            entry[1].cancel()
            return
        if not forwarded and self.workers > 1:
            for worker in range(self.workers):
                if worker != self.worker:
                    asyncio.ensure_future(self._forward(worker, pid, secret))

    async def _forward(self, worker: int, pid: int, secret: bytes) -> None:
        """With --workers, the kernel may hand a CancelRequest to any worker: pass it to its owner."""
        if self.runtime_dir is None:
            return
        path = self.runtime_dir / f"cancel-{worker}.sock"
        try:
            _, writer = await asyncio.open_unix_connection(str(path))
            writer.write(m.CancelRequest(pid, secret).encode())
            await writer.drain()
            writer.close()
        except OSError as exc:
            log.warning("could not forward a cancel request to worker %d: %s", worker, exc)
