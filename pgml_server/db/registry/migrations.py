"""Versioned schema migrations of the `pgml` registry in the upstream.

Each step is `(version, sql)`; `migrate()` applies the missing ones in one transaction under an
advisory lock, so several servers starting against the same upstream at once apply each step
exactly once, and a second run applies nothing.

Privileges: USAGE on the schema and SELECT on the views go to PUBLIC (PostgresML users query
`pgml.overview` and friends). Table privileges are the operator's choice: the migrating role owns
the tables, and roles that train or deploy need INSERT/UPDATE on them (GRANT them, or run
pgml-server's --upstream as the owner). `pgml.settings` holds the artifact signing key: keep it
readable by the server's role only.
"""
from __future__ import annotations

from ..executor import Executor

# 'pgmlmigr' as a big-endian integer: fixed, so every server takes the same lock.
MIGRATION_LOCK_KEY = int.from_bytes(b"pgmlmigr", "big")

_V1 = """
CREATE TABLE pgml.projects (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    task text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE pgml.snapshots (
    id bigserial PRIMARY KEY,
    relation_name text NOT NULL,
    y_column_name text[],
    test_size real NOT NULL,
    test_sampling text NOT NULL,
    status text NOT NULL,
    columns jsonb,
    analysis jsonb,
    materialized boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE pgml.models (
    id bigserial PRIMARY KEY,
    project_id bigint NOT NULL REFERENCES pgml.projects (id) ON DELETE CASCADE,
    snapshot_id bigint REFERENCES pgml.snapshots (id) ON DELETE SET NULL,
    num_features integer,
    algorithm text NOT NULL,
    runtime text NOT NULL DEFAULT 'python',
    hyperparams jsonb NOT NULL DEFAULT '{}',
    status text NOT NULL CHECK (status IN ('new', 'in_progress', 'successful', 'failed')),
    metrics jsonb,
    search text,
    search_params jsonb NOT NULL DEFAULT '{}',
    search_args jsonb NOT NULL DEFAULT '{}',
    -- Not in PostgresML: the upstream backend that trains the model, so a restarted server can
    -- tell a training orphaned by a crash from one still running on another replica.
    backend_pid integer,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX models_project_id_idx ON pgml.models (project_id);
CREATE INDEX models_snapshot_id_idx ON pgml.models (snapshot_id);
CREATE INDEX models_in_progress_idx ON pgml.models (id) WHERE status = 'in_progress';
CREATE TABLE pgml.deployments (
    id bigserial PRIMARY KEY,
    project_id bigint NOT NULL REFERENCES pgml.projects (id) ON DELETE CASCADE,
    model_id bigint NOT NULL REFERENCES pgml.models (id) ON DELETE CASCADE,
    strategy text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX deployments_project_id_idx ON pgml.deployments (project_id, id);
CREATE INDEX deployments_model_id_idx ON pgml.deployments (model_id);
CREATE TABLE pgml.files (
    id bigserial PRIMARY KEY,
    model_id bigint NOT NULL REFERENCES pgml.models (id) ON DELETE CASCADE,
    path text NOT NULL,
    part integer NOT NULL,
    data bytea NOT NULL,
    UNIQUE (model_id, path, part)
);
CREATE TABLE pgml.settings (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE VIEW pgml.overview AS
SELECT p.name, d.created_at AS deployed_at, p.task, m.algorithm, m.runtime,
       s.relation_name, s.y_column_name, s.test_sampling, s.test_size
FROM pgml.projects p
JOIN pgml.models m ON m.project_id = p.id
JOIN pgml.deployments d ON d.project_id = p.id AND d.model_id = m.id
JOIN pgml.snapshots s ON s.id = m.snapshot_id
ORDER BY d.created_at DESC;
CREATE VIEW pgml.trained_models AS
SELECT m.id, p.name, p.task, m.algorithm, m.runtime, m.created_at
FROM pgml.projects p
JOIN pgml.models m ON m.project_id = p.id
ORDER BY m.created_at DESC;
CREATE VIEW pgml.deployed_models AS
SELECT m.id, p.name, p.task, m.algorithm, m.runtime, d.created_at AS deployed_at
FROM pgml.projects p
JOIN (SELECT DISTINCT ON (project_id) project_id, model_id, created_at
      FROM pgml.deployments ORDER BY project_id, id DESC) d ON d.project_id = p.id
JOIN pgml.models m ON m.id = d.model_id
ORDER BY p.name;
GRANT USAGE ON SCHEMA pgml TO PUBLIC;
GRANT SELECT ON pgml.overview, pgml.trained_models, pgml.deployed_models TO PUBLIC;
"""


