"""Workloads of the default ``MERA2D`` detector (``window="auto"``) on large NeedleMNIST
canvases, beside the same-size PyTorch CNNs of ``needle_accuracy.py``, in the same process.

On canvases above 32x32 the default ``fasttn.MERA2D(n_classes=2)`` reads 2x2 patch sites,
contracts one level of exact 4x4 MERA blocks tiling the canvas, then evaluates the top 4x4
block at every position of that level's grid (stride 8 px), giving one class score per
32x32 region, pooled by log-mean-exp. The baselines are ``baselines.torch_cnn.GlobalMaxCNN``
(three convolutions, global max pooling) and ``fasttn.torch.CNNTN(2, bond_dim=4)``.

* ``train`` of fasttn: one step as ``MERA2D.fit`` takes it: ``_forward_backward(X, y)``
  (sites, levels, scan, pooling, cross-entropy, backward), the tensor norms, ``AdamW.step``
  and the norm retraction. ``train`` of PyTorch: forward, cross-entropy, backward, Adam.
* ``infer``: fasttn ``_forward_backward(X, None)`` (the scores, no tapes kept for later);
  PyTorch ``eval()`` forward under ``torch.no_grad()``.
* FLOPs: multiply-adds of the exact blocks as the kernel contracts them
  (``mera_workloads.block_macs``) times the blocks of each level (the scanning top block at
  every position), x 2; training = 3 x forward (forward, input and weight gradients), as
  ``MeraLevel`` counts. Site norms, the patch sites, the scan copies, pooling and the
  optimizer are not counted.

``python -m benchmarks.detector_workloads`` (from ``bench/``) prints the markdown table.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Callable, Dict, List, Optional

import numpy as np

import fasttn
import fasttn.data
from fasttn.train import AdamW

from .ceilings import sgemm_gflops
from .mera_workloads import block_macs
from .qcnn_workloads import measure_interleaved

_BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = (128, 256, 512)
#: batch per canvas side: 256 Ki pixels per batch (128^2 x 16 = 256^2 x 4 = 512^2 x 1)
BATCH = {128: 16, 256: 4, 512: 1}
TORCH_MODELS = ("cnn", "cnntn")


def canvases(size: int, batch: int):
    """``(X float32 (batch, size, size), y int64)``: NeedleMNIST training canvases."""
    X, y = fasttn.data.needle_mnist(size=size, count=batch, split="train", seed=0).arrays(batch)
    return np.ascontiguousarray(X, np.float32), np.asarray(y, np.int64)


def detector_flops(model) -> Dict[str, float]:
    """``{"forward", "train"}`` FLOPs per image of a set-up MERA2D (block contractions only,
    see the module docstring)."""
    macs = 0
    for level in range(model.n_levels_):
        p, b, chi, d_out = model._dims(level)
        if chi == 0:
            raise ValueError("detector_flops: end blocks (2x2 top) are not counted")
        macs += model.n_blocks_[level] * block_macs(p, b, chi, d_out)
    return {"forward": 2.0 * macs, "train": 6.0 * macs}


class Detector:
    """The default ``MERA2D(n_classes=2)`` set up on ``batch`` NeedleMNIST ``size``^2
    canvases, with the AdamW optimizer of ``fit``."""

    def __init__(self, size: int, batch: Optional[int] = None, seed: int = 0):
        self.size, self.batch = size, batch or BATCH.get(size, 1)
        self.X, self.y = canvases(size, self.batch)
        m = fasttn.MERA2D(n_classes=2, random_state=seed)  # window="auto": the detector
        m._check_config()
        m._setup(self.X.shape[1:])
        m._init_params(np.random.default_rng(seed))
        self.model = m
        self.opt = AdamW(m._param_list(), lr=m.lr, weight_decay=m.weight_decay)
        self.flops = detector_flops(m)
        self.last_loss = float("nan")

    def train_step(self) -> None:
        m = self.model
        _, _, loss, grads = m._forward_backward(self.X, self.y)
        norms = m._norms()
        self.opt.step(grads)
        m._retract(norms)
        self.last_loss = float(loss)

    def infer(self) -> np.ndarray:
        return self.model._forward_backward(self.X, None)[0]


def _torch(threads: Optional[int] = None):
    """``(torch, GlobalMaxCNN, CNNTN)`` with torch on ``threads`` threads (default every
    core, the convention of the other baselines); ImportError without torch."""
    import torch

    if _BENCH_DIR not in sys.path:  # asv makes only the benchmarks package importable
        sys.path.insert(0, _BENCH_DIR)
    from baselines.torch_cnn import GlobalMaxCNN
    from fasttn.torch import CNNTN

    torch.set_num_threads(threads or os.cpu_count() or 1)
    return torch, GlobalMaxCNN, CNNTN


class TorchDetector:
    """``GlobalMaxCNN(2)`` (``name="cnn"``) or ``CNNTN(2, bond_dim=4)`` (``"cnntn"``) on the
    same canvases, with Adam (its step size does not change the time of a step)."""

    def __init__(self, name: str, size: int, batch: Optional[int] = None, seed: int = 0,
                 threads: Optional[int] = None):
        torch, GlobalMaxCNN, CNNTN = _torch(threads)
        self.torch, self.name = torch, name
        self.size, self.batch = size, batch or BATCH.get(size, 1)
        X, y = canvases(size, self.batch)
        self.X, self.y = torch.from_numpy(X), torch.from_numpy(y)
        torch.manual_seed(seed)
        self.net = GlobalMaxCNN(2) if name == "cnn" else CNNTN(2, bond_dim=4)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        self.last_loss = float("nan")

    def train_step(self) -> None:
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        loss = self.torch.nn.functional.cross_entropy(self.net(self.X), self.y)
        loss.backward()
        self.opt.step()
        self.last_loss = float(loss.detach())

    def infer(self):
        self.net.eval()
        with self.torch.no_grad():
            return self.net(self.X)


def measure(size: int, batch: Optional[int] = None, with_torch: bool = True,
            torch_threads: Optional[int] = None, **interleave) -> Dict:
    """Images/s of training and inference, fasttn's detector and (with PyTorch) both
    baselines, timed in turns (``qcnn_workloads.measure_interleaved``; best time of each).

    Returns ``{"size", "batch", "fasttn_train", "fasttn_infer", ["cnn_train", "cnn_infer",
    "cnntn_train", "cnntn_infer"], "train_flops", "forward_flops", "finite"}``: rates in
    images/s, FLOPs per image; ``finite``: every training loss seen was finite.
    ``torch_threads``: PyTorch's intra-op threads (default every core).
    """
    f = Detector(size, batch)
    models = {"fasttn": f}
    if with_torch:
        try:
            for name in TORCH_MODELS:
                models[name] = TorchDetector(name, size, f.batch, threads=torch_threads)
        except ImportError:
            pass
    fns: Dict[str, Callable[[], object]] = {}
    for name, w in models.items():
        fns[name + "_train"] = w.train_step
        fns[name + "_infer"] = w.infer
    times = measure_interleaved(fns, **interleave)
    row = {"size": size, "batch": f.batch, "train_flops": f.flops["train"],
           "forward_flops": f.flops["forward"],
           "finite": all(np.isfinite(w.last_loss) for w in models.values())}
    for name, ts in times.items():
        row[name] = f.batch / min(ts)
    return row


def figures(row: Dict, sgemm: float) -> Dict:
    """GFLOP/s of the detector's training and inference and their share of ``sgemm``."""
    out = {"train_gflops": row["fasttn_train"] * row["train_flops"] / 1e9,
           "infer_gflops": row["fasttn_infer"] * row["forward_flops"] / 1e9}
    out["train_pct_sgemm"] = 100 * out["train_gflops"] / sgemm
    out["infer_pct_sgemm"] = 100 * out["infer_gflops"] / sgemm
    return out


