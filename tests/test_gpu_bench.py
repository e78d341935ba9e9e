"""The GPU benchmark suite (``bench/benchmarks/gpu_workloads.py``, ``bench_gpu.py``,
``bench/run_gpu.py``) on a machine without a GPU: it imports, skips with fasttn's message,
and its byte / FLOP arithmetic, timing loop and tables are right. The measuring code also
runs here against a NumPy stand-in for CuPy (tiny shapes), so everything but the real
device calls is exercised."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import fasttn
from conftest import gpu_skip_reason
from fasttn.train import AdamW

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


@pytest.fixture
def bench(monkeypatch):
    """``(gpu_workloads, bench_gpu, run_gpu)`` imported afresh with bench/ on the path."""
    monkeypatch.syspath_prepend(str(BENCH))
    G = importlib.import_module("benchmarks.gpu_workloads")
    B = importlib.import_module("benchmarks.bench_gpu")
    run = importlib.import_module("run_gpu")
    G.ceilings.cache_clear()
    yield G, B, run
    G.ceilings.cache_clear()


@pytest.fixture
def no_cupy(monkeypatch):
    """CuPy unimportable, as on a machine without it (``import cupy`` raises ImportError)."""
    monkeypatch.setitem(sys.modules, "cupy", None)


# ------------------------------------------------------------------ no CuPy: skip cleanly
def test_modules_import_without_cupy_and_skip(bench, no_cupy, capsys):
    G, B, run = bench
    for name in ("benchmarks.gpu_workloads", "benchmarks.bench_gpu", "run_gpu"):
        importlib.reload(sys.modules[name])  # importing needs no CuPy
    G, B = sys.modules["benchmarks.gpu_workloads"], sys.modules["benchmarks.bench_gpu"]
    run = sys.modules["run_gpu"]
    reason = G.unavailable()
    assert reason.startswith("fasttn: CUDA needs CuPy and an NVIDIA GPU")
    with pytest.raises(NotImplementedError, match="CUDA needs CuPy"):
        G.require()

    # asv: every class's setup raises NotImplementedError (asv's "skipped")
    with pytest.raises(NotImplementedError, match="CUDA needs CuPy"):
        B.GPUCeilings().setup()
    for layout in G.POOL_LAYOUTS:
        for direction in G.POOL_DIRECTIONS:
            with pytest.raises(NotImplementedError, match="CUDA needs CuPy"):
                B.GPUProductPool().setup(layout, direction)
    for cls, params in ((B.GPUQCNNTrain, G.QCNN_BATCHES), (B.GPUMera2DTrain, G.MERA_BATCHES),
                        (B.GPUNeedle1024, G.NEEDLE_CASES), (B.GPUFirstCall, G.FIRST_CALLS)):
        assert [list(params)] == cls.params
        cache = cls.setup_cache()  # measures nothing: only the reason
        assert cache == {"unavailable": reason}
        for p in params:
            with pytest.raises(NotImplementedError, match="CUDA needs CuPy"):
                cls().setup(cache, p)

    # the script: one line, exit status 0 (3 with --require-gpu), the reason in the JSON
    capsys.readouterr()
    assert run.main([]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("run_gpu: no GPU figures measured: fasttn:")
    assert run.main(["--require-gpu"]) == run.NO_GPU_STATUS == 3


@pytest.mark.skipif(gpu_skip_reason() is None, reason="a GPU is present: the script measures")
def test_script_without_gpu_prints_one_line_and_exits_0(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(BENCH / "run_gpu.py"), "--json", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [proc.stdout.strip()]
    assert proc.stdout.startswith("run_gpu: no GPU figures measured: fasttn: CUDA needs CuPy")
    assert "Traceback" not in proc.stderr
    assert json.loads(out.read_text())["unavailable"].startswith("fasttn: CUDA needs CuPy")


# ----------------------------------------------------------------------- the arithmetic
def test_byte_and_flop_arithmetic_by_hand(bench):
    G, _, _ = bench
    # chain (2, 8, 3), pairs: 48 elements in, 24 out, float32
    assert G.pool_bytes((2, 8, 3), 2, 4, "forward") == (48 + 24) * 4 == 288
    assert G.pool_bytes((2, 8, 3), 2, 4, "backward") == (2 * 48 + 24) * 4 == 480
    # grid (2, 4, 4, 3), 2x2: 96 in, 24 out
    assert G.pool_bytes((2, 4, 4, 3), 4, 4, "forward") == 480
    assert G.pool_bytes((2, 4, 4, 3), 4, 8, "backward") == (192 + 24) * 8 == 1728
    assert G.pooled_shape((2, 8, 3), 2) == (2, 4, 3)
    assert G.pooled_shape((2, 4, 6, 3), 4) == (2, 2, 3, 3)
    for shape, window in (((2, 7, 3), 2), ((2, 4, 5, 3), 4), ((2, 4, 4, 3), 2), ((8, 3), 2)):
        with pytest.raises(ValueError):
            G.pool_bytes(shape, window, 4, "forward")
    with pytest.raises(ValueError):
        G.pool_bytes((2, 8, 3), 2, 4, "sideways")
    # the benchmark's shapes: q-CNN level-0 activations at 128^2, 36 channels
    assert G.pool_shape("chain", 256) == (256, 16384, 36) and G.pool_window("chain") == 2
    assert G.pool_shape("grid", 256) == (256, 128, 128, 36) and G.pool_window("grid") == 4
    assert G.pool_shape("chain") == (G.POOL_BATCH, 16384, 36)
    n = 256 * 16384 * 36
    assert G.pool_bytes(G.pool_shape("chain"), 2, 4, "forward") == 4 * (n + n // 2)
    assert 3e8 < 4 * n < 1e9  # hundreds of MB
    assert G.pool_bytes(G.pool_shape("grid"), 4, 4, "backward") == 4 * (2 * n + n // 4)

    assert G.copy_bytes(1 << 30) == 1 << 31
    assert G.gemm_flops(8192) == 2 * 8192 ** 3 == 1_099_511_627_776
    assert G.per_second(3e9, 1e-3) == pytest.approx(3000.0)
    assert G.percent(3000.0, 5000.0) == pytest.approx(60.0)
    assert G.ns_per_pixel(0.5, 2, 512) == pytest.approx(953.67431640625)
    assert G.cuda_version(12040) == "12.4" and G.cuda_version(13000) == "13.0"
    assert G.spec_bandwidth_gbs(2_619_000, 5120) == pytest.approx(3352.32)  # H100 SXM

    c = {"copy_bytes": 1 << 31, "memcpy": {"best_s": 1e-3}, "copy_kernel": {"best_s": 2e-3},
         "gemm_flops": 2 * 8192 ** 3, "gemm": {"best_s": 0.02}}
    f = G.ceiling_figures(c)
    assert f["memcpy_gbs"] == pytest.approx(2147.483648)
    assert f["copy_kernel_gbs"] == pytest.approx(1073.741824)
    assert f["copy_gbs"] == f["memcpy_gbs"]
    assert f["sgemm_tflops"] == pytest.approx(54.9755813888)

    row = {"bytes": 3e9, "best_s": 1e-3}
    assert G.pool_figures(row, 5000.0) == {"gbs": pytest.approx(3000.0),
                                           "percent_of_copy": pytest.approx(60.0),
                                           "meets_target": True}
    assert G.pool_figures(row, 5001.0)["meets_target"] is False

    # q-CNN FLOPs: d = 2 on 4x4 (16 sites, 4 levels of pairs, widths 4, 6, 8, 10, 2 classes;
    # Fourier features, one set of weights per level: the model the benchmark's count is for)
    m = fasttn.QCNN(n_classes=2, d=2, feature_map="fourier", child_weights="shared")
    m._check_config()
    m._setup((4, 4))
    macs = [16 * 2 * 4, 8 * 4 * 6, 4 * 6 * 8, 2 * 8 * 10, 1 * 10 * 2]  # per image
    assert 2 * (2 * macs[0] + 3 * sum(macs[1:])) == 3896
    fig = G.qcnn_figures({"batch": 4, "best_s": 1e-3, "train_flops": G.W.train_flops(m, 4)},
                         sgemm_tflops=1.0)
    assert G.W.train_flops(m, 4) == 4 * 3896
    assert fig["images_per_s"] == pytest.approx(4000.0)
    assert fig["step_ms"] == pytest.approx(1.0)
    assert fig["gflops"] == pytest.approx(0.015584)
    assert fig["percent_of_gemm"] == pytest.approx(0.0015584)
    mf = G.mera_figures({"batch": 2, "size": 512, "best_s": 0.5})
    assert mf["ns_per_pixel"] == pytest.approx(953.67431640625)
    assert mf["images_per_s"] == pytest.approx(4.0)


def test_time_calls_keeps_the_first_call_out(bench):
    G, _, _ = bench
    calls = []
    r = G.best_times(lambda: calls.append(1), np, "events", min_runs=3, max_runs=3,
                     budget_s=0.0, inner=2)
    assert len(calls) == 1 + 3 * 2  # the first call, then 3 samples of 2 calls
    assert len(r["times_s"]) == 3 and r["best_s"] == min(r["times_s"])
    assert r["clock"] == "wall" and r["inner"] == 2 and r["first_call_s"] >= 0
    with pytest.raises(ValueError):
        G.best_times(lambda: None, np, "sundial")


def test_guarded_records_failures_and_goes_on(bench):
    G, _, _ = bench

    def oom():
        raise MemoryError("out of memory allocating 1,234 bytes")

    assert G.guarded({"batch": 2}, lambda: {"best_s": 1.0}) == {"batch": 2, "best_s": 1.0}
    row = G.guarded({"batch": 512}, oom)
    assert row["out_of_memory"] is True and row["error"].startswith("MemoryError: out of")
    row = G.guarded({"batch": 2}, lambda: 1 / 0)
    assert row["out_of_memory"] is False and row["error"].startswith("ZeroDivisionError")


def test_move_to_device_rebuilds_the_optimizer_on_the_moved_parameters(bench):
    G, _, _ = bench
    m = fasttn.QCNN(n_classes=2, d=2, dtype="float32")
    m._check_config()
    m._setup((4, 4))
    m._init_params(np.random.default_rng(0))
    wl = types.SimpleNamespace(model=m, chains=np.zeros((3, 16), np.float32),
                               y=np.array([0, 1, 0]),
                               opt=AdamW(m._params(), lr=0.02, betas=(0.8, 0.9), eps=1e-7,
                                         weight_decay=0.03))
    G.move_to_device(wl, ("chains", "y"), lambda model: model._params(), device="cpu")
    assert wl.opt.params is not m._params()
    assert all(a is b for a, b in zip(wl.opt.params, m._params()))
    assert len(wl.opt.params) == len(m._params()) == 3 * (m.n_levels_ + 1)
    assert (wl.opt.lr, wl.opt.betas, wl.opt.eps, wl.opt.weight_decay) == (0.02, (0.8, 0.9),
                                                                          1e-7, 0.03)
    wl.opt.t = 1
    with pytest.raises(ValueError, match="already stepped"):
        G.same_optimizer(wl.opt, m._params())


# ------------------------------------------------------- the measuring code on a stand-in
class _DevArray(np.ndarray):
    """A NumPy array with CuPy's ``.data.copy_from_device_async``."""

    @property
    def data(self):
        return _Pointer(self)


