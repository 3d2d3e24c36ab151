"""How the dashboard is served: the flag, a taken port, --workers, HTTPS with the server's certificate."""
from __future__ import annotations

import re
import socket

import httpx
import psycopg
import pytest

from pgml_server.cli import _announce
from pgml_server.config import Config, from_args
from tests.fix_servers import free_port
from tests.test_auth_tls import cert  # noqa: F401  (fixture: a self-signed certificate)

from .conftest import ADMIN, ADMIN_PW, _wait_http


def test_flag_parsing(monkeypatch):
    monkeypatch.delenv("PGML_DASHBOARD", raising=False)
    assert from_args([]).dashboard == ("127.0.0.1", 8000)
    assert from_args(["--dashboard", "off"]).dashboard is None
    assert from_args(["--dashboard", "0.0.0.0:9000"]).dashboard == ("0.0.0.0", 9000)
    assert from_args(["--dashboard", "[::1]:9001"]).dashboard == ("::1", 9001)
    assert from_args(["--dashboard", ":9002"]).dashboard == ("127.0.0.1", 9002)
    monkeypatch.setenv("PGML_DASHBOARD", "off")
    assert from_args([]).dashboard is None
    with pytest.raises(SystemExit):
        from_args(["--dashboard", "nonsense"])


def test_announce_prints_the_dashboard_url(capsys):
    _announce(Config(port=5999, dashboard=("0.0.0.0", 8123)))
    err = capsys.readouterr().err
    assert "postgresql://postgres@127.0.0.1:5999/postgres" in err
    assert "http://127.0.0.1:8123/" in err
    _announce(Config(dashboard=None))
    assert "dashboard" not in capsys.readouterr().err


def test_taken_port_logs_an_error_and_the_wire_server_runs(start_server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = start_server("--dashboard", f"127.0.0.1:{port}")
        with psycopg.connect(srv.dsn()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert re.search(rf"dashboard: cannot listen on 127.0.0.1:{port}", srv.log())
        assert srv.proc.poll() is None


def test_only_worker_zero_serves_the_dashboard(start_server, roles):
    port = free_port()
    srv = start_server("--workers", "2", "--dashboard", f"127.0.0.1:{port}")
    _wait_http(f"http://127.0.0.1:{port}")
    assert httpx.get(f"http://127.0.0.1:{port}/login").status_code == 200
    with psycopg.connect(srv.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    log = srv.log()
    assert log.count("dashboard on http://") == 1
    assert "cannot listen" not in log


def test_https_with_the_servers_certificate(start_server, cert, roles):  # noqa: F811
    crt, key = cert
    port = free_port()
    start_server("--tls-cert", str(crt), "--tls-key", str(key), "--dashboard", f"127.0.0.1:{port}")
    url = f"https://127.0.0.1:{port}"
    with httpx.Client(base_url=url, verify=False, timeout=30) as c:
        for _ in range(100):
            try:
                page = c.get("/login")
                break
            except httpx.HTTPError:
                import time
                time.sleep(0.2)
        assert page.status_code == 200
        token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        r = c.post("/login", data={"user": ADMIN, "password": ADMIN_PW, "csrf": token})
        assert r.status_code == 303
        cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("pgml_session="))
        assert "secure" in cookie.lower()
        assert "Dash" in c.get("/").text or c.get("/").status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/login", timeout=5)
