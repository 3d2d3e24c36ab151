"""HTTP-level checks of the dashboard with httpx: redirects, cookies, CSRF, headers, privileges."""
from __future__ import annotations

import re

import httpx
import psycopg

from .conftest import ADMIN, NOPRIV, NOPRIV_PW, XSS, csrf_of, login

PAGES = ["/", "/snapshots", "/data", "/data/public", "/notebooks", "/server"]


def test_pages_redirect_to_login_without_a_session(client):
    for path in PAGES + ["/projects/1", "/models/1", "/data/public/dash_xss", "/notebooks/1"]:
        r = client.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/login")
    assert client.get("/login").status_code == 200
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/app.css").status_code == 200


def test_posts_without_a_session_are_refused(client):
    assert client.post("/models/1/deploy").status_code == 401
    assert client.post("/notebooks", data={"name": "x"}).status_code == 401


def test_wrong_password_is_refused(client):
    r = login(client, ADMIN, "not the password")
    assert r.status_code == 401
    assert "refused" in r.text
    assert "pgml_session" not in r.cookies


def test_login_cookie_flags_and_logout(client):
    r = login(client)
    assert r.status_code == 303
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("pgml_session="))
    flags = cookie.lower()
    assert "httponly" in flags and "samesite=strict" in flags and "max-age=" in flags
    value = cookie.split(";")[0].split("=", 1)[1]
    assert "secret" not in value and ADMIN not in value      # only a signed session id
    home = client.get("/")
    assert home.status_code == 200 and "Dash Diabetes" in home.text
    token = csrf_of(home.text)
    assert client.post("/logout", data={"csrf": token}).status_code == 303
    assert client.get("/").status_code == 303


def test_forged_cookie_is_refused(client):
    client.cookies.set("pgml_session", "made-up.value.sig")
    assert client.get("/").status_code == 303


def test_login_form_needs_its_csrf_token(client):
    client.get("/login")
    r = client.post("/login", data={"user": ADMIN, "password": "x", "csrf": "wrong"})
    assert r.status_code == 403


def test_csrf_less_post_is_refused(admin, dash):
    srv, _ = dash
    home = admin.get("/projects/1")
    with psycopg.connect(srv.dsn()) as conn:
        before = conn.execute("SELECT count(*) FROM pgml.deployments").fetchone()[0]
        model_id = conn.execute("SELECT min(id) FROM pgml.models WHERE status = 'successful'").fetchone()[0]
    assert admin.post(f"/models/{model_id}/deploy").status_code == 403
    assert admin.post(f"/models/{model_id}/deploy", data={"csrf": "forged"}).status_code == 403
    token = csrf_of(home.text)
    r = admin.post(f"/models/{model_id}/deploy", data={"csrf": token}, headers={"origin": "http://evil.example"})
    assert r.status_code == 403
    with psycopg.connect(srv.dsn()) as conn:
        assert conn.execute("SELECT count(*) FROM pgml.deployments").fetchone()[0] == before
    r = admin.post(f"/models/{model_id}/deploy", data={"csrf": token})
    assert r.status_code == 303
    with psycopg.connect(srv.dsn()) as conn:
        row = conn.execute("SELECT model_id, strategy FROM pgml.deployments ORDER BY id DESC LIMIT 1").fetchone()
    assert row == (model_id, "specific")


def test_security_headers(admin):
    r = admin.get("/")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"


def test_every_page_renders(admin, dash):
    srv, _ = dash
    with psycopg.connect(srv.dsn()) as conn:
        pid, mid, sid = conn.execute(
            "SELECT p.id, max(m.id), max(m.snapshot_id) FROM pgml.projects p JOIN pgml.models m ON m.project_id = p.id "
            "WHERE p.name = 'Dash Diabetes' GROUP BY p.id").fetchone()
        cid = conn.execute("SELECT max(m.id) FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
                           "WHERE p.name = 'Dash Cancer'").fetchone()[0]
        nid = conn.execute("SELECT min(id) FROM pgml.notebooks").fetchone()[0]
    for path, expect in [("/", "Dash Diabetes"), (f"/projects/{pid}", 'data-chart="metric"'),
                         (f"/models/{mid}", 'data-chart="predicted-actual"'),
                         (f"/models/{cid}", 'data-chart="confusion"'), (f"/models/{cid}", 'data-chart="roc"'),
                         (f"/models/{cid}", 'data-chart="importance"'),
                         ("/snapshots", "pgml.diabetes"), (f"/snapshots/{sid}", 'data-chart="histogram"'),
                         ("/data", "public"), ("/data/pgml", "diabetes"), ("/data/pgml/diabetes", "pgml.train"),
                         ("/notebooks", "Tutorial 1"), (f"/notebooks/{nid}", "load_dataset"),
                         ("/server", "Scheduled retraining")]:
        r = admin.get(path)
        assert r.status_code == 200, (path, r.text[:2000])
        assert expect in r.text, path
    html = admin.get(f"/models/{mid}").text
    assert "residuals" in html
    assert 'id="search"' in html and "mean_test_score" in html and '{"alpha": 0.5}' in html


def test_values_are_escaped(admin):
    r = admin.get("/data/public/dash_xss")
    assert r.status_code == 200
    assert XSS not in r.text and "<script>window.__pwned" not in r.text
    assert "&lt;img src=x onerror=" in r.text


