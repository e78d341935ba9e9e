"""Compiled kernel that draws digits onto canvases (the inner loop of the needle generator)."""
from __future__ import annotations

import numpy as np

from .._numba import njit


@njit
def render_canvases(out: np.ndarray, digits: np.ndarray, image_of: np.ndarray,
                    which: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
    """Add digits onto zeroed canvases, clipping the sums at 1.

    Parameters
    ----------
    out : (b, S, S) float32, zero on entry; written in place.
    digits : (n, h, w) float32 in [0, 1], the digit stack.
    image_of, which, rows, cols : (p,) int64 placements, in drawing order: digit
        ``digits[which[k]]`` goes to canvas ``image_of[k]`` with its top-left corner at
        ``(rows[k], cols[k])``. Every window must lie inside the canvas (not checked here).

    Notes
    -----
    The protocol adds all digits and then clips at 1. With non-negative digits, clipping after
    every addition gives the same float32 values (once a sum reaches 1 it stays clipped, below 1
    nothing is clipped), in one pass. Additions run in placement order, so results are the same
    on every machine.
    """
    h = digits.shape[1]
    w = digits.shape[2]
    one = np.float32(1.0)
    for k in range(which.shape[0]):
        b = image_of[k]
        d = which[k]
        r0 = rows[k]
        c0 = cols[k]
        for i in range(h):
            # 1-D row views let LLVM vectorise the inner loop
            canvas_row = out[b, r0 + i, c0:c0 + w]
            digit_row = digits[d, i]
            for j in range(w):
                s = canvas_row[j] + digit_row[j]
                canvas_row[j] = s if s < one else one
