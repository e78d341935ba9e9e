"""MPO contractions of a sweep as Numba functions (no Python between them).

The same contractions as ``cpu.py`` (its ``tensordot`` versions are the reference), on
float64 C-contiguous arrays, for the compiled sweep (``train/pal_compiled.py``) where one
bond update is a few small products that NumPy's per-call overhead would dominate:

* ``prefix_step(L, core) -> L'`` and ``suffix_step(core, R) -> R'`` (``cpu.prefix_step``,
  ``cpu.suffix_step``);
* ``bond_matrix(c1, c2)``: the bond tensor ``(Da, i1, o1, i2, o2, Db)`` as the
  ``(Da i1 o1, i2 o2 Db)`` matrix that the split factorises;
* ``dense_from_bond(L, B, R)``: ``W`` (``MPOSweep.dense_from_bond``);
* ``bond_grad(L, gW, R)``: ``dL/dB`` as that matrix (``MPOSweep.bond_grad``);
* ``env_norm_sq``: the squared spectral norm of an environment (``MPOSweep.step_scale``);
* ``ahat_left_step``, ``ahat_dense_from_bond``, ``ahat_bond_grad``: the same with a fixed
  matrix ``Ahat`` carried in the left environments, for when ``W`` is only ever used as
  ``Ahat @ W`` (a frozen linear layer folded in front): ``W`` and ``dL/dW`` never formed.

Every product goes to BLAS (``np.dot`` inside the kernel; see :func:`mm`); axes are
rearranged by plain copies between products (:func:`swap_axes`).
"""
from __future__ import annotations

import math

import numpy as np

from ..._numba import njit

__all__ = ["prefix_step", "suffix_step", "bond_matrix", "dense_from_bond", "bond_grad",
           "env_norm_sq", "mm", "mm_tn", "swap_axes", "reverse_axes3", "ahat_left_step",
           "ahat_bond_operand", "ahat_dense_from_bond", "ahat_bond_grad"]

_EPS = float(np.finfo(np.float64).eps)


@njit
def mm(a, b, out):
    """``out = a @ b`` for 2-D contiguous float64 arrays, through BLAS: called from inside a
    kernel, ``np.dot`` costs 0.2 us on a 16 x 16 x 16 product against 0.7 us for loops that
    vectorise along rows, and 0.3 us against 4 us on 64 x 16 x 4, where the rows are short
    (measured on the development machine)."""
    np.dot(a, b, out)


@njit
def mm_tn(a, b, out):
    """``out = a^T @ b`` (``a (k, m)``, ``b (k, n)``)."""
    np.dot(a.T, b, out)


@njit
def prefix_step(left, core, out):
    """``L[k+1] (I< i, O< o, D')`` from ``L[k] (I<, O<, D)`` and ``core (D, i, o, D')``."""
    il, ol, d = left.shape
    _, ci, co, d2 = core.shape
    t = np.empty((il * ol, ci * co * d2))
    mm(left.reshape(il * ol, d), core.reshape(d, ci * co * d2), t)
    t5 = t.reshape(il, ol, ci, co, d2)
    o5 = out.reshape(il, ci, ol, co, d2)
    for a in range(il):
        for i in range(ci):
            for b in range(ol):
                o5[a, i, b] = t5[a, b, i]


@njit
def suffix_step(core, right, out):
    """``R[k] (D, i I>, o O>)`` from ``core (D, i, o, D')`` and ``R[k+1] (D', I>, O>)``."""
    d, ci, co, d2 = core.shape
    _, ir, orr = right.shape
    t = np.empty((d * ci * co, ir * orr))
    mm(core.reshape(d * ci * co, d2), right.reshape(d2, ir * orr), t)
    t5 = t.reshape(d, ci, co, ir, orr)
    o5 = out.reshape(d, ci, ir, co, orr)
    for a in range(d):
        for i in range(ci):
            for j in range(ir):
                for o in range(co):
                    o5[a, i, j, o] = t5[a, i, o, j]


@njit
def bond_matrix(c1, c2, out):
    """``(Da i1 o1, i2 o2 Db)`` bond matrix of ``c1 (Da, i1, o1, D)`` and ``c2 (D, i2, o2, Db)``."""
    da, i1, o1, d = c1.shape
    _, i2, o2, db = c2.shape
    mm(c1.reshape(da * i1 * o1, d), c2.reshape(d, i2 * o2 * db), out)


