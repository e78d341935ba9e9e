"""CPU truncated SVD split: one Numba call for the whole stack, no Python loop per matrix.

Per matrix (all in float64, whatever the input dtype):

1. thin SVD, by one of two routes chosen per shape (:func:`use_jacobi`):

   * small matrices (``m * n <= JACOBI_MAX_ENTRIES``): one-sided (Hestenes) cyclic Jacobi,
     ``JACOBI_LANES`` matrices at a time in structure-of-arrays form: work arrays are
     ``(column, entry, lane)`` so every dot product and rotation is a loop over the lanes,
     which the compiler vectorises (a single 8x8 matrix gives loops too short for that). A
     sweep rotates every pair of columns; sweeps stop when, in every lane, each pair is
     orthogonal to ``tol = max(m, n) * eps`` (relative). Singular values come out within
     ``1e-14 * s_0`` of LAPACK's (measured: at most 6e-15 up to 32 x 32);
   * larger ones: ``np.linalg.svd`` (LAPACK ``gesdd``) inside the kernel, one matrix at a time;

2. sign fix, keep count, entropy and discarded weight (scaled by ``s_0`` so nothing
   overflows);

then, once the bond ``k`` (largest keep count) is known, the absorption into ``left`` and
``right``. Float32 stacks are widened on the way in and narrowed on the way out, so one
compiled kernel serves both dtypes.

The backward is a Numba kernel too, one matrix at a time with its small products written as
loops whose innermost index runs along contiguous rows: 2x (stacks of 48 x 48) to 5x (8 x 8)
faster than the same formula in batched NumPy (``bench_svd.numpy_backward``), whose
``matmul`` calls and temporaries cost more than the arithmetic on small matrices.

Large arrays (the saved SVD, the outputs, float32 casts, the gradient) come from
``backend.workspace``: fresh multi-megabyte arrays cost page faults on first touch, 25-30 %
of the whole forward on 4096 matrices of 8 x 8.

Both kernels run on one thread. A ``prange`` over chunks of the stack was 1.7-1.9x faster on
two idle cores, but slower than one thread whenever another process held the cores, and its
first compilation took 7-8 s longer.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ..._numba import njit
from ...backend import kernel_threads, workspace
from .reference import BROADENING, SVDSaved, SVDTruncation

# Jacobi route up to 32 x 32 entries, about where it stops beating gesdd in the same kernel
# (bench_svd.SVDRoute, gesdd time / Jacobi time over three runs on 2 idle cores: 8 x 8 4.5,
# 16 x 16 2.4, 24 x 24 1.7, 32 x 32 1.06-1.10, 36 x 36 0.89-0.95, 40 x 40 0.85-0.90,
# 48 x 48 0.71-0.75; thin shapes follow the area: 64 x 16 1.48-1.54, 40 x 32 0.97-1.04,
# 512 x 8 0.87-1.01, 256 x 16 0.75-0.90, 96 x 32 0.72).
JACOBI_MAX_ENTRIES = 32 * 32
# Matrices per Jacobi chunk: 16, 32 and 64 time within 5 % of each other, 8 up to 2x slower.
JACOBI_LANES = 32
ABSORB_CODE = {"both": 0, "left": 1, "right": 2, "none": 3}
_EPS = float(np.finfo(np.float64).eps)
_TINY = float(np.finfo(np.float64).tiny)
# A Jacobi column shorter than this is treated as exactly zero: its direction is noise (or
# undefined), so U's column is completed to an orthonormal basis instead of normalised.
_ZERO_COLUMN = math.sqrt(_TINY)
_MAX_SWEEPS = 60


# Below this many matrices the lanes run mostly empty and LAPACK wins (one 32x32 matrix:
# 1.0 ms by Jacobi lanes, 0.1 ms by gesdd).
JACOBI_MIN_ITEMS = 8


def use_jacobi(m: int, n: int, n_items: int = JACOBI_LANES) -> bool:
    return m * n <= JACOBI_MAX_ENTRIES and n_items >= JACOBI_MIN_ITEMS


@njit(inline="always")
def _rotate_rows(a, i, j, cos, sin):
    """Rows ``i, j`` of ``a[:, :, l]`` rotated by each lane's ``(cos, sin)``."""
    for t in range(a.shape[1]):
        ai = a[i, t]
        aj = a[j, t]
        for l in range(ai.shape[0]):
            x = ai[l]
            y = aj[l]
            ai[l] = cos[l] * x - sin[l] * y
            aj[l] = sin[l] * x + cos[l] * y


