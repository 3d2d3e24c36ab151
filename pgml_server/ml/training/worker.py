"""Run one training job in a separate process, so the event loop keeps serving other clients.

`train_in_subprocess(job, on_progress)` starts a worker process (forkserver where the platform has
it, so numpy and scikit-learn are imported once, not per job), sends it the job and the data, and
relays the worker's progress lines to `on_progress` until the result comes back. Cancelling the
awaiting task terminates the worker at once: a CancelRequest or a closed client stops the fit.

Data crosses the pipe once, as the arrays' raw bytes plus shape and dtype (no pickled lists); the
worker reads X as a read-only array over the received buffer. The blocking pipe traffic runs in a
helper thread that also reaps the process.

`run_job(job, progress)` is the training itself (split → fit or search → score → pickle), usable
in-process too: the worker is a thin shell around it.
"""
from __future__ import annotations

import asyncio
import inspect
import multiprocessing
import os
import pickle
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import numpy as np

from protocol.errors import PgError

from ..bins import reference_bins
from . import TrainingError
from .algorithms import UNSUPERVISED, canonical_name, make_estimator
from .metrics import key_metric, score
from ..explain import importance_source
from .split import Split, train_test_split
from .unsupervised import feature_stats, fit_unsupervised, permutation_importance

Progress = Callable[[str], "Awaitable[None] | None"]

MAX_WARNINGS = 5                 # distinct estimator warnings passed on per job
TERMINATE_GRACE_S = 1.0          # after SIGTERM, how long before SIGKILL
_PRELOAD = ["numpy", "sklearn.base", "sklearn.linear_model", "sklearn.ensemble", "sklearn.metrics",
            "sklearn.model_selection", "pgml_server.ml.training.worker"]


@dataclass
class TrainingJob:
    """What to train: the estimator, its settings and the data.

    The data is either X (rows × features, float64) or, for a relation's own columns, `columns`
    (name → decoded values, ml/preprocessing/decode.py) with their `kinds` and the `preprocess`
    spec: the split then comes first and the Preprocessor is fitted on the training rows only."""
    task: str
    algorithm: str
    hyperparams: dict
    X: np.ndarray | None
    y: np.ndarray                      # 1-D, or 2-D (rows × targets) for a joint regression
    test_size: float | int = 0.25
    test_sampling: str = "random"
    search: str | None = None          # None, 'grid' or 'random'
    search_params: dict = field(default_factory=dict)   # name → list of values to try
    search_args: dict = field(default_factory=dict)     # n_iter (random), cv (folds)
    seed: int | None = 0
    columns: dict | None = None        # the relation's decoded columns (instead of X)
    kinds: list | None = None          # their preprocessing.ColumnKind, in relation order
    preprocess: dict | None = None     # column → preprocessing.ColumnSpec (validated by the caller)


@dataclass
class TrainingResult:
    """A trained model: its pickle, test metrics (fit_time/score_time included) and what it used."""
    estimator_bytes: bytes
    metrics: dict
    hyperparams: dict
    num_features: int
    classes: list | None
    fit_time: float
    score_time: float
    search_results: dict | None = None
    warnings: list[str] = field(default_factory=list)
    preprocessor: object = None        # the fitted preprocessing.Preprocessor, when the job had columns
    feature_bins: dict | None = None   # ml/bins.reference_bins of the training split (drift reference)


# ---------------------------------------------------------------- the training itself

