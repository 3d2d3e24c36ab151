"""Notebooks: cells of SQL and Markdown stored in `pgml.notebooks` / `pgml.notebook_cells`.

Reads and writes run on the logged-in role's upstream connection (the tables are granted to
PUBLIC by migration 3: notebooks are shared by the dashboard's users). SQL cells run through
pgml-server as a Job (jobs.py); the last result is kept in the cell's `output` (jsonb, at most
jobs.MAX_ROWS rows) and rendered, escaped, by the templates. Markdown is rendered with
markdown-it with raw HTML disabled, so a cell cannot smuggle markup or script in.
The tutorial notebooks ship as JSON files next to this module and are installed by the
server's own connection on start when absent (keyed by `tutorial`).
"""
from __future__ import annotations

import json
import logging
from importlib import resources
from typing import Any

import asyncpg
from markdown_it import MarkdownIt
from markupsafe import Markup

log = logging.getLogger("pgml_server.dashboard")

_md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
OUTPUT_PAGE = 50


def render_markdown(text: str) -> Markup:
    return Markup(_md.render(text or ""))


async def list_notebooks(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch("""
        SELECT n.id, n.name, n.tutorial, n.owner, n.updated_at,
               (SELECT count(*) FROM pgml.notebook_cells c WHERE c.notebook_id = n.id) AS cells
        FROM pgml.notebooks n ORDER BY n.tutorial IS NULL, n.name, n.id""")
    return [dict(r) for r in rows]


async def create_notebook(conn: asyncpg.Connection, name: str) -> int:
    async with conn.transaction():
        nid = await conn.fetchval("INSERT INTO pgml.notebooks (name) VALUES ($1) RETURNING id",
                                  (name or "Untitled notebook")[:200])
        await conn.execute("INSERT INTO pgml.notebook_cells (notebook_id, position, kind, contents) "
                           "VALUES ($1, 1, 'sql', 'SELECT pgml.version();')", nid)
    return nid


async def notebook(conn: asyncpg.Connection, nid: int) -> tuple[dict, list[dict]] | None:
    nb = await conn.fetchrow("SELECT id, name, tutorial, owner, created_at, updated_at FROM pgml.notebooks "
                             "WHERE id = $1", nid)
    if nb is None:
        return None
    cells = await conn.fetch("SELECT id, position, kind, contents, output, executed_at FROM pgml.notebook_cells "
                             "WHERE notebook_id = $1 ORDER BY position, id", nid)
    return dict(nb), [dict(c) for c in cells]


async def cell(conn: asyncpg.Connection, nid: int, cid: int) -> dict | None:
    row = await conn.fetchrow("SELECT id, notebook_id, position, kind, contents, output FROM pgml.notebook_cells "
                              "WHERE id = $1 AND notebook_id = $2", cid, nid)
    return None if row is None else dict(row)


async def save_cell(conn: asyncpg.Connection, nid: int, cid: int, kind: str, contents: str) -> None:
    kind = kind if kind in ("sql", "markdown") else "sql"
    async with conn.transaction():
        await conn.execute("UPDATE pgml.notebook_cells SET kind = $3, contents = $4 WHERE id = $1 AND notebook_id = $2",
                           cid, nid, kind, contents)
        await conn.execute("UPDATE pgml.notebooks SET updated_at = clock_timestamp() WHERE id = $1", nid)


async def add_cell(conn: asyncpg.Connection, nid: int, kind: str, after: int | None = None) -> int:
    kind = kind if kind in ("sql", "markdown") else "sql"
    async with conn.transaction():
        if after is not None:
            pos = await conn.fetchval("SELECT position FROM pgml.notebook_cells WHERE id = $1 AND notebook_id = $2",
                                      after, nid)
        else:
            pos = None
        if pos is None:
            pos = await conn.fetchval("SELECT coalesce(max(position), 0) FROM pgml.notebook_cells "
                                      "WHERE notebook_id = $1", nid)
        await conn.execute("UPDATE pgml.notebook_cells SET position = position + 1 "
                           "WHERE notebook_id = $1 AND position > $2", nid, pos)
        return await conn.fetchval("INSERT INTO pgml.notebook_cells (notebook_id, position, kind) "
                                   "VALUES ($1, $2, $3) RETURNING id", nid, pos + 1, kind)


async def delete_cell(conn: asyncpg.Connection, nid: int, cid: int) -> None:
    await conn.execute("DELETE FROM pgml.notebook_cells WHERE id = $1 AND notebook_id = $2", cid, nid)


async def rename(conn: asyncpg.Connection, nid: int, name: str) -> None:
    await conn.execute("UPDATE pgml.notebooks SET name = $2, updated_at = clock_timestamp() WHERE id = $1",
                       nid, (name or "Untitled notebook")[:200])


async def delete_notebook(conn: asyncpg.Connection, nid: int) -> None:
    await conn.execute("DELETE FROM pgml.notebooks WHERE id = $1", nid)


async def store_output(conn: asyncpg.Connection, cid: int, output: dict) -> None:
    await conn.execute("UPDATE pgml.notebook_cells SET output = $2, executed_at = clock_timestamp() WHERE id = $1",
                       cid, output)


def output_page(output: dict | None, page: int) -> dict | None:
    """One page of a stored result for the template: rows, page number, page count."""
    if not output:
        return None
    rows = output.get("rows") or []
    pages = max(1, -(-len(rows) // OUTPUT_PAGE))
    page = min(max(page, 0), pages - 1)
    return {**output, "page": page, "pages": pages,
            "page_rows": rows[page * OUTPUT_PAGE:(page + 1) * OUTPUT_PAGE],
            "truncated": output.get("total", 0) > len(rows)}


# ---------------------------------------------------------------- tutorials

TUTORIALS = ("regression", "classification", "relational")


def tutorial_data(name: str) -> dict:
    text = resources.files(__package__).joinpath("notebooks", f"{name}.json").read_text(encoding="utf-8")
    return json.loads(text)


async def install_tutorials(pool: asyncpg.Pool) -> list[str]:
    """Install the shipped tutorials that are not in the upstream yet; returns the names installed."""
    installed = []
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT to_regclass('pgml.notebooks') IS NOT NULL"):
            log.warning("dashboard: pgml.notebooks is missing (migration 3 not applied); tutorials not installed")
            return installed
        for name in TUTORIALS:
            data = tutorial_data(name)
            async with conn.transaction():
                nid = await conn.fetchval("INSERT INTO pgml.notebooks (name, tutorial) VALUES ($1, $2) "
                                          "ON CONFLICT (tutorial) DO NOTHING RETURNING id", data["name"], name)
                if nid is None:
                    continue
                await conn.executemany(
                    "INSERT INTO pgml.notebook_cells (notebook_id, position, kind, contents) VALUES ($1, $2, $3, $4)",
                    [(nid, i + 1, c["kind"], c["contents"]) for i, c in enumerate(data["cells"])])
            installed.append(name)
    if installed:
        log.info("dashboard: installed tutorial notebooks %s", ", ".join(installed))
    return installed