# error_model="numpy": a zero column makes ``tan`` 0/0 before it is discarded, which must
# not raise (and the lane loop has no division check to keep it from vectorising)
@njit(error_model="numpy")
def _jacobi_sweeps(w, vw, tol, nrm, gam, cos, sin):
    """Orthogonalise rows ``i`` of ``w[:, :, l] (r, p)`` for every lane ``l`` by plane
    rotations, applied to ``vw[:, :, l] (r, r)`` too; returns the number of sweeps.

    Lanes are independent: a lane whose pair is already orthogonal gets ``cos = 1, sin = 0``,
    an exact no-op, so each matrix's result does not depend on its lane mates. Squared
    column norms are updated through each rotation (``|x'|^2 = |x|^2 - tan * gamma``) and
    recomputed at the start of every sweep."""
    r, p, lanes = w.shape
    for sweep in range(_MAX_SWEEPS):
        rotated = False
        for i in range(r):
            row = nrm[i]
            row[:] = 0.0
            for t in range(p):
                wi = w[i, t]
                for l in range(lanes):
                    row[l] += wi[l] * wi[l]
        for i in range(r - 1):
            for j in range(i + 1, r):
                gam[:] = 0.0
                for t in range(p):
                    wi = w[i, t]
                    wj = w[j, t]
                    for l in range(lanes):
                        gam[l] += wi[l] * wj[l]
                alpha = nrm[i]
                beta = nrm[j]
                n_rot = 0
                for l in range(lanes):
                    g = gam[l]
                    tau = beta[l] - alpha[l]
                    # also false for a zero column (g = 0), where tan below is 0/0
                    rot = abs(g) > tol * math.sqrt(alpha[l] * beta[l])
                    # the smaller root of tan^2 + (tau / g) tan - 1 = 0, without dividing by g
                    tan = 2.0 * g * math.copysign(1.0, tau) / (
                        abs(tau) + math.sqrt(tau * tau + 4.0 * g * g))
                    tan = tan if rot else 0.0
                    n_rot += rot
                    c = 1.0 / math.sqrt(1.0 + tan * tan)
                    cos[l] = c
                    sin[l] = c * tan
                    alpha[l] -= tan * g
                    beta[l] += tan * g
                if n_rot == 0:
                    continue
                rotated = True
                _rotate_rows(w, i, j, cos, sin)
                _rotate_rows(vw, i, j, cos, sin)
        if not rotated:
            return sweep + 1
    return _MAX_SWEEPS


@njit
def _complete(q, j):
    """Make row ``j`` of ``q (r, p)`` a unit vector orthogonal to rows ``0..j-1`` (Gram-Schmidt
    of the first unit vector that is not in their span, orthogonalised twice)."""
    r, p = q.shape
    for e in range(p):
        for t in range(p):
            q[j, t] = 0.0
        q[j, e] = 1.0
        for _ in range(2):
            for l in range(j):
                d = 0.0
                for t in range(p):
                    d += q[l, t] * q[j, t]
                for t in range(p):
                    q[j, t] -= d * q[l, t]
        nrm = 0.0
        for t in range(p):
            nrm += q[j, t] * q[j, t]
        nrm = math.sqrt(nrm)
        if nrm > 0.5:  # e was far enough from the span to give a well-conditioned vector
            for t in range(p):
                q[j, t] /= nrm
            return


@njit
def _jacobi_load(a, b, w, vw, l):
    """Matrix ``a[b]`` into lane ``l``: its columns (its rows when wide) as rows of ``w``,
    divided by the power of two just above its largest entry (exact, and keeps squares from
    over- or underflowing); returns that power."""
    _, m, n = a.shape
    r = min(m, n)
    p = max(m, n)
    big = 0.0
    for i in range(m):
        for j in range(n):
            big = max(big, abs(a[b, i, j]))
    # clamped so that the power and its inverse stay finite even for subnormal entries
    e = 0 if big == 0.0 else min(max(math.frexp(big)[1], -1000), 1000)
    scale = math.ldexp(1.0, -e)
    for j in range(r):
        for t in range(p):
            w[j, t, l] = (a[b, j, t] if m < n else a[b, t, j]) * scale
        for t in range(r):
            vw[j, t, l] = 1.0 if t == j else 0.0
    return math.ldexp(1.0, e)