def run_job(job: TrainingJob, progress: Callable[[str], None] = lambda message: None) -> TrainingResult:
    """Split, fit (or search), score and pickle; `progress` receives a line per step."""
    if job.task in UNSUPERVISED:
        return _run_unsupervised(job, progress)
    outputs = job.y.shape[1] if job.y.ndim == 2 else 1
    name = canonical_name(job.algorithm)
    estimator = make_estimator(name, job.task, job.hyperparams, outputs=outputs, seed=job.seed)
    preprocessor = None
    if job.columns is not None:
        split, preprocessor = _preprocessed_split(job, name, progress)
    else:
        split = train_test_split(job.X, job.y, job.test_size, job.test_sampling, job.seed)
    if split.warning:
        progress(split.warning)
    rows, features = split.X_train.shape
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        started = time.perf_counter()
        if job.search:
            estimator, used, search_results = _search(job, estimator, split, progress)
        else:
            progress(f"fitting {name} on {rows} rows × {features} features")
            estimator.fit(split.X_train, split.y_train)
            used, search_results = _used_params(job.hyperparams), None
        fit_time = time.perf_counter() - started
        progress(f"scoring on {split.X_test.shape[0]} test rows")
        started = time.perf_counter()
        metrics = score(job.task, split.y_test, estimator.predict(split.X_test),
                        _probabilities(estimator, split.X_test, job.task))
        score_time = time.perf_counter() - started
        # What pgml.explain and pgml.feature_importance need later (ml/explain.py).
        metrics["feature_stats"] = feature_stats(split.X_train)
        if outputs == 1 and importance_source(estimator) is None:
            importance = permutation_importance(estimator, split.X_test, split.y_test, job.seed, progress)
            if importance is not None:
                metrics["permutation_importance"] = importance
    notes = _warning_lines(caught)
    for note in notes:
        progress(f"warning: {note}")
    metrics.update(fit_time=fit_time, score_time=score_time)
    if search_results is not None:
        metrics["search_results"] = search_results
    return TrainingResult(
        estimator_bytes=pickle.dumps(estimator, protocol=pickle.HIGHEST_PROTOCOL), metrics=metrics,
        hyperparams=used, num_features=features, classes=_classes(estimator), fit_time=fit_time,
        score_time=score_time, search_results=search_results, warnings=notes, preprocessor=preprocessor,
        feature_bins=_feature_bins(split.X_train))


def _preprocessed_split(job: TrainingJob, algorithm: str, progress: Callable[[str], None]):
    """Split the rows, then fit the preprocessing on the training rows only (no leak from the
    test rows into imputation, scaling or encodings) and transform both halves with it."""
    from ..preprocessing import Preprocessor, take_rows
    unsupervised = job.task in UNSUPERVISED
    y = np.zeros(len(next(iter(job.columns.values())))) if unsupervised else job.y
    sampling = "random" if unsupervised and job.test_sampling == "stratified" else job.test_sampling
    index = train_test_split(np.arange(len(y), dtype=np.float64).reshape(-1, 1), y, job.test_size,
                             sampling, job.seed)
    train_rows = index.X_train[:, 0].astype(np.int64)
    test_rows = index.X_test[:, 0].astype(np.int64)
    train, test = take_rows(job.columns, train_rows), take_rows(job.columns, test_rows)
    preprocessor = Preprocessor(job.kinds)
    X_train = preprocessor.fit_transform(train, None if unsupervised else index.y_train, task=job.task,
                                         algorithm=algorithm, spec=job.preprocess)
    X_test = preprocessor.transform(test)
    progress(f"preprocessed {len(job.kinds)} columns into {preprocessor.num_features} features "
             f"(fitted on the {len(train_rows)} training rows)")
    return Split(X_train, X_test, index.y_train, index.y_test, index.warning), preprocessor


def _run_unsupervised(job: TrainingJob, progress: Callable[[str], None]) -> TrainingResult:
    """Clustering or decomposition: fit on the training rows, score on the test rows."""
    if job.search:
        raise TrainingError("0A000", f"hyperparameter search is not supported for {job.task}",
                            hint="Train one model per setting; the key metric ranks them for pgml.deploy.")
    name = canonical_name(job.algorithm)
    estimator = make_estimator(name, job.task, job.hyperparams, seed=job.seed)
    preprocessor, X, test_size, sampling = None, job.X, job.test_size, job.test_sampling
    if job.columns is not None:
        # Split and preprocess as for a supervised task (no label: y is a placeholder), then
        # hand the rows over training first, test last, so fit_unsupervised's 'last' split is ours.
        split, preprocessor = _preprocessed_split(job, name, progress)
        X = np.vstack([split.X_train, split.X_test])
        test_size, sampling = len(split.X_test), "last"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator, metrics, fit_time, score_time, features = fit_unsupervised(
            job.task, estimator, X, test_size, sampling, job.seed, progress)
    notes = _warning_lines(caught)
    for note in notes:
        progress(f"warning: {note}")
    metrics.update(fit_time=fit_time, score_time=score_time)
    return TrainingResult(
        estimator_bytes=pickle.dumps(estimator, protocol=pickle.HIGHEST_PROTOCOL), metrics=metrics,
        hyperparams=_used_params(job.hyperparams), num_features=features, classes=None, fit_time=fit_time,
        score_time=score_time, warnings=notes, preprocessor=preprocessor)


