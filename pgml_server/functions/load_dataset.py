"""pgml.load_dataset: PostgresML's toy datasets, from the data scikit-learn ships, into the upstream."""
from __future__ import annotations

import pglast

from protocol import sqlstate, types
from protocol.errors import PgError

from ..ml import datasets
from ..ml.training import TrainingError
from .base import Param, register


@register("load_dataset", [Param("source", types.TEXT), Param("subset", types.TEXT, None),
                           Param("limit", types.INT8, None), Param("kwargs", types.JSONB, {})],
          [("table_name", types.TEXT), ("rows", types.INT8)],
          description="load a toy dataset (diabetes, iris, breast_cancer, digits, wine, linnerud)")
async def load_dataset(ctx, source, subset, limit, kwargs):
    try:
        ds = datasets.get_dataset(source)
    except TrainingError as exc:
        raise PgError(exc.sqlstate, exc.message, detail=exc.detail, hint=exc.hint) from None
    if limit is not None and limit < 0:
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, "limit must not be negative")
    ex = ctx.executor
    if await _same_table_exists(ex, ds):
        # Reloading keeps the table (and whatever depends on it: a user's views over it) and
        # replaces its rows, instead of DROP TABLE failing with 2BP01 "other objects depend on it".
        await ex.execute(f"TRUNCATE {datasets.qualified_table(ds)}")
    else:
        # One statement per round trip: the extended protocol takes a single command at a time.
        for statement in pglast.split(datasets.create_table_sql(ds)):
            await ex.execute(statement)
    payload = datasets.copy_payload(ds, limit=limit)
    tag = await ex.copy_in(ds.table, [c[0] for c in ds.columns], payload, "text")
    rows = int(tag.split()[-1]) if tag else 0
    ctx.notice(f"pgml.load_dataset: {rows} rows in {ds.table}")
    return (ds.table, rows)


async def _same_table_exists(ex, ds: datasets.Dataset) -> bool:
    """Whether the dataset's table exists with exactly the dataset's column names and types
    (the types compared by PostgreSQL itself: 'float4' and 'real' are one type)."""
    return bool(await ex.fetchval(
        "SELECT coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) = "
        "(SELECT array_agg(n ORDER BY o) FROM jsonb_array_elements_text($2::jsonb) WITH ORDINALITY j(n, o)) "
        "AND array_agg(a.atttypid ORDER BY a.attnum) = "
        "(SELECT array_agg(t::regtype::oid ORDER BY o) FROM jsonb_array_elements_text($3::jsonb) WITH ORDINALITY j(t, o)) "
        "FROM pg_attribute a WHERE a.attrelid = to_regclass($1::text) AND a.attnum > 0 AND NOT a.attisdropped), "
        "false)",
        datasets.qualified_table(ds), [c[0] for c in ds.columns], [c[1] for c in ds.columns]))
