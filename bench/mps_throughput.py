#!/usr/bin/env python3
"""MPS classifier throughput in one run: fasttn against tensorkrowch's ``MPSLayer`` and a
plain PyTorch MPS (``baselines/torch_mps.py``).

Every model gets the same batches: ``side x side`` images of uniform random pixels (seed
0; throughput does not depend on the pixel values), the cos/sin feature map (``d = 2``), 10
classes, batch 100, cross-entropy and Adam (lr 1e-4). Per size and bond dimension:

* ``train``: images/s of a training step (forward, backward, Adam update), the median
  of ``--steps`` steps after the first;
* ``infer``: images/s of a forward pass without gradients (median of ``--steps``);
* ``first``: seconds of the first training step in this process (Numba compilation or
  cache loading, tensorkrowch's tracing, torch's first allocations).

Models: ``fasttn`` (the estimator's own path: ``fasttn.MPS``'s op forward and backward with
its Adam, as ``MPS.fit`` runs it), ``fasttn-torch`` (``fasttn.torch.MPSLayer`` with
``torch.optim.Adam``), ``tensorkrowch`` (``tk.models.MPSLayer``, ``init_method="randn_eye"``,
``renormalize=True`` so that long chains do not underflow, traced once before timing as its
documentation asks; skipped when tensorkrowch is not installed: ``pip install
'fasttn[bench]'``), ``torch`` (the plain PyTorch MPS). Ratios are taken within the run.

    python bench/mps_throughput.py --sizes 28 64 128 --bonds 10 20 --json mps_throughput.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODELS = ("fasttn", "fasttn-torch", "tensorkrowch", "torch")
N_CLASSES = 10


def _features(x):
    import torch

    t = x * (torch.pi / 2)
    return torch.stack([torch.cos(t), torch.sin(t)], dim=-1).contiguous()


def _fasttn_runner(n_sites, bond, seed):
    """One training step and one inference pass of fasttn.MPS's own path."""
    from fasttn import ops
    from fasttn.train import AdamW
    from fasttn.train.losses import cross_entropy_loss

    rng = np.random.default_rng(seed)
    eye = np.eye(bond, dtype=np.float32)
    cores = (eye[None, :, None, :] + 0.05 * rng.standard_normal(
        (n_sites, bond, 2, bond))).astype(np.float32)
    head = (eye[:, None, :] + 0.05 * rng.standard_normal((bond, N_CLASSES, bond))
            ).astype(np.float32)
    opt = AdamW([cores, head], lr=1e-4, weight_decay=0.0)
    center = n_sites // 2

    def train(x, y):
        phi = ops.feature_map(x, "cos_sin", 2).reshape(x.shape[0], n_sites, 2)
        out, _, saved = ops.mps_contract_forward(phi, cores, head, center)
        _, g = cross_entropy_loss(out, y)
        _, g_cores, g_head = ops.mps_contract_backward(saved, g, need_g_phi=False)
        opt.step([g_cores, g_head])

    def infer(x):
        phi = ops.feature_map(x, "cos_sin", 2).reshape(x.shape[0], n_sites, 2)
        return ops.mps_contract(phi, cores, head, center)[0]

    return train, infer


def _torch_runner(model, forward):
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train(x, y):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(forward(_features(x)), y)
        loss.backward()
        opt.step()

    def infer(x):
        with torch.no_grad():
            return forward(_features(x))

    return train, infer


