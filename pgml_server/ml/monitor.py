"""Drift monitoring on the serving path: reference bins, sampled feature histograms, PSI.

At training, `reference_bins(X_train)` cuts every feature at its deciles over the training split
(9 edges → 10 bins, plus one for NaN) and counts the training rows per bin: the reference
distribution, stored once per model (`pgml.model_bins`) so every replica bins alike.

When the model service loads a model it wraps the plan in a `MonitoredPlan`. Each predict call
then costs a counter, a clock reading and one random draw (single rows) or one vector draw
(blocks, a fraction `rate` of the rows); only sampled rows touch the binning. Each server's
`MonitorHub` flushes the accumulated counts to `pgml.prediction_samples` every flush period and
at shutdown; readers add replicas up. `feature_drift` compares the summed sample bins with the
reference by the population stability index, PSI = Σ (o − r) · ln(o / r) over bin fractions.
"""
from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from typing import Any

import numpy as np

from ..db import registry
from ..db.executor import AsyncpgExecutor, Executor
from .bins import CELLS, bin_counts, psi

log = logging.getLogger("pgml_server.monitor")

LATENCY_BUCKETS = 100            # bucket b holds latencies in [2^(b/4), 2^((b+1)/4)) µs
STOP_FLUSH_TIMEOUT_S = 5.0


async def feature_drift(ex: Executor, model_id: int, since_epoch: float) -> list[tuple] | None:
    """(feature, psi, rows, window_start, window_end) per feature over the samples after `since`;
    None when the model has no reference bins (trained before monitoring existed)."""
    bins = await registry.model_bins(ex, model_id)
    if bins is None:
        return None
    reference = np.asarray(bins["reference"], dtype=np.int64)
    observed = np.zeros_like(reference)
    rows, first, last = 0, None, None
    for counts, sampled, start, end in await registry.prediction_samples(ex, model_id, since_epoch):
        counts = np.asarray(counts, dtype=np.int64)
        if counts.shape != reference.shape:
            continue
        observed += counts
        rows += int(sampled)
        first = first or start
        last = end
    values = psi(reference, observed)
    names = bins["feature_names"]
    return [(names[i] if i < len(names) else f"feature_{i}",
             None if math.isnan(values[i]) else float(values[i]), rows, first, last)
            for i in range(reference.shape[0])]


# ---------------------------------------------------------------- the serving side

class ModelMonitor:
    """One model's counters in one server since the last flush."""

    def __init__(self, model_id: int, edges: np.ndarray | None, rate: float) -> None:
        self.model_id = model_id
        self.edges = edges
        self.n_features = 0 if edges is None else edges.shape[0]
        self.rate = rate if edges is not None else 0.0
        self._rng = np.random.default_rng()
        self._reset(time.time())

    def _reset(self, now: float) -> None:
        self.window_start = now
        self.calls = 0
        self.predictions = 0
        self.latency_ns = 0
        self.latency_hist = [0] * LATENCY_BUCKETS
        self.sampled = 0
        self.counts = None if self.edges is None else np.zeros((self.n_features, CELLS), dtype=np.int64)

    def record(self, X, elapsed_ns: int) -> None:
        """One predict call over X (its plan took `elapsed_ns`): the hot-path hook."""
        shape = X.shape if type(X) is np.ndarray else getattr(X, "shape", None)
        n = shape[0] if shape is not None and len(shape) == 2 else 1
        self.calls += 1
        self.predictions += n
        self.latency_ns += elapsed_ns
        us = elapsed_ns / 1000.0
        bucket = int(4.0 * math.log2(us)) if us > 1.0 else 0
        self.latency_hist[bucket if bucket < LATENCY_BUCKETS else LATENCY_BUCKETS - 1] += 1
        rate = self.rate
        if not rate or shape is None or len(shape) != 2 or shape[1] != self.n_features:
            return
        if n == 1:
            if rate >= 1.0 or random.random() < rate:
                self._observe(X)
        elif rate >= 1.0:
            self._observe(X)
        else:      # a binomial count of rows, drawn with replacement: O(sampled rows), not O(n)
            k = self._rng.binomial(n, rate)
            if k:
                self._observe(X[self._rng.integers(0, n, k)])

    def _observe(self, rows: np.ndarray) -> None:
        self.counts += bin_counts(self.edges, np.asarray(rows, dtype=np.float64))
        self.sampled += rows.shape[0]

    def take(self) -> dict[str, Any] | None:
        """The counters since the last take (None when there were no calls), and a fresh window."""
        now = time.time()
        if not self.calls:
            self.window_start = now
            return None
        out = {"window_start": self.window_start, "window_end": now, "calls": self.calls,
               "predictions": self.predictions, "latency_sum_us": self.latency_ns / 1000.0,
               "latency_hist": self.latency_hist, "sampled_rows": self.sampled,
               "bins": None if self.counts is None else self.counts.tolist()}
        self._reset(now)
        return out


