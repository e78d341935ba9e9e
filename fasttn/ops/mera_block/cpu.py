"""CPU MERA block: one Numba pass over (image, block) pairs, every intermediate in registers/L1.

Per chunk of blocks, the central sites' outer products times ``u1`` (p^4 -> b^4) as one
GEMM (the block's largest step); per block, each quadrant's three
outer sites times its isometry (p^3 -> b x chi), the four legs of the ``u1`` output turned
into isometry outputs one at a time (chi b^4 + chi^2 b^3 + chi^3 b^2 + chi^4 b), then the
shared map ``M = u2 top`` (chi^4 -> d_out), folded once per call since nothing enters
between ``u2`` and ``top``. Nothing per block is written to memory but the output; the
backward recomputes the block and accumulates the weight gradients per chunk of blocks
(the ``u1`` gradient and the centre gradients as two more GEMMs per chunk).
"""
from __future__ import annotations

import numpy as np

from ..._numba import njit, prange
from ...backend import kernel_threads, num_threads

# (row, column) of the sites in a block: the centre f g j k, then each quadrant's outer three
CENTRE = ((1, 1), (1, 2), (2, 1), (2, 2))
QUADRANTS = (((0, 0), (0, 1), (1, 0)), ((0, 2), (0, 3), (1, 3)),
             ((2, 0), (3, 0), (3, 1)), ((2, 3), (3, 2), (3, 3)))
_CENTRE = np.array(CENTRE, np.int64)
_QUADRANTS = np.array(QUADRANTS, np.int64)


@njit(inline="always")
def _leg(t, pre, n, post, v, m, out):
    """``out[i, c, k] = sum_j t[i, j, k] v[j, c]`` on flat arrays: one leg of ``t`` (size n,
    between ``pre`` and ``post`` others) mapped through ``v : (n, m)``."""
    for i in range(pre):
        for c in range(m):
            for k in range(post):
                out[(i * m + c) * post + k] = 0.0
        for j in range(n):
            for c in range(m):
                vjc = v[j, c]
                for k in range(post):
                    out[(i * m + c) * post + k] += t[(i * n + j) * post + k] * vjc


@njit(inline="always")
def _leg_backward(t, pre, n, post, v, m, g_out, g_t, g_v):
    """Adjoint of :func:`_leg`: ``g_t = g_out v^T`` along the leg (overwritten) and
    ``g_v += sum t g_out``."""
    for i in range(pre):
        for j in range(n):
            for k in range(post):
                acc = 0.0
                for c in range(m):
                    acc += g_out[(i * m + c) * post + k] * v[j, c]
                g_t[(i * n + j) * post + k] = acc
            for c in range(m):
                acc = 0.0
                for k in range(post):
                    acc += t[(i * n + j) * post + k] * g_out[(i * m + c) * post + k]
                g_v[j, c] += acc


@njit(inline="always")
def _centre_product(x, img, r0, c0, p, xc):
    """Outer product of the central sites f, g, j, k of the block at (r0, c0), row-major."""
    for i0 in range(p):
        for i1 in range(p):
            for i2 in range(p):
                for i3 in range(p):
                    xc[((i0 * p + i1) * p + i2) * p + i3] = (
                        x[img, r0 + 1, c0 + 1, i0] * x[img, r0 + 1, c0 + 2, i1]
                        * x[img, r0 + 2, c0 + 1, i2] * x[img, r0 + 2, c0 + 2, i3])


