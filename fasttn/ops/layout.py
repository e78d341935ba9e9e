"""Site orders: how an (H, W) image becomes the chain of sites the hierarchy pools.

``row``    row-major; pairs pool along rows first and the top split is up/down.
``column`` column-major; the top split is left/right.
``z``      Z (Morton) order: every 2x2 window of every level is four consecutive sites, so
           2x2 pooling on the grid is window-4 pooling on the chain, and a level-l site is
           the 2^l x 2^l block it summarises. On a rectangle the square blocks come first,
           then the longer side's halvings.

Chains that are not pooled (an MPS) also take the orders of :data:`CHAIN_ORDERS`:

``snake``  rows, every second one right to left: consecutive sites are always neighbours.
``hilbert`` the Hilbert curve of a square whose side is a power of two: consecutive sites
           are neighbours and every 2^l x 2^l quadrant is one stretch of the chain.
"""
from __future__ import annotations

import numpy as np

from .._validate import check_choice, check_power_of_two

SITE_ORDERS = ("row", "column", "z")
CHAIN_ORDERS = ("row", "column", "snake", "hilbert")


def site_order(height: int, width: int, order: str) -> np.ndarray:
    """Permutation ``perm`` with ``chain = image.reshape(-1)[perm]``.

    Returns
    -------
    perm : (height * width,) int64
    """
    check_choice("order", order, SITE_ORDERS + CHAIN_ORDERS[2:])
    idx = np.arange(height * width).reshape(height, width)
    if order == "row":
        return idx.reshape(-1)
    if order == "column":
        return idx.T.reshape(-1)
    if order == "snake":
        idx[1::2] = idx[1::2, ::-1]
        return idx.reshape(-1)
    if order == "hilbert":
        return _hilbert(height, width)
    check_power_of_two("image height", height)
    check_power_of_two("image width", width)
    rows, cols = height.bit_length() - 1, width.bit_length() - 1
    common = min(rows, cols)
    i, j = np.divmod(np.arange(height * width), width)
    key = np.zeros(height * width, np.int64)
    for bit in range(common):  # interleave: row bit above column bit, level by level
        key |= ((i >> bit) & 1) << (2 * bit + 1)
        key |= ((j >> bit) & 1) << (2 * bit)
    # a rectangle: past the square blocks, the longer side's remaining bits on top
    longer, extra = (i, rows) if rows > cols else (j, cols)
    for bit in range(common, extra):
        key |= ((longer >> bit) & 1) << (common + bit)
    perm = np.empty_like(key)
    perm[key] = idx.reshape(-1)
    return perm


def _hilbert(height: int, width: int) -> np.ndarray:
    """Row-major pixel index of every step of the Hilbert curve over a 2^m x 2^m square."""
    if height != width:
        raise ValueError(f"order: 'hilbert' needs a square image, got {height}x{width}")
    check_power_of_two("image side", height)
    side = height
    t = np.arange(side * side)
    x = np.zeros_like(t)
    y = np.zeros_like(t)
    s = 1
    while s < side:  # the classic d -> (x, y) walk, all steps at once
        rx = 1 & (t // 2)
        ry = 1 & (t ^ rx)
        flip = ry == 0
        swap_x = np.where(flip & (rx == 1), s - 1 - x, x)
        swap_y = np.where(flip & (rx == 1), s - 1 - y, y)
        x, y = np.where(flip, swap_y, swap_x), np.where(flip, swap_x, swap_y)
        x = x + s * rx
        y = y + s * ry
        t = t // 4
        s *= 2
    return y * side + x
