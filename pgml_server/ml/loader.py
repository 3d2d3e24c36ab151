"""The model service of a worker: its own upstream pool, the model cache, its loader and the
NOTIFY listener that keeps the cache in step with deploys on every replica.

Built from the configuration and the upstream DSN alone. The server's own connections (from
--upstream) apply migrations, read model artifacts and LISTEN for deployments; everything done
*for a client* runs on that client's session instead.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from functools import partial

import asyncpg

from protocol.errors import PgError

from ..config import Config
from ..db import registry
from ..db.executor import AsyncpgExecutor
from . import artifacts
from .cache import CachedModel, ModelCache
from .inference import compile_plan, gpu_available, set_min_batch
from .model import ModelInputs, unbundle
from .monitor import MonitorHub
from .training.worker import prestart

log = logging.getLogger("pgml_server.models")

DEPLOY_CHANNEL = "pgml_deploy"


class ModelService:
    def __init__(self, config: Config, upstream_dsn: str, pool: asyncpg.Pool, key: bytes) -> None:
        self.config = config
        self.upstream_dsn = upstream_dsn
        self.pool = pool
        self.key = key
        self.cache = ModelCache(self._load, config.model_cache_mb << 20)
        self._listener: asyncpg.Connection | None = None
        self._listen_task: asyncio.Task | None = None
        self._stopping = False
        # Drift monitoring (ml/monitor.py): off with --monitor-sample 0.
        self.identity = f"{socket.gethostname()}:{config.port} pid {os.getpid()}"
        self.monitors = MonitorHub(config.monitor_sample, config.monitor_flush_seconds, self.identity) \
            if config.monitor_sample > 0 else None

    @classmethod
    async def start(cls, config: Config, upstream_dsn: str) -> "ModelService":
        set_min_batch(config.gpu_min_batch)
        if config.gpu == "on" and not gpu_available():
            log.warning("--gpu on, but no usable GPU (CuPy and a CUDA device): predicting on the CPU")
        pool = await asyncpg.create_pool(upstream_dsn, min_size=1, max_size=4)
        async with pool.acquire() as conn:
            ex = AsyncpgExecutor(conn)
            await registry.migrate(ex)
            await registry.fail_orphaned_models(ex)
            if config.artifact_key:
                key = bytes.fromhex(config.artifact_key)
            else:
                key = await registry.get_or_create_hmac_key(ex)
        service = cls(config, upstream_dsn, pool, key)
        if service.monitors is not None:
            service.monitors.start(pool)
        await service._listen()
        service._listen_task = asyncio.ensure_future(service._keep_listening())
        asyncio.ensure_future(service.warm())
        # The training fork server takes ~1-2 s to start (it preloads scikit-learn and friends):
        # start it now, off the event loop, rather than inside the first pgml.train.
        asyncio.get_running_loop().run_in_executor(None, prestart)
        return service

    async def stop(self) -> None:
        self._stopping = True
        if self._listen_task is not None:
            self._listen_task.cancel()
        if self._listener is not None:
            await self._listener.close()
        if self.monitors is not None:
            await self.monitors.stop(self.pool)      # the last window's samples
        await self.pool.close()

    # -- the registry on the server's own connection

    async def run(self, fn, *args):
        """Run a registry function on a pooled server connection."""
        async with self.pool.acquire() as conn:
            return await fn(AsyncpgExecutor(conn), *args)

    async def _load(self, model_id: int | None, project: str | None) -> CachedModel | None:
        async with self.pool.acquire() as conn:
            ex = AsyncpgExecutor(conn)
            if model_id is None:
                info = await registry.deployed_model(ex, project)
                if info is None:
                    return None
                model_id = info[0]
            meta = await registry.model_info(ex, model_id)
            if meta is None:
                return None
            blob = await registry.model_artifact(ex, model_id)
            bins = await registry.model_bins(ex, model_id) if self.monitors is not None else None
        if blob is None:
            return None
        try:
            estimator, bundle = await asyncio.get_running_loop().run_in_executor(None, _unpickle, self.key, blob)
        except artifacts.ArtifactSignatureError as exc:   # refused before unpickling: XX001, not an internal error
            log.warning("refused model %d: %s", model_id, exc.message)
            raise PgError(exc.sqlstate, f"model {model_id}: {exc.message}", hint=exc.hint) from None
        # Off the event loop too: compiling walks every tree, and a tree model is converted for
        # native code (inference/compiled.py; its .so, if not cached yet, builds in the background).
        plan = await asyncio.get_running_loop().run_in_executor(
            None, partial(compile_plan, estimator, meta["task"], gpu=self.config.gpu))
        log.info("loaded model %d (%s, %s plan, gpu %s)", model_id, meta["algorithm"], getattr(plan, "kind", "?"),
                 getattr(plan, "gpu", "off"))
        nbytes = int(getattr(plan, "nbytes", len(blob)))
        if self.monitors is not None:
            plan = self.monitors.wrap(plan, model_id, bins)
        inputs = ModelInputs(bundle) if bundle is not None and bundle.preprocessor is not None else None
        return CachedModel(model_id, meta.get("project_name"), meta["task"], int(meta["num_features"] or 0),
                           plan, nbytes, inputs, bundle.labels if bundle is not None else None)

    async def warm(self) -> None:
        """Load every deployed model at start-up so the first prediction is as fast as the rest."""
        try:
            async with self.pool.acquire() as conn:
                rows = await conn.fetch("SELECT name FROM pgml.deployed_models")
        except Exception as exc:   # warming is an optimisation; a broken model surfaces on predict
            log.warning("warming the model cache failed: %s", exc)
            return
        for row in rows:
            if self.cache.full():      # loading more would only evict what was just warmed
                log.info("model cache full after warming %d models; the rest load on first use", len(self.cache))
                break
            try:
                await self.cache.load_deployed(row["name"])
            except Exception as exc:   # one unloadable model (bad signature, missing library) spoils no other
                log.warning("warming project %r failed: %s", row["name"], exc)
        log.info("model cache warmed: %d models, %d bytes", len(self.cache), self.cache.nbytes)

    # -- replica consistency

    async def _listen(self) -> None:
        self._listener = await asyncpg.connect(self.upstream_dsn)
        await self._listener.add_listener(DEPLOY_CHANNEL, self._on_deploy)

    def _on_deploy(self, _conn, _pid, _channel, payload: str) -> None:
        self.cache.invalidate_project(payload)
        asyncio.ensure_future(self._reload(payload))

    async def _reload(self, project: str) -> None:
        try:
            await self.cache.load_deployed(project)
        except Exception as exc:
            log.warning("reloading project %r after a deploy failed: %s", project, exc)

    async def _keep_listening(self) -> None:
        """Reconnect LISTEN when the upstream restarts; drop what may have changed meanwhile."""
        while not self._stopping:
            await asyncio.sleep(1.0)
            if self._listener is not None and not self._listener.is_closed():
                continue
            try:
                await self._listen()
                self.cache.clear()
                log.info("LISTEN %s reconnected", DEPLOY_CHANNEL)
            except (OSError, asyncpg.PostgresError) as exc:
                log.debug("LISTEN reconnect failed: %s", exc)


def _unpickle(key: bytes, blob: bytes):
    """(estimator, bundle or None) of a signed artifact; verified before a byte is unpickled."""
    return unbundle(artifacts.loads_model(key, blob))