@njit
def dense_from_bond(left, bond, right, i1, o1, out):
    """``W (I< i1 i2 I>, O< o1 o2 O>)`` from ``L[k] (I<, O<, Da)``, the bond matrix
    ``(Da i1 o1, i2 o2 Db)`` and ``R[k+2] (Db, I>, O>)``.

    ``T1 = L B`` over ``Da`` then ``T2 = T1 R`` over ``Db``, in the index order
    ``(I<, O<, i1, o1, i2, o2, I>, O>)``, then one permutation into ``W``'s."""
    il, ol, da = left.shape
    db, ir, orr = right.shape
    m, n = bond.shape
    i2o2 = n // db
    rest = i1 * o1 * i2o2
    t1 = np.empty((il * ol, rest * db))
    mm(left.reshape(il * ol, da), bond.reshape(da, rest * db), t1)
    t2 = np.empty((il * ol * rest, ir * orr))
    mm(t1.reshape(il * ol * rest, db), right.reshape(db, ir * orr), t2)
    i2 = out.shape[0] // (il * i1 * ir)
    o2 = i2o2 // i2
    _permute_w(t2.reshape(il, ol, i1, o1, i2, o2, ir, orr),
               out.reshape(il, i1, i2, ir, ol, o1, o2, orr), False)


@njit
def _permute_w(t8, w8, to_t):
    """Copy between ``W``'s layout ``w8 (I<, i1, i2, I>, O<, o1, o2, O>)`` and the bond
    contraction's ``t8 (I<, O<, i1, o1, i2, o2, I>, O>)``: into ``t8`` when ``to_t``, else
    into ``w8`` (the two directions of one permutation)."""
    il, ol, i1, o1, i2, o2, ir, orr = t8.shape
    for a in range(il):
        for p in range(i1):
            for q in range(i2):
                for j in range(ir):
                    for b in range(ol):
                        for r in range(o1):
                            for s in range(o2):
                                tv = t8[a, b, p, r, q, s, j]
                                wv = w8[a, p, q, j, b, r, s]
                                if to_t:
                                    for t in range(orr):
                                        tv[t] = wv[t]
                                else:
                                    for t in range(orr):
                                        wv[t] = tv[t]


@njit
def bond_grad(left, g_w, right, i1, o1, i2, o2, out):
    """``dL/dB`` as the ``(Da i1 o1, i2 o2 Db)`` matrix from ``dL/dW`` (the adjoint of
    :func:`dense_from_bond`): ``g_w`` permuted to ``(I<, O<, i1, o1, i2, o2, I>, O>)``,
    ``L^T`` over ``(I<, O<)``, then ``R`` over ``(I>, O>)``."""
    il, ol, da = left.shape
    db, ir, orr = right.shape
    rest = i1 * o1 * i2 * o2
    gp = np.empty((il * ol, rest * ir * orr))
    _permute_w(gp.reshape(il, ol, i1, o1, i2, o2, ir, orr),
               g_w.reshape(il, i1, i2, ir, ol, o1, o2, orr), True)
    t = np.empty((da, rest * ir * orr))
    mm_tn(left.reshape(il * ol, da), gp, t)
    # out (Da rest, Db) = t (Da rest, I> O>) @ R^T
    rt = np.ascontiguousarray(right.reshape(db, ir * orr).T)
    mm(t.reshape(da * rest, ir * orr), rt, out.reshape(da * rest, db))


