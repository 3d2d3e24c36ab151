"""A real pgml-server with its dashboard on a free port, SCRAM roles, a trained project, and
(when Debian's chromium is installed) a real browser driven by Playwright."""
from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.fix_servers import free_port

ADMIN, ADMIN_PW = "dash_admin", "dash admin secret"
NOPRIV, NOPRIV_PW = "dash_nopriv", "dash nopriv secret"
CHROMIUM = Path(os.environ.get("PGML_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The README's screenshots are refreshed with PGML_SCREENSHOTS=1; other runs write them to a
# temporary folder, so `make test` leaves the working tree clean.
SCREENSHOTS = (Path(__file__).resolve().parents[2] / "docs" / "screenshots" if os.environ.get("PGML_SCREENSHOTS")
               else Path(os.environ.get("TMPDIR", "/tmp")) / "pgml-dashboard-screenshots")
XSS = '<img src=x onerror="window.__pwned=1">'
XSS_SCRIPT = '<script>window.__pwned=2</script>'


@pytest.fixture(scope="session")
def roles(upstream):
    with psycopg.connect(upstream.dsn, autocommit=True) as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        for role, pw, extra in ((ADMIN, ADMIN_PW, "SUPERUSER"), (NOPRIV, NOPRIV_PW, "")):
            conn.execute(f"DROP ROLE IF EXISTS {role}")
            conn.execute(f"CREATE ROLE {role} LOGIN {extra} PASSWORD '{pw}'")
    yield
    with psycopg.connect(upstream.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)",
                     [[ADMIN, NOPRIV]])
        conn.execute("DROP OWNED BY dash_nopriv")
        conn.execute(f"DROP ROLE IF EXISTS {NOPRIV}")


@pytest.fixture(scope="session")
def dash(upstream, roles, tmp_path_factory):
    """(server, base URL) with a trained 'Dash Diabetes' project (two models) and an XSS table."""
    from tests.fix_servers import ServerProcess
    port = free_port()
    log = tmp_path_factory.mktemp("dash") / "server.log"
    srv = ServerProcess(upstream.dsn, "--dashboard", f"127.0.0.1:{port}", log_path=log)
    url = f"http://127.0.0.1:{port}"
    _wait_http(url)
    with psycopg.connect(srv.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pgml.load_dataset('diabetes')")
        conn.execute("SELECT * FROM pgml.train('Dash Diabetes', 'regression', 'pgml.diabetes', 'target')")
        conn.execute("SELECT * FROM pgml.train('Dash Diabetes', algorithm => 'ridge')")
        conn.execute("""SELECT * FROM pgml.train('Dash Diabetes', algorithm => 'ridge', search => 'grid',
                        search_params => '{"alpha": [0.5, 2.0]}', search_args => '{"cv": 2}')""")
        conn.execute("SELECT pgml.load_dataset('breast_cancer')")
        conn.execute("SELECT * FROM pgml.train('Dash Cancer', 'classification', 'pgml.breast_cancer', 'malignant', "
                     "algorithm => 'linear')")
        conn.execute("DROP TABLE IF EXISTS public.dash_xss")
        conn.execute("CREATE TABLE public.dash_xss (id int, label text)")
        conn.execute("INSERT INTO public.dash_xss VALUES (1, %s), (2, %s)", [XSS, XSS_SCRIPT])
        conn.execute("DROP TABLE IF EXISTS public.dash_secret")
        conn.execute("CREATE TABLE public.dash_secret (id int, secret text)")
        conn.execute("INSERT INTO public.dash_secret VALUES (1, 'the secret row')")
        conn.execute("REVOKE ALL ON public.dash_secret FROM PUBLIC")
    yield srv, url
    srv.stop()


def _wait_http(url: str, timeout: float = 30) -> None:
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/login", timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError(f"dashboard at {url} did not answer")


def login(client: httpx.Client, user: str = ADMIN, password: str = ADMIN_PW) -> httpx.Response:
    page = client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return client.post("/login", data={"user": user, "password": password, "csrf": token, "next": "/"})


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)


@pytest.fixture
def client(dash):
    _, url = dash
    with httpx.Client(base_url=url, follow_redirects=False, timeout=60) as c:
        yield c


@pytest.fixture
def admin(client):
    r = login(client)
    assert r.status_code == 303, r.text
    return client


# ---------------------------------------------------------------- the browser

@pytest.fixture(scope="module")
def browser():
    # Module scope, not session: Playwright's sync API keeps an event loop running in this thread
    # while it is open, and every later test's asyncio.run() would fail ("cannot be called from a
    # running event loop").
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (make test installs Debian's chromium with apt-get when run as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, dash):
    _, url = dash
    context = browser.new_context(base_url=url, viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    requests: list[str] = []
    pg.on("request", lambda req: requests.append(req.url))
    pg.requests = requests
    yield pg
    context.close()


def browser_login(pg, user: str = ADMIN, password: str = ADMIN_PW) -> None:
    pg.goto("/login")
    pg.fill("input[name=user]", user)
    pg.fill("input[name=password]", password)
    pg.click("button[type=submit]")
    pg.wait_for_load_state()
