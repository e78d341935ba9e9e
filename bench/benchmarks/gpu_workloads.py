"""GPU workloads shared by the asv suite (``bench_gpu.py``) and ``bench/run_gpu.py``.

Everything here needs CuPy and an NVIDIA GPU to *measure*, and nothing to *import*: CuPy is
imported only inside the functions that measure, and :func:`unavailable` says (with
fasttn's own message) why a machine cannot run them.

What is measured
----------------
* ceilings: a device-to-device copy of a 1 GiB float32 array, as ``cudaMemcpyAsync`` and as
  an elementwise kernel (the larger of the two is *the* copy rate), and a float32 8192^2
  GEMM (``cupy.matmul``; TF32 only if the environment enables it, recorded in the header);
* product pooling (``fasttn.ops.product_pool`` / ``product_pool_backward`` on CuPy arrays):
  the level-0 activations of a 128^2 q-CNN batch of :data:`POOL_BATCH` (36 channels), pairs
  on a chain and 2x2 windows on a grid (the shapes of ``qcnn_workloads.POOL_SHAPES`` with
  the batch raised until the arrays are hundreds of MB);
* q-CNN training (``qcnn_workloads.FasttnQCNN``: d = 18, float32, NeedleMNIST, square loss,
  AdamW) at 128^2 for each batch of :data:`QCNN_BATCHES`, moved onto the GPU;
* MERA2D training (``mera_workloads.Mera2DTrain``: chi = 4, float32, NeedleMNIST) at 512^2
  for each batch of :data:`MERA_BATCHES`, moved onto the GPU;
* one training step each at 1024^2 (NeedleMNIST, batch 2): the q-CNN in the linear domain
  (what ``domain="auto"`` trains in) and in the log domain (the two domains the CPU tests
  run at 1024^2), and MERA2D;
* the first call in a fresh interpreter, with an empty and with a filled CuPy kernel cache.

Conventions
-----------
Bytes (effective: passes an implementation makes beyond these are not counted)::

    copy                  = 2 * nbytes                          (read + write)
    pool forward          = (n_in + n_out) * itemsize           (x read, out written)
    pool backward         = (2 * n_in + n_out) * itemsize       (x and g_out read, g_x written)

with ``n_in`` the input's elements and ``n_out = n_in / window`` (window 2 on a chain, 4 for a
2x2 grid). FLOPs: GEMM ``2 n^3``; a q-CNN training step ``qcnn_workloads.train_flops`` (GEMM
work only: ``2 (2 MAC_0 + 3 sum_{l>=1} MAC_l)``). Rates use 1 GB = 1e9 bytes and 1 GFLOP =
1e9 FLOPs.

Timing: the first call of every workload is timed alone (wall clock, device synchronised
before and after; it includes compiling, or loading from CuPy's on-disk cache, every kernel
this process had not used yet) and kept out of the figures. Ceilings and product pooling
are then timed with CUDA events around ``inner`` back-to-back calls (the host's launch
overhead overlaps the kernels, as in a training loop), divided by ``inner``; model steps
with the wall clock and a device synchronisation after each step (host work counts). Each
figure is the best of at least ``min_runs`` samples taken for at least ``budget_s``.
"""
from __future__ import annotations

import datetime
import functools
import gc
import math
import os
import platform
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

import fasttn
from fasttn import backend
from fasttn._cuda import CUDAUnavailableError, require_cupy
from fasttn.ops import product_pool, product_pool_backward

from . import mera_workloads as M
from .ceilings import cpu_name
from . import qcnn_workloads as W

_BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COPY_ELEMENTS = 1 << 28          # float32: a 1 GiB source and a 1 GiB destination
GEMM_N = 8192
POOL_BATCH = 256                 # (256, 16384, 36) float32 = 604 MB in
POOL_LAYOUTS = tuple(W.POOL_SHAPES)           # ("chain", "grid")
POOL_DIRECTIONS = ("forward", "backward")
POOL_TARGET_PERCENT = 60.0       # of the copy rate
QCNN_SIZE = 128
QCNN_BATCHES = (16, 256, 512)
MERA_SIZE = 512
MERA_BATCHES = (2, 16, 64)
NEEDLE_SIZE = 1024
NEEDLE_BATCH = 2
NEEDLE_CASES = ("qcnn-linear", "qcnn-log", "mera2d")
FIRST_CALLS = ("product_pool", "qcnn_train_step")

# timing settings: ceilings and ops (CUDA events), models (wall clock + synchronisation)
OP_TIMING = dict(min_runs=5, max_runs=200, budget_s=1.0, inner=10)
CEILING_TIMING = dict(min_runs=5, max_runs=100, budget_s=1.0, inner=5)
MODEL_TIMING = dict(min_runs=3, max_runs=100, budget_s=2.0)
NEEDLE_TIMING = dict(min_runs=2, max_runs=10, budget_s=1.0)


# ------------------------------------------------------------------------ availability
def unavailable() -> Optional[str]:
    """``None`` where CuPy sees a GPU, else fasttn's message saying which is missing."""
    try:
        require_cupy()
    except CUDAUnavailableError as exc:
        return str(exc)
    return None


def require() -> Any:
    """CuPy, or ``NotImplementedError`` (asv's "skipped") with the reason."""
    reason = unavailable()
    if reason:
        raise NotImplementedError(reason)
    return require_cupy()


# -------------------------------------------------------------------------- arithmetic
def copy_bytes(nbytes: int) -> int:
    """Bytes a copy of ``nbytes`` moves: read + write."""
    return 2 * int(nbytes)


def gemm_flops(n: int) -> int:
    """FLOPs of an ``n x n`` by ``n x n`` product."""
    return 2 * int(n) ** 3


def pool_shape(layout: str, batch: Optional[int] = None) -> tuple:
    """Input shape of the pooling workload: ``qcnn_workloads.POOL_SHAPES`` with ``batch``
    (default :data:`POOL_BATCH`)."""
    return (int(batch or POOL_BATCH),) + tuple(W.POOL_SHAPES[layout][0][1:])


def pool_window(layout: str) -> int:
    """Input elements per output element (2 on a chain, 4 for 2x2 on a grid)."""
    return int(W.POOL_SHAPES[layout][1])


