"""Tree ensembles compiled to native code: treelite + tl2cgen turn a model into C, gcc into a .so.

One row through a 100-tree LightGBM model costs ≈ 40 µs in the numpy walk (trees.py: a few µs
of numpy calls per depth level) and ≈ 3.5 µs per call as compiled if/else code (most of it the
ctypes call). treelite (4.x) reads the model (LightGBM, XGBoost, HistGradientBoosting, and
scikit-learn's other trees, whose float32 comparisons the shim reproduces), tl2cgen (1.0) writes it
out as C, and we add a small entry point (_SHIM) that takes a float64 row-major matrix straight
from numpy: NaN stays NaN (the generated missing-value tests are rewritten to isnan(), see
_exact_missing_tests), rows are predicted in a C loop (OpenMP for
large batches), so a call is one ctypes call with no DMatrix to build. Both libraries are
optional (the `compiled` extra): without them, or without a C compiler, compile_native returns
None and the numpy plan serves, as before.

The .so is built once per model content, in a private cache folder under tempfile.gettempdir()
(pgml-native-trees-<uid>, 0700), named by a hash of the treelite model bytes, so reloads,
redeploys of the same artifact and other worker processes load it in milliseconds. Building
takes about a second (gcc, 100 trees), so `native_later` never makes a prediction wait for it:
it returns a plan that serves from the numpy plan and swaps the native one in when a background
thread has built (and checked) it. Every native plan is checked against the numpy plan on probe rows (thresholds, NaNs) before it
serves; a disagreement, a build error or a missing library logs and keeps the numpy plan.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .contract import as_rows, labels_array, no_proba

log = logging.getLogger("pgml_server.inference")

ENV_SWITCH = "PGML_NATIVE_TREES"          # 0/off/false: never compile tree models to native code
_SHIM_VERSION = "2"              # 2: isnan() missing tests (_exact_missing_tests)
# Batches from this many rows on are predicted on several threads (OpenMP), when built with it.
_PARALLEL_ROWS = 256
# Batches up to this many rows are copied through the plan's preallocated buffers.
_SMALL_ROWS = 16

_SHIM = r"""
#include "header.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#define PGML_WIDTH (N_TARGET * MAX_N_CLASS)

int32_t pgml_width(void) { return PGML_WIDTH; }

/* X: n rows of nf float64 (row-major); out: n * PGML_WIDTH float64. */
void pgml_predict(const double* X, int64_t n, int32_t nf, int32_t margin, int32_t threads, double* out) {
#ifdef _OPENMP
  #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && n >= %(parallel)d)
#endif
  for (int64_t i = 0; i < n; ++i) {
    union Entry row[%(nf)d];
    %(rtype)s res[PGML_WIDTH];
    const double* x = X + i * nf;
    for (int j = 0; j < nf; ++j) {
      row[j].fvalue = %(value)s;   /* NaN stays NaN: the tests are isnan() (see _exact_missing_tests) */
    }
    for (int k = 0; k < PGML_WIDTH; ++k) res[k] = 0;
    predict(row, margin, res);
    for (int k = 0; k < PGML_WIDTH; ++k) out[i * PGML_WIDTH + k] = (double)res[k];
  }
}
"""


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "off", "false", "no")


def available() -> bool:
    try:
        import tl2cgen  # noqa: F401
        import treelite  # noqa: F401
    except Exception:
        return False
    return shutil.which(os.environ.get("CC", "gcc")) is not None


# ---------------------------------------------------------------- the plan

class NativePlan:
    """A tree ensemble's predictions from its compiled .so (contract.Plan)."""

    kind = "native"

    def __init__(self, lib_path: str, *, task: str, num_features: int, classes=None, threads: int = 1) -> None:
        self.lib_path = lib_path
        self._lib = ctypes.CDLL(lib_path)
        fn = self._lib.pgml_predict
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,
                       ctypes.c_void_p]
        self._fn = fn
        self.width = int(self._lib.pgml_width())
        self.task, self.num_features = task, num_features
        self.classes = labels_array(classes) if task == "classification" else None
        self.threads = threads
        self._small = threading.Lock()            # the buffers below serve one call at a time
        self._x_small = np.zeros((_SMALL_ROWS, max(1, num_features)), np.float64)
        self._out_small = np.zeros((_SMALL_ROWS, self.width), np.float64)
        self._x_address = ctypes.c_void_p(self._x_small.ctypes.data)
        self._out_address = ctypes.c_void_p(self._out_small.ctypes.data)
        # One row of a single-output regressor (a prepared pgml.predict): fixed views, no as_rows.
        self._row_shape = (1, num_features) if task != "classification" and self.width == 1 else None
        self._x_row, self._out_row = self._x_small[:1], self._out_small[:1, 0]
        self.nbytes = os.path.getsize(lib_path) + self._x_small.nbytes + self._out_small.nbytes + 256

    def scores(self, X: np.ndarray) -> np.ndarray:
        """(n, width) outputs after the model's link (probabilities, exp, ...)."""
        X = as_rows(X, self.num_features)
        n = X.shape[0]
        if n <= _SMALL_ROWS and self._small.acquire(blocking=False):
            # A few rows go through buffers at fixed addresses: asking numpy for an array's
            # address costs ≈ 1.5 µs per array, more than the trees themselves.
            try:
                self._x_small[:n] = X
                self._fn(self._x_address, n, self.num_features, 0, 1, self._out_address)
                return self._out_small[:n].copy()
            finally:
                self._small.release()
        out = np.empty((n, self.width), np.float64)
        self._fn(X.ctypes.data, n, self.num_features, 0, self.threads, out.ctypes.data)
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        if (type(X) is np.ndarray and X.shape == self._row_shape and X.dtype == np.float64
                and self._small.acquire(blocking=False)):
            try:
                np.copyto(self._x_row, X)
                self._fn(self._x_address, 1, self.num_features, 0, 1, self._out_address)
                return self._out_row.copy()
            finally:
                self._small.release()
        out = self.scores(X)
        if self.task != "classification":
            return out[:, 0] if self.width == 1 else out
        if self.width == 1:
            # class 1 when p > 0.5, a tie to class 0: LightGBM, XGBoost and HistGradientBoosting alike
            return self.classes[(out[:, 0] > 0.5).astype(np.intp)]
        return self.classes[np.argmax(out, axis=1)]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if self.task != "classification":
            raise no_proba("this regression model")
        out = self.scores(X)
        if self.width == 1:
            p = out[:, 0]
            return np.column_stack([1.0 - p, p])
        return out


