"""The benchmark workloads run and their figures are computed (timings themselves live in
bench/, never in tests)."""
import importlib.util
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_qcnn_workloads_and_table_figures():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        W = _load("benchmarks.qcnn_workloads", ROOT / "bench" / "benchmarks" / "qcnn_workloads.py")
        run = _load("run_qcnn", ROOT / "bench" / "run_qcnn.py")
    finally:
        sys.path.remove(str(ROOT / "bench"))
    f = W.FasttnQCNN(16, batch=8)
    f.train_step()
    assert np.isfinite(f.last_loss)
    scores = {d: f.infer(d) for d in ("scaled", "linear", "log")}
    for d in ("linear", "log"):
        np.testing.assert_allclose(scores[d], scores["scaled"], rtol=1e-3,
                                   atol=1e-3 * np.abs(scores["scaled"]).max())
    times = W.measure_interleaved({"fasttn_train": f.train_step,
                                   "fasttn_infer": lambda: f.infer("scaled"),
                                   "fasttn_infer_linear": lambda: f.infer("linear"),
                                   "fasttn_infer_log": lambda: f.infer("log")},
                                  min_runs=1, max_runs=1, budget_s=0.0)
    r = {"batch": f.batch, "train_flops": f.train_flops, "times": times}
    fig = run.figures(r, sgemm=100.0)
    for key in ("fasttn_train", "fasttn_infer", "fasttn_infer_linear", "fasttn_infer_log",
                "train_gflops", "train_pct_sgemm"):
        assert np.isfinite(fig[key]) and fig[key] > 0, key


def test_mera_workloads_run():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        W = _load("benchmarks.mera_workloads", ROOT / "bench" / "benchmarks" / "mera_workloads.py")
    finally:
        sys.path.remove(str(ROOT / "bench"))
    f = W.MeraLevel(64, batch=1)
    f.step()
    assert f.n_blocks == 256 and f.flops > 0
    rows = W.table(sizes=[64], with_torch=importlib.util.find_spec("torch") is not None)
    assert rows[0]["fasttn_gflops"] > 0
    if "speedup" in rows[0]:
        import torch

        mera_block_torch = _load("baselines.torch_mera", ROOT / "bench" / "baselines" /
                                 "torch_mera.py").mera_block_torch

        # the baseline computes the same network
        out = mera_block_torch(torch.from_numpy(f.x), *(torch.from_numpy(w) for w in f.weights))
        ref = __import__("fasttn").ops.mera_block(f.x, *f.weights)
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())
    f2 = W.Mera2DTrain(64, batch=2)
    f2.train_step()
    assert np.isfinite(f2.last_loss)
    if importlib.util.find_spec("torch") is not None:
        t2 = W.TorchMera2DTrain(f2)
        # the PyTorch model is the same network: same scores before either trains further
        scores = f2.model._forward_backward(f2.X, None)[0]
        np.testing.assert_allclose(t2.net(t2.x).detach().numpy(), scores, rtol=1e-3,
                                   atol=1e-4 * np.abs(scores).max())
        t2.train_step()
        assert np.isfinite(t2.last_loss)
    ns = W.mera2d_step_ns_per_pixel(sizes=(16, 64), batch_pixels=4096)
    assert set(ns) == {16, 64} and all(v > 0 for v in ns.values())
    # the wide-site workload: both routes compute the same level
    wide, chunked = W.WideMeraLevel("wide", batch=2), W.WideMeraLevel("chunked", batch=2)
    assert wide.x.shape == (2, 16, 16, 17) and wide.n_blocks == 32
    a = wide.impl.mera_block_forward(wide.x, *wide.weights)[0]
    b = chunked.impl.mera_block_forward(chunked.x, *chunked.weights)[0]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


