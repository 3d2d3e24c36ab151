"""The GPU backend: the only module that imports CuPy, and only inside functions.

Tree plans upload their flat node table once and walk it with a RawKernel, one thread per row
looping over the trees; the leaves are then combined on the device by the same code that combines
them on the CPU (written against an array module `xp`). Linear plans run their matmul on the
device. A batch goes to the GPU only where it repays the transfer: `use_gpu` decides.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger("pgml_server.inference.gpu")

# Below this many rows, --gpu auto keeps a batch on the CPU: the host↔device copies and the
# kernel launch cost more than the numpy walk saves.
#
# NOT MEASURED: 20 000 is a guess. The crossover depends on the device, the PCIe link, the model
# (trees × depth) and the CPU it is compared with, and must be measured on a machine with a GPU
# (issue 4's GPU benchmark is to report the batch size where the GPU starts to win). No GPU
# was lent to the task that wrote this, so an operator sets the measured value with
# --gpu-min-batch / PGML_GPU_MIN_BATCH (services.py applies it via set_min_batch at start-up).
DEFAULT_GPU_MIN_BATCH = 20_000
GPU_MIN_BATCH = DEFAULT_GPU_MIN_BATCH

_available: bool | None = None


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device; False, quietly, otherwise."""
    global _available
    if _available is None:
        _available = _probe()
    return _available


def _probe() -> bool:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception as exc:      # not installed, no driver, no device: all mean "no GPU"
        log.debug("no usable GPU: %r", exc)
        return False


def set_min_batch(rows: int) -> None:
    """Set the --gpu auto threshold for this process (rows per batch; 0 sends every batch)."""
    global GPU_MIN_BATCH
    if int(rows) < 0:
        raise ValueError(f"the GPU batch threshold must be >= 0 rows, not {rows}")
    GPU_MIN_BATCH = int(rows)


def min_batch() -> int:
    """The --gpu auto threshold in force (rows)."""
    return GPU_MIN_BATCH


def use_gpu(mode: str, n_rows: int) -> bool:
    """Whether a batch of n_rows goes to the GPU under --gpu `mode` ('auto' | 'on' | 'off')."""
    if mode == "off":
        return False
    if mode == "auto" and n_rows < GPU_MIN_BATCH:
        return False
    return gpu_available()


class GpuLinear:
    """A linear plan's weights on the device."""

    def __init__(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        import cupy
        self._cp = cupy
        self.coef = cupy.asarray(coef)
        self.intercept = cupy.asarray(intercept)

    def decision(self, X: np.ndarray) -> np.ndarray:
        cp = self._cp
        d = cp.asarray(X) @ self.coef
        d += self.intercept
        return cp.asnumpy(d)


_WALK_SOURCE = r"""
extern "C" __global__
void walk(const double* X, const long long n_rows, const int n_features,
          const long long* feature, const double* threshold, const long long* children,
          const bool* missing_left, const bool* zero_missing, const bool* is_leaf,
          const long long* roots, const int n_trees, const int round32, long long* out)
{
    long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= n_rows) return;
    const double* x = X + row * n_features;
    for (int t = 0; t < n_trees; ++t) {
        long long node = roots[t];
        while (!is_leaf[node]) {
            double v = x[feature[node]];
            if (round32) v = (double)(float)v;      // sklearn trees and XGBoost compare float32
            bool left;
            if (isnan(v) || (zero_missing[node] && fabs(v) <= 1e-35)) {
                left = missing_left[node];
            } else {
                left = v <= threshold[node];
            }
            node = children[2 * node + (left ? 1 : 0)];
        }
        out[row * n_trees + t] = node;
    }
}
"""

_kernel = None


def _walk_kernel():
    global _kernel
    if _kernel is None:
        import cupy
        _kernel = cupy.RawKernel(_WALK_SOURCE, "walk")
    return _kernel


class GpuForest:
    """A tree plan's node table on the device; `raw` walks and combines there, returns numpy."""

    THREADS = 128

    def __init__(self, forest: Any, arrays: dict) -> None:
        import cupy
        self._cp = cupy
        self.forest = forest
        up = lambda a: None if a is None else cupy.asarray(a)
        self.feature = up(forest.feature.astype(np.int64))
        self.threshold = up(forest.threshold)
        self.children = up(forest.children.astype(np.int64))
        self.missing_left = up(forest.missing_left)
        # An all-false mask when no node treats zero as missing keeps the kernel free of NULL checks.
        zero = forest.zero_missing if forest.zero_missing is not None else np.zeros_like(forest.is_leaf)
        self.zero_missing = up(zero)
        self.is_leaf = up(forest.is_leaf)
        self.roots = up(forest.roots.astype(np.int64))
        self.arrays = {name: up(a) for name, a in arrays.items()}

    def leaves(self, X: np.ndarray):
        cp = self._cp
        n = X.shape[0]
        out = cp.empty((n, self.forest.n_trees), dtype=cp.int64)
        if n == 0:
            return out
        blocks = (n + self.THREADS - 1) // self.THREADS
        args = (cp.asarray(X), np.int64(n), np.int32(X.shape[1]), self.feature, self.threshold, self.children,
                self.missing_left, self.zero_missing, self.is_leaf, self.roots, np.int32(self.forest.n_trees),
                np.int32(1 if self.forest.round32 else 0), out)
        _walk_kernel()((blocks,), (self.THREADS,), args)
        return out

    def raw(self, X: np.ndarray, combine) -> np.ndarray:
        return self._cp.asnumpy(combine(self._cp, self.arrays, self.leaves(X)))