@njit
def _sym_max_eig(g):
    """Largest eigenvalue of the symmetric ``g`` (cyclic Jacobi, to ``eps`` relative)."""
    n = g.shape[0]
    a = g.copy()
    for sweep in range(60):
        off = 0.0
        diag = 0.0
        for i in range(n):
            diag += a[i, i] * a[i, i]
            for j in range(i + 1, n):
                off += a[i, j] * a[i, j]
        if off <= (_EPS * _EPS) * diag or off == 0.0:
            break
        for p in range(n - 1):
            for q in range(p + 1, n):
                apq = a[p, q]
                if apq == 0.0:
                    continue
                theta = (a[q, q] - a[p, p]) / (2.0 * apq)
                t = math.copysign(1.0, theta) / (abs(theta) + math.sqrt(theta * theta + 1.0))
                c = 1.0 / math.sqrt(t * t + 1.0)
                s = t * c
                for k in range(n):  # columns p, q
                    akp = a[k, p]
                    akq = a[k, q]
                    a[k, p] = c * akp - s * akq
                    a[k, q] = s * akp + c * akq
                for k in range(n):  # rows p, q
                    apk = a[p, k]
                    aqk = a[q, k]
                    a[p, k] = c * apk - s * aqk
                    a[q, k] = s * apk + c * aqk
    best = a[0, 0]
    for i in range(1, n):
        best = max(best, a[i, i])
    return best


@njit
def env_norm_sq(env, side):
    """``|E|_2^2`` of an environment as a matrix: ``L (I< O<, D)`` for ``side = 0``, ``R (D,
    I> O>)`` for ``side = 1``; the largest eigenvalue of its ``D x D`` Gram matrix."""
    if side == 0:
        d = env.shape[2]
        mat = env.reshape(env.shape[0] * env.shape[1], d)
        g = np.empty((d, d))
        mm_tn(mat, mat, g)
    else:
        d = env.shape[0]
        mat = env.reshape(d, env.shape[1] * env.shape[2])
        g = np.empty((d, d))
        for i in range(d):
            for j in range(d):
                acc = 0.0
                for t in range(mat.shape[1]):
                    acc += mat[i, t] * mat[j, t]
                g[i, j] = acc
    return _sym_max_eig(g)


# -- environments with a fixed matrix on the input side ---------------------------------
# With ``W`` only ever used as ``Ahat @ W`` (``Ahat (P, prod in)``: a frozen linear layer in
# front, folded), the left environment can carry ``Ahat`` instead of the input indices it
# sums over: ``AL[k][r, O<, D_k, I>=k] = sum_{I<} Ahat[r, (I<, I>=k)] L[k][I<, O<, D_k]``.
# Then neither ``W`` nor ``dL/dW`` (both ``prod in x prod out``) is formed.

@njit
def swap_axes(x, d0, d1, d2, d3, out):
    """``out (d0, d2, d1, d3) = x (d0, d1, d2, d3)`` with axes 1 and 2 swapped (flat, C-order):
    the one permutation the contractions below need, a copy along runs of ``d3``."""
    if d1 == 1 or d2 == 1:  # nothing moves (the edge bonds' environments)
        n = d0 * d1 * d2 * d3
        out[:n] = x[:n]
        return
    for a in range(d0):
        base = a * d1 * d2 * d3
        for i in range(d1):
            for j in range(d2):
                src = base + (i * d2 + j) * d3
                dst = base + (j * d1 + i) * d3
                for t in range(d3):
                    out[dst + t] = x[src + t]


@njit
def reverse_axes3(x, out):
    """``out (d2, d1, d0) = x (d0, d1, d2)`` transposed (one pass: two axis swaps, one of them
    with unit-length runs, cost three times as much on the environments of a sweep)."""
    d0, d1, d2 = x.shape
    for a in range(d0):
        for i in range(d1):
            for t in range(d2):
                out[t, i, a] = x[a, i, t]


@njit
def ahat_left_step(al, core, out):
    """``AL[k+1] (P, O< o, D', I>)`` from ``AL[k] (P, O<, D, i I>)`` and ``core (D, i, o, D')``:
    ``out[r, (ol, o), d', :] = sum_{d, i} core[d, i, o, d'] al[r, ol, d, i, :]``, as one
    product ``core^T (o D', D i) @ al (D i, P O< I>)`` between two axis swaps."""
    p, ol, d, irest = al.shape
    _, ci, co, d2 = core.shape
    ir = irest // ci
    blocks = p * ol
    # al (P O<, D i, I>) -> (D i, P O<, I>)
    alp = np.empty(blocks * d * ci * ir)
    swap_axes(al.reshape(-1), 1, blocks, d * ci, ir, alp)
    ct = np.ascontiguousarray(core.reshape(d * ci, co * d2).T)
    prod = np.empty((co * d2, blocks * ir))
    mm(ct, alp.reshape(d * ci, blocks * ir), prod)
    # (o D', P O<, I>) -> (P O<, o D', I>)
    swap_axes(prod.reshape(-1), 1, co * d2, blocks, ir, out.reshape(-1))


