"""The MPO weight, written to be read: the spec the fast versions are tested against.

An MPO of ``N`` cores represents a weight matrix ``W`` of shape ``(prod(in_dims),
prod(out_dims))``. Core ``k`` has shape ``(D_k, in_k, out_k, D_{k+1})`` with
``D_0 = D_N = 1``::

    W[(i_1..i_N), (o_1..o_N)] = sum_{b} core_1[b_0, i_1, o_1, b_1] core_2[b_1, i_2, o_2, b_2] ...

Row-major grouping: ``i_1`` is the slowest input index, as in ``x.reshape(batch, *in_dims)``.
A layer computes ``y = x @ W``.
"""
from __future__ import annotations

import string
from typing import List, Sequence, Tuple

import numpy as np

_LETTERS = string.ascii_letters


def _symbols(n_sites: int):
    """einsum letters: batch, inputs, outputs and the ``N + 1`` bonds."""
    if 3 * n_sites + 2 > len(_LETTERS):
        raise ValueError(f"cores: at most {(len(_LETTERS) - 2) // 3} sites are supported, got "
                         f"{n_sites}")
    it = iter(_LETTERS)
    batch = next(it)
    ins = [next(it) for _ in range(n_sites)]
    outs = [next(it) for _ in range(n_sites)]
    bonds = [next(it) for _ in range(n_sites + 1)]
    return batch, ins, outs, bonds


def core_terms(n_sites: int) -> List[str]:
    _, ins, outs, bonds = _symbols(n_sites)
    return [bonds[k] + ins[k] + outs[k] + bonds[k + 1] for k in range(n_sites)]


def dense_equation(n_sites: int) -> str:
    """``cores -> W`` with the in/out indices kept apart."""
    _, ins, outs, _ = _symbols(n_sites)
    return ",".join(core_terms(n_sites)) + "->" + "".join(ins) + "".join(outs)


def apply_equation(n_sites: int) -> str:
    """``x, cores -> y`` without forming ``W``."""
    batch, ins, outs, _ = _symbols(n_sites)
    return (batch + "".join(ins) + "," + ",".join(core_terms(n_sites)) + "->" + batch
            + "".join(outs))


def mpo_dims(cores: Sequence[np.ndarray]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    return tuple(c.shape[1] for c in cores), tuple(c.shape[2] for c in cores)


def mpo_to_dense(cores: Sequence[np.ndarray]) -> np.ndarray:
    """``W`` of shape ``(prod(in_dims), prod(out_dims))``: every core contracted at once."""
    in_dims, out_dims = mpo_dims(cores)
    w = np.einsum(dense_equation(len(cores)), *cores, optimize=True)
    return w.reshape(int(np.prod(in_dims)), int(np.prod(out_dims)))


def mpo_to_dense_backward(cores: Sequence[np.ndarray], g_w: np.ndarray) -> List[np.ndarray]:
    """``dL/dcore_k``: the network with core ``k`` removed, contracted with ``dL/dW``."""
    n = len(cores)
    in_dims, out_dims = mpo_dims(cores)
    terms = core_terms(n)
    _, ins, outs, _ = _symbols(n)
    g = g_w.reshape(*in_dims, *out_dims)
    grads = []
    for k in range(n):
        others = [c for j, c in enumerate(cores) if j != k]
        other_terms = [t for j, t in enumerate(terms) if j != k]
        lhs = ",".join(["".join(ins) + "".join(outs)] + other_terms)
        # an outer bond (size 1) of core k appears in no other operand: leave it out, reshape
        out = "".join(c for c in terms[k] if c in lhs)
        grads.append(np.einsum(lhs + "->" + out, g, *others, optimize=True)
                     .reshape(cores[k].shape))
    return grads


def mpo_apply(x: np.ndarray, cores: Sequence[np.ndarray]) -> np.ndarray:
    """``y = x @ W``."""
    return x @ mpo_to_dense(cores)


def mpo_apply_backward(x: np.ndarray, cores: Sequence[np.ndarray], g_y: np.ndarray):
    """``(dL/dx, [dL/dcore_k])`` for ``y = x @ W``."""
    w = mpo_to_dense(cores)
    return g_y @ w.T, mpo_to_dense_backward(cores, x.T @ g_y)


def mpo_from_dense(w: np.ndarray, in_dims: Sequence[int], out_dims: Sequence[int],
                   max_bond: int | None = None, cutoff: float = 0.0):
    """Successive truncated SVDs from the left (the tensor-train SVD).

    Each cut keeps at most ``max_bond`` singular values and drops those below
    ``cutoff * s_max``; the left factor (orthonormal columns) becomes the core, ``S V^T``
    carries on. Returns ``(cores, discarded)`` with ``discarded[k]`` the Frobenius norm of
    what cut ``k`` dropped; since the left cores are orthonormal the errors are orthogonal
    and ``|W - W_mpo|_F^2 = sum(discarded**2)``.
    """
    n = len(in_dims)
    t = w.reshape(*in_dims, *out_dims)
    t = t.transpose([a for k in range(n) for a in (k, n + k)])  # (i1, o1, i2, o2, ...)
    rest = t.reshape(1, -1)
    cores, discarded = [], []
    bond = 1
    for k in range(n - 1):
        m = rest.reshape(bond * in_dims[k] * out_dims[k], -1)
        u, s, vt = np.linalg.svd(m, full_matrices=False)
        keep = len(s) if max_bond is None else min(len(s), max_bond)
        if s[0] > 0:
            keep = min(keep, max(1, int(np.sum(s >= cutoff * s[0]))))
        discarded.append(float(np.sqrt(np.sum(s[keep:].astype(np.float64) ** 2))))
        cores.append(u[:, :keep].reshape(bond, in_dims[k], out_dims[k], keep))
        rest = s[:keep, None] * vt[:keep]
        bond = keep
    cores.append(rest.reshape(bond, in_dims[-1], out_dims[-1], 1))
    return cores, np.asarray(discarded)
