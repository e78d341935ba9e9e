"""Compiled PaL sweeps of a TNN: one Numba call per sweep, no Python between bond updates.

For the networks of Jahromi & Orus: frozen ``Dense`` layers (or none) -> one ``TNLayer``
with an elementwise activation -> one trainable ``Dense`` head (softmax or single-sigmoid
cross-entropy, or a linear output with mean squared error). A bond update is what
``run_sweep`` with ``TNN``'s PaL closures does (``models/tnn.py``, ``_fit_sweeps``), in the
same order: ``W`` from the bond tensor and the cached environments, loss and gradients on
the step's batch (loss recorded before the update), ``B <- B - step dL/dB``, the truncated
split (``ops.svd_truncate.subspace.svd_split_kernel``, warm-started from the old right
core), the environment update, then one Adam step (no weight decay) of the TNLayer bias
and the head. Same results as that Python path to rounding (``tests/test_tnn_compiled.py``:
1e-12 relative in float64 after three sweeps).

The frozen layers become the features ``F``. When the last of them is linear and narrow
at its input (the paper's ``Dense(64)`` on 2-feature points) it is folded, as
``fused_forward`` does: ``z = [F, 1] @ [[A W], [a W + b]]`` with ``F`` its input; then only
``Ahat W`` (``Ahat = [[A], [a]]``, ``P x prod(in)``) is ever needed, and the left
environments carry ``Ahat`` (``ops.mpo.kernels.ahat_*``): neither ``W`` nor ``dL/dW``
(``64 x 64``) is formed. Otherwise ``F`` is the frozen layers' output and ``z = [F, 1] @
[[W], [b]]`` from the plain environments.

The data pass (forward, loss, backward on the batch: most of a bond update) with ``P``
columns of ``[F, 1]``, ``C`` outputs and the activation known at compile time (tuple
lengths: one compiled sweep per combination): logits accumulated over units in groups of
four, vectorised over samples; softmax with an ``exp`` written to vectorise; for ReLU and
linear units the gradients from one BLAS product (``_backward_piecewise``), for smooth
units accumulated over samples in groups of four, vectorised over units. Wide inputs
(``P > P_SMALL``) take the input products through BLAS. No fast-math flags anywhere: sums
are only regrouped explicitly. The batch is cut into sample ranges (at least ``MIN_PART``
samples each, at most :data:`fasttn.backend.PARTITION_THREADS` of them: the cut depends on
the batch size alone, so the result does not depend on the thread count), each range's
data pass runs on its own thread with its own gradient sums, and the ranges' sums are added
in order; everything else in a sweep is sequential
(at D = 12 and 600 samples this takes the data pass from 35 to 25 us per bond update on two
cores).

Float32 models run in float64 here with every stored parameter (cores, biases, head)
rounded to float32 after each update, as the Python path stores them; its float32
arithmetic in between is not reproduced, so the two agree to float32 accuracy.

Compilation: about 45 s for the first network of a fresh environment (the split and MPO
kernels, shared by every network, included), 10-20 s for each further ``(P, C,
activation)``; cached on disk, a new process loads it in about 0.5 s.
"""
from __future__ import annotations

import math

import numpy as np
from numba.extending import overload
from numba.np.unsafe.ndarray import to_fixed_tuple

from .._numba import _DISABLED as _JIT_DISABLED
from .._numba import njit, prange, timestamp
from ..backend import PARTITION_THREADS
from ..ops.mpo import kernels as mk
from ..ops.svd_truncate.subspace import svd_split_kernel

if _JIT_DISABLED:  # FASTTN_DISABLE_JIT: the kernels run as plain Python
    def to_fixed_tuple(a, n):  # noqa: F811
        return tuple(a[:n])

__all__ = ["ACTIVATION_CODES", "LOSS_CODES", "MAX_PARTS", "MIN_PART", "P_SMALL", "PROF_PARTS",
           "compile_time_args",
           "pal_sweep", "refresh_envs", "work_size"]

ACTIVATION_CODES = {"linear": 0, "relu": 1, "sigmoid": 2, "tanh": 3}
LOSS_CODES = {"softmax": 0, "sigmoid": 1, "mse": 2}
_LINEAR, _RELU, _SIGMOID, _TANH = 0, 1, 2, 3
_SOFTMAX_CE, _SIGMOID_CE, _MSE = 0, 1, 2
# Widest [F, 1] handled by the unrolled data pass (the paper's inputs have 1 or 2 features);
# wider inputs (a TNLayer straight on pixels) take the BLAS data pass.
P_SMALL = 8
# status codes of pal_sweep
OK, BAD_LOSS, BAD_WEIGHTS = 0, 1, 2
# parts of a bond update timed into pal_sweep's ``prof`` (cycle-counter ticks), when given
PROF_PARTS = ("bond tensor and W1", "data pass", "bond gradient, split, environment",
              "adam")
# log of a running product of sum-exp terms is taken once it passes this (each factor is at
# most C, so the product never overflows)
_PROD_FLUSH = 1e200

# layout of the integer parameters of pal_sweep
I_MAX_BOND, I_LOSS, I_SCALED, I_F32, I_ADAM_T, I_U_IN, I_BIAS_OFF, I_HEAD_OFF, I_HEADB_OFF, \
    I_N_THETA, I_HAS_AHAT = range(11)
N_INTS = 11
# layout of the float parameters
F_LR, F_SWEEP_LR, F_B1, F_B2, F_EPS, F_CUTOFF = range(6)
N_FLOATS = 6


@njit(inline="always")
def _act(z, act):
    """``activation_forward`` of one value for activation code ``act``."""
    if act == _RELU:
        return z if z > 0.0 else 0.0
    if act == _LINEAR:
        return z
    if act == _SIGMOID:  # split by sign so exp never overflows (activation_forward)
        e = math.exp(-abs(z))
        return 1.0 / (1.0 + e) if z >= 0 else e / (1.0 + e)
    return math.tanh(z)


@njit(inline="always")
def _act_grad(g, z, y, act):
    """``dL/dz`` from ``dL/dy`` (``activation_backward``)."""
    if act == _RELU:
        return g if z > 0.0 else 0.0
    if act == _LINEAR:
        return g
    if act == _SIGMOID:
        return g * y * (1.0 - y)
    return g * (1.0 - y * y)