@njit(inline="always")
def _block_rest(x, img, r0, c0, z, wf, p, b, chi, x3, v, a1, a2, a3, t2):
    """Given the block's ``z = centre @ u1`` (b^4): the isometries and the four legs, up to
    ``t2`` (chi^4)."""
    for q in range(4):
        ra, ca = r0 + _QUADRANTS[q, 0, 0], c0 + _QUADRANTS[q, 0, 1]
        rb, cb = r0 + _QUADRANTS[q, 1, 0], c0 + _QUADRANTS[q, 1, 1]
        rc, cc = r0 + _QUADRANTS[q, 2, 0], c0 + _QUADRANTS[q, 2, 1]
        for i0 in range(p):
            for i1 in range(p):
                for i2 in range(p):
                    x3[q, (i0 * p + i1) * p + i2] = (x[img, ra, ca, i0] * x[img, rb, cb, i1]
                                                     * x[img, rc, cc, i2])
        for k in range(b * chi):
            acc = 0.0
            for i in range(p * p * p):
                acc += x3[q, i] * wf[q, i, k]
            v[q, k // chi, k % chi] = acc
    _leg(z, 1, b, b * b * b, v[0], chi, a1)
    _leg(a1, chi, b, b * b, v[1], chi, a2)
    _leg(a2, chi * chi, b, b, v[2], chi, a3)
    _leg(a3, chi * chi * chi, b, 1, v[3], chi, t2)


@njit(inline="always")
def _chunk_centres(x, lo, hi, nh, nw, p, u1f):
    """Centre products of blocks ``lo..hi`` (flat index over image, block row, block column)
    and their ``z = xc @ u1`` as one GEMM."""
    xc = np.empty((hi - lo, p ** 4), x.dtype)
    for blk in range(lo, hi):
        img = blk // (nh * nw)
        _centre_product(x, img, 4 * ((blk // nw) % nh), 4 * (blk % nw), p, xc[blk - lo])
    return xc, np.dot(xc, u1f)


@njit(inline="always")
def _block_scratch(dtype, p, b, chi):
    """Per-thread space for one block: ``x3, v, a1, a2, a3, t2`` (or their gradients)."""
    return (np.empty((4, p ** 3), dtype), np.empty((4, b, chi), dtype),
            np.empty(chi * b ** 3, dtype), np.empty(chi * chi * b * b, dtype),
            np.empty(chi ** 3 * b, dtype), np.empty(chi ** 4, dtype))


def _blocks_per_chunk(n_blocks: int) -> int:
    """Blocks per chunk: enough rows for the chunk's GEMM with u1, two chunks per thread."""
    return max(1, min(256, -(-n_blocks // (2 * num_threads()))))


@njit(parallel=True, fastmath=True)
def _forward(x, u1f, wf, m, p, b, chi, rows, out):
    """Chunks of ``rows`` blocks: the centre products of a chunk times ``u1`` as one GEMM,
    then each block's isometries, legs and ``t2 @ m``."""
    n_img, nh, nw, d_out = out.shape
    n = n_img * nh * nw
    n_chunks = (n + rows - 1) // rows
    for t in prange(n_chunks):
        lo = t * rows
        hi = min(n, lo + rows)
        xc, z = _chunk_centres(x, lo, hi, nh, nw, p, u1f)
        x3, v, a1, a2, a3, t2 = _block_scratch(x.dtype, p, b, chi)
        for blk in range(lo, hi):
            img = blk // (nh * nw)
            bi = (blk // nw) % nh
            bj = blk % nw
            _block_rest(x, img, 4 * bi, 4 * bj, z[blk - lo], wf, p, b, chi, x3, v, a1, a2, a3,
                        t2)
            for o in range(d_out):
                acc = 0.0
                for k in range(chi ** 4):
                    acc += t2[k] * m[k, o]
                out[img, bi, bj, o] = acc


@njit(parallel=True, fastmath=True)
def _backward(x, u1f, u1f_t, wf, m, p, b, chi, g_out, rows, g_x, g_u1f, g_wf, g_m):
    """Per chunk of ``rows`` blocks: recompute each block, push ``g_out`` back through it to
    ``g_z`` (b^4 per block), then the chunk's ``u1`` gradient and centre gradients as two
    GEMMs; site gradients are written, weight gradients added into the chunk's own slot
    (summed by the caller)."""
    n_img, nh, nw, d_out = g_out.shape
    n = n_img * nh * nw
    n_chunks = (n + rows - 1) // rows
    for t in prange(n_chunks):
        lo = t * rows
        hi = min(n, lo + rows)
        xc, z = _chunk_centres(x, lo, hi, nh, nw, p, u1f)
        g_z = np.empty_like(z)
        x3, v, a1, a2, a3, t2 = _block_scratch(x.dtype, p, b, chi)
        _, g_v, g_a1, g_a2, g_a3, g_t2 = _block_scratch(x.dtype, p, b, chi)
        g_x3 = np.empty(p ** 3, x.dtype)
        for blk in range(lo, hi):
            img = blk // (nh * nw)
            bi = (blk // nw) % nh
            bj = blk % nw
            r0, c0 = 4 * bi, 4 * bj
            _block_rest(x, img, r0, c0, z[blk - lo], wf, p, b, chi, x3, v, a1, a2, a3, t2)
            # out = t2 @ m
            for k in range(chi ** 4):
                acc = 0.0
                for o in range(d_out):
                    go = g_out[img, bi, bj, o]
                    acc += m[k, o] * go
                    g_m[t, k, o] += t2[k] * go
                g_t2[k] = acc
            g_v[:] = 0.0
            _leg_backward(a3, chi * chi * chi, b, 1, v[3], chi, g_t2, g_a3, g_v[3])
            _leg_backward(a2, chi * chi, b, b, v[2], chi, g_a3, g_a2, g_v[2])
            _leg_backward(a1, chi, b, b * b, v[1], chi, g_a2, g_a1, g_v[1])
            _leg_backward(z[blk - lo], 1, b, b * b * b, v[0], chi, g_a1, g_z[blk - lo],
                          g_v[0])
            for q in range(4):
                # v[q] = x3[q] @ wf[q] (as b x chi)
                for i in range(p ** 3):
                    acc = 0.0
                    xi = x3[q, i]
                    for k in range(b * chi):
                        gv = g_v[q, k // chi, k % chi]
                        acc += wf[q, i, k] * gv
                        g_wf[t, q, i, k] += xi * gv
                    g_x3[i] = acc
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
                            g = g_x3[(i0 * p + i1) * p + i2]
                            f0 = x[img, ra, ca, i0]
                            f1 = x[img, rb, cb, i1]
                            f2 = x[img, rc, cc, i2]
                            g_x[img, ra, ca, i0] += g * f1 * f2
                            g_x[img, rb, cb, i1] += g * f0 * f2
                            g_x[img, rc, cc, i2] += g * f0 * f1
        # z = xc @ u1f: two GEMMs for the chunk
        g_u1f[t] += np.dot(xc.T, g_z)
        g_xc = np.dot(g_z, u1f_t)
        # xc = x_f (x) x_g (x) x_j (x) x_k: each site's gradient is g_xc against the others
        for blk in range(lo, hi):
            img = blk // (nh * nw)
            r0, c0 = 4 * ((blk // nw) % nh), 4 * (blk % nw)
            gc = g_xc[blk - lo]
            for s in range(4):
                rs, cs = r0 + _CENTRE[s, 0], c0 + _CENTRE[s, 1]
                for a in range(p):
                    g_x[img, rs, cs, a] = 0.0
            for i0 in range(p):
                for i1 in range(p):
                    for i2 in range(p):
                        for i3 in range(p):
                            g = gc[((i0 * p + i1) * p + i2) * p + i3]
                            f0 = x[img, r0 + 1, c0 + 1, i0]
                            f1 = x[img, r0 + 1, c0 + 2, i1]
                            f2 = x[img, r0 + 2, c0 + 1, i2]
                            f3 = x[img, r0 + 2, c0 + 2, i3]
                            g_x[img, r0 + 1, c0 + 1, i0] += g * f1 * f2 * f3
                            g_x[img, r0 + 1, c0 + 2, i1] += g * f0 * f2 * f3
                            g_x[img, r0 + 2, c0 + 1, i2] += g * f0 * f1 * f3
                            g_x[img, r0 + 2, c0 + 2, i3] += g * f0 * f1 * f2


def _fold_top(u2, top):
    chi4 = top.shape[0] ** 4
    return u2.reshape(chi4, chi4) @ top.reshape(chi4, -1)


def mera_block_forward(x, u1, w, u2, top):
    """See :func:`fasttn.ops.mera_block.mera_block_forward`."""
    n_img, h, wd, p = x.shape
    b, chi, d_out = u1.shape[-1], w.shape[-1], top.shape[-1]
    m = _fold_top(u2, top)
    out = np.empty((n_img, h // 4, wd // 4, d_out), x.dtype)
    rows = _blocks_per_chunk(out.shape[0] * out.shape[1] * out.shape[2])
    with kernel_threads():
        _forward(x, u1.reshape(p ** 4, b ** 4), w.reshape(4, p ** 3, b * chi), m, p, b, chi,
                 rows, out)
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
    with kernel_threads():
        u1f = u1.reshape(p ** 4, b ** 4)
        _backward(x, u1f, np.ascontiguousarray(u1f.T), w.reshape(4, p ** 3, b * chi), m, p, b,
                  chi, np.ascontiguousarray(g_out), rows, g_x, g_u1f, g_wf, g_m)
    chi4 = chi ** 4
    g_m = g_m.sum(axis=0, dtype=np.float64)
    # M = U2 Top with U2 : (chi^4, chi^4), Top : (chi^4, d_out)
    g_u2 = (g_m @ top.reshape(chi4, d_out).T.astype(np.float64)).astype(dt)
    g_top = (u2.reshape(chi4, chi4).T.astype(np.float64) @ g_m).astype(dt)
    return (g_x, g_u1f.sum(axis=0, dtype=np.float64).astype(dt).reshape(u1.shape),
            g_wf.sum(axis=0, dtype=np.float64).astype(dt).reshape(w.shape),
            g_u2.reshape(u2.shape), g_top.reshape(top.shape))
