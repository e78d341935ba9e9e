"""The MPS classifier's contraction, written site by site in NumPy (the spec).

An MPS over ``L`` sites with the class leg on a head tensor between sites ``center - 1`` and
``center``::

    e0 - A[0] - A[1] - ... - A[center-1] - H - A[center] - ... - A[L-1] - e0
          |      |              |          |      |                |
        phi_0  phi_1       phi_{c-1}     class  phi_c           phi_{L-1}

``phi : (n, L, d)`` per-site feature vectors, ``cores : (L, D, d, D)`` (left bond, feature,
right bond), ``head : (D, C, D)``; both open ends are closed by the first basis vector
``e0`` of the bond (so ``cores[0, 0]`` and ``cores[L-1, :, :, 0]`` are the effective end
tensors, and a chain holds any MPS whose bonds are at most ``D``).

Scores are products of ``L`` transfer matrices and under- or overflow for long chains, so
the left environment ``l`` and the right environment ``r`` are divided by their norms
after every site and the logs of the norms are summed per sample::

    u = l A[k](phi_k)          l <- u / |u|          log_scale += log |u|   (k < center)
    u = A[k](phi_k) r          r <- u / |u|          log_scale += log |u|   (k >= center)
    out[c] = l H[:, c, :] r

so that the exact chain value is ``out * exp(log_scale)`` with ``out`` of order one at any
``L``. ``A[k](phi) = sum_s phi_s A[k, :, s, :]``.

The backward is the reverse of these steps: the gradient of ``L(out, log_scale)`` with
respect to ``phi``, ``cores`` and ``head``, given ``g_out = dL/d out`` and (optionally)
``g_log_scale = dL/d log_scale``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np


def _transfer(core: np.ndarray, phi_k: np.ndarray) -> np.ndarray:
    """``A(phi)`` per sample: ``(n, D, D)``."""
    return np.einsum("asb,ns->nab", core, phi_k)


def _normalise(u: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    norm = np.linalg.norm(u, axis=1)
    norm = np.where(norm > 0, norm, 1.0)  # an exact zero stays zero (log_scale gets log 1)
    return u / norm[:, None], norm


def mps_contract_forward(phi: np.ndarray, cores: np.ndarray, head: np.ndarray, center: int):
    """``(out, log_scale, saved)``: ``out (n, C)``, ``log_scale (n,)`` float64."""
    n, L, _ = phi.shape
    D = cores.shape[1]
    boundary = np.zeros((n, D), phi.dtype)
    boundary[:, 0] = 1
    log_scale = np.zeros(n)
    norms = np.empty((n, L), phi.dtype)
    lefts = [boundary]                               # lefts[k]: l before site k
    for k in range(center):
        u = np.einsum("na,nab->nb", lefts[-1], _transfer(cores[k], phi[:, k]))
        l, norms[:, k] = _normalise(u)
        lefts.append(l)
    rights = [boundary]                              # rights[j]: r after site L-1-j+1
    for k in range(L - 1, center - 1, -1):
        u = np.einsum("nab,nb->na", _transfer(cores[k], phi[:, k]), rights[-1])
        r, norms[:, k] = _normalise(u)
        rights.append(r)
    rights = rights[::-1]                            # rights[k - center]: r before site k
    log_scale += np.log(norms.astype(np.float64)).sum(axis=1)
    out = np.einsum("na,acb,nb->nc", lefts[center], head, rights[0])
    return out, log_scale, (phi, cores, head, center, lefts, rights, norms)


def _normalise_backward(v: np.ndarray, norm: np.ndarray, g_v: np.ndarray,
                        g_log: Optional[np.ndarray]) -> np.ndarray:
    """``dL/du`` for ``v = u / |u|`` and ``log |u|`` from ``dL/dv`` and ``dL/dlog|u|``."""
    proj = np.sum(v * g_v, axis=1)
    if g_log is not None:
        proj = proj - g_log
    return (g_v - v * proj[:, None]) / norm[:, None]


def mps_contract_backward(saved, g_out: np.ndarray, g_log_scale: Optional[np.ndarray] = None):
    """``(g_phi, g_cores, g_head)``."""
    phi, cores, head, center, lefts, rights, norms = saved
    n, L, _ = phi.shape
    g_phi = np.zeros_like(phi)
    g_cores = np.zeros_like(cores)
    l_c, r_c = lefts[center], rights[0]
    g_head = np.einsum("na,nc,nb->acb", l_c, g_out, r_c)
    g_l = np.einsum("acb,nc,nb->na", head, g_out, r_c)
    g_r = np.einsum("na,acb,nc->nb", l_c, head, g_out)
    for k in range(center - 1, -1, -1):              # l_{k+1} = normalise(l_k A[k](phi_k))
        g_u = _normalise_backward(lefts[k + 1], norms[:, k], g_l, g_log_scale)
        g_cores[k] = np.einsum("na,ns,nb->asb", lefts[k], phi[:, k], g_u)
        g_phi[:, k] = np.einsum("na,asb,nb->ns", lefts[k], cores[k], g_u)
        g_l = np.einsum("asb,ns,nb->na", cores[k], phi[:, k], g_u)
    for k in range(center, L):                       # r_k = normalise(A[k](phi_k) r_{k+1})
        j = k - center
        g_u = _normalise_backward(rights[j], norms[:, k], g_r, g_log_scale)
        g_cores[k] = np.einsum("na,ns,nb->asb", g_u, phi[:, k], rights[j + 1])
        g_phi[:, k] = np.einsum("na,asb,nb->ns", g_u, cores[k], rights[j + 1])
        g_r = np.einsum("na,asb,ns->nb", g_u, cores[k], phi[:, k])
    return g_phi, g_cores, g_head


def mps_contract_dense(phi: np.ndarray, cores: np.ndarray, head: np.ndarray,
                       center: int) -> np.ndarray:
    """The exact scores ``(n, C)`` as one product of transfer matrices, no normalisation
    (float64; for short chains, to check that ``out * exp(log_scale)`` is the chain)."""
    n, L, _ = phi.shape
    D = cores.shape[1]
    left = np.zeros((n, 1, D))
    left[:, 0, 0] = 1
    right = np.zeros((n, D, 1))
    right[:, 0, 0] = 1
    for k in range(center):
        left = left @ _transfer(cores[k].astype(np.float64), phi[:, k].astype(np.float64))
    for k in range(L - 1, center - 1, -1):
        right = _transfer(cores[k].astype(np.float64), phi[:, k].astype(np.float64)) @ right
    return np.einsum("na,acb,nb->nc", left[:, 0], head.astype(np.float64), right[:, :, 0])
