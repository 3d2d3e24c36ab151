"""The ASGI app: routes, templates, security headers, login/logout and the page decorator.

Security model (docs/dashboard.md): nothing but /login and /static answers without a session;
a session is a signed, HttpOnly, SameSite=Strict cookie holding a random id; every POST carries
the session's CSRF token (hidden field `csrf` or header `X-CSRF-Token`) and, when the browser
sends one, an Origin of this very host; templates autoescape every value; the
Content-Security-Policy allows scripts and styles from this origin only (no inline script).
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

import asyncpg
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from .. import __version__
from .auth import COOKIE, LOGIN_COOKIE, MAX_AGE, Login, LoginFailed, Sessions
from .jobs import cell_value
from .notebooks import install_tutorials
from .context import DashboardContext


log = logging.getLogger("pgml_server.dashboard")
HERE = Path(__file__).parent

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"x-frame-options", b"DENY"), (b"referrer-policy", b"same-origin"),
           (b"cross-origin-opener-policy", b"same-origin")]


class SecurityHeaders:
    """Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer the event streams)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(HEADERS)
                if not scope["path"].startswith("/static/"):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class DashboardState:
    """What the routes share: the server context, the sessions and the template environment."""

    def __init__(self, ctx: DashboardContext) -> None:
        self.ctx = ctx
        self.sessions = Sessions(ctx)
        self.secure = bool(ctx.config.tls_cert)
        self.templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                                     autoescape=select_autoescape(default=True, default_for_string=True),
                                     enable_async=False, trim_blocks=True, lstrip_blocks=True)
        self.templates.globals.update(version=__version__, cell=cell_value)
        self.templates.filters["num"] = _num

    async def start(self) -> None:
        self.sessions.start()
        services = self.ctx.models
        if services is not None:
            try:
                await install_tutorials(services.pool)
            except Exception as exc:      # the dashboard still works without its tutorials
                log.warning("dashboard: installing the tutorial notebooks failed: %s", exc)

    async def close(self) -> None:
        await self.sessions.close()

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        login = request.scope.get("login")
        html = self.templates.get_template(template).render(request=request, login=login, **context)
        return HTMLResponse(html, status_code=status)


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "NaN"
        return f"{value:.{digits}g}" if abs(value) < 1e6 else f"{value:.3e}"
    return str(value)


def state(request: Request) -> DashboardState:
    return request.app.state.dashboard


Handler = Callable[[Request, Login], Awaitable[Response]]


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A route that needs a login (GET: redirect to /login without one; POST: 403 without a valid
    CSRF token or with a foreign Origin). Database errors render as an error page with SQLSTATE."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        st = state(request)
        login = st.sessions.get(request.cookies.get(COOKIE))
        if login is None:
            if request.method == "GET" and "text/event-stream" not in request.headers.get("accept", ""):
                return RedirectResponse("/login?next=" + _safe_next(request.url.path), status_code=303)
            return PlainTextResponse("not logged in", status_code=401)
        request.scope["login"] = login
        if request.method == "POST" and not await _csrf_ok(request, login):
            return PlainTextResponse("CSRF check failed: reload the page and try again", status_code=403)
        try:
            return await handler(request, login)
        except asyncpg.PostgresError as exc:
            status = 403 if exc.sqlstate == "42501" else 400
            return st.render(request, "error.html", status=status, sqlstate=exc.sqlstate, message=str(exc),
                             detail=getattr(exc, "detail", None), hint=getattr(exc, "hint", None))
        except (OSError, asyncpg.InterfaceError) as exc:
            return st.render(request, "error.html", status=503, sqlstate="08006", message=f"database connection: {exc}")
        except Exception:
            log.exception("dashboard: %s %s failed", request.method, request.url.path)
            return st.render(request, "error.html", status=500, sqlstate="XX000",
                             message="internal error in the dashboard (the server log has the details)")

    return wrapper


async def _csrf_ok(request: Request, login: Login) -> bool:
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host"):     # "null" too
        return False
    token = request.headers.get("x-csrf-token")
    if token is None:
        form = await request.form()
        token = form.get("csrf")
    return login.check_csrf(token if isinstance(token, str) else None)


def _safe_next(path: str) -> str:
    return path if path.startswith("/") and not path.startswith("//") else "/"


# ---------------------------------------------------------------- login / logout

async def login_form(request: Request) -> Response:
    st = state(request)
    token, signed = st.sessions.login_token(request.cookies.get(LOGIN_COOKIE))
    response = st.render(request, "login.html", token=token, error=request.query_params.get("error"),
                         next=_safe_next(request.query_params.get("next", "/")))
    _set_cookie(response, st, LOGIN_COOKIE, signed, 3600)
    return response


async def login_submit(request: Request) -> Response:
    st = state(request)
    form = await request.form()
    nxt = _safe_next(str(form.get("next") or "/"))
    if not st.sessions.check_login_token(request.cookies.get(LOGIN_COOKIE), str(form.get("csrf") or "")):
        return PlainTextResponse("CSRF check failed: reload the login page", status_code=403)
    try:
        login = await st.sessions.login(str(form.get("user") or ""), str(form.get("password") or ""))
    except LoginFailed as exc:
        token, signed = st.sessions.login_token()
        response = st.render(request, "login.html", status=401, token=token, error=str(exc), next=nxt,
                             user=str(form.get("user") or ""))
        _set_cookie(response, st, LOGIN_COOKIE, signed, 3600)
        return response
    response = RedirectResponse(nxt, status_code=303)
    _set_cookie(response, st, COOKIE, st.sessions.cookie_value(login), MAX_AGE)
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


@page
async def logout(request: Request, login: Login) -> Response:
    await state(request).sessions.logout(login)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=state(request).secure)
    return response


def _set_cookie(response: Response, st: DashboardState, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="strict", secure=st.secure)


async def not_found(request: Request, exc) -> Response:
    if state(request).sessions.get(request.cookies.get(COOKIE)) is None and request.method == "GET":
        return RedirectResponse("/login", status_code=303)     # nothing answers without a session
    return PlainTextResponse(getattr(exc, "detail", "not found"), status_code=getattr(exc, "status_code", 404))


class SecurityHeadersApp(SecurityHeaders):
    """The app wrapped in its headers middleware, with `.state` passed through for the server."""

    @property
    def state(self):
        return self.app.state