def _feature_bins(X_train: np.ndarray) -> dict | None:
    """The drift reference; a failure here costs the monitoring of this model, never the training."""
    try:
        return reference_bins(X_train)
    except Exception:  # noqa: BLE001
        return None


def _search(job: TrainingJob, estimator, split, progress):
    """GridSearchCV / RandomizedSearchCV over `search_params`, scored by the task's key metric."""
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV
    grid = _search_grid(job)
    # A MultiOutputRegressor wrapper takes its inner estimator's parameters as estimator__<name>.
    from sklearn.multioutput import MultiOutputRegressor
    prefix = "estimator__" if isinstance(estimator, MultiOutputRegressor) else ""
    grid = {prefix + k: v for k, v in grid.items()}
    scoring = "r2" if job.task == "regression" else "f1_macro"
    cv = _int_arg(job.search_args, "cv", 5)
    if job.search == "grid":
        search = GridSearchCV(estimator, grid, scoring=scoring, cv=cv, error_score="raise")
        candidates = int(np.prod([len(v) for v in grid.values()])) if grid else 1
    else:
        n_iter = _int_arg(job.search_args, "n_iter", 10)
        search = RandomizedSearchCV(estimator, grid, n_iter=n_iter, scoring=scoring, cv=cv,
                                    random_state=job.seed, error_score="raise")
        candidates = min(n_iter, int(np.prod([len(v) for v in grid.values()])) if grid else 1)
    rows, features = split.X_train.shape
    progress(f"{job.search} search for {canonical_name(job.algorithm)}: {candidates} candidates × {cv} folds "
             f"on {rows} rows × {features} features")
    search.fit(split.X_train, split.y_train)
    best = {k[len(prefix):]: v for k, v in search.best_params_.items()}
    progress(f"best {key_metric(job.task)} {search.best_score_:.6g} with {_json_safe(best)}")
    used = _used_params({**job.hyperparams, **best})
    return search.best_estimator_, used, _search_summary(search, prefix)


def _search_grid(job: TrainingJob) -> dict[str, list]:
    if job.search not in ("grid", "random"):
        raise TrainingError("22023", f"unknown search {job.search!r}", hint="search is 'grid' or 'random'.")
    grid = {}
    for name, values in (job.search_params or {}).items():
        grid[name] = list(values) if isinstance(values, (list, tuple)) else [values]
        if not grid[name]:
            raise TrainingError("22023", f"search_params {name!r} has no values to try")
    # Check the names (and first values) now: a typo should not cost a whole search.
    make_estimator(job.algorithm, job.task, {**job.hyperparams, **{k: v[0] for k, v in grid.items()}})
    return grid


def _int_arg(args: dict, name: str, default: int) -> int:
    value = (args or {}).get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
        raise TrainingError("22023", f"search_args {name} must be a positive integer, got {value!r}")
    return int(value)


def _search_summary(search, prefix: str) -> dict:
    results = search.cv_results_
    strip = lambda params: {k[len(prefix):]: v for k, v in params.items()}  # noqa: E731
    return _json_safe({
        "params": [strip(p) for p in results["params"]],
        "mean_test_score": results["mean_test_score"],
        "std_test_score": results["std_test_score"],
        "rank_test_score": results["rank_test_score"],
        "best_index": search.best_index_,
        "best_params": strip(search.best_params_),
        "best_score": search.best_score_,
    })


