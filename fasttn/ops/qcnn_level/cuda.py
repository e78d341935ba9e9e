"""GPU q-CNN level: the steps of :mod:`.cpu` and :mod:`.cpu_log` as whole-array operations.

Written against the array module of the input (``xp = array_module(x)``), so on CuPy arrays
every step below runs on the device (the products as cuBLAS GEMMs, the rest as CuPy
elementwise and reduction kernels) and the same code runs on NumPy arrays in the tests.
Rows are ``(batch x site)``; with ``n`` rows:

* **linear**: batch norm folded into the convolution, ``A = weight diag(w)`` and
  ``bias = weight z`` with ``w = gamma / std`` and ``z = beta - mean w`` (float64, as the CPU
  kernel), so the forward is one GEMM ``x2 A^T`` in the input dtype, the bias added in place,
  then the window product. The backward is the window-product gradient, one GEMM for
  ``dL/dx`` (skipped with ``need_g_x=False``), one for the ``(d_out, d_in)`` Gram
  ``g_xi^T x2``, and per-channel float64 reductions from which the parameter gradients and
  the batch-statistics term follow, exactly as :func:`.cpu._weight_grads`;
* **log**: batch norm in a per-row frame shifted by ``c`` (see ``reference.py``), one GEMM in
  the input dtype, and log-magnitudes plus ``c`` summed over each window in float64;
* **scaled**: the folded GEMM, each row moved into its frame ``c`` and pooled in float64,
  each output row divided by its largest magnitude.

Pooling goes through the public ops :func:`fasttn.ops.product_pool`,
:func:`fasttn.ops.product_pool_backward` and :func:`fasttn.ops.product_pool_log`: one kernel
each from ``csrc/product_pool.cu`` on CuPy arrays (the Numba kernels on NumPy arrays), where
reshape-products would take up to eight elementwise launches for a window of four.

Statistics (the input's batch statistics, the next level's ``next_stats``) are reduced on
the device in float64; they come back as float64 device arrays. Nothing leaves the device:
the only host-device traffic is a running ``(mean, var)`` given as NumPy arrays (as the
models keep them) being copied up, ``d_in`` values each. Every shape is known on the host,
so there is no synchronisation either.

Imported only when an op receives a non-NumPy array; nothing here imports CuPy itself.
"""
from __future__ import annotations

import numpy as np

from ...backend import array_module
from ..product_pool import product_pool, product_pool_backward, product_pool_log

_F64 = np.float64


def _column_stats(xp, x2):
    """Per-column mean and biased variance of ``x2 : (rows, cols)``, two-pass, float64."""
    mean = xp.mean(x2, axis=0, dtype=_F64)
    dev = x2 - mean                              # float64 (mean is)
    return mean, xp.mean(dev * dev, axis=0)


def batch_stats(x):
    """See :func:`fasttn.ops.qcnn_level.batch_stats`."""
    return _column_stats(array_module(x), x.reshape(-1, x.shape[2]))


def _f64(xp, v):
    # A running statistic kept on the host is copied up here (d_in values).
    return xp.asarray(v, dtype=_F64)


def _fold_batch_norm(xp, weight, gamma, beta, mean, var, eps, dtype):
    """``(w, z, inv_std, a_w, bias)``: ``w = gamma / sqrt(var + eps)``, ``z = beta - mean w``
    and ``inv_std`` in float64; ``a_w = weight diag(w)`` and ``bias = weight z`` in ``dtype``
    (computed in float64 first, as :func:`.cpu._fold_batch_norm`)."""
    inv_std = 1.0 / xp.sqrt(var + eps)
    w = gamma.astype(_F64) * inv_std
    z = beta.astype(_F64) - mean * w
    w64 = weight.astype(_F64)
    return w, z, inv_std, (w64 * w).astype(dtype), xp.matmul(w64, z).astype(dtype)