@njit
def ahat_bond_operand(al, i1, i2):
    """``AL[k] (P, O<, Da, i1 i2 I>)`` as ``(P O< I>, Da i1 i2)``: the left operand of both
    contractions of bond ``k`` (formed once per bond update)."""
    p, ol, da, irest = al.shape
    ir = irest // (i1 * i2)
    out = np.empty((p * ol * ir, da * i1 * i2))
    swap_axes(al.reshape(-1), p * ol, da * i1 * i2, ir, 1, out.reshape(-1))
    return out


@njit
def ahat_dense_from_bond(alp, ol, bond, right, i1, o1, out):
    """``W1 = Ahat W (P, O< o1 o2 O>)`` from ``alp = ahat_bond_operand(AL[k])``, the bond
    matrix ``(Da i1 o1, i2 o2 Db)`` and ``R[k+2] (Db, I>, O>)``: ``X = AL B`` over
    ``(Da, i1, i2)``, then ``X R`` over ``(I>, Db)``. NumPy: ``ahat @ dense_from_bond(L,
    bond, R)``."""
    db, ir, orr = right.shape
    rows = alp.shape[0] // ir       # P O<
    m = bond.shape[0]
    da = m // (i1 * o1)
    i2 = alp.shape[1] // (da * i1)
    o2db = bond.shape[1] // i2
    o2 = o2db // db
    # bond (Da i1, o1, i2, o2 Db) -> (Da i1, i2, o1, o2 Db)
    bp = np.empty(m * bond.shape[1] // o1 * o1)
    swap_axes(bond.reshape(-1), da * i1, o1, i2, o2db, bp)
    x = np.empty((rows * ir, o1 * o2db))
    mm(alp, bp.reshape(da * i1 * i2, o1 * o2db), x)
    # x (P O<, I>, o1 o2, Db) -> (P O<, o1 o2, I>, Db); R (Db, I>, O>) -> (I>, Db, O>)
    xp = np.empty(x.size)
    swap_axes(x.reshape(-1), rows, ir, o1 * o2, db, xp)
    rp = np.empty(right.size)
    swap_axes(right.reshape(-1), 1, db, ir, orr, rp)
    mm(xp.reshape(rows * o1 * o2, ir * db), rp.reshape(ir * db, orr),
       out.reshape(rows * o1 * o2, orr))


@njit
def ahat_bond_grad(alp, ol, mhat, right, i1, o1, i2, o2, out):
    """``dL/dB`` as the ``(Da i1 o1, i2 o2 Db)`` matrix when ``dL/dW = Ahat^T Mhat``
    (``mhat (P, O< o1 o2 O>)``), with ``alp = ahat_bond_operand(AL[k])``: ``PM = Mhat R``
    over ``O>``, then ``AL^T PM`` over ``(r, O<, I>)``. NumPy: ``bond_grad(L, ahat.T @ mhat,
    R)``."""
    db, ir, orr = right.shape
    rows = alp.shape[0] // ir       # P O<
    q12 = o1 * o2
    rq = np.empty(right.size)
    reverse_axes3(right, rq.reshape((orr, ir, db)))            # (O>, I>, Db)
    pm = np.empty((rows * q12, ir * db))
    mm(mhat.reshape(rows * q12, orr), rq.reshape(orr, ir * db), pm)
    # pm (P O<, o1 o2, I>, Db) -> (P O<, I>, o1 o2, Db)
    pmp = np.empty(pm.size)
    swap_axes(pm.reshape(-1), rows, q12, ir, db, pmp)
    da_i1_i2 = alp.shape[1]
    g = np.empty((da_i1_i2, q12 * db))
    mm_tn(alp, pmp.reshape(rows * ir, q12 * db), g)
    # (Da i1, i2, o1, o2 Db) -> (Da i1, o1, i2, o2 Db)
    swap_axes(g.reshape(-1), da_i1_i2 // i2, i2, o1, o2 * db, out.reshape(-1))