def _probabilities(estimator, X_test: np.ndarray, task: str):
    if task != "classification" or not hasattr(estimator, "predict_proba"):
        return None
    try:
        return estimator.predict_proba(X_test)
    except (AttributeError, NotImplementedError, ValueError):  # e.g. a loss without probabilities
        return None


def _classes(estimator) -> list | None:
    classes = getattr(estimator, "classes_", None)
    return None if classes is None else _json_safe(np.asarray(classes).tolist())


def _used_params(params: dict) -> dict:
    return _json_safe(dict(params or {}))


def _warning_lines(caught) -> list[str]:
    lines: list[str] = []
    for w in caught:
        line = f"{w.category.__name__}: {str(w.message).strip().splitlines()[0] if str(w.message).strip() else ''}"
        if line not in lines:
            lines.append(line)
    return lines[:MAX_WARNINGS]


def _json_safe(value: Any) -> Any:
    """numpy scalars/arrays and tuples → plain JSON types; non-finite floats → None."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_safe(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)  # e.g. an estimator object given as a hyperparameter


# ---------------------------------------------------------------- the worker process

def _context() -> multiprocessing.context.BaseContext:
    if sys.platform.startswith("linux") and "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def prestart() -> None:
    """Start the fork server now (blocking, ~1 s), so the first training does not wait for it."""
    process = _context().Process(target=_noop, daemon=True)
    process.start()
    process.join()


def _noop() -> None:
    pass


def _exit_with_server() -> None:
    """A worker whose server died (SIGKILL) would fit on for minutes with nobody to read the result:
    end it as soon as the server's process sentinel closes (found by tests/test_faults.py)."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()
        os._exit(70)


