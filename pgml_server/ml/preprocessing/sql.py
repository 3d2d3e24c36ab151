"""Canonical SQL: the expression the upstream evaluates for each column, so the server decodes few types.

PostgreSQL does the type work (casts, epochs); the binary COPY then carries only float8, text and
float8[] (decode.py). Numeric, boolean and temporal values arrive as float8 with NULL already
turned into NaN by `coalesce`, so every such field is 8 bytes and rows of numbers alone have one
fixed layout (decoded as one strided view); text and arrays stay variable-width, NULL included.

Per kind (`col` is the quoted column, optionally qualified):
  numeric      coalesce((col)::float8, 'NaN')                 (oid: (col)::int8::float8)
  boolean      coalesce((col)::int4::float8, 'NaN')          (PostgreSQL has no bool → float8 cast)
  categorical  (col)::text                                   (NULL stays NULL: it is its own category)
  date         coalesce(extract(epoch from (col)::timestamp)::float8, 'NaN')   epoch of midnight, UTC
  timestamp    coalesce(extract(epoch from col)::float8, 'NaN')   the wall-clock time read as UTC
  timestamptz  coalesce(extract(epoch from col)::float8, 'NaN')   absolute: the session TimeZone is irrelevant
  time         coalesce(extract(epoch from col)::float8, 'NaN')   seconds since midnight
  timetz       coalesce(extract(epoch from col)::float8, 'NaN')   seconds since midnight UTC (offset applied)
  interval     coalesce(extract(epoch from col)::float8, 'NaN')   total seconds (month = 30 days, year = 365.25)
  array        (col)::float8[]  (bool[]: ::int4[]::float8[], oid[]: ::int8[]…)   NULL array / elements stay NULL

`timestamp` without time zone has no absolute meaning; extract(epoch) reads it as UTC, which
is what the calendar features (fit.py) assume too, so hour and day of week are the wall clock's.
`infinity` timestamps give ±Infinity, which the preprocessing treats as missing.
"""
from __future__ import annotations

from typing import Sequence

from .columns import ARRAY, BOOLEAN, CATEGORICAL, NUMERIC, TEMPORAL, ColumnKind

_NAN = "'NaN'::float8"


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, always double-quoted (embedded quotes doubled): safe for any name."""
    if "\0" in name:
        raise ValueError("an identifier cannot contain NUL")
    return '"' + name.replace('"', '""') + '"'


def canonical_expr(column: ColumnKind, qualifier: str | None = None) -> str:
    """The SQL expression (wire type `column.wire`) for one column; `qualifier` is a table alias."""
    col = quote_ident(column.name)
    if qualifier:
        col = f"{qualifier}.{col}"
    via = f"::{column.via}" if column.via else ""
    if column.kind in (NUMERIC, BOOLEAN):
        return f"coalesce(({col}){via}::float8, {_NAN})"
    if column.kind == CATEGORICAL:
        return f"({col})::text"
    if column.kind == TEMPORAL:
        source = f"({col})::timestamp" if column.subkind == "date" else col
        return f"coalesce(extract(epoch from {source})::float8, {_NAN})"
    if column.kind == ARRAY:
        return f"({col}){via}[]::float8[]" if via else f"({col})::float8[]"
    raise ValueError(f"unknown column kind {column.kind!r}")


def wire_types(columns: Sequence[ColumnKind]) -> list[str]:
    """The wire type of each canonical expression, for decode.decode_copy."""
    return [c.wire for c in columns]


def select_canonical(relation: str, columns: Sequence[ColumnKind], *, alias: str = "s",
                     where: str | None = None, order_by: str | None = None) -> str:
    """SELECT of every column's canonical expression from `relation` (already quoted, e.g. pgml.snapshot_7).

    Run it as COPY (<this>) TO STDOUT (FORMAT binary) and decode with
    decode_copy(data, wire_types(columns), [c.name for c in columns]). `where` and `order_by` are
    SQL text (the caller's own, never user input), e.g. order_by="ctid" or a key column.
    """
    if not columns:
        raise ValueError("no columns to select")
    exprs = ", ".join(canonical_expr(c, alias) for c in columns)
    sql = f"SELECT {exprs} FROM {relation} {alias}"
    return sql + (f" WHERE {where}" if where else "") + (f" ORDER BY {order_by}" if order_by else "")


def copy_query(relation: str, columns: Sequence[ColumnKind], **kw) -> str:
    """The whole COPY statement: COPY (SELECT …) TO STDOUT (FORMAT binary)."""
    return f"COPY ({select_canonical(relation, columns, **kw)}) TO STDOUT (FORMAT binary)"


# The columns of a relation with domains resolved to their base type (nested domains too, the
# outermost domain's typmod kept: a domain over numeric(10,2)) and enums flagged: one row per
# column, (name, base type oid, format_type of the base type, is_enum), in column order. Run with
# the relation name as $1 (e.g. executor.fetch(RELATION_COLUMNS_SQL, 'pgml.snapshot_7')), then
# kinds_from_rows(rows).
RELATION_COLUMNS_SQL = """
WITH RECURSIVE chain(attnum, attname, typid, typmod, depth) AS (
    SELECT a.attnum, a.attname, a.atttypid, a.atttypmod, 0
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
    SELECT c.attnum, c.attname, t.typbasetype, CASE WHEN c.typmod = -1 THEN t.typtypmod ELSE c.typmod END,
           c.depth + 1
    FROM chain c JOIN pg_catalog.pg_type t ON t.oid = c.typid
    WHERE t.typtype = 'd'
)
SELECT DISTINCT ON (c.attnum) c.attname::text, c.typid::int8,
       pg_catalog.format_type(c.typid, nullif(c.typmod, -1)), t.typtype = 'e'
FROM chain c JOIN pg_catalog.pg_type t ON t.oid = c.typid
ORDER BY c.attnum, c.depth DESC
"""


def kinds_from_rows(rows, exclude: Sequence[str] = ()) -> list[ColumnKind]:
    """ColumnKinds from RELATION_COLUMNS_SQL rows, leaving out `exclude` (the label columns)."""
    from .columns import column_kind
    return [column_kind(name, int(oid), type_name, enum=bool(enum))
            for name, oid, type_name, enum in rows if name not in exclude]
