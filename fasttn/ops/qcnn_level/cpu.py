"""CPU q-CNN level: one Numba pass per direction, the 1x1 convolution done by BLAS inside it.

Batch norm is folded into the convolution (``A' = A diag(w)``, bias ``c = A z``), so the
convolution is a GEMM over (batch x site) rows. Rows are cut into chunks small enough for
the core's L2 cache; for each chunk a thread runs the chunk's GEMM (single-threaded BLAS,
see :func:`fasttn.backend.kernel_threads`), then adds the bias, multiplies each window and
gathers the next level's batch statistics while the chunk is still in cache. The backward
does the same with the window-product gradient, the two GEMMs and per-chunk partial sums,
so the batch-norm parameter gradients come from small reductions, never an extra data pass.
"""
from __future__ import annotations

import math

import numpy as np

from ..._numba import njit, prange
from ...backend import PARTITION_THREADS, kernel_threads, workspace

_CHUNK_BYTES = 256 * 1024


_MIN_CHUNK_ROWS = 64  # below this a chunk's GEMM is all call overhead

# OpenBLAS runs products with m*n*k at most 100^3 through its small-matrix kernels, which
# skip packing: on the skinny level shapes (k = 18..72) they reach 1.3-2.5x the rate of the
# packed path that a whole chunk's product takes. Each chunk's products are therefore cut
# into row blocks under that size.
_SMALL_GEMM_MNK = 100 ** 3