# pgml.feature(x): any supported column value as one float8, computed by PostgreSQL itself, so a
# snapshot is read and a row constructor predicted as float8 only (one binary layout, decoded as
# one numpy block): numbers as they are, booleans 0/1, text and enum labels as a 53-bit hash
# (exact in a float8; the fitted preprocessor maps hashes to categories), dates, timestamps,
# times and intervals as seconds (epoch, since midnight, or in all). Inlinable SQL functions.
_FEATURE_TYPES = [      # (argument type, body, volatility: STABLE where a cast or date_part is only stable)
    ("smallint", "$1::float8", "IMMUTABLE"), ("integer", "$1::float8", "IMMUTABLE"),
    ("bigint", "$1::float8", "IMMUTABLE"), ("real", "$1::float8", "IMMUTABLE"),
    ("double precision", "$1", "IMMUTABLE"), ("numeric", "$1::float8", "IMMUTABLE"),
    ("boolean", "$1::int::float8", "IMMUTABLE"),
    ("text", "(hashtextextended($1, 0) >> 11)::float8", "IMMUTABLE"),
    ("anyenum", "(hashtextextended($1::text, 0) >> 11)::float8", "STABLE"),
    ("date", "date_part(''epoch'', $1)", "IMMUTABLE"),
    ("timestamp", "date_part(''epoch'', $1)", "IMMUTABLE"),
    ("timestamptz", "date_part(''epoch'', $1)", "STABLE"),
    ("time", "date_part(''epoch'', $1)", "IMMUTABLE"),
    ("timetz", "date_part(''epoch'', $1)", "IMMUTABLE"),
    ("interval", "date_part(''epoch'', $1)", "IMMUTABLE"),
]
_V2 = "\n".join(
    f"CREATE OR REPLACE FUNCTION pgml.feature({sql_type}) RETURNS float8 LANGUAGE sql {volatility} PARALLEL SAFE "
    f"AS 'SELECT {body}';" for sql_type, body, volatility in _FEATURE_TYPES) + "\n" + \
    "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pgml TO PUBLIC;"


# Version 3: the dashboard's notebooks (versions 2 and 4 belong to other changes; migrate()
# applies missing versions in order, gaps included). Notebooks are shared by every dashboard
# user (as in PostgresML's dashboard); the SQL in a cell runs as whoever presses Run. The
# indexes serve the dashboard's pages: models of a project in training order, latest first.
_V3 = """
CREATE TABLE pgml.notebooks (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    tutorial text UNIQUE,
    owner name NOT NULL DEFAULT current_user,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE pgml.notebook_cells (
    id bigserial PRIMARY KEY,
    notebook_id bigint NOT NULL REFERENCES pgml.notebooks (id) ON DELETE CASCADE,
    position integer NOT NULL,
    kind text NOT NULL CHECK (kind IN ('sql', 'markdown')),
    contents text NOT NULL DEFAULT '',
    output jsonb,
    executed_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX notebook_cells_notebook_idx ON pgml.notebook_cells (notebook_id, position);
CREATE INDEX models_project_created_idx ON pgml.models (project_id, id DESC);
GRANT SELECT, INSERT, UPDATE, DELETE ON pgml.notebooks, pgml.notebook_cells TO PUBLIC;
GRANT USAGE ON SEQUENCE pgml.notebooks_id_seq, pgml.notebook_cells_id_seq TO PUBLIC;
"""



