"""Cancel keys: the BackendKeyData the server gives each client, and where a CancelRequest goes.

The key is the server's own (not the upstream's), so a CancelRequest can stop a local step as
well as the upstream query, and with --workers N it names the worker that owns the session
(the kernel may hand the request's connection to any worker).
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


_WORKER_BITS = 22          # cancel-key pid = worker index << 22 | session counter


class CancelKeys:
    """Our own BackendKeyData per session, so CancelRequest can reach local work and the upstream."""

    def __init__(self, worker: int, runtime_dir: Path | None) -> None:
        self.worker = worker
        self.runtime_dir = runtime_dir
        self._next = 1
        self._sessions: dict[int, tuple[bytes, Cancellable]] = {}

    def allocate(self, session: Cancellable) -> tuple[int, bytes]:
        while True:
            pid = (self.worker << _WORKER_BITS) | self._next
            self._next = self._next % ((1 << _WORKER_BITS) - 1) + 1
            if pid not in self._sessions:
                break
        secret = secrets.token_bytes(4)
        self._sessions[pid] = (secret, session)
        return pid, secret

    def release(self, key: tuple[int, bytes]) -> None:
        entry = self._sessions.get(key[0])
        if entry is not None and entry[0] == key[1]:
            del self._sessions[key[0]]

    def cancel(self, pid: int, secret: bytes) -> None:
        worker = pid >> _WORKER_BITS
        if worker != self.worker:
            asyncio.ensure_future(self._forward(worker, pid, secret))
            return
        entry = self._sessions.get(pid)
        if entry is not None and hmac.compare_digest(entry[0], secret):
            entry[1].cancel()

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
