"""fasttn's layers inside a PyTorch model against the plain-PyTorch version of the same
layers, in the same run.

``TorchQCNNTrainStep``: one training step (features, forward, square loss, backward, Adam)
of the q-CNN built from ``fasttn.torch.QCNNLevel`` layers (``fasttn.torch.QCNN``, Fourier
map, d = 18) against ``baselines/torch_qcnn.py`` (BatchNorm1d, Conv1d, product in PyTorch)
with the same widths, on NeedleMNIST 128x128 batches of 16, float32; images/s of both and
the ratio, measured in turns.

As a script (from the repository root)::

    python bench/benchmarks/bench_torch.py
"""
from __future__ import annotations

import os
import sys

import numpy as np

from fasttn.data import needle_mnist

try:
    from .bench_svd import in_turns
except ImportError:  # asv imports the suite as a top-level package; or run as a script
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from benchmarks.bench_svd import in_turns

D, N_FEATURES, BATCH, SIDE = 18, 18, 16, 128
_BENCH_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _torch_baseline():
    """``(torch, baselines.torch_qcnn)``, imported when a benchmark runs, not when the suite
    is discovered: without the torch extra, ``NotImplementedError`` (asv's "skipped")."""
    try:
        import torch
    except ImportError as exc:
        raise NotImplementedError(f"PyTorch is not installed (pip install 'fasttn[torch]'): "
                                  f"{exc}") from None
    sys.path.insert(0, _BENCH_DIR)
    try:
        from baselines import torch_qcnn
    finally:
        sys.path.remove(_BENCH_DIR)
    return torch, torch_qcnn


def copy_parameters(fast, base) -> None:
    """Give the plain model the parameters of the fasttn-layer model."""
    torch, _ = _torch_baseline()
    last = len(fast.levels) - 1
    with torch.no_grad():
        for l, level in enumerate(fast.levels):
            target = base.head.weight if l == last else base.convs[l].weight[:, :, 0]
            target.copy_(level.weight)
            base.bns[l].weight.copy_(level.gamma)
            base.bns[l].bias.copy_(level.beta)


class TorchQCNNTrainStep:
    timeout = 600

    def setup(self):
        torch, torch_qcnn = _torch_baseline()
        from fasttn.torch import QCNN

        data = needle_mnist(size=SIDE, split="train", count=BATCH, seed=0)
        X, y = data.arrays()
        self.X, self.y = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
        torch.manual_seed(0)
        self.fast = QCNN((SIDE, SIDE), 2, d=D, feature_map="fourier", n_features=N_FEATURES,
                         beta_init=1.0, sync_stats=False)
        dims = [N_FEATURES] + [D * (l + 1) for l in range(1, len(self.fast.levels))]
        self.base = torch_qcnn.TorchQCNN(dims, 2)
        copy_parameters(self.fast, self.base)
        self.chains = X.reshape(BATCH, -1).astype(np.float32)
        with torch.no_grad():  # the same function of the same parameters
            a = self.fast(self.X)
            b = self.base(torch_qcnn.features(self.chains, N_FEATURES))
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3 * float(b.abs().max()))
        self.opt_fast = torch.optim.Adam(self.fast.parameters(), lr=1e-3)
        self.opt_base = torch.optim.Adam(self.base.parameters(), lr=1e-3)
        self.fasttn = self._step(self.opt_fast, lambda: self.fast(self.X))
        self.torch = self._step(self.opt_base,
                                lambda: self.base(torch_qcnn.features(self.chains, N_FEATURES)))

    def _step(self, opt, scores):
        _, torch_qcnn = _torch_baseline()

        def run():
            loss = torch_qcnn.square_loss(scores(), self.y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run

    def time_fasttn_layers(self):
        self.fasttn()

    def time_torch_layers(self):
        self.torch()

    def track_speedup(self):
        t_fast, t_torch = in_turns([self.fasttn, self.torch], repeats=3)
        return t_torch / t_fast
    track_speedup.unit = "x"

    def track_fasttn_images_per_s(self):
        return BATCH / in_turns([self.fasttn], repeats=3)[0]
    track_fasttn_images_per_s.unit = "images/s"

    def track_torch_images_per_s(self):
        return BATCH / in_turns([self.torch], repeats=3)[0]
    track_torch_images_per_s.unit = "images/s"


def main() -> None:
    b = TorchQCNNTrainStep()
    b.setup()
    t_fast, t_torch = in_turns([b.fasttn, b.torch], repeats=5)
    print(f"q-CNN training step, {SIDE}x{SIDE}, batch {BATCH}, d={D}, float32: fasttn.torch "
          f"layers {BATCH / t_fast:.1f} images/s, plain PyTorch {BATCH / t_torch:.1f} images/s, "
          f"{t_torch / t_fast:.2f}x")


if __name__ == "__main__":
    main()
