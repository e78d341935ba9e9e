"""Truncated SVD split (``fasttn.ops.svd_truncate``) on stacks of small matrices.

``SVDTruncate``: the fused kernel against ``np.linalg.svd`` on the same stack followed by the
same sign fix, truncation (``max_bond = n / 2``, ``cutoff = 1e-12``), absorption ("both"),
entropy and discarded weight in vectorised NumPy (:func:`numpy_split`), float64.
``track_speedup`` is the NumPy time over the fasttn time, both medians taken in turns in the
same process.

``SVDTruncateBackward``: the backward kernel against the same formula in batched NumPy
(:func:`numpy_backward`), gradients for ``left``, ``right`` and ``s`` of the same split.

``SVDRoute``: the kernel's two SVD routes on the same stack (one-sided Jacobi over lanes of
matrices, LAPACK ``gesdd`` per matrix), the measurement behind ``cpu.JACOBI_MAX_ENTRIES``.

As a script (from the repository root), the same figures as a table::

    python bench/benchmarks/bench_svd.py                 # median of 7 calls per figure
    python bench/benchmarks/bench_svd.py --repeats 15 --routes --wait-quiet 120
"""
from __future__ import annotations

import argparse
import time
from typing import Callable, Tuple

import numpy as np

import fasttn  # noqa: F401  (the suite runs against the installed package)
from fasttn.ops.svd_truncate import cpu as svd_cpu
from fasttn.ops.svd_truncate import reference as svd_ref
from fasttn.ops.svd_truncate import svd_truncate, svd_truncate_backward, svd_truncate_forward

try:
    from .quiet import busy_fraction, wait_for_quiet
except ImportError:  # run as a script
    from quiet import busy_fraction, wait_for_quiet

SHAPES = ["4096x8x8", "1024x16x16", "256x48x48", "64x48x48"]
ROUTE_SHAPES = ["4x4", "8x8", "16x16", "24x24", "32x32", "36x36", "40x40", "48x48", "40x32",
                "64x16", "512x8", "96x32", "256x16"]
CUTOFF = 1e-12


def parse(shape: str) -> Tuple[int, int, int]:
    batch, m, n = (int(t) for t in shape.split("x"))
    return batch, m, n


def make_stack(batch: int, m: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, m, n))


