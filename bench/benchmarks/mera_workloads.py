"""MERA block workloads shared by ``bench_mera`` and the table script: one level of 2D MERA
blocks over a batch of NeedleMNIST images (cos/sin features, p = 2), forward + backward, in
fasttn and in plain PyTorch (batched einsum), and the per-pixel cost of a whole MERA2D step
at several image sizes."""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np

import fasttn
import fasttn.data
import fasttn.train
from fasttn import ops

_BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHI = 4
BATCH = {128: 16, 512: 2}


def block_macs(p: int, b: int, chi: int, d_out: int) -> int:
    """Multiply-adds of one block's forward as the kernel contracts it."""
    return (p ** 4 * b ** 4 + 4 * p ** 3 * b * chi + chi * b ** 4 + chi ** 2 * b ** 3
            + chi ** 3 * b ** 2 + chi ** 4 * b + chi ** 4 * d_out)


class MeraLevel:
    """One level of blocks on ``batch`` images of ``size``^2: weights and inputs."""

    def __init__(self, size: int, batch: Optional[int] = None, chi: int = CHI):
        batch = batch or BATCH.get(size, 2)
        X, _ = fasttn.data.needle_mnist(size=size, count=batch, split="train", seed=0).arrays(batch)
        self.x = ops.feature_map(X, "cos_sin", 2, False)
        rng = np.random.default_rng(0)
        p, b = 2, chi
        shapes = [(p,) * 4 + (b,) * 4, (4, p, p, p, b, chi), (chi,) * 8, (chi,) * 4 + (chi,)]
        self.weights = [(rng.standard_normal(s) / np.sqrt(np.prod(s[:-1]))).astype(np.float32)
                        for s in shapes]
        self.size, self.batch = size, batch
        self.n_blocks = batch * (size // 4) ** 2
        self.flops = 2 * 3 * self.n_blocks * block_macs(p, b, chi, chi)  # fwd + 2x bwd
        out, saved = ops.mera_block_forward(self.x, *self.weights)
        self.g = np.ones_like(out)

    def step(self) -> None:
        out, saved = ops.mera_block_forward(self.x, *self.weights)
        ops.mera_block_backward(saved, self.g)


class WideMeraLevel:
    """One level of blocks on raw 4x4-patch sites (p = 17 with the constant, b = 2, chi = 4,
    the configuration that learns cluttered NeedleMNIST-64) over ``batch`` 64^2 images:
    ``route`` ``"wide"`` (centre and quadrant sites contracted one at a time,
    ``ops/mera_block/wide.py``) or ``"chunked"`` (``cpu.py``, which forms the centre's
    ``p^4``-entry outer product per block)."""

    def __init__(self, route: str = "wide", batch: int = 32, size: int = 64):
        from fasttn.ops.mera_block import cpu, wide

        self.impl = wide if route == "wide" else cpu
        X, _ = fasttn.data.needle_mnist(size=size, count=batch, split="train", seed=0).arrays(batch)
        k, p, b, chi = 4, 17, 2, 4
        n = X.shape[0]
        patches = X.reshape(n, size // k, k, size // k, k).transpose(0, 1, 3, 2, 4)
        self.x = np.concatenate([np.ones((n, size // k, size // k, 1), np.float32),
                                 patches.reshape(n, size // k, size // k, k * k)], axis=-1)
        rng = np.random.default_rng(0)
        shapes = [(p,) * 4 + (b,) * 4, (4, p, p, p, b, chi), (chi,) * 8, (chi,) * 4 + (chi,)]
        self.weights = [(rng.standard_normal(s) / np.sqrt(np.prod(s[:-1]))).astype(np.float32)
                        for s in shapes]
        self.n_blocks = n * (size // 16) ** 2
        out, _ = self.impl.mera_block_forward(self.x, *self.weights)
        self.g = np.ones_like(out)

    def step(self) -> None:
        out, saved = self.impl.mera_block_forward(self.x, *self.weights)
        self.impl.mera_block_backward(saved, self.g)


def wide_table(with_torch: bool = True) -> Dict:
    """Seconds per forward + backward of a wide-site level: both routes and PyTorch."""
    wide = WideMeraLevel("wide")
    row = {"batch": 32, "wide_s": best_time(wide.step),
           "chunked_s": best_time(WideMeraLevel("chunked").step, runs=2)}
    if with_torch:
        try:
            row["torch_s"] = best_time(TorchMeraLevel(wide).step)
        except ImportError:
            pass
    return row


def _torch_baseline():
    """``(torch, baselines.torch_mera)``, torch on every core (ImportError without torch)."""
    import torch

    sys.path.insert(0, _BENCH_DIR)
    try:
        from baselines import torch_mera
    finally:
        sys.path.remove(_BENCH_DIR)
    torch.set_num_threads(os.cpu_count() or 1)
    return torch, torch_mera


class TorchMeraLevel:
    def __init__(self, ref: MeraLevel):
        torch, baseline = _torch_baseline()
        self.fn = baseline.mera_block_torch
        self.x = torch.from_numpy(np.ascontiguousarray(ref.x)).requires_grad_(True)
        self.weights = [torch.from_numpy(w.copy()).requires_grad_(True) for w in ref.weights]

    def step(self) -> None:
        for t in [self.x] + self.weights:
            t.grad = None
        self.fn(self.x, *self.weights).sum().backward()


class Mera2DTrain:
    """One MERA2D training step (features, forward, cross-entropy, backward, AdamW) on a
    batch of NeedleMNIST images, in fasttn and in PyTorch (same tensors and layout)."""

    def __init__(self, size: int, batch: Optional[int] = None, chi: int = CHI):
        batch = batch or BATCH.get(size, 2)
        X, y = fasttn.data.needle_mnist(size=size, count=batch, split="train", seed=0).arrays(batch)
        self.X, self.y = X, y.astype(np.int64)
        m = fasttn.MERA2D(n_classes=2, chi=chi, patch=1, level_map="none", init="random",
                          window=None, random_state=0)  # the network the baseline mirrors
        m._check_config()
        m._setup(X.shape[1:])
        m._init_params(np.random.default_rng(0))
        self.model = m
        self.opt = fasttn.train.AdamW(m._param_list(), lr=m.lr)
        self.size, self.batch = size, batch

    def train_step(self) -> None:
        _, _, loss, grads = self.model._forward_backward(self.X, self.y)
        self.opt.step(grads)
        self.last_loss = loss


class TorchMera2DTrain:
    def __init__(self, ref: Mera2DTrain):
        torch, baseline = _torch_baseline()
        m = ref.model
        self.torch = torch
        self.net = baseline.TorchMERA2D(m)
        self.x = torch.from_numpy(np.ascontiguousarray(
            ops.feature_map(ref.X, m.feature_map, m._n_features(), m.constant)))
        self.y = torch.from_numpy(ref.y)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=m.lr, weight_decay=0.0)

    def train_step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = self.torch.nn.functional.cross_entropy(self.net(self.x), self.y)
        loss.backward()
        self.opt.step()
        self.last_loss = float(loss.detach())


def best_time(fn: Callable[[], object], runs: int = 3) -> float:
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def mera2d_step_ns_per_pixel(sizes=(64, 256, 1024), batch_pixels: int = 2 * 1024 * 1024,
                             chi: int = CHI) -> Dict[int, float]:
    """Forward + backward of a whole MERA2D (cross-entropy, 2 classes) per pixel."""
    out = {}
    rng = np.random.default_rng(0)
    for side in sizes:
        batch = max(1, batch_pixels // (side * side))
        X = rng.random((batch, side, side)).astype(np.float32)
        y = rng.integers(0, 2, batch)
        m = fasttn.MERA2D(n_classes=2, chi=chi, patch=1, level_map="none", init="random",
                          window=None, random_state=0)  # the network the baseline mirrors
        m._check_config()
        m._setup(X.shape[1:])
        m._init_params(rng)
        t = best_time(lambda: m._forward_backward(X, y), runs=2)
        out[side] = t / (batch * side * side) * 1e9
    return out


def table(sizes: List[int] = (128, 512), with_torch: bool = True) -> List[Dict]:
    rows = []
    for size in sizes:
        f = MeraLevel(size)
        row = {"size": size, "batch": f.batch, "fasttn_s": best_time(f.step)}
        row["fasttn_gflops"] = f.flops / row["fasttn_s"] / 1e9
        if with_torch:
            try:
                t = TorchMeraLevel(f)
            except ImportError:
                t = None
            if t is not None:
                row["torch_s"] = best_time(t.step)
                row["speedup"] = row["torch_s"] / row["fasttn_s"]
        rows.append(row)
    return rows


def train_table(sizes: List[int] = (128, 512), with_torch: bool = True) -> List[Dict]:
    """Training images/s of MERA2D, fasttn and PyTorch, same batch, same process."""
    rows = []
    for size in sizes:
        f = Mera2DTrain(size)
        row = {"size": size, "batch": f.batch, "fasttn_img_s": f.batch / best_time(f.train_step)}
        if with_torch:
            try:
                t = TorchMera2DTrain(f)
            except ImportError:
                t = None
            if t is not None:
                row["torch_img_s"] = f.batch / best_time(t.train_step)
                row["speedup"] = row["fasttn_img_s"] / row["torch_img_s"]
        rows.append(row)
    return rows


if __name__ == "__main__":
    for row in table():
        print(row)
    for row in train_table():
        print(row)
    print({k: round(v) for k, v in mera2d_step_ns_per_pixel().items()}, "ns/pixel")
    print("raw 4x4-patch sites, one level, 64^2 batch 32:", wide_table())
