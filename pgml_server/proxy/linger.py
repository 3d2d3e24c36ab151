"""Closing a client's socket after the upstream ended the session, the way PostgreSQL's exit
reaches a client: the last messages, then end-of-file.

A socket closed with client bytes still unread is answered by the kernel with a reset, not a FIN.
A client that sent a statement while its upstream was being terminated (psycopg rolling back after
pg_terminate_backend) then reads the FATAL as that statement's error and waits for the
ReadyForQuery that follows it; a reset arriving meanwhile can show its poll() POLLHUP without
POLLIN, and psycopg's C wait raises "connection socket closed" outside the statement instead of the
lost-connection error it reports against PostgreSQL itself (seen in psycopg's own suite, about one
run in 300). Half-closing and discarding what the client still sends avoids the reset.
"""
from __future__ import annotations

import asyncio

# How long the client may keep writing after our end-of-file before the socket is closed anyway.
GRACE_SECONDS = 2.0


def close_after_eof(transport: asyncio.Transport, grace: float = GRACE_SECONDS) -> None:
    """Send end-of-file after what is buffered, keep reading (the session discards it: it is
    closed), and close when the client closes its side or after `grace` seconds."""
    if transport.is_closing() or not transport.can_write_eof():   # TLS has no half-close
        transport.close()
        return
    try:
        transport.resume_reading()      # flow control may have paused it; unread bytes mean a reset
        transport.write_eof()
    except (OSError, RuntimeError):
        transport.close()
        return
    asyncio.get_running_loop().call_later(grace, transport.close)
