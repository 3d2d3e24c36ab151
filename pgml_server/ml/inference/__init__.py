"""Compiled inference: fitted estimators turned into plans that predict without library overhead.

`compile_plan(estimator, task, gpu=...)` (compiler.py) returns a plan (see contract.Plan): linear
models become a weight matrix (linear.py), tree ensembles a flat node table walked in numpy or
on a GPU (trees.py, gpu.py; large CPU batches of LightGBM/XGBoost/HistGradientBoosting models go
to the library's own multi-threaded predictor, faster there; with treelite/tl2cgen and a C
compiler, LightGBM, XGBoost and HistGradientBoosting models are compiled to native code instead:
compiled.py), anything else wraps the
estimator's own predict. The compilers import the contract, never the other way round. This
package never touches the registry; CuPy is imported only in gpu.py.
"""
from .compiler import GPU_MODES, compile_plan
from .contract import EstimatorPlan, MultiOutputPlan, Plan, PlanError
from .gpu import DEFAULT_GPU_MIN_BATCH, gpu_available, min_batch, set_min_batch

__all__ = ["DEFAULT_GPU_MIN_BATCH", "EstimatorPlan", "GPU_MODES", "MultiOutputPlan", "Plan", "PlanError",
           "compile_plan", "gpu_available", "min_batch", "set_min_batch"]
