"""NumPy specification of one q-CNN level: batch norm -> 1x1 convolution -> product pooling.

For a level input ``x : (batch, sites, d_in)`` (q-CNN eqs. 2-8):

    x_hat  = (x - mean) / sqrt(var + eps)           batch statistics over (batch, sites) when
    z'     = gamma * x_hat + beta                    training, running statistics otherwise
    xi     = z' @ weight.T                           weight : (d_out, d_in), no bias
    out[p] = prod_{k < window} xi[window * p + k]    same channel; window 1 = no pooling

``window = 2`` pools pairs of a chain; ``window = 4`` pools 2x2 windows of a grid whose sites
are stored in Z order (see :func:`fasttn.ops.qcnn_level.z_order`). With ``window = 1`` the
level is the classifier head (final batch norm + dense map).

Log domain: the level input is ``sign * exp(logabs)`` and the output is returned the same
way. Batch norm, shifted per site by ``c = max(0, max_i(logabs_i + log|w_i|))`` so that every
term stays in range, produces ``z'_hat = exp(-c) z'``; the convolution runs on ``z'_hat`` and
the pooling adds ``log|xi_hat| + c`` over the window. The backward of the log form takes and
returns gradients with respect to ``logabs`` (``dL/dlogabs = dL/dx * x``): scale-free, so
finite at any depth.
"""
from __future__ import annotations

import numpy as np


def batch_stats(x: np.ndarray):
    """Per-channel mean and (biased) variance over batch and sites."""
    return x.mean(axis=(0, 1)), x.var(axis=(0, 1))