class PendingNativePlan:
    """Serves from `fallback` (the numpy plan) until the native plan is built, then from it."""

    def __init__(self, fallback: Any) -> None:
        self.plan = fallback
        self.task, self.num_features, self.classes = fallback.task, fallback.num_features, fallback.classes
        self.nbytes = fallback.nbytes          # the cache counts the load-time size: the larger of the two
        self.ready = threading.Event()

    @property
    def kind(self) -> str:
        return self.plan.kind

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.plan.predict(X)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.plan.predict_proba(X)

    def _swap(self, plan: Any) -> None:
        self.plan = plan                        # one reference assignment: atomic for other threads
        # and from now on a call goes straight to the native plan's methods (one frame less)
        self.predict, self.predict_proba = plan.predict, plan.predict_proba


_builder: ThreadPoolExecutor | None = None
_builder_lock = threading.Lock()


def native_later(estimator: Any, task: str, fallback: Any) -> Any:
    """The native plan now if its .so is already built; else `fallback` at once, swapped for the
    native plan when a background thread has built it (one build at a time per process)."""
    global _builder
    try:
        source = _source(estimator, task, fallback)
    except Exception as exc:
        log.warning("native trees: %s not compiled (%r); serving the numpy plan", type(estimator).__name__, exc)
        return fallback
    if source is None:
        return fallback
    cached = _load_cached(source, fallback)
    if cached is not None:
        return cached
    if os.path.exists(source.refused):
        return fallback
    pending = PendingNativePlan(fallback)

    def build() -> None:
        try:
            plan = _build_checked(source, fallback)
            if plan is not None:
                pending._swap(plan)
                log.info("native trees: %s swapped in (%s)", type(estimator).__name__, plan.lib_path)
        except Exception as exc:
            log.warning("native trees: building %s failed (%r); serving the numpy plan", type(estimator).__name__, exc)
        finally:
            pending.ready.set()

    with _builder_lock:
        if _builder is None:
            _builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgml-native-trees")
    _builder.submit(build)
    return pending


def compile_native(estimator: Any, task: str, fallback: Any = None) -> NativePlan | None:
    """The native plan of a supported tree ensemble, built now (or loaded from the cache); None when
    the model, the libraries or the compiler do not allow it. `fallback` is the numpy TreePlan the
    result is checked against (compiled here when not given)."""
    if fallback is None:
        from .trees import compile_trees
        fallback = compile_trees(estimator, task, native=False)
        if fallback is None:
            return None
    source = _source(estimator, task, fallback)
    if source is None:
        return None
    return _load_cached(source, fallback) or _build_checked(source, fallback)


# ---------------------------------------------------------------- what to compile

class _Source:
    def __init__(self, model, key: str, task: str, num_features: int, classes, round32: bool) -> None:
        self.model, self.key, self.task, self.round32 = model, key, task, round32
        self.num_features, self.classes = num_features, classes
        self.dir = os.path.join(_cache_root(), key)
        self.lib = os.path.join(self.dir, "model.so")
        self.refused = os.path.join(self.dir, "refused")

    def plan(self) -> NativePlan:
        from ..training.algorithms import usable_cpus
        return NativePlan(self.lib, task=self.task, num_features=self.num_features, classes=self.classes,
                          threads=usable_cpus())


