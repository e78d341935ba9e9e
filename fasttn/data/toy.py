"""The small synthetic tasks of the MPO-network paper (Jahromi & Orus, Secs. IV-V), seeded.

Features lie in [0, 1] (blobs, spiral) or [0, 2 pi] (sine) as in the paper's tables.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from .._validate import check_positive_int

__all__ = ["gaussian_blobs", "spiral", "noisy_line", "noisy_sine"]


def gaussian_blobs(n_samples: int = 600, seed: int = 0, std: float = 0.05
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Two isotropic Gaussian clusters in the unit square; labels 0/1 in equal numbers."""
    n = check_positive_int("n_samples", n_samples)
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.2, 0.8, (2, 2))
    while np.linalg.norm(centres[0] - centres[1]) < 0.4:  # two clusters, 4 std apart
        centres = rng.uniform(0.2, 0.8, (2, 2))
    y = np.arange(n) % 2
    X = centres[y] + std * rng.standard_normal((n, 2))
    perm = rng.permutation(n)
    return np.clip(X[perm], 0, 1), y[perm]


def spiral(n_samples: int = 600, n_classes: int = 3, seed: int = 0, noise: float = 0.2
           ) -> Tuple[np.ndarray, np.ndarray]:
    """Interleaved spiral arms, one class each, rescaled into the unit square."""
    n = check_positive_int("n_samples", n_samples)
    k = check_positive_int("n_classes", n_classes)
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    r = rng.uniform(0.0, 1.0, n)
    theta = 4.0 * r + y * (2 * np.pi / k) + noise * rng.standard_normal(n)
    X = np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1)
    X = (X + 1.0) / 2.0
    perm = rng.permutation(n)
    return X[perm], y[perm]


def noisy_line(n_samples: int = 400, a: float = 0.55, b: float = 0.20, noise: float = 0.05,
               seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """``y = a x + b + noise`` for ``x`` uniform in [0, 1]; ``X`` has shape ``(n, 1)``."""
    n = check_positive_int("n_samples", n_samples)
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, n)
    return x[:, None], a * x + b + noise * rng.standard_normal(n)


def noisy_sine(n_samples: int = 400, noise: float = 0.1, seed: int = 0
               ) -> Tuple[np.ndarray, np.ndarray]:
    """``y = sin(x) + noise`` for ``x`` uniform in [0, 2 pi]; ``X`` has shape ``(n, 1)``."""
    n = check_positive_int("n_samples", n_samples)
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 2 * np.pi, n)
    return x[:, None], np.sin(x) + noise * rng.standard_normal(n)
