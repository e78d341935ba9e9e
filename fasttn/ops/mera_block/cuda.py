"""GPU MERA block: the steps of :mod:`.cpu` as batched products over all blocks at once.

Written against the array module of the input (``xp = array_module(x)``), so on CuPy arrays
every product below is a cuBLAS (strided-)batched GEMM and the same code runs on NumPy
arrays in the tests. With ``B`` blocks (image, block row, block column flattened):

1. centre outer products ``xc (B, p^4)`` and quadrant outer products ``x3 (4, B, p^3)``;
2. ``z = xc u1`` (one GEMM, ``u1`` shared) and ``v_q = x3_q w_q`` (a batch of four GEMMs);
3. the four legs of ``z`` mapped through ``v_0..v_3``: per leg one batched GEMM over the
   blocks (each block has its own ``v_q``), ``(B, rest, b) @ (B, b, chi) -> (B, rest, chi)``;
   the new leg lands last and the next leg first, so after four legs ``t2 (B, chi^4)`` is
   in ``(A, B, C, D)`` order with no explicit transposes of the data;
4. ``out = t2 M`` with ``M = u2 top`` folded once per call.

The backward recomputes steps 1-3 from ``x`` (as the CPU kernel does, so ``saved`` stays
the inputs plus ``M``) and runs them in reverse; site gradients by the product rule.
Imported only when an op receives a non-NumPy array; nothing here imports CuPy itself.
"""
from __future__ import annotations

from ...backend import array_module
from .cpu import CENTRE, QUADRANTS


def _fold_top(xp, u2, top):
    chi4 = top.shape[0] ** 4
    return xp.matmul(u2.reshape(chi4, chi4), top.reshape(chi4, -1))


