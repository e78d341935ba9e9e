"""q-CNN benchmarks: training and inference throughput against PyTorch, the fused level op,
product pooling, and the cost of Numba's first call.

Workloads, inputs and FLOP/byte counts are in :mod:`benchmarks.qcnn_workloads`. In short:

* one training step = forward + square loss + backward + AdamW update on one batch
  (16^2: 50 Fashion-MNIST images; 128^2 and 256^2: 16 NeedleMNIST images), d = 18, float32;
* inference = scores of the same batch with running statistics: scaled domain (one
  log-scale per site, what ``predict`` uses), linear domain, and log|x| with a sign;
* training FLOPs = ``2 * (2 * MAC_0 + 3 * sum_{l>=1} MAC_l)`` and forward FLOPs =
  ``2 * sum_l MAC_l`` with ``MAC_l = batch * sites_l * d_l * d_{l+1}`` (the last level is the
  dense classifier): forward, weight-gradient and input-gradient GEMMs, no input gradient for
  the first level.

``time_*`` / ``peakmem_*`` let asv time one call; the ``track_*`` figures (images/s, speed-up
over PyTorch, GFLOP/s, % of the sgemm rate, GB/s) come from best-of-N timings taken in one
process, fasttn and PyTorch in turns, with the machine's ceilings measured in that same process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

import fasttn  # noqa: F401  (the suite runs against the installed package)

from . import qcnn_workloads as W
from .ceilings import copy_gbs, measure_gemm_gflops, sgemm_gflops


def _unit(unit):
    def mark(fn):
        fn.unit = unit
        return fn
    return mark


class _Timed:
    """Compilation and first-touch allocation happen in ``setup``; asv then times single calls."""

    number = 1
    repeat = (1, 5, 10.0)
    rounds = 1
    warmup_time = 0
    timeout = 300


# --------------------------------------------------------------- model: wall time, memory
class QCNNTrainStep(_Timed):
    """One training step (forward, loss, backward, AdamW) on one batch."""

    params = [list(W.SIZES), ["fasttn", "torch"]]
    param_names = ["size", "impl"]

    def setup(self, size, impl):
        f = W.FasttnQCNN(size)
        self.step = f.train_step if impl == "fasttn" else W.TorchQCNN(f).train_step
        self.step()

    def time_train_step(self, size, impl):
        self.step()

    def peakmem_train_step(self, size, impl):
        self.step()


class QCNNInference(_Timed):
    """Scores of one batch with running statistics (fasttn: scaled domain as ``predict``,
    linear, or log|x| and sign)."""

    params = [list(W.SIZES), ["fasttn-scaled", "fasttn-linear", "fasttn-log", "torch"]]
    param_names = ["size", "impl"]

    def setup(self, size, impl):
        f = W.FasttnQCNN(size)
        if impl == "torch":
            self.run = W.TorchQCNN(f).infer
        else:
            domain = impl.split("-")[1]
            self.run = lambda: f.infer(domain)
        self.run()

    def time_infer_batch(self, size, impl):
        self.run()

    def peakmem_infer_batch(self, size, impl):
        self.run()


# --------------------------------------------------------- model: derived figures
def _measure_throughput(_bench=None):
    """Shared by the two classes below (asv keys a setup_cache by its source line): fasttn
    and PyTorch measured once, in turns, each size in a fresh interpreter, with the sgemm
    rate measured by this process before and after."""
    before = sgemm_gflops()
    results = W.measure_qcnn_isolated(W.SIZES, with_torch=True)
    # the better of a GEMM measurement before and after: one that met another process would
    # flatter every "% of sgemm"
    sgemm = max(before, measure_gemm_gflops(np.float32))
    for r in results.values():
        r["best"] = {name: min(t) for name, t in r["times"].items()}
    return {"sgemm_gflops": sgemm, "sizes": results}


_measure_throughput.timeout = 900


def _images_per_s(cache, size, name):
    r = cache["sizes"][size]
    return r["batch"] / r["best"][name]


class QCNNThroughput:
    """fasttn images/s, GFLOP/s and % of sgemm (best of N in one process)."""

    params = [list(W.SIZES)]
    param_names = ["size"]
    setup_cache = _measure_throughput
    timeout = 900

    @_unit("images/s")
    def track_train_images_per_s(self, cache, size):
        return _images_per_s(cache, size, "fasttn_train")

    @_unit("images/s")
    def track_infer_images_per_s(self, cache, size):
        return _images_per_s(cache, size, "fasttn_infer")

    @_unit("images/s")
    def track_infer_log_images_per_s(self, cache, size):
        return _images_per_s(cache, size, "fasttn_infer_log")

    @_unit("images/s")
    def track_infer_linear_images_per_s(self, cache, size):
        return _images_per_s(cache, size, "fasttn_infer_linear")

    @_unit("GFLOP/s")
    def track_train_gflops(self, cache, size):
        r = cache["sizes"][size]
        return r["train_flops"] / r["best"]["fasttn_train"] / 1e9

    @_unit("%")
    def track_train_percent_of_sgemm(self, cache, size):
        return 100 * self.track_train_gflops(cache, size) / cache["sgemm_gflops"]

    @_unit("GFLOP/s")
    def track_infer_linear_gflops(self, cache, size):
        r = cache["sizes"][size]
        return r["forward_flops"] / r["best"]["fasttn_infer_linear"] / 1e9

    @_unit("GFLOP/s")
    def track_sgemm_gflops(self, cache, size):
        return cache["sgemm_gflops"]


class QCNNVersusTorch:
    """PyTorch images/s and fasttn's speed-up over it (skipped without PyTorch)."""

    params = [list(W.SIZES)]
    param_names = ["size"]
    setup_cache = _measure_throughput
    timeout = 900

    def setup(self, cache, size):
        if "torch_train" not in cache["sizes"][size]["best"]:
            raise NotImplementedError("PyTorch is not installed")

    @_unit("images/s")
    def track_torch_train_images_per_s(self, cache, size):
        return _images_per_s(cache, size, "torch_train")

    @_unit("images/s")
    def track_torch_infer_images_per_s(self, cache, size):
        return _images_per_s(cache, size, "torch_infer")

    @_unit("x")
    def track_train_speedup(self, cache, size):
        best = cache["sizes"][size]["best"]
        return best["torch_train"] / best["fasttn_train"]

    @_unit("x")
    def track_infer_speedup(self, cache, size):
        best = cache["sizes"][size]["best"]
        return best["torch_infer"] / best["fasttn_infer"]

    @_unit("x")
    def track_infer_linear_speedup(self, cache, size):
        best = cache["sizes"][size]["best"]
        return best["torch_infer"] / best["fasttn_infer_linear"]


