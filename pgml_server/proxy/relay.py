"""The compiled relay core's Python side: which sessions it relays, and taking them back.

A plain session (no local statement or portal, nothing owed to a local step, no TLS) spends its
life relaying bytes, and in Python each relayed message costs interpreter work around every read
and write. `_relay.c` does that work in one native thread without the GIL, like PgBouncer: the
session attaches when it is quiescent (nothing owed by the upstream, nothing buffered) and the
thread relays until a message could need the server (a pgml statement, an ErrorResponse, COPY,
Terminate, end of file), then hands the session back with the exact FIFO state and the bytes it
has not passed on. The session resumes as if it had relayed everything itself.

Without the extension (no C compiler at install, not Linux) or with PGML_NATIVE_RELAY=0,
`RelayCore.start` returns None and sessions relay in Python (session.py's fast paths), with
the same behaviour: tests/test_relay_core.py runs the same scenarios both ways.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os

try:
    from . import _relay
except ImportError:          # not built: the pure-Python path relays
    _relay = None

log = logging.getLogger("pgml_server.relay")

ENV_SWITCH = "PGML_NATIVE_RELAY"          # 0/off/false: relay every session in Python

# Why a session came back: after these it is not attached again for a while (its traffic needs
# the server now and then: a pgml statement, errors); after end of file or a socket error never.
_CONTENT = frozenset((1, 2))              # _relay.CLIENT_MESSAGE, _relay.UPSTREAM_MESSAGE
_FINAL = frozenset((3, 4, 5, 6))          # EOF and errors on either side
COOLDOWN = 8                              # quiescent points in Python before attaching again


def available() -> bool:
    return _relay is not None


def wanted() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "off", "false", "no")


class RelayCore:
    """One native relay thread for this worker's sessions."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._core = _relay.Relay()
        self._loop = loop
        self._sessions: dict[int, object] = {}
        self._ids = itertools.count(1)
        self.closed = False
        loop.add_reader(self._core.notify_fd, self._collect)

    @classmethod
    def start(cls, loop: asyncio.AbstractEventLoop) -> "RelayCore | None":
        """The relay core, or None where it is not built or switched off."""
        if _relay is None or not wanted():
            return None
        return cls(loop)

    def attach(self, session) -> bool:
        """Hand `session`'s sockets to the thread; the caller has checked it is quiescent."""
        if self.closed:
            return False
        client, upstream = session.client, session.upstream
        csock, usock = client.get_extra_info("socket"), upstream.get_extra_info("socket")
        if csock is None or usock is None or client.get_write_buffer_size() or upstream.get_write_buffer_size():
            return False
        sid = next(self._ids)
        client.pause_reading()
        upstream.pause_reading()
        try:
            self._core.attach(sid, csock.fileno(), usock.fileno(), session.tx_status, session.unsynced,
                              session.batch_dirty)
        except OSError as exc:
            log.warning("relay attach failed: %s", exc)
            client.resume_reading()
            upstream.resume_reading()
            return False
        self._sessions[sid] = session
        session.relay_id = sid
        return True

    def detach(self, session, *, resume: bool = True) -> None:
        """Take `session` back from the thread now (shutdown, closing)."""
        state = self._core.detach(session.relay_id)
        self._sessions.pop(session.relay_id, None)
        if state is not None:
            session.resume_from_relay(state, resume=resume)

    def _collect(self) -> None:
        for state in self._core.collect():
            session = self._sessions.pop(state[0], None)
            if session is None:
                continue
            try:
                session.resume_from_relay(state)
            except Exception:       # a bug ends that session with a message, never the others
                log.exception("resuming a session from the relay failed")
                session.fail_internal()

    def close(self) -> None:
        """Every session back to Python, then the thread stops (shutdown)."""
        if self.closed:
            return
        self.closed = True
        for session in list(self._sessions.values()):
            self.detach(session)
        self._collect()
        self._loop.remove_reader(self._core.notify_fd)
        self._core.close()

    def stats(self) -> dict:
        return self._core.stats()

    @staticmethod
    def cooldown_after(reason: int) -> int | None:
        """Quiescent points before the session may attach again (None: never)."""
        if reason in _FINAL:
            return None
        return COOLDOWN if reason in _CONTENT else 0
