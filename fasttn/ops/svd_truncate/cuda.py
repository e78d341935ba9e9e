"""GPU truncated SVD split: the rules of ``reference.py`` vectorised over the whole stack.

Written against the array module of the input (``xp = array_module(a)``): one batched
``xp.linalg.svd`` (cuSOLVER's batched routines on CuPy), then sign fix, keep counts,
absorption, entropy and discarded weight as array expressions over ``(items, ...)``, with
masks in place of per-item slicing. The one host synchronisation is reading the bond
``k = max kept`` (it sets the outputs' shape). Everything is float64 inside, as on the CPU;
``left``, ``right``, ``s`` and the gradient come back in ``a``'s dtype.

Imported only when an op receives a non-NumPy array; nothing here imports CuPy itself, so
the tests run the same functions on NumPy arrays.
"""
from __future__ import annotations

import numpy as np

from ...backend import array_module
from .reference import BROADENING, SVDSaved, SVDTruncation

_TINY = float(np.finfo(np.float64).tiny)


def _broadened_inverse(xp, x, eps):
    """``x / (x^2 + eps^2)`` with ``eps`` broadcast against ``x`` (see ``reference.py``)."""
    return x / (x * x + xp.maximum(eps * eps, _TINY))


def _fix_signs(xp, u, v):
    """Flip pairs so the largest-|.| entry of each column of ``u`` is positive (first on
    ties, as ``argmax`` picks)."""
    at = xp.argmax(xp.abs(u), axis=-2)[:, None, :]                    # (items, 1, r)
    sign = xp.where(xp.take_along_axis(u, at, axis=-2) < 0, -1.0, 1.0)
    return u * sign, v * sign


def _keep_counts(xp, s, max_bond, cutoff):
    """Values kept by each item: the leading run that passes the bond and the cutoff, at
    least one."""
    r = s.shape[-1]
    bond = r if max_bond is None else min(max_bond, r)
    ok = xp.broadcast_to(xp.arange(r) < bond, s.shape)
    if cutoff > 0:
        ok = ok & (s >= cutoff * s[:, :1]) & (s > 0)
    # s descends, so the run is the count; cumprod keeps it a leading run regardless
    kept = xp.cumprod(ok.astype(np.int64), axis=-1).sum(axis=-1)
    return xp.maximum(kept, 1)


def _spectrum_figures(xp, s, kept_mask):
    """``(entropy, discarded)`` per item, every value divided by ``s_0`` so that squares of
    values near the float64 range neither overflow nor underflow."""
    s0 = s[:, 0]
    scale = xp.where(s0 > 0, s0, 1.0)
    q = (s / scale[:, None]) ** 2
    kept_q = xp.where(kept_mask, q, 0.0)
    total = kept_q.sum(axis=-1)
    prob = kept_q / xp.where(total > 0, total, 1.0)[:, None]
    positive = prob > 0
    entropy = -xp.where(positive, prob * xp.log(xp.where(positive, prob, 1.0)), 0.0).sum(-1)
    discarded = s0 * xp.sqrt(xp.where(kept_mask, 0.0, q).sum(axis=-1))
    return entropy, discarded


def _absorb_factors(xp, sk, absorb):
    """``(f_left, f_right)``: what multiplies the kept columns of ``U`` and ``V``."""
    ones = xp.ones_like(sk)
    if absorb == "both":
        root = xp.sqrt(sk)
        return root, root
    if absorb == "left":
        return sk, ones
    if absorb == "right":
        return ones, sk
    return ones, ones


def svd_truncate_forward(a, max_bond, cutoff: float, absorb: str):
    """``(SVDTruncation, SVDSaved)``; arguments already checked (see
    :func:`fasttn.ops.svd_truncate.svd_truncate_forward`)."""
    xp = array_module(a)
    *batch, m, n = a.shape
    r = min(m, n)
    dt = np.dtype(a.dtype)
    items = a.reshape(-1, m, n).astype(np.float64)
    n_items = items.shape[0]
    if n_items == 0:
        u, s, v = (xp.zeros((0, m, r)), xp.zeros((0, r)), xp.zeros((0, n, r)))
        kept = xp.zeros(0, np.int64)
        k = 1
    else:
        u, s, vt = xp.linalg.svd(items, full_matrices=False)
        u, v = _fix_signs(xp, u, vt.transpose(0, 2, 1))
        kept = _keep_counts(xp, s, max_bond, cutoff)
        k = int(kept.max())
    mask_r = xp.arange(r)[None, :] < kept[:, None]                   # (items, r)
    mask = mask_r[:, :k]
    sk = xp.where(mask, s[:, :k], 0.0)
    f_left, f_right = _absorb_factors(xp, sk, absorb)
    f_left, f_right = f_left * mask, f_right * mask                   # exact zero padding
    left = u[:, :, :k] * f_left[:, None, :]
    right = (v[:, :, :k] * f_right[:, None, :]).transpose(0, 2, 1)
    entropy, discarded = _spectrum_figures(xp, s, mask_r)
    out = SVDTruncation(xp.ascontiguousarray(left.reshape(*batch, m, k).astype(dt)),
                        xp.ascontiguousarray(right.reshape(*batch, k, n).astype(dt)),
                        sk.reshape(*batch, k).astype(dt),
                        entropy.reshape(batch), discarded.reshape(batch))
    saved = SVDSaved(u.reshape(*batch, m, r), s.reshape(*batch, r), v.reshape(*batch, n, r),
                     kept.reshape(batch), k, absorb, dt)
    return out, saved


