"""This machine's ceilings, measured in the running process: the denominators of "% of peak".

* ``sgemm_gflops`` / ``dgemm_gflops``: float32 / float64 2048x2048 GEMM through NumPy's BLAS,
  all BLAS threads, best of 5 (``2 n^3`` flops per product).
* ``copy_gbs``: ``np.copyto`` of a 256 MiB float32 array, far beyond the caches, best of 3;
  bytes read plus bytes written.

The method is that of ``shared/tools/ceilings.py``. Each figure is measured once per process
and cached, so a benchmark that quotes "% of sgemm" pays for one measurement (~0.5 s) and
compares against the machine as it is during its own run (other processes included).
"""
from __future__ import annotations

import functools
import os
import time

import numpy as np

GEMM_N = 2048
COPY_ELEMENTS = 1 << 26


def best_time(fn, repeats: int = 5) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure_gemm_gflops(dtype) -> float:
    """GEMM rate now (uncached), GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.random((GEMM_N, GEMM_N), dtype=dtype)
    b = rng.random((GEMM_N, GEMM_N), dtype=dtype)
    out = np.empty_like(a)
    return 2 * GEMM_N**3 / best_time(lambda: np.matmul(a, b, out=out)) / 1e9


@functools.lru_cache(maxsize=None)
def sgemm_gflops() -> float:
    """float32 GEMM rate of this machine, GFLOP/s (cached per process)."""
    return measure_gemm_gflops(np.float32)


@functools.lru_cache(maxsize=None)
def dgemm_gflops() -> float:
    """float64 GEMM rate of this machine, GFLOP/s (cached per process)."""
    return measure_gemm_gflops(np.float64)


@functools.lru_cache(maxsize=None)
def copy_gbs() -> float:
    """Memory copy rate of this machine, GB/s of bytes read + written (cached per process)."""
    return measure_copy_gbs()


def measure_copy_gbs() -> float:
    """Copy rate now (uncached), GB/s."""
    x = np.random.default_rng(0).random(COPY_ELEMENTS, dtype=np.float32)
    y = np.empty_like(x)
    return 2 * x.nbytes / best_time(lambda: np.copyto(y, x), 3) / 1e9


def all_ceilings() -> dict:
    return {"sgemm_gflops": sgemm_gflops(), "dgemm_gflops": dgemm_gflops(),
            "copy_gbs": copy_gbs(), "threads": os.cpu_count()}


class MachineCeilings:
    """GEMM and copy rates of the machine during this run (the denominators of % of peak)."""

    timeout = 120

    def track_sgemm_gflops(self) -> float:
        return sgemm_gflops()

    track_sgemm_gflops.unit = "GFLOP/s"  # type: ignore[attr-defined]

    def track_dgemm_gflops(self) -> float:
        return dgemm_gflops()

    track_dgemm_gflops.unit = "GFLOP/s"  # type: ignore[attr-defined]

    def track_copy_gbs(self) -> float:
        return copy_gbs()

    track_copy_gbs.unit = "GB/s"  # type: ignore[attr-defined]


def cpu_name() -> str:
    """The host CPU's model name (for the headers of measured tables)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"
