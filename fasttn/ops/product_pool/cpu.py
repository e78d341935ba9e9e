"""Numba kernels for product pooling: one pass over the input, threads over (batch, row)."""
from __future__ import annotations

import numpy as np

from ..._numba import njit, prange


@njit(parallel=True)
def _pool_chain(x, window, out):
    b_, s_, c_ = out.shape
    for bp in prange(b_ * s_):
        b = bp // s_
        p = bp - b * s_
        for c in range(c_):
            acc = x[b, window * p, c]
            for k in range(1, window):
                acc *= x[b, window * p + k, c]
            out[b, p, c] = acc


@njit(parallel=True)
def _pool_chain_backward(x, grad_out, window, grad):
    b_, s_, c_ = grad_out.shape
    for bp in prange(b_ * s_):
        b = bp // s_
        p = bp - b * s_
        for k in range(window):
            for c in range(c_):
                acc = grad_out[b, p, c]
                for m in range(window):
                    if m != k:
                        acc *= x[b, window * p + m, c]
                grad[b, window * p + k, c] = acc


@njit(parallel=True)
def _pool_grid(x, out):
    b_, h_, w_, c_ = out.shape
    for bi in prange(b_ * h_):
        b = bi // h_
        i = bi - b * h_
        for j in range(w_):
            for c in range(c_):
                out[b, i, j, c] = (x[b, 2 * i, 2 * j, c] * x[b, 2 * i, 2 * j + 1, c]
                                   * x[b, 2 * i + 1, 2 * j, c] * x[b, 2 * i + 1, 2 * j + 1, c])


@njit(parallel=True)
def _pool_grid_backward(x, grad_out, grad):
    b_, h_, w_, c_ = grad_out.shape
    for bi in prange(b_ * h_):
        b = bi // h_
        i = bi - b * h_
        for j in range(w_):
            for c in range(c_):
                g = grad_out[b, i, j, c]
                a = x[b, 2 * i, 2 * j, c]
                bb = x[b, 2 * i, 2 * j + 1, c]
                cc = x[b, 2 * i + 1, 2 * j, c]
                d = x[b, 2 * i + 1, 2 * j + 1, c]
                grad[b, 2 * i, 2 * j, c] = g * bb * cc * d
                grad[b, 2 * i, 2 * j + 1, c] = g * a * cc * d
                grad[b, 2 * i + 1, 2 * j, c] = g * a * bb * d
                grad[b, 2 * i + 1, 2 * j + 1, c] = g * a * bb * cc


@njit(parallel=True)
def _pool_chain_log(logabs, sign, window, out_logabs, out_sign):
    b_, s_, c_ = out_logabs.shape
    for bp in prange(b_ * s_):
        b = bp // s_
        p = bp - b * s_
        for c in range(c_):
            la = logabs[b, window * p, c]
            sg = sign[b, window * p, c]
            for k in range(1, window):
                la += logabs[b, window * p + k, c]
                sg *= sign[b, window * p + k, c]
            out_logabs[b, p, c] = la
            out_sign[b, p, c] = sg


@njit(parallel=True)
def _pool_grid_log(logabs, sign, out_logabs, out_sign):
    b_, h_, w_, c_ = out_logabs.shape
    for bi in prange(b_ * h_):
        b = bi // h_
        i = bi - b * h_
        for j in range(w_):
            for c in range(c_):
                out_logabs[b, i, j, c] = (logabs[b, 2 * i, 2 * j, c] + logabs[b, 2 * i, 2 * j + 1, c]
                                          + logabs[b, 2 * i + 1, 2 * j, c]
                                          + logabs[b, 2 * i + 1, 2 * j + 1, c])
                out_sign[b, i, j, c] = (sign[b, 2 * i, 2 * j, c] * sign[b, 2 * i, 2 * j + 1, c]
                                        * sign[b, 2 * i + 1, 2 * j, c]
                                        * sign[b, 2 * i + 1, 2 * j + 1, c])


def product_pool(x: np.ndarray, window: int) -> np.ndarray:
    if x.ndim == 3:
        out = np.empty((x.shape[0], x.shape[1] // window, x.shape[2]), x.dtype)
        _pool_chain(x, window, out)
    else:
        out = np.empty((x.shape[0], x.shape[1] // 2, x.shape[2] // 2, x.shape[3]), x.dtype)
        _pool_grid(x, out)
    return out


def product_pool_backward(x: np.ndarray, grad_out: np.ndarray, window: int) -> np.ndarray:
    grad = np.empty_like(x)
    if x.ndim == 3:
        _pool_chain_backward(x, grad_out, window, grad)
    else:
        _pool_grid_backward(x, grad_out, grad)
    return grad


def product_pool_log(logabs: np.ndarray, sign: np.ndarray, window: int):
    if logabs.ndim == 3:
        shape = (logabs.shape[0], logabs.shape[1] // window, logabs.shape[2])
    else:
        shape = (logabs.shape[0], logabs.shape[1] // 2, logabs.shape[2] // 2, logabs.shape[3])
    out_logabs = np.empty(shape, logabs.dtype)
    out_sign = np.empty(shape, sign.dtype)
    if logabs.ndim == 3:
        _pool_chain_log(logabs, sign, window, out_logabs, out_sign)
    else:
        _pool_grid_log(logabs, sign, out_logabs, out_sign)
    return out_logabs, out_sign
