"""Listening, workers, shutdown, and the wiring: the only module that knows every layer.

One `ServerContext` per worker process holds what sessions share: configuration, the router
(given the predict rewrites), cancel keys, the upstream address and (once started) the model
service. It is the `proxy.context.ProxyContext` of every session and gives each its local
statement runner, so the layers below never import each other upward.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import tempfile
from pathlib import Path

from protocol import messages as m
from protocol import sqlstate
from protocol.errors import PgError

from .config import Config
from .dsn import UpstreamAddress, parse_dsn
from .ml.loader import ModelService
from .proxy.cancel import CancelKeys
from .proxy.relay import RelayCore
from .proxy.session import Session
from .proxy.transport import ClientProtocol
from .proxy.upstream import cancel_upstream, open_upstream
from .scheduling import Scheduler
from .sql.predict import rewrite
from .sql.router import Router
from .sql.runner import LocalRunner

log = logging.getLogger("pgml_server")


class ServerContext:
    def __init__(self, config: Config, upstream_dsn: str, worker: int = 0,
                 runtime_dir: Path | None = None) -> None:
        self.config = config
        self.upstream_dsn = upstream_dsn
        self.upstream_addr: UpstreamAddress = parse_dsn(upstream_dsn)
        self.router = Router(rewriter=rewrite)
        self.cancel_keys = CancelKeys(worker, runtime_dir, config.workers)
        self.sessions: set[Session] = set()
        self.tls_context = _server_tls(config)
        self.worker = worker
        self.models: ModelService | None = None    # the model cache and its loader (start_services)
        self.scheduler: Scheduler | None = None    # scheduled retraining (start_services)
        self.relay: RelayCore | None = None        # the compiled relay core (run_worker)

    def client_count(self) -> int:
        return len(self.sessions)

    def new_runner(self, session: Session) -> LocalRunner:
        return LocalRunner(session)

    async def open_upstream(self, session: Session) -> None:
        await open_upstream(self.upstream_addr, session)

    async def cancel_upstream(self, pid: int, secret: bytes) -> None:
        await cancel_upstream(self.upstream_addr, pid, secret)


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
    ctx.relay = RelayCore.start(loop)
    log.info("worker %d relays plain sessions %s", worker,
             "in the compiled relay core" if ctx.relay is not None else "in Python")
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
    if ctx.relay is not None:
        ctx.relay.close()           # every session back in Python, with what it still owes
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
                ctx.cancel_keys.cancel(msg.pid, msg.secret, forwarded=True)
        except (asyncio.IncompleteReadError, PgError):
            pass
        writer.close()

    if path.exists():
        path.unlink()
    return await asyncio.start_unix_server(handle, str(path))


async def start_services(ctx: ServerContext) -> None:
    ctx.models = await ModelService.start(ctx.config, ctx.upstream_dsn)
    ctx.scheduler = Scheduler(ctx.models, f"{ctx.models.identity} worker {ctx.worker}",
                              poll_seconds=ctx.config.schedule_poll_seconds,
                              drift_check_seconds=ctx.config.drift_check_seconds)
    ctx.scheduler.start()


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
    if ctx.scheduler is not None:
        await ctx.scheduler.stop()              # running trainings end 'failed' while the pool is open
    if ctx.models is not None:
        await ctx.models.stop()


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
