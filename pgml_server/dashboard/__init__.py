"""The web dashboard, served by pgml-server itself in the worker's own event loop.

`start(ctx)` binds `--dashboard HOST:PORT` itself (so a taken port is one clear log line and
the wire server keeps running), builds the Starlette app and runs uvicorn's `Server.serve()`
as a task of the running loop; with `--tls-cert/--tls-key` it serves HTTPS with the same
certificate. uvicorn's own signal handling is switched off: the worker's SIGTERM/SIGINT
handlers stop everything, the dashboard included (`Dashboard.stop`).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from .context import DashboardContext


log = logging.getLogger("pgml_server.dashboard")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class Dashboard:
    def __init__(self, server, task: asyncio.Task, app) -> None:
        self.server, self.task, self.app = server, task, app

    async def stop(self) -> None:
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), 5)
        except (asyncio.TimeoutError, Exception):
            self.server.force_exit = True
            self.task.cancel()
        await self.app.state.dashboard.close()


async def start(ctx: DashboardContext) -> Dashboard | None:
    host, port = ctx.config.dashboard
    try:
        sock = _bind(host, port)
    except OSError as exc:
        log.error("dashboard: cannot listen on %s:%d (%s); pgml-server keeps serving PostgreSQL clients without "
                  "the dashboard (choose another address with --dashboard HOST:PORT, or --dashboard off)",
                  host, port, exc.strerror or exc)
        return None
    try:
        return await _serve(ctx, sock, host, port)
    except Exception:             # a missing dependency or a broken template must not stop the wire server
        log.exception("dashboard: could not start; pgml-server keeps serving PostgreSQL clients without it")
        sock.close()
        return None


async def _serve(ctx: DashboardContext, sock: socket.socket, host: str, port: int) -> Dashboard:
    import uvicorn

    from .routes import create_app

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):          # the worker owns SIGTERM/SIGINT
            yield

        def install_signal_handlers(self) -> None:     # older uvicorn
            pass

    app = create_app(ctx)
    config = uvicorn.Config(app, lifespan="off", access_log=False, log_config=None, server_header=False,
                            ssl_certfile=ctx.config.tls_cert, ssl_keyfile=ctx.config.tls_key,
                            timeout_graceful_shutdown=2, proxy_headers=False)
    config.load()                           # errors (e.g. the TLS files) surface here, not in the task
    server = Server(config)
    await app.state.dashboard.start()
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    task.add_done_callback(_report)
    scheme = "https" if ctx.config.tls_cert else "http"
    log.info("dashboard on %s://%s:%d/", scheme, f"[{host}]" if ":" in host else host, port)
    return Dashboard(server, task, app)


def _report(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("dashboard: stopped after an error: %r", task.exception())
