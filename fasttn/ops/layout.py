"""Site orders: how an (H, W) image becomes the chain of sites the hierarchy pools.

``row``    row-major; pairs pool along rows first and the top split is up/down.
``column`` column-major; the top split is left/right.
``z``      Z (Morton) order: every 2x2 window of every level is four consecutive sites, so
           2x2 pooling on the grid is window-4 pooling on the chain, and a level-l site is
           the 2^l x 2^l block it summarises. On a rectangle the square blocks come first,
           then the longer side's halvings.
"""
from __future__ import annotations

import numpy as np

from .._validate import check_choice, check_power_of_two

SITE_ORDERS = ("row", "column", "z")


def site_order(height: int, width: int, order: str) -> np.ndarray:
    """Permutation ``perm`` with ``chain = image.reshape(-1)[perm]``.

    Returns
    -------
    perm : (height * width,) int64
    """
    check_choice("order", order, SITE_ORDERS)
    idx = np.arange(height * width).reshape(height, width)
    if order == "row":
        return idx.reshape(-1)
    if order == "column":
        return idx.T.reshape(-1)
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
