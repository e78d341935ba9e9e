"""q-CNN workloads shared by the asv suite (``bench_qcnn.py``) and ``bench/run_qcnn.py``.

What is measured, on which inputs, and how much arithmetic and memory traffic it is.

Models: ``fasttn.QCNN.paper()`` (d=18, Fourier map, shared weights, row order, 1D pooling: the
q-CNN paper's setting), float32, square
loss, and the plain PyTorch version of the same model (``bench/baselines/torch_qcnn.py``) with
the same dimensions and the same initial parameters (copied from the fasttn model).

Inputs: 16x16 Fashion-MNIST (batch 50, 10 classes; random pixels where the IDX files are not
installed), 128x128 and 256x256 NeedleMNIST (batch 16, 2 classes).

``beta_init=1.0`` (the model's identity-bias option) keeps every repeat of the training step
finite on the deep 128^2 / 256^2 hierarchies; the arithmetic done does not depend on it.

FLOP counts (GEMM work only; batch norm, products and the optimizer are not counted)::

    MAC_l   = batch * sites_l * d_l * d_{l+1}       l = 0 .. L (l = L: the dense classifier)
    forward = 2 * sum_l MAC_l
    train   = 2 * (2 * MAC_0 + 3 * sum_{l>=1} MAC_l)

``sites_l`` is the chain length entering level l (H*W / 2^l), ``d_0 = 18`` the feature channels,
``d_l = 18 (l + 1)`` the level widths and ``d_{L+1}`` the number of classes. A training step is
the forward GEMM, the weight-gradient GEMM and the input-gradient GEMM of every level, except
the first, whose input is data and needs no gradient.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np

import fasttn
import fasttn.data
from fasttn.train import AdamW

D = 18
SIZES = (16, 128, 256)
BATCH = {16: 50, 128: 16, 256: 16}
BETA_INIT = 1.0
LR = 0.01
WEIGHT_DECAY = 0.01
_BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- inputs
def images(size: int, batch: int):
    """``(X (batch, size, size) float32 in [0, 1], y int64, n_classes, source name)``."""
    if size == 16:
        try:
            X, y = fasttn.data.load_fashion_mnist("train", size=16)
            return (np.ascontiguousarray(X[:batch], np.float32), y[:batch].astype(np.int64), 10,
                    "fashion-mnist")
        except (fasttn.data.DatasetNotFoundError, fasttn.data.DatasetError):
            rng = np.random.default_rng(0)
            return (rng.random((batch, 16, 16), dtype=np.float32),
                    rng.integers(0, 10, batch).astype(np.int64), 10, "random")
    X, y = fasttn.data.needle_mnist(size=size, count=batch, split="train", seed=0).arrays(batch)
    return X, y.astype(np.int64), 2, "needle-mnist"


# ------------------------------------------------------------------------ arithmetic
def level_macs(model, batch: int) -> List[int]:
    """Multiply-adds of each level's GEMM (the last entry: the dense classifier)."""
    dims = [model.d0_] + list(model.widths_) + [model.n_classes]
    return [batch * model.sites_per_level_[l] * dims[l] * dims[l + 1]
            for l in range(model.n_levels_ + 1)]


def forward_flops(model, batch: int) -> int:
    return 2 * sum(level_macs(model, batch))


def train_flops(model, batch: int) -> int:
    macs = level_macs(model, batch)
    return 2 * (2 * macs[0] + 3 * sum(macs[1:]))


# ----------------------------------------------------------------------- the models
class FasttnQCNN:
    """A fasttn q-CNN ready to run one training step or one inference batch."""

    def __init__(self, size: int, batch: Optional[int] = None):
        batch = batch or BATCH[size]
        X, self.y, n_classes, self.source = images(size, batch)
        self.size, self.batch = size, batch
        m = fasttn.QCNN.paper(n_classes=n_classes, d=D, pooling="1d", loss="square",
                              dtype="float32", batch_size=batch, beta_init=BETA_INIT, lr=LR,
                              weight_decay=WEIGHT_DECAY)
        m._check_config()
        m._setup(X.shape[1:])
        m._init_params(np.random.default_rng(0))
        self.model = m
        self.chains = m._sites(X)
        # Running statistics of this batch, as after training: with the initial (0, 1) the
        # linear-domain inference of a deep hierarchy overflows to inf and NaN.
        used = m._forward_backward(self.chains, None, True, "linear")[4]
        m.running_means_ = [np.asarray(mean, np.float64) for mean, _ in used]
        m.running_vars_ = [np.asarray(var, np.float64) for _, var in used]
        self.opt = AdamW(m._params(), lr=LR, weight_decay=WEIGHT_DECAY)
        self.last_loss = float("nan")

    def train_step(self) -> None:
        """Forward, loss, backward and one AdamW update on the batch."""
        _, _, loss, grads, _ = self.model._forward_backward(self.chains, self.y, True, "linear")
        self.opt.step(grads)
        self.last_loss = loss

    def infer(self, domain: str = "scaled") -> np.ndarray:
        """Scores of the batch with the running statistics: ``"scaled"`` (one log-scale per
        site; what ``predict`` uses), ``"linear"`` or ``"log"`` (log|x| and sign)."""
        return self.model._forward_backward(self.chains, None, False, domain)[0]

    @property
    def train_flops(self) -> int:
        return train_flops(self.model, self.batch)

    @property
    def forward_flops(self) -> int:
        return forward_flops(self.model, self.batch)


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


