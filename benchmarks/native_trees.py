"""In-process µs per call of a 100-tree model: the numpy walk, the native (compiled C) plan and the
library's own predict, for 1, 64 and 4096 rows; and the cold build time of the native plan.

Usage: python benchmarks/native_trees.py [--repeat 2000]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pgml_server.ml.inference import compiled                          # noqa: E402
from pgml_server.ml.inference.trees import compile_trees               # noqa: E402


def per_call_us(fn, X, budget: float = 1.0) -> float:
    fn(X)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < budget:
        fn(X)
        n += 1
    best = float("inf")
    for _ in range(5):                       # best of 5 runs of n/5 calls: less noise on shared cores
        k = max(1, n // 5)
        t = time.perf_counter()
        for _ in range(k):
            fn(X)
        best = min(best, (time.perf_counter() - t) / k)
    return best * 1e6


def models():
    import lightgbm
    import xgboost
    from sklearn.datasets import load_breast_cancer, load_diabetes
    from sklearn.ensemble import HistGradientBoostingRegressor
    X, y = load_diabetes(return_X_y=True)
    Xb, yb = load_breast_cancer(return_X_y=True)
    yield "LightGBM regressor", lightgbm.LGBMRegressor(n_estimators=100, verbose=-1).fit(X, y), "regression", X
    yield "LightGBM binary (proba)", lightgbm.LGBMClassifier(n_estimators=100, verbose=-1).fit(Xb, yb), \
        "classification", Xb
    yield "XGBoost regressor", xgboost.XGBRegressor(n_estimators=100).fit(X, y), "regression", X
    yield "HistGB regressor", HistGradientBoostingRegressor(max_iter=100).fit(X, y), "regression", X


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    cache = Path(compiled._cache_root())
    for name, est, task, data in models():
        shutil.rmtree(cache, ignore_errors=True)
        numpy_plan = compile_trees(est, task, native=False)
        t = time.perf_counter()
        native = compiled.compile_native(est, task, numpy_plan)
        build = time.perf_counter() - t
        t = time.perf_counter()
        compiled.compile_native(est, task, numpy_plan)
        cached = time.perf_counter() - t
        method = "predict_proba" if task == "classification" else "predict"
        print(f"{name}: native build {build:.2f} s cold, {cached * 1e3:.0f} ms from the cache; "
              f".so {native.nbytes // 1024} KB, numpy plan {numpy_plan.nbytes // 1024} KB")
        rng = np.random.default_rng(0)
        for rows in (1, 64, 4096):
            X = np.ascontiguousarray(data[rng.integers(0, len(data), rows)])
            a = per_call_us(getattr(numpy_plan, method), X)
            b = per_call_us(getattr(native, method), X)
            c = per_call_us(getattr(est, method), X)
            print(f"  {rows:5d} rows: numpy plan {a:9.1f} µs   native {b:8.1f} µs   library {c:9.1f} µs"
                  f"   numpy/native {a / b:6.1f}x   library/native {c / b:6.1f}x")


if __name__ == "__main__":
    main()
