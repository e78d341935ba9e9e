"""Isometric (Stiefel-manifold) constraints for tensor-network weights.

A tensor is viewed as a matrix from its input legs to its output legs; it is isometric when
that matrix has orthonormal columns (or, if it has fewer rows than columns, orthonormal
rows). After each optimiser step the weights are put back on the manifold by the polar
retraction: the nearest such matrix in the Frobenius norm, ``U V^T`` from the thin SVD
(LAPACK through NumPy, cuSOLVER through CuPy for device arrays).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import array_module


def polar_retract(a: Any) -> Any:
    """The isometry nearest to the matrix ``a`` (float64 SVD, returned in ``a``'s dtype, on
    ``a``'s device)."""
    xp = array_module(a)
    a = xp.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"a: expected a matrix, got shape {a.shape}")
    u, _, vt = xp.linalg.svd(a.astype(np.float64), full_matrices=False)
    return (u @ vt).astype(a.dtype)


def isometry_error(a: Any) -> float:
    """``max |A^T A - I|`` (or ``|A A^T - I|`` for a wide matrix), in float64."""
    a = np.asarray(a, np.float64)
    g = a.T @ a if a.shape[0] >= a.shape[1] else a @ a.T
    return float(np.abs(g - np.eye(g.shape[0])).max())
