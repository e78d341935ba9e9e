"""CPU tree node: one Numba kernel over (position, group of images) tasks.

A task forms the outer products ``K (rows, p^4)`` of a few images' four corner sites and
multiplies them by its position's tensor ``(p^4, chi)`` (BLAS through ``np.dot``; for tiny
tensors a plain loop is cheaper than the call). The backward recomputes ``K`` and gets the
tensor gradient as ``K^T g`` and the site gradients from ``g_K = g w^T`` by the product rule,
contracting pairs of corners first (two p^4 passes instead of four).

When there are few positions (the top of the tree), images are split into groups that run
in parallel, each with its own slice of the weight gradient, summed after; how many depends
on the sizes alone (:data:`fasttn.backend.PARTITION_THREADS`), never on the thread count.
"""
from __future__ import annotations

import numpy as np

from ..._numba import njit, prange
from ...backend import PARTITION_THREADS, kernel_threads

_K_ELEMENTS = 1 << 16   # outer-product rows per task: K stays in the L2 cache
_MAX_ROWS = 64
_SMALL = 256            # p^4 * chi at or below this: loops instead of np.dot


def _rows(p4: int, n: int) -> int:
    return max(1, min(n, _MAX_ROWS, _K_ELEMENTS // p4))


def _groups(n_pos: int, n: int) -> int:
    """Image groups per position: for the threads of
    :data:`~fasttn.backend.PARTITION_THREADS`, not those running, so that the groups' weight
    gradients are summed the same way for any thread count."""
    threads = PARTITION_THREADS
    return 1 if n_pos >= 4 * threads else max(1, min(threads, n))


@njit(inline="always")
def _kron4(x, s, r0, c0, p, k):
    """``k[(a, b, c, d)] = x_a x_b x_c x_d`` for the block at ``(r0, c0)`` of image ``s``."""
    idx = 0
    for a in range(p):
        fa = x[s, r0, c0, a]
        for b in range(p):
            fab = fa * x[s, r0, c0 + 1, b]
            for c in range(p):
                fabc = fab * x[s, r0 + 1, c0, c]
                for d in range(p):
                    k[idx] = fabc * x[s, r0 + 1, c0 + 1, d]
                    idx += 1


@njit(parallel=True, fastmath=True)
def _forward(x, wf, rows, groups, out):
    n, nh, nw, chi = out.shape
    p = x.shape[3]
    p4 = wf.shape[1]
    n_pos = nh * nw
    per_group = (n + groups - 1) // groups
    for task in prange(n_pos * groups):
        pos = task // groups
        grp = task % groups
        i, j = pos // nw, pos % nw
        w = wf[pos]
        K = np.empty((rows, p4), x.dtype)
        o = np.empty((rows, chi), x.dtype)
        s_end = min(n, (grp + 1) * per_group)
        for lo in range(grp * per_group, s_end, rows):
            m = min(rows, s_end - lo)
            for r in range(m):
                _kron4(x, lo + r, 2 * i, 2 * j, p, K[r])
            if p4 * chi <= _SMALL:
                for r in range(m):
                    for z in range(chi):
                        acc = 0.0
                        for t in range(p4):
                            acc += K[r, t] * w[t, z]
                        out[lo + r, i, j, z] = acc
            else:
                np.dot(K[:m], w, o[:m])
                for r in range(m):
                    for z in range(chi):
                        out[lo + r, i, j, z] = o[r, z]


@njit(parallel=True, fastmath=True)
def _backward(x, wf, g_out, rows, groups, need_g_x, g_x, g_wf):
    n, nh, nw, chi = g_out.shape
    p = x.shape[3]
    p4 = wf.shape[1]
    p2 = p * p
    n_pos = nh * nw
    per_group = (n + groups - 1) // groups
    for task in prange(n_pos * groups):
        pos = task // groups
        grp = task % groups
        i, j = pos // nw, pos % nw
        r0, c0 = 2 * i, 2 * j
        w = wf[pos]
        gw = g_wf[grp, pos]
        K = np.empty((rows, p4), x.dtype)
        G = np.empty((rows, chi), x.dtype)
        GK = np.empty((rows, p4), x.dtype)
        left = np.empty(p2, x.dtype)
        right = np.empty(p2, x.dtype)
        s_end = min(n, (grp + 1) * per_group)
        for lo in range(grp * per_group, s_end, rows):
            m = min(rows, s_end - lo)
            for r in range(m):
                _kron4(x, lo + r, r0, c0, p, K[r])
                for z in range(chi):
                    G[r, z] = g_out[lo + r, i, j, z]
            if p4 * chi <= _SMALL:
                for r in range(m):
                    for t in range(p4):
                        acc = 0.0
                        for z in range(chi):
                            gw[t, z] += K[r, t] * G[r, z]
                            acc += G[r, z] * w[t, z]
                        GK[r, t] = acc
            else:
                gw += np.dot(K[:m].T, G[:m])
                np.dot(G[:m], w.T, GK[:m])
            if not need_g_x:
                continue
            for r in range(m):
                s = lo + r
                # K = left (x) right with left = x_a x_b, right = x_c x_d
                for a in range(p):
                    for b in range(p):
                        left[a * p + b] = x[s, r0, c0, a] * x[s, r0, c0 + 1, b]
                        right[a * p + b] = x[s, r0 + 1, c0, a] * x[s, r0 + 1, c0 + 1, b]
                g_left = np.zeros(p2, x.dtype)
                g_right = np.zeros(p2, x.dtype)
                for u in range(p2):
                    acc = 0.0
                    lu = left[u]
                    for v in range(p2):
                        gk = GK[r, u * p2 + v]
                        acc += gk * right[v]
                        g_right[v] += gk * lu
                    g_left[u] = acc
                for a in range(p):
                    ga = 0.0
                    gc = 0.0
                    for b in range(p):
                        ga += g_left[a * p + b] * x[s, r0, c0 + 1, b]
                        gc += g_right[a * p + b] * x[s, r0 + 1, c0 + 1, b]
                    g_x[s, r0, c0, a] = ga
                    g_x[s, r0 + 1, c0, a] = gc
                for b in range(p):
                    gb = 0.0
                    gd = 0.0
                    for a in range(p):
                        gb += g_left[a * p + b] * x[s, r0, c0, a]
                        gd += g_right[a * p + b] * x[s, r0 + 1, c0, a]
                    g_x[s, r0, c0 + 1, b] = gb
                    g_x[s, r0 + 1, c0 + 1, b] = gd


def tree_node_forward(x: np.ndarray, w: np.ndarray):
    n, h, wd, p = x.shape
    nh, nw, chi = h // 2, wd // 2, w.shape[-1]
    wf = np.ascontiguousarray(w.reshape(nh * nw, p ** 4, chi))
    out = np.empty((n, nh, nw, chi), x.dtype)
    if n:
        with kernel_threads():
            _forward(x, wf, _rows(p ** 4, n), _groups(nh * nw, n), out)
    return out, (x, w)


def tree_node_backward(saved, g_out: np.ndarray, need_g_x: bool = True):
    x, w = saved
    n, h, wd, p = x.shape
    nh, nw, chi = h // 2, wd // 2, w.shape[-1]
    wf = np.ascontiguousarray(w.reshape(nh * nw, p ** 4, chi))
    groups = _groups(nh * nw, n)
    g_wf = np.zeros((groups, nh * nw, p ** 4, chi), x.dtype)
    g_x = np.empty_like(x) if need_g_x else np.empty((0, 0, 0, p), x.dtype)
    if n:
        with kernel_threads():
            _backward(x, wf, np.ascontiguousarray(g_out), _rows(p ** 4, n), groups,
                      need_g_x, g_x, g_wf)
    g_w = g_wf.sum(axis=0) if groups > 1 else g_wf[0]
    return (g_x if need_g_x else None), g_w.reshape(w.shape)