class _Pointer:
    def __init__(self, a):
        self.a = a

    def copy_from_device_async(self, src, size):
        assert size == src.a.nbytes == self.a.nbytes
        np.copyto(self.a, src.a)


class _Event:
    def record(self, stream=None):
        import time

        self.t = time.perf_counter()

    def synchronize(self):
        pass


def fake_cupy():
    """The parts of CuPy the suite calls, on NumPy (fasttn's ops then take their CPU path)."""
    cp = types.ModuleType("cupy")
    cp.__version__ = "0.0-stand-in"
    cp.asarray = np.asarray
    cp.ones = lambda n, dtype: np.ones(n, dtype).view(_DevArray)
    cp.empty_like = np.empty_like
    cp.matmul = np.matmul

    def elementwise_kernel(in_params, out_params, operation, name):
        assert (in_params, out_params, operation) == ("T x", "T y", "y = x")
        return lambda x, y: np.copyto(y, x)

    cp.ElementwiseKernel = elementwise_kernel

    class RandomState:
        def __init__(self, seed):
            self.rng = np.random.default_rng(seed)

        def random_sample(self, size=None, dtype=float):
            return self.rng.random(size).astype(dtype)

        def uniform(self, low=0.0, high=1.0, size=None, dtype=float):
            return self.rng.uniform(low, high, size).astype(dtype)

    cp.random = types.SimpleNamespace(RandomState=RandomState)
    pool = types.SimpleNamespace(free_all_blocks=lambda: None, total_bytes=lambda: 3 * 2**30)
    cp.get_default_memory_pool = lambda: pool
    cp.get_default_pinned_memory_pool = lambda: pool
    device = types.SimpleNamespace(id=0, compute_capability="90", synchronize=lambda: None)
    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1, getDevice=lambda: 0, runtimeGetVersion=lambda: 12040,
        driverGetVersion=lambda: 12080,
        getDeviceProperties=lambda i: {"name": b"Stand-in H100", "totalGlobalMem": 80 * 2**30,
                                       "multiProcessorCount": 132,
                                       "memoryClockRate": 2_619_000, "memoryBusWidth": 5120})
    cp.cuda = types.SimpleNamespace(
        runtime=runtime, Device=lambda *a: device, Event=_Event,
        get_elapsed_time=lambda a, b: (b.t - a.t) * 1e3, get_local_runtime_version=lambda: 12040)
    return cp