def numpy_split(a: np.ndarray, max_bond: int, cutoff: float):
    """What the kernel computes, written with batched NumPy calls."""
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    # sign fix: largest-|.| entry of each left vector positive
    at = np.argmax(np.abs(u), axis=-2)[:, None, :]
    sign = np.where(np.take_along_axis(u, at, axis=-2) < 0, -1.0, 1.0)   # (B, 1, r)
    u = u * sign
    vt = vt * sign.transpose(0, 2, 1)
    keep = (s >= cutoff * s[:, :1]) & (s > 0)
    keep[:, max_bond:] = False
    kept = np.maximum(keep.sum(axis=1), 1)
    k = int(kept.max())
    mask = np.arange(k)[None, :] < kept[:, None]
    sk = np.where(mask, s[:, :k], 0.0)
    root = np.sqrt(sk)
    left = u[:, :, :k] * root[:, None, :]
    right = vt[:, :k, :] * root[:, :, None]
    w = sk ** 2
    p = w / np.maximum(w.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
    entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
    tail = np.where(np.arange(s.shape[1])[None, :] >= kept[:, None], s, 0.0)
    discarded = np.sqrt(np.sum(tail ** 2, axis=1))
    return left, right, sk, entropy, discarded


def _broadened_inverse(x, eps):
    return x / (x * x + np.maximum(eps * eps, np.finfo(np.float64).tiny))


def numpy_backward(saved, g_left, g_right, g_s):
    """``reference.svd_truncate_backward`` (absorb "both") for the whole stack at once, with
    batched NumPy products instead of the kernel's loops."""
    broadening = svd_ref.BROADENING
    u, s, v, kept, k = saved.u, saved.s, saved.v, saved.kept, saved.k
    r = s.shape[1]
    mask = (np.arange(r)[None, :] < kept[:, None]).astype(np.float64)
    gl = np.zeros(u.shape)
    gl[:, :, :k] = g_left
    gl *= mask[:, None, :]
    gr = np.zeros(v.shape)
    gr[:, :, :k] = g_right.transpose(0, 2, 1)
    gr *= mask[:, None, :]
    gs = np.zeros(s.shape)
    gs[:, :k] = g_s
    gs *= mask
    root = np.sqrt(s) * mask
    s0 = s[:, :1]
    g_u = gl * root[:, None, :]
    g_v = gr * root[:, None, :]
    half_inv_root = _broadened_inverse(2 * root, broadening * np.sqrt(s0)) * mask
    g_sv = gs + (np.sum(gl * u, axis=1) + np.sum(gr * v, axis=1)) * half_inv_root
    x = u.transpose(0, 2, 1) @ g_u
    y = v.transpose(0, 2, 1) @ g_v
    a_, b_ = x - x.transpose(0, 2, 1), y - y.transpose(0, 2, 1)
    eps = (broadening * s0)[:, :, None]
    gap = s[:, None, :] - s[:, :, None]
    total = s[:, None, :] + s[:, :, None]
    inner = 0.5 * ((a_ + b_) * _broadened_inverse(gap, eps)
                   + (a_ - b_) * _broadened_inverse(total, eps))
    diag = np.arange(r)
    inner[:, diag, diag] = g_sv
    s_inv = _broadened_inverse(s, broadening * s0)
    vt = v.transpose(0, 2, 1)
    g_a = u @ inner @ vt
    g_a += ((g_u - u @ x) * s_inv[:, None, :]) @ vt
    g_a += (u * s_inv[:, None, :]) @ (g_v - v @ y).transpose(0, 2, 1)
    return g_a


def median_time(fn: Callable[[], object], repeats: int = 7) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def in_turns(fns, repeats: int = 7):
    """Median time of each function, calling them in turns so all see the same machine."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [float(np.median(ts)) for ts in times]


class _FasttnVsNumpy:
    """``self.fasttn`` and ``self.numpy`` (set by ``setup``) timed, and their ratio."""

    def time_fasttn(self, shape):
        self.fasttn()

    def time_numpy(self, shape):
        self.numpy()

    def track_speedup(self, shape):
        t_fasttn, t_numpy = in_turns([self.fasttn, self.numpy])
        return t_numpy / t_fasttn
    track_speedup.unit = "x"


class SVDTruncate(_FasttnVsNumpy):
    """Fused kernel vs ``np.linalg.svd`` + the same post-processing in NumPy."""

    params = [SHAPES]
    param_names = ["batch_m_n"]
    timeout = 300

    def setup(self, shape):
        batch, m, n = parse(shape)
        self.a = make_stack(batch, m, n)
        self.max_bond = min(m, n) // 2
        self.fasttn = lambda: svd_truncate(self.a, self.max_bond, CUTOFF, "both")
        self.numpy = lambda: numpy_split(self.a, self.max_bond, CUTOFF)
        # both compute the same thing (and the kernel is compiled outside the timed region)
        for x, y in zip(self.fasttn(), self.numpy()):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-9 * max(1.0, np.abs(y).max()))

class SVDTruncateBackward(_FasttnVsNumpy):
    """The backward kernel vs :func:`numpy_backward` (the same formula, batched NumPy)."""

    params = [SHAPES]
    param_names = ["batch_m_n"]
    timeout = 300

    def setup(self, shape):
        batch, m, n = parse(shape)
        out, saved = svd_truncate_forward(make_stack(batch, m, n), min(m, n) // 2, CUTOFF)
        rng = np.random.default_rng(1)
        grads = [rng.standard_normal(x.shape) for x in (out.left, out.right, out.s)]
        self.fasttn = lambda: svd_truncate_backward(saved, *grads)
        self.numpy = lambda: numpy_backward(saved, *grads)
        expected = self.numpy()
        np.testing.assert_allclose(self.fasttn(), expected, rtol=0,
                                   atol=1e-9 * np.abs(expected).max())

def _route(a: np.ndarray, jacobi: bool):
    """The whole forward (no truncation), on the given SVD route."""
    return lambda: svd_cpu.svd_truncate_forward(a, None, 0.0, "both", jacobi=jacobi)


class SVDRoute:
    """The kernel's Jacobi route against its LAPACK route on 2^18 entries of m x n."""

    params = [ROUTE_SHAPES]
    param_names = ["m_n"]
    timeout = 300

    def setup(self, shape):
        m, n = (int(t) for t in shape.split("x"))
        self.a = make_stack(max(64, 2 ** 18 // (m * n)), m, n)
        self.jacobi = _route(self.a, True)
        self.lapack = _route(self.a, False)
        self.jacobi()
        self.lapack()

    def time_jacobi(self, shape):
        self.jacobi()

    def time_lapack(self, shape):
        self.lapack()

    def track_lapack_over_jacobi(self, shape):
        t_jacobi, t_lapack = in_turns([self.jacobi, self.lapack])
        return t_lapack / t_jacobi
    track_lapack_over_jacobi.unit = "x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--routes", action="store_true",
                    help="also time the Jacobi and LAPACK routes of the kernel per shape")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="before each row, wait up to this long for the cores to be idle "
                         "(under 15%% busy); the busy fraction seen is printed")
    args = ap.parse_args()

    def quiet() -> str:
        busy = wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else busy_fraction(0.2)
        return f"{100 * busy:5.0f}%"

    print(f"{'batch x m x n':>14} {'route':>7} {'fasttn ms':>10} {'numpy ms':>10} "
          f"{'speed-up':>9} {'busy':>6}")
    for shape in SHAPES:
        b = SVDTruncate()
        b.setup(shape)
        busy = quiet()
        t_fasttn, t_numpy = in_turns([b.fasttn, b.numpy], args.repeats)
        _, m, n = parse(shape)
        route = "jacobi" if svd_cpu.use_jacobi(m, n, parse(shape)[0]) else "lapack"
        print(f"{shape:>14} {route:>7} {t_fasttn * 1e3:10.2f} {t_numpy * 1e3:10.2f} "
              f"{t_numpy / t_fasttn:8.2f}x {busy}", flush=True)
    print(f"\n{'backward':>14} {'':>7} {'fasttn ms':>10} {'numpy ms':>10} {'speed-up':>9} "
          f"{'busy':>6}")
    for shape in SHAPES:
        b = SVDTruncateBackward()
        b.setup(shape)
        busy = quiet()
        t_fasttn, t_numpy = in_turns([b.fasttn, b.numpy], args.repeats)
        print(f"{shape:>14} {'':>7} {t_fasttn * 1e3:10.2f} {t_numpy * 1e3:10.2f} "
              f"{t_numpy / t_fasttn:8.2f}x {busy}", flush=True)
    if args.routes:
        print(f"\n{'batch x m x n':>14} {'jacobi ms':>10} {'lapack ms':>10} {'lapack/jacobi':>14} "
              f"{'kernel uses':>12} {'busy':>6}")
        for shape in ROUTE_SHAPES:
            r = SVDRoute()
            r.setup(shape)
            busy = quiet()
            t_j, t_l = in_turns([r.jacobi, r.lapack], args.repeats)
            b, m, n = r.a.shape
            route = "jacobi" if svd_cpu.use_jacobi(m, n, parse(shape)[0]) else "lapack"
            print(f"{f'{b}x{m}x{n}':>14} {t_j * 1e3:10.2f} {t_l * 1e3:10.2f} {t_l / t_j:13.2f}x "
                  f"{route:>12} {busy}", flush=True)

if __name__ == "__main__":
    main()
