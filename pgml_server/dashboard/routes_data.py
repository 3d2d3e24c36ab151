"""The data explorer: schemas → relations → a table page with column profiles, sample rows and the
"Train a model" form, whose `pgml.train` statement is shown before it runs (through pgml-server,
as the user, its NOTICEs streamed live by jobs.py)."""
from __future__ import annotations

import asyncpg
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..db.names import quote_ident, quote_literal
from ..ml.training.algorithms import algorithms_for
from . import explorer
from .app import page, state
from .auth import Login
from .jobs import Job
from .notebooks import output_page
from .routes_registry import _charts, _int

TASKS = ("regression", "classification")


def train_statement(project: str, task: str, schema: str, table: str, label: str, algorithm: str) -> str:
    """The statement the form runs: identifiers quoted inside the relation name, every value a literal."""
    relation = f"{quote_ident(schema)}.{quote_ident(table)}"
    return ("SELECT * FROM pgml.train(\n"
            f"    project_name => {quote_literal(project)},\n"
            f"    task => {quote_literal(task)},\n"
            f"    relation_name => {quote_literal(relation)},\n"
            f"    y_column_name => {quote_literal(label)},\n"
            f"    algorithm => {quote_literal(algorithm)}\n)")


def _algorithms() -> dict[str, list[str]]:
    return {t: algorithms_for(t) for t in TASKS}


@page
async def schemas(request: Request, login: Login) -> Response:
    async with login.db.acquire() as conn:
        rows = await explorer.schemas(conn)
    return state(request).render(request, "schemas.html", schemas=rows, nav="data")


@page
async def relations(request: Request, login: Login) -> Response:
    schema = request.path_params["schema"]
    async with login.db.acquire() as conn:
        rows = await explorer.relations(conn, schema)
    return state(request).render(request, "relations.html", schema=schema, relations=rows, nav="data")


@page
async def table(request: Request, login: Login) -> Response:
    st = state(request)
    schema, name = request.path_params["schema"], request.path_params["table"]
    page_no = max(_int(request.query_params.get("page"), 0), 0)
    async with login.db.acquire() as conn:
        rel = await explorer.relation(conn, schema, name)
        if rel is None:
            return st.render(request, "error.html", status=404, sqlstate="42P01",
                             message=f"relation {schema}.{name} does not exist")
        cols = await explorer.columns(conn, rel["oid"])
        profiles, how, rows_error, sample_cols, sample = None, None, None, [], []
        try:
            sample_cols, sample = await explorer.sample_rows(conn, rel["qualified"], page_no)
        except asyncpg.PostgresError as exc:
            rows_error = f"{exc.sqlstate}: {exc}"
        if rows_error is None:
            profiles = await explorer.stats_profile(conn, schema, name, cols, rel["rows_estimate"])
            how = "from pg_stats (the upstream's ANALYZE statistics)"
            if profiles is None:
                from_item, how = explorer.sample_clause(rel["qualified"], rel["kind"], rel["rows_estimate"])
                _, profiles = await explorer.sample_profile(conn, from_item, cols)
            _charts(profiles)
    has_next = len(sample) > explorer.PAGE_ROWS
    label = cols[-1][0] if cols else ""
    form = {"project": name, "task": "regression", "label": label, "algorithm": "linear"}
    return st.render(request, "table.html", schema=schema, name=name, relation=rel, columns=cols,
                     profiles=profiles, how=how, rows_error=rows_error, sample_columns=sample_cols,
                     sample=sample[:explorer.PAGE_ROWS], page=page_no, has_next=has_next,
                     algorithms=_algorithms(), tasks=TASKS, form=form,
                     statement=train_statement(form["project"], form["task"], schema, name, label, "linear"),
                     nav="data")


def _form_statement(params, schema: str, name: str) -> tuple[str | None, str]:
    task = str(params.get("task") or "regression")
    algorithm = str(params.get("algorithm") or "linear")
    if task not in TASKS:
        return None, f"unknown task {task!r}"
    if algorithm not in _algorithms()[task]:
        return None, f"{algorithm} is not available for {task}"
    return train_statement(str(params.get("project") or name), task, schema, name,
                           str(params.get("label") or ""), algorithm), ""


@page
async def train_preview(request: Request, login: Login) -> Response:
    sql, error = _form_statement(request.query_params, request.path_params["schema"], request.path_params["table"])
    return PlainTextResponse(sql or f"-- {error}")


@page
async def train(request: Request, login: Login) -> Response:
    st = state(request)
    schema, name = request.path_params["schema"], request.path_params["table"]
    form = await request.form()
    sql, error = _form_statement(form, schema, name)
    wants_json = "application/json" in request.headers.get("accept", "")
    if sql is None:
        if wants_json:
            return JSONResponse({"error": error}, status_code=400)
        return st.render(request, "error.html", status=400, sqlstate="22023", message=error)
    job = Job(login, [sql]).start()
    if wants_json:
        return JSONResponse({"job": job.id, "statement": sql})
    result = await job.wait()       # without JavaScript: wait, then show the NOTICEs and the result
    return st.render(request, "train_result.html", schema=schema, name=name, statement=sql,
                     out=output_page(result, 0), page_base="?page=", nav="data")


ROUTES = [
    Route("/data", schemas),
    Route("/data/{schema}", relations),
    Route("/data/{schema}/{table}", table),
    Route("/data/{schema}/{table}/train-preview", train_preview),
    Route("/data/{schema}/{table}/train", train, methods=["POST"]),
]