# Version 4: scheduled retraining (pgml.schedule) and drift monitoring (prediction samples).
# A run trains as the schedule's `owner`; the trigger makes whoever writes what a schedule does its
# owner (current_user), so a role allowed to write pgml.schedules cannot borrow another role's
# privileges by setting `owner` (or arguments) itself. The server's own bookkeeping (next_run,
# last_*) does not fire it.
# (Version 3 belongs to another branch; migrate() applies whatever is missing, gaps allowed.)
_V4 = """
CREATE TABLE pgml.schedules (
    id bigserial PRIMARY KEY,
    project_id bigint NOT NULL UNIQUE REFERENCES pgml.projects (id) ON DELETE CASCADE,
    project_name text NOT NULL,
    every interval,
    cron text,
    arguments jsonb NOT NULL DEFAULT '{}',
    retrain_on_drift real,
    drift_pending boolean NOT NULL DEFAULT false,
    next_run timestamptz NOT NULL,
    last_run timestamptz,
    last_status text,
    last_model_id bigint,
    last_error text,
    owner name NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((every IS NULL) <> (cron IS NULL))
);
CREATE INDEX schedules_next_run_idx ON pgml.schedules (next_run);
CREATE FUNCTION pgml.schedules_owner() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.owner := current_user; RETURN NEW; END $$;
CREATE TRIGGER schedules_owner BEFORE INSERT OR UPDATE OF project_id, project_name, every, cron, arguments, retrain_on_drift, owner ON pgml.schedules FOR EACH ROW EXECUTE FUNCTION pgml.schedules_owner();
CREATE TABLE pgml.schedule_history (
    id bigserial PRIMARY KEY,
    schedule_id bigint REFERENCES pgml.schedules (id) ON DELETE SET NULL,
    project_name text NOT NULL,
    due_at timestamptz NOT NULL,
    reason text NOT NULL,
    status text NOT NULL CHECK (status IN ('running', 'successful', 'failed')),
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    model_id bigint,
    deployed boolean,
    error text,
    server text,
    backend_pid integer
);
CREATE INDEX schedule_history_schedule_idx ON pgml.schedule_history (schedule_id, id);
CREATE INDEX schedule_history_running_idx ON pgml.schedule_history (schedule_id) WHERE status = 'running';
CREATE VIEW pgml.schedule_runs AS
SELECT id, schedule_id, project_name, reason, due_at, started_at, finished_at, status, model_id, deployed,
       error, server, backend_pid
FROM pgml.schedule_history
ORDER BY id;
CREATE TABLE pgml.model_bins (
    model_id bigint PRIMARY KEY REFERENCES pgml.models (id) ON DELETE CASCADE,
    feature_names text[] NOT NULL,
    edges float8[] NOT NULL,
    reference int8[] NOT NULL,
    rows bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE pgml.prediction_samples (
    id bigserial PRIMARY KEY,
    model_id bigint NOT NULL REFERENCES pgml.models (id) ON DELETE CASCADE,
    window_start timestamptz NOT NULL,
    window_end timestamptz NOT NULL,
    server text,
    predictions bigint NOT NULL,
    calls bigint NOT NULL,
    sampled_rows bigint NOT NULL,
    bins int8[],
    latency_sum_us float8 NOT NULL,
    latency_hist int8[] NOT NULL
);
CREATE INDEX prediction_samples_model_idx ON pgml.prediction_samples (model_id, window_end);
CREATE VIEW pgml.prediction_stats AS
WITH hist AS (
    SELECT s.model_id, h.i, sum(h.c)::float8 AS c
    FROM pgml.prediction_samples s, unnest(s.latency_hist) WITH ORDINALITY AS h(c, i)
    GROUP BY s.model_id, h.i
), cum AS (
    SELECT model_id, i, sum(c) OVER (PARTITION BY model_id ORDER BY i) AS run,
           sum(c) OVER (PARTITION BY model_id) AS total
    FROM hist
), pct AS (
    SELECT model_id,
           min(i) FILTER (WHERE run >= 0.50 * total) AS i50,
           min(i) FILTER (WHERE run >= 0.95 * total) AS i95,
           min(i) FILTER (WHERE run >= 0.99 * total) AS i99
    FROM cum WHERE total > 0 GROUP BY model_id
), tot AS (
    SELECT model_id, min(window_start) AS window_start, max(window_end) AS window_end,
           sum(predictions)::bigint AS predictions, sum(calls)::bigint AS calls,
           sum(sampled_rows)::bigint AS sampled_rows, sum(latency_sum_us) AS latency_sum_us
    FROM pgml.prediction_samples GROUP BY model_id
)
SELECT p.name AS project_name, t.model_id, t.window_start, t.window_end, t.predictions, t.calls,
       t.sampled_rows, (t.latency_sum_us / nullif(t.calls, 0))::real AS mean_latency_us,
       power(2, (q.i50 - 0.5) / 4.0)::real AS p50_latency_us,
       power(2, (q.i95 - 0.5) / 4.0)::real AS p95_latency_us,
       power(2, (q.i99 - 0.5) / 4.0)::real AS p99_latency_us
FROM tot t
JOIN pgml.models m ON m.id = t.model_id
JOIN pgml.projects p ON p.id = m.project_id
LEFT JOIN pct q ON q.model_id = t.model_id;
GRANT SELECT ON pgml.schedule_runs, pgml.prediction_stats TO PUBLIC;
"""


