"""pgml.version(): the first local function, and the smallest example of one."""
from __future__ import annotations

from protocol import types

from .. import __version__
from .base import register


@register("version", [], [("version", types.TEXT)], description="the pgml-server version")
def version(ctx) -> str:
    return __version__
