"""Scanning a block over every position of a grid of sites, and pooling the class scores of
the positions (the read-out of a detector of small objects in large images).

``scan_windows`` cuts every ``s x s`` window of sites at stride one site out of a grid
(``(n, g, g, p) -> (n, P, P, s, s, p)``, ``P = g - s + 1``), so that one block can be
contracted at every position; ``scan_windows_backward`` adds the windows' gradients back
onto the grid. ``lse_pool`` pools per-position class scores ``z (n, R, C)`` into per-image
scores ``log(mean_r exp z[:, r, c])``: a smooth maximum over positions (an object anywhere
raises its class's score), divided by the number of positions so that a score keeps its
meaning on any canvas size. ``translate`` shows an image to the fixed grid of positions at
another offset, and ``mean_log_softmax`` averages the predictions of such copies. Plain
NumPy (or CuPy) array expressions: these are the reference and the fast path at once.
"""
from __future__ import annotations

from typing import Any, Sequence, Tuple

import numpy as np

from ..backend import array_module


def scan_windows(x: Any, s: int) -> Any:
    """Every ``s x s`` window of the sites ``x (n, g, g, p)`` at stride 1:
    ``(n, P, P, s, s, p)`` with ``out[:, i, j, a, b] = x[:, i + a, j + b]``, a new array."""
    xp = array_module(x)
    n, g, g2, p = x.shape
    if g != g2 or not 1 <= s <= g:
        raise ValueError(f"x: expected a square grid of at least {s}x{s} sites, got "
                         f"{g}x{g2}")
    side = g - s + 1
    out = xp.empty((n, side, side, s, s, p), x.dtype)
    for a in range(s):
        for b in range(s):
            out[:, :, :, a, b] = x[:, a:a + side, b:b + side]
    return out


def scan_windows_backward(g_windows: Any, g: int) -> Any:
    """``dL/dx (n, g, g, p)`` from the windows' gradients ``(n, P, P, s, s, p)``: every
    site receives the sum over the windows that hold it."""
    xp = array_module(g_windows)
    n, side, _, s, _, p = g_windows.shape
    g_x = xp.zeros((n, g, g, p), g_windows.dtype)
    for a in range(s):
        for b in range(s):
            g_x[:, a:a + side, b:b + side] += g_windows[:, :, :, a, b]
    return g_x


def lse_pool_forward(z: Any) -> Tuple[Any, Any]:
    """``(scores (n, C), saved)`` with ``scores = log(mean over r of exp(z[:, r]))`` for
    per-position scores ``z (n, R, C)``, computed in float64 from the maximum down."""
    xp = array_module(z)
    z = z.astype(xp.float64)
    top = z.max(axis=1, keepdims=True)
    e = xp.exp(z - top)
    total = e.sum(axis=1)
    scores = top[:, 0] + xp.log(total) - np.log(z.shape[1])
    return scores, e / total[:, None]


def lse_pool_backward(saved: Any, g_scores: Any) -> Any:
    """``dL/dz (n, R, C)`` from ``dL/dscores (n, C)``: each position's share of the pool
    (its softmax weight over positions) times the score's gradient."""
    return saved * g_scores[:, None, :]


def translate(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``images (n, H, W)`` moved down by ``dy`` and right by ``dx`` whole pixels (negative:
    up, left); what enters from outside is zero (background). Read through a fixed grid of
    regions, a shifted copy is the image seen by the grid at another offset."""
    n, h, w = images.shape
    out = np.zeros_like(images)
    if abs(dy) < h and abs(dx) < w:
        out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            images[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def mean_log_softmax(scores: Sequence[np.ndarray]) -> np.ndarray:
    """The mean over copies of the log-softmax of their class scores ``(n, C)`` each:
    one image's scores from several views of it (a normalised geometric mean of the copies'
    probabilities; float64)."""
    from scipy.special import log_softmax  # scipy: only where views are averaged

    return np.mean([log_softmax(np.asarray(z, dtype=np.float64), axis=1) for z in scores],
                   axis=0)
