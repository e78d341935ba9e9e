"""The 2x2 -> 1 tree node written as one ``numpy.einsum`` per quantity (the spec).

Every 2x2 block of sites ``a b / c d`` (top-left, top-right, bottom-left, bottom-right) is
mapped to one site by its own tensor (tree tensor networks do not share weights between
positions)::

    out[n, i, j, z] = sum_{abcd} x[n, 2i, 2j, a] x[n, 2i, 2j+1, b]
                                 x[n, 2i+1, 2j, c] x[n, 2i+1, 2j+1, d] w[i, j, a, b, c, d, z]

``x : (batch, H, W, p)``, ``w : (H/2, W/2, p, p, p, p, chi)`` -> ``out : (batch, H/2, W/2, chi)``.
Written on the array module of ``x``, so that CuPy arrays stay on the device.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

from ...backend import array_module

CORNERS = ((0, 0), (0, 1), (1, 0), (1, 1))  # (row, column) in the block: a, b, c, d
_SITES = ("nija", "nijb", "nijc", "nijd")
_W = "ijabcdz"
_OUT = "nijz"


def block_corners(x: np.ndarray) -> List[np.ndarray]:
    """The four corner sites of every block, each ``(batch, H/2, W/2, p)``."""
    n, h, w, p = x.shape
    blocks = x.reshape(n, h // 2, 2, w // 2, 2, p)
    return [blocks[:, :, r, :, c, :] for r, c in CORNERS]


def tree_node_forward(x: np.ndarray, w: np.ndarray) -> Tuple[np.ndarray, tuple]:
    """``(out, saved)``."""
    out = array_module(x).einsum(",".join(_SITES + (_W,)) + "->" + _OUT, *block_corners(x), w)
    return out, (x, w)


def tree_node_backward(saved: tuple, g_out: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(g_x, g_w)`` for ``L = sum(g_out * out)``: the network is multilinear, so each
    gradient is the network with that tensor taken out and ``g_out`` on the open leg."""
    x, w = saved
    xp = array_module(x)
    terms = list(_SITES) + [_W, _OUT]
    operands = block_corners(x) + [w, g_out]

    def grad(k):
        rest = [t for i, t in enumerate(terms) if i != k]
        ops_ = [o for i, o in enumerate(operands) if i != k]
        return xp.einsum(",".join(rest) + "->" + terms[k], *ops_)

    g_x = xp.empty_like(x)
    g_blocks = g_x.reshape(x.shape[0], x.shape[1] // 2, 2, x.shape[2] // 2, 2, x.shape[3])
    for k, (r, c) in enumerate(CORNERS):
        g_blocks[:, :, r, :, c, :] = grad(k)
    return g_x, grad(4)