def pooled_shape(shape: Sequence[int], window: int) -> tuple:
    """Output shape of product pooling: ``window`` sites on a chain ``(batch, sites,
    channels)``, 2x2 (``window`` 4) on a grid ``(batch, height, width, channels)``."""
    shape = tuple(int(n) for n in shape)
    if len(shape) == 3 and window >= 1 and shape[1] % window == 0:
        return (shape[0], shape[1] // window, shape[2])
    if len(shape) == 4 and window == 4 and shape[1] % 2 == 0 and shape[2] % 2 == 0:
        return (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
    raise ValueError(f"shape {shape} does not pool by windows of {window}")


def pool_bytes(shape: Sequence[int], window: int, itemsize: int, direction: str) -> int:
    """Bytes product pooling must move (see the module docstring)."""
    n_in = int(np.prod(shape))
    n_out = int(np.prod(pooled_shape(shape, window)))
    if direction == "forward":
        return (n_in + n_out) * itemsize
    if direction == "backward":
        return (2 * n_in + n_out) * itemsize
    raise ValueError(f"direction: expected 'forward' or 'backward', got {direction!r}")


def per_second(amount: float, seconds: float, unit: float = 1e9) -> float:
    """``amount / seconds`` in ``unit`` (1e9: GB/s or GFLOP/s)."""
    return amount / seconds / unit


def percent(part: float, whole: float) -> float:
    return 100.0 * part / whole


def ns_per_pixel(seconds: float, batch: int, side: int) -> float:
    return seconds / (batch * side * side) * 1e9


def cuda_version(v: int) -> str:
    """CUDA's integer version (12040) as text ("12.4")."""
    v = int(v)
    return f"{v // 1000}.{(v % 1000) // 10}"


def spec_bandwidth_gbs(memory_clock_khz: float, bus_width_bits: int) -> float:
    """Memory bandwidth from the device's data sheet values (double data rate), GB/s."""
    return 2 * memory_clock_khz * 1e3 * bus_width_bits / 8 / 1e9


# ----------------------------------------------------------------------------- timing
def synchronize(xp) -> None:
    """Wait for all work on the current device (nothing to wait for with NumPy)."""
    if xp is not np:
        xp.cuda.Device().synchronize()


def best_times(fn: Callable[[], object], xp, clock: str = "events", min_runs: int = 5,
               max_runs: int = 100, budget_s: float = 1.0, inner: int = 1) -> Dict:
    """The first call alone, then best-of timings (see the module docstring).

    ``clock="events"``: CUDA events on the current stream around ``inner`` calls, the
    elapsed time divided by ``inner``. ``clock="wall"``: ``perf_counter`` around ``inner``
    calls and a device synchronisation. With NumPy (``xp is np``) both are the wall clock.
    Returns ``{"first_call_s", "times_s" (per call, one per sample), "best_s", "clock",
    "inner"}``.
    """
    if clock not in ("events", "wall"):
        raise ValueError(f"clock: expected 'events' or 'wall', got {clock!r}")
    inner = max(1, int(inner))
    synchronize(xp)
    t = time.perf_counter()
    fn()
    synchronize(xp)
    first = time.perf_counter() - t
    events = clock == "events" and xp is not np
    if events:
        start, end = xp.cuda.Event(), xp.cuda.Event()
    times: List[float] = []
    t0 = time.perf_counter()
    while len(times) < max_runs:
        if events:
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            times.append(xp.cuda.get_elapsed_time(start, end) * 1e-3 / inner)  # ms -> s
        else:
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            synchronize(xp)
            times.append((time.perf_counter() - t) / inner)
        if len(times) >= min_runs and time.perf_counter() - t0 >= budget_s:
            break
    return {"first_call_s": first, "times_s": times, "best_s": min(times),
            "clock": "events" if events else "wall", "inner": inner}


def release_memory() -> None:
    """Drop garbage and give pooled device (and fasttn's host) memory back."""
    gc.collect()
    backend.workspace.clear()
    cp = sys.modules.get("cupy")
    if cp is not None:
        cp.get_default_memory_pool().free_all_blocks()
        cp.get_default_pinned_memory_pool().free_all_blocks()


def device_pool_gib() -> float:
    """GiB held by CuPy's memory pool now (after a workload: about its peak; the pool keeps
    freed blocks)."""
    cp = sys.modules.get("cupy")
    return cp.get_default_memory_pool().total_bytes() / 2**30 if cp is not None else 0.0


def guarded(base: Dict, fn: Callable[[], Dict]) -> Dict:
    """``base`` updated with ``fn()``'s figures, or with the error it raised (the traceback
    goes to stderr; ``out_of_memory`` marks a device allocation that failed), then memory
    released: one failing workload does not lose the others."""
    row = dict(base)
    try:
        row.update(fn())
    except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
        traceback.print_exc(file=sys.stderr)
        row["error"] = f"{type(exc).__name__}: {exc}"[:500]
        row["out_of_memory"] = isinstance(exc, MemoryError)  # cupy OutOfMemoryError too
    release_memory()
    return row


# ------------------------------------------------------------------------ environment
def environment() -> Dict:
    """Device, library versions and date, for the header of the results."""
    cp = require_cupy()
    rt = cp.cuda.runtime
    dev = cp.cuda.Device()
    props = rt.getDeviceProperties(dev.id)
    name = props["name"]
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": {
            "index": dev.id,
            "name": name.decode(errors="replace") if isinstance(name, bytes) else str(name),
            "memory_gib": props["totalGlobalMem"] / 2**30,
            "multiprocessors": props.get("multiProcessorCount"),
            "compute_capability": str(dev.compute_capability),
            "count": rt.getDeviceCount(),
        },
        "cupy": cp.__version__,
        "cuda_runtime": cuda_version(rt.runtimeGetVersion()),
        "cuda_driver": cuda_version(rt.driverGetVersion()),
        "fasttn": fasttn.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "host_cpu": cpu_name(),
        "host_cores": os.cpu_count(),
        "env": {k: os.environ.get(k) for k in ("CUPY_TF32", "NVIDIA_TF32_OVERRIDE",
                                               "CUPY_CACHE_DIR", "CUDA_VISIBLE_DEVICES")},
    }
    try:
        info["cuda_runtime_local"] = cuda_version(cp.cuda.get_local_runtime_version())
    except Exception:  # noqa: BLE001 - informational only
        pass
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        pass
    clock, bus = props.get("memoryClockRate"), props.get("memoryBusWidth")
    if clock and bus:
        info["device"]["spec_bandwidth_gbs"] = spec_bandwidth_gbs(clock, bus)
    cache = os.environ.get("CUPY_CACHE_DIR") or os.path.expanduser("~/.cupy/kernel_cache")
    info["kernel_cache_files_at_start"] = (len(os.listdir(cache)) if os.path.isdir(cache)
                                           else 0)
    return info