def make_runner(name, n_sites, bond, seed):
    if name == "fasttn":
        return _fasttn_runner(n_sites, bond, seed)
    import torch

    torch.manual_seed(seed)
    if name == "fasttn-torch":
        from fasttn.torch import MPSLayer

        model = MPSLayer(n_sites, N_CLASSES, bond_dim=bond, d=2, dtype=torch.float32)
        return _torch_runner(model, model)
    if name == "torch":
        from baselines.torch_mps import TorchMPS

        model = TorchMPS(n_sites, N_CLASSES, bond_dim=bond)
        return _torch_runner(model, model)
    if name == "tensorkrowch":
        import tensorkrowch as tk

        model = tk.models.MPSLayer(n_features=n_sites + 1, in_dim=2, out_dim=N_CLASSES,
                                   bond_dim=bond, init_method="randn_eye", std=1e-9)
        kw = dict(inline_input=False, inline_mats=False, renormalize=True)
        model.trace(torch.zeros(1, n_sites, 2), **kw)
        return _torch_runner(model, lambda phi: model(phi, **kw))
    raise ValueError(f"model: expected one of {MODELS}, got {name!r}")


def available(name):
    if name == "tensorkrowch":
        try:
            import tensorkrowch  # noqa: F401
        except ImportError:
            return False
    if name != "fasttn":
        try:
            import torch  # noqa: F401
        except ImportError:
            return False
    return True


def measure(name, side, bond, batch, steps, seed=0):
    n_sites = side * side
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(batch, n_sites)).astype(np.float32)
    y = rng.integers(0, N_CLASSES, batch)
    if name != "fasttn":
        import torch

        x, y = torch.from_numpy(x), torch.from_numpy(y)
    t0 = time.perf_counter()
    train, infer = make_runner(name, n_sites, bond, seed)
    train(x, y)
    first = time.perf_counter() - t0
    train_t, infer_t = [], []
    for _ in range(steps):
        t = time.perf_counter()
        train(x, y)
        train_t.append(time.perf_counter() - t)
    infer(x)
    for _ in range(steps):
        t = time.perf_counter()
        out = infer(x)
        infer_t.append(time.perf_counter() - t)
    finite = bool(np.all(np.isfinite(np.asarray(out))))
    return {"model": name, "side": side, "bond": bond, "batch": batch,
            "train_images_per_s": batch / statistics.median(train_t),
            "infer_images_per_s": batch / statistics.median(infer_t),
            "first_step_s": first, "finite": finite, "steps": steps}


def main(argv=None):
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--sizes", type=int, nargs="+", default=[28, 64, 128])
    p.add_argument("--bonds", type=int, nargs="+", default=[10, 20])
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--steps", type=int, default=3, help="timed steps per figure (median)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--json", help="write the rows and the run's settings here")
    args = p.parse_args(argv)
    rows, skipped = [], []
    for name in args.models:
        if not available(name):
            skipped.append(name)
            print(f"skipping {name}: not installed (pip install 'fasttn[bench]')",
                  file=sys.stderr)
    models = [m for m in args.models if m not in skipped]
    print(f"{'side':>5} {'bond':>4} {'model':<13} {'train img/s':>12} {'infer img/s':>12} "
          f"{'first step s':>12} {'train x tk':>10}")
    for side in args.sizes:
        for bond in args.bonds:
            here = {}
            for name in models:
                row = measure(name, side, bond, args.batch, args.steps)
                here[name] = row
                rows.append(row)
            tk = here.get("tensorkrowch")
            for name in models:
                row = here[name]
                if tk:
                    row["train_vs_tensorkrowch"] = (row["train_images_per_s"]
                                                    / tk["train_images_per_s"])
                    row["infer_vs_tensorkrowch"] = (row["infer_images_per_s"]
                                                    / tk["infer_images_per_s"])
                ratio = f"{row['train_vs_tensorkrowch']:.1f}" if tk else "-"
                print(f"{side:>5} {bond:>4} {name:<13} {row['train_images_per_s']:>12.1f} "
                      f"{row['infer_images_per_s']:>12.1f} {row['first_step_s']:>12.2f} "
                      f"{ratio:>10}", flush=True)
    if args.json:
        import platform

        meta = {"date": datetime.date.today().isoformat(), "cpus": os.cpu_count(),
                "machine": platform.machine(), "skipped": skipped, **vars(args)}
        with open(args.json, "w") as f:
            json.dump({"settings": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
