"""MPO contractions on BLAS: environments built once, one ``tensordot`` per core.

The prefix ``L[k]`` holds cores ``0..k-1`` contracted, shape ``(prod in_<k, prod out_<k,
D_k)``; the suffix ``R[k]`` holds cores ``k..N-1``, shape ``(D_k, prod in_>=k, prod
out_>=k)``. ``W = L[N]`` and the gradient of any run of consecutive cores (one core, or the
two-core bond tensor of a sweep) is ``dL/dW`` contracted with the prefix to its left and the
suffix to its right, so a whole gradient costs ``O(|W| sum D^2)`` with no per-core einsum.

Written against the array module of the cores (``tensordot`` is one GEMM), so the same
functions serve CuPy cores on a GPU (cuBLAS) without a separate version.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from ...backend import array_module


def prefix_step(left: np.ndarray, core: np.ndarray) -> np.ndarray:
    """``L[k+1]`` from ``L[k]`` and core ``k``."""
    i_l, o_l, _ = left.shape
    _, i, o, d_next = core.shape
    t = array_module(core).tensordot(left, core, axes=([2], [0]))  # (I<, O<, i, o, D')
    return t.transpose(0, 2, 1, 3, 4).reshape(i_l * i, o_l * o, d_next)


def suffix_step(core: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``R[k]`` from core ``k`` and ``R[k+1]``."""
    d, i, o, _ = core.shape
    _, i_r, o_r = right.shape
    t = array_module(core).tensordot(core, right, axes=([3], [0]))  # (D, i, o, I>, O>)
    return t.transpose(0, 1, 3, 2, 4).reshape(d, i * i_r, o * o_r)


def prefixes(cores: Sequence[np.ndarray]) -> List[np.ndarray]:
    """``[L[0], ..., L[N]]``; ``L[0]`` is the ``(1, 1, 1)`` identity."""
    out = [array_module(cores[0]).ones((1, 1, 1), cores[0].dtype)]
    for core in cores:
        out.append(prefix_step(out[-1], core))
    return out


def suffixes(cores: Sequence[np.ndarray]) -> List[np.ndarray]:
    """``[R[0], ..., R[N]]``; ``R[N]`` is the ``(1, 1, 1)`` identity."""
    out = [array_module(cores[0]).ones((1, 1, 1), cores[0].dtype)]
    for core in reversed(cores):
        out.append(suffix_step(core, out[-1]))
    return out[::-1]


def contract_with_envs(left: np.ndarray, mid: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``W`` from a prefix, the tensor of a run of cores ``(Da, i.., o.., Db)`` grouped as
    ``(Da, I_mid, O_mid, Db)``, and a suffix."""
    t = prefix_step(left, mid)
    i_t, o_t, _ = t.shape
    _, i_r, o_r = right.shape
    w = array_module(t).tensordot(t, right, axes=([2], [0]))  # (I<, O<, I>, O>)
    return w.transpose(0, 2, 1, 3).reshape(i_t * i_r, o_t * o_r)


def segment_grad(left: np.ndarray, g_w: np.ndarray, right: np.ndarray, i_mid: int,
                 o_mid: int) -> np.ndarray:
    """``dL/dT`` for the tensor ``T (Da, I_mid, O_mid, Db)`` between ``left`` and ``right``."""
    i_l, o_l, d_a = left.shape
    d_b, i_r, o_r = right.shape
    g = g_w.reshape(i_l, i_mid, i_r, o_l, o_mid, o_r)
    xp = array_module(g_w)
    t = xp.tensordot(left, g, axes=([0, 1], [0, 3]))  # (Da, I_mid, I>, O_mid, O>)
    t = xp.tensordot(t, right, axes=([2, 4], [1, 2]))  # (Da, I_mid, O_mid, Db)
    return t


def mpo_to_dense_forward(cores: Sequence[np.ndarray]):
    pre = prefixes(cores)
    w = pre[-1][:, :, 0]
    return w, (list(cores), pre)


def mpo_to_dense_backward(saved, g_w: np.ndarray) -> List[np.ndarray]:
    cores, pre = saved
    grads: List[np.ndarray] = [None] * len(cores)  # type: ignore[list-item]
    right = array_module(g_w).ones((1, 1, 1), g_w.dtype)
    for k in range(len(cores) - 1, -1, -1):
        d, i, o, d_next = cores[k].shape
        grads[k] = segment_grad(pre[k], g_w, right, i, o).reshape(d, i, o, d_next)
        right = suffix_step(cores[k], right)
    return grads
