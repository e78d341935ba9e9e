"""Tree tensor network benchmarks.

``TreeNode``: one level of 2x2 -> 1 tree nodes (``fasttn.ops.tree_node``), forward and
backward, against the same contraction as ``np.einsum(..., optimize=True)``
(``baselines/numpy_ttn.py``), float32, with the kernel's rate against this machine's
float32 GEMM peak. Shapes: ``fashion16-l2`` is level 2 of the ten-class Fashion-MNIST tree
(8x8 sites of chi = 8, batch 256: the BLAS path); ``needle128-l1`` and ``needle128-l2`` are
the first two levels of a chi = 4 tree on 128x128 NeedleMNIST (batch 32: the loop path).

``TTN2DTrainStep``: one training step's forward and backward (no optimiser) of
``fasttn.TTN2D(chi=4)`` on a batch of 32 NeedleMNIST 128x128 images, against the plain
NumPy model of ``baselines/numpy_ttn.py`` from the same weights.

As a script (from the repository root)::

    python bench/benchmarks/bench_ttn.py
"""
from __future__ import annotations

import numpy as np

import fasttn
from fasttn.data import needle_mnist
from fasttn.ops import tree_node_backward, tree_node_forward

try:
    from ..baselines import numpy_ttn
    from .bench_svd import in_turns
    from .ceilings import sgemm_gflops
except ImportError:  # run as a script
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from baselines import numpy_ttn
    from benchmarks.bench_svd import in_turns
    from benchmarks.ceilings import sgemm_gflops

# name -> (batch, grid side, p, chi)
NODE_SHAPES = {"fashion16-l2": (256, 8, 8, 8), "needle128-l1": (32, 128, 2, 4),
               "needle128-l2": (32, 64, 4, 4)}


def node_flops(batch: int, side: int, p: int, chi: int) -> float:
    """Multiply-adds x 2 of the forward's contraction (outer products not counted)."""
    return 2.0 * batch * (side // 2) ** 2 * p ** 4 * chi


class TreeNode:
    params = [list(NODE_SHAPES)]
    param_names = ["shape"]
    timeout = 300

    def setup(self, shape):
        batch, side, p, chi = NODE_SHAPES[shape]
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, side, side, p)).astype(np.float32)
        w = rng.standard_normal((side // 2, side // 2, p, p, p, p, chi)).astype(np.float32)
        g = rng.standard_normal((batch, side // 2, side // 2, chi)).astype(np.float32)
        self.flops = node_flops(batch, side, p, chi)
        self.fasttn = lambda: tree_node_backward(tree_node_forward(x, w)[1], g)
        self.fasttn_forward = lambda: tree_node_forward(x, w)
        self.numpy = lambda: numpy_ttn.node_backward(x, w, g)
        self.numpy_forward = lambda: numpy_ttn.node_forward(x, w)
        out = tree_node_forward(x, w)[0]
        np.testing.assert_allclose(out, self.numpy_forward(), rtol=1e-3,
                                   atol=1e-4 * np.abs(out).max())

    def time_fasttn_forward(self, shape):
        self.fasttn_forward()

    def time_numpy_forward(self, shape):
        self.numpy_forward()

    def time_fasttn_forward_backward(self, shape):
        self.fasttn()

    def track_forward_speedup(self, shape):
        t_fast, t_np = in_turns([self.fasttn_forward, self.numpy_forward])
        return t_np / t_fast
    track_forward_speedup.unit = "x"

    def track_backward_speedup(self, shape):
        """NumPy's backward alone over fasttn's forward + backward."""
        t_fast, t_np = in_turns([self.fasttn, self.numpy])
        return t_np / t_fast
    track_backward_speedup.unit = "x"

    def track_forward_pct_sgemm(self, shape):
        t = in_turns([self.fasttn_forward])[0]
        return 100.0 * self.flops / t / 1e9 / sgemm_gflops()
    track_forward_pct_sgemm.unit = "%"


class TTN2DTrainStep:
    timeout = 600

    def setup(self):
        data = needle_mnist(size=128, split="train", count=64, seed=0)
        X, y = data.arrays()
        self.X, self.y = X[:32], y[:32]
        model = fasttn.TTN2D(2, chi=4, random_state=0)
        model._check_config()
        model._setup((128, 128))
        model._init_params(np.random.default_rng(0))
        model.history_ = []
        self.model = model
        self.fasttn = lambda: model._forward_backward(self.X, self.y)
        self.numpy = lambda: numpy_ttn.train_step_grads(model.weights_, self.X, self.y)
        _, loss, grads = self.fasttn()
        loss_np, grads_np = self.numpy()
        assert abs(loss - loss_np) <= 1e-4 * max(1.0, abs(loss_np)), (loss, loss_np)
        for a, b in zip(grads, grads_np):
            np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3 * np.abs(b).max())

    def time_fasttn_step(self):
        self.fasttn()

    def time_numpy_step(self):
        self.numpy()

    def track_speedup(self):
        t_fast, t_np = in_turns([self.fasttn, self.numpy], repeats=5)
        return t_np / t_fast
    track_speedup.unit = "x"

    def track_images_per_s(self):
        return len(self.y) / in_turns([self.fasttn], repeats=5)[0]
    track_images_per_s.unit = "images/s"


def main() -> None:
    print(f"sgemm peak {sgemm_gflops():.0f} GFLOP/s")
    for shape in NODE_SHAPES:
        b = TreeNode()
        b.setup(shape)
        print(f"tree_node {shape:<13} forward {b.track_forward_speedup(shape):5.1f}x NumPy, "
              f"{b.track_forward_pct_sgemm(shape):5.1f}% of sgemm; forward+backward vs NumPy "
              f"backward {b.track_backward_speedup(shape):5.1f}x")
    s = TTN2DTrainStep()
    s.setup()
    print(f"TTN2D train step 128x128 batch 32: {s.track_images_per_s():.0f} images/s, "
          f"{s.track_speedup():.1f}x NumPy")


if __name__ == "__main__":
    main()
