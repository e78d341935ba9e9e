"""The MPS classifier's training step and inference pass (batch 100, cos/sin map, 10
classes, Adam) at 28x28 and 64x64 pixel chains, bond 10 and 20, beside
``fasttn.torch.MPSLayer``, tensorkrowch's ``MPSLayer`` and a plain PyTorch MPS on the same
batch. The runners are those of ``bench/mps_throughput.py`` (which prints the same figures
as a table, with the first-call cost); a model whose package is missing is skipped.
"""
from __future__ import annotations

import os
import sys

import numpy as np

_BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODELS = ("fasttn", "fasttn-torch", "tensorkrowch", "torch")
SIDES = (28, 64)
BONDS = (10, 20)
BATCH = 100


def _throughput_module():
    if _BENCH_DIR not in sys.path:  # asv makes only the benchmarks package importable
        sys.path.insert(0, _BENCH_DIR)
    import mps_throughput

    return mps_throughput


class MPSStep:
    """One training step (forward, backward, Adam update) and one inference pass."""
    params = [list(SIDES), list(BONDS), list(MODELS)]
    param_names = ["side", "bond", "model"]
    timeout = 900

    def setup(self, side, bond, model):
        mt = _throughput_module()
        if not mt.available(model):
            raise NotImplementedError(f"{model}: its package is not installed "
                                      f"(pip install 'fasttn[bench]')")
        rng = np.random.default_rng(0)
        x = rng.uniform(size=(BATCH, side * side)).astype(np.float32)
        y = rng.integers(0, mt.N_CLASSES, BATCH)
        if model != "fasttn":
            import torch

            x, y = torch.from_numpy(x), torch.from_numpy(y)
        self.x, self.y = x, y
        self.train, self.infer = mt.make_runner(model, side * side, bond, 0)
        self.train(x, y)  # compile / trace / allocate outside the timed region
        self.infer(x)

    def time_train_step(self, side, bond, model):
        self.train(self.x, self.y)

    def time_inference(self, side, bond, model):
        self.infer(self.x)
