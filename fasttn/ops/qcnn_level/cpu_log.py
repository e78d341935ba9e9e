"""CPU q-CNN level in the log domain: Numba passes around one BLAS GEMM each way.

Values are ``sign * exp(logabs)``. Batch norm is applied per site in a shifted frame
(``exp(-c)``, ``c`` the site's largest log-magnitude after scaling) so the GEMM always sees
numbers of order one; the pooling then adds the logs back. See ``reference.py`` for the spec.
"""
from __future__ import annotations

import math

import numpy as np

from ..._numba import njit, prange
from ...backend import kernel_threads
from .cpu import _chunks


@njit(parallel=True)
def log_column_stats(la, sg, eps, n_chunks):
    """``(log sqrt(var + eps), mean / sqrt(var + eps))`` per column of ``sg * exp(la)``."""
    n, d = la.shape
    step = (n + n_chunks - 1) // n_chunks
    part = np.full((n_chunks, d), -np.inf)
    for t in prange(n_chunks):
        for r in range(t * step, min(n, (t + 1) * step)):
            for i in range(d):
                if la[r, i] > part[t, i]:
                    part[t, i] = la[r, i]
    m = np.empty(d)
    for i in range(d):
        m[i] = part[:, i].max()
        if not np.isfinite(m[i]):
            m[i] = 0.0
    acc = np.zeros((n_chunks, d))
    for t in prange(n_chunks):
        for r in range(t * step, min(n, (t + 1) * step)):
            for i in range(d):
                acc[t, i] += sg[r, i] * math.exp(la[r, i] - m[i])
    m_hat = acc.sum(axis=0) / n
    acc[:] = 0.0
    for t in prange(n_chunks):
        for r in range(t * step, min(n, (t + 1) * step)):
            for i in range(d):
                dv = sg[r, i] * math.exp(la[r, i] - m[i]) - m_hat[i]
                acc[t, i] += dv * dv
    scaled = acc.sum(axis=0) / n + eps * np.exp(-2.0 * m)
    return m + 0.5 * np.log(scaled), m_hat / np.sqrt(scaled)


@njit(parallel=True)
def _shifted_bn(la, sg, log_w, sign_g, z, zp_hat, c):
    n, d = la.shape
    for r in prange(n):
        cr = 0.0
        for i in range(d):
            v = la[r, i] + log_w[i]
            if v > cr:
                cr = v
        c[r] = cr
        ez = math.exp(-cr)
        for i in range(d):
            zp_hat[r, i] = sign_g[i] * sg[r, i] * math.exp(la[r, i] + log_w[i] - cr) + z[i] * ez


@njit(parallel=True)
def _log_pool(xi_hat, c, window, out_la, out_sg):
    n_out, d = out_la.shape
    for r in prange(n_out):
        for j in range(d):
            acc = 0.0
            sgn = 1
            for k in range(window):
                v = xi_hat[window * r + k, j]
                acc += math.log(abs(v)) + c[window * r + k] if v != 0 else -np.inf
                if v < 0:
                    sgn = -sgn
                elif v == 0:
                    sgn = 0
            out_la[r, j] = acc
            out_sg[r, j] = sgn


@njit(parallel=True)
def _log_pool_backward(xi_hat, g_out, window, h):
    n_out, d = g_out.shape
    for r in prange(n_out):
        for k in range(window):
            for j in range(d):
                v = xi_hat[window * r + k, j]
                h[window * r + k, j] = g_out[r, j] / v if v != 0 else 0.0


@njit(parallel=True)
def _log_bn_backward(la, sg, ha, c, log_std, mean_std, log_w, sign_g, g_la, n_chunks):
    """``g_la = w x exp(-c) * ha``; returns float64 (g_beta, g_gamma) column sums."""
    n, d = la.shape
    step = (n + n_chunks - 1) // n_chunks
    part = np.zeros((n_chunks, 2, d))
    for t in prange(n_chunks):
        for r in range(t * step, min(n, (t + 1) * step)):
            ec = math.exp(-c[r])
            for i in range(d):
                # x_hat * exp(-c), never x_hat alone: it can be far out of range
                e = sg[r, i] * math.exp(la[r, i] - log_std[i] - c[r])
                part[t, 0, i] += ha[r, i] * ec
                part[t, 1, i] += ha[r, i] * (e - mean_std[i] * ec)
                g_la[r, i] = sign_g[i] * sg[r, i] * math.exp(la[r, i] + log_w[i] - c[r]) * ha[r, i]
    return part.sum(axis=0)


