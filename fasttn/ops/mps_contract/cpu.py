"""CPU MPS contraction: Numba kernels parallel over the samples of the batch.

The forward walks each sample's chain once from each end to the head, storing every
normalised environment (``lefts (n, center+1, D)``, ``rights (n, L-center+1, D)``) and
every step's norm; the backward reuses them instead of contracting the chain again. It
runs in two passes: per sample (in parallel), the adjoint of each step ``dL/du`` is
propagated from the head outwards and stored, with the feature gradients on the way; then
per site (in parallel), the core gradient is summed over the samples in a fixed order, so
no two threads write the same core and the result does not depend on the thread count.
See ``reference.py`` for the maths.
"""
from __future__ import annotations

import math

import numpy as np

from ..._numba import njit, prange
from ...backend import kernel_threads


@njit(parallel=True, fastmath=True)
def _forward(phi, cores, head, center, lefts, rights, norms, out, log_scale):
    n, L, d = phi.shape
    D = cores.shape[1]
    C = head.shape[1]
    for i in prange(n):
        ls = 0.0
        lefts[i, 0, :] = 0
        lefts[i, 0, 0] = 1
        for k in range(center):
            l = lefts[i, k]
            u = lefts[i, k + 1]
            u[:] = 0
            for a in range(D):
                for s in range(d):
                    c = l[a] * phi[i, k, s]
                    for b in range(D):
                        u[b] += c * cores[k, a, s, b]
            ls += _normalise(u, norms, i, k)
        j_end = L - center
        rights[i, j_end, :] = 0
        rights[i, j_end, 0] = 1
        for k in range(L - 1, center - 1, -1):
            j = k - center
            r = rights[i, j + 1]
            u = rights[i, j]
            for a in range(D):
                acc = 0.0
                for s in range(d):
                    t = 0.0
                    for b in range(D):
                        t += cores[k, a, s, b] * r[b]
                    acc += phi[i, k, s] * t
                u[a] = acc
            ls += _normalise(u, norms, i, k)
        log_scale[i] = ls
        l = lefts[i, center]
        r = rights[i, 0]
        for c in range(C):
            acc = 0.0
            for a in range(D):
                t = 0.0
                for b in range(D):
                    t += head[a, c, b] * r[b]
                acc += l[a] * t
            out[i, c] = acc


@njit(inline="always", fastmath=True)
def _normalise(u, norms, i, k):
    """``u /= |u|`` in place; stores ``|u|`` and returns its log (an exact zero stays
    zero and counts log 1)."""
    sq = 0.0
    for b in range(u.shape[0]):
        sq += np.float64(u[b]) * np.float64(u[b])
    nrm = math.sqrt(sq)
    if nrm == 0.0:
        nrm = 1.0
    inv = 1.0 / nrm
    for b in range(u.shape[0]):
        u[b] = u[b] * inv
    norms[i, k] = nrm
    return math.log(norms[i, k])


@njit(inline="always", fastmath=True)
def _unnormalise(v, nrm, g_v, g_ls, g_u):
    """``g_u = dL/du`` for ``v = u / |u|`` (and ``log |u|``, weight ``g_ls``)."""
    proj = 0.0
    for b in range(v.shape[0]):
        proj += v[b] * g_v[b]
    proj -= g_ls
    inv = 1.0 / nrm
    for b in range(v.shape[0]):
        g_u[b] = (g_v[b] - v[b] * proj) * inv