def _sites(x):
    """Every block's 16 sites: ``(B, 4, 4, p)``, blocks flattened over (image, row, col)."""
    xp = array_module(x)
    n, h, wd, p = x.shape
    blocks = x.reshape(n, h // 4, 4, wd // 4, 4, p).transpose(0, 1, 3, 2, 4, 5)
    return xp.ascontiguousarray(blocks).reshape(n * (h // 4) * (wd // 4), 4, 4, p)


def _outer(factors):
    """Outer product of ``(batch, p)`` vectors: ``(batch, p ** len(factors))``, first factor
    slowest (the row-major order of ``u1`` and ``w``)."""
    # sizes spelled out rather than -1 throughout: an empty batch makes -1 ambiguous
    out = factors[0]
    for f in factors[1:]:
        out = (out[..., :, None] * f[..., None, :]).reshape(*f.shape[:-1],
                                                            out.shape[-1] * f.shape[-1])
    return out


def _quadrant_factors(xp, sb):
    """Three ``(4, B, p)`` stacks: each quadrant's first, second and third outer site."""
    return [xp.stack([sb[:, QUADRANTS[q][i][0], QUADRANTS[q][i][1]] for q in range(4)])
            for i in range(3)]


def _forward_legs(xp, x, u1, w):
    """Steps 1-3; returns what the backward reuses."""
    p, b, chi = x.shape[-1], u1.shape[-1], w.shape[-1]
    sb = _sites(x)
    n_blocks = sb.shape[0]
    centre = [sb[:, r, c] for r, c in CENTRE]
    quads = _quadrant_factors(xp, sb)
    xc = _outer(centre)                                           # (B, p^4)
    x3 = _outer(quads)                                            # (4, B, p^3)
    z = xp.matmul(xc, u1.reshape(p ** 4, b ** 4))                 # (B, b^4)
    v = xp.matmul(x3, w.reshape(4, p ** 3, b * chi)).reshape(4, n_blocks, b, chi)
    # t[q] is the tensor entering leg q, viewed as (B, b, rest) with that leg first
    t = [z.reshape(n_blocks, b, b ** 3)]
    for q in range(4):
        nxt = xp.matmul(t[q].transpose(0, 2, 1), v[q])            # (B, rest, chi)
        size = nxt.shape[1] * chi
        t.append(nxt.reshape(n_blocks, b, size // b) if q < 3 else nxt.reshape(n_blocks, size))
    return sb, centre, quads, xc, x3, v, t


def mera_block_forward(x, u1, w, u2, top):
    """See :func:`fasttn.ops.mera_block.mera_block_forward`."""
    xp = array_module(x)
    n, h, wd, _ = x.shape
    m = _fold_top(xp, u2, top)
    t2 = _forward_legs(xp, x, u1, w)[-1][-1]
    out = xp.matmul(t2, m).reshape(n, h // 4, wd // 4, m.shape[1])
    return out, (x, u1, w, u2, top, m)


def _leave_one_out(xp, g, factors, keep):
    """``sum over every index but number keep of g[..., i0, i1, ...] * prod f_j[..., i_j]``.

    ``g : (*batch, p, ..., p)`` with one axis per factor, ``factors[j] : (*batch, p)``;
    the kept axis is moved last, then the others are contracted leading-first, each a
    batched (1 x p) @ (p x rest) product."""
    batch = g.shape[:-len(factors)]
    p = g.shape[-1]
    size = 1
    for d in batch:
        size *= d
    g = xp.moveaxis(g, len(batch) + keep, -1).reshape(size, p, p ** (len(factors) - 1))
    for j in (j for j in range(len(factors)) if j != keep):
        g = xp.matmul(factors[j].reshape(size, 1, p), g)
        g = g.reshape(size, p, g.shape[-1] // p)
    return g.reshape(*batch, p)


def mera_block_backward(saved, g_out):
    """See :func:`fasttn.ops.mera_block.mera_block_backward`."""
    x, u1, w, u2, top, m = saved
    xp = array_module(x)
    n, h, wd, p = x.shape
    b, chi, d_out = u1.shape[-1], w.shape[-1], top.shape[-1]
    chi4 = chi ** 4
    sb, centre, quads, xc, x3, v, t = _forward_legs(xp, x, u1, w)
    n_blocks = sb.shape[0]
    go = g_out.reshape(n_blocks, d_out)
    # out = t2 M, M = U2 Top with U2 : (chi^4, chi^4), Top : (chi^4, d_out)
    g_m = xp.matmul(t[4].T, go)
    g_u2 = xp.matmul(g_m, top.reshape(chi4, d_out).T)
    g_top = xp.matmul(u2.reshape(chi4, chi4).T, g_m)
    g_t = xp.matmul(go, m.T)
    # legs in reverse: nxt = t_q^T v_q per block
    g_v = xp.empty_like(v)
    for q in range(3, -1, -1):
        g_nxt = g_t.reshape(n_blocks, t[q].shape[2], chi)         # (B, rest, chi)
        g_v[q] = xp.matmul(t[q], g_nxt)                           # (B, b, chi)
        g_t = xp.matmul(g_nxt, v[q].transpose(0, 2, 1)).transpose(0, 2, 1)  # (B, b, rest)
    g_z = g_t.reshape(n_blocks, b ** 4)
    # z = xc u1, v_q = x3_q w_q
    g_u1 = xp.matmul(xc.T, g_z).reshape(u1.shape)
    g_xc = xp.matmul(g_z, u1.reshape(p ** 4, b ** 4).T)
    g_v = g_v.reshape(4, n_blocks, b * chi)
    g_w = xp.matmul(x3.transpose(0, 2, 1), g_v).reshape(w.shape)
    g_x3 = xp.matmul(g_v, w.reshape(4, p ** 3, b * chi).transpose(0, 2, 1))
    # site gradients by the product rule; every site is in one block and has one role
    g_sb = xp.empty_like(sb)
    g_xc = g_xc.reshape(n_blocks, p, p, p, p)
    for s, (r, c) in enumerate(CENTRE):
        g_sb[:, r, c] = _leave_one_out(xp, g_xc, centre, s)
    g_x3 = g_x3.reshape(4, n_blocks, p, p, p)
    for i in range(3):
        g_site = _leave_one_out(xp, g_x3, quads, i)               # (4, B, p)
        for q in range(4):
            r, c = QUADRANTS[q][i]
            g_sb[:, r, c] = g_site[q]
    g_x = g_sb.reshape(n, h // 4, wd // 4, 4, 4, p).transpose(0, 1, 3, 2, 4, 5)
    g_x = xp.ascontiguousarray(g_x).reshape(n, h, wd, p)
    return g_x, g_u1, g_w, g_u2.reshape(u2.shape), g_top.reshape(top.shape)