# -- data pass, small P: unrolled over P and C -------------------------------------------
@njit
def _forward_small(kp, kc, f1t, w1t, vtt, st, mask, ka):
    """Logits ``st (C, nb) += act([F, 1] W1) V``: units in groups of four (one read and
    write of the logits per group; eight measured no faster), samples vectorised. ``w1t
    (u, P)``, ``vtt (u, C)``: rows per unit; ``st`` holds the head bias. For ReLU units
    ``mask (u, nb)`` receives ``z > 0`` as 1.0 / 0.0 (the backward's operand)."""
    act = len(ka) - 1  # a compile-time constant: the loop below compiles branch-free
    P = len(kp)
    C = len(kc)
    nb = f1t.shape[1]
    u = w1t.shape[0]
    j = 0
    while j + 4 <= u:
        a0 = to_fixed_tuple(w1t[j], P)
        a1 = to_fixed_tuple(w1t[j + 1], P)
        a2 = to_fixed_tuple(w1t[j + 2], P)
        a3 = to_fixed_tuple(w1t[j + 3], P)
        v0 = to_fixed_tuple(vtt[j], C)
        v1 = to_fixed_tuple(vtt[j + 1], C)
        v2 = to_fixed_tuple(vtt[j + 2], C)
        v3 = to_fixed_tuple(vtt[j + 3], C)
        m0 = mask[j]  # rows as views: fewer pointers for the vectoriser's overlap checks
        m1 = mask[j + 1]
        m2 = mask[j + 2]
        m3 = mask[j + 3]
        for i in range(nb):
            x = f1t[0, i]
            z0 = x * a0[0]
            z1 = x * a1[0]
            z2 = x * a2[0]
            z3 = x * a3[0]
            for q in range(1, P):
                x = f1t[q, i]
                z0 += x * a0[q]
                z1 += x * a1[q]
                z2 += x * a2[q]
                z3 += x * a3[q]
            y0 = _act(z0, act)
            y1 = _act(z1, act)
            y2 = _act(z2, act)
            y3 = _act(z3, act)
            if act == _RELU:
                m0[i] = 1.0 if z0 > 0.0 else 0.0
                m1[i] = 1.0 if z1 > 0.0 else 0.0
                m2[i] = 1.0 if z2 > 0.0 else 0.0
                m3[i] = 1.0 if z3 > 0.0 else 0.0
            for k in range(C):
                st[k, i] += (y0 * v0[k] + y1 * v1[k]) + (y2 * v2[k] + y3 * v3[k])
        j += 4
    while j < u:
        a0 = to_fixed_tuple(w1t[j], P)
        v0 = to_fixed_tuple(vtt[j], C)
        for i in range(nb):
            z0 = f1t[0, i] * a0[0]
            for q in range(1, P):
                z0 += f1t[q, i] * a0[q]
            y0 = _act(z0, act)
            if act == _RELU:
                mask[j, i] = 1.0 if z0 > 0.0 else 0.0
            for k in range(C):
                st[k, i] += y0 * v0[k]
        j += 1


@njit
def _backward_piecewise(kp, kc, f1t, gst, w1, vt, mask, gt, acc, ka):
    """Gradients for ReLU or linear units through ``T[q C + k, j] = sum_i [z_ij > 0]
    F1[i, q] gS[i, k]`` (every ``i`` when linear): one BLAS product ``O^T Mask`` (``O[i, q C +
    k] = F1[i, q] gS[i, k]``, built in ``gt``) for ReLU. Since ``act(z_ij) = [z_ij > 0] sum_q
    F1[i, q] W1[q, j]``, the head weights' gradient is ``sum_q W1[q, j] T[q C + k, j]`` and
    ``[F, 1]^T dL/dz`` is ``sum_k V[j, k] T[q C + k, j]``. Its rounding error is bounded as
    that of the direct products, whose ``z`` already carries ``eps sum_q |F1 W1|``, at one
    product instead of two. NumPy reference: ``gV = gS^T act(Z)``, ``M = F1^T ((gS V^T) *
    act'(Z))``."""
    act = len(ka) - 1
    P = len(kp)
    C = len(kc)
    nb = f1t.shape[1]
    u = w1.shape[1]
    ot = gt.reshape(-1)[:P * C * nb].reshape((P * C, nb))
    tmat = np.empty((P * C, u))
    for q in range(P):
        fq = f1t[q]
        for k in range(C):
            gk = gst[k]
            row = ot[q * C + k]
            for i in range(nb):
                row[i] = fq[i] * gk[i]
    if act == _RELU:
        np.dot(ot, mask.T, tmat)
    else:
        for r in range(P * C):
            tot = 0.0
            for i in range(nb):
                tot += ot[r, i]
            for j in range(u):
                tmat[r, j] = tot
    for k in range(C):
        for j in range(u):
            acc[k, j] = 0.0
        for q in range(P):
            trow = tmat[q * C + k]
            for j in range(u):
                acc[k, j] += w1[q, j] * trow[j]
    for q in range(P):
        for j in range(u):
            acc[C + q, j] = 0.0
        for k in range(C):
            trow = tmat[q * C + k]
            for j in range(u):
                acc[C + q, j] += vt[k, j] * trow[j]


