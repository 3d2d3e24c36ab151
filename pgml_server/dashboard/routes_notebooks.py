"""Notebooks and jobs: cells are edited and run here; a running job's NOTICEs stream as
server-sent events from /jobs/<id>/events, its result comes as an escaped HTML fragment from
/jobs/<id>/result, and POST /jobs/<id>/cancel stops it. Without JavaScript, Run waits for
the cell and redirects back to the notebook."""
from __future__ import annotations

import asyncio
import json

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from . import notebooks as nbs
from .app import page, state
from .auth import Login
from .jobs import Job, split_statements
from .routes_registry import _int


@page
async def index(request: Request, login: Login) -> Response:
    async with login.db.acquire() as conn:
        rows = await nbs.list_notebooks(conn)
    return state(request).render(request, "notebooks.html", notebooks=rows, nav="notebooks")


@page
async def create(request: Request, login: Login) -> Response:
    form = await request.form()
    async with login.db.acquire() as conn:
        nid = await nbs.create_notebook(conn, str(form.get("name") or "").strip())
    return RedirectResponse(f"/notebooks/{nid}", status_code=303)


@page
async def show(request: Request, login: Login) -> Response:
    nid = _int(request.path_params["id"])
    focus, page_no = _int(request.query_params.get("cell"), -1), _int(request.query_params.get("page"), 0)
    async with login.db.acquire() as conn:
        found = await nbs.notebook(conn, nid)
    if found is None:
        return state(request).render(request, "error.html", status=404, sqlstate=None,
                                     message=f"notebook {nid} does not exist")
    nb, cells = found
    for c in cells:
        if c["kind"] == "markdown":
            c["html"] = nbs.render_markdown(c["contents"])
        c["out"] = nbs.output_page(c["output"], page_no if c["id"] == focus else 0)
    return state(request).render(request, "notebook.html", notebook=nb, cells=cells, nav="notebooks")


@page
async def rename(request: Request, login: Login) -> Response:
    nid = _int(request.path_params["id"])
    form = await request.form()
    async with login.db.acquire() as conn:
        await nbs.rename(conn, nid, str(form.get("name") or "").strip())
    return RedirectResponse(f"/notebooks/{nid}", status_code=303)


@page
async def delete(request: Request, login: Login) -> Response:
    async with login.db.acquire() as conn:
        await nbs.delete_notebook(conn, _int(request.path_params["id"]))
    return RedirectResponse("/notebooks", status_code=303)


@page
async def add_cell(request: Request, login: Login) -> Response:
    nid = _int(request.path_params["id"])
    form = await request.form()
    after = form.get("after")
    async with login.db.acquire() as conn:
        cid = await nbs.add_cell(conn, nid, str(form.get("kind") or "sql"), _int(after) if after else None)
    return RedirectResponse(f"/notebooks/{nid}#cell-{cid}", status_code=303)


@page
async def save_cell(request: Request, login: Login) -> Response:
    nid, cid = _int(request.path_params["id"]), _int(request.path_params["cell"])
    form = await request.form()
    async with login.db.acquire() as conn:
        await nbs.save_cell(conn, nid, cid, str(form.get("kind") or "sql"), str(form.get("contents") or ""))
    return RedirectResponse(f"/notebooks/{nid}#cell-{cid}", status_code=303)


@page
async def delete_cell(request: Request, login: Login) -> Response:
    nid, cid = _int(request.path_params["id"]), _int(request.path_params["cell"])
    async with login.db.acquire() as conn:
        await nbs.delete_cell(conn, nid, cid)
    return RedirectResponse(f"/notebooks/{nid}", status_code=303)


@page
async def run_cell(request: Request, login: Login) -> Response:
    """Save the cell, then render it (Markdown) or run it through pgml-server (SQL)."""
    nid, cid = _int(request.path_params["id"]), _int(request.path_params["cell"])
    form = await request.form()
    kind, contents = str(form.get("kind") or "sql"), str(form.get("contents") or "")
    wants_json = "application/json" in request.headers.get("accept", "")
    async with login.db.acquire() as conn:
        if await nbs.cell(conn, nid, cid) is None:
            return PlainTextResponse("no such cell", status_code=404)
        await nbs.save_cell(conn, nid, cid, kind, contents)
    if kind == "markdown":
        if wants_json:
            return JSONResponse({"html": str(nbs.render_markdown(contents))})
        return RedirectResponse(f"/notebooks/{nid}#cell-{cid}", status_code=303)

    async def store(_job, result) -> None:
        async with login.db.acquire() as conn:
            await nbs.store_output(conn, cid, result)

    job = Job(login, split_statements(contents), on_done=store).start()
    if wants_json:
        return JSONResponse({"job": job.id})
    await job.wait()
    return RedirectResponse(f"/notebooks/{nid}#cell-{cid}", status_code=303)


def _job(request: Request, login: Login) -> Job | None:
    return login.jobs.get(request.path_params["job"])


@page
async def events(request: Request, login: Login) -> Response:
    """The job's events as text/event-stream: every NOTICE so far, then the new ones, then 'done'."""
    job = _job(request, login)
    if job is None:
        return PlainTextResponse("no such job", status_code=404)

    async def stream():
        sent = 0
        yield ": stream open\n\n"
        while True:
            while sent < len(job.events):
                kind, data = job.events[sent]
                sent += 1
                payload = data if kind == "notice" else {"status": data.get("status"), "error": data.get("error"),
                                                         "elapsed_ms": data.get("elapsed_ms")}
                yield f"event: {kind}\ndata: {json.dumps(payload, default=str)}\n\n"
                if kind == "done":
                    return
            try:
                await asyncio.wait_for(job.changed.wait(), 15)
            except asyncio.TimeoutError:
                yield ": keep-alive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"cache-control": "no-store", "x-accel-buffering": "no"})


@page
async def result(request: Request, login: Login) -> Response:
    job = _job(request, login)
    if job is None or job.result is None:
        return PlainTextResponse("no result (yet)", status_code=404)
    out = nbs.output_page(job.result, _int(request.query_params.get("page"), 0))
    html = state(request).templates.get_template("_output.html").render(
        out=out, page_base=f"/jobs/{job.id}/result?page=", fragment=True)
    return HTMLResponse(html)


@page
async def cancel(request: Request, login: Login) -> Response:
    job = _job(request, login)
    if job is None:
        return PlainTextResponse("no such job", status_code=404)
    job.cancel()
    return JSONResponse({"canceled": True})


ROUTES = [
    Route("/notebooks", index),
    Route("/notebooks", create, methods=["POST"]),
    Route("/notebooks/{id:int}", show),
    Route("/notebooks/{id:int}/rename", rename, methods=["POST"]),
    Route("/notebooks/{id:int}/delete", delete, methods=["POST"]),
    Route("/notebooks/{id:int}/cells", add_cell, methods=["POST"]),
    Route("/notebooks/{id:int}/cells/{cell:int}/save", save_cell, methods=["POST"]),
    Route("/notebooks/{id:int}/cells/{cell:int}/delete", delete_cell, methods=["POST"]),
    Route("/notebooks/{id:int}/cells/{cell:int}/run", run_cell, methods=["POST"]),
    Route("/jobs/{job}/events", events),
    Route("/jobs/{job}/result", result),
    Route("/jobs/{job}/cancel", cancel, methods=["POST"]),
]