# -------------------------------------------------------------------------- ops
class QCNNLevel(_Timed):
    """Fused level (batch norm -> 1x1 conv -> pair product), float32, 128^2 batch of 16.

    FLOPs: forward ``2 n d_in d_out``, backward the same for the weight gradient and again for
    the input gradient where it is needed (``n = batch * sites``). Bytes: forward reads x and
    writes the pre-pooling activations (saved) and the output; backward reads x, the saved
    activations and ``g_out`` and writes ``g_x``. Compare the GB/s with ``track_copy_gbs``.
    """

    params = [list(W.LEVEL_SHAPES)]
    param_names = ["shape"]

    def setup(self, shape):
        self.op = W.LevelOp(shape)

    def time_forward(self, shape):
        self.op.forward()

    def time_backward(self, shape):
        self.op.backward()

    @_unit("GFLOP/s")
    def track_forward_gflops(self, shape):
        return self.op.forward_flops / W.best_of(self.op.forward) / 1e9

    @_unit("GB/s")
    def track_forward_gbs(self, shape):
        return self.op.forward_bytes / W.best_of(self.op.forward) / 1e9

    @_unit("GFLOP/s")
    def track_backward_gflops(self, shape):
        return self.op.backward_flops / W.best_of(self.op.backward) / 1e9

    @_unit("GB/s")
    def track_backward_gbs(self, shape):
        return self.op.backward_bytes / W.best_of(self.op.backward) / 1e9

    @_unit("GB/s")
    def track_copy_gbs(self, shape):
        return copy_gbs()


