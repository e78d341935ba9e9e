"""MPS contraction on any array module (CuPy on a GPU): a loop over the sites, each step one
batched matrix product over all samples.

The environments are stored site-major (``(sites, n, D)``) so that each step reads and
writes one contiguous block; the core gradients of all sites come out of one batched
product at the end. Same functions and results as :mod:`.cpu`; see ``reference.py``.
"""
from __future__ import annotations

from ...backend import array_module


def _normalise(xp, u):
    norm = xp.sqrt(xp.sum(u.astype(xp.float64) ** 2, axis=1))
    norm = xp.where(norm > 0, norm, 1.0)
    return (u / norm[:, None]).astype(u.dtype), norm


def mps_contract_forward(phi, cores, head, center: int):
    xp = array_module(phi)
    n, L, d = phi.shape
    D, C = cores.shape[1], head.shape[1]
    lefts = xp.empty((center + 1, n, D), phi.dtype)
    rights = xp.empty((L - center + 1, n, D), phi.dtype)
    norms = xp.empty((L, n), xp.float64)
    lefts[0] = 0
    lefts[0, :, 0] = 1
    rights[L - center] = 0
    rights[L - center, :, 0] = 1
    for k in range(center):
        t = (lefts[k] @ cores[k].reshape(D, d * D)).reshape(n, d, D)
        lefts[k + 1], norms[k] = _normalise(xp, (t * phi[:, k, :, None]).sum(axis=1))
    for k in range(L - 1, center - 1, -1):
        j = k - center
        t = (rights[j + 1] @ cores[k].reshape(D * d, D).T).reshape(n, D, d)
        rights[j], norms[k] = _normalise(xp, (t * phi[:, k, None, :]).sum(axis=2))
    l, r = lefts[center], rights[0]
    out = ((l @ head.reshape(D, C * D)).reshape(n, C, D) * r[:, None, :]).sum(axis=2)
    log_scale = xp.log(norms).sum(axis=0)
    return out.astype(phi.dtype), log_scale, (phi, cores, head, center, lefts, rights, norms)


def _unnormalise(v, norm, g_v, g_ls):
    proj = (v * g_v).sum(axis=1) - g_ls
    return ((g_v - v * proj[:, None]) / norm[:, None]).astype(v.dtype)


def mps_contract_backward(saved, g_out, g_log_scale, need_g_phi: bool = True):
    phi, cores, head, center, lefts, rights, norms = saved
    xp = array_module(phi)
    n, L, d = phi.shape
    D, C = cores.shape[1], head.shape[1]
    g_ls = xp.zeros(n) if g_log_scale is None else xp.asarray(g_log_scale, xp.float64)
    l, r = lefts[center], rights[0]
    hr = (head.reshape(D * C, D) @ r.T).reshape(D, C, n)        # sum_b H[a, c, b] r[n, b]
    g_l = xp.einsum("acn,nc->na", hr, g_out)
    g_r = ((g_out @ head.transpose(1, 0, 2).reshape(C, D * D)).reshape(n, D, D)
           * l[:, :, None]).sum(axis=1)
    g_u = xp.empty((L, n, D), phi.dtype)
    g_phi = xp.zeros_like(phi) if need_g_phi else None
    for k in range(center - 1, -1, -1):
        g_u[k] = _unnormalise(lefts[k + 1], norms[k], g_l, g_ls)
        w = (g_u[k] @ cores[k].reshape(D * d, D).T).reshape(n, D, d)   # sum_b A g_u
        g_l = (w * phi[:, k, None, :]).sum(axis=2)
        if need_g_phi:
            g_phi[:, k] = (w * lefts[k][:, :, None]).sum(axis=1)
    for k in range(center, L):
        j = k - center
        g_u[k] = _unnormalise(rights[j], norms[k], g_r, g_ls)
        w = (g_u[k] @ cores[k].reshape(D, d * D)).reshape(n, d, D)     # sum_a g_u A
        g_r = (w * phi[:, k, :, None]).sum(axis=1)
        if need_g_phi:
            g_phi[:, k] = (w * rights[j + 1][:, None, :]).sum(axis=2)
    phi_t = phi.transpose(1, 0, 2)                                      # (L, n, d)
    g_cores = xp.empty_like(cores)
    if center:
        x = (lefts[:center, :, :, None] * phi_t[:center, :, None, :]).reshape(center, n, D * d)
        g_cores[:center] = (x.transpose(0, 2, 1) @ g_u[:center]).reshape(center, D, d, D)
    if center < L:
        y = (phi_t[center:, :, :, None] * rights[1:, :, None, :]).reshape(L - center, n, d * D)
        g_cores[center:] = (g_u[center:].transpose(0, 2, 1) @ y).reshape(L - center, D, d, D)
    gr = (g_out[:, :, None] * r[:, None, :]).reshape(n, C * D)
    g_head = (l.T @ gr).reshape(D, C, D).astype(phi.dtype)
    return g_phi, g_cores, g_head


def environment_step(env, core, phi_k, side: str):
    """One site of a sweep's environment: ``(env', norm)`` with ``env' = u / |u|`` and
    ``u = env A(phi_k)`` (``side="left"``, ``env (n, a)``, ``core (a, d, b)``) or
    ``u = A(phi_k) env`` (``side="right"``, ``env (n, b)``); bonds of any size."""
    xp = array_module(env)
    n = env.shape[0]
    a, d, b = core.shape
    if side == "left":
        t = (env @ core.reshape(a, d * b)).reshape(n, d, b)
        u = (t * phi_k[:, :, None]).sum(axis=1)
    else:
        t = (env @ core.reshape(a * d, b).T).reshape(n, a, d)
        u = (t * phi_k[:, None, :]).sum(axis=2)
    return _normalise(xp, u)