@njit
def _jacobi_unload(w, vw, l, scale, u, s, v, order, qw):
    """Lane ``l`` of converged ``w``, ``vw`` into ``u (m, r)``, ``s (r,)``, ``v (n, r)``:
    column norms are the singular values (sorted descending, stable), normalised columns
    the long side's singular vectors (completed to an orthonormal set where a column is
    zero), ``vw`` the short side's."""
    m, r = u.shape
    n = v.shape[0]
    p = max(m, n)
    wide = m < n
    for j in range(r):
        acc = 0.0
        for t in range(p):
            acc += w[j, t, l] * w[j, t, l]
        s[j] = math.sqrt(acc)
        order[j] = j
    for j in range(1, r):  # insertion sort: r is small on this route
        c = order[j]
        i = j - 1
        while i >= 0 and s[order[i]] < s[c]:
            order[i + 1] = order[i]
            i -= 1
        order[i + 1] = c
    for j in range(r):
        c = order[j]
        if s[c] > _ZERO_COLUMN:
            inv = 1.0 / s[c]
            for t in range(p):
                qw[j, t] = w[c, t, l] * inv
        else:
            _complete(qw, j)
        if wide:
            for t in range(m):
                u[t, j] = vw[c, t, l]
            for t in range(n):
                v[t, j] = qw[j, t]
        else:
            for t in range(m):
                u[t, j] = qw[j, t]
            for t in range(n):
                v[t, j] = vw[c, t, l]
    for j in range(r):
        qw[0, j] = s[order[j]] * scale
    for j in range(r):
        s[j] = qw[0, j]


@njit
def _svd_lapack(x, u, s, v):
    uu, ss, vt = np.linalg.svd(x, full_matrices=False)
    m, r = uu.shape
    n = vt.shape[1]
    for j in range(r):
        s[j] = ss[j]
        for t in range(m):
            u[t, j] = uu[t, j]
        for t in range(n):
            v[t, j] = vt[j, t]


@njit
def _fix_signs(u, v):
    m, r = u.shape
    for j in range(r):
        best = -1.0
        at = 0
        for t in range(m):
            if abs(u[t, j]) > best:  # strict: the first index wins ties
                best = abs(u[t, j])
                at = t
        if u[at, j] < 0:
            for t in range(m):
                u[t, j] = -u[t, j]
            for t in range(v.shape[0]):
                v[t, j] = -v[t, j]


@njit
def _keep_count(s, max_bond, cutoff):
    k = min(s.shape[0], max_bond)
    if cutoff > 0:
        threshold = cutoff * s[0]
        c = 0
        while c < k and s[c] >= threshold and s[c] > 0:
            c += 1
        k = c
    return max(k, 1)


@njit
def _spectrum_figures(s, kept):
    """``(entropy, discarded)`` of one matrix, with every value divided by ``s_0``."""
    r = s.shape[0]
    if s[0] == 0:
        return 0.0, 0.0
    inv = 1.0 / s[0]
    total = 0.0
    for i in range(kept):
        total += (s[i] * inv) ** 2
    ent = 0.0
    for i in range(kept):
        q = (s[i] * inv) ** 2 / total
        if q > 0:
            ent -= q * math.log(q)
    tail = 0.0
    for i in range(kept, r):
        tail += (s[i] * inv) ** 2
    return ent, s[0] * math.sqrt(tail)