class TorchQCNN:
    """The plain PyTorch q-CNN with the dimensions and initial parameters of ``ref``.

    Raises ``NotImplementedError`` (asv's "skipped") when PyTorch is not installed.
    """

    def __init__(self, ref: FasttnQCNN):
        try:
            import torch
        except ImportError as exc:
            raise NotImplementedError("PyTorch is not installed (pip install fasttn[torch])") from exc
        if _BENCH_DIR not in sys.path:  # asv makes only the benchmarks package importable
            sys.path.insert(0, _BENCH_DIR)
        from baselines.torch_qcnn import TorchQCNN as Net, features, square_loss

        torch.set_num_threads(os.cpu_count() or 1)
        self.torch, self._features, self._loss = torch, features, square_loss
        m = ref.model
        self.net = Net([m.d0_] + list(m.widths_), m.n_classes, window=m.window_, eps=m.eps,
                       momentum=m.momentum)
        self.net.load_from(m)
        self.chains = ref.chains
        self.n_features = m._n_features()
        self.y = torch.from_numpy(ref.y)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        self.last_loss = float("nan")

    def train_step(self) -> None:
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        loss = self._loss(self.net(self._features(self.chains, self.n_features)), self.y)
        loss.backward()
        self.opt.step()
        self.last_loss = float(loss.detach())

    def infer(self):
        self.net.eval()
        with self.torch.inference_mode():
            return self.net(self._features(self.chains, self.n_features))


# ---------------------------------------------------------------------- measurement
def measure_interleaved(fns: Dict[str, Callable[[], object]], min_runs: int = 3,
                        max_runs: int = 10, budget_s: float = 3.0,
                        slow_s: float = 2.0) -> Dict[str, List[float]]:
    """Wall times of each callable, run in turns so that all see the same machine load.

    One untimed warm-up call each, then rounds of one call each until every callable has
    ``min_runs`` times and ``budget_s`` has passed, or ``max_runs`` rounds. Rounds whose
    slowest call exceeds ``slow_s`` stop after two, to keep a benchmark short on 2 cores.
    """
    for fn in fns.values():
        fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    for r in range(max_runs):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
        slowest = max(min(v) for v in times.values())
        if slowest >= slow_s:
            if r + 1 >= 2:
                break
        elif r + 1 >= min_runs and time.perf_counter() - start >= budget_s:
            break
    return times


def measure_qcnn(sizes=SIZES, with_torch: bool = True, **kw) -> Dict[int, dict]:
    """Training and inference wall times of fasttn (and PyTorch) at each size, interleaved.

    Returns ``{size: {"batch", "source", "train_flops", "forward_flops", "times": {name:
    [seconds]}, "finite": bool}}`` with names ``fasttn_train``, ``fasttn_infer`` (scaled, as
    ``predict``), ``fasttn_infer_linear``, ``fasttn_infer_log`` and, with PyTorch,
    ``torch_train``, ``torch_infer``.
    """
    out = {}
    for size in sizes:
        f = FasttnQCNN(size)
        train = {"fasttn_train": f.train_step}
        infer = {"fasttn_infer": lambda f=f: f.infer("scaled"),
                 "fasttn_infer_linear": lambda f=f: f.infer("linear"),
                 "fasttn_infer_log": lambda f=f: f.infer("log")}
        t = None
        if with_torch and torch_available():
            t = TorchQCNN(f)
            train["torch_train"] = t.train_step
            infer["torch_infer"] = t.infer
        # inference first: training moves the weights away from the running statistics
        times = measure_interleaved(infer, **kw)
        times.update(measure_interleaved(train, **kw))
        finite = bool(np.isfinite(f.last_loss)) and (t is None or bool(np.isfinite(t.last_loss)))
        out[size] = {"batch": f.batch, "source": f.source, "train_flops": f.train_flops,
                     "forward_flops": f.forward_flops, "times": times, "finite": finite}
    return out