# --------------------------------------------------------------------------- ceilings
def measure_ceilings(timing: Optional[Dict] = None) -> Dict:
    """Copy (memcpy and elementwise kernel) and float32 GEMM, timed with CUDA events."""
    cp = require_cupy()
    timing = dict(CEILING_TIMING, **(timing or {}))
    out: Dict[str, Any] = {"copy_elements": COPY_ELEMENTS, "gemm_n": GEMM_N}
    try:
        out.update(_copy_timings(cp, timing))
        release_memory()
        out.update(_gemm_timings(cp, timing))
    finally:
        release_memory()
    return out


def _copy_timings(cp, timing: Dict) -> Dict:
    src = cp.ones(COPY_ELEMENTS, np.float32)
    dst = cp.empty_like(src)
    kernel = cp.ElementwiseKernel("T x", "T y", "y = x", "fasttn_bench_copy")
    out = {"copy_bytes": copy_bytes(src.nbytes),
           "memcpy": best_times(lambda: dst.data.copy_from_device_async(src.data, src.nbytes),
                                cp, "events", **timing)}
    dst.fill(0)
    out["copy_kernel"] = best_times(lambda: kernel(src, dst), cp, "events", **timing)
    if not bool((dst == src).all()):
        raise RuntimeError("the copy kernel did not copy")
    return out


def _gemm_timings(cp, timing: Dict) -> Dict:
    rs = cp.random.RandomState(0)
    a = rs.random_sample((GEMM_N, GEMM_N), dtype=np.float32)
    b = rs.random_sample((GEMM_N, GEMM_N), dtype=np.float32)
    c = cp.empty_like(a)
    return {"gemm_flops": gemm_flops(GEMM_N),
            "gemm": best_times(lambda: cp.matmul(a, b, out=c), cp, "events", **timing)}


def ceiling_figures(c: Dict) -> Dict[str, float]:
    """GB/s and TFLOP/s from :func:`measure_ceilings`' record; ``copy_gbs`` is the larger of
    the two copies (the denominator of "% of copy")."""
    memcpy = per_second(c["copy_bytes"], c["memcpy"]["best_s"])
    kernel = per_second(c["copy_bytes"], c["copy_kernel"]["best_s"])
    return {"memcpy_gbs": memcpy, "copy_kernel_gbs": kernel, "copy_gbs": max(memcpy, kernel),
            "sgemm_tflops": per_second(c["gemm_flops"], c["gemm"]["best_s"], 1e12)}


