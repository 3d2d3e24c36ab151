"""The in-memory model cache: project → deployed model, model id → model, compiled plans.

Bounded in bytes (LRU, like asyncpg's statement cache). Lookups are synchronous dict reads so a
cached prediction never awaits; a miss returns None and the caller awaits `load_*`. A deploy on
any replica arrives as NOTIFY pgml_deploy and drops the project's entry here.
"""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import numpy as np

log = logging.getLogger("pgml_server.cache")


@dataclass
class CachedModel:
    model_id: int
    project: str | None
    task: str
    num_features: int
    plan: Any                 # an inference Plan
    nbytes: int
    inputs: Any = None        # model.ModelInputs (predict inputs → features), None: numbers as they are
    labels: Any = None        # preprocessing.Labels of text classes (pgml.predict_label), or None


# load_model(model_id | None, project | None) -> CachedModel | None
Loader = Callable[[int | None, str | None], Awaitable[CachedModel | None]]


class ModelCache:
    def __init__(self, loader: Loader, max_bytes: int) -> None:
        self._loader = loader
        self._max_bytes = max_bytes
        self._models: OrderedDict[int, CachedModel] = OrderedDict()
        self._deployed: dict[str, int] = {}          # project name → deployed model id
        self._bytes = 0
        self._loading: dict[tuple, asyncio.Future] = {}
        # Counters for pgml.cache_stats(): lookups answered from memory or not, models read from
        # the upstream, entries dropped to stay under max_bytes.
        self.hits = 0
        self.misses = 0
        self.loads = 0
        self.evictions = 0

    # -- synchronous lookups (the hot path)

    def deployed(self, project: str) -> CachedModel | None:
        model_id = self._deployed.get(project)
        entry = None if model_id is None else self._models.get(model_id)
        return self._counted(model_id, entry)

    def model(self, model_id: int) -> CachedModel | None:
        return self._counted(model_id, self._models.get(model_id))

    def _counted(self, model_id, entry: CachedModel | None) -> CachedModel | None:
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._models.move_to_end(model_id)
        return entry

    # -- loading

    async def load_deployed(self, project: str) -> CachedModel | None:
        entry = await self._load_once(("project", project), lambda: self._loader(None, project))
        if entry is not None:
            self._deployed[project] = entry.model_id
        return entry

    async def load_model(self, model_id: int) -> CachedModel | None:
        return await self._load_once(("model", model_id), lambda: self._loader(model_id, None))

    async def _load_once(self, key: tuple, load: Callable[[], Awaitable[CachedModel | None]]):
        """Concurrent misses for the same model share one load."""
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut = asyncio.get_running_loop().create_future()
        self._loading[key] = fut
        try:
            entry = await load()
            if entry is not None:
                self.loads += 1
                self._insert(entry)
            fut.set_result(entry)
            return entry
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()     # retrieved: no "never retrieved" warning when nobody else waits
            raise
        finally:
            del self._loading[key]

    def _insert(self, entry: CachedModel) -> None:
        old = self._models.pop(entry.model_id, None)
        if old is not None:
            self._bytes -= old.nbytes
        self._models[entry.model_id] = entry
        self._bytes += entry.nbytes
        while self._bytes > self._max_bytes and len(self._models) > 1:
            _, evicted = self._models.popitem(last=False)
            self._bytes -= evicted.nbytes
            self.evictions += 1
            log.info("evicted model %d from the cache (%d bytes)", evicted.model_id, evicted.nbytes)

    # -- invalidation

    def invalidate_project(self, project: str) -> None:
        """The project's deployment changed (NOTIFY): the next prediction loads the new model."""
        self._deployed.pop(project, None)

    def clear(self) -> None:
        self._models.clear()
        self._deployed.clear()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def full(self) -> bool:
        """True when one more model would evict another (warm-up stops there)."""
        return self._bytes >= self._max_bytes

    def model_ids(self) -> list[int]:
        """Cached model ids, least recently used first."""
        return list(self._models)

    def __len__(self) -> int:
        return len(self._models)


def features_matrix(values: Any, num_features: int | None = None) -> np.ndarray:
    """Features as a float64 row matrix; NULL elements become NaN (libraries treat them as missing)."""
    if isinstance(values, np.ndarray):
        arr = values.astype(np.float64, copy=False)
    else:
        arr = np.array([np.nan if v is None else v for v in _flatten(values)], dtype=np.float64)
    return arr.reshape(1, -1) if arr.ndim == 1 else arr


def _flatten(values: Any):
    for v in values:
        if isinstance(v, (list, tuple)):
            yield from _flatten(v)
        else:
            yield v