_MEASURE_ONE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from benchmarks import qcnn_workloads as W
args = json.loads(sys.argv[2])
print("RESULT " + json.dumps(W.measure_qcnn([args.pop("size")], **args)))
"""


def measure_qcnn_isolated(sizes=SIZES, with_torch: bool = True, **kw) -> Dict[int, dict]:
    """:func:`measure_qcnn`, each size in a fresh interpreter (as asv runs each benchmark).

    One workload must not inherit the thread state another left behind: with Numba's OpenMP
    layer, a process whose first kernel ran single-threaded (a small problem) runs later large
    kernels several times slower (see ``bench/README.md``).
    """
    import json
    import subprocess

    out = {}
    for size in sizes:
        args = json.dumps(dict(kw, size=size, with_torch=with_torch))
        proc = subprocess.run([sys.executable, "-c", _MEASURE_ONE, _BENCH_DIR, args],
                              capture_output=True, text=True)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise RuntimeError(f"measuring size {size} failed:\n{proc.stderr[-3000:]}")
        out[size] = json.loads(lines[-1][len("RESULT "):])[str(size)]
    return out


# ----------------------------------------------------------------------- level ops
# name: (batch, sites, d_in, d_out, window, need_g_x). "first": level 0 of a 128^2 image
# (18 Fourier channels -> 36); "mid": level 4 of it (90 -> 108 channels on 1,024 sites).
LEVEL_SHAPES = {
    "first-128": (16, 128 * 128, 18, 36, 2, False),
    "mid-128": (16, 128 * 128 // 16, 90, 108, 2, True),
}


class LevelOp:
    """Inputs of one linear-domain ``qcnn_level_forward`` / ``backward`` call (training mode,
    batch statistics passed in as the model does)."""

    def __init__(self, shape: str, dtype=np.float32):
        b, s, d_in, d_out, window, need_g_x = LEVEL_SHAPES[shape]
        rng = np.random.default_rng(0)
        self.x = rng.uniform(-1.4, 1.4, (b, s, d_in)).astype(dtype)
        bound = np.sqrt(6.0 / (d_in + d_out))
        self.weight = rng.uniform(-bound, bound, (d_out, d_in)).astype(dtype)
        self.gamma = np.ones(d_in, dtype)
        self.beta = np.full(d_in, BETA_INIT, dtype)
        self.stats = fasttn.ops.batch_stats(self.x)
        self.window, self.need_g_x = window, need_g_x
        out, self.saved, _ = self.forward()
        self.g_out = rng.standard_normal(out.shape).astype(dtype)
        self.backward()
        n, item = b * s, np.dtype(dtype).itemsize
        self.forward_flops = 2 * n * d_in * d_out
        self.backward_flops = (2 if need_g_x else 1) * 2 * n * d_in * d_out
        # x read, pre-pooling activations (saved for the backward) and out written
        self.forward_bytes = item * (n * d_in + n * d_out + n // window * d_out)
        # x, saved activations and g_out read; g_x written when it is needed
        self.backward_bytes = item * (n * d_in + n * d_out + n // window * d_out
                                      + (n * d_in if need_g_x else 0))

    def forward(self):
        return fasttn.ops.qcnn_level_forward(self.x, self.weight, self.gamma, self.beta,
                                             window=self.window, training=True,
                                             stats=self.stats)

    def backward(self):
        return fasttn.ops.qcnn_level_backward(self.saved, self.g_out, need_g_x=self.need_g_x)


# name: input shape, window; the level-0 activations of a 128^2 batch of 16 (36 channels)
POOL_SHAPES = {"chain": ((16, 128 * 128, 36), 2), "grid": ((16, 128, 128, 36), 4)}


class PoolOp:
    def __init__(self, layout: str, dtype=np.float32):
        shape, self.window = POOL_SHAPES[layout]
        self.x = np.random.default_rng(0).uniform(0.5, 1.5, shape).astype(dtype)
        self.run()
        self.bytes = self.x.nbytes + self.x.nbytes // self.window

    def run(self):
        return fasttn.ops.product_pool(self.x, self.window)


def best_of(fn: Callable[[], object], min_runs: int = 5, budget_s: float = 1.0) -> float:
    """Best wall time after one warm-up call: at least ``min_runs`` calls and ``budget_s``."""
    return min(measure_interleaved({"f": fn}, min_runs=min_runs, max_runs=50,
                                   budget_s=budget_s)["f"])
