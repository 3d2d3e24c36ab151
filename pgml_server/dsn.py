"""Parse libpq connection strings (URIs and key=value) into the parts the server needs."""
from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass(frozen=True, slots=True)
class UpstreamAddress:
    host: str = "127.0.0.1"      # a path (starting with '/') means a Unix socket directory
    port: int = 5432
    user: str | None = None
    password: str | None = None
    dbname: str | None = None
    sslmode: str = "prefer"

    @property
    def is_unix(self) -> bool:
        return self.host.startswith("/")

    @property
    def unix_path(self) -> str:
        return os.path.join(self.host, f".s.PGSQL.{self.port}")

    @property
    def wants_tls(self) -> bool:
        # Unix sockets never use TLS; 'prefer' tries and falls back, as libpq does.
        return not self.is_unix and self.sslmode in ("prefer", "require", "verify-ca", "verify-full")

    @property
    def needs_tls(self) -> bool:
        return not self.is_unix and self.sslmode in ("require", "verify-ca", "verify-full")


def parse_dsn(dsn: str) -> UpstreamAddress:
    if "://" in dsn:
        return _parse_uri(dsn)
    return _from_params(_parse_keyvalue(dsn))


def _parse_uri(dsn: str) -> UpstreamAddress:
    parts = urlsplit(dsn)
    params: dict[str, str] = {}
    if parts.hostname:
        params["host"] = unquote(parts.hostname)
    if parts.port:
        params["port"] = str(parts.port)
    if parts.username:
        params["user"] = unquote(parts.username)
    if parts.password:
        params["password"] = unquote(parts.password)
    if parts.path and parts.path != "/":
        params["dbname"] = unquote(parts.path[1:])
    for key, values in parse_qs(parts.query).items():
        params[key] = values[-1]
    return _from_params(params)


def _parse_keyvalue(dsn: str) -> dict[str, str]:
    params: dict[str, str] = {}
    i, n = 0, len(dsn)
    while i < n:
        while i < n and dsn[i].isspace():
            i += 1
        eq = dsn.find("=", i)
        if eq < 0:
            break
        key = dsn[i:eq].strip()
        i = eq + 1
        while i < n and dsn[i].isspace():
            i += 1
        value = []
        if i < n and dsn[i] == "'":
            i += 1
            while i < n and dsn[i] != "'":
                if dsn[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(dsn[i])
                i += 1
            i += 1
        else:
            while i < n and not dsn[i].isspace():
                value.append(dsn[i])
                i += 1
        params[key] = "".join(value)
    return params


def _from_params(p: dict[str, str]) -> UpstreamAddress:
    host = p.get("host") or os.environ.get("PGHOST") or "127.0.0.1"
    host = host.split(",")[0]
    default_mode = "disable" if host.startswith("/") else "prefer"
    return UpstreamAddress(
        host=host,
        port=int(p.get("port") or os.environ.get("PGPORT") or 5432),
        user=p.get("user"),
        password=p.get("password"),
        dbname=p.get("dbname"),
        sslmode=p.get("sslmode") or os.environ.get("PGSSLMODE") or default_mode,
    )