_PEAK_CHILD = r"""
import json, sys
import numpy as np
sys.path.insert(0, {bench!r})
from benchmarks.detector_workloads import Detector

def hwm_mib():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")

f = Detector({size}, {batch})
before = hwm_mib()
m = f.model
_, _, loss, grads = m._forward_backward(f.X, f.y)
finite = bool(np.isfinite(loss)) and all(bool(np.isfinite(g).all()) for g in grads)
norms = m._norms()
f.opt.step(grads)
m._retract(norms)
finite = finite and all(bool(np.isfinite(t).all()) for t in m._param_list())
print(json.dumps({{"size": {size}, "batch": {batch}, "peak_mib": hwm_mib(),
                  "before_step_mib": before, "finite": finite}}))
"""


def peak_memory(size: int = 1024, batch: int = 16, timeout: float = 900.0) -> Dict:
    """One training step of the default MERA2D on ``batch`` ``size``^2 canvases in a fresh
    interpreter: ``{"size", "batch", "peak_mib", "before_step_mib", "finite"}``, where
    ``peak_mib`` is the child's VmHWM (peak resident set, interpreter and imports included)
    after the step, ``before_step_mib`` its VmHWM with the model and canvases built, and
    ``finite`` whether the loss, the gradients and the updated tensors were all finite."""
    code = _PEAK_CHILD.format(bench=_BENCH_DIR, size=int(size), batch=int(batch))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=timeout, cwd=_BENCH_DIR)
    if out.returncode != 0:
        raise RuntimeError(f"peak_memory child failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_memory_1024(batch: int = 16) -> Dict:
    """:func:`peak_memory` at 1024x1024 (125 x 125 scanned regions per canvas)."""
    return peak_memory(1024, batch)


def table(sizes=SIZES, with_torch: bool = True, peak: bool = True) -> str:
    """The markdown table of :func:`measure` at each size (and the 1024^2 peak memory)."""
    sgemm = sgemm_gflops()
    lines = ["| size (batch) | fasttn train img/s | GlobalMaxCNN train | CNNTN train "
             "| fasttn infer img/s | GlobalMaxCNN infer | CNNTN infer "
             "| fasttn train GFLOP/s (% of sgemm) | infer GFLOP/s (% of sgemm) "
             "| MFLOP/image fwd |",
             "|---" * 10 + "|"]

    def cell(row, key):
        if key not in row:
            return "-"
        ratio = row["fasttn" + key[key.index("_"):]] / row[key]
        return f"{row[key]:.3g} (fasttn {ratio:.2f}x)"

    for size in sizes:
        row = measure(size, with_torch=with_torch)
        fig = figures(row, sgemm)
        lines.append(
            f"| {size}^2 ({row['batch']}) | {row['fasttn_train']:.3g} "
            f"| {cell(row, 'cnn_train')} | {cell(row, 'cnntn_train')} "
            f"| {row['fasttn_infer']:.3g} | {cell(row, 'cnn_infer')} "
            f"| {cell(row, 'cnntn_infer')} "
            f"| {fig['train_gflops']:.3g} ({fig['train_pct_sgemm']:.1f}%) "
            f"| {fig['infer_gflops']:.3g} ({fig['infer_pct_sgemm']:.1f}%) "
            f"| {row['forward_flops'] / 1e6:.1f} |"
            + ("" if row["finite"] else " (non-finite loss)"))
    lines.append(f"\nsgemm in this process: {sgemm:.0f} GFLOP/s; {os.cpu_count()} cores.")
    if peak:
        p = peak_memory_1024()
        lines.append(f"1024^2, batch {p['batch']}, one training step in a fresh interpreter: "
                     f"VmHWM {p['peak_mib']:.0f} MiB (model and canvases built: "
                     f"{p['before_step_mib']:.0f} MiB); loss and gradients finite: "
                     f"{p['finite']}.")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
