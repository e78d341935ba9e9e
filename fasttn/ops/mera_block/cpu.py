"""CPU MERA block, chunk by chunk in structure-of-arrays form.

A chunk holds ``R`` blocks; every per-block quantity is stored as ``(components, R)`` so
that each contraction step is either a GEMM with a shared weight (``u1``, the isometries,
``M = u2 top``) or a loop whose innermost index runs over the chunk's blocks (the four legs,
whose matrices differ from block to block), which the compiler vectorises. Per chunk:

1. centre products ``xc (p^4, R)`` and quadrant products ``x3 (4, p^3, R)`` gathered from
   the sites;
2. ``z = u1^T xc`` (b^4, R) and ``v_q = w_q^T x3_q`` (b chi, R): GEMMs;
3. the four legs of ``z`` mapped through ``v_0..v_3`` one at a time (chi b^4 + chi^2 b^3 +
   chi^3 b^2 + chi^4 b per block), giving ``t2 (chi^4, R)``;
4. ``out = M^T t2``: a GEMM, ``M = u2 top`` folded once per call (nothing enters between
   them).

The backward recomputes steps 1-3 and runs them in reverse: weight gradients are GEMMs over
the chunk (added into the chunk's own slot, summed by the caller), site gradients are
scattered back by the product rule.
"""
from __future__ import annotations

import numpy as np

from ..._numba import njit, prange
from ...backend import PARTITION_THREADS, kernel_threads

# (row, column) of the sites in a block: the centre f g j k, then each quadrant's outer three
CENTRE = ((1, 1), (1, 2), (2, 1), (2, 2))
QUADRANTS = (((0, 0), (0, 1), (1, 0)), ((0, 2), (0, 3), (1, 3)),
             ((2, 0), (3, 0), (3, 1)), ((2, 3), (3, 2), (3, 3)))
_CENTRE = np.array(CENTRE, np.int64)
_QUADRANTS = np.array(QUADRANTS, np.int64)


@njit(inline="always")
def _leg(t, pre, n, post, v, m, out):
    """``out[(i, c, k), r] = sum_j t[(i, j, k), r] v[(j, c), r]`` for every block ``r``: one
    leg (size ``n`` between ``pre`` and ``post`` others) mapped through the block's own
    ``v : (n, m)``."""
    R = t.shape[1]
    out[:] = 0.0
    for i in range(pre):
        for j in range(n):
            for c in range(m):
                vrow = v[j * m + c]
                for k in range(post):
                    orow = out[(i * m + c) * post + k]
                    trow = t[(i * n + j) * post + k]
                    for r in range(R):
                        orow[r] += trow[r] * vrow[r]


@njit(inline="always")
def _leg_backward(t, pre, n, post, v, m, g_out, g_t, g_v):
    """Adjoint of :func:`_leg`: ``g_t`` (overwritten) and ``g_v`` (overwritten)."""
    R = t.shape[1]
    g_t[:] = 0.0
    g_v[:] = 0.0
    for i in range(pre):
        for j in range(n):
            for c in range(m):
                vrow = v[j * m + c]
                gvrow = g_v[j * m + c]
                for k in range(post):
                    grow = g_out[(i * m + c) * post + k]
                    trow = t[(i * n + j) * post + k]
                    gtrow = g_t[(i * n + j) * post + k]
                    for r in range(R):
                        gtrow[r] += grow[r] * vrow[r]
                        gvrow[r] += trow[r] * grow[r]