@njit(parallel=True)
def _log_bn_stat_correction(la, sg, g_la, gamma, log_std, mean_std, g_beta, g_gamma, n):
    rows, d = la.shape
    for r in prange(rows):
        for i in range(d):
            x_hat = sg[r, i] * math.exp(la[r, i] - log_std[i]) - mean_std[i]
            g_la[r, i] -= gamma[i] * (x_hat + mean_std[i]) * (g_beta[i] + x_hat * g_gamma[i]) / n


def qcnn_level_log_forward(logabs, sign, weight, gamma, beta, *, window, eps, training,
                           mean=None, var=None):
    with kernel_threads():
        return _log_forward(logabs, sign, weight, gamma, beta, window=window, eps=eps,
                            training=training, mean=mean, var=var)


def _log_forward(logabs, sign, weight, gamma, beta, *, window, eps, training, mean, var):
    b, s, d_in = logabs.shape
    d_out = weight.shape[0]
    la2 = logabs.reshape(b * s, d_in)
    sg2 = sign.reshape(b * s, d_in)
    if training:
        log_std, mean_std = log_column_stats(la2, sg2, eps, _chunks(b * s))
    else:
        var64 = np.asarray(var, np.float64) + eps
        log_std, mean_std = 0.5 * np.log(var64), np.asarray(mean, np.float64) / np.sqrt(var64)
    g64 = gamma.astype(np.float64)
    with np.errstate(divide="ignore"):
        log_w = np.log(np.abs(g64)) - log_std
    sign_g = np.sign(g64)
    z = beta.astype(np.float64) - g64 * mean_std
    zp_hat = np.empty_like(la2)
    c = np.empty(b * s, np.float64)
    _shifted_bn(la2, sg2, log_w, sign_g, z, zp_hat, c)
    xi_hat = zp_hat @ weight.T.astype(la2.dtype)
    n_out = b * s // window
    out_la = np.empty((n_out, d_out), la2.dtype)
    out_sg = np.empty((n_out, d_out), np.int8)
    _log_pool(xi_hat, c, window, out_la, out_sg)
    stats = (mean_std * np.exp(log_std), np.exp(2 * log_std) - eps)
    saved = (la2, sg2, log_std, mean_std, log_w, sign_g, c, zp_hat, xi_hat, weight, g64,
             window, training, (b, s, d_in))
    return (out_la.reshape(b, s // window, d_out), out_sg.reshape(b, s // window, d_out), saved,
            stats)


def qcnn_level_log_backward(saved, g_out):
    with kernel_threads():
        return _log_backward(saved, g_out)


def _log_backward(saved, g_out):
    (la2, sg2, log_std, mean_std, log_w, sign_g, c, zp_hat, xi_hat, weight, g64, window,
     training, shape) = saved
    dt = la2.dtype
    g2 = np.ascontiguousarray(g_out.reshape(-1, weight.shape[0]))
    h = np.empty_like(xi_hat)
    _log_pool_backward(xi_hat, g2, window, h)
    g_weight = h.T @ zp_hat
    ha = h @ weight.astype(dt)
    g_la = np.empty_like(la2)
    sums = _log_bn_backward(la2, sg2, ha, c, log_std, mean_std, log_w, sign_g, g_la,
                            _chunks(la2.shape[0]))
    g_beta, g_gamma = sums[0], sums[1]
    if training:
        _log_bn_stat_correction(la2, sg2, g_la, g64, log_std, mean_std, g_beta, g_gamma,
                                la2.shape[0])
    return g_la.reshape(shape), g_weight.astype(dt), g_gamma.astype(dt), g_beta.astype(dt)