def _absorb_backward(xp, absorb, s, uk, vk, sk, gl, gr, s0):
    """Gradients of the kept columns of ``U``, ``V`` and of ``s`` through the absorption."""
    if absorb == "both":      # left = U sqrt(S), right = sqrt(S) V^T
        root = xp.sqrt(sk)
        # d sqrt(s)/ds = 1/(2 sqrt(s)), broadened like 1/s
        half_inv_root = _broadened_inverse(xp, 2 * root, BROADENING * xp.sqrt(s0)[:, None])
        g_s = ((gl * uk).sum(axis=1) + (gr * vk).sum(axis=1)) * half_inv_root
        return gl * root[:, None, :], gr * root[:, None, :], g_s
    if absorb == "left":      # left = U S, right = V^T
        return gl * sk[:, None, :], gr, (gl * uk).sum(axis=1)
    if absorb == "right":     # left = U, right = S V^T
        return gl, gr * sk[:, None, :], (gr * vk).sum(axis=1)
    return gl, gr, xp.zeros_like(sk)


def _thin_svd_backward(xp, u, s, v, g_u, g_s, g_v):
    """``reference.thin_svd_backward`` on a stack: ``u (N, m, r)``, ``s (N, r)``,
    ``v (N, n, r)``, gradients of the same shapes."""
    r = s.shape[-1]
    eps = (BROADENING * s[:, 0])[:, None, None]
    ut, vt = u.transpose(0, 2, 1), v.transpose(0, 2, 1)
    x = xp.matmul(ut, g_u)
    y = xp.matmul(vt, g_v)
    a_, b_ = x - x.transpose(0, 2, 1), y - y.transpose(0, 2, 1)
    gap = s[:, None, :] - s[:, :, None]                               # s_j - s_i
    total = s[:, None, :] + s[:, :, None]
    # zero on the diagonal (A, B antisymmetric, gap 0), where diag(g_s) goes
    inner = 0.5 * ((a_ + b_) * _broadened_inverse(xp, gap, eps)
                   + (a_ - b_) * _broadened_inverse(xp, total, eps))
    inner = inner + xp.eye(r)[None] * g_s[:, None, :]
    s_inv = _broadened_inverse(xp, s, eps[:, :, 0])[:, None, :]       # (N, 1, r)
    # U inner V^T + (gU - U x) S^-1 V^T + U S^-1 (gV - V y)^T, V^T shared by the first two
    left = xp.matmul(u, inner) + (g_u - xp.matmul(u, x)) * s_inv
    return (xp.matmul(left, vt)
            + xp.matmul(u * s_inv, (g_v - xp.matmul(v, y)).transpose(0, 2, 1)))


def svd_truncate_backward(saved: SVDSaved, g_left, g_right, g_s):
    """``dL/da``; gradients already checked (shapes) or ``None``."""
    xp = array_module(saved.u)
    *batch, m, r = saved.u.shape
    n = saved.v.shape[-2]
    k = saved.k
    u = saved.u.reshape(-1, m, r)
    s = saved.s.reshape(-1, r)
    v = saved.v.reshape(-1, n, r)
    kept = saved.kept.reshape(-1)
    n_items = u.shape[0]
    if n_items == 0:
        return xp.zeros((*batch, m, n), saved.dtype)

    def flat(g, shape):
        if g is None:
            return xp.zeros((n_items,) + shape)
        return xp.asarray(g, np.float64).reshape((n_items,) + shape)

    # the zero padding and discarded values get no gradient
    mask = xp.arange(k)[None, :] < kept[:, None]                      # (items, k)
    gl = flat(g_left, (m, k)) * mask[:, None, :]
    gr = flat(g_right, (k, n)).transpose(0, 2, 1) * mask[:, None, :]  # (items, n, k), like V
    sk = xp.where(mask, s[:, :k], 0.0)
    g_uk, g_vk, g_sk = _absorb_backward(xp, saved.absorb, s, u[:, :, :k], v[:, :, :k], sk,
                                        gl, gr, s[:, 0])
    g_sk = g_sk + flat(g_s, (k,)) * mask
    g_u = xp.zeros((n_items, m, r))
    g_v = xp.zeros((n_items, n, r))
    g_sv = xp.zeros((n_items, r))
    g_u[:, :, :k] = g_uk
    g_v[:, :, :k] = g_vk
    g_sv[:, :k] = g_sk
    g_a = _thin_svd_backward(xp, u, s, v, g_u, g_sv, g_v)
    return g_a.reshape(*batch, m, n).astype(saved.dtype)