@njit
def _svd_chunk(a, lo, hi, max_bond, cutoff, jacobi, u, s, v, kept, entropy, discarded):
    """Matrices ``lo..hi`` of ``a``: SVD, sign fix, keep count, entropy, discarded weight."""
    _, m, n = a.shape
    r = min(m, n)
    p = max(m, n)
    if jacobi:
        # one lane per matrix of the chunk
        lanes = hi - lo
        w = np.empty((r, p, lanes))
        vw = np.empty((r, r, lanes))
        nrm = np.empty((r, lanes))
        gam = np.empty(lanes)
        cos = np.empty(lanes)
        sin = np.empty(lanes)
        qw = np.empty((r, p))
        order = np.empty(r, np.int64)
        scales = np.empty(lanes)
        for b in range(lo, hi):
            scales[b - lo] = _jacobi_load(a, b, w, vw, b - lo)
        _jacobi_sweeps(w, vw, p * _EPS, nrm, gam, cos, sin)
        for b in range(lo, hi):
            _jacobi_unload(w, vw, b - lo, scales[b - lo], u[b], s[b], v[b], order, qw)
    else:
        x = np.empty((m, n))
        for b in range(lo, hi):
            x[:] = a[b]
            _svd_lapack(x, u[b], s[b], v[b])
    for b in range(lo, hi):
        _fix_signs(u[b], v[b])
        kept[b] = _keep_count(s[b], max_bond, cutoff)
        entropy[b], discarded[b] = _spectrum_figures(s[b], kept[b])


@njit
def _absorb(u, s, v, kept, k, absorb, left, right, s_out):
    """``left (n_items * m * k,)``, ``right (n_items * k * n,)``, ``s_out (n_items * k,)``, flat
    C-order, every entry written (the padding with exact zeros): the buffers come uncleared
    from the pool."""
    n_items, m, r = u.shape
    n = v.shape[1]
    fl = np.empty(k)
    fr = np.empty(k)
    for b in range(n_items):
        kb = kept[b]
        for j in range(k):
            sj = s[b, j] if j < kb else 0.0
            s_out[b * k + j] = sj
            if absorb == 0:
                fl[j] = math.sqrt(sj)
                fr[j] = fl[j]
            elif absorb == 1:
                fl[j] = sj
                fr[j] = 1.0
            elif absorb == 2:
                fl[j] = 1.0
                fr[j] = sj
            else:
                fl[j] = 1.0
                fr[j] = 1.0
        for i in range(m):
            row = (b * m + i) * k
            for j in range(k):
                left[row + j] = u[b, i, j] * fl[j] if j < kb else 0.0
        for j in range(k):
            row = (b * k + j) * n
            for i in range(n):
                right[row + i] = v[b, i, j] * fr[j] if j < kb else 0.0


@njit
def _forward(a, max_bond, cutoff, absorb, jacobi, per_chunk, u, s, v, kept, entropy,
             discarded, left, right, s_out):
    """The whole stack into the given arrays; returns the bond ``k``. ``left``, ``right``,
    ``s_out`` are flat buffers with room for ``k = max_bond``, filled for the actual ``k``."""
    n_items = a.shape[0]
    for lo in range(0, n_items, per_chunk):
        _svd_chunk(a, lo, min(n_items, lo + per_chunk), max_bond, cutoff, jacobi, u, s, v, kept,
                   entropy, discarded)
    k = 1
    for b in range(n_items):
        k = max(k, kept[b])
    _absorb(u, s, v, kept, k, absorb, left, right, s_out)
    return k


# Below this the pool's bookkeeping (~13 us a lease) costs more than the page faults it saves.
_POOL_MIN_BYTES = 1 << 20