MIGRATIONS: list[tuple[int, str]] = [
    (1, _V1),
    (2, _V2),
    (3, _V3),
    (4, _V4),
]

_BOOTSTRAP = (
    "CREATE SCHEMA IF NOT EXISTS pgml",
    "CREATE TABLE IF NOT EXISTS pgml.schema_migrations ("
    " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT clock_timestamp())",
)


def statements(sql: str) -> list[str]:
    """Split a migration into statements (one per Parse, so any executor can run it).

    A statement ends with a line ending in ';'; the migrations above hold no function bodies.
    """
    parts, current = [], []
    for line in sql.strip().splitlines():
        current.append(line)
        if line.rstrip().endswith(";"):
            parts.append("\n".join(current).rstrip().rstrip(";"))
            current = []
    if "".join(current).strip():
        parts.append("\n".join(current))
    return parts


async def migrate(ex: Executor) -> list[int]:
    """Apply the missing migrations; returns the versions applied now (empty when up to date)."""
    await ex.execute("BEGIN")
    try:
        applied = await _apply_missing(ex)
    except BaseException:
        await ex.execute("ROLLBACK")
        raise
    await ex.execute("COMMIT")
    return applied


async def _apply_missing(ex: Executor) -> list[int]:
    # The lock comes first: even CREATE SCHEMA IF NOT EXISTS races with itself.
    await ex.execute("SELECT pg_advisory_xact_lock($1::bigint)", MIGRATION_LOCK_KEY)
    for sql in _BOOTSTRAP:
        await ex.execute(sql)
    done = {row[0] for row in await ex.fetch("SELECT version FROM pgml.schema_migrations")}
    applied = []
    for version, sql in MIGRATIONS:
        if version in done:
            continue
        for statement in statements(sql):
            await ex.execute(statement)
        await ex.execute("INSERT INTO pgml.schema_migrations (version) VALUES ($1::integer)", version)
        applied.append(version)
    return applied


async def schema_version(ex: Executor) -> int:
    """The highest applied migration, 0 for an upstream never migrated."""
    exists = await ex.fetchval("SELECT to_regclass('pgml.schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    return await ex.fetchval("SELECT coalesce(max(version), 0) FROM pgml.schema_migrations")
