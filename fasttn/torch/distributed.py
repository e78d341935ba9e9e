"""Data-parallel training on ``torch.distributed`` (DistributedDataParallel; gloo on CPU,
NCCL on GPUs), launched with ``torchrun``.

Every process draws the same shuffled order and takes its share of each global batch; the
loss is scaled so that DDP's gradient average is the gradient of the mean over the global
batch. With batch statistics synchronised (``QCNNLevel(sync_stats=True)``), ``P`` processes
on a global batch of ``B`` give the parameters of one process on ``B``, to float rounding.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = ["init_from_env", "fit_data_parallel", "rank_and_world"]


def init_from_env(backend: Optional[str] = None) -> None:
    """Join the process group that ``torchrun`` describes (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``); gloo on CPU, NCCL when CUDA is present."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
               if k not in os.environ]
    if missing:
        raise ValueError(f"--distributed: expected to run under torchrun (environment "
                         f"{', '.join(missing)} not set); launch with e.g. `torchrun "
                         f"--standalone --nproc_per_node 2 -m fasttn.cli train ...`")
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))


def rank_and_world() -> tuple:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def fit_data_parallel(model: nn.Module, X: np.ndarray, y: np.ndarray, *, epochs: int = 1,
                      batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                      max_steps: Optional[int] = None, verbose: bool = True
                      ) -> List[Dict[str, float]]:
    """Train ``model`` with Adam and softmax cross-entropy, data-parallel when a process
    group is initialised.

    Parameters
    ----------
    model : nn.Module
        Maps a batch of images to class scores; the same initial parameters on every
        process (DDP broadcasts rank 0's).
    X, y : arrays
        The whole training set, on every process.
    epochs, batch_size : int
        ``batch_size`` is the global batch, split across the processes.
    lr : float
    seed : int
        The shuffling seed (the same on every process).
    max_steps : int, optional
        Stop after this many optimiser steps.

    Returns
    -------
    history : one dict per epoch (loss, accuracy, seconds, images_per_s)
    """
    rank, world = rank_and_world()
    wrapped = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    dtype = next(model.parameters()).dtype
    Xt = torch.from_numpy(np.ascontiguousarray(X)).to(dtype)
    yt = torch.from_numpy(np.asarray(y, np.int64))
    history, steps = [], 0
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(len(y))
        t0 = time.perf_counter()
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, images
        for start in range(0, len(y), batch_size):
            idx = order[start:start + batch_size]
            mine = torch.from_numpy(np.array_split(idx, world)[rank])
            scores = wrapped(Xt[mine])
            # DDP averages over processes: this makes it the mean over the global batch
            loss = nn.functional.cross_entropy(scores, yt[mine], reduction="sum") * (
                world / len(idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                totals += torch.tensor([float(loss) * len(idx) / world,
                                        float((scores.argmax(1) == yt[mine]).sum()),
                                        float(len(mine))], dtype=torch.float64)
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
        if world > 1:
            dist.all_reduce(totals)
        seconds = time.perf_counter() - t0
        rec = {"epoch": epoch + 1, "loss": float(totals[0] / totals[2]),
               "accuracy": float(totals[1] / totals[2]), "seconds": seconds,
               "images_per_s": float(totals[2]) / seconds}
        history.append(rec)
        if verbose and rank == 0:
            print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in rec.items()), file=sys.stdout, flush=True)
        if max_steps is not None and steps >= max_steps:
            break
    return history


@torch.no_grad()
def evaluate(model: nn.Module, X: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
    """Accuracy of ``model`` (eval mode) on ``(X, y)``."""
    model.eval()
    dtype = next(model.parameters()).dtype
    correct = 0
    for i in range(0, len(y), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(X[i:i + batch_size])).to(dtype)
        correct += int((model(xb).argmax(1).numpy() == y[i:i + batch_size]).sum())
    model.train()
    return correct / len(y)
