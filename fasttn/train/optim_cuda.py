"""AdamW on the GPU: one fused numba.cuda kernel per flat parameter buffer.

The same update as :func:`fasttn.train.optim._adamw_update` (float64 moments, the parameter
in its own dtype), one thread per element. Numba rather than a ``.cu`` file: the update is
elementwise, and a Numba kernel runs unchanged under Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``), so it is tested on machines without a GPU.

Arrays may be CuPy arrays, Numba device arrays, or anything with
``__cuda_array_interface__``; under the simulator, NumPy arrays.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

__all__ = ["adamw_update_cuda"]

_THREADS = 256


@cuda.jit
def _adamw_kernel(p, g, m, v, lr, weight_decay, b1, b2, c1, c2, eps):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < p.size:  # grid-stride: any buffer size with a capped grid
        gi = np.float64(g[i])
        mi = b1 * m[i] + (1 - b1) * gi
        vi = b2 * v[i] + (1 - b2) * gi * gi
        m[i] = mi
        v[i] = vi
        pi = np.float64(p[i])
        p[i] = pi - (lr * weight_decay * pi + lr * (mi / c1) / (math.sqrt(vi / c2) + eps))
        i += step


def adamw_update_cuda(p, g, m, v, lr: float, weight_decay: float, b1: float, b2: float,
                      c1: float, c2: float, eps: float) -> None:
    """One AdamW step on flat device buffers, in place.

    Parameters
    ----------
    p : (n,) float32 or float64 device array
        Parameters, updated in place in their own dtype.
    g : (n,) device array
        Gradient (any float dtype; read as float64).
    m, v : (n,) float64 device arrays
        First and second moments, updated in place.
    lr, weight_decay, b1, b2, eps : float
        AdamW hyper-parameters.
    c1, c2 : float
        Bias corrections ``1 - b1**t`` and ``1 - b2**t`` of step ``t``.
    """
    n = p.size
    for name, a in (("g", g), ("m", m), ("v", v)):
        if a.size != n:
            raise ValueError(f"{name}: expected {n} elements (those of p), got {a.size}")
    if n == 0:
        return
    blocks = min((n + _THREADS - 1) // _THREADS, 4096)
    _adamw_kernel[blocks, _THREADS](p, g, m, v, float(lr), float(weight_decay), float(b1),
                                    float(b2), float(c1), float(c2), float(eps))
