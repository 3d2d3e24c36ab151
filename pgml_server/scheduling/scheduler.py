"""The scheduler loop of one server process (each --workers process runs its own).

Every `poll` seconds it decides whether to look at the upstream at all: never while the database
has no schedule (pgml.schedule and pgml.unschedule NOTIFY `pgml_schedule`, which resets that), else
when the earliest next_run has come, while some run is `running` anywhere, when a drift check is
due, and at least once a minute. A look
1. fails runs and models orphaned by a dead server (their claiming backend is gone),
2. every `drift_check` seconds, makes due the schedules with `retrain_on_drift` whose deployed
   model's sampled features drifted past the threshold since their last run,
3. when a schedule is due, opens a dedicated upstream connection and claims one run on it
   (db/registry/schedules.claim_due_run: FOR UPDATE SKIP LOCKED, so exactly one server gets it),
   then trains on that same connection after `SET ROLE <owner>`: a fresh snapshot of the relation,
   pgml.train's code path (functions/train.train_with) in the low-priority worker process, the
   usual deploy rule. The run row and the schedule get the outcome; `RESET ROLE` after.

Stopping cancels running trainings: the model row and the run row become 'failed'. A server killed
outright leaves a 'running' run whose backend then disappears: step 1 of any server repairs it.
"""
from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from ..db import registry
from ..db.executor import AsyncpgExecutor
from ..db.names import quote_ident
from ..functions.schedule import next_cron_time
from ..functions.train import train_with
from ..ml.monitor import feature_drift

log = logging.getLogger("pgml_server.scheduler")

MAX_RUNS = 2                 # concurrent runs per server process (each trains in its own worker)
DRIFT_MIN_ROWS = 50          # sampled rows needed before drift can trigger a retrain
DRIFT_WINDOW_S = 3600.0      # drift is judged on at most the last hour of samples
STOP_GRACE_S = 10.0
FALLBACK_S = 60.0            # with schedules, look at least this often (their next_run may have changed)


