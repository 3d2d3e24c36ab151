"""Logins, sessions and CSRF tokens.

A login is checked by the upstream itself: we connect to it as the role with the password the
user typed (the upstream DSN's host, port and database, the user's credentials). There is no
user list of our own. Each login keeps, server-side and keyed by a random session id:
- `db`: a small asyncpg pool to the upstream as that role, for the pages' own queries;
- `through`: a small pool to this pgml-server (its own host/port) as that role, for `pgml.*`
  calls (deploy, predict, notebooks), opened on first use.
The cookie carries only the session id, signed with itsdangerous (a per-process key, so a
restart logs everyone out, as it drops the pools anyway). The password stays in this process's
memory inside the pools' connect arguments, never in the cookie or on disk.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from itsdangerous import BadSignature, TimestampSigner

from ..dsn import parse_dsn
from .context import DashboardContext


log = logging.getLogger("pgml_server.dashboard")

COOKIE = "pgml_session"
LOGIN_COOKIE = "pgml_login"          # double-submit CSRF token of the login form
MAX_AGE = 12 * 3600                  # a session lives at most this long …
IDLE = 2 * 3600                      # … and ends after this long unused


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, schema="pg_catalog", encoder=json.dumps, decoder=json.loads,
                                  format="text")


@dataclass(eq=False)
class Login:
    sid: str
    user: str
    csrf: str
    db: asyncpg.Pool
    connect_args: dict
    through_args: dict
    created: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)
    _through: asyncpg.Pool | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    jobs: dict[str, Any] = field(default_factory=dict)

    async def through(self) -> asyncpg.Pool:
        """The pool to pgml-server itself as this role (pgml.* runs there)."""
        async with self._lock:
            if self._through is None:
                self._through = await asyncpg.create_pool(**self.through_args, min_size=0, max_size=3,
                                                          statement_cache_size=0, init=_init_connection)
            return self._through

    def check_csrf(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(token.encode(), self.csrf.encode())

    async def close(self) -> None:
        for job in list(self.jobs.values()):
            job.cancel()
        pools = [p for p in (self.db, self._through) if p is not None]
        for pool in pools:
            try:
                await asyncio.wait_for(pool.close(), 5)
            except (asyncio.TimeoutError, Exception):
                pool.terminate()


class LoginFailed(Exception):
    pass


class Sessions:
    def __init__(self, ctx: DashboardContext) -> None:
        self.ctx = ctx
        self.signer = TimestampSigner(secrets.token_bytes(32), salt="pgml-dashboard-session")
        self.sessions: dict[str, Login] = {}
        addr = parse_dsn(ctx.upstream_dsn)
        database = addr.dbname or addr.user or "postgres"
        self._upstream = dict(host=addr.host, port=addr.port, database=database,
                              ssl=None if addr.is_unix else (addr.sslmode if addr.sslmode != "allow" else "prefer"))
        host = ctx.config.host
        host = "127.0.0.1" if host in ("0.0.0.0", "", "*") else "::1" if host == "::" else host
        self._through = dict(host=host, port=ctx.config.port, database=database,
                             ssl="prefer" if ctx.config.tls_cert else "disable")
        self._reaper: asyncio.Task | None = None

    def start(self) -> None:
        self._reaper = asyncio.ensure_future(self._reap())

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for login in list(self.sessions.values()):
            await login.close()
        self.sessions.clear()

    async def login(self, user: str, password: str) -> Login:
        if not user:
            raise LoginFailed("Enter a role name.")
        creds = dict(user=user, password=password or None)
        args = {**self._upstream, **creds,
                "server_settings": {"application_name": "pgml-dashboard", "statement_timeout": "60s"}}
        try:
            pool = await asyncio.wait_for(
                asyncpg.create_pool(**args, min_size=1, max_size=3, init=_init_connection), 15)
        except (asyncpg.PostgresError, OSError, asyncio.TimeoutError, asyncpg.InterfaceError) as exc:
            log.info("dashboard login refused for %r: %s", user, exc)
            raise LoginFailed("The upstream PostgreSQL refused this role and password.") from None
        sid = secrets.token_urlsafe(32)
        login = Login(sid, user, secrets.token_urlsafe(32), pool, args,
                      {**self._through, **creds, "server_settings": {"application_name": "pgml-dashboard"}})
        self.sessions[sid] = login
        log.info("dashboard login: %s", user)
        return login

    def cookie_value(self, login: Login) -> str:
        return self.signer.sign(login.sid).decode()

    def get(self, cookie: str | None) -> Login | None:
        if not cookie:
            return None
        try:
            sid = self.signer.unsign(cookie, max_age=MAX_AGE).decode()
        except BadSignature:
            return None
        login = self.sessions.get(sid)
        if login is None:
            return None
        now = time.monotonic()
        if now - login.seen > IDLE or now - login.created > MAX_AGE:
            self.sessions.pop(sid, None)
            asyncio.ensure_future(login.close())
            return None
        login.seen = now
        return login

    async def logout(self, login: Login) -> None:
        self.sessions.pop(login.sid, None)
        await login.close()

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(60)
            now = time.monotonic()
            for sid, login in list(self.sessions.items()):
                if now - login.seen > IDLE or now - login.created > MAX_AGE:
                    self.sessions.pop(sid, None)
                    await login.close()

    # -- the login form's own CSRF token (double submit: cookie and hidden field must match)

    def login_token(self, cookie: str | None = None) -> tuple[str, str]:
        """(token, signed cookie value); a still valid cookie keeps its token, so two login pages
        open at once (or a redirect that fetches /login again) do not invalidate each other."""
        if cookie:
            try:
                token = self.signer.unsign(cookie, max_age=1800).decode()
                return token, cookie
            except BadSignature:
                pass
        token = secrets.token_urlsafe(24)
        return token, self.signer.sign(token).decode()

    def check_login_token(self, cookie: str | None, field_value: str | None) -> bool:
        if not cookie or not field_value:
            return False
        try:
            token = self.signer.unsign(cookie, max_age=3600).decode()
        except BadSignature:
            return False
        return hmac.compare_digest(token.encode(), field_value.encode())
