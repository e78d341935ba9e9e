"""CPU MERA block for wide sites (raw patch vectors, ``p`` of 8 and more).

The chunked kernel of ``cpu.py`` forms the centre's outer product, ``p^4`` entries per
block (83,521 for 4x4 patches plus the constant), and scatters its gradient back entry by
entry; for wide sites that dominates everything. Here the four centre sites enter ``u1`` one
after another instead: ``T1 = (f x g) U`` with ``U = u1 (p^2, p^2 b^4)`` is one GEMM with
``K = p^2`` over all blocks, and sites ``j`` and ``k`` are then batched matrix-vector
products (``p^2 b^4`` and ``p b^4`` per block). Each quadrant likewise: its first two
sites into ``w_q`` by one GEMM, then the third. The small legs are batched products. Same network, same saved tuple as ``cpu.py``; the
backward recomputes the forward chunk by chunk and runs it in reverse.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from .cpu import CENTRE, QUADRANTS, _fold_top

# sites per block at which this route replaces the chunked kernel (p^4 = 4,096 centre
# entries per block; measured crossover between p = 5 and p = 9 in float32)
WIDE_SITES = 8
# blocks per chunk: T1 takes p^2 b^4 entries per block (4,624 for p = 17, b = 2)
_CHUNK = 1024


def _blocks(x: np.ndarray) -> np.ndarray:
    """``(n, H, W, p) -> (n H/4 W/4, 4, 4, p)``, the blocks' sites, row-major blocks."""
    n, h, w, p = x.shape
    return x.reshape(n, h // 4, 4, w // 4, 4, p).transpose(0, 1, 3, 2, 4, 5).reshape(
        -1, 4, 4, p)


def _outer(*vs: np.ndarray) -> np.ndarray:
    """Per-row outer product of ``(N, p)`` rows, flattened: ``(N, p^len(vs))``."""
    out = vs[0]
    for v in vs[1:]:
        out = (out[:, :, None] * v[:, None, :]).reshape(out.shape[0], -1)
    return out


def _chunk_forward(xb, u, wq, b, chi):
    """The block network up to ``t2 (N, chi^4)`` for the sites ``xb (N, 4, 4, p)``, with
    everything the backward needs."""
    n, p = xb.shape[0], xb.shape[-1]
    b4 = b ** 4
    xf, xg, xj, xk = (xb[:, r, c] for r, c in CENTRE)
    f = _outer(xf, xg)                                            # (N, p^2)
    t1 = f @ u                                                    # (N, p^2 b^4): (j, k, Z)
    t2c = np.matmul(xj[:, None, :], t1.reshape(n, p, p * b4)).reshape(n, p, b4)  # (k, Z)
    z = np.matmul(xk[:, None, :], t2c).reshape(n, b, b, b, b)     # (Q, R, S, T)
    # quadrant q: its first two sites into w_q (one GEMM, K = p^2), then the third
    x2 = [_outer(xb[:, quad[0][0], quad[0][1]], xb[:, quad[1][0], quad[1][1]])
          for quad in QUADRANTS]                                  # (N, p^2) each
    y2 = [(x2[q] @ wq[q]).reshape(n, p, b * chi) for q in range(4)]  # (N, p, b chi)
    v = [np.matmul(xb[:, quad[2][0], quad[2][1]][:, None, :], y2[q]).reshape(n, b, chi)
         for q, quad in enumerate(QUADRANTS)]
    a1 = np.einsum("nqrst,nqa->narst", z, v[0])
    a2 = np.einsum("narst,nrb->nabst", a1, v[1])
    a3 = np.einsum("nabst,nsc->nabct", a2, v[2])
    t2 = np.einsum("nabct,ntd->nabcd", a3, v[3]).reshape(n, chi ** 4)
    return t2, (f, t1, t2c, z, x2, y2, v, a1, a2, a3)


