"""The 2D MERA block written as one tensor network contracted by ``numpy.einsum`` (the spec).

A block covers a 4x4 grid of sites (row-major letters ``a``..``p``)::

    a b | c d        quadrants: TL = a b e (+f), TR = c d h (+g),
    e f | g h                   BL = i m n (+j), BR = l o p (+k)
    ----+----
    i j | k l        disentangler u1 on the four central sites f g j k, one leg to each
    m n | o p        quadrant's isometry; isometry q takes its three outer sites and that leg

Tensors (weights shared by every block):

* ``u1 : (p, p, p, p, b, b, b, b)`` - sites f, g, j, k -> legs Q, R, S, T (to TL, TR, BL, BR)
* ``w : (4, p, p, p, b, chi)`` - isometries TL, TR, BL, BR; inputs in the order above, then the
  leg from u1, output A, B, C, D
* ``u2 : (chi,) * 8`` - second disentangler on A B C D -> E F G H
* ``top : (chi, chi, chi, chi, d_out)`` - E F G H -> the block's output site Z

``x : (batch, H, W, p)`` with H and W multiples of 4 gives ``(batch, H/4, W/4, d_out)``.
"""
from __future__ import annotations

from typing import Any, List, Tuple

import numpy as np

from ..._validate import check_float_array

SITES = "abcdefghijklmnop"
U1 = "fgjkQRST"
ISOMETRIES = ("abeQA", "cdhRB", "imnSC", "lopTD")
U2 = "ABCDEFGH"
TOP = "EFGHZ"
BATCH = "qrs"  # image, block row, block column


def check_disentangler(name: str, u: Any, p: int, dtype: Any) -> int:
    """A disentangler ``(p, p, p, p, b, b, b, b)`` of the input's dtype; returns ``b``."""
    check_float_array(name, u, ndim=8, dtype=dtype)
    b = u.shape[-1]
    if u.shape != (p,) * 4 + (b,) * 4:
        raise ValueError(f"{name}: expected shape {(p,) * 4 + ('b',) * 4} (site dimension "
                         f"p={p} from x), got {tuple(u.shape)}")
    return b


def block_sites(x: np.ndarray) -> List[np.ndarray]:
    """The 16 site vectors of every block, each ``(batch, H/4, W/4, p)``, row-major."""
    b, h, w, p = x.shape
    blocks = x.reshape(b, h // 4, 4, w // 4, 4, p)
    return [blocks[:, :, r, :, c, :] for r in range(4) for c in range(4)]


def _network(x, u1, w, u2, top) -> Tuple[List[str], List[np.ndarray]]:
    terms = [BATCH + s for s in SITES] + [U1, *ISOMETRIES, U2, TOP]
    operands = block_sites(x) + [u1, w[0], w[1], w[2], w[3], u2, top]
    return terms, operands


def mera_block_forward(x, u1, w, u2, top):
    """``(out, saved)``: the whole block network contracted exactly."""
    terms, operands = _network(x, u1, w, u2, top)
    out = np.einsum(",".join(terms) + "->" + BATCH + "Z", *operands, optimize=True)
    return out, (x, u1, w, u2, top)


def mera_block_backward(saved, g_out):
    """``(g_x, g_u1, g_w, g_u2, g_top)`` for ``L = sum(g_out * out)``.

    The network is multilinear: the gradient with respect to one tensor is the same network
    with that tensor taken out and ``g_out`` attached to the open leg Z (summed over blocks and
    images for the shared weights)."""
    x, u1, w, u2, top = saved
    terms, operands = _network(x, u1, w, u2, top)
    terms = terms + [BATCH + "Z"]
    operands = operands + [g_out]

    def grad(k):
        rest = [t for i, t in enumerate(terms) if i != k]
        ops_ = [o for i, o in enumerate(operands) if i != k]
        return np.einsum(",".join(rest) + "->" + terms[k], *ops_, optimize=True)

    g_sites = [grad(k) for k in range(16)]                      # each (batch, H/4, W/4, p)
    b, h, w_, p = x.shape
    g_x = np.stack(g_sites, axis=3).reshape(b, h // 4, w_ // 4, 4, 4, p)
    g_x = g_x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w_, p)
    g_u1 = grad(16)
    g_w = np.stack([grad(17 + q) for q in range(4)])
    return g_x, g_u1, g_w, grad(21), grad(22)