class MonitoredPlan:
    """A plan that reports each call to its model's monitor; everything else is the plan's own."""
    __slots__ = ("_plan", "_monitor", "task", "classes")

    def __init__(self, plan: Any, monitor: ModelMonitor) -> None:
        self._plan = plan
        self._monitor = monitor
        self.task = plan.task
        self.classes = getattr(plan, "classes", None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._plan, name)

    def predict(self, X):
        start = time.perf_counter_ns()
        out = self._plan.predict(X)
        self._monitor.record(X, time.perf_counter_ns() - start)
        return out

    def predict_proba(self, X):
        start = time.perf_counter_ns()
        out = self._plan.predict_proba(X)
        self._monitor.record(X, time.perf_counter_ns() - start)
        return out


class MonitorHub:
    """Every monitor of one server process, and the task that flushes them to the upstream."""

    def __init__(self, rate: float, flush_seconds: float, server: str) -> None:
        self.rate = rate
        self.flush_seconds = flush_seconds
        self.server = server
        self.monitors: dict[int, ModelMonitor] = {}
        self._task: asyncio.Task | None = None

    def wrap(self, plan: Any, model_id: int, bins: dict | None) -> Any:
        """The plan with its model's monitor (one per model id, kept across cache reloads)."""
        monitor = self.monitors.get(model_id)
        if monitor is None:
            edges = None if bins is None else np.asarray(bins["edges"], dtype=np.float64)
            monitor = self.monitors[model_id] = ModelMonitor(model_id, edges, self.rate)
        return MonitoredPlan(plan, monitor)

    def start(self, pool) -> None:
        self._task = asyncio.ensure_future(self._run(pool))

    async def stop(self, pool) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        try:
            await asyncio.wait_for(self.flush(pool), STOP_FLUSH_TIMEOUT_S)
        except Exception as exc:   # an unreachable upstream must not hold up the shutdown
            log.warning("flushing prediction samples at shutdown failed: %s", exc or type(exc).__name__)

    async def _run(self, pool) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            try:
                await self.flush(pool)
            except Exception as exc:   # the upstream may be down: those counts are lost, serving goes on
                log.warning("flushing prediction samples failed: %s", exc)

    async def flush(self, pool) -> int:
        taken = [(m.model_id, s) for m in list(self.monitors.values()) if (s := m.take()) is not None]
        if not taken:
            return 0
        async with pool.acquire() as conn:
            ex = AsyncpgExecutor(conn)
            for model_id, s in taken:
                try:
                    await registry.insert_prediction_sample(
                        ex, model_id, s["window_start"], s["window_end"], self.server, s["predictions"],
                        s["calls"], s["sampled_rows"], s["bins"], s["latency_sum_us"], s["latency_hist"])
                except Exception as exc:   # e.g. the model was deleted meanwhile
                    log.warning("prediction samples of model %d not stored: %s", model_id, exc)
        log.debug("flushed prediction samples of %d models", len(taken))
        return len(taken)