class Scheduler:
    def __init__(self, models, identity: str, *, poll_seconds: float = 1.0, drift_check_seconds: float = 60.0):
        self.models = models             # ml.loader.ModelService: pool, artifact key, cache
        self.identity = identity
        self.poll_seconds = poll_seconds
        self.drift_check_seconds = drift_check_seconds
        self._task: asyncio.Task | None = None
        self._runs: set[asyncio.Task] = set()
        self._last_drift_check = 0.0
        # What the upstream said at the last look (None: look again). A database without schedules
        # is never polled: pgml.schedule NOTIFYs, and a reconnected LISTEN looks again.
        self._state: registry.ScheduleState | None = None
        self._offset = 0.0               # the upstream's clock minus ours
        self._looked = 0.0               # time.monotonic() of the last look
        self._listener: asyncpg.Connection | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for task in self._runs:
            task.cancel()
        if self._runs:
            await asyncio.wait(list(self._runs), timeout=STOP_GRACE_S)
        if self._listener is not None and not self._listener.is_closed():
            await self._listener.close()

    async def _loop(self) -> None:
        while True:
            try:
                await self._listen()
                await self.tick()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("scheduler: %s", exc)
                self._state = None
            except Exception:     # a bug must not end the loop for good
                log.exception("scheduler tick failed")
                self._state = None
            await asyncio.sleep(self.poll_seconds)

    async def _listen(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        self._listener = await asyncpg.connect(self.models.upstream_dsn)
        await self._listener.add_listener(registry.SCHEDULE_CHANNEL, self._changed)
        self._state = None                 # notifications may have been missed meanwhile

    def _changed(self, *_args) -> None:
        self._state = None

    def _must_look(self) -> bool:
        state = self._state
        if state is None:
            return True
        if state.schedules == 0:
            return False
        since = time.monotonic() - self._looked
        return (state.next_due is not None and time.time() + self._offset >= state.next_due) \
            or state.running > 0 or since >= FALLBACK_S \
            or (state.drift_watched > 0 and time.monotonic() - self._last_drift_check >= self.drift_check_seconds)

    async def tick(self) -> None:
        if not self._must_look():
            return
        async with self.models.pool.acquire() as conn:
            ex = AsyncpgExecutor(conn)
            state = await registry.schedule_state(ex)
            self._offset, self._looked = state.now - time.time(), time.monotonic()
            if state.running:
                for run_id, project in await registry.fail_orphaned_runs(ex):
                    log.info("schedule run %d of %r failed: its server stopped", run_id, project)
                await registry.fail_orphaned_models(ex)
            due = state.next_due is not None and state.now >= state.next_due
            if state.drift_watched and time.monotonic() - self._last_drift_check >= self.drift_check_seconds:
                self._last_drift_check = time.monotonic()
                due = await self._check_drift(ex) or due
            self._state = state if not due else None
        if due and len(self._runs) < MAX_RUNS:
            task = asyncio.ensure_future(self._claim_and_run())
            self._runs.add(task)
            task.add_done_callback(self._run_done)

    def _run_done(self, task: asyncio.Task) -> None:
        self._runs.discard(task)
        self._state = None

    async def _check_drift(self, ex) -> bool:
        """Make due the watched schedules whose model drifted; True when one was."""
        triggered = False
        now = await registry.now_epoch(ex)
        for schedule_id, project, threshold, last_run in await registry.drift_watched(ex):
            deployed = await registry.deployed_model(ex, project)
            if deployed is None:
                continue
            since = max(now - DRIFT_WINDOW_S, await ex.fetchval(
                "SELECT extract(epoch FROM $1::timestamptz)::float8", last_run))
            rows = await feature_drift(ex, int(deployed[0]), since)
            if not rows or rows[0][2] < DRIFT_MIN_ROWS:
                continue
            worst = max(rows, key=lambda r: -1.0 if r[1] is None else r[1])
            if worst[1] is not None and worst[1] > threshold and await registry.trigger_drift_run(ex, schedule_id):
                triggered = True
                log.info("schedule of %r: feature %r drifted (PSI %.3f > %.3f over %d sampled rows): retraining",
                         project, worst[0], worst[1], threshold, worst[2])
        return triggered

    async def _claim_and_run(self) -> None:
        try:
            conn = await asyncpg.connect(self.models.upstream_dsn)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("scheduler: cannot connect to the upstream: %s", exc)
            return
        try:
            ex = AsyncpgExecutor(conn)
            claim = await registry.claim_due_run(ex, self.identity, next_cron_time)
            if claim is None:
                return
            log.info("schedule run %d of %r (%s, due %s) claimed by %s as role %s; next run %s", claim.run_id,
                     claim.project_name, claim.reason, claim.due_at, self.identity, claim.owner, claim.next_run)
            await self._run(conn, ex, claim)
        finally:
            if not conn.is_closed():
                await conn.close()

    async def _run(self, conn, ex, claim) -> None:
        report = _Report(lambda model_id: self._note_model(claim, model_id))
        started = time.monotonic()
        try:
            await ex.execute(f"SET ROLE {quote_ident(claim.owner)}")
            try:
                row = await self._train(ex, claim, report)
            finally:
                if not conn.is_closed():
                    await ex.execute("RESET ROLE")
        except asyncio.CancelledError:
            await self._finish(claim, "failed", report, None, "canceled: the server is shutting down")
            raise
        except Exception as exc:
            error = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            code = getattr(exc, "sqlstate", None)
            await self._finish(claim, "failed", report, None, f"{code}: {error}" if code else error)
            return
        await self._finish(claim, "successful", report, bool(row[3]), None, time.monotonic() - started)

    def _note_model(self, claim, model_id: int) -> None:
        async def note():
            try:
                await self.models.run(registry.set_run_model, claim.run_id, model_id)
            except Exception as exc:   # display only: finish_run records it anyway
                log.debug("could not note model %d on run %d: %s", model_id, claim.run_id, exc)
        asyncio.ensure_future(note())

    async def _train(self, ex, claim, report: dict):
        args = dict(claim.arguments)
        latest = await registry.latest_model_settings(ex, claim.project_id) or {}
        if args.get("relation_name") is None:
            args["relation_name"] = latest.get("relation_name")
        ys = args.pop("y_column_name", None)
        ys = [ys] if isinstance(ys, str) else list(ys or latest.get("y_column_name") or [])
        joint = len(ys) > 1
        args["y_column_name"] = ys if joint else (ys[0] if ys else None)
        for key in ("algorithm", "hyperparams", "search", "search_params", "search_args", "test_size",
                    "test_sampling"):
            if args.get(key) is None and key in latest:
                if key == "hyperparams" and "algorithm" in claim.arguments:
                    continue      # another algorithm than the latest model's: its own defaults
                args[key] = latest[key]
        args["project_name"] = claim.project_name

        def notice(message: str) -> None:
            log.info("schedule run %d of %r: %s", claim.run_id, claim.project_name, message)
        return await train_with(ex, notice, self.models, args, joint=joint, report=report)

    async def _finish(self, claim, status: str, report: dict, deployed, error, seconds: float | None = None):
        model_id = report.get("model_id")
        try:
            await asyncio.shield(self.models.run(registry.finish_run, claim.run_id, claim.schedule_id, status,
                                                 model_id, deployed, error))
        except Exception as exc:   # the upstream may be gone: fail_orphaned_runs repairs the row later
            log.warning("could not record schedule run %d: %s", claim.run_id, exc)
        if status == "successful":
            log.info("schedule run %d of %r: model %s trained in %.1f s%s", claim.run_id, claim.project_name,
                     model_id, seconds or 0.0, ", deployed" if deployed else ", not deployed")
        else:
            log.info("schedule run %d of %r failed: %s", claim.run_id, claim.project_name, error)


class _Report(dict):
    """train_with's report: calls `on_model(id)` as soon as the run's model row exists."""

    def __init__(self, on_model) -> None:
        super().__init__()
        self._on_model = on_model

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        if key == "model_id":
            self._on_model(value)
