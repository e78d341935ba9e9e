"""NumPy specification of product pooling: the same-channel product over a window.

q-CNN eq. 8: zeta_{p,i} = xi_{2p-1,i} * xi_{2p,i}. Two layouts:

* 1D chain, ``x : (batch, sites, channels)``: windows of ``window`` consecutive sites
  (pairs by default), ``out : (batch, sites // window, channels)``.
* 2D grid, ``x : (batch, height, width, channels)``: 2x2 windows,
  ``out : (batch, height // 2, width // 2, channels)``.

Log domain: a value is held as ``sign * exp(logabs)``; the product of a window is the sum
of its ``logabs`` and the product of its signs, so depth never under- or overflows.
"""
from __future__ import annotations

import numpy as np


def _windows(x: np.ndarray, window: int) -> np.ndarray:
    """View ``x`` with the members of each window on one axis (axis -2)."""
    if x.ndim == 3:
        b, s, c = x.shape
        return x.reshape(b, s // window, window, c)
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(
        b, h // 2, w // 2, 4, c)


def _unwindows(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Inverse of :func:`_windows`."""
    if len(shape) == 3:
        return g.reshape(shape)
    b, h, w, c = shape
    return g.reshape(b, h // 2, w // 2, 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(shape)


def product_pool(x: np.ndarray, window: int = 2) -> np.ndarray:
    """Same-channel product over non-overlapping windows (pairs on a chain, 2x2 on a grid)."""
    return np.prod(_windows(x, window), axis=-2)


def product_pool_backward(x: np.ndarray, grad_out: np.ndarray, window: int = 2) -> np.ndarray:
    """Gradient of ``sum(grad_out * product_pool(x))`` with respect to ``x``.

    d/dx_k prod_m x_m = prod_{m != k} x_m, written without division so zeros are exact.
    """
    xw = _windows(x, window)
    n = xw.shape[-2]
    grad = np.empty_like(xw)
    for k in range(n):
        others = np.prod(np.delete(xw, k, axis=-2), axis=-2)
        grad[..., k, :] = grad_out * others
    return _unwindows(grad, x.shape)


def product_pool_log(logabs: np.ndarray, sign: np.ndarray, window: int = 2):
    """Log-domain product pooling: ``(sum of logabs, product of signs)`` over each window."""
    return (np.sum(_windows(logabs, window), axis=-2),
            np.prod(_windows(sign, window), axis=-2).astype(sign.dtype))


def product_pool_log_backward(grad_out: np.ndarray, shape: tuple, window: int = 2) -> np.ndarray:
    """Gradient of ``sum(grad_out * logabs_out)`` with respect to ``logabs``: a broadcast."""
    n = window if len(shape) == 3 else 4
    g = np.repeat(grad_out[..., None, :], n, axis=-2)
    return _unwindows(g, shape)
