"""The socket layer: listening, upstream connections, cancel keys, workers and shutdown.

This is the only module that opens sockets. One `ServerContext` per worker process holds what
sessions share: configuration, the router, cancel keys, the upstream address and (once started)
the server's own registry connection and the model cache.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
import signal
import socket
import ssl
import struct
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import messages as m
from protocol.errors import PgError
from protocol import sqlstate

from .config import Config
from .dsn import UpstreamAddress, parse_dsn
from .predict_rewrite import rewrite
from .router import Router
from .session import ClientProtocol, UpstreamProtocol

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger("pgml_server")

_WORKER_BITS = 22          # cancel-key pid = worker index << 22 | session counter


class CancelKeys:
    """Our own BackendKeyData per session, so CancelRequest can reach local work and the upstream."""

    def __init__(self, worker: int, runtime_dir: Path | None) -> None:
        self.worker = worker
        self.runtime_dir = runtime_dir
        self._next = 1
        self._sessions: dict[int, tuple[bytes, "Session"]] = {}

    def allocate(self, session: "Session") -> tuple[int, bytes]:
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


class ServerContext:
    def __init__(self, config: Config, upstream_dsn: str, worker: int = 0,
                 runtime_dir: Path | None = None) -> None:
        self.config = config
        self.upstream_dsn = upstream_dsn
        self.upstream_addr: UpstreamAddress = parse_dsn(upstream_dsn)
        self.router = Router(rewriter=rewrite)
        self.cancel_keys = CancelKeys(worker, runtime_dir)
        self.sessions: set["Session"] = set()
        self.tls_context = _server_tls(config)
        self.worker = worker
        self.services: Any = None          # registry connection, model cache (set by start_services)

    def client_count(self) -> int:
        return len(self.sessions)

    async def open_upstream(self, session: "Session") -> None:
        loop = asyncio.get_running_loop()
        addr = self.upstream_addr
        proto = UpstreamProtocol(session)
        if addr.is_unix:
            transport, _ = await loop.create_unix_connection(lambda: proto, addr.unix_path)
        else:
            transport, _ = await loop.create_connection(lambda: proto, addr.host, addr.port)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if addr.wants_tls:
                transport = await self._upstream_tls(loop, transport, proto, addr, session)
        session.upstream = transport

    async def _upstream_tls(self, loop, transport, proto, addr: UpstreamAddress, session: "Session"):
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

    async def cancel_upstream(self, pid: int, secret: bytes) -> None:
        addr = self.upstream_addr
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


def _server_tls(config: Config) -> ssl.SSLContext | None:
    if not config.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(config.tls_cert, config.tls_key)
    return ctx


# ---------------------------------------------------------------- running

async def run_worker(config: Config, upstream_dsn: str, worker: int = 0,
                     runtime_dir: Path | None = None, sock: socket.socket | None = None) -> None:
    loop = asyncio.get_running_loop()
    ctx = ServerContext(config, upstream_dsn, worker, runtime_dir)
    await start_services(ctx)
    if sock is not None:
        server = await loop.create_server(lambda: ClientProtocol(ctx), sock=sock, backlog=1024)
    else:
        server = await loop.create_server(lambda: ClientProtocol(ctx), config.host, config.port,
                                          reuse_port=config.workers > 1, backlog=1024)
    cancel_server = None
    if runtime_dir is not None:
        cancel_server = await _serve_cancel_socket(ctx, runtime_dir / f"cancel-{worker}.sock")
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker %d listening on %s:%d", worker, config.host, config.port)
    dashboard = await start_dashboard(ctx)
    await stop.wait()
    log.info("worker %d shutting down", worker)
    await stop_dashboard(dashboard)
    server.close()
    if cancel_server is not None:
        cancel_server.close()
    await _drain_sessions(ctx, config.shutdown_timeout)
    await stop_services(ctx)


async def _drain_sessions(ctx: ServerContext, timeout: float) -> None:
    """Let running statements finish (bounded), then close every session."""
    deadline = asyncio.get_running_loop().time() + timeout
    while any(s.queue or s.local_task for s in ctx.sessions):
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    for session in list(ctx.sessions):
        session._fatal(PgError(sqlstate.ADMIN_SHUTDOWN, "terminating connection due to administrator command",
                               severity="FATAL"))


async def _serve_cancel_socket(ctx: ServerContext, path: Path):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await reader.readexactly(16)
            msg = m.decode_startup_packet(data[4:])
            if isinstance(msg, m.CancelRequest):
                ctx.cancel_keys.cancel(msg.pid, msg.secret)
        except (asyncio.IncompleteReadError, PgError):
            pass
        writer.close()

    if path.exists():
        path.unlink()
    return await asyncio.start_unix_server(handle, str(path))


async def start_services(ctx: ServerContext) -> None:
    from .services import Services
    ctx.services = await Services.start(ctx)


async def start_dashboard(ctx: ServerContext):
    """The web dashboard (worker 0 only), in this loop; None when off or its port is taken."""
    if ctx.config.dashboard is None or ctx.worker != 0:
        return None
    from .dashboard import start
    return await start(ctx)


async def stop_dashboard(dashboard) -> None:
    if dashboard is not None:
        await dashboard.stop()


async def stop_services(ctx: ServerContext) -> None:
    if ctx.services is not None:
        await ctx.services.stop()


def install_event_loop_policy() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def serve(config: Config, upstream_dsn: str) -> None:
    """Run the server in this process (one worker) or in config.workers processes on one port."""
    install_event_loop_policy()
    if config.workers <= 1:
        asyncio.run(run_worker(config, upstream_dsn))
        return
    runtime_dir = Path(tempfile.mkdtemp(prefix="pgml-server-"))
    pids = []
    for worker in range(config.workers):
        pid = os.fork()
        if pid == 0:
            try:
                asyncio.run(run_worker(config, upstream_dsn, worker, runtime_dir))
            finally:
                os._exit(0)
        pids.append(pid)

    def forward(signum, _frame):
        for child in pids:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in pids:
        while True:
            try:
                os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break