def mera_block_forward(x, u1, w, u2, top):
    """See :func:`fasttn.ops.mera_block.mera_block_forward`."""
    n_img, h, wd, p = x.shape
    b, chi, d_out = u1.shape[-1], w.shape[-1], top.shape[-1]
    m = _fold_top(u2, top)
    u = u1.reshape(p * p, p * p * b ** 4)
    wq = w.reshape(4, p * p, p * b * chi)
    xb = _blocks(x)
    out = np.empty((xb.shape[0], d_out), x.dtype)
    for lo in range(0, xb.shape[0], _CHUNK):
        t2, _ = _chunk_forward(xb[lo:lo + _CHUNK], u, wq, b, chi)
        out[lo:lo + _CHUNK] = t2 @ m
    return out.reshape(n_img, h // 4, wd // 4, d_out), (x, u1, w, u2, top, m)


def _site_grads(g_outer: np.ndarray, vs: Tuple[np.ndarray, ...]) -> Tuple[np.ndarray, ...]:
    """Gradients of the rows ``vs`` from that of their outer product (product rule)."""
    n, p = vs[0].shape
    g = g_outer.reshape((n,) + (p,) * len(vs))
    letters = "ijk"[:len(vs)]
    out = []
    for s in range(len(vs)):
        others = [f"n{letters[t]}" for t in range(len(vs)) if t != s]
        spec = f"n{letters}," + ",".join(others) + f"->n{letters[s]}"
        out.append(np.einsum(spec, g, *(vs[t] for t in range(len(vs)) if t != s),
                             optimize=True))
    return tuple(out)


def mera_block_backward(saved, g_out):
    """See :func:`fasttn.ops.mera_block.mera_block_backward`."""
    x, u1, w, u2, top, m = saved
    n_img, h, wd, p = x.shape
    b, chi, d_out = u1.shape[-1], w.shape[-1], top.shape[-1]
    b4 = b ** 4
    dt = x.dtype
    u = u1.reshape(p * p, p * p * b4)
    wq = w.reshape(4, p * p, p * b * chi)
    xb = _blocks(x)
    go = np.ascontiguousarray(g_out).reshape(-1, d_out)
    g_xb = np.empty_like(xb)
    g_u = np.zeros(u.shape)
    g_w = np.zeros(wq.shape)
    g_m = np.zeros(m.shape)
    for lo in range(0, xb.shape[0], _CHUNK):
        xc = xb[lo:lo + _CHUNK]
        gc = go[lo:lo + _CHUNK]
        n = xc.shape[0]
        t2, (f, t1, t2c, z, x2, y2, v, a1, a2, a3) = _chunk_forward(xc, u, wq, b, chi)
        g_m += t2.T @ gc
        g_t2 = (gc @ m.T).reshape(n, chi, chi, chi, chi)
        g_a3 = np.einsum("nabcd,ntd->nabct", g_t2, v[3])
        g_v3 = np.einsum("nabct,nabcd->ntd", a3, g_t2)
        g_a2 = np.einsum("nabct,nsc->nabst", g_a3, v[2])
        g_v2 = np.einsum("nabst,nabct->nsc", a2, g_a3)
        g_a1 = np.einsum("nabst,nrb->narst", g_a2, v[1])
        g_v1 = np.einsum("narst,nabst->nrb", a1, g_a2)
        g_z = np.einsum("narst,nqa->nqrst", g_a1, v[0]).reshape(n, b4)
        g_v0 = np.einsum("nqrst,narst->nqa", z, g_a1)
        xf, xg, xj, xk = (xc[:, r, c] for r, c in CENTRE)
        # z = xk . T2c, T2c = xj . T1, T1 = F U
        g_xk = np.matmul(t2c, g_z[:, :, None])[:, :, 0]
        g_t2c = (xk[:, :, None] * g_z[:, None, :]).reshape(n, p * b4)
        g_xj = np.matmul(t1.reshape(n, p, p * b4), g_t2c[:, :, None])[:, :, 0]
        g_t1 = (xj[:, :, None] * g_t2c[:, None, :]).reshape(n, p * p * b4)
        g_u += f.T @ g_t1
        g_xf, g_xg = _site_grads(g_t1 @ u.T, (xf, xg))
        g_site = {CENTRE[0]: g_xf, CENTRE[1]: g_xg, CENTRE[2]: g_xj, CENTRE[3]: g_xk}
        for q, g_vq in enumerate((g_v0, g_v1, g_v2, g_v3)):
            quad = QUADRANTS[q]
            g_vq = g_vq.reshape(n, 1, b * chi)
            x_third = xc[:, quad[2][0], quad[2][1]]
            # v = x3rd . Y2, Y2 = X2 W
            g_third = np.matmul(y2[q], g_vq.transpose(0, 2, 1))[:, :, 0]
            g_y2 = (x_third[:, :, None] * g_vq).reshape(n, p * b * chi)
            g_w[q] += x2[q].T @ g_y2
            g_first, g_second = _site_grads(g_y2 @ wq[q].T, (xc[:, quad[0][0], quad[0][1]],
                                                             xc[:, quad[1][0], quad[1][1]]))
            g_site.update(zip(quad, (g_first, g_second, g_third)))
        for (r, c), g in g_site.items():
            g_xb[lo:lo + n, r, c] = g
    g_x = g_xb.reshape(n_img, h // 4, wd // 4, 4, 4, p).transpose(0, 1, 3, 2, 4, 5).reshape(
        x.shape)
    chi4 = chi ** 4
    g_u2 = g_m @ top.reshape(chi4, d_out).T.astype(np.float64)
    g_top = u2.reshape(chi4, chi4).T.astype(np.float64) @ g_m
    return (np.ascontiguousarray(g_x), g_u.astype(dt).reshape(u1.shape),
            g_w.astype(dt).reshape(w.shape), g_u2.astype(dt).reshape(u2.shape),
            g_top.astype(dt).reshape(top.shape))
