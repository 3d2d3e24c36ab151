"""Pages over the registry: projects, a project, a model, snapshots, the server; the Deploy action."""
from __future__ import annotations

from urllib.parse import quote

import asyncpg
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from . import charts, evaluation, explorer, queries
from .app import page, state
from .auth import Login
from .importance import importance


def _int(value, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


@page
async def projects(request: Request, login: Login) -> Response:
    async with login.db.acquire() as conn:
        rows = await queries.projects(conn)
    return state(request).render(request, "projects.html", projects=rows, nav="projects")


@page
async def project(request: Request, login: Login) -> Response:
    pid = _int(request.path_params["id"])
    sort = request.query_params.get("sort") or "id"
    descending = request.query_params.get("dir", "desc") != "asc"
    async with login.db.acquire() as conn:
        proj = await queries.project(conn, pid)
        if proj is None:
            return state(request).render(request, "error.html", status=404, sqlstate=None,
                                         message=f"project {pid} does not exist (or you may not see it)")
        models = await queries.project_models(conn, pid, sort, descending)
        series = await queries.metric_series(conn, pid, proj["key_metric"])
        history = await queries.deployments(conn, pid)
    chart = charts.metric_over_models([(mid, v, mid == proj["deployed_id"]) for mid, v in series],
                                      proj["key_metric"])
    return state(request).render(request, "project.html", project=proj, models=models, chart=chart,
                                 history=history, metrics=queries.numeric_metrics(models), sort=sort,
                                 descending=descending, nav="projects", message=request.query_params.get("msg"))


@page
async def deploy(request: Request, login: Login) -> Response:
    """Deploy one model: `SELECT * FROM pgml.deploy(id)` through pgml-server, as the user."""
    mid = _int(request.path_params["id"])
    pool = await login.through()
    try:
        async with pool.acquire() as conn:
            await conn.fetch(f"SELECT * FROM pgml.deploy({mid})")
        message = f"model {mid} deployed"
    except asyncpg.PostgresError as exc:
        message = f"deploy failed: {exc.sqlstate}: {exc}"
    async with login.db.acquire() as conn:
        pid = await conn.fetchval("SELECT project_id FROM pgml.models WHERE id = $1", mid)
    return RedirectResponse(f"/projects/{pid}?msg={quote(message)}" if pid else "/", status_code=303)


@page
async def model(request: Request, login: Login) -> Response:
    mid = _int(request.path_params["id"])
    async with login.db.acquire() as conn:
        m = await queries.model(conn, mid)
        if m is None:
            return state(request).render(request, "error.html", status=404, sqlstate=None,
                                         message=f"model {mid} does not exist (or you may not see it)")
        snap = await queries.snapshot(conn, m["snapshot_id"]) if m["snapshot_id"] else None
        cols = await queries.snapshot_columns(conn, m["snapshot_id"]) if snap and snap["has_table"] else []
        evaluation_result = None
        if snap and cols and m["status"] == "successful":
            try:
                evaluation_result = await evaluation.test_split(conn, await login.through(), m, snap, cols)
            except asyncpg.PostgresError as exc:
                evaluation_result = {"error": f"{exc.sqlstate}: {exc}"}
    label = set((snap or {}).get("y_column_name") or [])
    services = state(request).ctx.models
    imp = await importance(login, services.cache if services is not None else None, m,
                           [c[0] for c in cols if c[0] not in label])
    metrics = m["metrics"] or {}
    scalar = {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}
    return state(request).render(request, "model.html", model=m, snapshot=snap, metrics=scalar,
                                 search=_search_table(metrics.get("search_results")), classes=metrics.get("classes"),
                                 evaluation=evaluation_result, importance=imp, nav="projects")


def _search_table(results) -> dict | None:
    """cv_results_ as stored by the training worker → rows of (parameters, per-candidate columns)."""
    if not isinstance(results, dict) or not isinstance(results.get("params"), list):
        return None
    n = len(results["params"])
    columns = [k for k, v in results.items() if k != "params" and isinstance(v, list) and len(v) == n]
    rows = [(results["params"][i], [results[k][i] for k in columns]) for i in range(n)]
    rank = columns.index("rank_test_score") if "rank_test_score" in columns else None
    if rank is not None:
        rows.sort(key=lambda r: (r[1][rank] is None, r[1][rank]))
    best = {k: v for k, v in results.items() if k.startswith("best_")}
    return {"columns": columns, "rows": rows, "best": best}


@page
async def snapshots(request: Request, login: Login) -> Response:
    async with login.db.acquire() as conn:
        rows = await queries.snapshots(conn)
    return state(request).render(request, "snapshots.html", snapshots=rows, nav="snapshots")


@page
async def snapshot(request: Request, login: Login) -> Response:
    sid = _int(request.path_params["id"])
    async with login.db.acquire() as conn:
        snap = await queries.snapshot(conn, sid)
        if snap is None:
            return state(request).render(request, "error.html", status=404, sqlstate=None,
                                         message=f"snapshot {sid} does not exist (or you may not see it)")
        profiles, total, how = [], None, None
        if snap["has_table"]:
            rel = await explorer.relation(conn, "pgml", f"snapshot_{sid}")
            cols = await queries.snapshot_columns(conn, sid)
            from_item, how = explorer.sample_clause(rel["qualified"], rel["kind"], rel["rows_estimate"])
            total, profiles = await explorer.sample_profile(conn, from_item, cols)
            if rel["rows_estimate"] <= explorer.SAMPLE_ROWS:
                rows_exact = total
            else:
                rows_exact = await conn.fetchval(f"SELECT count(*) FROM {rel['qualified']}")
            snap["rows"] = rows_exact
        models = await conn.fetch("SELECT m.id, m.algorithm, p.name AS project_name, p.id AS project_id "
                                  "FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
                                  "WHERE m.snapshot_id = $1 ORDER BY m.id LIMIT 100", sid)
    _charts(profiles)
    return state(request).render(request, "snapshot.html", snapshot=snap, profiles=profiles, sample_rows=total,
                                 how=how, models=models, nav="snapshots")


def _charts(profiles: list[dict]) -> None:
    for p in profiles:
        if p.get("hist"):
            h = p["hist"]
            p["chart"] = charts.histogram(h["edges"], h["counts"], p["name"], density=h["density"])
        elif p.get("top"):
            p["chart"] = charts.bars([("NULL" if k is None else k) for k, _ in p["top"]],
                                     [float(v) for _, v in p["top"]], f"top values of {p['name']}", kind="top")


@page
async def server(request: Request, login: Login) -> Response:
    st = state(request)
    cache, cache_error = None, None
    try:
        pool = await login.through()
        async with pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM pgml.cache_stats()")
            cache = dict(row) if row else None
    except asyncpg.PostgresError as exc:
        cache_error = f"{exc.sqlstate}: {exc}"
    training, training_error, sched, sched_error = [], None, None, None
    async with login.db.acquire() as conn:
        try:
            training = await queries.in_progress(conn)
        except asyncpg.PostgresError as exc:
            training_error = f"{exc.sqlstate}: {exc}"
        try:
            sched = await queries.schedules(conn)
        except asyncpg.PostgresError as exc:
            sched_error = f"{exc.sqlstate}: {exc}"
    cfg = st.ctx.config
    return st.render(request, "server.html", cache=cache, cache_error=cache_error, training=training,
                     training_error=training_error, schedules=sched, schedules_error=sched_error,
                     config=cfg, nav="server")


ROUTES = [
    Route("/", projects),
    Route("/projects/{id:int}", project),
    Route("/models/{id:int}", model),
    Route("/models/{id:int}/deploy", deploy, methods=["POST"]),
    Route("/snapshots", snapshots),
    Route("/snapshots/{id:int}", snapshot),
    Route("/server", server),
]