@njit
def _backward_small(kp, kc, f1, gs, w1, vt, acc, ka):
    """``acc[:C] = gS^T act(z)`` (head weight gradient, ``(C, u)``) and ``acc[C:] = [F, 1]^T
    dL/dz`` (``(P, u)``) for smooth activations: samples in groups of four, units
    vectorised; ``z = [F, 1] W1`` recomputed. ``w1 (P, u)``, ``vt (C, u)``."""
    act = len(ka) - 1
    P = len(kp)
    C = len(kc)
    nb = f1.shape[0]
    u = w1.shape[1]
    acc[:] = 0.0
    i = 0
    while i + 4 <= nb:
        x0 = to_fixed_tuple(f1[i], P)
        x1 = to_fixed_tuple(f1[i + 1], P)
        x2 = to_fixed_tuple(f1[i + 2], P)
        x3 = to_fixed_tuple(f1[i + 3], P)
        s0 = to_fixed_tuple(gs[i], C)
        s1 = to_fixed_tuple(gs[i + 1], C)
        s2 = to_fixed_tuple(gs[i + 2], C)
        s3 = to_fixed_tuple(gs[i + 3], C)
        for j in range(u):
            m = w1[0, j]
            z0 = x0[0] * m
            z1 = x1[0] * m
            z2 = x2[0] * m
            z3 = x3[0] * m
            for q in range(1, P):
                m = w1[q, j]
                z0 += x0[q] * m
                z1 += x1[q] * m
                z2 += x2[q] * m
                z3 += x3[q] * m
            v = vt[0, j]
            g0 = s0[0] * v
            g1 = s1[0] * v
            g2 = s2[0] * v
            g3 = s3[0] * v
            for k in range(1, C):
                v = vt[k, j]
                g0 += s0[k] * v
                g1 += s1[k] * v
                g2 += s2[k] * v
                g3 += s3[k] * v
            y0 = _act(z0, act)
            y1 = _act(z1, act)
            y2 = _act(z2, act)
            y3 = _act(z3, act)
            g0 = _act_grad(g0, z0, y0, act)
            g1 = _act_grad(g1, z1, y1, act)
            g2 = _act_grad(g2, z2, y2, act)
            g3 = _act_grad(g3, z3, y3, act)
            for k in range(C):
                acc[k, j] += (s0[k] * y0 + s1[k] * y1) + (s2[k] * y2 + s3[k] * y3)
            for q in range(P):
                acc[C + q, j] += (x0[q] * g0 + x1[q] * g1) + (x2[q] * g2 + x3[q] * g3)
        i += 4
    while i < nb:
        x0 = to_fixed_tuple(f1[i], P)
        s0 = to_fixed_tuple(gs[i], C)
        for j in range(u):
            z0 = x0[0] * w1[0, j]
            for q in range(1, P):
                z0 += x0[q] * w1[q, j]
            g0 = s0[0] * vt[0, j]
            for k in range(1, C):
                g0 += s0[k] * vt[k, j]
            y0 = _act(z0, act)
            g0 = _act_grad(g0, z0, y0, act)
            for k in range(C):
                acc[k, j] += s0[k] * y0
            for q in range(P):
                acc[C + q, j] += x0[q] * g0
        i += 1


# -- data pass, wide P: the input products through BLAS ----------------------------------
@njit
def _forward_wide(kc, f1t, w1, vt, st, at, ka):
    """As :func:`_forward_small`; ``at (u, nb)`` receives ``act(z)^T``."""
    act = len(ka) - 1
    C = len(kc)
    nb = f1t.shape[1]
    u = w1.shape[1]
    mk.mm_tn(w1, f1t, at)
    for j in range(u):
        row = at[j]
        vj = np.empty(C)
        for k in range(C):
            vj[k] = vt[k, j]
        for i in range(nb):
            row[i] = _act(row[i], act)
        for k in range(C):
            sk = st[k]
            c = vj[k]
            for i in range(nb):
                sk[i] += row[i] * c


@njit
def _backward_wide(kc, f1t, gst, vt, at, gt, acc, ka):
    """As :func:`_backward_small` from the stored activations ``at``; ``gt (u, nb)`` work."""
    act = len(ka) - 1
    C = len(kc)
    nb = gst.shape[1]
    u = at.shape[0]
    for j in range(u):
        grow = gt[j]
        arow = at[j]
        for i in range(nb):
            grow[i] = 0.0
        for k in range(C):
            c = vt[k, j]
            sk = gst[k]
            for i in range(nb):
                grow[i] += sk[i] * c
        for i in range(nb):
            y = arow[i]
            # the activation's derivative from its output (relu: y > 0 iff z > 0)
            grow[i] = _act_grad(grow[i], y, y, act)
    np.dot(gst, at.T, acc[:C])
    np.dot(f1t, gt.T, acc[C:])


# -- loss ----------------------------------------------------------------------------------
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 split so that k * _LN2_HI is exact (|k| < 2^11)
_LN2_LO = 1.90821492927058770002e-10
_EXP_MIN = -708.0  # below, exp(x) < 2^-1021: flushed to 0 (a probability of 1e-308)


@njit
def _exp_nonpos(x, bits):
    """``x <- exp(x)`` for ``x <= 0``, in loops that vectorise (``math.exp`` is a libm call
    per value): ``x = k ln 2 + r`` (Cody-Waite, ``|r| <= ln 2 / 2``), ``exp(r)`` by its
    Taylor polynomial to degree 13 (truncation below 1e-17), times ``2^k`` built from its
    bits in ``bits`` (int64, at least as long). At most 1.01 ulp from ``np.exp`` (dense grid
    on [-700, 0]); ``x < -708`` gives 0. In place: a separate output would alias-check
    against ``x`` and fall back to scalar code whenever they overlap."""
    n = x.shape[0]
    for i in range(n):
        xi = x[i]
        xc = max(xi, _EXP_MIN)
        k = np.floor(xc * _LOG2E + 0.5)
        r = (xc - k * _LN2_HI) - k * _LN2_LO
        p = 1.0 / 6227020800.0
        p = p * r + 1.0 / 479001600.0
        p = p * r + 1.0 / 39916800.0
        p = p * r + 1.0 / 3628800.0
        p = p * r + 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
        p = p * r + 1.0 / 720.0
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r + 1.0
        x[i] = p if xi >= _EXP_MIN else 0.0
        bits[i] = (np.int64(k) + 1023) << 52
    scale = bits[:n].view(np.float64)
    for i in range(n):
        x[i] *= scale[i]


