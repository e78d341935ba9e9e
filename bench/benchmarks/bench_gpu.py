"""GPU benchmarks (CuPy and an NVIDIA GPU; every class is skipped elsewhere): the device's
copy and GEMM ceilings, product pooling against the copy rate, q-CNN and MERA2D training
throughput with ``device="cuda"``, one 1024^2 training step of each model, and the first
call's cost in a fresh interpreter.

Workloads, byte and FLOP conventions and the timing method are in
:mod:`benchmarks.gpu_workloads`; ``bench/run_gpu.py`` prints the same figures as a table.
Model figures are measured once per class in ``setup_cache`` (each batch in turn, in one
process, with the ceilings of that process); without a GPU the cache holds only the reason
and every ``setup`` raises ``NotImplementedError`` (asv's "skipped").
"""
from __future__ import annotations

from . import gpu_workloads as G


def _unit(unit):
    def mark(fn):
        fn.unit = unit
        return fn
    return mark


def _skip_unless_measured(cache, key, match):
    """The record of ``cache[key]`` whose items include ``match``; ``NotImplementedError``
    without a GPU, or where that workload failed (e.g. out of device memory)."""
    if "unavailable" in cache:
        raise NotImplementedError(cache["unavailable"])
    for row in cache[key]:
        if all(row.get(k) == v for k, v in match.items()):
            if "error" in row:
                raise NotImplementedError(f"{match}: {row['error']}")
            return row
    raise NotImplementedError(f"{match}: not measured")


# -------------------------------------------------------------------------- ceilings
class GPUCeilings:
    """Device-to-device copy (1 GiB, read + write counted) and float32 8192^2 GEMM."""

    timeout = 300

    def setup(self):
        G.require()

    @_unit("GB/s")
    def track_copy_gbs(self):
        return G.ceilings()["copy_gbs"]

    @_unit("GB/s")
    def track_memcpy_gbs(self):
        return G.ceilings()["memcpy_gbs"]

    @_unit("GB/s")
    def track_copy_kernel_gbs(self):
        return G.ceilings()["copy_kernel_gbs"]

    @_unit("TFLOP/s")
    def track_sgemm_tflops(self):
        return G.ceilings()["sgemm_tflops"]


# -------------------------------------------------------------------- product pooling
class GPUProductPool:
    """``product_pool`` forward / backward of (256, 16384, 36) pairs or (256, 128, 128, 36)
    2x2 windows, float32 (hundreds of MB). GB/s from the bytes that must move; target: at
    least ``G.POOL_TARGET_PERCENT`` % of the copy rate."""

    params = [list(G.POOL_LAYOUTS), list(G.POOL_DIRECTIONS)]
    param_names = ["layout", "direction"]
    number = 1
    repeat = (1, 10, 10.0)
    warmup_time = 0
    timeout = 300

    def setup(self, layout, direction):
        self.cp = G.require()
        self.op = G.PoolOp(layout, G.POOL_BATCH, self.cp)
        self.fn = self.op.call(direction)
        self.measured = None

    def teardown(self, layout, direction):
        self.op = self.fn = None
        G.release_memory()

    def _measured(self, direction):
        if self.measured is None:
            self.measured = dict(bytes=self.op.bytes(direction),
                                 **G.best_times(self.fn, self.cp, "events", **G.OP_TIMING))
        return self.measured

    def time_call(self, layout, direction):
        self.fn()
        G.synchronize(self.cp)

    @_unit("GB/s")
    def track_gbs(self, layout, direction):
        return G.pool_figures(self._measured(direction), G.ceilings()["copy_gbs"])["gbs"]

    @_unit("%")
    def track_percent_of_copy(self, layout, direction):
        row = self._measured(direction)
        return G.pool_figures(row, G.ceilings()["copy_gbs"])["percent_of_copy"]


# --------------------------------------------------------------------------- models
def _measure_models(_bench=None):
    """q-CNN and MERA2D throughput, each batch in turn in this process, with its ceilings."""
    reason = G.unavailable()
    if reason:
        return {"unavailable": reason}
    return {"ceilings": G.ceilings(), "qcnn": G.measure_qcnn(), "mera2d": G.measure_mera()}


