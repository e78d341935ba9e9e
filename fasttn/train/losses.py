"""Losses on class scores: value and gradient with respect to the scores, batch-averaged.

Written against the array module of the scores, so scores on a device stay there: only the
loss value (a Python float) comes back to the host. Labels belong on the scores' device.
"""
from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from ..backend import array_module

LOSSES = ("square", "cross_entropy")


def square_loss(scores: Any, y: Any) -> Tuple[float, Any]:
    """q-CNN eq. 48: mean over the batch of sum_y (alpha_y - delta_{y, label})^2.

    scores : (batch, n_classes); y : (batch,) int. Returns ``(loss, dL/dscores)``.
    """
    xp = array_module(scores)
    y = xp.asarray(y)
    diff = scores.astype(np.float64)
    diff[xp.arange(len(y)), y] -= 1.0
    b = len(y)
    return float(xp.sum(diff * diff) / b), (2.0 / b) * diff


def cross_entropy_loss(scores: Any, y: Any) -> Tuple[float, Any]:
    """Softmax cross-entropy, mean over the batch (max-shifted, so any score is safe)."""
    xp = array_module(scores)
    y = xp.asarray(y)
    s = scores.astype(np.float64)
    s = s - s.max(axis=1, keepdims=True)
    log_z = xp.log(xp.sum(xp.exp(s), axis=1))
    b = len(y)
    rows = xp.arange(b)
    loss = float(xp.mean(log_z - s[rows, y]))
    p = xp.exp(s - log_z[:, None])
    p[rows, y] -= 1.0
    return loss, p / b


def n_correct(scores: Any, y: Any) -> int:
    """How many rows of ``scores`` have their largest entry at the label (one scalar back
    from a device)."""
    xp = array_module(scores)
    return int(xp.sum(xp.argmax(scores, axis=1) == y))


def loss_fn(name: str):
    return {"square": square_loss, "cross_entropy": cross_entropy_loss}[name]