def _empty(shape, dtype) -> np.ndarray:
    """Pooled memory for large buffers, plain ``np.empty`` for small ones."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return workspace.empty(shape, dtype) if nbytes >= _POOL_MIN_BYTES else np.empty(shape, dtype)


def _pooled_as(x: np.ndarray, dtype) -> np.ndarray:
    """``x`` in ``dtype``: itself, or a copy into pooled memory."""
    if x.dtype == dtype:
        return x
    out = _empty(x.shape, dtype)
    np.copyto(out, x, casting="unsafe")
    return out


def svd_truncate_forward(a: np.ndarray, max_bond, cutoff: float, absorb: str,
                         jacobi: Optional[bool] = None):
    """``(SVDTruncation, SVDSaved)``; arguments already checked, ``a`` C-contiguous.
    ``jacobi`` forces a route (the benchmark of the two); ``None`` picks by shape."""
    *batch, m, n = a.shape
    r = min(m, n)
    # float64 in and out, whatever a is: one compiled kernel (the casts are O(m n) per matrix,
    # against O(m n min(m, n)) per sweep of the SVD)
    flat = _pooled_as(a.reshape(-1, m, n), np.float64)
    n_items = flat.shape[0]
    bond = r if max_bond is None else min(int(max_bond), r)
    jacobi = use_jacobi(m, n, n_items) if jacobi is None else bool(jacobi)
    u = _empty((n_items, m, r), np.float64)
    s = _empty((n_items, r), np.float64)
    v = _empty((n_items, n, r), np.float64)
    kept = np.empty(n_items, np.int64)
    ent = np.empty(n_items)
    disc = np.empty(n_items)
    left = _empty((n_items * m * bond,), np.float64)
    right = _empty((n_items * bond * n,), np.float64)
    s_out = _empty((n_items * bond,), np.float64)
    # matrices per chunk: the Jacobi lanes, or the whole stack for gesdd
    per_chunk = max(1, min(n_items, JACOBI_LANES) if jacobi else n_items)
    with kernel_threads():  # the BLAS under gesdd on one thread, as under every kernel
        k = int(_forward(flat, bond, float(cutoff), ABSORB_CODE[absorb], jacobi, per_chunk,
                         u, s, v, kept, ent, disc, left, right, s_out))
    dt = a.dtype
    out = SVDTruncation(_pooled_as(left[:n_items * m * k].reshape(*batch, m, k), dt),
                        _pooled_as(right[:n_items * k * n].reshape(*batch, k, n), dt),
                        _pooled_as(s_out[:n_items * k].reshape(*batch, k), dt),
                        ent.reshape(batch), disc.reshape(batch))
    saved = SVDSaved(u.reshape(*batch, m, r), s.reshape(*batch, r), v.reshape(*batch, n, r),
                     kept.reshape(batch), k, absorb, dt)
    return out, saved


@njit
def _backward_one(u, s, v, kb, absorb, gl, gr, gs_in, has_l, has_r, has_s, g_u, g_v, g_s,
                  x, y, vt, gvt, xu, out):
    """``dL/da`` of one matrix into ``out (m, n)``: ``reference.svd_truncate_backward`` for one
    item, every product written with its innermost loop running along contiguous rows (so it
    vectorises) and ``x = U^T gU``, ``y = V^T gV`` reused by the projector terms.
    Scratch: ``g_u, xu (m, r)``, ``g_v (n, r)``, ``g_s (r,)``, ``x, y (r, r)``,
    ``vt, gvt (r, n)``."""
    m, r = u.shape
    n = v.shape[0]
    g_u[:] = 0.0
    g_v[:] = 0.0
    s0 = s[0]
    eps2 = max((BROADENING * s0) ** 2, _TINY)           # for 1/(s_j -+ s_i) and 1/s
    eps2_root = max(BROADENING * BROADENING * s0, _TINY)  # for 1/(2 sqrt(s))
    # chain through the absorption (kept columns only; padding and discarded get nothing)
    for j in range(r):
        g_s[j] = 0.0
    for j in range(kb):
        sj = s[j]
        if absorb == 0:
            root = math.sqrt(sj)
            fl = root
            fr = root
            dl = 2.0 * root / (4.0 * sj + eps2_root)
            dr = dl
        elif absorb == 1:
            fl, fr, dl, dr = sj, 1.0, 1.0, 0.0
        elif absorb == 2:
            fl, fr, dl, dr = 1.0, sj, 0.0, 1.0
        else:
            fl, fr, dl, dr = 1.0, 1.0, 0.0, 0.0
        acc = gs_in[j] if has_s else 0.0
        if has_l:
            for i in range(m):
                g_u[i, j] = gl[i, j] * fl
                acc += gl[i, j] * u[i, j] * dl
        if has_r:
            for i in range(n):
                g_v[i, j] = gr[j, i] * fr
                acc += gr[j, i] * v[i, j] * dr
        g_s[j] = acc
    for i in range(n):
        for a in range(r):
            vt[a, i] = v[i, a]
    # x = U^T gU, y = V^T gV (only the first kb columns of gU, gV are non-zero)
    x[:] = 0.0
    y[:] = 0.0
    for i in range(m):
        for a in range(r):
            ua = u[i, a]
            for b in range(kb):
                x[a, b] += ua * g_u[i, b]
    for i in range(n):
        for a in range(r):
            va = v[i, a]
            for b in range(kb):
                y[a, b] += va * g_v[i, b]
    # projector terms: gU' = (gU - U x) / s in place, gV'^T = (gV - V y)^T / s into gvt
    for i in range(m):
        for a in range(r):
            ua = u[i, a]
            for b in range(kb):
                g_u[i, b] -= ua * x[a, b]
        for b in range(kb):
            g_u[i, b] *= s[b] / (s[b] * s[b] + eps2)
    for b in range(kb):
        for j in range(n):
            gvt[b, j] = g_v[j, b]
        for a in range(r):
            c = y[a, b]
            for j in range(n):
                gvt[b, j] -= c * vt[a, j]
        inv = s[b] / (s[b] * s[b] + eps2)
        for j in range(n):
            gvt[b, j] *= inv
    # inner matrix, overwriting x: F o (A S + S B) + diag(gs), with A = x - x^T, B = y - y^T,
    # as (A + B) / (2 (s_j - s_i)) + (A - B) / (2 (s_j + s_i)), both broadened
    for a in range(r):
        for b in range(a + 1, r):
            anti_x = x[a, b] - x[b, a]
            anti_y = y[a, b] - y[b, a]
            gap = s[b] - s[a]
            total = s[b] + s[a]
            t1 = 0.5 * (anti_x + anti_y) * gap / (gap * gap + eps2)
            t2 = 0.5 * (anti_x - anti_y) * total / (total * total + eps2)
            # (b, a): A and B change sign, and so does s_j - s_i, but not s_j + s_i
            x[a, b] = t1 + t2
            x[b, a] = t1 - t2
        x[a, a] = g_s[a]
    # out = (U inner + gU') V^T + U gV'^T
    for i in range(m):
        for b in range(r):
            xu[i, b] = g_u[i, b]   # zero past kb
        for a in range(r):
            ua = u[i, a]
            for b in range(r):
                xu[i, b] += ua * x[a, b]
        for j in range(n):
            out[i, j] = 0.0
        for b in range(r):
            c = xu[i, b]
            for j in range(n):
                out[i, j] += c * vt[b, j]
        for b in range(kb):
            c = u[i, b]
            for j in range(n):
                out[i, j] += c * gvt[b, j]


@njit
def _backward(u, s, v, kept, absorb, gl, gr, gs, has_l, has_r, has_s, g_a):
    _, m, r = u.shape
    n = v.shape[1]
    g_u = np.empty((m, r))
    xu = np.empty((m, r))
    g_v = np.empty((n, r))
    g_s = np.empty(r)
    x = np.empty((r, r))
    y = np.empty((r, r))
    vt = np.empty((r, n))
    gvt = np.empty((r, n))
    for b in range(u.shape[0]):
        _backward_one(u[b], s[b], v[b], kept[b], absorb, gl[b if has_l else 0],
                      gr[b if has_r else 0], gs[b if has_s else 0], has_l, has_r, has_s,
                      g_u, g_v, g_s, x, y, vt, gvt, xu, g_a[b])


def svd_truncate_backward(saved: SVDSaved, g_left, g_right, g_s) -> np.ndarray:
    """``dL/da``; gradients already checked (shapes) or ``None``."""
    *batch, m, r = saved.u.shape
    n = saved.v.shape[-2]
    k = saved.k
    u = saved.u.reshape(-1, m, r)
    n_items = u.shape[0]

    def flat(g, shape):
        if g is None:
            return np.zeros((1,) + shape), False
        return np.ascontiguousarray(g, np.float64).reshape((n_items,) + shape), True

    gl, has_l = flat(g_left, (m, k))
    gr, has_r = flat(g_right, (k, n))
    gs, has_s = flat(g_s, (k,))
    g_a = _empty((n_items, m, n), np.float64)  # float64 whatever a was: one kernel
    _backward(u, saved.s.reshape(-1, r), saved.v.reshape(-1, n, r),
              saved.kept.reshape(-1), ABSORB_CODE[saved.absorb], gl, gr, gs, has_l, has_r,
              has_s, g_a)
    return _pooled_as(g_a.reshape(*batch, m, n), saved.dtype)