def _pool(xi: np.ndarray, window: int) -> np.ndarray:
    b, s, c = xi.shape
    return np.prod(xi.reshape(b, s // window, window, c), axis=2)


def _pool_backward(xi: np.ndarray, g_out: np.ndarray, window: int) -> np.ndarray:
    b, s, c = xi.shape
    xw = xi.reshape(b, s // window, window, c)
    g = np.empty_like(xw)
    for k in range(window):
        g[:, :, k] = g_out * np.prod(np.delete(xw, k, axis=2), axis=2)
    return g.reshape(b, s, c)


# ---------------------------------------------------------------------------- linear domain
def qcnn_level_forward(x, weight, gamma, beta, *, window, eps, training, mean=None, var=None):
    """Returns ``(out, saved)``; ``mean, var`` are used when not training."""
    if training:
        mean, var = batch_stats(x)
    x_hat = (x - mean) / np.sqrt(var + eps)
    zp = gamma * x_hat + beta
    xi = zp @ weight.T
    out = _pool(xi, window)
    return out, (x_hat, zp, xi, weight, gamma, var, eps, window, training)


def qcnn_level_backward(saved, g_out):
    """Returns ``(g_x, g_weight, g_gamma, g_beta)`` for the loss gradient ``g_out``."""
    x_hat, zp, xi, weight, gamma, var, eps, window, training = saved
    g_xi = _pool_backward(xi, g_out, window)
    g_weight = np.einsum("bsj,bsi->ji", g_xi, zp)
    g_zp = g_xi @ weight
    g_gamma = np.sum(g_zp * x_hat, axis=(0, 1))
    g_beta = np.sum(g_zp, axis=(0, 1))
    g_xhat = g_zp * gamma
    if training:  # the batch statistics depend on x too
        g_xhat = (g_xhat - g_xhat.mean(axis=(0, 1))
                  - x_hat * np.mean(g_xhat * x_hat, axis=(0, 1)))
    g_x = g_xhat / np.sqrt(var + eps)
    return g_x, g_weight, g_gamma, g_beta


# ------------------------------------------------------------------------------- log domain
def log_batch_stats(logabs, sign, eps):
    """``(log sqrt(var + eps), mean / sqrt(var + eps))`` of ``sign * exp(logabs)``, per channel.

    Values are shifted by their per-channel maximum before exponentiating, so huge or tiny
    magnitudes give the same normalised statistics as exact arithmetic would.
    """
    m = np.max(logabs, axis=(0, 1))
    m = np.where(np.isfinite(m), m, 0.0)
    u = sign * np.exp(logabs - m)
    m_hat = u.mean(axis=(0, 1))
    v_hat = np.mean((u - m_hat) ** 2, axis=(0, 1))
    scaled = v_hat + eps * np.exp(-2 * m)
    return m + 0.5 * np.log(scaled), m_hat / np.sqrt(scaled)


def qcnn_level_log_forward(logabs, sign, weight, gamma, beta, *, window, eps, training,
                           mean=None, var=None):
    """Returns ``(out_logabs, out_sign, saved)``."""
    if training:
        log_std, mean_std = log_batch_stats(logabs, sign, eps)
    else:
        log_std, mean_std = 0.5 * np.log(var + eps), mean / np.sqrt(var + eps)
    with np.errstate(divide="ignore"):
        log_w = np.log(np.abs(gamma)) - log_std           # log|gamma / std|
    z = beta - gamma * mean_std
    c = np.maximum(np.max(logabs + log_w, axis=2, keepdims=True), 0.0)
    zp_hat = np.sign(gamma) * sign * np.exp(logabs + log_w - c) + z * np.exp(-c)
    xi_hat = zp_hat @ weight.T
    with np.errstate(divide="ignore"):
        la = np.log(np.abs(xi_hat)) + c
    b, s, d = xi_hat.shape
    out_logabs = np.sum(la.reshape(b, s // window, window, d), axis=2)
    out_sign = np.prod(np.sign(xi_hat).reshape(b, s // window, window, d), axis=2)
    saved = (logabs, sign, log_std, mean_std, log_w, c, zp_hat, xi_hat, weight, gamma, window,
             training)
    return out_logabs, out_sign.astype(np.int8), saved


def qcnn_level_log_backward(saved, g_out):
    """Gradient with respect to ``logabs`` and the parameters, given ``dL/d out_logabs``.

    Returns ``(g_logabs, g_weight, g_gamma, g_beta)``.
    """
    (logabs, sign, log_std, mean_std, log_w, c, zp_hat, xi_hat, weight, gamma, window,
     training) = saved
    b, s, d = xi_hat.shape
    g_la = np.repeat(g_out, window, axis=1)              # d out_logabs / d log|xi| = 1
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.where(xi_hat != 0, g_la / xi_hat, 0.0)     # dL/dxi_hat
    g_weight = np.einsum("bsj,bsi->ji", h, zp_hat)        # exp(c) factors cancel
    ha = h @ weight                                       # exp(c) * dL/dz'
    d_zp = ha * np.exp(-c)
    g_beta = d_zp.sum(axis=(0, 1))
    # d_zp * x_hat with the exp(-c) taken inside, so a huge x_hat never meets a tiny d_zp
    x_hat_shift = sign * np.exp(logabs - log_std - c) - mean_std * np.exp(-c)
    g_gamma = np.sum(ha * x_hat_shift, axis=(0, 1))
    wx_shift = np.sign(gamma) * sign * np.exp(logabs + log_w - c)   # w * x * exp(-c)
    g_logabs = wx_shift * ha
    if training:  # batch-normalised, so x_hat is of order one here
        x_hat = sign * np.exp(logabs - log_std) - mean_std
        n = logabs.shape[0] * logabs.shape[1]
        g_logabs = g_logabs - gamma * (x_hat + mean_std) * (g_beta + x_hat * g_gamma) / n
    return g_logabs, g_weight, g_gamma, g_beta


# ---------------------------------------------------------------------------- scaled domain
def qcnn_level_scaled_forward(x, logscale, weight, gamma, beta, *, window, eps, mean, var):
    """Inference (running statistics) on ``x * exp(logscale)``, one log-scale per site.

    ``x : (batch, sites, d_in)`` holds values of order one and ``logscale : (batch, sites)``
    their common log-magnitude. Batch norm is applied in a frame shifted per site by
    ``c = max(logscale + log max_i |w_i x_i|, log max_i |z_i|)`` (``w = gamma / std``,
    ``z = beta - mean w``), so both of its terms are at most one in magnitude and the larger
    is one; the convolution runs in that frame; each pooled output site is divided by its
    largest magnitude, which moves into its log-scale. Returns ``(out, out_logscale)``.
    """
    w = gamma / np.sqrt(var + eps)
    z = beta - mean * w
    with np.errstate(divide="ignore"):
        lx = logscale + np.log(np.max(np.abs(w * x), axis=2))
        lz = np.log(np.max(np.abs(z))) if z.size else -np.inf
    c = np.maximum(lx, lz)
    c = np.where(np.isfinite(c), c, 0.0)
    # z exp(-c) as (z / max|z|) exp(lz - c): exp(-c) alone overflows when c << 0
    z_part = (z / np.exp(lz)) * np.exp(lz - c)[..., None] if np.isfinite(lz) else 0.0
    zp_hat = w * x * np.exp(logscale - c)[..., None] + z_part
    xi_hat = zp_hat @ weight.T
    b, s, d = xi_hat.shape
    prod = np.prod(xi_hat.reshape(b, s // window, window, d), axis=2)
    m = np.max(np.abs(prod), axis=2)
    m = np.where(m > 0, m, 1.0)
    out_logscale = c.reshape(b, s // window, window).sum(axis=2) + np.log(m)
    return prod / m[..., None], out_logscale