@functools.lru_cache(maxsize=None)
def ceilings() -> Dict[str, float]:
    """:func:`ceiling_figures` of this process, measured once (cached)."""
    return ceiling_figures(measure_ceilings())


# --------------------------------------------------------------------- product pooling
def uniform(xp, shape, dtype=np.float32, low: float = 0.5, high: float = 1.5, seed: int = 0):
    """Uniform values in ``[low, high)`` on ``xp``'s device (products stay of order one)."""
    if xp is np:
        return np.random.default_rng(seed).uniform(low, high, shape).astype(dtype)
    return xp.random.RandomState(seed).uniform(low, high, size=shape, dtype=dtype)


class PoolOp:
    """Product pooling of one layout on ``xp`` arrays (CuPy on the GPU; NumPy works too)."""

    def __init__(self, layout: str, batch: Optional[int] = None, xp=None, dtype=np.float32):
        self.xp = xp if xp is not None else require_cupy()
        self.layout, self.window = layout, pool_window(layout)
        self.shape = pool_shape(layout, batch)
        self.x = uniform(self.xp, self.shape, dtype)
        out = product_pool(self.x, self.window)
        if tuple(out.shape) != pooled_shape(self.shape, self.window):
            raise RuntimeError(f"product_pool{self.shape}: output {tuple(out.shape)}, "
                               f"expected {pooled_shape(self.shape, self.window)}")
        self.g_out = uniform(self.xp, out.shape, dtype, seed=1)
        del out

    def forward(self):
        return product_pool(self.x, self.window)

    def backward(self):
        return product_pool_backward((self.x, self.window), self.g_out)

    def call(self, direction: str) -> Callable[[], object]:
        return {"forward": self.forward, "backward": self.backward}[direction]

    def bytes(self, direction: str) -> int:
        return pool_bytes(self.shape, self.window, self.x.dtype.itemsize, direction)


def measure_pool(layouts: Sequence[str] = POOL_LAYOUTS, batch: Optional[int] = None,
                 timing: Optional[Dict] = None) -> List[Dict]:
    """One record per (layout, direction): shape, bytes and the timings."""
    cp = require_cupy()
    batch = batch or POOL_BATCH
    timing = dict(OP_TIMING, **(timing or {}))
    rows = []
    for layout in layouts:
        base = {"layout": layout, "shape": list(pool_shape(layout, batch)),
                "window": pool_window(layout), "dtype": "float32"}
        holder: Dict[str, PoolOp] = {}

        def build():
            holder["op"] = PoolOp(layout, batch, cp)
            return {}

        built = guarded(base, build)
        for direction in POOL_DIRECTIONS:
            if "error" in built:
                rows.append(dict(built, direction=direction))
                continue
            op = holder["op"]
            rows.append(guarded(dict(base, direction=direction),
                                lambda: dict(bytes=op.bytes(direction),
                                             **best_times(op.call(direction), cp, "events",
                                                          **timing))))
        holder.clear()
        release_memory()
    return rows


def pool_figures(row: Dict, copy_gbs: float) -> Dict[str, float]:
    gbs = per_second(row["bytes"], row["best_s"])
    pct = percent(gbs, copy_gbs)
    return {"gbs": gbs, "percent_of_copy": pct, "meets_target": pct >= POOL_TARGET_PERCENT}


# ----------------------------------------------------------------------------- models
def same_optimizer(opt, params):
    """A fresh optimizer of ``opt``'s class and hyper-parameters over ``params``."""
    if getattr(opt, "t", 0):
        raise ValueError("opt: already stepped; its moments would be lost")
    return type(opt)(params, lr=opt.lr, betas=opt.betas, eps=opt.eps,
                     weight_decay=opt.weight_decay)


