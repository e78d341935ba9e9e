"""Losses on class scores: value and gradient with respect to the scores, batch-averaged."""
from __future__ import annotations

from typing import Tuple

import numpy as np

LOSSES = ("square", "cross_entropy")


def square_loss(scores: np.ndarray, y: np.ndarray) -> Tuple[float, np.ndarray]:
    """q-CNN eq. 48: mean over the batch of sum_y (alpha_y - delta_{y, label})^2.

    scores : (batch, n_classes); y : (batch,) int. Returns ``(loss, dL/dscores)``.
    """
    diff = scores.astype(np.float64)
    diff[np.arange(len(y)), y] -= 1.0
    b = len(y)
    return float(np.sum(diff * diff) / b), (2.0 / b) * diff


def cross_entropy_loss(scores: np.ndarray, y: np.ndarray) -> Tuple[float, np.ndarray]:
    """Softmax cross-entropy, mean over the batch (max-shifted, so any score is safe)."""
    s = scores.astype(np.float64)
    s = s - s.max(axis=1, keepdims=True)
    log_z = np.log(np.sum(np.exp(s), axis=1))
    b = len(y)
    loss = float(np.mean(log_z - s[np.arange(b), y]))
    p = np.exp(s - log_z[:, None])
    p[np.arange(b), y] -= 1.0
    return loss, p / b


def loss_fn(name: str):
    return {"square": square_loss, "cross_entropy": cross_entropy_loss}[name]
