"""The data explorer's SQL: schemas, relations, and column profiles computed in the upstream.

Nothing pulls a whole table into Python. A table's columns are profiled from `pg_stats` when
ANALYZE has filled it (instant at any size), otherwise on a sample computed by the upstream:
`TABLESAMPLE SYSTEM` of about SAMPLE_ROWS rows for large tables, `LIMIT` for views and small
tables. Each page says which. Relation names in SQL are always quoted by the catalog
(`format('%I.%I')`), never taken from the URL.
"""
from __future__ import annotations

import math
from typing import Any

import asyncpg

SAMPLE_ROWS = 50_000
BUCKETS = 20
TOP = 8
PAGE_ROWS = 50
NUMERIC_TYPES = {20, 21, 23, 700, 701, 1700}          # int8, int2, int4, float4, float8, numeric

_HIDDEN = "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg_temp_%' " \
          "AND n.nspname NOT LIKE 'pg_toast_temp_%'"


async def schemas(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch(f"""
        SELECT n.nspname AS name, count(c.oid) FILTER (WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')) AS relations,
               has_schema_privilege(n.oid, 'USAGE') AS usable
        FROM pg_namespace n LEFT JOIN pg_class c ON c.relnamespace = n.oid
        WHERE {_HIDDEN} GROUP BY n.oid, n.nspname ORDER BY n.nspname""")
    return [dict(r) for r in rows]


async def relations(conn: asyncpg.Connection, schema: str) -> list[dict[str, Any]]:
    rows = await conn.fetch("""
        SELECT c.relname AS name, c.relkind::text AS kind, greatest(c.reltuples, 0)::int8 AS rows_estimate,
               c.reltuples < 0 AS never_analyzed, pg_total_relation_size(c.oid) AS bytes,
               has_table_privilege(c.oid, 'SELECT') AS readable
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
        ORDER BY c.relname LIMIT 2000""", schema)
    return [dict(r) for r in rows]


async def relation(conn: asyncpg.Connection, schema: str, name: str) -> dict[str, Any] | None:
    row = await conn.fetchrow("""
        SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS qualified, c.relkind::text AS kind,
               greatest(c.reltuples, 0)::int8 AS rows_estimate, c.reltuples < 0 AS never_analyzed,
               pg_total_relation_size(c.oid) AS bytes
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')""", schema, name)
    return None if row is None else dict(row)


async def columns(conn: asyncpg.Connection, oid: int) -> list[tuple[str, int, str]]:
    rows = await conn.fetch("""
        SELECT attname::text, atttypid::int8, format_type(atttypid, atttypmod) FROM pg_attribute
        WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum""", oid)
    return [(r[0], int(r[1]), r[2]) for r in rows]


async def sample_rows(conn: asyncpg.Connection, qualified: str, page: int) -> tuple[list[str], list[list]]:
    stmt = await conn.prepare(f"SELECT * FROM {qualified} LIMIT {PAGE_ROWS + 1} OFFSET {max(page, 0) * PAGE_ROWS}")
    rows = await stmt.fetch()
    return [a.name for a in stmt.get_attributes()], [list(r) for r in rows]


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ---------------------------------------------------------------- column profiles

async def stats_profile(conn: asyncpg.Connection, schema: str, table: str, cols: list[tuple[str, int, str]],
                        rows_estimate: int) -> list[dict[str, Any]] | None:
    """Profiles from pg_stats (only rows the role may read appear there); None when not analysed."""
    rows = await conn.fetch("""
        SELECT attname::text, null_frac, n_distinct, most_common_vals::text::text[] AS mcv,
               most_common_freqs AS mcf, histogram_bounds::text::text[] AS bounds
        FROM pg_stats WHERE schemaname = $1 AND tablename = $2""", schema, table)
    if not rows:
        return None
    stats = {r["attname"]: r for r in rows}
    out = []
    for name, oid, type_name in cols:
        s = stats.get(name)
        p: dict[str, Any] = {"name": name, "type": type_name, "numeric": oid in NUMERIC_TYPES}
        if s is None:
            out.append(p | {"null_frac": None, "distinct": None})
            continue
        nd = s["n_distinct"]
        p["null_frac"] = s["null_frac"]
        p["distinct"] = round(-nd * rows_estimate) if nd < 0 else round(nd)
        if s["mcv"]:
            p["top"] = [(v, f * rows_estimate) for v, f in zip(s["mcv"][:TOP], s["mcf"][:TOP])]
        bounds = _floats(s["bounds"]) if p["numeric"] and s["bounds"] else None
        if bounds and len(bounds) >= 2:
            share = max(1.0 - (s["null_frac"] or 0) - sum(s["mcf"] or []), 0.0) / (len(bounds) - 1)
            edges, counts = _merge_bounds(bounds, share * rows_estimate)
            p["hist"] = {"edges": edges, "counts": counts, "density": True}
        out.append(p)
    return out


def _floats(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def _merge_bounds(bounds: list[float], per_bucket: float) -> tuple[list[float], list[float]]:
    """pg_stats' equi-depth buckets (up to 100) merged to about BUCKETS bars of equal depth."""
    step = max(1, math.ceil((len(bounds) - 1) / BUCKETS))
    edges = bounds[::step]
    if edges[-1] != bounds[-1]:
        edges.append(bounds[-1])
    counts = []
    for i in range(len(edges) - 1):
        n = min(step, len(bounds) - 1 - i * step)
        counts.append(per_bucket * n)
    return edges, counts


def sample_clause(qualified: str, kind: str, rows_estimate: int) -> tuple[str, str]:
    """(FROM item, a sentence saying what it is) for profiling a relation."""
    if kind in ("r", "m") and rows_estimate > SAMPLE_ROWS:
        pct = max(0.01, min(100.0, 100.0 * SAMPLE_ROWS / rows_estimate))
        return (f"{qualified} TABLESAMPLE SYSTEM ({pct:.4f}) REPEATABLE (0)",
                f"computed in the upstream on a TABLESAMPLE SYSTEM sample of about {SAMPLE_ROWS:,} rows")
    return (f"(SELECT * FROM {qualified} LIMIT {SAMPLE_ROWS}) s",
            "computed in the upstream over all rows" if rows_estimate <= SAMPLE_ROWS and kind in ("r", "m")
            else f"computed in the upstream over the first {SAMPLE_ROWS:,} rows")


async def sample_profile(conn: asyncpg.Connection, from_item: str,
                         cols: list[tuple[str, int, str]]) -> tuple[int, list[dict[str, Any]]]:
    """(rows in the sample, per column: NULLs, distinct values, histogram or top values), two queries."""
    if not cols:
        return 0, []
    aggs = ["count(*)"]
    for name, oid, _ in cols:
        c = _q(name)
        aggs.append(f"count({c})")
        if oid in NUMERIC_TYPES:
            aggs += [f"count(DISTINCT {c})", f"min({c})::float8", f"max({c})::float8"]
        else:
            aggs += [f"count(DISTINCT {c}::text)", "NULL::float8", "NULL::float8"]
    row = await conn.fetchrow(f"SELECT {', '.join(aggs)} FROM {from_item}")
    total = row[0]
    profiles, parts = [], []
    for k, (name, oid, type_name) in enumerate(cols):
        nonnull, distinct, lo, hi = row[1 + 4 * k: 5 + 4 * k]
        profiles.append({"name": name, "type": type_name, "numeric": oid in NUMERIC_TYPES,
                         "null_frac": (total - nonnull) / total if total else None, "distinct": distinct,
                         "nulls": total - nonnull})
        c = _q(name)
        if _histogram(oid, lo, hi, distinct):
            parts.append(f"(SELECT {k}, least(width_bucket({c}::float8, {lo!r}, {hi!r}, {BUCKETS}), {BUCKETS})::text, "
                         f"count(*) FROM src WHERE {c} IS NOT NULL GROUP BY 2)")
        elif nonnull:
            parts.append(f"(SELECT {k}, {c}::text, count(*) FROM src WHERE {c} IS NOT NULL GROUP BY 2 "
                         f"ORDER BY 3 DESC, 2 LIMIT {TOP})")
    if parts:
        names = ", ".join(_q(n) for n, _, _ in cols)
        rows = await conn.fetch(f"WITH src AS MATERIALIZED (SELECT {names} FROM {from_item}) "
                                + " UNION ALL ".join(parts))
        oid_of = [oid for _, oid, _ in cols]
        by_col: dict[int, list] = {}
        for k, key, n in rows:
            by_col.setdefault(k, []).append((key, n))
        for k, values in by_col.items():
            p = profiles[k]
            nonnull, distinct, lo, hi = row[1 + 4 * k: 5 + 4 * k]
            if _histogram(oid_of[k], lo, hi, distinct):
                counts = [0] * BUCKETS
                for key, n in values:
                    counts[max(int(key), 1) - 1] += n
                edges = [lo + (hi - lo) * i / BUCKETS for i in range(BUCKETS + 1)]
                p["hist"] = {"edges": edges, "counts": counts, "density": False}
            else:
                p["top"] = sorted(values, key=lambda kv: -kv[1])
    return total, profiles


def _histogram(oid: int, lo, hi, distinct) -> bool:
    """A numeric column with a finite range and more values than TOP gets a histogram, else top values."""
    return (oid in NUMERIC_TYPES and lo is not None and hi is not None and math.isfinite(lo)
            and math.isfinite(hi) and hi > lo and distinct > TOP)