def move_to_device(workload, data_attrs: Sequence[str], params: Callable[[Any], list],
                   device: str = "cuda"):
    """Move a CPU benchmark workload onto ``device`` in place: the model's learned state
    (its own ``_place_state``, as ``fit`` does), the batch arrays named in ``data_attrs``,
    and a fresh optimizer of the same settings over the moved parameters (``params(model)``),
    so that the workload's own ``train_step`` then runs on the device."""
    m = workload.model
    m.device = device
    m._place_state()
    for name in data_attrs:
        setattr(workload, name, m._to_device(getattr(workload, name)))
    workload.opt = same_optimizer(workload.opt, params(m))
    return workload


class DeviceQCNN:
    """``qcnn_workloads.FasttnQCNN`` (the CPU benchmark's q-CNN: data, parameters,
    optimizer settings) on the device. Building it runs the CPU workload's own setup (one
    CPU forward pass for running statistics) before the move."""

    def __init__(self, size: int, batch: int, device: str = "cuda"):
        self.host = move_to_device(W.FasttnQCNN(size, batch), ("chains", "y"),
                                   lambda m: m._params(), device)
        self.model, self.size, self.batch = self.host.model, size, batch
        self.train_flops = W.train_flops(self.model, batch)

    def step(self, domain: str = "linear") -> float:
        """One training step (forward, square loss, backward, AdamW); returns the loss."""
        if domain == "linear":
            self.host.train_step()  # the CPU benchmark's step
        else:
            h = self.host
            _, _, loss, grads, _ = h.model._forward_backward(h.chains, h.y, True, domain)
            h.opt.step(grads)
            h.last_loss = loss
        return float(self.host.last_loss)


class DeviceMera2D:
    """``mera_workloads.Mera2DTrain`` (features, forward, cross-entropy, backward, AdamW)
    on the device."""

    def __init__(self, size: int, batch: int, device: str = "cuda"):
        self.host = move_to_device(M.Mera2DTrain(size, batch), ("X", "y"),
                                   lambda m: m._param_list(), device)
        self.model, self.size, self.batch = self.host.model, size, batch

    def step(self) -> float:
        self.host.train_step()
        return float(self.host.last_loss)


def _train_row(make: Callable[[], Any], step: Callable[[Any], float], timing: Dict) -> Dict:
    cp = require_cupy()
    release_memory()
    t = time.perf_counter()
    wl = make()
    build_s = time.perf_counter() - t
    losses: List[float] = []
    timed = best_times(lambda: losses.append(step(wl)), cp, "wall", **timing)
    row = {"build_s": build_s, "first_loss": losses[0], "last_loss": losses[-1],
           "steps": len(losses), "losses_finite": bool(all(map(math.isfinite, losses))),
           "device_pool_gib": device_pool_gib(), **timed}
    if hasattr(wl, "train_flops"):
        row["train_flops"] = wl.train_flops
    return row


def measure_qcnn(batches: Optional[Sequence[int]] = None, size: Optional[int] = None,
                 timing: Optional[Dict] = None) -> List[Dict]:
    batches, size = batches or QCNN_BATCHES, size or QCNN_SIZE
    timing = dict(MODEL_TIMING, **(timing or {}))
    return [guarded({"size": size, "batch": b, "d": W.D, "dtype": "float32"},
                    lambda b=b: _train_row(lambda: DeviceQCNN(size, b),
                                           lambda wl: wl.step(), timing))
            for b in batches]


def qcnn_figures(row: Dict, sgemm_tflops: float) -> Dict[str, float]:
    best = row["best_s"]
    gflops = per_second(row["train_flops"], best)
    return {"images_per_s": row["batch"] / best, "step_ms": best * 1e3, "gflops": gflops,
            "percent_of_gemm": percent(gflops, sgemm_tflops * 1e3)}


def measure_mera(batches: Optional[Sequence[int]] = None, size: Optional[int] = None,
                 timing: Optional[Dict] = None) -> List[Dict]:
    batches, size = batches or MERA_BATCHES, size or MERA_SIZE
    timing = dict(MODEL_TIMING, **(timing or {}))
    return [guarded({"size": size, "batch": b, "chi": M.CHI, "dtype": "float32"},
                    lambda b=b: _train_row(lambda: DeviceMera2D(size, b),
                                           lambda wl: wl.step(), timing))
            for b in batches]