def _cache_root() -> str:
    """The .so cache folder, ours alone: a shared temp folder must not let another user plant the
    code we load, so it is created 0700 and refused if someone else owns it or may write to it."""
    root = os.path.join(tempfile.gettempdir(), f"pgml-native-trees-{os.getuid()}")
    os.makedirs(root, mode=0o700, exist_ok=True)
    st = os.lstat(root)
    import stat
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise PermissionError(f"{root} is not a private folder of this user: native tree plans are off")
    return root


def _source(estimator: Any, task: str, fallback: Any) -> _Source | None:
    """The treelite model of an estimator the numpy plan compiled (so categorical splits, DART,
    linear leaves, custom objectives are already excluded), or None."""
    if not enabled() or getattr(fallback, "kind", None) != "trees" or not available():
        return None
    import treelite
    module = type(estimator).__module__.split(".")[0]
    if module == "lightgbm":
        model = treelite.frontend.from_lightgbm(estimator.booster_)
    elif module == "xgboost":
        start, stop = estimator._get_iteration_range(None) if hasattr(estimator, "_get_iteration_range") else (0, 0)
        if start or stop:
            return None                         # early stopping: predict uses a prefix of the trees
        model = treelite.frontend.from_xgboost_json(bytes(estimator.get_booster().save_raw("json")))
    elif module == "sklearn":
        # HistGradientBoosting compares float64; scikit-learn's other trees (decision trees, random
        # forests, extra trees, gradient boosting) compare float32(x) with float64 thresholds,
        # which the shim reproduces by rounding each value to float32 first (Forest.round32).
        # GradientBoosting is left on the walk: scikit-learn refuses NaN for it, and where the
        # walk sends a NaN (our choice, kept for every plan) treelite's import does not follow.
        from sklearn import ensemble
        if isinstance(estimator, (ensemble.GradientBoostingRegressor, ensemble.GradientBoostingClassifier)):
            return None
        model = treelite.sklearn.import_model(estimator)
    else:
        return None
    if model.num_feature != fallback.num_features:
        return None
    import tl2cgen
    digest = hashlib.sha256(model.serialize_bytes())
    round32 = bool(fallback.forest.round32)
    digest.update(f"{treelite.__version__}/{tl2cgen.__version__}/{_SHIM_VERSION}/{round32}".encode())
    return _Source(model, digest.hexdigest()[:32], fallback.task, fallback.num_features, fallback.classes, round32)


# ---------------------------------------------------------------- building

def _load_cached(source: _Source, fallback: Any) -> NativePlan | None:
    if not os.path.exists(source.lib) or os.path.exists(source.refused):
        return None
    try:
        plan = source.plan()
    except OSError as exc:
        log.warning("native trees: cached %s unusable (%r); rebuilding", source.lib, exc)
        return None
    return plan if _agrees(plan, fallback) else None


def _build_checked(source: _Source, fallback: Any) -> NativePlan | None:
    if os.path.exists(source.refused):
        return None                             # built and refused before: do not rebuild on every load
    _build(source)
    plan = source.plan()
    if not _agrees(plan, fallback):
        log.warning("native trees: the compiled model disagrees with the numpy plan; serving the numpy plan")
        with open(source.refused, "w") as f:
            f.write("the compiled model disagreed with the numpy walk on probe rows\n")
        return None
    return plan


def _build(source: _Source) -> None:
    """generate_c_code + the shim, compiled with gcc into source.lib (atomically renamed into place)."""
    import tl2cgen
    os.makedirs(os.path.dirname(source.dir), exist_ok=True)
    work = tempfile.mkdtemp(prefix=source.key[:8] + "-", dir=os.path.dirname(source.dir))
    try:
        from ..training.algorithms import usable_cpus
        cpus = usable_cpus()
        tl2cgen.generate_c_code(source.model, work, params={"parallel_comp": max(2, cpus)})
        _exact_missing_tests(work)
        header = open(os.path.join(work, "header.h")).read()
        match = re.search(r"void predict\(union Entry\* data, int pred_margin, (\w+)\* result\);", header)
        if match is None:
            raise RuntimeError("unexpected tl2cgen header: no predict(union Entry*, int, T*)")
        with open(os.path.join(work, "pgml_shim.c"), "w") as f:
            f.write(_SHIM % {"rtype": match.group(1), "nf": max(1, source.num_features), "parallel": _PARALLEL_ROWS,
                             # scikit-learn's trees and XGBoost compare float32(x): so does the .so
                             "value": "(double)(float)x[j]" if source.round32 else "x[j]"})
        sources = sorted(n for n in os.listdir(work) if n.endswith(".c"))
        cc = os.environ.get("CC", "gcc")
        lib = os.path.join(work, "model.so")
        for openmp in (["-fopenmp"], []):
            if _compile(cc, work, sources, lib, openmp, cpus):
                break
        else:
            raise RuntimeError(f"{cc} could not build the model")
        os.makedirs(source.dir, exist_ok=True)
        os.replace(lib, source.lib + f".{os.getpid()}")
        os.replace(source.lib + f".{os.getpid()}", source.lib)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# tl2cgen 1.0 marks a missing value by writing int -1 into `union Entry { int missing; double
