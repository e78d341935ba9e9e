"""Truncated SVD split of one small matrix, warm-started: the split of a DMRG-like sweep.

:func:`svd_split` gives for one matrix ``a (m, n)`` what ``svd_truncate(a, max_bond,
cutoff, absorb="both")`` gives (``reference.py``: same sign rule, keep count, entropy and
discarded weight), by the cheapest exact route for the case. With ``r = min(m, n)`` and
``kb = min(max_bond, r)`` triplets wanted:

* ``kb < r`` (truncation): block subspace iteration with Rayleigh-Ritz, started from
  ``start``, rows spanning a guess of the top right singular subspace. In a sweep these are
  the rows of the old right core, which span the right singular subspace of ``C_k C_k+1``
  exactly, so that ``B = C_k C_k+1 - lr dL/dB`` is a rank-``D`` matrix plus the step and
  each iteration shrinks the error by ``(s_D+1 / s_D)^2`` (1e-5 to 1e-7 in the benchmark's
  sweeps: three iterations). An iteration: ``Y = V a^T`` (rows ``a v_j``); one-sided Jacobi
  on the rows of ``Y``, rotating ``V`` alongside, so that ``a v_j = s_j u_j`` with
  orthonormal ``u_j`` (the first iteration preconditioned by the eigenvectors of the small
  Gram matrix ``Y Y^T``, the later ones start nearly orthogonal); ``Z = U a``; stop when
  every kept triplet has ``|a^T u_j - s_j v_j| <= SUBSPACE_TOL * max(m, n) * eps * |a|_F``
  (the rounding floor of that residual: values then agree with LAPACK's to ~1e-15 |a|,
  vectors to that over the gap to their neighbours), else ``V <- orth(Z)`` (CholeskyQR2).
  The result is accepted only when the weight outside the kept triplets, ``|a - U S
  V^T|_F``, is below the smallest kept singular value (less the tolerance): every other
  singular value is at most that weight, so none larger was missed. Without convergence in
  ``SUBSPACE_MAX_ITER`` iterations or without that certificate (a flat spectrum at the
  cut, a start that misses the top subspace, a rank-deficient block) the matrix takes a
  full route below.
* ``kb == r`` (nothing truncated by ``max_bond``), or the fallback, with
  ``r <= JACOBI_MAX_RANK``: one-sided (Hestenes) cyclic Jacobi on the short side, until
  every pair of rows is orthogonal to ``max(m, n) * eps`` (relative), as ``cpu.py``'s route
  for stacks: singular values to high relative accuracy.
* otherwise: LAPACK ``gesdd`` (``np.linalg.svd``) inside the kernel.

Everything is computed in float64 on a copy scaled by a power of two (exact), so nothing
over- or underflows. Why not LAPACK for all: on the small matrices of a sweep its fixed
costs dominate (48 x 48 ``gesdd`` about 350 us on the development machine, 16 x 16 about
30 us), while the warm-started iteration costs 45 us on 48 x 48 (12 kept) and 8 us on
16 x 16 (4 kept).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from ..._numba import njit
from .cpu import _fix_signs, _keep_count
from .reference import SVDTruncation

__all__ = ["svd_split", "svd_split_kernel", "METHODS", "JACOBI_MAX_RANK", "SUBSPACE_TOL",
           "SUBSPACE_MAX_ITER"]

_EPS = float(np.finfo(np.float64).eps)
_TINY = float(np.finfo(np.float64).tiny)
# Jacobi for a full split up to this short side; above, gesdd is faster (measured inside a
# kernel, Jacobi / gesdd: 4 x 48 2.6 / 6.6 us, 8 x 32 11 / 14 us, 12 x 48 29 / 31 us,
# 12 x 12 20 / 18 us, 16 x 16 43 / 33 us, 24 x 24 121 / 72 us).
JACOBI_MAX_RANK = 12
# Residual tolerance in units of max(m, n) * eps * |a|_F. The residual a^T u - s v stalls at
# 0.01-0.12 of the unit (measured, 16 x 16 to 48 x 48, 20 matrices each); 4 keeps clear of
# that floor, and the iteration that reaches it is almost always the one that gets below 4
# (each shrinks the residual by (s_D+1 / s_D)^2).
SUBSPACE_TOL = 4.0
SUBSPACE_MAX_ITER = 12
_MAX_SWEEPS = 60
# a Jacobi row shorter than this (relative to |a|) has no direction of its own: completed
_ZERO_ROW = 1e-300
METHODS = ("jacobi", "subspace", "lapack")


@njit
def _dot(x, y):
    """``x . y`` over rows of equal length, four independent partial sums (so the adds
    pipeline without reassociation flags)."""
    n = x.shape[0]
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    i = 0
    while i + 4 <= n:
        s0 += x[i] * y[i]
        s1 += x[i + 1] * y[i + 1]
        s2 += x[i + 2] * y[i + 2]
        s3 += x[i + 3] * y[i + 3]
        i += 4
    while i < n:
        s0 += x[i] * y[i]
        i += 1
    return (s0 + s1) + (s2 + s3)


@njit
def _rotate(x, y, c, s):
    """``x, y <- c x - s y, s x + c y`` (rows)."""
    for t in range(x.shape[0]):
        a = x[t]
        b = y[t]
        x[t] = c * a - s * b
        y[t] = s * a + c * b


@njit
def _hestenes(w, vw, r):
    """Orthogonalise rows ``0..r-1`` of ``w`` by plane rotations, applied to the rows of
    ``vw`` too (one-sided cyclic Jacobi); returns the number of sweeps.

    A pair is rotated unless already orthogonal to ``tol = p * eps`` relative to its norms
    (``p = w.shape[1]``); squared norms are recomputed each sweep and updated through each
    rotation (``|x'|^2 = |x|^2 - tan * gamma``). Rotation angle as in ``cpu._jacobi_sweeps``.
    Each sweep starts from the Gram matrix of the rows (one BLAS product, whose diagonal
    gives the squared norms): a pair of rows
    that no rotation of this sweep has touched yet keeps its entry, so a pair orthogonal
    there (with a margin of 4 for the product's rounding) is skipped without its dot
    product; the last sweeps of a converging iteration then cost little more than that
    product.
    """
    p = w.shape[1]
    tol = p * _EPS
    nrm = np.empty(r)
    gram = np.empty((r, r))
    touched = np.zeros(r, np.bool_)
    rows = w[:r]
    for sweep in range(_MAX_SWEEPS):
        np.dot(rows, rows.T, gram)
        for i in range(r):
            nrm[i] = gram[i, i]
            touched[i] = False
        rotated = False
        for i in range(r - 1):
            for j in range(i + 1, r):
                alpha = nrm[i]
                beta = nrm[j]
                if not (touched[i] or touched[j]) and \
                        not abs(gram[i, j]) > 0.25 * tol * math.sqrt(alpha * beta):
                    continue
                g = _dot(w[i], w[j])
                if not abs(g) > tol * math.sqrt(alpha * beta):
                    continue
                tau = beta - alpha
                tan = 2.0 * g * math.copysign(1.0, tau) / (abs(tau) + math.sqrt(tau * tau
                                                                             + 4.0 * g * g))
                c = 1.0 / math.sqrt(1.0 + tan * tan)
                s = c * tan
                nrm[i] = alpha - tan * g
                nrm[j] = beta + tan * g
                _rotate(w[i], w[j], c, s)
                _rotate(vw[i], vw[j], c, s)
                touched[i] = True
                touched[j] = True
                rotated = True
        if not rotated:
            return sweep + 1
    return _MAX_SWEEPS


@njit
def _project_out(q, j):
    """Row ``j`` of ``q`` less its components along rows ``0..j-1`` (orthonormal):
    Gram-Schmidt twice, so that what rounding leaves after the first pass is removed."""
    p = q.shape[1]
    for _ in range(2):
        for l in range(j):
            d = _dot(q[l], q[j])
            for t in range(p):
                q[j, t] -= d * q[l, t]


@njit
def _complete(q, j):
    """Row ``j`` of ``q`` made a unit vector orthogonal to rows ``0..j-1`` (Gram-Schmidt of
    the first unit vector far enough from their span, orthogonalised twice)."""
    p = q.shape[1]
    for e in range(p):
        q[j, :] = 0.0
        q[j, e] = 1.0
        _project_out(q, j)
        nrm = math.sqrt(_dot(q[j], q[j]))
        if nrm > 0.5:
            for t in range(p):
                q[j, t] /= nrm
            return


@njit
def _orth_rows(q, r):
    """Orthonormalise rows ``0..r-1`` of ``q`` in order (modified Gram-Schmidt, twice);
    a row left without a direction of its own is completed."""
    p = q.shape[1]
    for j in range(r):
        before = math.sqrt(_dot(q[j], q[j]))
        _project_out(q, j)
        nrm = math.sqrt(_dot(q[j], q[j]))
        if nrm > 1e-8 * before and nrm > _ZERO_ROW:
            for t in range(p):
                q[j, t] /= nrm
        else:
            _complete(q, j)


@njit
def _sorted_rows(w, vw, r, wide, ut, s, vt):
    """Converged Jacobi rows into ``ut (r, m)``, ``s (r,)``, ``vt (r, n)`` sorted by
    descending singular value: norms of ``w``'s rows are the values, its normalised rows the
    long side's vectors (completed where a row is zero), ``vw``'s rows the short side's."""
    norms = np.empty(r)
    order = np.empty(r, np.int64)
    for j in range(r):
        norms[j] = math.sqrt(_dot(w[j], w[j]))
        order[j] = j
    for j in range(1, r):  # stable insertion sort, descending: r is small here
        c = order[j]
        i = j - 1
        while i >= 0 and norms[order[i]] < norms[c]:
            order[i + 1] = order[i]
            i -= 1
        order[i + 1] = c
    big = norms[order[0]] if r > 0 else 0.0
    long_side = vt if wide else ut
    short_side = ut if wide else vt
    for j in range(r):
        c = order[j]
        s[j] = norms[c]
        if norms[c] > _ZERO_ROW and norms[c] > 1e-300 * big:
            inv = 1.0 / norms[c]
            for t in range(w.shape[1]):
                long_side[j, t] = w[c, t] * inv
        else:
            _complete(long_side, j)
        for t in range(vw.shape[1]):
            short_side[j, t] = vw[c, t]


@njit
def _jacobi_full(a, at, ut, s, vt):
    """Full thin SVD of ``a (m, n)`` by Hestenes on the short side; ``at`` is ``a^T``."""
    m, n = a.shape
    wide = m < n
    r = min(m, n)
    w = a.copy() if wide else at.copy()
    vw = np.zeros((r, r))
    for i in range(r):
        vw[i, i] = 1.0
    _hestenes(w, vw, r)
    _sorted_rows(w, vw, r, wide, ut, s, vt)


@njit
def _lapack_full(a, ut, s, vt):
    u, sv, v = np.linalg.svd(a, full_matrices=False)
    r = sv.shape[0]
    for j in range(r):
        s[j] = sv[j]
        for t in range(a.shape[0]):
            ut[j, t] = u[t, j]
        for t in range(a.shape[1]):
            vt[j, t] = v[j, t]


@njit
def _fill_start(v, k0, seed):
    """Rows ``k0..`` of ``v`` from a fixed hash sequence (deterministic start vectors)."""
    n = v.shape[1]
    for j in range(k0, v.shape[0]):
        for t in range(n):
            h = (1103515245 * (j * n + t + 1 + seed) + 12345) % 2147483648
            v[j, t] = h / 2147483648.0 - 0.5


@njit
def _sym_eig_rows(g, w, tol):
    """Eigenvectors of the symmetric ``g`` (overwritten) as the rows of ``w``, by descending
    eigenvalue: cyclic Jacobi until every off-diagonal entry is below ``tol`` times the
    geometric mean of its diagonal pair. A rotation updates rows ``p, q`` and mirrors them
    into the columns; the 2 x 2 block is set exactly (``g_pp - t g_pq``, ``g_qq + t g_pq``,
    0)."""
    r = g.shape[0]
    v = np.zeros((r, r))
    for i in range(r):
        v[i, i] = 1.0
    for sweep in range(_MAX_SWEEPS):
        rotated = False
        for p in range(r - 1):
            for q in range(p + 1, r):
                apq = g[p, q]
                if not abs(apq) > tol * math.sqrt(abs(g[p, p] * g[q, q])):
                    continue
                rotated = True
                app = g[p, p]
                aqq = g[q, q]
                theta = (aqq - app) / (2.0 * apq)
                t = math.copysign(1.0, theta) / (abs(theta) + math.sqrt(theta * theta + 1.0))
                c = 1.0 / math.sqrt(t * t + 1.0)
                sn = t * c
                gp = g[p]
                gq = g[q]
                _rotate(gp, gq, c, sn)
                gp[p] = app - t * apq
                gq[q] = aqq + t * apq
                gp[q] = 0.0
                gq[p] = 0.0
                for k in range(r):
                    g[k, p] = gp[k]
                    g[k, q] = gq[k]
                _rotate(v[p], v[q], c, sn)
        if not rotated:
            break
    order = np.argsort(-np.diag(g).copy())
    for j in range(r):
        w[j, :] = v[order[j], :]


@njit
def _orth_chol(q, r, g):
    """Orthonormalise rows ``0..r-1`` of ``q`` by CholeskyQR2 (``g (r, r)`` work): rows
    ``<- L^-1 rows`` with ``L L^T`` their Gram matrix, twice, which brings them to ``eps``
    orthogonality for condition numbers up to ~1e7. Returns False (``q`` then unusable) when
    a pivot is not clearly positive: the caller falls back to :func:`_orth_rows`."""
    n = q.shape[1]
    rows = q[:r]
    for _ in range(2):
        np.dot(rows, rows.T, g)
        top = 0.0
        for j in range(r):
            top = max(top, g[j, j])
        for j in range(r):  # Cholesky, lower, in place
            d = g[j, j]
            for l in range(j):
                d -= g[j, l] * g[j, l]
            if not d > 1e-10 * top:
                return False
            d = math.sqrt(d)
            g[j, j] = d
            for i in range(j + 1, r):
                e = g[i, j]
                for l in range(j):
                    e -= g[i, l] * g[j, l]
                g[i, j] = e / d
        for j in range(r):  # forward substitution on the rows
            row = rows[j]
            for l in range(j):
                c = g[j, l]
                prev = rows[l]
                for t in range(n):
                    row[t] -= c * prev[t]
            inv = 1.0 / g[j, j]
            for t in range(n):
                row[t] *= inv
    return True


@njit
def _subspace(a, at, kb, block, start, tol, ut, s, vt):
    """Top ``block`` triplets of ``a`` by subspace iteration from the rows of ``start``;
    returns the number of iterations, or 0 without convergence of the first ``kb``.

    Ritz step: ``Y = V a^T`` (rows ``a v_j``), then one-sided Jacobi on ``Y`` rotating the
    rows of ``V`` alongside, so that ``a v_j = s_j u_j`` with orthonormal ``u_j`` (the first
    one preconditioned, see below)."""
    m, n = a.shape
    v = np.empty((block, n))
    k0 = min(start.shape[0], block)
    for j in range(k0):
        v[j, :] = start[j, :]
    _fill_start(v, k0, 0)
    g = np.empty((block, block))
    if not _orth_chol(v, block, g):
        for j in range(k0):
            v[j, :] = start[j, :]
        _fill_start(v, k0, 0)
        _orth_rows(v, block)
    y = np.empty((block, m))
    z = np.empty((block, n))
    w = np.empty((block, block))
    y2 = np.empty((block, m))
    v2 = np.empty((block, n))
    for it in range(SUBSPACE_MAX_ITER):
        np.dot(v, at, y)                      # rows (a v_j)^T
        if it == 0:
            # the start is far from the singular vectors: rotate by the eigenvectors of the
            # small Gram matrix first (accurate to squared values only), so that Jacobi on
            # the rows below has little left to do; later iterates start nearly orthogonal
            np.dot(y, y.T, g)
            _sym_eig_rows(g, w, 1e-10)
            np.dot(w, y, y2)
            np.dot(w, v, v2)
            y[:] = y2
            v[:] = v2
        _hestenes(y, v, block)                # a v_j = y_j, rows orthogonal
        _sorted_rows(y, v, block, False, ut, s, vt)
        np.dot(ut[:block], a, z)              # rows (a^T u_j)^T
        worst = 0.0
        for j in range(kb):
            e = 0.0
            for t in range(n):
                d = z[j, t] - s[j] * vt[j, t]
                e += d * d
            worst = max(worst, e)
        if math.sqrt(worst) <= tol:
            return it + 1
        v[:] = z
        if not _orth_chol(v, block, g):
            v[:] = z
            _orth_rows(v, block)
    return 0


@njit
def _tail_norm(a, ut, s, vt, k):
    """``|a - sum_{j<k} s_j u_j v_j^T|_F``, formed explicitly (no cancellation)."""
    m, n = a.shape
    us = np.empty((k, m))
    for j in range(k):
        for i in range(m):
            us[j, i] = s[j] * ut[j, i]
    r = np.empty((m, n))
    np.dot(us.T, vt[:k], r)
    acc = 0.0
    for i in range(m):
        for t in range(n):
            d = a[i, t] - r[i, t]
            acc += d * d
    return math.sqrt(acc)


@njit
def svd_split_kernel(a, max_bond, cutoff, start, left, right, s_out):
    """The split of :func:`svd_split` on float64 ``a (m, n)`` (C-contiguous, unchanged).

    Parameters
    ----------
    a : (m, n) float64
    max_bond : int, >= 1
    cutoff : float, >= 0
    start : (k0, n) float64
        Warm start of the right singular subspace (rows); ``k0 = 0`` for none.
    left, right, s_out : float64, at least ``m * kb``, ``kb * n``, ``kb`` entries
        Receive ``U sqrt(S)`` as ``(m, keep)`` and ``sqrt(S) V^T`` as ``(keep, n)``, both flat
        C-order, and the kept values.

    Returns
    -------
    keep, entropy, discarded, method, iterations
        ``method`` indexes :data:`METHODS`; ``iterations`` those of the subspace route (0
        when it was not taken or fell back).
    """
    m, n = a.shape
    r = min(m, n)
    kb = min(max_bond, r)
    big = 0.0
    for i in range(m):
        for t in range(n):
            big = max(big, abs(a[i, t]))
    e = 0 if big == 0.0 else min(max(math.frexp(big)[1], -1000), 1000)
    e += e & 1  # even, so that sqrt(2^e) below is exact
    scale = math.ldexp(1.0, -e)
    x = a * scale
    xt = np.ascontiguousarray(x.T)
    norm_f = 0.0
    for i in range(m):
        norm_f += _dot(x[i], x[i])
    norm_f = math.sqrt(norm_f)
    ut = np.empty((r, m))
    vt = np.empty((r, n))
    s = np.zeros(r)
    method = 2
    iterations = 0
    tail = -1.0       # weight beyond the first kb values, when known directly
    if kb < r:
        block = min(max(kb, start.shape[0]), r)
        if block < r:
            tol = SUBSPACE_TOL * max(m, n) * _EPS * norm_f
            iterations = _subspace(x, xt, kb, block, start, tol, ut, s, vt)
            if iterations > 0:
                tail = _tail_norm(x, ut, s, vt, kb)
                if tail + tol < s[kb - 1] - tol:
                    method = 1
                else:
                    iterations = 0
    if method != 1:
        tail = -1.0
        if r <= JACOBI_MAX_RANK:
            _jacobi_full(x, xt, ut, s, vt)
            method = 0
        else:
            _lapack_full(x, ut, s, vt)
    # the CPU kernel's sign rule on the transposed factors (vectors as rows here)
    _fix_signs(ut[:kb].T, vt[:kb].T)
    keep = _keep_count(s, kb, cutoff)
    # entropy of the kept spectrum and discarded weight, values divided by s_0
    ent = 0.0
    disc2 = 0.0
    if s[0] > 0:
        inv = 1.0 / s[0]
        total = 0.0
        for i in range(keep):
            total += (s[i] * inv) ** 2
        for i in range(keep):
            q = (s[i] * inv) ** 2 / total
            if q > 0:
                ent -= q * math.log(q)
        last = kb if tail >= 0 else r
        for i in range(keep, last):
            disc2 += (s[i] * inv) ** 2
        if tail >= 0:
            disc2 += (tail * inv) ** 2
    discarded = s[0] * math.sqrt(disc2) / scale
    for j in range(keep):
        root = math.sqrt(s[j])
        s_out[j] = s[j] / scale
        for i in range(m):
            left[i * keep + j] = ut[j, i] * root
        for t in range(n):
            right[j * n + t] = root * vt[j, t]
    # sqrt(S) absorbed on both sides: undo the scaling half on each
    back = math.ldexp(1.0, e // 2)
    for i in range(m * keep):
        left[i] *= back
    for i in range(keep * n):
        right[i] *= back
    return keep, ent, discarded, method, iterations


def svd_split(a: np.ndarray, max_bond: Optional[int] = None, cutoff: float = 0.0,
              start: Optional[np.ndarray] = None) -> Tuple[SVDTruncation, dict]:
    """Truncated split ``a ~= left @ right`` of one matrix (``absorb="both"``), warm-started.

    Parameters
    ----------
    a : (m, n) float32 or float64, finite
    max_bond : int or None
        Most singular values kept; None keeps up to ``min(m, n)``.
    cutoff : float
        Values below ``cutoff * s_0`` dropped (exact zeros too when > 0); one always kept.
    start : (k0, n) array, optional
        Rows spanning a guess of the top right singular subspace (in a sweep: the old right
        core); without it the subspace route starts from fixed pseudo-random rows.

    Returns
    -------
    out : SVDTruncation
        As ``svd_truncate(a, max_bond, cutoff, "both")``: ``left (m, k)``, ``right (k, n)``,
        ``s (k,)`` in ``a``'s dtype, ``entropy`` and ``discarded`` float64 scalars.
    info : dict
        ``method`` (one of :data:`METHODS`) and ``iterations`` of the subspace route.
    """
    from . import _check

    a, max_bond, cutoff = _check(a, max_bond, cutoff, "both")
    if a.ndim != 2:
        raise ValueError(f"a: expected one matrix (m, n), got shape {a.shape}")
    m, n = a.shape
    bond = min(m, n) if max_bond is None else min(max_bond, m, n)
    if start is None:
        start = np.zeros((0, n))
    else:
        start = np.asarray(start)
        if start.ndim != 2 or start.shape[1] != n:
            raise ValueError(f"start: expected rows of length {n} (k0, {n}), got shape "
                             f"{start.shape}")
    x = np.ascontiguousarray(a, np.float64)
    left = np.empty(m * bond)
    right = np.empty(bond * n)
    s = np.empty(bond)
    keep, ent, disc, method, its = svd_split_kernel(
        x, bond, float(cutoff), np.ascontiguousarray(start, np.float64), left, right, s)
    dt = a.dtype
    out = SVDTruncation(left[:m * keep].reshape(m, keep).astype(dt),
                        right[:keep * n].reshape(keep, n).astype(dt),
                        s[:keep].astype(dt), np.float64(ent), np.float64(disc))
    return out, {"method": METHODS[method], "iterations": int(its)}