def mera_figures(row: Dict) -> Dict[str, float]:
    best = row["best_s"]
    return {"images_per_s": row["batch"] / best, "step_ms": best * 1e3,
            "ns_per_pixel": ns_per_pixel(best, row["batch"], row["size"])}


def measure_needle(cases: Sequence[str] = NEEDLE_CASES, size: Optional[int] = None,
                   batch: Optional[int] = None, timing: Optional[Dict] = None) -> List[Dict]:
    """One training step per case at ``size``^2 from the same initial parameters (the first
    step's loss), then a few more for the step time."""
    size, batch = size or NEEDLE_SIZE, batch or NEEDLE_BATCH
    timing = dict(NEEDLE_TIMING, **(timing or {}))
    rows = []
    for case in cases:
        model, _, domain = case.partition("-")
        if model == "qcnn":
            make, step = (lambda: DeviceQCNN(size, batch)), (lambda wl, d=domain: wl.step(d))
        elif model == "mera2d":
            make, step = (lambda: DeviceMera2D(size, batch)), (lambda wl: wl.step())
        else:
            raise ValueError(f"case: expected one of {NEEDLE_CASES}, got {case!r}")
        rows.append(guarded({"case": case, "model": model, "domain": domain or "-",
                             "size": size, "batch": batch},
                            lambda make=make, step=step: _train_row(make, step, timing)))
    return rows


# ------------------------------------------------------------- first call, fresh process
_FIRST_CALL = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
import cupy
from benchmarks import gpu_workloads as G
out = {"import_s": time.perf_counter() - t0}
call = G.first_call_workload(sys.argv[2])
for key in ("first_call_s", "second_call_s"):
    cupy.cuda.Device().synchronize()
    t = time.perf_counter()
    call()
    cupy.cuda.Device().synchronize()
    out[key] = time.perf_counter() - t
print("RESULT " + json.dumps(out))
"""


def first_call_workload(what: str) -> Callable[[], object]:
    """What the fresh-process measurement calls (built, on the device, before timing)."""
    cp = require_cupy()
    if what == "product_pool":  # forward and backward of a small chain (a few MB)
        op = PoolOp("chain", 16, cp)
        return lambda: (op.forward(), op.backward())
    if what == "qcnn_train_step":  # a 128^2 q-CNN step, batch 16: every kernel it uses
        wl = DeviceQCNN(QCNN_SIZE, QCNN_BATCHES[0])
        return wl.step
    raise ValueError(f"what: expected one of {FIRST_CALLS}, got {what!r}")


def first_call_costs(what: str, timeout_s: float = 300) -> Dict:
    """First-call seconds of ``what`` in fresh interpreters: with an empty CuPy kernel cache
    (``cold``: NVRTC compiles every kernel) and again with the cache that run filled
    (``cached``). Numba's CUDA kernels (the optimizer) compile in both: they have no disk
    cache here."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fasttn-cupy-cache-") as cache_dir:
        env = dict(os.environ, CUPY_CACHE_DIR=cache_dir)
        runs = {}
        for label in ("cold", "cached"):
            proc = subprocess.run([sys.executable, "-c", _FIRST_CALL, _BENCH_DIR, what],
                                  env=env, capture_output=True, text=True, timeout=timeout_s)
            lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
            if proc.returncode or not lines:
                raise RuntimeError(f"first call of {what} ({label}) failed:\n"
                                   f"{proc.stderr[-2000:]}")
            runs[label] = json.loads(lines[-1][len("RESULT "):])
    return runs


def measure_first_calls(calls: Sequence[str] = FIRST_CALLS) -> List[Dict]:
    return [guarded({"call": what}, lambda what=what: first_call_costs(what))
            for what in calls]