_measure_models.timeout = 1200


class GPUQCNNTrain:
    """q-CNN training step at 128^2 (d = 18, float32, NeedleMNIST), ``device="cuda"``:
    images/s, GEMM GFLOP/s (``qcnn_workloads.train_flops``) and % of the GEMM rate."""

    params = [list(G.QCNN_BATCHES)]
    param_names = ["batch"]
    setup_cache = _measure_models
    timeout = 1200

    def setup(self, cache, batch):
        self.row = _skip_unless_measured(cache, "qcnn", {"batch": batch})
        self.fig = G.qcnn_figures(self.row, cache["ceilings"]["sgemm_tflops"])

    @_unit("images/s")
    def track_images_per_s(self, cache, batch):
        return self.fig["images_per_s"]

    @_unit("GFLOP/s")
    def track_gflops(self, cache, batch):
        return self.fig["gflops"]

    @_unit("%")
    def track_percent_of_gemm(self, cache, batch):
        return self.fig["percent_of_gemm"]

    @_unit("s")
    def track_first_step_s(self, cache, batch):
        return self.row["first_call_s"]


class GPUMera2DTrain:
    """MERA2D training step at 512^2 (chi = 4, float32, NeedleMNIST), ``device="cuda"``."""

    params = [list(G.MERA_BATCHES)]
    param_names = ["batch"]
    setup_cache = _measure_models
    timeout = 1200

    def setup(self, cache, batch):
        self.row = _skip_unless_measured(cache, "mera2d", {"batch": batch})
        self.fig = G.mera_figures(self.row)

    @_unit("images/s")
    def track_images_per_s(self, cache, batch):
        return self.fig["images_per_s"]

    @_unit("ns")
    def track_ns_per_pixel(self, cache, batch):
        return self.fig["ns_per_pixel"]

    @_unit("s")
    def track_first_step_s(self, cache, batch):
        return self.row["first_call_s"]


def _measure_needle(_bench=None):
    reason = G.unavailable()
    if reason:
        return {"unavailable": reason}
    return {"needle": G.measure_needle()}


_measure_needle.timeout = 900


class GPUNeedle1024:
    """One training step on two 1024^2 NeedleMNIST images on the device: the q-CNN in the
    linear and in the log domain, MERA2D. The loss of the first step (initial parameters)
    and the best step time."""

    params = [list(G.NEEDLE_CASES)]
    param_names = ["case"]
    setup_cache = _measure_needle
    timeout = 900

    def setup(self, cache, case):
        self.row = _skip_unless_measured(cache, "needle", {"case": case})

    @_unit("loss")
    def track_first_loss(self, cache, case):
        return self.row["first_loss"]

    @_unit("s")
    def track_step_s(self, cache, case):
        return self.row["best_s"]

    @_unit("s")
    def track_first_step_s(self, cache, case):
        return self.row["first_call_s"]


def _measure_first_calls(_bench=None):
    reason = G.unavailable()
    if reason:
        return {"unavailable": reason}
    return {"first_call": G.measure_first_calls()}


_measure_first_calls.timeout = 900


class GPUFirstCall:
    """First call in a fresh interpreter: empty CuPy kernel cache (``cold``: NVRTC), filled
    cache (``cached``), the second call, and the imports."""

    params = [list(G.FIRST_CALLS)]
    param_names = ["call"]
    setup_cache = _measure_first_calls
    timeout = 900

    def setup(self, cache, call):
        self.row = _skip_unless_measured(cache, "first_call", {"call": call})

    @_unit("s")
    def track_cold_s(self, cache, call):
        return self.row["cold"]["first_call_s"]

    @_unit("s")
    def track_cached_s(self, cache, call):
        return self.row["cached"]["first_call_s"]

    @_unit("s")
    def track_second_call_s(self, cache, call):
        return self.row["cached"]["second_call_s"]

    @_unit("s")
    def track_import_s(self, cache, call):
        return self.row["cached"]["import_s"]