def _lower_priority() -> None:
    """Training is batch work; serving queries is not. SCHED_IDLE (Linux) runs the worker only on
    CPU time that the server's event loop and the upstream's backends leave over, and the kernel
    preempts it as soon as one of them wakes; other systems get nice 10. Threads the estimator
    starts later (OpenMP, BLAS) inherit the policy."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return
    except (AttributeError, OSError):
        pass
    try:
        os.nice(10)
    except OSError:
        pass


def _worker_main(conn) -> None:
    """The worker: receive a job, run it, send progress lines and then the result or the error."""
    import threading
    threading.Thread(target=_exit_with_server, daemon=True, name="exit-with-server").start()
    _lower_priority()
    try:
        job = _receive_job(conn)
        result = run_job(job, lambda message: conn.send(("progress", message)))
        estimator_bytes, result.estimator_bytes = result.estimator_bytes, b""
        conn.send(("result", result))
        conn.send_bytes(estimator_bytes)
    except (TrainingError, PgError) as exc:      # PgError: the preprocessing's, about a column
        conn.send(("error", (exc.sqlstate, exc.message, exc.detail, exc.hint)))
    except MemoryError:
        conn.send(("error", ("53200", "out of memory while training", None,
                             "Train on fewer rows (a view with LIMIT or TABLESAMPLE) or a lighter algorithm.")))
    except Exception as exc:  # the estimator's own error, told to the user as is
        sqlstate = "22023" if isinstance(exc, (ValueError, TypeError)) else "XX000"
        conn.send(("error", (sqlstate, f"training failed: {exc}", f"{type(exc).__name__} in the estimator", None)))
    finally:
        conn.close()


def _send_job(conn, job: TrainingJob) -> None:
    X = np.ascontiguousarray(job.X if job.X is not None else np.empty((0, 0)), dtype=np.float64)
    y = np.ascontiguousarray(job.y)
    y_raw = y.dtype.kind in "biuf"          # numbers go as raw bytes; label strings are pickled
    meta = {k: getattr(job, k) for k in ("task", "algorithm", "hyperparams", "test_size", "test_sampling",
                                         "search", "search_params", "search_args", "seed", "columns", "kinds",
                                         "preprocess")}
    meta.update(X_shape=X.shape, y_shape=y.shape, y_dtype=y.dtype.str if y_raw else None)
    conn.send(meta)
    conn.send_bytes(memoryview(X).cast("B") if X.size else b"")
    if y_raw:
        conn.send_bytes(memoryview(y).cast("B") if y.size else b"")
    else:
        conn.send(y)


def _receive_job(conn) -> TrainingJob:
    meta = conn.recv()
    X = np.frombuffer(conn.recv_bytes(), dtype=np.float64).reshape(meta.pop("X_shape"))
    y_shape, y_dtype = meta.pop("y_shape"), meta.pop("y_dtype")
    y = np.frombuffer(conn.recv_bytes(), dtype=y_dtype).reshape(y_shape) if y_dtype else conn.recv()
    return TrainingJob(X=None if meta.get("columns") is not None else X, y=y, **meta)


class _Driver(threading.Thread):
    """Blocking side of one job: start the process, send the job, relay messages, reap the process."""

    def __init__(self, job: TrainingJob, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
        super().__init__(name="pgml-train-driver", daemon=True)
        self.job, self.loop, self.queue = job, loop, queue
        self.ctx = _context()
        self.process = None
        self.cancelled = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        try:
            conn = self._start()
            if conn is not None:
                self._relay(conn)
        except BaseException as exc:  # reported to the awaiting task, never lost in a thread
            self._post(("crash", f"{type(exc).__name__}: {exc}"))
        finally:
            self._reap()

    def _start(self):
        parent, child = self.ctx.Pipe(duplex=True)
        with self.lock:
            if self.cancelled.is_set():
                return None
            process = self.ctx.Process(target=_worker_main, args=(child,), daemon=True,
                                       name=f"pgml-train-{canonical_name(self.job.algorithm)}")
            process.start()
            self.process = process  # only a started process: terminate/join need one
        child.close()
        self._post(("started", self.process.pid))
        return parent

    def _relay(self, conn) -> None:
        with conn:
            try:
                _send_job(conn, self.job)
                while True:
                    kind, payload = conn.recv()
                    if kind == "result":
                        payload.estimator_bytes = conn.recv_bytes()
                    self._post((kind, payload))
                    if kind in ("result", "error"):
                        return
            except (EOFError, OSError):  # the worker died or was terminated
                pass
        self.process.join(TERMINATE_GRACE_S)
        self._post(("exit", self.process.exitcode))

    def terminate(self) -> None:
        with self.lock:
            self.cancelled.set()
            if self.process is not None and self.process.is_alive():
                self.process.terminate()

    def _reap(self) -> None:
        process = self.process
        if process is None:
            return
        process.join(TERMINATE_GRACE_S)
        if process.is_alive():
            process.kill()
            process.join()

    def _post(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody waits for this job any more
            pass


async def train_in_subprocess(job: TrainingJob, on_progress: Progress | None = None, *,
                              on_start: Callable[[int], None] | None = None) -> TrainingResult:
    """Train `job` in a worker process; `on_progress` gets each progress line (sync or async).

    `on_start` receives the worker's pid. Raises TrainingError for a failed fit (the estimator's
    message) and re-raises CancelledError after terminating the worker.
    """
    queue: asyncio.Queue = asyncio.Queue()
    driver = _Driver(job, asyncio.get_running_loop(), queue)
    driver.start()
    try:
        while True:
            kind, payload = await queue.get()
            if kind == "result":
                return payload
            await _handle(kind, payload, on_progress, on_start)
    except BaseException:
        driver.terminate()   # SIGTERM now; the driver thread reaps it (SIGKILL after a grace period)
        raise


async def _handle(kind: str, payload, on_progress: Progress | None, on_start) -> None:
    if kind == "progress":
        if on_progress is not None:
            outcome = on_progress(payload)
            if inspect.isawaitable(outcome):
                await outcome
    elif kind == "started":
        if on_start is not None:
            on_start(payload)
    elif kind == "error":
        raise TrainingError(*payload)
    elif kind == "exit":
        raise TrainingError("XX000", f"the training worker stopped unexpectedly (exit code {payload})",
                            hint="It may have run out of memory; try fewer rows or a lighter algorithm.")
    else:  # "crash": the driver thread itself failed
        raise TrainingError("XX000", f"could not run the training worker: {payload}")