@njit(inline="always")
def _gather(x, lo, hi, nh, nw, p, xc, x3):
    """Centre and quadrant outer products of blocks ``lo..hi`` (flat over image, block row,
    block column) into ``xc (p^4, R)`` and ``x3 (4, p^3, R)``."""
    for blk in range(lo, hi):
        r = blk - lo
        img = blk // (nh * nw)
        r0 = 4 * ((blk // nw) % nh)
        c0 = 4 * (blk % nw)
        for i0 in range(p):
            f0 = x[img, r0 + 1, c0 + 1, i0]
            for i1 in range(p):
                f01 = f0 * x[img, r0 + 1, c0 + 2, i1]
                for i2 in range(p):
                    f012 = f01 * x[img, r0 + 2, c0 + 1, i2]
                    for i3 in range(p):
                        xc[((i0 * p + i1) * p + i2) * p + i3, r] = (
                            f012 * x[img, r0 + 2, c0 + 2, i3])
        for q in range(4):
            ra, ca = r0 + _QUADRANTS[q, 0, 0], c0 + _QUADRANTS[q, 0, 1]
            rb, cb = r0 + _QUADRANTS[q, 1, 0], c0 + _QUADRANTS[q, 1, 1]
            rc, cc = r0 + _QUADRANTS[q, 2, 0], c0 + _QUADRANTS[q, 2, 1]
            for i0 in range(p):
                for i1 in range(p):
                    f01 = x[img, ra, ca, i0] * x[img, rb, cb, i1]
                    for i2 in range(p):
                        x3[q, (i0 * p + i1) * p + i2, r] = f01 * x[img, rc, cc, i2]


@njit(inline="always")
def _chunk_forward(x, lo, hi, nh, nw, p, b, chi, u1f_t, wf_t, xc, x3, v, a1, a2, a3):
    """Steps 1-3 for one chunk; returns ``(z, t2)`` and fills the rest."""
    _gather(x, lo, hi, nh, nw, p, xc, x3)
    z = np.dot(u1f_t, xc)
    for q in range(4):
        np.dot(wf_t[q], x3[q], v[q])
    _leg(z, 1, b, b * b * b, v[0], chi, a1)
    _leg(a1, chi, b, b * b, v[1], chi, a2)
    _leg(a2, chi * chi, b, b, v[2], chi, a3)
    t2 = np.empty((chi ** 4, hi - lo), x.dtype)
    _leg(a3, chi * chi * chi, b, 1, v[3], chi, t2)
    return z, t2


@njit(inline="always")
def _chunk_space(dtype, p, b, chi, R):
    return (np.empty((p ** 4, R), dtype), np.empty((4, p ** 3, R), dtype),
            np.empty((4, b * chi, R), dtype), np.empty((chi * b ** 3, R), dtype),
            np.empty((chi * chi * b * b, R), dtype), np.empty((chi ** 3 * b, R), dtype))


@njit(parallel=True, fastmath=True)
def _forward(x, u1f_t, wf_t, m_t, p, b, chi, rows, out):
    n_img, nh, nw, d_out = out.shape
    n = n_img * nh * nw
    n_chunks = (n + rows - 1) // rows
    for t in prange(n_chunks):
        lo = t * rows
        hi = min(n, lo + rows)
        xc, x3, v, a1, a2, a3 = _chunk_space(x.dtype, p, b, chi, hi - lo)
        z, t2 = _chunk_forward(x, lo, hi, nh, nw, p, b, chi, u1f_t, wf_t, xc, x3, v, a1, a2,
                               a3)
        o = np.dot(m_t, t2)
        for blk in range(lo, hi):
            img = blk // (nh * nw)
            bi = (blk // nw) % nh
            bj = blk % nw
            for k in range(d_out):
                out[img, bi, bj, k] = o[k, blk - lo]


@njit(parallel=True, fastmath=True)
def _backward(x, u1f, u1f_t, wf, wf_t, m, p, b, chi, g_out, rows, g_x, g_u1f, g_wf, g_m):
    n_img, nh, nw, d_out = g_out.shape
    n = n_img * nh * nw
    n_chunks = (n + rows - 1) // rows
    for t in prange(n_chunks):
        lo = t * rows
        hi = min(n, lo + rows)
        R = hi - lo
        xc, x3, v, a1, a2, a3 = _chunk_space(x.dtype, p, b, chi, R)
        z, t2 = _chunk_forward(x, lo, hi, nh, nw, p, b, chi, u1f_t, wf_t, xc, x3, v, a1, a2,
                               a3)
        go = np.empty((d_out, R), x.dtype)
        for blk in range(lo, hi):
            img = blk // (nh * nw)
            bi = (blk // nw) % nh
            bj = blk % nw
            for k in range(d_out):
                go[k, blk - lo] = g_out[img, bi, bj, k]
        # out = m^T t2
        g_m[t] += np.dot(t2, go.T)
        g_t2 = np.dot(m, go)
        _, _, g_v, g_a1, g_a2, g_a3 = _chunk_space(x.dtype, p, b, chi, R)
        g_z = np.empty_like(z)
        _leg_backward(a3, chi * chi * chi, b, 1, v[3], chi, g_t2, g_a3, g_v[3])
        _leg_backward(a2, chi * chi, b, b, v[2], chi, g_a3, g_a2, g_v[2])
        _leg_backward(a1, chi, b, b * b, v[1], chi, g_a2, g_a1, g_v[1])
        _leg_backward(z, 1, b, b * b * b, v[0], chi, g_a1, g_z, g_v[0])
        # z = u1^T xc and v_q = w_q^T x3_q
        g_u1f[t] += np.dot(xc, g_z.T)
        g_xc = np.dot(u1f, g_z)
        g_x3 = np.empty_like(x3)
        for q in range(4):
            g_wf[t, q] += np.dot(x3[q], g_v[q].T)
            np.dot(wf[q], g_v[q], g_x3[q])
        # site gradients by the product rule; every site belongs to one block and one role
        for blk in range(lo, hi):
            r = blk - lo
            img = blk // (nh * nw)
            r0 = 4 * ((blk // nw) % nh)
            c0 = 4 * (blk % nw)
            for s in range(4):
                for a in range(p):
                    g_x[img, r0 + _CENTRE[s, 0], c0 + _CENTRE[s, 1], a] = 0.0
            for i0 in range(p):
                for i1 in range(p):
                    for i2 in range(p):
                        for i3 in range(p):
                            g = g_xc[((i0 * p + i1) * p + i2) * p + i3, r]
                            f0 = x[img, r0 + 1, c0 + 1, i0]
                            f1 = x[img, r0 + 1, c0 + 2, i1]
                            f2 = x[img, r0 + 2, c0 + 1, i2]
                            f3 = x[img, r0 + 2, c0 + 2, i3]
                            g_x[img, r0 + 1, c0 + 1, i0] += g * f1 * f2 * f3
                            g_x[img, r0 + 1, c0 + 2, i1] += g * f0 * f2 * f3
                            g_x[img, r0 + 2, c0 + 1, i2] += g * f0 * f1 * f3
                            g_x[img, r0 + 2, c0 + 2, i3] += g * f0 * f1 * f2
            for q in range(4):
                ra, ca = r0 + _QUADRANTS[q, 0, 0], c0 + _QUADRANTS[q, 0, 1]
                rb, cb = r0 + _QUADRANTS[q, 1, 0], c0 + _QUADRANTS[q, 1, 1]
                rc, cc = r0 + _QUADRANTS[q, 2, 0], c0 + _QUADRANTS[q, 2, 1]
                for a in range(p):
                    g_x[img, ra, ca, a] = 0.0
                    g_x[img, rb, cb, a] = 0.0
                    g_x[img, rc, cc, a] = 0.0
                for i0 in range(p):
                    for i1 in range(p):
                        for i2 in range(p):
                            g = g_x3[q, (i0 * p + i1) * p + i2, r]
                            f0 = x[img, ra, ca, i0]
                            f1 = x[img, rb, cb, i1]
                            f2 = x[img, rc, cc, i2]
                            g_x[img, ra, ca, i0] += g * f1 * f2
                            g_x[img, rb, cb, i1] += g * f0 * f2
                            g_x[img, rc, cc, i2] += g * f0 * f1


def _blocks_per_chunk(n_blocks: int) -> int:
    """Blocks per chunk: long vectors for the leg loops and GEMMs, two chunks per thread
    (of :data:`~fasttn.backend.PARTITION_THREADS`: the per-chunk gradient sums must not
    depend on the thread count)."""
    return max(1, min(128, -(-n_blocks // (2 * PARTITION_THREADS))))


def _fold_top(u2, top):
    chi4 = top.shape[0] ** 4
    return u2.reshape(chi4, chi4) @ top.reshape(chi4, -1)


def _weights(u1, w, p, b, chi):
    u1f = u1.reshape(p ** 4, b ** 4)
    wf = w.reshape(4, p ** 3, b * chi)
    return (u1f, np.ascontiguousarray(u1f.T), wf,
            np.ascontiguousarray(wf.transpose(0, 2, 1)))


def mera_block_forward(x, u1, w, u2, top):
    """See :func:`fasttn.ops.mera_block.mera_block_forward`."""
    n_img, h, wd, p = x.shape
    b, chi, d_out = u1.shape[-1], w.shape[-1], top.shape[-1]
    m = _fold_top(u2, top)
    out = np.empty((n_img, h // 4, wd // 4, d_out), x.dtype)
    _, u1f_t, _, wf_t = _weights(u1, w, p, b, chi)
    rows = _blocks_per_chunk(out.shape[0] * out.shape[1] * out.shape[2])
    with kernel_threads():
        _forward(x, u1f_t, wf_t, np.ascontiguousarray(m.T), p, b, chi, rows, out)
    return out, (x, u1, w, u2, top, m)


def mera_block_backward(saved, g_out):
    """See :func:`fasttn.ops.mera_block.mera_block_backward`."""
    x, u1, w, u2, top, m = saved
    n_img, h, wd, p = x.shape
    b, chi, d_out = u1.shape[-1], w.shape[-1], top.shape[-1]
    n_blocks = g_out.shape[0] * g_out.shape[1] * g_out.shape[2]
    rows = _blocks_per_chunk(n_blocks)
    n_chunks = -(-n_blocks // rows)
    dt = x.dtype
    g_x = np.empty_like(x)
    g_u1f = np.zeros((n_chunks, p ** 4, b ** 4), dt)
    g_wf = np.zeros((n_chunks, 4, p ** 3, b * chi), dt)
    g_m = np.zeros((n_chunks, chi ** 4, d_out), dt)
    u1f, u1f_t, wf, wf_t = _weights(u1, w, p, b, chi)
    with kernel_threads():
        _backward(x, u1f, u1f_t, wf, wf_t, np.ascontiguousarray(m), p, b, chi,
                  np.ascontiguousarray(g_out), rows, g_x, g_u1f, g_wf, g_m)
    chi4 = chi ** 4
    g_m = g_m.sum(axis=0, dtype=np.float64)
    # M = U2 Top with U2 : (chi^4, chi^4), Top : (chi^4, d_out)
    g_u2 = (g_m @ top.reshape(chi4, d_out).T.astype(np.float64)).astype(dt)
    g_top = (u2.reshape(chi4, chi4).T.astype(np.float64) @ g_m).astype(dt)
    return (g_x, g_u1f.sum(axis=0, dtype=np.float64).astype(dt).reshape(u1.shape),
            g_wf.sum(axis=0, dtype=np.float64).astype(dt).reshape(w.shape),
            g_u2.reshape(u2.shape), g_top.reshape(top.shape))