class ProductPool(_Timed):
    """``product_pool`` of level-0 activations of a 128^2 batch of 16 (36 channels, float32):
    pairs on a chain or 2x2 windows on a grid. Bytes: input read + output written."""

    params = [list(W.POOL_SHAPES)]
    param_names = ["layout"]

    def setup(self, layout):
        self.op = W.PoolOp(layout)

    def time_product_pool(self, layout):
        self.op.run()

    @_unit("GB/s")
    def track_gbs(self, layout):
        return self.op.bytes / W.best_of(self.op.run) / 1e9

    @_unit("%")
    def track_percent_of_copy(self, layout):
        return 100 * self.track_gbs(layout) / copy_gbs()


# --------------------------------------------------------------- first-call cost
_FIRST_CALL = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import fasttn
from fasttn.train import AdamW
out = {"import_s": time.perf_counter() - t0}
rng = np.random.default_rng(0)
if sys.argv[1] == "qcnn_level_forward":
    x = rng.uniform(-1, 1, (4, 64, 18)).astype(np.float32)
    w = rng.uniform(-0.3, 0.3, (36, 18)).astype(np.float32)
    g, b = np.ones(18, np.float32), np.zeros(18, np.float32)
    call = lambda: fasttn.ops.qcnn_level_forward(x, w, g, b, window=2)
else:
    X = rng.random((8, 16, 16), dtype=np.float32)
    y = rng.integers(0, 10, 8)
    m = fasttn.QCNN.paper(n_classes=10, beta_init=1.0)
    m._check_config(); m._setup((16, 16)); m._init_params(rng)
    chains, opt = m._sites(X), AdamW(m._params())
    def call():
        opt.step(m._forward_backward(chains, y, True, "linear")[3])
        m._forward_backward(chains, None, False, "scaled")
        m._forward_backward(chains, None, False, "log")
for key in ("first_call_s", "second_call_s"):
    t = time.perf_counter(); call(); out[key] = time.perf_counter() - t
print(json.dumps(out))
"""

FIRST_CALLS = ["qcnn_level_forward", "qcnn_train_step_16"]


def first_call_costs(what: str) -> dict:
    """First-call seconds of ``what`` in fresh interpreters: with an empty Numba cache
    (``cold``: compilation) and again with the cache that run filled (``cached``)."""
    with tempfile.TemporaryDirectory(prefix="fasttn-numba-") as cache_dir:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
        env.pop("FASTTN_DISABLE_JIT", None)
        runs = {}
        for label in ("cold", "cached"):
            proc = subprocess.run([sys.executable, "-c", _FIRST_CALL, what], env=env,
                                  capture_output=True, text=True, check=True)
            runs[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    return runs


def _measure_first_calls(_bench=None):
    return {what: first_call_costs(what) for what in FIRST_CALLS}


_measure_first_calls.timeout = 600


class NumbaFirstCall:
    """What the first call costs: Numba compilation (empty cache), loading from the on-disk
    cache, and the steady-state call for scale. ``qcnn_level_forward`` at a tiny shape;
    ``qcnn_train_step_16`` = one training step plus a scaled- and a log-domain inference of a
    16^2 q-CNN (every kernel the model uses)."""

    params = [FIRST_CALLS]
    param_names = ["call"]
    setup_cache = _measure_first_calls
    timeout = 600

    @_unit("s")
    def track_first_call_cold_s(self, cache, call):
        return cache[call]["cold"]["first_call_s"]

    @_unit("s")
    def track_first_call_cached_s(self, cache, call):
        return cache[call]["cached"]["first_call_s"]

    @_unit("s")
    def track_second_call_s(self, cache, call):
        return cache[call]["cached"]["second_call_s"]

    @_unit("s")
    def track_import_s(self, cache, call):
        return cache[call]["cached"]["import_s"]
