"""Predictions inside SQL over tables: the stream (one pass) and general (two passes) strategies.

`rewrite(sql, stmt)` is the router's Rewriter: the stream strategy where it applies (predict only
as whole top-level target-list entries), the general one otherwise.
"""
from __future__ import annotations

from ..router import REWRITE, Route
from .general import GeneralPredict
from .stream import StreamPredict


def rewrite(sql: str, stmt) -> Route | None:
    stream = StreamPredict.build(stmt)
    if stream is not None:
        return Route(REWRITE, rewrite=stream)
    general = GeneralPredict.build(stmt)
    if general is not None:
        return Route(REWRITE, rewrite=general)
    return None
