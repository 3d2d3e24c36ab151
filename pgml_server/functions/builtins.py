"""pgml.version(): the first local function, and the smallest example of one; pgml.cache_stats()."""
from __future__ import annotations

from protocol import types

from .. import __version__
from ..ml.inference import gpu
from .base import register


@register("version", [], [("version", types.TEXT)], description="the pgml-server version")
def version(ctx) -> str:
    return __version__


_INT8 = types.INT8


@register("cache_stats", [], [
    ("models", _INT8), ("bytes", _INT8), ("max_bytes", _INT8), ("hits", _INT8), ("misses", _INT8),
    ("loads", _INT8), ("evictions", _INT8), ("model_ids", types.ARRAY_OF[_INT8]), ("gpu", types.TEXT),
    ("gpu_available", types.BOOL), ("gpu_min_batch", _INT8),
], description="this server process's model cache: size, bound, counters, cached model ids; GPU settings")
def cache_stats(ctx):
    """The answering process's own cache (with --workers N each worker has one)."""
    cache = ctx.models.cache
    mode = ctx.config.gpu
    return (len(cache), cache.nbytes, cache.max_bytes, cache.hits, cache.misses, cache.loads, cache.evictions,
            cache.model_ids(), mode, mode != "off" and gpu.gpu_available(), gpu.min_batch())


@register("relay_stats", [], [
    ("relay", types.TEXT), ("attached", _INT8), ("attaches", _INT8), ("handbacks", _INT8),
    ("client_messages", _INT8), ("upstream_messages", _INT8), ("handback_reasons", types.TEXT),
], description="this server process's relay: 'native' (the compiled relay core) or 'python', and its counters")
def relay_stats(ctx):
    """Whether plain sessions are relayed by the compiled core, and how much it has relayed."""
    relay = getattr(ctx.session.ctx, "relay", None)
    if relay is None:
        return ("python", 0, 0, 0, 0, 0, "")
    s = relay.stats()
    reasons = ", ".join(f"{name} {n}" for name, n in s["reasons"].items() if n)
    return ("native", s["attached"], s["attaches"], s["handbacks"], s["client_messages"], s["upstream_messages"],
            reasons)