def test_ceilings_pool_and_tables_on_a_stand_in(bench, monkeypatch, tmp_path, capsys):
    G, B, run = bench
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    for name, value in (("COPY_ELEMENTS", 1 << 16), ("GEMM_N", 32), ("POOL_BATCH", 1)):
        monkeypatch.setattr(G, name, value)
    for name in ("OP_TIMING", "CEILING_TIMING"):
        monkeypatch.setattr(G, name, dict(getattr(G, name), min_runs=2, max_runs=2, inner=2))
    assert G.unavailable() is None
    out = tmp_path / "gpu.json"
    capsys.readouterr()
    assert run.main(["--sections", "ceilings", "pool", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["header"]["device"]["name"] == "Stand-in H100"
    assert res["header"]["cuda_runtime"] == "12.4"
    assert res["ceilings"]["copy_bytes"] == 2 * 4 * (1 << 16)
    assert res["ceilings"]["gemm_flops"] == 2 * 32 ** 3
    assert len(res["ceilings"]["gemm"]["times_s"]) == 2
    rows = {(r["layout"], r["direction"]): r for r in res["pool"]}
    assert set(rows) == {(l, d) for l in G.POOL_LAYOUTS for d in G.POOL_DIRECTIONS}
    n = 16384 * 36  # batch 1
    assert rows["chain", "forward"]["bytes"] == 4 * (n + n // 2) == 3_538_944
    assert rows["chain", "backward"]["bytes"] == 4 * (2 * n + n // 2) == 5_898_240
    assert rows["grid", "forward"]["bytes"] == 4 * (n + n // 4)
    assert rows["grid", "backward"]["bytes"] == 4 * (2 * n + n // 4)
    assert not any("error" in r for r in res["pool"])
    assert "device: Stand-in H100 (80.0 GiB, 132 SMs" in printed
    assert "data-sheet bandwidth 3,352 GB/s" in printed
    assert "### Ceilings" in printed and "### Product pooling" in printed
    table = [l for l in printed.splitlines() if l.startswith("| chain") or l.startswith("| grid")]
    assert len(table) == 4 and "| chain | forward | 1x16384x36 | 3.54 |" in printed
    copy = G.ceiling_figures(res["ceilings"])["copy_gbs"]
    for line, r in zip(table, res["pool"]):
        pct = 100 * r["bytes"] / r["best_s"] / 1e9 / copy
        assert f"{pct:.1f}%" in line

    # the same tables from the saved file
    assert run.main(["--table-from", str(out)]) == 0
    again = capsys.readouterr().out
    assert [l for l in again.splitlines() if l.startswith("|")] == \
        [l for l in printed.splitlines() if l.startswith("|")]

    # the asv classes on the stand-in
    c = B.GPUCeilings()
    c.setup()
    assert c.track_copy_gbs() == max(c.track_memcpy_gbs(), c.track_copy_kernel_gbs()) > 0
    assert c.track_sgemm_tflops() > 0
    p = B.GPUProductPool()
    p.setup("grid", "backward")
    p.time_call("grid", "backward")
    assert p.track_percent_of_copy("grid", "backward") == pytest.approx(
        100 * p.track_gbs("grid", "backward") / G.ceilings()["copy_gbs"])
    p.teardown("grid", "backward")


def test_model_tables_and_failures(bench, capsys):
    """Model sections' tables from records (as a GPU run writes them), errors included."""
    G, _, run = bench
    res = {"header": {"fasttn": "x", "date": "2026-01-01T00:00:00+00:00",
                      "device": {"name": "H", "memory_gib": 80.0, "multiprocessors": 132,
                                 "compute_capability": "90"},
                      "cupy": "13", "cuda_runtime": "12.4", "cuda_driver": "12.8",
                      "numpy": "2", "python": "3.11", "env": {}, "host_cpu": "c",
                      "host_cores": 16, "kernel_cache_files_at_start": 0},
           "ceilings": {"copy_bytes": 2e9, "memcpy": {"best_s": 1e-3},
                        "copy_kernel": {"best_s": 1e-3}, "gemm_flops": 5e13,
                        "gemm": {"best_s": 1.0}, "gemm_n": 8192},
           "qcnn": [{"size": 128, "batch": 16, "best_s": 0.01, "train_flops": 2.5e11,
                     "first_call_s": 9.0, "first_loss": 1.5, "last_loss": 1.2,
                     "losses_finite": True, "device_pool_gib": 1.0},
                    {"size": 128, "batch": 512, "error": "OutOfMemoryError: x",
                     "out_of_memory": True}],
           "needle": [{"case": "qcnn-log", "model": "qcnn", "domain": "log", "size": 1024,
                       "batch": 2, "error": "FloatingPointError: grads", "out_of_memory": False}]}
    run.print_results(res)
    out = capsys.readouterr().out
    # 2.5e11 FLOP / 0.01 s = 25,000 GFLOP/s = 50% of 50 TFLOP/s; 16 / 0.01 = 1,600 images/s
    assert "| 128^2 | 16 | 1,600 | 10 | 25,000 | 50.0% | 9 | 1.5 / 1.2 | 1 |" in out
    assert "| 128^2 | 512 | out of memory |" in out
    assert "| qcnn | log | 1024^2 | 2 | error: FloatingPointError: grads |" in out
    assert run.failures(res) == ["needle: FloatingPointError: grads"]  # OOM is no failure
