"""Optimizers on lists of parameter arrays (updated in place)."""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from .._numba import njit
from ..backend import array_module
from .._validate import check_number, check_positive_int


@njit(error_model="numpy")  # no fastmath: an overflowing moment must stay inf, not UB
def _adamw_update(p, g, m, v, lr, weight_decay, b1, b2, c1, c2, eps):
    """One AdamW step on flat arrays in one pass (float64 moments, ``p`` in its own dtype)."""
    for i in range(p.size):
        gi = np.float64(g[i])
        m[i] = b1 * m[i] + (1 - b1) * gi
        v[i] = b2 * v[i] + (1 - b2) * gi * gi
        pi = np.float64(p[i])
        p[i] = pi - (lr * weight_decay * pi + lr * (m[i] / c1) / (np.sqrt(v[i] / c2) + eps))


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``.

    Parameters
    ----------
    params : list of arrays
        Updated in place by :meth:`step`. NumPy arrays take a Numba kernel on the host;
        device arrays (CuPy) keep their moments on the device and take one fused
        ``numba.cuda`` kernel per parameter (:mod:`fasttn.train.optim_cuda`), so nothing
        crosses to the host but one finiteness flag per gradient.
    lr, betas, eps, weight_decay : float
        Standard AdamW hyper-parameters (defaults: the q-CNN paper's lr 0.01, decay 0.01).
        Checked here, where every model's training passes: a NaN, infinite or negative
        value would turn every parameter into NaN without any gradient being non-finite.

    Raises
    ------
    ValueError
        ``lr`` or ``weight_decay`` not a finite number >= 0, ``betas`` not two numbers in
        [0, 1), ``eps`` not a finite number > 0 (the message names the argument).
    """

    def __init__(self, params: Sequence[np.ndarray], lr: float = 0.01,
                 betas: tuple = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        self.params = list(params)
        self.lr = check_number("lr", lr, 0)
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {betas!r}") from None
        self.betas = (check_number("betas", b1, 0, 1, high_open=True),
                      check_number("betas", b2, 0, 1, high_open=True))
        self.eps = check_number("eps", eps, 0, low_open=True)
        self.weight_decay = check_number("weight_decay", weight_decay, 0)
        # Moments in float64, beside each parameter: cheap (the parameters are few) and free
        # of float32 drift.
        self.m = [array_module(p).zeros(p.shape, dtype=np.float64) for p in self.params]
        self.v = [array_module(p).zeros(p.shape, dtype=np.float64) for p in self.params]
        self.t = 0

    def step(self, grads: Sequence[np.ndarray]) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1 = 1 - b1 ** self.t
        c2 = 1 - b2 ** self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            xp = array_module(p)
            if xp is not np:
                self._device_step(xp, p, g, m, v, c1, c2)
                continue
            g = np.asarray(g)
            if g.shape != p.shape:
                raise ValueError(f"grads: expected shape {p.shape}, got {g.shape}")
            if not np.all(np.isfinite(g)):
                raise FloatingPointError("grads: a gradient holds NaN or Inf; the training "
                                         "diverged (lower the learning rate)")
            if isinstance(p, np.ndarray) and p.flags.c_contiguous:
                _adamw_update(p.reshape(-1), np.ascontiguousarray(g).reshape(-1),
                              m.reshape(-1), v.reshape(-1), self.lr, self.weight_decay,
                              b1, b2, c1, c2, self.eps)
                continue
            g = np.asarray(g, np.float64)  # any other array: the same step in NumPy
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            upd = self.lr * self.weight_decay * p + self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)
            p -= upd.astype(p.dtype)

    def _device_step(self, xp, p, g, m, v, c1: float, c2: float) -> None:
        from .optim_cuda import adamw_update_cuda  # numba.cuda: only with device arrays

        if tuple(g.shape) != tuple(p.shape):
            raise ValueError(f"grads: expected shape {tuple(p.shape)}, got {tuple(g.shape)}")
        if array_module(g) is not xp:
            raise TypeError(f"grads: expected an array on the parameters' device "
                            f"({xp.__name__}), got {type(g).__module__}.{type(g).__name__}")
        if not bool(xp.all(xp.isfinite(g))):
            raise FloatingPointError("grads: a gradient holds NaN or Inf; the training "
                                     "diverged (lower the learning rate)")
        if not p.flags.c_contiguous:
            raise ValueError("params: device parameters must be C-contiguous (updated in "
                             "place through a flat view)")
        b1, b2 = self.betas
        adamw_update_cuda(p.reshape(-1), xp.ascontiguousarray(g).reshape(-1), m.reshape(-1),
                          v.reshape(-1), self.lr, self.weight_decay, b1, b2, c1, c2, self.eps)

    def state_arrays(self) -> List[np.ndarray]:
        return self.m + self.v


class StepLR:
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, optimizer: AdamW, step_size: int = 10, gamma: float = 0.5):
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.step_size = check_positive_int("lr_step", step_size)
        self.gamma = check_number("lr_gamma", gamma, 0, low_open=True)

    def set_epoch(self, epoch: int) -> float:
        # a tiny gamma over many epochs underflows to 0 (a no-op step), never to NaN
        self.optimizer.lr = self.base_lr * self.gamma ** (epoch // self.step_size)
        return self.optimizer.lr
