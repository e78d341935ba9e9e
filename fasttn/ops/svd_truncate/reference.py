"""Truncated SVD split written out one matrix at a time with ``numpy.linalg.svd`` (the spec).

For every matrix ``a`` of a stack ``(..., m, n)``, with ``r = min(m, n)``:

1. thin SVD ``a = U diag(s) V^T`` (``s`` descending), signs fixed so that the largest-|.|
   entry of each column of ``U`` is positive (the first one on ties), ``V`` flipped with it;
2. keep ``k_item`` values: at most ``max_bond``, none with ``s_i < cutoff * s_0``, never an
   exact zero when ``cutoff > 0``, and at least one;
3. ``k = max k_item`` over the stack; items keeping fewer are padded with exact zeros (in ``s``
   and in the columns / rows of ``left`` / ``right``), so ``left @ right`` is still the item's
   own truncation;
4. ``absorb``: ``"both"`` gives ``left = U sqrt(S)``, ``right = sqrt(S) V^T``; ``"left"`` gives
   ``left = U S``, ``right = V^T``; ``"right"`` gives ``left = U``, ``right = S V^T``;
   ``"none"`` gives ``left = U``, ``right = V^T`` (``left @ right`` is then the polar factor,
   the isometry nearest to ``a``, when nothing is truncated);
5. ``entropy = -sum p_i log p_i`` with ``p_i = s_i^2 / sum_kept s^2`` (0 log 0 = 0, 0 for a
   zero matrix) and ``discarded = sqrt(sum of the discarded s_i^2)`` = ``||a - left @ right||_F``.

Everything is computed in float64; ``left``, ``right`` and ``s`` come back in ``a``'s dtype.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

ABSORB = ("both", "left", "right", "none")

# Backward guard: 1/x -> x / (x^2 + eps^2) for x = s_j - s_i, s_j + s_i, s (eps = BROADENING * s_0)
# and x = 2 sqrt(s) (eps = BROADENING * sqrt(s_0)).
BROADENING = 1e-12


class SVDTruncation(NamedTuple):
    """Result of a truncated split ``a ~= left @ right``."""

    left: np.ndarray       # (..., m, k)
    right: np.ndarray      # (..., k, n)
    s: np.ndarray          # (..., k) kept singular values, descending, zero-padded
    entropy: np.ndarray    # (...,) float64
    discarded: np.ndarray  # (...,) float64


class SVDSaved(NamedTuple):
    """What the backward needs: the full thin SVD (float64) and the truncation."""

    u: np.ndarray      # (..., m, r)
    s: np.ndarray      # (..., r)
    v: np.ndarray      # (..., n, r)
    kept: np.ndarray   # (...,) int64, values kept by each item (<= k)
    k: int             # bond dimension of the outputs
    absorb: str
    dtype: np.dtype    # dtype of a


def keep_count(s: np.ndarray, max_bond: Optional[int], cutoff: float) -> int:
    """How many of the descending singular values ``s`` one matrix keeps."""
    k = len(s) if max_bond is None else min(len(s), max_bond)
    if cutoff > 0:
        kept = [i for i in range(k) if s[i] >= cutoff * s[0] and s[i] > 0]
        k = len(kept)
    return max(k, 1)


def fix_signs(u: np.ndarray, vt: np.ndarray):
    """Flip singular pairs so the largest-|.| entry of each column of ``u`` is positive."""
    u, vt = u.copy(), vt.copy()
    for j in range(u.shape[1]):
        i = int(np.argmax(np.abs(u[:, j])))  # first index on ties
        if u[i, j] < 0:
            u[:, j] *= -1
            vt[j, :] *= -1
    return u, vt


def entropy_of(s_kept: np.ndarray) -> float:
    weights = s_kept ** 2
    total = weights.sum()
    if total == 0:
        return 0.0
    p = weights[weights > 0] / total
    return float(-np.sum(p * np.log(p)))


def svd_truncate_forward(a: np.ndarray, max_bond: Optional[int] = None, cutoff: float = 0.0,
                         absorb: str = "both"):
    """``(SVDTruncation, SVDSaved)``; arguments already checked."""
    a64 = np.asarray(a, np.float64)
    *batch, m, n = a64.shape
    r = min(m, n)
    items = a64.reshape(-1, m, n)
    n_items = items.shape[0]
    u_all = np.zeros((n_items, m, r))
    s_all = np.zeros((n_items, r))
    v_all = np.zeros((n_items, n, r))
    kept = np.zeros(n_items, np.int64)
    for b in range(n_items):
        u, s, vt = np.linalg.svd(items[b], full_matrices=False)
        u, vt = fix_signs(u, vt)
        u_all[b], s_all[b], v_all[b] = u, s, vt.T
        kept[b] = keep_count(s, max_bond, cutoff)
    k = int(kept.max()) if n_items else 1

    left = np.zeros((n_items, m, k))
    right = np.zeros((n_items, k, n))
    s_out = np.zeros((n_items, k))
    entropy = np.zeros(n_items)
    discarded = np.zeros(n_items)
    for b in range(n_items):
        kb = kept[b]
        u, s, v = u_all[b, :, :kb], s_all[b, :kb], v_all[b, :, :kb]
        if absorb == "both":
            left[b, :, :kb] = u * np.sqrt(s)
            right[b, :kb, :] = (v * np.sqrt(s)).T
        elif absorb == "left":
            left[b, :, :kb] = u * s
            right[b, :kb, :] = v.T
        elif absorb == "right":
            left[b, :, :kb] = u
            right[b, :kb, :] = (v * s).T
        else:
            left[b, :, :kb] = u
            right[b, :kb, :] = v.T
        s_out[b, :kb] = s
        entropy[b] = entropy_of(s)
        discarded[b] = np.sqrt(np.sum(s_all[b, kb:] ** 2))

    dt = np.asarray(a).dtype
    out = SVDTruncation(left.reshape(*batch, m, k).astype(dt),
                        right.reshape(*batch, k, n).astype(dt),
                        s_out.reshape(*batch, k).astype(dt),
                        entropy.reshape(batch), discarded.reshape(batch))
    saved = SVDSaved(u_all.reshape(*batch, m, r), s_all.reshape(*batch, r),
                     v_all.reshape(*batch, n, r), kept.reshape(batch), k, absorb, dt)
    return out, saved


def broadened_inverse(x, eps: float):
    """``x / (x^2 + eps^2)``: ``1/x`` for ``|x| >> eps``, 0 at ``x = 0``, at most ``1/(2 eps)``."""
    return x / (x * x + max(eps * eps, np.finfo(np.float64).tiny))


def thin_svd_backward(u, s, v, g_u, g_s, g_v) -> np.ndarray:
    """``dL/da`` of ``a = U diag(s) V^T`` (thin, real) given ``dL/dU``, ``dL/ds``, ``dL/dV``.

    The standard formula, with ``x = U^T gU``, ``y = V^T gV``, ``A = x - x^T``,
    ``B = y - y^T`` and ``F_ij = 1/(s_j^2 - s_i^2)`` (i != j)::

        U [F o (A S + S B) + diag(gs)] V^T + (I - U U^T) gU S^-1 V^T + U S^-1 gV^T (I - V V^T)

    ``F_ij (A_ij s_j + s_i B_ij)`` is computed as
    ``(A + B)_ij / (2 (s_j - s_i)) + (A - B)_ij / (2 (s_j + s_i))``: the first part is singular
    only at a degenerate pair, the second only at a pair of zeros. Guard: every ``1/x`` is
    :func:`broadened_inverse` with ``eps = BROADENING * s_0``, equal to ``1/x`` for
    ``|x| >> eps`` (relative change ``(eps/x)^2``), bounded by ``1/(2 eps)`` and 0 at ``x = 0``,
    so an exactly degenerate pair drops its ``(A + B)`` term instead of dividing by zero."""
    r = len(s)
    eps = BROADENING * (s[0] if r else 0.0)
    x = u.T @ g_u
    y = v.T @ g_v
    a_, b_ = x - x.T, y - y.T
    gap = s[None, :] - s[:, None]                  # s_j - s_i
    total = s[None, :] + s[:, None]
    inner = 0.5 * ((a_ + b_) * broadened_inverse(gap, eps)
                   + (a_ - b_) * broadened_inverse(total, eps))
    inner[np.diag_indices(r)] = g_s
    s_inv = broadened_inverse(s, eps)
    g_a = u @ inner @ v.T
    g_a += (g_u - u @ x) @ np.diag(s_inv) @ v.T
    g_a += u @ np.diag(s_inv) @ (g_v - v @ y).T
    return g_a


def svd_truncate_backward(saved: SVDSaved, g_left=None, g_right=None, g_s=None) -> np.ndarray:
    """``dL/da`` given ``dL/dleft``, ``dL/dright`` and ``dL/ds`` (each may be ``None``).

    Per matrix, the kept columns of ``U``, ``s``, ``V`` get their gradients through the
    absorption; the zero padding and the discarded values get none (zero columns in ``gU``,
    ``gV``, zeros in ``gs``); then :func:`thin_svd_backward` on the full thin SVD."""
    u_all, s_all, v_all, kept, k, absorb, dt = saved
    *batch, m, r = u_all.shape
    n = v_all.shape[-2]
    u_all, s_all, v_all = u_all.reshape(-1, m, r), s_all.reshape(-1, r), v_all.reshape(-1, n, r)
    kept = np.asarray(kept).reshape(-1)
    n_items = u_all.shape[0]

    def flat(g, shape):
        return np.zeros((n_items,) + shape) if g is None else np.asarray(
            g, np.float64).reshape((n_items,) + shape)

    g_left, g_right, g_s = flat(g_left, (m, k)), flat(g_right, (k, n)), flat(g_s, (k,))
    g_a = np.zeros((n_items, m, n))
    for b in range(n_items):
        u, s, v, kb = u_all[b], s_all[b], v_all[b], kept[b]
        uk, sk, vk = u[:, :kb], s[:kb], v[:, :kb]
        gl, gr = g_left[b, :, :kb], g_right[b, :kb, :].T   # gr: (n, kb), like V
        g_u, g_v, g_sv = np.zeros((m, r)), np.zeros((n, r)), np.zeros(r)
        if absorb == "both":      # left = U sqrt(S), right = sqrt(S) V^T
            root = np.sqrt(sk)
            g_u[:, :kb] = gl * root
            g_v[:, :kb] = gr * root
            # d sqrt(s)/ds = 1/(2 sqrt(s)), broadened like 1/s
            half_inv_root = broadened_inverse(2 * root, BROADENING * np.sqrt(s[0]))
            g_sv[:kb] = (np.sum(gl * uk, axis=0) + np.sum(gr * vk, axis=0)) * half_inv_root
        elif absorb == "left":    # left = U S, right = V^T
            g_u[:, :kb] = gl * sk
            g_sv[:kb] = np.sum(gl * uk, axis=0)
            g_v[:, :kb] = gr
        elif absorb == "right":   # left = U, right = S V^T
            g_u[:, :kb] = gl
            g_v[:, :kb] = gr * sk
            g_sv[:kb] = np.sum(gr * vk, axis=0)
        else:                     # left = U, right = V^T
            g_u[:, :kb] = gl
            g_v[:, :kb] = gr
        g_sv[:kb] += g_s[b, :kb]
        g_a[b] = thin_svd_backward(u, s, v, g_u, g_sv, g_v)
    return g_a.reshape(*batch, m, n).astype(dt)
