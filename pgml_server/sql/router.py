"""Decide what happens to a statement: forward it, answer it locally, or rewrite it.

The session calls the router only for SQL that contains `pgml` (a bytes search decides that);
results are cached by SQL text, so a statement is parsed once however often it runs.
Classification is pure: it never touches the network. The rewrite strategies (sql/predict/) are
given to the router by the server as a `Rewriter`, so the router imports none of them.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import pglast

from protocol import sqlstate
from protocol.errors import PgError

from ..functions import FUNCTIONS
from .astutil import func_name, pgml_calls, statement_source
from .compiler import LocalStatement, compile_local

FORWARD = "forward"
LOCAL = "local"
MULTI = "multi"
ERROR = "error"
REWRITE = "rewrite"

PREDICT_FUNCTIONS = frozenset({"predict", "score", "predict_proba", "predict_joint", "predict_label", "predict_batch",
                               "decompose"})


class RewritePlan(Protocol):
    """A statement over tables whose pgml.predict* calls the server rewrites (sql/predict/)."""
    param_types: list[int]                       # parameter types it infers (0: the client's choice)
    columns: list[tuple[str, int]] | None

    async def run_simple(self, session, sql: str) -> None: ...
    async def run_extended(self, session, portal) -> None: ...
    async def describe(self, session, prepared, portal) -> bytes: ...


# rewriter(sql, stmt) -> a REWRITE Route, or None when no strategy applies
Rewriter = Callable[[str, Any], "Route | None"]


@dataclass
class Route:
    kind: str
    statement: LocalStatement | None = None
    error: PgError | None = None
    parts: list[tuple[str, "Route"]] = field(default_factory=list)
    rewrite: RewritePlan | None = None


_FORWARD = Route(FORWARD)


class Router:
    def __init__(self, cache_size: int = 4096, rewriter: Rewriter | None = None) -> None:
        self._cache: OrderedDict[str, Route] = OrderedDict()
        self._cache_size = cache_size
        self._rewriter = rewriter

    def classify(self, sql: str) -> Route:
        route = self._cache.get(sql)
        if route is not None:
            self._cache.move_to_end(sql)
            return route
        route = self._classify(sql)
        self._cache[sql] = route
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return route

    def _classify(self, sql: str) -> Route:
        try:
            stmts = pglast.parse_sql(sql)
        except pglast.parser.ParseError:
            return _FORWARD         # the upstream reports the syntax error exactly as it should
        if len(stmts) > 1:
            parts = [(statement_source(sql, s), self._classify_stmt(statement_source(sql, s), s.stmt))
                     for s in stmts]
            if all(r.kind == FORWARD for _, r in parts):
                return _FORWARD
            return Route(MULTI, parts=parts)
        if not stmts:
            return _FORWARD
        return self._classify_stmt(sql, stmts[0].stmt)

    def _classify_stmt(self, sql: str, stmt) -> Route:
        calls = pgml_calls(stmt)
        if not calls:
            return _FORWARD
        try:
            local = compile_local(stmt)
        except PgError as err:
            return Route(ERROR, error=err)
        if local is not None:
            return Route(LOCAL, statement=local)
        if any(func_name(c) in PREDICT_FUNCTIONS for c in calls) and self._rewriter is not None:
            try:
                rewritten = self._rewriter(sql, stmt)
            except PgError as err:
                return Route(ERROR, error=err)
            if rewritten is not None:
                return rewritten
        if all(func_name(c) not in FUNCTIONS for c in calls):
            return _FORWARD
        return Route(ERROR, error=PgError(
            sqlstate.FEATURE_NOT_SUPPORTED,
            "pgml-server cannot run this use of " + ", ".join(sorted({f"pgml.{func_name(c)}" for c in calls})),
            hint="pgml.* functions run as SELECT pgml.f(...) or SELECT * FROM pgml.f(...) with constant or "
                 "bound arguments; pgml.predict* can also appear inside queries over tables."))