@njit
def _softmax_ce(kc, st, yi, gst, e, bits, tot, inv_n):
    """Softmax cross-entropy of the logits ``st (C, nb)`` (``TNN._loss``): returns
    ``(sum of per-sample losses, correct)`` and ``gst (C, nb) = dL/dst`` (the mean over a
    batch of ``1 / inv_n`` samples, of which these are some). ``e (C nb)``, ``bits (C nb)``,
    ``tot (nb)`` are work."""
    C = len(kc)
    nb = st.shape[1]
    mx = tot  # the row maxima first, then the sums
    for i in range(nb):
        m = st[0, i]
        for k in range(1, C):
            m = max(m, st[k, i])
        mx[i] = m
    for k in range(C):
        ek = e[k * nb:(k + 1) * nb]
        for i in range(nb):
            ek[i] = st[k, i] - mx[i]
    _exp_nonpos(e[:C * nb], bits)
    total = 0.0
    correct = 0
    for i in range(nb):
        yk = yi[i]
        best = 0
        for k in range(1, C):
            if st[k, i] > st[best, i]:  # the first maximum, as argmax
                best = k
        correct += best == yk
        total -= st[yk, i] - mx[i]
    for i in range(nb):
        t = 0.0
        for k in range(C):
            t += e[k * nb + i]
        tot[i] = t
    # sum of log sum exp: one log per run of products below _PROD_FLUSH (each factor <= C)
    logs = 0.0
    prod = 1.0
    for i in range(nb):
        prod *= tot[i]
        if prod > _PROD_FLUSH:
            logs += math.log(prod)
            prod = 1.0
    total += logs + math.log(prod)
    for i in range(nb):
        tot[i] = inv_n / tot[i]
    for k in range(C):
        gk = gst[k]
        ek = e[k * nb:(k + 1) * nb]
        for i in range(nb):
            gk[i] = ek[i] * tot[i]
    for i in range(nb):
        gst[yi[i], i] -= inv_n
    return total, correct


@njit
def _loss_grad(kc, st, yi, yf, gst, loss_kind, e, bits, tot, inv_n):
    """Loss of the logits / outputs ``st (C, nb)`` (``TNN._loss``), ``gst (C, nb) = dL/dst``,
    correct predictions; returns ``(loss, correct, finite)``, the loss and gradient as parts
    of the mean over a batch of ``1 / inv_n`` samples. Non-finite logits or targets make the
    loss non-finite, which is what the caller checks (as the Python path does)."""
    C = len(kc)
    nb = st.shape[1]
    total = 0.0
    correct = 0
    if loss_kind == _SOFTMAX_CE:
        total, correct = _softmax_ce(kc, st, yi, gst, e, bits, tot, inv_n)
    elif loss_kind == _SIGMOID_CE:
        for i in range(nb):
            z = st[0, i]
            t = 1.0 if yi[i] == 1 else 0.0
            ez = math.exp(-abs(z))
            total += max(z, 0.0) - z * t + math.log1p(ez)
            p = 1.0 / (1.0 + ez) if z >= 0 else ez / (1.0 + ez)
            gst[0, i] = (p - t) * inv_n
            correct += (z > 0) == (yi[i] == 1)
    else:
        scale = 2.0 * inv_n / C
        for i in range(nb):
            for k in range(C):
                d = st[k, i] - yf[i, k]
                total += d * d
                gst[k, i] = scale * d
        total /= C
    loss = total * inv_n
    return loss, correct, abs(loss) < math.inf


@njit
def _init_logits(hc, st):
    for k in range(st.shape[0]):
        c = hc[k] if hc.shape[0] > 0 else 0.0
        for i in range(st.shape[1]):
            st[k, i] = c


# The data pass of one batch, in three versions with one signature, of which pal_sweep
# compiles only the one the network needs (``_data_pass``). Each returns ``(loss, correct,
# ok)`` and leaves ``dL/dlogits (C, nb)`` in ``gs``, the head weights' gradient in
# ``acc[:C]`` and ``[F, 1]^T dL/dz`` in ``acc[C:]``; the activation code is ``len(ka) - 1``.
@njit
def data_pass_piecewise(kp, kc, f1, f1t, yi, yf, w1, vt, hc, st, gs, acc, at, gt, ework,
                        bits, tot, ka, loss_kind, inv_n):
    """ReLU or linear units, ``P`` (``len(kp)``) input columns unrolled."""
    _init_logits(hc, st)
    _forward_small(kp, kc, f1t, np.ascontiguousarray(w1.T), np.ascontiguousarray(vt.T), st,
                   at, ka)
    loss, correct, ok = _loss_grad(kc, st, yi, yf, gs, loss_kind, ework, bits, tot, inv_n)
    if ok:
        _backward_piecewise(kp, kc, f1t, gs, w1, vt, at, gt, acc, ka)
    return loss, correct, ok


@njit
def data_pass_smooth(kp, kc, f1, f1t, yi, yf, w1, vt, hc, st, gs, acc, at, gt, ework,
                     bits, tot, ka, loss_kind, inv_n):
    """Sigmoid or tanh units, ``P`` input columns unrolled."""
    _init_logits(hc, st)
    _forward_small(kp, kc, f1t, np.ascontiguousarray(w1.T), np.ascontiguousarray(vt.T), st,
                   at, ka)
    loss, correct, ok = _loss_grad(kc, st, yi, yf, gs, loss_kind, ework, bits, tot, inv_n)
    if ok:
        _backward_small(kp, kc, f1, np.ascontiguousarray(gs.T), w1, vt, acc, ka)
    return loss, correct, ok


@njit
def data_pass_wide(kp, kc, f1, f1t, yi, yf, w1, vt, hc, st, gs, acc, at, gt, ework,
                   bits, tot, ka, loss_kind, inv_n):
    """Any elementwise units, the input products through BLAS (``kp`` unused)."""
    _init_logits(hc, st)
    _forward_wide(kc, f1t, w1, vt, st, at, ka)
    loss, correct, ok = _loss_grad(kc, st, yi, yf, gs, loss_kind, ework, bits, tot, inv_n)
    if ok:
        _backward_wide(kc, f1t, gs, vt, at, gt, acc, ka)
    return loss, correct, ok


DATA_PASSES = (data_pass_piecewise, data_pass_smooth, data_pass_wide)


def data_pass_variant(act: int, wide: bool) -> int:
    """Which of :data:`DATA_PASSES` :func:`pal_sweep` runs for activation code ``act``."""
    if wide:
        return 2
    return 0 if act in (_RELU, _LINEAR) else 1


def compile_time_args(p: int, c: int, act: int, wide: bool):
    """``(kp, kc, kv, ka)`` of :func:`pal_sweep`: sizes carried as tuple lengths, which Numba
    types (and caches) as constants without the slow path of literal arguments."""
    return ((0,) * (1 if wide else p), (0,) * c, (0,) * (data_pass_variant(act, wide) + 1),
            (0,) * (act + 1))


