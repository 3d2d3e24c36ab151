"""Projects and snapshots in the `pgml` registry.

A snapshot copies the training relation inside the upstream (`pgml.snapshot_<id>`, made with
`CREATE TABLE … AS SELECT`), so training data never leaves PostgreSQL before it is read by COPY.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol import sqlstate
from protocol.errors import PgError

from ..executor import Executor


@dataclass(frozen=True, slots=True)
class Project:
    id: int
    name: str
    task: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    id: int
    relation_name: str
    y_column_name: list[str]
    test_size: float
    test_sampling: str
    status: str
    columns: dict[str, str] | None
    materialized: bool

    @property
    def table(self) -> str:
        """The (already quoted) name of the snapshot's table or view."""
        return snapshot_table(self.id)


def snapshot_table(snapshot_id: int) -> str:
    return f"pgml.snapshot_{int(snapshot_id)}"


# ---------------------------------------------------------------- projects

_PROJECT = "SELECT id, name, task FROM pgml.projects WHERE name = $1::text"


async def get_project(ex: Executor, name: str) -> Project | None:
    row = await ex.fetchrow(_PROJECT, name)
    return None if row is None else Project(*row)


async def get_or_create_project(ex: Executor, name: str, task: str) -> Project:
    """The project `name`; created with `task` if new. An existing one must have the same task."""
    # Two statements, not one CTE: a row inserted by a concurrent transaction is only visible
    # to a statement that starts after the ON CONFLICT has waited for it.
    await ex.execute("INSERT INTO pgml.projects (name, task) VALUES ($1::text, $2::text) "
                     "ON CONFLICT (name) DO NOTHING", name, task)
    project = await get_project(ex, name)
    if project.task != task:
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE,
                      f'project "{name}" is a {project.task} project, not {task}',
                      hint="Use a new project name for a different task.")
    return project


# ---------------------------------------------------------------- snapshots

_SNAPSHOT_FIELDS = ("id", "relation_name", "y_column_name", "test_size", "test_sampling", "status", "columns",
                    "materialized")
_SNAPSHOT_COLUMNS = ", ".join(_SNAPSHOT_FIELDS)


async def create_snapshot(ex: Executor, relation_name: str, y_columns: list[str], test_size: float,
                          test_sampling: str, materialized: bool = True) -> Snapshot:
    """Copy `relation_name` into `pgml.snapshot_<id>` (a view over it when not materialized).

    The name is resolved by PostgreSQL's own rules (`'"My Schema"."T"'::regclass`: quoting, case
    folding, search_path), so a missing relation raises its own 42P01, and the SQL we build holds
    only identifiers quoted by the catalog, never the user's text.
    """
    source = await _quoted_relation(ex, relation_name)
    snapshot_id = await ex.fetchval("SELECT nextval('pgml.snapshots_id_seq')")
    # The copy comes before the row: when it fails (privileges, a bad view), nothing is written.
    kind = "TABLE" if materialized else "VIEW"
    await ex.execute(f"CREATE {kind} {snapshot_table(snapshot_id)} AS SELECT * FROM {source}")
    row = await ex.fetchrow(
        "INSERT INTO pgml.snapshots (id, relation_name, y_column_name, test_size, test_sampling, "
        "status, columns, materialized) "
        "VALUES ($1::bigint, $2::text, ARRAY(SELECT jsonb_array_elements_text($3::jsonb)), $4::real, "
        "$5::text, 'snapshot', "
        "(SELECT jsonb_object_agg(attname, format_type(atttypid, atttypmod)) FROM pg_attribute "
        " WHERE attrelid = $6::text::regclass AND attnum > 0 AND NOT attisdropped), $7::boolean) "
        f"RETURNING {_SNAPSHOT_COLUMNS}",
        snapshot_id, relation_name, list(y_columns), test_size, test_sampling,
        snapshot_table(snapshot_id), materialized)
    return _snapshot(row)


async def _quoted_relation(ex: Executor, relation_name: str) -> str:
    # Arrays go as jsonb and names as text everywhere: a client session sends parameters as text.
    return await ex.fetchval(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1::text::regclass",
        relation_name)


async def get_snapshot(ex: Executor, snapshot_id: int) -> Snapshot | None:
    row = await ex.fetchrow(f"SELECT {_SNAPSHOT_COLUMNS} FROM pgml.snapshots WHERE id = $1::bigint",
                            snapshot_id)
    return None if row is None else _snapshot(row)


async def last_snapshot(ex: Executor, project_id: int) -> Snapshot | None:
    """The snapshot of the project's most recent model (as PostgresML: a project has no snapshot column)."""
    row = await ex.fetchrow(
        f"SELECT {', '.join('s.' + c for c in _SNAPSHOT_FIELDS)} FROM pgml.snapshots s "
        "JOIN pgml.models m ON m.snapshot_id = s.id WHERE m.project_id = $1::bigint "
        "ORDER BY m.id DESC LIMIT 1", project_id)
    return None if row is None else _snapshot(row)


async def snapshot_columns(ex: Executor, snapshot_id: int) -> list[tuple[str, int, str]]:
    """(name, type oid, type name) of the snapshot's columns, in table order."""
    rows = await ex.fetch(
        "SELECT attname::text, atttypid::bigint, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        snapshot_table(snapshot_id))
    return [(name, int(oid), type_name) for name, oid, type_name in rows]


async def record_snapshot_analysis(ex: Executor, snapshot_id: int, columns: list, analysis: dict) -> None:
    """The fitted preprocessing's view of a snapshot: per column its type, NULLs, distinct values,
    statistics or top categories and the preprocessing chosen (PostgresML 2.x's `columns` shape),
    and our fuller `analysis` (the dashboard and users read both)."""
    await ex.execute("UPDATE pgml.snapshots SET columns = $2::jsonb, analysis = $3::jsonb, "
                     "updated_at = clock_timestamp() WHERE id = $1::bigint", snapshot_id, columns, analysis)


def _snapshot(row: tuple[Any, ...]) -> Snapshot:
    sid, relation, ys, test_size, sampling, status, columns, materialized = row
    return Snapshot(int(sid), relation, list(ys or []), float(test_size), sampling, status, columns,
                    bool(materialized))
