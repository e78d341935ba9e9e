"""CPU q-CNN level: BLAS for the 1x1 convolution, Numba for everything around it.

Batch norm is folded into the convolution (``A' = A diag(w)``, bias ``c = A z``) so the
convolution is one GEMM over all (batch x site) rows; one Numba pass then adds the bias,
multiplies each window and gathers the next level's batch statistics (float64 sums per
thread) while the values are in cache. The backward needs two GEMMs and two Numba passes;
the batch-norm parameter gradients come from the small GEMM result (``dA`` and column sums),
never from an extra pass over the data.
"""
from __future__ import annotations

import numpy as np

from ..._numba import njit, prange
from ...backend import num_threads

_ROWS_PER_CHUNK = 256


def _chunks(n_rows: int) -> int:
    return max(1, min(4 * num_threads(), -(-n_rows // _ROWS_PER_CHUNK)))


@njit(parallel=True)
def column_stats(x2, n_chunks):
    """Per-column mean and biased variance of ``x2 : (rows, cols)`` (float64, two-pass)."""
    n, d = x2.shape
    part = np.zeros((n_chunks, d))
    step = (n + n_chunks - 1) // n_chunks
    for t in prange(n_chunks):
        for r in range(t * step, min(n, (t + 1) * step)):
            for i in range(d):
                part[t, i] += x2[r, i]
    mean = part.sum(axis=0) / n
    part[:] = 0.0
    for t in prange(n_chunks):
        for r in range(t * step, min(n, (t + 1) * step)):
            for i in range(d):
                dv = x2[r, i] - mean[i]
                part[t, i] += dv * dv
    return mean, part.sum(axis=0) / n


@njit(parallel=True, fastmath=True)
def _pool_bias_stats(xi, bias, window, out, n_chunks):
    """``out[r] = prod_k (xi[window r + k] + bias)``; returns float64 (sum, sum of squares)."""
    n_out, d = out.shape
    part = np.zeros((n_chunks, 2, d))
    step = (n_out + n_chunks - 1) // n_chunks
    for t in prange(n_chunks):
        for r in range(t * step, min(n_out, (t + 1) * step)):
            base = window * r
            for j in range(d):
                acc = xi[base, j] + bias[j]
                for k in range(1, window):
                    acc *= xi[base + k, j] + bias[j]
                out[r, j] = acc
                part[t, 0, j] += acc
                part[t, 1, j] += acc * acc
    return part.sum(axis=0)


@njit(parallel=True, fastmath=True)
def _pool_bias_backward(xi, bias, g_out, window, g_xi, n_chunks):
    """Gradient of the biased window product; returns the float64 column sums of ``g_xi``."""
    n_out, d = g_out.shape
    part = np.zeros((n_chunks, d))
    step = (n_out + n_chunks - 1) // n_chunks
    for t in prange(n_chunks):
        for r in range(t * step, min(n_out, (t + 1) * step)):
            base = window * r
            for k in range(window):
                for j in range(d):
                    acc = g_out[r, j]
                    for m in range(window):
                        if m != k:
                            acc *= xi[base + m, j] + bias[j]
                    g_xi[base + k, j] = acc
                    part[t, j] += acc
    return part.sum(axis=0)


@njit(parallel=True, fastmath=True)
def _bn_input_correction(g_x, x, scale, shift):
    """``g_x -= scale * x + shift`` column-wise: the batch-statistics part of the BN backward."""
    n, d = g_x.shape
    for r in prange(n):
        for i in range(d):
            g_x[r, i] -= scale[i] * x[r, i] + shift[i]


def qcnn_level_forward(x, weight, gamma, beta, *, window, eps, training, mean=None, var=None,
                       collect_stats=True):
    """See :func:`fasttn.ops.qcnn_level.qcnn_level_forward`."""
    b, s, d_in = x.shape
    d_out = weight.shape[0]
    x2 = x.reshape(b * s, d_in)
    if training and mean is None:
        mean, var = column_stats(x2, _chunks(b * s))
    mean = np.asarray(mean, np.float64)
    inv_std = 1.0 / np.sqrt(np.asarray(var, np.float64) + eps)
    w = gamma.astype(np.float64) * inv_std
    z = beta.astype(np.float64) - mean * w
    a_w = (weight * w).astype(x.dtype)
    bias = (weight.astype(np.float64) @ z).astype(x.dtype)
    xi = x2 @ a_w.T
    n_out = b * s // window
    out = np.empty((n_out, d_out), x.dtype)
    sums = _pool_bias_stats(xi, bias, window, out, _chunks(n_out))
    stats = None
    if collect_stats:
        out_mean = sums[0] / n_out
        stats = (out_mean, np.maximum(sums[1] / n_out - out_mean ** 2, 0.0))
    saved = (x2, xi, bias, a_w, weight, w, z, mean, inv_std, window, training, (b, s, d_in))
    return out.reshape(b, s // window, d_out), saved, stats


def qcnn_level_backward(saved, g_out):
    x2, xi, bias, a_w, weight, w, z, mean, inv_std, window, training, shape = saved
    n, d_in = x2.shape
    g2 = np.ascontiguousarray(g_out.reshape(-1, weight.shape[0]))
    g_xi = np.empty_like(xi)
    s = _pool_bias_backward(xi, bias, g2, window, g_xi, _chunks(g2.shape[0]))
    gram = (g_xi.T @ x2).astype(np.float64)          # sum_r dL/dxi_r x_r^T
    g_x = g_xi @ a_w                                 # w * dL/dz'
    w64 = weight.astype(np.float64)
    g_weight = gram * w + np.outer(s, z)             # z' = w x + z
    g_beta = w64.T @ s                               # sum_r dL/dz'_r
    q = np.sum(w64 * gram, axis=0)                   # sum_r dL/dz'_r * x_r
    g_gamma = (q - mean * g_beta) * inv_std
    if training:
        scale = w * inv_std * g_gamma / n
        shift = w * g_beta / n - scale * mean
        _bn_input_correction(g_x, x2, scale.astype(x2.dtype), shift.astype(x2.dtype))
    dt = x2.dtype
    return (g_x.reshape(shape), g_weight.astype(dt), g_gamma.astype(dt), g_beta.astype(dt))
