"""The dashboard in a real browser: Debian's chromium driven by Playwright (skipped without it)."""
from __future__ import annotations

import psycopg
import pytest

from .conftest import ADMIN, ADMIN_PW, NOPRIV, NOPRIV_PW, SCREENSHOTS, browser_login

pytestmark = pytest.mark.timeout(240)


def _ids(srv):
    with psycopg.connect(srv.dsn()) as conn:
        return conn.execute("""
            SELECT (SELECT id FROM pgml.projects WHERE name = 'Dash Diabetes'),
                   (SELECT max(m.id) FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id
                    WHERE p.name = 'Dash Diabetes'),
                   (SELECT max(m.id) FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id
                    WHERE p.name = 'Dash Cancer'),
                   (SELECT max(snapshot_id) FROM pgml.models),
                   (SELECT id FROM pgml.notebooks WHERE tutorial = 'regression')""").fetchone()


def _shot(pg, name: str, full: bool = True) -> None:
    """A PNG for the README; long pages are cut to the first 1400 pixels."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = pg.evaluate("document.documentElement.scrollHeight")
    clip = None if full and height <= 1400 else {"x": 0, "y": 0, "width": 1280, "height": min(height, 1400)}
    pg.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True, clip=clip)


def test_login_refused_then_accepted(page):
    browser_login(page, ADMIN, "wrong password")
    assert page.url.endswith("/login")
    assert "refused" in page.inner_text(".error")
    browser_login(page, ADMIN, ADMIN_PW)
    assert page.locator("h1").inner_text() == "Projects"
    assert page.locator("button", has_text="Log out").count() == 1
    page.click("text=Log out")
    page.wait_for_load_state()
    assert "/login" in page.url
    page.goto("/")
    assert "/login" in page.url


def test_pages_render_with_charts_and_no_network(page, dash):
    srv, url = dash
    foreign = []
    page.context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url)
                       else (foreign.append(route.request.url), route.abort()))
    failed = []
    page.on("requestfailed", lambda req: failed.append(req.url))
    pid, mid, cid, sid, nid = _ids(srv)
    browser_login(page)
    _shot(page, "projects")
    page.goto(f"/projects/{pid}")
    chart = page.locator("#metric-chart svg.chart")
    assert chart.count() == 1 and chart.locator("circle").count() >= 2
    assert chart.locator("circle.deployed").count() == 1
    _shot(page, "project")
    page.goto(f"/models/{mid}")
    assert page.locator("#scatter svg circle").count() > 50
    assert page.locator("#residuals svg circle").count() > 50
    _shot(page, "model-regression")
    page.goto(f"/models/{cid}")
    assert page.locator("#confusion svg rect").count() == 4
    assert page.locator("#roc svg path").count() >= 1
    _shot(page, "model-classification")
    page.goto(f"/snapshots/{sid}")
    assert page.locator("svg[data-chart=histogram] rect").count() > 5
    _shot(page, "snapshot")
    page.goto("/data/pgml/diabetes")
    assert page.locator("table.profiles svg").count() >= 10
    assert page.locator("#sample tbody tr").count() == 50
    _shot(page, "table")
    page.goto("/server")
    assert page.locator("#cache").count() == 1
    assert page.locator("#schedules").inner_text() == "none"
    _shot(page, "server")
    page.goto(f"/notebooks/{nid}")
    assert page.locator("article.cell").count() >= 10
    # JavaScript and CSS loaded from the dashboard itself
    assert page.evaluate("getComputedStyle(document.querySelector('header.top')).display") == "flex"
    assert not foreign, foreign
    assert not failed, failed


def test_deploy_button_changes_deployments(page, dash):
    srv, _ = dash
    pid, *_ = _ids(srv)
    with psycopg.connect(srv.dsn()) as conn:
        before = conn.execute("SELECT count(*) FROM pgml.deployments WHERE project_id = %s", [pid]).fetchone()[0]
    browser_login(page)
    page.goto(f"/projects/{pid}")
    row = page.locator("#models tbody tr", has=page.locator("button", has_text="Deploy")).first
    model_id = int(row.locator("td").first.inner_text())
    row.locator("button", has_text="Deploy").click()
    page.wait_for_load_state()
    assert f"model {model_id} deployed" in page.inner_text(".flash")
    with psycopg.connect(srv.dsn()) as conn:
        rows = conn.execute("SELECT model_id, strategy FROM pgml.deployments WHERE project_id = %s ORDER BY id",
                            [pid]).fetchall()
    assert len(rows) == before + 1 and rows[-1] == (model_id, "specific")
    assert page.locator("#models tr.deployed td").first.inner_text() == str(model_id)


def test_notebook_cell_streams_notices_before_the_result(page, dash):
    browser_login(page)
    page.goto("/notebooks")
    page.fill("input[name=name]", "browser test")
    page.click("text=New notebook")
    page.wait_for_load_state()
    cell = page.locator("article.cell").first
    cell.locator("textarea").fill("SELECT * FROM pgml.train('Dash Notebook', 'regression', 'pgml.diabetes', "
                                  "'target', algorithm => 'random_forest')")
    # Record when the first NOTICE and when the result table enter the page.
    page.evaluate("""() => {
        window.__order = [];
        new MutationObserver(() => {
            if (document.querySelector('.notices li') && !window.__order.includes('notice')) window.__order.push('notice');
            if (document.querySelector('table.result') && !window.__order.includes('result')) window.__order.push('result');
        }).observe(document.body, {subtree: true, childList: true});
    }""")
    cell.locator("textarea").press("Shift+Enter")
    page.wait_for_selector("table.result", timeout=120_000)
    assert page.evaluate("window.__order") == ["notice", "result"]
    text = cell.locator(".cell-output").inner_text()
    assert "pgml.train:" in text and "Dash Notebook" in text
    # stored: a reload shows the result again
    page.reload()
    assert "Dash Notebook" in page.locator("article.cell").first.locator(".cell-output").inner_text()
    _shot(page, "notebook")


def test_running_cell_can_be_cancelled(page):
    browser_login(page)
    page.goto("/notebooks")
    page.click("text=New notebook")
    page.wait_for_load_state()
    cell = page.locator("article.cell").first
    cell.locator("textarea").fill("SELECT pg_sleep(60)")
    cell.locator("button.run").click()
    cell.locator("button.cancel").wait_for(state="visible")
    page.wait_for_timeout(500)
    cell.locator("button.cancel").click()
    page.wait_for_selector(".cell-output .error", timeout=20_000)
    assert "57014" in cell.locator(".cell-output .error").inner_text()


def test_markdown_cell_renders_without_html(page):
    browser_login(page)
    page.goto("/notebooks")
    page.click("text=New notebook")
    page.wait_for_load_state()
    page.evaluate("window.__pwned = undefined")
    cell = page.locator("article.cell").first
    cell.locator("select[name=kind]").select_option("markdown")
    cell.locator("textarea").fill('# Title\n\n<img src=x onerror="window.__pwned=3"> and [x](javascript:alert(1))')
    cell.locator("button.run").click()
    page.wait_for_selector(".markdown h1")
    page.wait_for_timeout(300)
    assert page.evaluate("window.__pwned") is None
    assert page.locator(".markdown img").count() == 0
    assert page.locator(".markdown a[href^=javascript]").count() == 0


def test_stored_markup_does_not_execute(page):
    browser_login(page)
    page.goto("/data/public/dash_xss")
    page.wait_for_timeout(500)
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#sample img").count() == 0
    assert "onerror" in page.locator("#sample").inner_text()
    # and a notebook result holding it
    page.goto("/notebooks")
    page.click("text=New notebook")
    page.wait_for_load_state()
    cell = page.locator("article.cell").first
    cell.locator("textarea").fill("SELECT label FROM public.dash_xss ORDER BY id")
    cell.locator("button.run").click()
    page.wait_for_selector("table.result")
    page.wait_for_timeout(300)
    assert page.evaluate("window.__pwned") is None
    assert page.locator("table.result img, table.result script").count() == 0


def test_role_without_privileges_sees_permission_denied(page):
    browser_login(page, NOPRIV, NOPRIV_PW)
    page.goto("/data/public/dash_secret")
    assert "permission denied" in page.inner_text(".error")
    assert "the secret row" not in page.content()


def test_train_form_shows_statement_and_streams_notices(page, dash):
    srv, _ = dash
    browser_login(page)
    page.goto("/data/pgml/diabetes")
    page.fill("#train-form input[name=project]", "Dash 'Form'")
    page.select_option("#train-form select[name=label]", "target")
    page.select_option("#train-form select[name=algorithm]", "ridge")
    page.wait_for_function("document.getElementById('train-statement').textContent.includes(\"'Dash ''Form'''\")")
    statement = page.inner_text("#train-statement")
    assert "algorithm => 'ridge'" in statement and "relation_name => 'pgml.diabetes'" in statement
    page.click("#train-form button[type=submit]")
    page.wait_for_selector("#train-output table.result", timeout=120_000)
    assert "pgml.train:" in page.inner_text("#train-output .notices")
    with psycopg.connect(srv.dsn()) as conn:
        assert conn.execute("SELECT count(*) FROM pgml.projects WHERE name = %s", ["Dash 'Form'"]).fetchone()[0] == 1


def test_tutorial_notebook_screenshot(page, dash):
    srv, _ = dash
    *_, nid = _ids(srv)
    browser_login(page)
    page.goto(f"/notebooks/{nid}")
    cells = page.locator("article.cell")
    for k in (1, 3):             # load_dataset, then the first rows
        cells.nth(k).locator("button.run").click()
        cells.nth(k).locator("table.result").wait_for(timeout=60_000)
    _shot(page, "notebook-tutorial")