def _pool(v, b, s, window):
    """Window products of ``v : (b * s, d)`` -> ``(b * s // window, d)``."""
    if window == 1:
        return v
    return product_pool(v.reshape(b, s, v.shape[1]), window).reshape(-1, v.shape[1])


# ---------------------------------------------------------------------------- linear domain
def qcnn_level_forward(x, weight, gamma, beta, *, window, eps, training, mean=None, var=None):
    """See :func:`fasttn.ops.qcnn_level.qcnn_level_forward`.

    ``saved`` holds ``v = x2 A^T + bias`` (the pooled factors, bias included) rather than the
    CPU kernel's bias-free ``xi``: the bias is added once in place here, not again in the
    backward. With ``window = 1`` the output *is* ``v`` (no copy), so ``saved`` shares it, as
    it shares ``x`` (already so on the CPU): neither may be changed in place before the
    backward.
    """
    xp = array_module(x)
    b, s, d_in = x.shape
    d_out = weight.shape[0]
    x2 = x.reshape(b * s, d_in)
    if training and mean is None:
        mean, var = _column_stats(xp, x2)
    mean, var = _f64(xp, mean), _f64(xp, var)
    w, z, inv_std, a_w, bias = _fold_batch_norm(xp, weight, gamma, beta, mean, var, float(eps),
                                                x.dtype)
    v = xp.matmul(x2, a_w.T)                     # (n, d_out): the one GEMM, input dtype
    v += bias
    out2 = _pool(v, b, s, window)
    saved = (x2, v, a_w, weight, w, z, mean, inv_std, window, training, (b, s, d_in))
    return out2.reshape(b, s // window, d_out), saved, _column_stats(xp, out2)


def qcnn_level_backward(saved, g_out, need_g_x=True, g_out_affine=None, return_affine=False):
    """See :func:`fasttn.ops.qcnn_level.qcnn_level_backward`."""
    x2, v, a_w, weight, w, z, mean, inv_std, window, training, (b, s, d_in) = saved
    xp = array_module(v)
    n = x2.shape[0]
    d_out = weight.shape[0]
    dt = x2.dtype
    g2 = xp.asarray(g_out, dtype=dt).reshape(-1, d_out)
    if g_out_affine is not None:  # the level above left its batch-statistics term to us
        c_scale, c_shift = (xp.asarray(c, dtype=dt) for c in g_out_affine)
        g2 = g2 - (c_scale * _pool(v, b, s, window) + c_shift)
    if window == 1:
        g_xi = g2
    else:
        g_xi = product_pool_backward((v.reshape(b, s, d_out), window),
                                     g2.reshape(b, s // window, d_out)).reshape(n, d_out)
    # dL/dz' = g_xi weight with z' = w x + z the normalised input; in float64 from here on
    sums = xp.sum(g_xi, axis=0, dtype=_F64)                     # (d_out,)
    gram = xp.matmul(g_xi.T, x2).astype(_F64)                   # (d_out, d_in) GEMM
    w64 = weight.astype(_F64)
    g_weight = gram * w + sums[:, None] * z
    g_beta = xp.matmul(sums, w64)                               # sum_r dL/dz'_r
    q = xp.sum(w64 * gram, axis=0)                              # sum_r dL/dz'_r x_r
    g_gamma = (q - mean * g_beta) * inv_std
    g_x = xp.matmul(g_xi, a_w) if need_g_x else None            # (n, d_in) GEMM
    correct = need_g_x and training  # the batch statistics depend on x
    affine = None
    if correct:
        scale = w * inv_std * g_gamma / n
        affine = (scale.astype(dt), (w * g_beta / n - scale * mean).astype(dt))
        if not return_affine:  # dL/dx -= scale * x + shift
            g_x -= affine[0] * x2
            g_x -= affine[1]
    grads = (g_x.reshape(b, s, d_in) if need_g_x else None, g_weight.astype(dt),
             g_gamma.astype(dt), g_beta.astype(dt))
    return grads + (affine,) if return_affine else grads


# ---------------------------------------------------------------------------- scaled domain
def qcnn_level_scaled_forward(x, logscale, weight, gamma, beta, *, window, eps, mean, var):
    """See :func:`fasttn.ops.qcnn_level.qcnn_level_scaled_forward`.

    The frame quantities of :func:`.cpu.qcnn_level_scaled_forward` as arrays: ``log max|z|``
    stays a 0-d device array (``-inf`` for ``z = 0``) rather than a host float.
    """
    xp = array_module(x)
    b, s, d_in = x.shape
    d_out = weight.shape[0]
    n = b * s
    x2 = x.reshape(n, d_in)
    w = gamma.astype(_F64) / xp.sqrt(_f64(xp, var) + float(eps))
    z = beta.astype(_F64) - _f64(xp, mean) * w
    z_max = xp.max(xp.abs(z)) if d_in else xp.zeros((), _F64)
    has_z = z_max > 0
    z_div = xp.where(has_z, z_max, 1.0)
    log_z_max = xp.where(has_z, xp.log(z_div), -np.inf)
    w64 = weight.astype(_F64)
    # bias divided by max|z|, so shift * bias never forms exp(-c) alone (it may overflow)
    bias = xp.matmul(w64, z / z_div)                            # float64
    xi = xp.matmul(x2, (w64 * w).astype(x.dtype).T)             # (n, d_out) GEMM
    # c = max(logscale + log max_i |w_i x_i|, log max|z|) per row; 0 where neither is finite
    mx = xp.max(xp.abs(x2 * w), axis=1) if d_in else xp.zeros(n, _F64)
    ls = xp.asarray(logscale, dtype=_F64).reshape(n)
    lx = xp.where(mx > 0, ls + xp.log(xp.where(mx > 0, mx, 1.0)), -np.inf)
    c = xp.maximum(lx, log_z_max)
    c = xp.where(xp.isfinite(c), c, 0.0)
    alpha = xp.exp(ls - c)               # float64: may exceed the float32 range alone
    shift = xp.exp(log_z_max - c)        # 0 without a shift
    vals = alpha[:, None] * xi + shift[:, None] * bias          # float64, order one
    prod = _pool(vals, b, s, window)
    m = xp.max(xp.abs(prod), axis=1) if d_out else xp.zeros(prod.shape[0], _F64)
    m = xp.where(m > 0, m, 1.0)
    out = (prod / m[:, None]).astype(x.dtype)
    out_logscale = c.reshape(-1, window).sum(axis=1) + xp.log(m)
    return out.reshape(b, s // window, d_out), out_logscale.reshape(b, s // window)


# ------------------------------------------------------------------------------- log domain
def _log_column_stats(xp, la, sg, eps):
    """``(log sqrt(var + eps), mean / sqrt(var + eps))`` per column of ``sg * exp(la)``,
    shifted by the column maximum first (:func:`.cpu_log.log_column_stats`)."""
    if la.shape[0]:
        m = xp.max(la, axis=0).astype(_F64)
        m = xp.where(xp.isfinite(m), m, 0.0)
    else:
        m = xp.zeros(la.shape[1], _F64)
    u = sg * xp.exp(la - m)                                     # float64
    m_hat, v_hat = _column_stats(xp, u)
    scaled = v_hat + eps * xp.exp(-2.0 * m)
    return m + 0.5 * xp.log(scaled), m_hat / xp.sqrt(scaled)


def qcnn_level_log_forward(logabs, sign, weight, gamma, beta, *, window, eps, training,
                           mean=None, var=None):
    """See :func:`fasttn.ops.qcnn_level.qcnn_level_log_forward`; ``saved`` has the layout of
    :mod:`.cpu_log`'s."""
    xp = array_module(logabs)
    b, s, d_in = logabs.shape
    d_out = weight.shape[0]
    n = b * s
    dt = logabs.dtype
    eps = float(eps)
    la2 = logabs.reshape(n, d_in)
    sg2 = sign.reshape(n, d_in)
    if training:
        log_std, mean_std = _log_column_stats(xp, la2, sg2, eps)
    else:
        var64 = _f64(xp, var) + eps
        log_std, mean_std = 0.5 * xp.log(var64), _f64(xp, mean) / xp.sqrt(var64)
    g64 = gamma.astype(_F64)
    abs_g = xp.abs(g64)
    log_w = xp.where(abs_g > 0, xp.log(xp.where(abs_g > 0, abs_g, 1.0)), -np.inf) - log_std
    sign_g = xp.sign(g64)
    z = beta.astype(_F64) - g64 * mean_std
    # the frame: c = max(0, max_i logabs_i + log|w_i|) per row, float64
    lw = la2 + log_w                                            # float64 (n, d_in)
    c = xp.maximum(xp.max(lw, axis=1), 0.0) if d_in else xp.zeros(n, _F64)
    zp_hat = (sign_g * sg2 * xp.exp(lw - c[:, None]) + z * xp.exp(-c)[:, None]).astype(dt)
    xi_hat = xp.matmul(zp_hat, weight.T)                        # (n, d_out) GEMM
    nz = xi_hat != 0
    la_xi = xp.where(nz, xp.log(xp.abs(xp.where(nz, xi_hat, 1)).astype(_F64)), -np.inf)
    la_xi += c[:, None]
    sg_xi = xp.sign(xi_hat).astype(np.int8)
    if window == 1:
        out_la, out_sg = la_xi, sg_xi
    else:  # the sum of log|xi_hat| + c (float64) and the product of signs per window
        out_la, out_sg = product_pool_log(la_xi.reshape(b, s, d_out),
                                          sg_xi.reshape(b, s, d_out), window)
    stats = (mean_std * xp.exp(log_std), xp.exp(2.0 * log_std) - eps)
    saved = (la2, sg2, log_std, mean_std, log_w, sign_g, c, zp_hat, xi_hat, weight, g64,
             window, training, (b, s, d_in))
    return (out_la.astype(dt).reshape(b, s // window, d_out),
            out_sg.reshape(b, s // window, d_out), saved, stats)


def qcnn_level_log_backward(saved, g_out):
    """See :func:`fasttn.ops.qcnn_level.qcnn_level_log_backward`."""
    (la2, sg2, log_std, mean_std, log_w, sign_g, c, zp_hat, xi_hat, weight, g64, window,
     training, shape) = saved
    xp = array_module(xi_hat)
    n, d_out = xi_hat.shape
    dt = la2.dtype
    g2 = xp.asarray(g_out, dtype=dt).reshape(-1, 1, d_out)
    # dL/dxi_hat = g / xi_hat (d out_logabs / d log|xi| = 1), 0 where xi_hat = 0
    xi3 = xi_hat.reshape(-1, window, d_out)
    nz = xi3 != 0
    h = xp.where(nz, g2 / xp.where(nz, xi3, 1), 0).astype(dt, copy=False).reshape(n, d_out)
    g_weight = xp.matmul(h.T, zp_hat)                          # exp(c) factors cancel
    ha = xp.matmul(h, weight)                                  # exp(c) * dL/dz'
    ec = xp.exp(-c)[:, None]
    g_beta = xp.sum(ha * ec, axis=0)                           # float64 from here on
    # d_zp * x_hat with exp(-c) taken inside, so a huge x_hat never meets a tiny d_zp
    x_hat_shift = sg2 * xp.exp(la2 - log_std - c[:, None]) - mean_std * ec
    g_gamma = xp.sum(ha * x_hat_shift, axis=0)
    g_la = sign_g * sg2 * xp.exp(la2 + log_w - c[:, None]) * ha    # w x exp(-c) * ha
    if training:  # batch-normalised, so x / std is of order one here
        x_std = sg2 * xp.exp(la2 - log_std)
        g_la -= g64 * x_std * (g_beta + (x_std - mean_std) * g_gamma) / n
    return (g_la.astype(dt).reshape(shape), g_weight.astype(dt), g_gamma.astype(dt),
            g_beta.astype(dt))
