"""The choice of compiler: a fitted estimator becomes the fastest plan that reproduces it."""
from __future__ import annotations

import logging
from functools import partial
from typing import Any

from . import compiled, linear, trees
from . import gpu as gpu_backend
from .contract import EstimatorPlan, MultiOutputPlan, Plan
from .unsupervised import compile_unsupervised

log = logging.getLogger("pgml_server.inference")

GPU_MODES = ("auto", "on", "off")


def compile_plan(estimator: Any, task: str, *, gpu: str = "off", native: bool = True) -> Plan:
    """Compile a fitted estimator into the fastest plan that reproduces its predictions.

    gpu: 'off' never uses a GPU; 'on' uses one for every batch when one is usable; 'auto' only
    for batches large enough to repay the transfer (gpu.min_batch(), set by --gpu-min-batch).
    native: a tree ensemble treelite supports is compiled to native code (compiled.py: built off
    the caller's thread, the numpy plan serving until it is ready; PGML_NATIVE_TREES=0 turns it
    off); otherwise a tree plan hands large CPU batches to the library's own predictor, faster
    there (trees.TreePlan.use_native). False keeps every batch on the numpy walk."""
    if gpu not in GPU_MODES:
        raise ValueError(f"gpu must be one of {GPU_MODES}, not {gpu!r}")
    if task in ("clustering", "decomposition"):
        return compile_unsupervised(estimator, task)
    from sklearn.multioutput import MultiOutputRegressor
    if isinstance(estimator, MultiOutputRegressor):
        return _compile_multi_output(estimator, task, gpu, native)
    plan = _compile_one(estimator, task, gpu, native)
    return plan if plan is not None else EstimatorPlan(estimator, task)


def _compile_one(estimator: Any, task: str, gpu: str, native: bool = True):
    for compiler in (linear.compile_linear, partial(trees.compile_trees, native=native)):
        try:
            plan = compiler(estimator, task, gpu=gpu)
        except Exception as exc:   # a compiler bug must not make the model unservable
            log.warning("compiling %s failed, serving it with its own predict: %r", type(estimator).__name__, exc)
            return None
        if plan is not None:
            return _native(estimator, task, plan) if native and plan.kind == "trees" and _cpu_only(gpu) else plan
    return None


def _cpu_only(gpu: str) -> bool:
    """No batch of this plan will run on a GPU: then native code takes every batch. With a GPU
    that may be used ('on', or 'auto' with a device), the numpy/GPU plan keeps the model."""
    return gpu == "off" or (gpu == "auto" and not gpu_backend.gpu_available())


def _native(estimator: Any, task: str, plan: Plan) -> Plan:
    """The tree plan's native-code replacement when it can be had (now or later), else the plan."""
    try:
        return compiled.native_later(estimator, task, plan)
    except Exception as exc:   # no library, no compiler, a build error: the numpy plan serves
        log.warning("native trees for %s failed, serving the numpy plan: %r", type(estimator).__name__, exc)
        return plan


def _compile_multi_output(estimator: Any, task: str, gpu: str, native: bool) -> Plan:
    merged = linear.merge_regressors(estimator.estimators_, gpu=gpu)
    if merged is not None:
        return merged
    plans = [_compile_one(e, task, gpu, native) for e in estimator.estimators_]
    if any(p is None for p in plans):
        return EstimatorPlan(estimator, task)
    return MultiOutputPlan(plans, task)