# fvalue; }` and tests `data[i].missing != -1`, which reads the low 32 bits of the double: a present
# value whose low 32 bits are all ones is then taken for missing. LightGBM trained on float32-exact
# data puts its thresholds at exactly such doubles (the largest double below a float32 midpoint,
# mantissa ending in 32 one bits), so rows on a threshold went down the default branch (found by
# the probe check: 311 of 2,000 probe rows off, up to 12 in value). We keep every value in fvalue
# (NaN for missing) and rewrite each test to isnan(), which is exact for every double.
_MISSING_TEST = re.compile(r"\(data\[(\d+)\]\.missing != -1\)")


def _exact_missing_tests(work: str) -> None:
    """Rewrite tl2cgen's type-punned missing-value tests in the generated sources (see above)."""
    for name in os.listdir(work):
        if not name.endswith(".c"):
            continue
        path = os.path.join(work, name)
        with open(path) as f:
            code = f.read()
        fixed = _MISSING_TEST.sub(r"(!isnan(data[\1].fvalue))", code)
        if ".missing" in fixed or ".qvalue" in fixed:
            # Another use of the union than the one we know how to rewrite: refuse rather than guess.
            raise RuntimeError(f"unexpected tl2cgen code in {name}: a use of Entry.missing/qvalue we do not rewrite")
        if fixed != code:
            with open(path, "w") as f:
                f.write(fixed)


def _compile(cc: str, work: str, sources: list[str], lib: str, openmp: list[str], cpus: int) -> bool:
    flags = ["-O2", "-fPIC", "-std=c99", "-fno-math-errno", *openmp]
    objects = [s[:-2] + ".o" for s in sources]
    with ThreadPoolExecutor(max_workers=max(1, min(cpus, len(sources)))) as pool:
        results = list(pool.map(lambda s: subprocess.run([cc, *flags, "-c", s, "-o", s[:-2] + ".o"], cwd=work,
                                                         capture_output=True, text=True), sources))
    failed = [r for r in results if r.returncode != 0]
    if not failed:
        linked = subprocess.run([cc, "-shared", *openmp, "-o", lib, *objects, "-lm"], cwd=work,
                                capture_output=True, text=True)
        if linked.returncode == 0:
            return True
        failed = [linked]
    log.debug("native trees: %s %s failed: %s", cc, " ".join(openmp), failed[0].stderr[-2000:])
    return False


def _probe_rows(fallback: Any, n: int = 64) -> np.ndarray:
    """Rows whose values sit on, just beside and between the model's split thresholds, some NaN:
    where a wrong comparison, rounding or missing-value direction would show."""
    forest = fallback.forest
    rng = np.random.default_rng(0)
    nf = fallback.num_features
    X = rng.standard_normal((n, nf))
    split = ~forest.is_leaf
    for j in range(nf):
        thr = forest.threshold[split & (forest.feature == j)]
        if thr.size:
            pick = rng.choice(thr, n)
            X[:, j] = np.where(rng.random(n) < 0.5, pick, pick + rng.choice([-1e-9, 1e-9, 0.5, -0.5], n))
    X[rng.random((n, nf)) < 0.1] = np.nan
    X[0] = 0.0
    return X


def _walked(fallback: Any, X: np.ndarray) -> np.ndarray:
    """The numpy walk's predict (regression) or predict_proba, never the library's predictor that
    TreePlan hands large batches to: the walk is what the native code must reproduce."""
    raw = fallback.raw(X)
    if fallback.task == "classification":
        return fallback.output.proba(raw)
    out = fallback.output.value(raw) if fallback.output.value is not None else raw
    return out[:, 0] if out.shape[1] == 1 else out


def _agrees(plan: NativePlan, fallback: Any) -> bool:
    X = _probe_rows(fallback)
    try:
        ours = plan.predict_proba(X) if plan.task == "classification" else plan.predict(X)
        return bool(np.allclose(ours, _walked(fallback, X), rtol=1e-5, atol=1e-6))
    except Exception as exc:
        log.warning("native trees: checking the compiled model failed: %r", exc)
        return False