@njit(parallel=True, fastmath=True)
def _backward_chain(phi, cores, head, center, lefts, rights, norms, g_out, g_ls, need_g_phi,
                    g_u_all, g_phi):
    n, L, d = phi.shape
    D = cores.shape[1]
    C = head.shape[1]
    for i in prange(n):
        g_l = np.zeros(D, phi.dtype)
        g_r = np.zeros(D, phi.dtype)
        w = np.empty((D, d), phi.dtype)
        l = lefts[i, center]
        r = rights[i, 0]
        for c in range(C):
            gc = g_out[i, c]
            for a in range(D):
                for b in range(D):
                    h = gc * head[a, c, b]
                    g_l[a] += h * r[b]
                    g_r[b] += h * l[a]
        for k in range(center - 1, -1, -1):
            g_u = g_u_all[i, k]
            _unnormalise(lefts[i, k + 1], norms[i, k], g_l, g_ls[i], g_u)
            # w[a, s] = sum_b A[a, s, b] g_u[b]: gives dL/dl and dL/dphi
            for a in range(D):
                for s in range(d):
                    t = 0.0
                    for b in range(D):
                        t += cores[k, a, s, b] * g_u[b]
                    w[a, s] = t
            l = lefts[i, k]
            for a in range(D):
                acc = 0.0
                for s in range(d):
                    acc += phi[i, k, s] * w[a, s]
                g_l[a] = acc
            if need_g_phi:
                for s in range(d):
                    acc = 0.0
                    for a in range(D):
                        acc += l[a] * w[a, s]
                    g_phi[i, k, s] = acc
        w2 = np.empty((d, D), phi.dtype)
        for k in range(center, L):
            j = k - center
            g_u = g_u_all[i, k]
            _unnormalise(rights[i, j], norms[i, k], g_r, g_ls[i], g_u)
            # w2[s, b] = sum_a g_u[a] A[a, s, b]: gives dL/dr and dL/dphi
            w2[:] = 0
            for a in range(D):
                ga = g_u[a]
                for s in range(d):
                    for b in range(D):
                        w2[s, b] += ga * cores[k, a, s, b]
            r = rights[i, j + 1]
            for b in range(D):
                acc = 0.0
                for s in range(d):
                    acc += phi[i, k, s] * w2[s, b]
                g_r[b] = acc
            if need_g_phi:
                for s in range(d):
                    acc = 0.0
                    for b in range(D):
                        acc += w2[s, b] * r[b]
                    g_phi[i, k, s] = acc


@njit(parallel=True, fastmath=True)
def _core_grads(phi, center, lefts, rights, g_u_all, g_cores):
    """``g_cores[k] = sum_n (input env) x phi_k x g_u`` (left of the head) or
    ``g_u x phi_k x (input env)`` (right of it), one site per task."""
    n, L, d = phi.shape
    D = g_cores.shape[1]
    for k in prange(L):
        g = g_cores[k]
        g[:] = 0
        for i in range(n):
            if k < center:
                x = lefts[i, k]
                y = g_u_all[i, k]
            else:
                x = g_u_all[i, k]
                y = rights[i, k - center + 1]
            for a in range(D):
                for s in range(d):
                    c = x[a] * phi[i, k, s]
                    for b in range(D):
                        g[a, s, b] += c * y[b]


def mps_contract_forward(phi: np.ndarray, cores: np.ndarray, head: np.ndarray, center: int):
    n, L, _ = phi.shape
    D, C = cores.shape[1], head.shape[1]
    lefts = np.empty((n, center + 1, D), phi.dtype)
    rights = np.empty((n, L - center + 1, D), phi.dtype)
    norms = np.empty((n, L), np.float64)
    out = np.empty((n, C), phi.dtype)
    log_scale = np.empty(n, np.float64)
    if n:
        with kernel_threads():
            _forward(phi, cores, head, center, lefts, rights, norms, out, log_scale)
    return out, log_scale, (phi, cores, head, center, lefts, rights, norms)


def mps_contract_backward(saved, g_out: np.ndarray, g_log_scale, need_g_phi: bool = True):
    phi, cores, head, center, lefts, rights, norms = saved
    n = phi.shape[0]
    g_ls = (np.zeros(n, np.float64) if g_log_scale is None
            else np.ascontiguousarray(g_log_scale, np.float64))
    g_u_all = np.empty((n,) + cores.shape[:2], phi.dtype)
    g_phi = np.zeros_like(phi) if need_g_phi else np.empty((0, 0, 0), phi.dtype)
    g_cores = np.empty_like(cores)
    if n:
        with kernel_threads():
            _backward_chain(phi, cores, head, center, lefts, rights, norms, g_out, g_ls,
                            need_g_phi, g_u_all, g_phi)
            _core_grads(phi, center, lefts, rights, g_u_all, g_cores)
    else:
        g_cores[:] = 0
    g_head = head_gradient(lefts[:, center], rights[:, 0], g_out)
    return (g_phi if need_g_phi else None), g_cores, g_head


def head_gradient(l, r, g_out):
    """``g_head[a, c, b] = sum_n l[n, a] g_out[n, c] r[n, b]`` as one GEMM."""
    n, D = l.shape
    C = g_out.shape[1]
    gr = (g_out[:, :, None] * r[:, None, :]).reshape(n, C * D)
    return (l.T @ gr).reshape(D, C, D).astype(l.dtype, copy=False)