def _gemm_rows(d_in: int, d_out: int) -> int:
    """Rows per BLAS call so that ``rows * d_in * d_out`` stays on the small-matrix path."""
    return max(8, _SMALL_GEMM_MNK // max(1, d_in * d_out))


def _rows_per_chunk(n_rows: int, width: int, itemsize: int, window: int) -> int:
    """Rows per chunk: a few hundred KiB of output, a multiple of the window, and two
    chunks per thread (of :data:`~fasttn.backend.PARTITION_THREADS`, not of those running:
    the per-chunk sums must not depend on the thread count) when that leaves each at least
    ``_MIN_CHUNK_ROWS`` rows."""
    rows = max(window, _CHUNK_BYTES // max(1, width * itemsize))
    rows = min(rows, max(window, _MIN_CHUNK_ROWS, -(-n_rows // (2 * PARTITION_THREADS))))
    return max(window, rows - rows % window)


def _chunks(n_rows: int) -> int:
    """Chunks of the column statistics' partial sums: a function of the size alone."""
    return max(1, min(4 * PARTITION_THREADS, -(-n_rows // 256)))


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


# The window is branched on outside the channel loop, never looped over inside it: a
# runtime-length inner loop keeps LLVM from vectorising the channel loop (3-4x slower).
@njit(parallel=True, fastmath=True)
def _level_forward(x2, a_w_t, bias, window, rows, gemm_rows, xi, out):
    """``xi = x2 @ a_w_t``; ``out[r] = prod_k (xi[window r + k] + bias)``; float64 sums of
    ``out`` and ``out**2`` per column."""
    n = x2.shape[0]
    d = a_w_t.shape[1]
    n_chunks = (n + rows - 1) // rows
    part = np.zeros((n_chunks, 2, d))
    for t in prange(n_chunks):
        a = t * rows
        b = min(n, a + rows)
        xc = xi[a:b]
        for g0 in range(a, b, gemm_rows):
            g1 = min(b, g0 + gemm_rows)
            np.dot(x2[g0:g1], a_w_t, xi[g0:g1])
        s0 = np.zeros(d)
        s1 = np.zeros(d)
        if window == 1:
            for r in range(b - a):
                for j in range(d):
                    acc = xc[r, j] + bias[j]
                    out[a + r, j] = acc
                    s0[j] += acc
                    s1[j] += acc * acc
        elif window == 2:
            for r in range((b - a) // 2):
                for j in range(d):
                    acc = (xc[2 * r, j] + bias[j]) * (xc[2 * r + 1, j] + bias[j])
                    out[a // 2 + r, j] = acc
                    s0[j] += acc
                    s1[j] += acc * acc
        else:
            for r in range((b - a) // 4):
                for j in range(d):
                    acc = ((xc[4 * r, j] + bias[j]) * (xc[4 * r + 1, j] + bias[j])
                           * (xc[4 * r + 2, j] + bias[j]) * (xc[4 * r + 3, j] + bias[j]))
                    out[a // 4 + r, j] = acc
                    s0[j] += acc
                    s1[j] += acc * acc
        part[t, 0] = s0
        part[t, 1] = s1
    return part.sum(axis=0)


@njit(parallel=True, fastmath=True)
def _level_backward(x2, xi, bias, g_out, c_scale, c_shift, window, a_w, rows, gemm_rows,
                    g_x, need_g_x, sums, grams):
    """Window-product gradient, ``g_x = g_xi @ a_w`` and per-chunk ``g_xi^T x2`` and column
    sums of ``g_xi``, chunk by chunk; ``g_xi`` never leaves the cache.

    ``g_out`` arrives without the next level's batch-statistics term; it is applied here as
    ``g_out - (c_scale * out + c_shift)`` with ``out`` recomputed from ``xi`` (zeros: none), so
    that term never costs a pass over memory of its own. Fills ``sums[t]`` and ``grams[t]``
    for each chunk ``t`` (reduced by :func:`_weight_grads`)."""
    n, d_in = x2.shape
    d = a_w.shape[0]
    n_chunks = (n + rows - 1) // rows
    for t in prange(n_chunks):
        a = t * rows
        b = min(n, a + rows)
        xc = xi[a:b]
        g_xi = np.empty((b - a, d), x2.dtype)
        s0 = np.zeros(d)
        if window == 1:
            for r in range(b - a):
                for j in range(d):
                    g = g_out[a + r, j] - (c_scale[j] * (xc[r, j] + bias[j]) + c_shift[j])
                    g_xi[r, j] = g
                    s0[j] += g
        elif window == 2:
            for r in range((b - a) // 2):
                i0 = 2 * r
                for j in range(d):
                    v0 = xc[i0, j] + bias[j]
                    v1 = xc[i0 + 1, j] + bias[j]
                    g = g_out[a // 2 + r, j] - (c_scale[j] * (v0 * v1) + c_shift[j])
                    g0 = g * v1
                    g1 = g * v0
                    g_xi[i0, j] = g0
                    g_xi[i0 + 1, j] = g1
                    s0[j] += g0 + g1
        else:
            for r in range((b - a) // 4):
                i0 = 4 * r
                for j in range(d):
                    v0 = xc[i0, j] + bias[j]
                    v1 = xc[i0 + 1, j] + bias[j]
                    v2 = xc[i0 + 2, j] + bias[j]
                    v3 = xc[i0 + 3, j] + bias[j]
                    g = g_out[a // 4 + r, j] - (c_scale[j] * (v0 * v1 * v2 * v3) + c_shift[j])
                    g01 = g * v2 * v3
                    g23 = g * v0 * v1
                    g_xi[i0, j] = g01 * v1
                    g_xi[i0 + 1, j] = g01 * v0
                    g_xi[i0 + 2, j] = g23 * v3
                    g_xi[i0 + 3, j] = g23 * v2
                    s0[j] += g01 * (v0 + v1) + g23 * (v2 + v3)
        sums[t] = s0
        gram = grams[t]
        part = np.empty_like(gram)
        for g0 in range(0, b - a, gemm_rows):
            g1 = min(b - a, g0 + gemm_rows)
            if need_g_x:
                np.dot(g_xi[g0:g1], a_w, g_x[a + g0:a + g1])
            if g0 == 0:
                np.dot(g_xi[g0:g1].T, x2[a + g0:a + g1], gram)
            else:
                np.dot(g_xi[g0:g1].T, x2[a + g0:a + g1], part)
                gram += part


@njit
def _weight_grads(sums, grams, weight, w, z, mean, inv_std, n_rows, g_weight, g_gamma, g_beta,
                  c_scale, c_shift):
    """Chunk partials -> parameter gradients, in place, in float64 then the weight's dtype:
    with ``gram = sum_t grams[t]``, ``s = sum_t sums[t]`` and ``z' = w x + z`` the
    normalised input, ``g_weight = gram diag(w) + s z^T``, ``g_beta = sum_r dL/dz'_r =
    weight^T s``, ``g_gamma = (q - mean g_beta) / std`` with ``q = sum_r dL/dz'_r x_r``.
    With ``c_scale`` of ``d_in`` entries, also the batch-statistics term of the input
    gradient, ``-(c_scale x + c_shift)``, for statistics over ``n_rows`` rows."""
    n_chunks, d, d_in = grams.shape
    s = np.zeros(d)
    for t in range(n_chunks):
        s += sums[t]
    gb = np.zeros(d_in)
    q = np.zeros(d_in)
    row = np.empty(d_in)
    for j in range(d):
        row[:] = 0.0
        for t in range(n_chunks):
            for i in range(d_in):
                row[i] += grams[t, j, i]
        for i in range(d_in):
            g_weight[j, i] = row[i] * w[i] + s[j] * z[i]
            gb[i] += np.float64(weight[j, i]) * s[j]
            q[i] += np.float64(weight[j, i]) * row[i]
    for i in range(d_in):
        gg = (q[i] - mean[i] * gb[i]) * inv_std[i]
        g_gamma[i] = gg
        g_beta[i] = gb[i]
        if c_scale.shape[0] == d_in:
            sc = w[i] * inv_std[i] * gg / n_rows
            c_scale[i] = sc
            c_shift[i] = w[i] * gb[i] / n_rows - sc * mean[i]


_NO_SCALE = -1e300  # log of zero, finite: fastmath code may not meet infinities


@njit(parallel=True, fastmath=True)
def _level_scaled_forward(x2, logscale, a_w_t, w, log_z_max, bias, window, rows, gemm_rows,
                          out, out_logscale):
    # ``bias`` arrives divided by max|z| (so ``shift * bias`` never forms exp(-c) alone)
    """The scaled-domain level (``reference.qcnn_level_scaled_forward``), chunk by chunk:
    ``xi = x2 @ a_w_t`` in cache, each row moved into its shifted frame, pooled, and each
    output row divided by its largest magnitude."""
    n, d_in = x2.shape
    d = a_w_t.shape[1]
    n_chunks = (n + rows - 1) // rows
    for t in prange(n_chunks):
        a = t * rows
        b = min(n, a + rows)
        xi = np.empty((b - a, d), x2.dtype)
        for g0 in range(0, b - a, gemm_rows):
            g1 = min(b - a, g0 + gemm_rows)
            np.dot(x2[a + g0:a + g1], a_w_t, xi[g0:g1])
        # float64: alpha = exp(logscale - c) and exp(log_z_max - c) are at most 1 / max|w x|
        # and 1, but the former alone may exceed the float32 range
        alpha = np.empty(b - a)
        shift = np.empty(b - a)
        c = np.empty(b - a)
        for r in range(a, b):
            mx = 0.0
            for i in range(d_in):
                mx = max(mx, abs(w[i] * x2[r, i]))
            cr = log_z_max
            if mx > 0.0:
                cr = max(cr, logscale[r] + math.log(mx))
            if cr <= _NO_SCALE:
                cr = 0.0
            c[r - a] = cr
            alpha[r - a] = math.exp(logscale[r] - cr)
            shift[r - a] = math.exp(log_z_max - cr) if log_z_max > _NO_SCALE else 0.0
        for p in range(a // window, b // window):
            m = 0.0
            r0 = window * p - a
            if window == 1:
                for j in range(d):
                    acc = alpha[r0] * xi[r0, j] + shift[r0] * bias[j]
                    out[p, j] = acc
                    m = max(m, abs(acc))
            elif window == 2:
                for j in range(d):
                    acc = ((alpha[r0] * xi[r0, j] + shift[r0] * bias[j])
                           * (alpha[r0 + 1] * xi[r0 + 1, j] + shift[r0 + 1] * bias[j]))
                    out[p, j] = acc
                    m = max(m, abs(acc))
            else:
                for j in range(d):
                    acc = ((alpha[r0] * xi[r0, j] + shift[r0] * bias[j])
                           * (alpha[r0 + 1] * xi[r0 + 1, j] + shift[r0 + 1] * bias[j])
                           * (alpha[r0 + 2] * xi[r0 + 2, j] + shift[r0 + 2] * bias[j])
                           * (alpha[r0 + 3] * xi[r0 + 3, j] + shift[r0 + 3] * bias[j]))
                    out[p, j] = acc
                    m = max(m, abs(acc))
            ls = 0.0
            for k in range(window):
                ls += c[r0 + k]
            if m > 0.0:
                inv = 1.0 / m
                for j in range(d):
                    out[p, j] *= inv
                ls += math.log(m)
            out_logscale[p] = ls


@njit
def _fold_batch_norm(weight, gamma, beta, mean, var, eps, a_w, a_w_t, bias):
    """Batch norm folded into the convolution in one pass, no temporaries:
    ``w = gamma / sqrt(var + eps)``, ``z = beta - mean w`` (float64), ``a_w = weight diag(w)``
    and its transpose, ``bias = weight z`` (the input dtype). Returns ``(w, z, inv_std)``."""
    d_out, d_in = weight.shape
    inv_std = 1.0 / np.sqrt(var + eps)
    w = np.empty(d_in)
    z = np.empty(d_in)
    for i in range(d_in):
        w[i] = np.float64(gamma[i]) * inv_std[i]
        z[i] = np.float64(beta[i]) - mean[i] * w[i]
    for j in range(d_out):
        acc = 0.0
        for i in range(d_in):
            v = np.float64(weight[j, i])
            a_w[j, i] = v * w[i]
            a_w_t[i, j] = a_w[j, i]
            acc += v * z[i]
        bias[j] = acc
    return w, z, inv_std


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
    with kernel_threads():
        if training and mean is None:
            mean, var = column_stats(x2, _chunks(b * s))
        mean = np.asarray(mean, np.float64)
        a_w = np.empty((d_out, d_in), x.dtype)
        a_w_t = np.empty((d_in, d_out), x.dtype)
        bias = np.empty(d_out, x.dtype)
        w, z, inv_std = _fold_batch_norm(weight, gamma, beta, mean, np.asarray(var, np.float64),
                                         float(eps), a_w, a_w_t, bias)
        n_out = b * s // window
        xi = workspace.empty((b * s, d_out), x.dtype)
        out = workspace.empty((n_out, d_out), x.dtype)
        rows = _rows_per_chunk(b * s, d_out, x.itemsize, window)
        sums = _level_forward(x2, a_w_t, bias, window, rows, _gemm_rows(d_in, d_out), xi, out)
    stats = None
    if collect_stats:
        out_mean = sums[0] / n_out
        stats = (out_mean, np.maximum(sums[1] / n_out - out_mean ** 2, 0.0))
    saved = (x2, xi, bias, a_w, weight, w, z, mean, inv_std, window, training, (b, s, d_in))
    return out.reshape(b, s // window, d_out), saved, stats


def qcnn_level_backward(saved, g_out, need_g_x=True, g_out_affine=None, return_affine=False):
    """See :func:`fasttn.ops.qcnn_level.qcnn_level_backward`."""
    x2, xi, bias, a_w, weight, w, z, mean, inv_std, window, training, shape = saved
    n, d_in = x2.shape
    d_out = weight.shape[0]
    dt = x2.dtype
    g2 = g_out.reshape(-1, d_out)
    if not g2.flags.c_contiguous:
        g2 = np.ascontiguousarray(g2)
    if g_out_affine is None:
        c_scale = c_shift = np.zeros(d_out, dt)
    else:
        c_scale, c_shift = (np.ascontiguousarray(c, dt) for c in g_out_affine)
    g_x = workspace.empty(x2.shape, dt) if need_g_x else np.empty((0, d_in), dt)
    correct = need_g_x and training  # the batch statistics depend on x
    affine = (np.empty(d_in, dt), np.empty(d_in, dt)) if correct else (np.empty(0, dt),) * 2
    g_weight = np.empty(weight.shape, dt)
    g_gamma = np.empty(d_in, dt)
    g_beta = np.empty(d_in, dt)
    with kernel_threads():
        rows = _rows_per_chunk(n, max(d_in, d_out), x2.itemsize, window)
        n_chunks = -(-n // rows)
        sums = np.empty((n_chunks, d_out))
        grams = workspace.empty((n_chunks, d_out, d_in), dt)
        _level_backward(x2, xi, bias, g2, c_scale, c_shift, window, a_w, rows,
                        _gemm_rows(d_in, d_out), g_x, need_g_x, sums, grams)
        _weight_grads(sums, grams, weight, w, z, mean, inv_std, float(n), g_weight, g_gamma,
                      g_beta, *affine)
        if correct and not return_affine:  # dL/dx -= scale * x + shift
            _bn_input_correction(g_x, x2, *affine)
    grads = (g_x.reshape(shape) if need_g_x else None, g_weight, g_gamma, g_beta)
    return grads + ((affine if correct else None),) if return_affine else grads


def qcnn_level_scaled_forward(x, logscale, weight, gamma, beta, *, window, eps, mean, var):
    """See :func:`fasttn.ops.qcnn_level.qcnn_level_scaled_forward`."""
    b, s, d_in = x.shape
    d_out = weight.shape[0]
    x2 = x.reshape(b * s, d_in)
    w = gamma.astype(np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    z = beta.astype(np.float64) - np.asarray(mean, np.float64) * w
    z_max = np.abs(z).max() if z.size else 0.0
    log_z_max = float(np.log(z_max)) if z_max > 0 else _NO_SCALE
    with kernel_threads():
        a_w_t = np.ascontiguousarray((weight * w).astype(x.dtype).T)
        bias = weight.astype(np.float64) @ (z / z_max if z_max > 0 else z)
        n_out = b * s // window
        out = workspace.empty((n_out, d_out), x.dtype)
        out_logscale = np.empty(n_out, np.float64)
        rows = _rows_per_chunk(b * s, d_out, x.itemsize, window)
        _level_scaled_forward(x2, np.ascontiguousarray(logscale, np.float64).reshape(-1), a_w_t,
                              w, log_z_max, bias, window, rows, _gemm_rows(d_in, d_out), out,
                              out_logscale)
    return out.reshape(b, s // window, d_out), out_logscale.reshape(b, s // window)