def _data_pass(kv, kp, kc, f1, f1t, yi, yf, w1, vt, hc, st, gs, acc, at, gt, ework, bits,
               tot, ka, loss_kind, inv_n):
    """``DATA_PASSES[len(kv) - 1](...)``; in compiled code only that data pass is compiled
    (see the overload below)."""
    return DATA_PASSES[len(kv) - 1](kp, kc, f1, f1t, yi, yf, w1, vt, hc, st, gs, acc, at, gt,
                                    ework, bits, tot, ka, loss_kind, inv_n)


if not _JIT_DISABLED:
    @overload(_data_pass)
    def _data_pass_typed(kv, kp, kc, f1, f1t, yi, yf, w1, vt, hc, st, gs, acc, at, gt,
                         ework, bits, tot, ka, loss_kind, inv_n):
        # chosen while typing, from the length of the tuple ``kv``: a branch on a runtime
        # value would compile all three, and a function argument or a literal one would
        # keep the caller out of Numba's disk cache or off its fast dispatch path
        fn = DATA_PASSES[len(kv) - 1]

        def impl(kv, kp, kc, f1, f1t, yi, yf, w1, vt, hc, st, gs, acc, at, gt, ework, bits,
                 tot, ka, loss_kind, inv_n):
            return fn(kp, kc, f1, f1t, yi, yf, w1, vt, hc, st, gs, acc, at, gt, ework, bits,
                      tot, ka, loss_kind, inv_n)
        return impl


# Fewest samples per range of a data pass (pal_sweep's ``min_part``): a parallel region
# costs several microseconds to open, about the work of this many samples at 64 units.
MIN_PART = 128
# Most ranges of a data pass: a fixed count (not the threads running), so that the ranges'
# gradient sums, and with them the result, are the same for any thread count.
MAX_PARTS = PARTITION_THREADS


@njit
def part_bounds(nb, n_parts, offs):
    """``offs[t]:offs[t + 1]``: ``n_parts`` ranges of ``nb`` samples, sizes differing by
    at most one."""
    for t in range(n_parts + 1):
        offs[t] = (t * nb) // n_parts


@njit
def to_parts(f1t, offs, out):
    """``[F, 1]^T (P, nb)`` as one ``(P, n_t)`` block per range, the blocks one after
    another in ``out`` (each range's operand contiguous)."""
    p = f1t.shape[0]
    for t in range(offs.shape[0] - 1):
        lo = offs[t]
        n = offs[t + 1] - lo
        blk = out[p * lo:p * (lo + n)].reshape((p, n))
        for q in range(p):
            for i in range(n):
                blk[q, i] = f1t[q, lo + i]


@njit(parallel=True)
def _data_pass_parts(kv, kp, kc, f1, f1tp, yi, yf, w1, vt, hc, stp, gsp, accp, atp, gtp,
                     gt_rows, ework, bits, tot, ka, loss_kind, offs, res):
    """The data pass on each sample range ``offs[t]:offs[t + 1]``, the ranges in parallel.

    Every range has its operands as contiguous blocks at its offset in the flat buffers
    (``f1tp`` from :func:`to_parts`; logits ``stp``, ``dL/dlogits`` ``gsp``, ``atp``,
    ``gtp``, ``ework``, ``bits``: ``C``, ``C``, ``u``, ``gt_rows``, ``C``, ``C`` entries per
    sample; ``tot`` one) and its own gradient sums ``accp[t]``; loss terms are already
    divided by the whole batch's size, so the caller adds the parts. ``res[t] = (loss,
    correct, ok)``."""
    P = f1.shape[1]
    C = len(kc)
    u = w1.shape[1]
    n_parts = offs.shape[0] - 1
    inv_n = 1.0 / offs[n_parts]
    has_yi = yi.shape[0] > 0
    has_yf = yf.shape[0] > 0
    for t in prange(n_parts):
        lo = offs[t]
        hi = offs[t + 1]
        n = hi - lo
        loss, corr, ok = _data_pass(
            kv, kp, kc, f1[lo:hi], f1tp[P * lo:P * hi].reshape((P, n)),
            yi[lo:hi] if has_yi else yi, yf[lo:hi] if has_yf else yf, w1, vt, hc,
            stp[C * lo:C * hi].reshape((C, n)), gsp[C * lo:C * hi].reshape((C, n)), accp[t],
            atp[u * lo:u * hi].reshape((u, n)), gtp[gt_rows * lo:gt_rows * hi].reshape((gt_rows, n)),
            ework[C * lo:C * hi], bits[C * lo:C * hi], tot[lo:hi], ka, loss_kind, inv_n)
        res[t, 0] = loss
        res[t, 1] = corr
        res[t, 2] = 1.0 if ok else 0.0


# -- the sweep ---------------------------------------------------------------------------
@njit
def _core(cores, bonds, ins, outs, k):
    n = bonds[k] * ins[k] * outs[k] * bonds[k + 1]
    return cores[k, :n].reshape((bonds[k], ins[k], outs[k], bonds[k + 1]))


@njit
def _left_env(pre, bonds, ins, outs, k):
    il = 1
    ol = 1
    for s in range(k):
        il *= ins[s]
        ol *= outs[s]
    return pre[k, :il * ol * bonds[k]].reshape((il, ol, bonds[k]))


@njit
def _right_env(suf, bonds, ins, outs, k):
    ir = 1
    orr = 1
    for s in range(k, ins.shape[0]):
        ir *= ins[s]
        orr *= outs[s]
    return suf[k, :bonds[k] * ir * orr].reshape((bonds[k], ir, orr))


@njit
def _ahat_env(al, bonds, ins, outs, p, k):
    """``AL[k] (P, O<, D_k, I>=k)`` in its row of the buffer ``al``."""
    ol = 1
    for s in range(k):
        ol *= outs[s]
    irest = 1
    for s in range(k, ins.shape[0]):
        irest *= ins[s]
    return al[k, :p * ol * bonds[k] * irest].reshape((p, ol, bonds[k], irest))


@njit
def _row_sum(x):
    """``sum(x)`` in four interleaved partial sums (a single chain of adds waits on each)."""
    n = x.shape[0]
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    i = 0
    while i + 4 <= n:
        s0 += x[i]
        s1 += x[i + 1]
        s2 += x[i + 2]
        s3 += x[i + 3]
        i += 4
    while i < n:
        s0 += x[i]
        i += 1
    return (s0 + s1) + (s2 + s3)