def test_role_without_privileges_sees_permission_denied(client):
    assert login(client, NOPRIV, NOPRIV_PW).status_code == 303
    r = client.get("/data/public/dash_secret")
    assert "permission denied" in r.text
    assert "the secret row" not in r.text


def test_train_preview_quotes(admin):
    r = admin.get("/data/public/dash_xss/train-preview",
                  params={"project": "it's", "task": "regression", "label": 'we"ird', "algorithm": "linear"})
    assert "project_name => 'it''s'" in r.text
    assert "y_column_name => 'we\"ird'" in r.text
    assert "relation_name => 'public.dash_xss'" in r.text
    r = admin.get("/data/public/dash_xss/train-preview", params={"task": "regression", "algorithm": "nope"})
    assert r.text.startswith("--")


def test_model_page_recomputes_the_training_split(admin, dash):
    """The test rows the page predicts are the ones training held out: same r2 / accuracy."""
    srv, _ = dash
    with psycopg.connect(srv.dsn()) as conn:
        models = conn.execute("SELECT m.id, m.metrics FROM pgml.models m WHERE m.status = 'successful' "
                              "AND m.metrics ? 'r2' OR m.metrics ? 'accuracy' ORDER BY m.id").fetchall()
    assert models
    for mid, metrics in models:
        html = admin.get(f"/models/{mid}").text
        m = re.search(r'id="recomputed">(\w+) on these rows: <b data-value="([^"]+)"', html)
        assert m, html
        assert abs(float(m.group(2)) - metrics[m.group(1)]) < 1e-4, (mid, m.group(1))


def test_unknown_paths_need_a_session_too(client):
    r = client.get("/no/such/page")
    assert r.status_code == 303 and r.headers["location"] == "/login"


def test_notebook_without_javascript_runs_and_paginates(admin):
    home = admin.get("/notebooks")
    token = csrf_of(home.text)
    r = admin.post("/notebooks", data={"csrf": token, "name": "no js"})
    assert r.status_code == 303
    nb = r.headers["location"]
    page = admin.get(nb).text
    cell = re.search(r'data-cell="(\d+)"', page).group(1)
    r = admin.post(f"{nb}/cells/{cell}/run", data={"csrf": token, "kind": "sql",
                                                    "contents": "SELECT i, 'row ' || i AS label FROM generate_series(1, 120) i"})
    assert r.status_code == 303
    page = admin.get(nb).text
    assert "page 1 of 3" in page and "row 50" in page and "row 51" not in page
    page = admin.get(f"{nb}?cell={cell}&page=2").text
    assert "page 3 of 3" in page and "row 120" in page and "row 100" not in page
    # an error keeps its SQLSTATE
    admin.post(f"{nb}/cells/{cell}/run", data={"csrf": token, "kind": "sql", "contents": "SELECT 1/0"})
    assert "22012" in admin.get(nb).text
    # a JSON client gets a job whose events end with 'done'
    r = admin.post(f"{nb}/cells/{cell}/run", data={"kind": "sql", "contents": "DO $$ BEGIN RAISE NOTICE 'hello'; END $$"},
                   headers={"x-csrf-token": token, "accept": "application/json"})
    job = r.json()["job"]
    with admin.stream("GET", f"/jobs/{job}/events") as events:
        body = "".join(events.iter_text())
    assert body.index("event: notice") < body.index("event: done") and "hello" in body
    assert "hello" in admin.get(f"/jobs/{job}/result").text


def test_models_sort_by_any_metric(admin, dash):
    srv, _ = dash
    with psycopg.connect(srv.dsn()) as conn:
        pid = conn.execute("SELECT id FROM pgml.projects WHERE name = 'Dash Diabetes'").fetchone()[0]
        order = [r[0] for r in conn.execute(
            "SELECT id FROM pgml.models WHERE project_id = %s ORDER BY (metrics->>'mean_absolute_error')::float8, id DESC",
            [pid])]
    for direction, expected in (("asc", order), ("desc", order[::-1])):
        html = admin.get(f"/projects/{pid}", params={"sort": "mean_absolute_error", "dir": direction}).text
        table = html.split('id="models"')[1].split("</table>")[0]
        shown = [int(x) for x in re.findall(r'<td><a href="/models/(\d+)">', table)]
        assert shown == expected, direction


def test_server_page_lists_trainings_in_progress_and_schedules(admin, dash):
    srv, _ = dash
    with psycopg.connect(srv.dsn(), autocommit=True) as conn:
        pid = conn.execute("SELECT id FROM pgml.projects WHERE name = 'Dash Diabetes'").fetchone()[0]
        mid = conn.execute("INSERT INTO pgml.models (project_id, algorithm, status, backend_pid) "
                           "VALUES (%s, 'xgboost', 'in_progress', pg_backend_pid()) RETURNING id", [pid]).fetchone()[0]
        try:
            html = admin.get("/server").text
            assert 'id="schedules">none' in html
            training = html.split('id="training"')[1].split("</table>")[0]
            assert f"<td>{mid}</td>" in training and "xgboost" in training
            conn.execute("SELECT * FROM pgml.schedule('Dash Diabetes', every => '1 day')")
            html = admin.get("/server").text
            assert "Dash Diabetes" in html.split('id="schedules"')[1] and "1 day" in html
        finally:
            conn.execute("SELECT pgml.unschedule('Dash Diabetes')")
            conn.execute("DELETE FROM pgml.models WHERE id = %s", [mid])