def test_tnn_sweep_workload_and_numpy_baseline_agree():
    """The benchmark's two sweeps run the same algorithm: one sweep from the same weights
    gives the same W (the SVD's sign choices cancel in W) and the same dense layer."""
    import fasttn

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        W = _load("benchmarks.tnn_workloads", ROOT / "bench" / "benchmarks" / "tnn_workloads.py")
    finally:
        sys.path.remove(str(ROOT / "bench"))
    w = W.PalSweep(bond=4, n=120)
    base = w.baseline()
    before = w.model.history_[-1]["loss"]
    w.step()
    base.sweep(w.X, w.y)
    tn, out = w.model.layers_[1], w.model.layers_[2]
    got = fasttn.ops.mpo_to_dense(tn.cores)
    assert np.abs(got - base.dense_weight()).max() < 1e-8 * np.abs(got).max()
    assert np.abs(out.w - base.V).max() < 1e-8 * np.abs(out.w).max()
    assert abs(w.model.history_[-1]["loss"] - before) > 0  # it trains


def test_ttn_numpy_baseline_matches_the_model():
    """The plain NumPy tree of bench/baselines computes TTN2D's loss and gradients."""
    base = _load("numpy_ttn", ROOT / "bench" / "baselines" / "numpy_ttn.py")
    import fasttn

    rng = np.random.default_rng(0)
    X = rng.random((6, 8, 8))
    y = np.array([0, 1, 2, 0, 1, 2])
    model = fasttn.TTN2D(3, chi=[3, 2], dtype="float64", random_state=0)
    model._check_config()
    model._setup((8, 8))
    model._init_params(rng)
    _, loss, grads = model._forward_backward(X, y)
    loss_np, grads_np = base.train_step_grads(model.weights_, X, y)
    assert abs(loss - loss_np) <= 1e-12 * abs(loss_np)
    for a, b in zip(grads, grads_np):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12 * np.abs(b).max())


def test_torch_layers_benchmark_models_agree():
    """The fasttn-layer q-CNN and the plain PyTorch one of bench/ compute the same scores
    from the same parameters (checked in the benchmark's setup)."""
    import pytest

    pytest.importorskip("torch")
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        B = _load("benchmarks.bench_torch", ROOT / "bench" / "benchmarks" / "bench_torch.py")
        B.SIDE, B.D = 64, 4
        b = B.TorchQCNNTrainStep()
        b.setup()
        b.fasttn()
        b.torch()
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_suite_is_discovered_without_the_optional_extras():
    """asv imports every benchmark module to list the suite: none may import PyTorch or CuPy
    at import time, and the benchmarks that need them are skipped (``NotImplementedError``
    from ``setup``)."""
    import subprocess

    code = f"""
import importlib, importlib.abc, pkgutil, sys


class WithoutExtras(importlib.abc.MetaPathFinder):  # as if the extras were not installed
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "cupy"):
            raise ModuleNotFoundError(f"No module named {{name!r}}")
        return None


sys.meta_path.insert(0, WithoutExtras())
sys.path.insert(0, {str(ROOT / "bench")!r})
import benchmarks
for info in pkgutil.iter_modules(benchmarks.__path__):
    importlib.import_module("benchmarks." + info.name)
from benchmarks.bench_torch import TorchQCNNTrainStep
try:
    TorchQCNNTrainStep().setup()
except NotImplementedError as exc:
    print("skipped:", exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "skipped: PyTorch is not installed" in out.stdout


def test_detector_workloads_run():
    """The default MERA2D detector's workloads (and the PyTorch CNNs beside it, when
    installed) give positive finite rates; the peak-memory child runs at a small size."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import benchmarks.detector_workloads as W
    finally:
        sys.path.remove(str(ROOT / "bench"))
    with_torch = importlib.util.find_spec("torch") is not None
    row = W.measure(64, 2, with_torch=with_torch, min_runs=1, max_runs=1, budget_s=0.0)
    assert row["finite"] and row["batch"] == 2
    names = ["fasttn_train", "fasttn_infer"] + (
        [f"{m}_{w}" for m in W.TORCH_MODELS for w in ("train", "infer")] if with_torch else [])
    for key in names + ["train_flops", "forward_flops"]:
        assert np.isfinite(row[key]) and row[key] > 0, key
    fig = W.figures(row, sgemm=100.0)
    assert all(np.isfinite(v) and v > 0 for v in fig.values())
    assert W.Detector(64, 1).model.scan_ > 1  # the detector, not the whole-image network
    peak = W.peak_memory(64, 1)
    assert peak["finite"] and peak["peak_mib"] >= peak["before_step_mib"] > 0