@njit
def _round32(x):
    for i in range(x.shape[0]):
        x[i] = np.float64(np.float32(x[i]))


@njit
def refresh_envs(cores, bonds, ins, outs, pre, suf, ahat, al):
    """Every environment from the cores (``MPOSweep.refresh``); with ``ahat (P, prod ins)``
    given (not empty), also the left environments ``AL`` that carry it."""
    n = ins.shape[0]
    pre[0, 0] = 1.0
    suf[n, 0] = 1.0
    for k in range(n):
        mk.prefix_step(_left_env(pre, bonds, ins, outs, k), _core(cores, bonds, ins, outs, k),
                       _left_env(pre, bonds, ins, outs, k + 1))
    for k in range(n - 1, -1, -1):
        mk.suffix_step(_core(cores, bonds, ins, outs, k), _right_env(suf, bonds, ins, outs, k + 1),
                       _right_env(suf, bonds, ins, outs, k))
    p = ahat.shape[0]
    if p > 0:
        al[0, :ahat.size] = ahat.reshape(-1)
        for k in range(n - 1):
            mk.ahat_left_step(_ahat_env(al, bonds, ins, outs, p, k),
                              _core(cores, bonds, ins, outs, k),
                              _ahat_env(al, bonds, ins, outs, p, k + 1))


@njit
def work_size(u, c, p, nb, wide):
    """Entries of :func:`pal_sweep`'s ``work`` for ``u`` units, ``c`` outputs, ``p``
    columns of ``[F, 1]`` and batches of ``nb``: ``act(z)^T`` (or the ReLU mask) and the
    backward's operand (``dL/dz^T``, or ``O^T`` of ``_backward_piecewise``)."""
    return (u + (u if wide else max(u, p * c))) * nb


# The parts of a bond update that do not depend on the data pass's compile-time sizes are
# separate functions, compiled once for every network (pal_sweep itself is compiled per
# (P, C, activation) and is kept small).
@njit
def _bond_weights(k, cores, bonds, ins, outs, pre, suf, al, p, hb, w, w1):
    """The bond matrix of bond ``k`` and the z-weights ``w1 (P, u)`` from it: ``[[A W],
    [a W + b]]`` through ``AL`` (``W`` never formed) or ``[[W], [b]]``. Returns ``(bond,
    alp, finite)``; ``alp`` is the bond's ``AL`` operand (empty without ``AL``)."""
    c1 = _core(cores, bonds, ins, outs, k)
    c2 = _core(cores, bonds, ins, outs, k + 1)
    right_env = _right_env(suf, bonds, ins, outs, k + 2)
    da, i1, o1, dk = c1.shape
    _, i2, o2, db = c2.shape
    bond = np.empty((da * i1 * o1, i2 * o2 * db))
    mk.bond_matrix(c1, c2, bond)
    u = w1.shape[1]
    if al.shape[0] > 0:
        al_k = _ahat_env(al, bonds, ins, outs, p, k)
        alp = mk.ahat_bond_operand(al_k, i1, i2)
        mk.ahat_dense_from_bond(alp, al_k.shape[1], bond, right_env, i1, o1, w1)
    else:
        alp = np.empty((0, 0))
        mk.dense_from_bond(_left_env(pre, bonds, ins, outs, k), bond, right_env, i1, o1, w)
        u_in = w.shape[0]
        w1[:u_in] = w
        w1[u_in] = 0.0
    for j in range(hb.shape[0]):
        w1[p - 1, j] += hb[j]
    finite = True
    for q in range(p):
        for j in range(u):
            if not abs(w1[q, j]) < math.inf:
                finite = False
    return bond, alp, finite


@njit
def _gather(rows, f1, yi, yf, f1b, f1bt, yib, yfb):
    """The batch ``rows`` of ``[F, 1]`` (both layouts) and of the targets."""
    p = f1.shape[1]
    for r in range(rows.shape[0]):
        row = rows[r]
        for q in range(p):
            f1b[r, q] = f1[row, q]
            f1bt[q, r] = f1[row, q]
        if yib.shape[0] > 0:
            yib[r] = yi[row]
        for c in range(yfb.shape[1]):
            yfb[r, c] = yf[row, c]


@njit
def _bond_update(k, right, bond, alp, mhat, cores, bonds, ins, outs, pre, suf, al, g_w,
                 max_bond, cutoff, step_lr, scaled, f32, entropy, discarded, sv, sv_count):
    """``B <- B - step dL/dB``, the split into cores ``k, k+1`` and the environment the
    sweep moves on with; returns False (nothing changed) if ``B`` became non-finite."""
    c2 = _core(cores, bonds, ins, outs, k + 1)
    i1 = ins[k]
    o1 = outs[k]
    dk, i2, o2, db = c2.shape
    m, n = bond.shape
    left_env = _left_env(pre, bonds, ins, outs, k)
    right_env = _right_env(suf, bonds, ins, outs, k + 2)
    g_bond = np.empty((m, n))
    if al.shape[0] > 0:  # dL/dW = Ahat^T Mhat, never formed
        mk.ahat_bond_grad(alp, _ahat_env(al, bonds, ins, outs, mhat.shape[0], k).shape[1],
                          mhat, right_env, i1, o1, i2, o2, g_bond)
    else:
        g_w[:] = mhat[:g_w.shape[0]]
        mk.bond_grad(left_env, g_w, right_env, i1, o1, i2, o2, g_bond)
    step = step_lr
    if scaled:  # MPOSweep.step_scale
        step = step_lr / max(mk.env_norm_sq(left_env, 0) * mk.env_norm_sq(right_env, 1),
                             1e-300)
    for i in range(m):
        for j in range(n):
            bond[i, j] -= step * g_bond[i, j]
            if not abs(bond[i, j]) < math.inf:
                return False
    # the split, warm-started from the old right core's rows
    start = c2.reshape((dk, n)).copy()
    kb = min(max_bond, m, n)
    left = np.empty(m * kb)
    rightf = np.empty(kb * n)
    s_out = np.empty(kb)
    keep, ent, disc, _, _ = svd_split_kernel(bond, max_bond, cutoff, start, left, rightf,
                                             s_out)
    if f32:  # stored as the Python path stores them
        _round32(left[:m * keep])
        _round32(rightf[:keep * n])
    bonds[k + 1] = keep
    cores[k, :m * keep] = left[:m * keep]
    cores[k + 1, :keep * n] = rightf[:keep * n]
    entropy[k] = ent
    discarded[k] = disc
    sv_count[k] = keep
    for j in range(keep):
        sv[k, j] = np.float64(np.float32(s_out[j])) if f32 else s_out[j]
    if right:
        if al.shape[0] > 0:
            p = mhat.shape[0]
            mk.ahat_left_step(_ahat_env(al, bonds, ins, outs, p, k),
                              _core(cores, bonds, ins, outs, k),
                              _ahat_env(al, bonds, ins, outs, p, k + 1))
        if scaled or al.shape[0] == 0:
            mk.prefix_step(left_env, _core(cores, bonds, ins, outs, k),
                           _left_env(pre, bonds, ins, outs, k + 1))
    else:
        mk.suffix_step(_core(cores, bonds, ins, outs, k + 1), right_env,
                       _right_env(suf, bonds, ins, outs, k + 1))
    return True


