"""The upstream side of a session's connection: connecting (and TLS), and cancel requests.

The only socket code besides server.py's listeners: each client gets a private upstream
connection, opened with the client's own startup parameters, so the upstream authenticates it.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl

from protocol import messages as m
from protocol import sqlstate
from protocol.errors import PgError

from ..dsn import UpstreamAddress
from .session import Session
from .transport import UpstreamProtocol

log = logging.getLogger("pgml_server")


async def open_upstream(addr: UpstreamAddress, session: Session) -> None:
    """Connect `session` to the upstream (TCP_NODELAY; TLS when the DSN's sslmode asks for it)."""
    loop = asyncio.get_running_loop()
    proto = UpstreamProtocol(session)
    if addr.is_unix:
        transport, _ = await loop.create_unix_connection(lambda: proto, addr.unix_path)
    else:
        transport, _ = await loop.create_connection(lambda: proto, addr.host, addr.port)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if addr.wants_tls:
            transport = await _upstream_tls(loop, transport, proto, addr, session)
    session.upstream = transport


async def _upstream_tls(loop, transport, proto, addr: UpstreamAddress, session: Session):
    proto.handshake = loop.create_future()
    transport.write(m.SSLRequest().encode())
    answer = await proto.handshake
    proto.handshake = None
    if answer[:1] == b"S":
        ctx = ssl.create_default_context()
        if addr.sslmode in ("prefer", "require"):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        session.upstream_tls = True
        return await loop.start_tls(transport, proto, ctx, server_hostname=addr.host)
    if addr.needs_tls:
        transport.close()
        raise PgError(sqlstate.CONNECTION_FAILURE, "the upstream PostgreSQL does not support SSL, "
                      f"but --upstream asks for sslmode={addr.sslmode}", severity="FATAL")
    return transport


async def cancel_upstream(addr: UpstreamAddress, pid: int, secret: bytes) -> None:
    """Send the upstream a CancelRequest with its own key for a session's backend."""
    try:
        if addr.is_unix:
            reader, writer = await asyncio.open_unix_connection(addr.unix_path)
        else:
            reader, writer = await asyncio.open_connection(addr.host, addr.port)
        writer.write(m.CancelRequest(pid, secret).encode())
        await writer.drain()
        await asyncio.wait_for(reader.read(1), 5)   # the upstream closes when done
        writer.close()
    except (OSError, asyncio.TimeoutError) as exc:
        log.warning("cancel request to the upstream failed: %s", exc)