@njit
def _adam(theta, g, m, v, lr, b1, b2, eps, t, f32):
    """One step of ``AdamW(weight_decay=0)`` (``optim._adamw_update``, float64 moments)."""
    c1 = 1 - math.pow(b1, t)
    c2 = 1 - math.pow(b2, t)
    for i in range(theta.shape[0]):
        gi = g[i]
        m[i] = b1 * m[i] + (1 - b1) * gi
        v[i] = b2 * v[i] + (1 - b2) * gi * gi
        p = theta[i]
        theta[i] = p - (lr * 0.0 * p + lr * (m[i] / c1) / (math.sqrt(v[i] / c2) + eps))
    if f32:
        _round32(theta)


@njit
def pal_sweep(kp, kc, kv, ka, f1, f1t, yi, yf, batch_idx, batch_ptr, ahat, cores, bonds,
              ins, outs, pre, suf, al, theta, adam_m, adam_v, floats, ints, work, step_loss,
              entropy, discarded, sv, sv_count, counts, ticks, prof, threads, min_part):
    """``S`` PaL sweeps (each right, then back) over the MPO held in ``cores``, in place.

    Parameters
    ----------
    kp, kc, kv, ka : tuples of lengths ``P`` (1, unused, for the wide data pass), ``C``,
        ``data_pass_variant(act, wide) + 1`` and ``act + 1`` (``act`` the TNLayer's
        activation code, ``ACTIVATION_CODES``): compile-time constants, one compiled sweep
        per combination (see :func:`compile_time_args`)
    f1 : (n, P) ``[F, 1]``; f1t its transpose
    yi : (n,) int64 class indices; yf : (n, C) float64 regression targets (either may be
        empty)
    batch_idx, batch_ptr : int64
        Rows of step ``t`` (counted over all sweeps) are
        ``batch_idx[batch_ptr[t]:batch_ptr[t + 1]]``; ``batch_ptr`` empty: every step uses
        all rows.
    ahat : (P, u_in) ``[[A], [a]]`` of the folded frozen linear layer, or empty
    cores : (N, cap) the cores, core ``k`` flat in the first ``bonds[k] ins[k] outs[k]
        bonds[k+1]`` entries; bonds (N + 1,), ins, outs (N,) int64
    pre, suf : (N + 1, cap) environments, valid on entry and kept valid (with ``ahat``,
        ``pre`` only for scaled steps)
    al : (N, cap) the left environments carrying ``ahat`` (``refresh_envs``), or empty
    theta : flat ``[TN bias (u or 0), head weights (C, u), head bias (C or 0)]``, with
        ``adam_m``, ``adam_v`` its Adam moments
    floats, ints : hyper-parameters and layout (``F_*``, ``I_*``); ``ints[I_ADAM_T]`` is
        advanced
    work : float64, :func:`work_size` entries
        The data pass's large work arrays, kept by the caller between sweeps (fresh ones
        cost page faults on every call).
    step_loss : (S, n_steps) out; its first axis sets the number of sweeps ``S``
    entropy, discarded : (S, N - 1) out; sv (S, N - 1, cap) and sv_count (S, N - 1) out:
        the kept values of each bond at its last update in each sweep
    counts : (S, 2) int64 out
        Correct predictions and samples seen in each sweep's data passes.
    ticks : (S,) int64 out
        Cycle-counter ticks of each sweep (their shares of the call's wall time).
    prof : (len(PROF_PARTS),) int64, or empty
        When given, cycle-counter ticks spent in each part are added to it.
    threads, min_part : int
        The data pass runs on up to :data:`MAX_PARTS` sample ranges in parallel, of at
        least ``min_part`` samples each (:data:`MIN_PART`); the rest of a sweep runs on one
        thread. ``threads`` is not used: cut by the thread count, the ranges' sums would
        make the result depend on it.

    Returns
    -------
    status, sweeps_done, bad_loss
        ``sweeps_done`` sweeps completed; on a failure the sweep after them stopped at the
        failing update, every update before it kept.
    """
    n_sites = ins.shape[0]
    C = len(kc)
    P = f1.shape[1]
    u = 1
    for s in range(n_sites):
        u *= outs[s]
    u_in = ints[I_U_IN]
    loss_kind = ints[I_LOSS]
    scaled = ints[I_SCALED] != 0
    f32 = ints[I_F32] != 0
    wide = len(kv) == 3
    hoff = ints[I_HEAD_OFF]
    hboff = ints[I_HEADB_OFF]
    n_theta = ints[I_N_THETA]
    hb = theta[ints[I_BIAS_OFF]:hoff]
    vt = theta[hoff:hboff].reshape((C, u))
    hc = theta[hboff:n_theta]
    gtheta = np.zeros(n_theta)
    g_hb = gtheta[ints[I_BIAS_OFF]:hoff]
    g_vt = gtheta[hoff:hboff].reshape((C, u))
    g_hc = gtheta[hboff:n_theta]

    full = batch_ptr.shape[0] == 0
    n_sweeps = step_loss.shape[0]
    nb_max = f1.shape[0]
    if not full:
        nb_max = 0
        for t in range(batch_ptr.shape[0] - 1):
            nb_max = max(nb_max, batch_ptr[t + 1] - batch_ptr[t])
    st_buf = np.empty(C * nb_max)
    gs_buf = np.empty(nb_max * C)
    ework = np.empty(C * nb_max)
    bits = np.empty(C * nb_max, np.int64)
    tot = np.empty(nb_max)
    # act(z)^T or the mask, (u, nb), and the backward's operand
    need = work_size(u, C, len(kp), nb_max, wide)
    if work.shape[0] < need:
        work = np.empty(need)
    gt_rows = u if wide else max(u, len(kp) * C)
    at_buf = work[:u * nb_max]
    gt_buf = work[u * nb_max:(u + gt_rows) * nb_max]
    acc = np.empty((C + P, u))
    w1 = np.empty((P, u))
    w = np.empty((0 if ahat.shape[0] > 0 else u_in, u))
    g_w = np.empty((0 if ahat.shape[0] > 0 else u_in, u))
    f1b_buf = np.empty(0 if full else nb_max * P)
    # the data pass runs on up to MAX_PARTS sample ranges in parallel (_data_pass_parts)
    max_parts = max(1, min(MAX_PARTS, nb_max // min_part))
    offs = np.empty(max_parts + 1, np.int64)
    accp = np.empty((max_parts, C + P, u))
    res = np.empty((max_parts, 3))
    f1tp = np.empty(nb_max * P)
    n_parts = max(1, min(max_parts, nb_max // min_part))
    if full:  # the same ranges for every step
        part_bounds(nb_max, n_parts, offs)
        to_parts(f1t, offs[:n_parts + 1], f1tp)
    f1bt_buf = np.empty(0 if full else nb_max * P)
    yib_buf = np.empty(0 if full or yi.shape[0] == 0 else nb_max, np.int64)
    yfb_buf = np.empty(0 if full else nb_max * yf.shape[1])

    n_steps = 2 * (n_sites - 1)
    timed = prof.shape[0] > 0
    for sw in range(n_sweeps):
        tick0 = timestamp()
        correct = 0
        seen = 0
        for t in range(n_steps):
            tic = timestamp() if timed else 0
            right = t < n_sites - 1
            k = t if right else 2 * (n_sites - 1) - 1 - t
            bond, alp, finite = _bond_weights(k, cores, bonds, ins, outs, pre, suf, al, P, hb,
                                              w, w1)
            if not finite:
                return BAD_WEIGHTS, sw, math.nan
            if full:
                f1b, f1bt, yib, yfb = f1, f1t, yi, yf
            else:
                lo = batch_ptr[sw * n_steps + t]
                nb = batch_ptr[sw * n_steps + t + 1] - lo
                f1b = f1b_buf[:nb * P].reshape((nb, P))
                f1bt = f1bt_buf[:nb * P].reshape((P, nb))
                yib = yib_buf[:nb if yi.shape[0] > 0 else 0]
                yfb = yfb_buf[:nb * yf.shape[1]].reshape((nb, yf.shape[1]))
                _gather(batch_idx[lo:lo + nb], f1, yi, yf, f1b, f1bt, yib, yfb)
                n_parts = max(1, min(max_parts, nb // min_part))
                part_bounds(nb, n_parts, offs)
                to_parts(f1bt, offs[:n_parts + 1], f1tp)
            nb = f1b.shape[0]
            if timed:
                toc = timestamp()
                prof[0] += toc - tic
                tic = toc
            ranges = offs[:n_parts + 1]
            _data_pass_parts(kv, kp, kc, f1b, f1tp[:nb * P], yib, yfb, w1, vt, hc,
                             st_buf[:C * nb], gs_buf[:C * nb], accp[:n_parts],
                             at_buf[:u * nb], gt_buf[:gt_rows * nb], gt_rows, ework[:C * nb],
                             bits[:C * nb], tot[:nb], ka, loss_kind, ranges, res[:n_parts])
            loss = 0.0
            corr = 0
            ok = True
            for r in range(n_parts):
                loss += res[r, 0]
                corr += int(res[r, 1])
                ok = ok and res[r, 2] > 0.0
            ok = ok and abs(loss) < math.inf
            acc[:, :] = accp[0]
            for r in range(1, n_parts):
                acc += accp[r]
            step_loss[sw, t] = loss
            if not ok:
                return BAD_LOSS, sw, loss
            correct += corr
            seen += nb
            # gradients of the head weights and bias and of the TN bias
            g_vt[:, :] = acc[:C]
            for c in range(g_hc.shape[0]):
                tot_c = 0.0
                for r in range(n_parts):
                    lo_r = ranges[r]
                    n_r = ranges[r + 1] - lo_r
                    tot_c += _row_sum(gs_buf[C * lo_r + c * n_r:C * lo_r + (c + 1) * n_r])
                g_hc[c] = tot_c
            for j in range(g_hb.shape[0]):
                g_hb[j] = acc[C + P - 1, j]
            if timed:
                toc = timestamp()
                prof[1] += toc - tic
                tic = toc
            if not _bond_update(k, right, bond, alp, acc[C:], cores, bonds, ins, outs, pre,
                                suf, al, g_w, ints[I_MAX_BOND], floats[F_CUTOFF],
                                floats[F_SWEEP_LR], scaled, f32, entropy[sw], discarded[sw],
                                sv[sw], sv_count[sw]):
                return BAD_WEIGHTS, sw, math.nan
            if timed:
                toc = timestamp()
                prof[2] += toc - tic
                tic = toc
            ints[I_ADAM_T] += 1
            _adam(theta, gtheta, adam_m, adam_v, floats[F_LR], floats[F_B1], floats[F_B2],
                  floats[F_EPS], ints[I_ADAM_T], f32)
            if timed:
                prof[3] += timestamp() - tic
        counts[sw, 0] = correct
        counts[sw, 1] = seen
        ticks[sw] = timestamp() - tick0
        mean = 0.0
        for t in range(n_steps):
            mean += step_loss[sw, t]
        mean /= n_steps
        if not abs(mean) < math.inf:  # finite terms whose sum is not
            return BAD_LOSS, sw, mean
    return OK, n_sweeps, 0.0
