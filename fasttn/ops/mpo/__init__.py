"""Matrix product operators: a weight ``W (prod in_dims, prod out_dims)`` held as ``N``
cores ``(D_k, in_k, out_k, D_{k+1})`` (the layout is drawn in ``reference.py``).

``mpo_apply`` computes ``x @ W`` either by contracting the cores into ``W`` first
("dense") or by contracting ``x`` through the cores ("network"); with ``method="auto"``
cotengra's cost of the two contractions decides, per shape, once (paths are cached).
"""
from __future__ import annotations

from typing import Any, List, NamedTuple, Sequence, Tuple

import numpy as np

from ..._validate import check_finite, check_float_array
from ...backend import array_module
from ...plan import contract, contraction_plan
from . import cpu, reference

__all__ = ["mpo_to_dense", "mpo_to_dense_forward", "mpo_to_dense_backward", "mpo_apply",
           "mpo_apply_forward", "mpo_apply_backward", "mpo_apply_method", "mpo_from_dense",
           "MPOFactorization", "check_cores"]


def check_cores(cores: Sequence[Any], dtype: Any = None) -> List[np.ndarray]:
    """Validate a chain of MPO cores; return them as a list."""
    if isinstance(cores, np.ndarray) or not hasattr(cores, "__len__") or len(cores) == 0:
        raise ValueError("cores: expected a non-empty sequence of 4-dimensional arrays "
                         f"(D_k, in_k, out_k, D_k+1), got {type(cores).__name__}")
    out = []
    for k, c in enumerate(cores):
        c = check_float_array(f"cores[{k}]", c, ndim=4, dtype=dtype if k == 0 else out[0].dtype)
        out.append(c)
    if out[0].shape[0] != 1 or out[-1].shape[3] != 1:
        raise ValueError(f"cores: expected outer bond dimensions 1, got {out[0].shape[0]} "
                         f"(cores[0] axis 0) and {out[-1].shape[3]} (cores[-1] axis 3)")
    for k in range(len(out) - 1):
        if out[k].shape[3] != out[k + 1].shape[0]:
            raise ValueError(f"cores[{k + 1}]: expected bond dimension {out[k].shape[3]} on axis "
                             f"0 (matching cores[{k}] axis 3), got {out[k + 1].shape[0]}")
    return out


def mpo_to_dense_forward(cores: Sequence[Any]):
    """``(W, saved)``; ``W`` has shape ``(prod(in_dims), prod(out_dims))``."""
    return cpu.mpo_to_dense_forward(check_cores(cores))


def mpo_to_dense_backward(saved: Any, g_w: Any) -> List[np.ndarray]:
    """``[dL/dcore_k]`` given ``dL/dW``."""
    return cpu.mpo_to_dense_backward(saved, array_module(g_w).ascontiguousarray(g_w))


def mpo_to_dense(cores: Sequence[Any]) -> np.ndarray:
    """Contract the cores into the full matrix ``W``."""
    return mpo_to_dense_forward(cores)[0]


_NETWORK_PENALTY = 4.0


def mpo_apply_method(batch: int, cores: Sequence[Any]) -> Tuple[str, float, float]:
    """``(method, dense_cost, network_cost)`` in multiply-adds, from cotengra's paths.

    "network" is chosen when its count is under a quarter of the dense route's."""
    n = len(cores)
    shapes = [c.shape for c in cores]
    n_in = int(np.prod([s[1] for s in shapes]))
    n_out = int(np.prod([s[2] for s in shapes]))
    dense = contraction_plan(reference.dense_equation(n), *shapes).cost + batch * n_in * n_out
    x_shape = (batch,) + tuple(s[1] for s in shapes)
    network = contraction_plan(reference.apply_equation(n), x_shape, *shapes).cost
    # The dense route is two BLAS calls; the network route many smaller einsum steps with
    # transposes between them, several times slower per multiply-add on these shapes.
    method = "network" if network * _NETWORK_PENALTY < dense else "dense"
    return method, float(dense), float(network)


def mpo_apply_forward(x: Any, cores: Sequence[Any], method: str = "auto"):
    """``(y, saved)`` with ``y = x @ W`` for ``x (batch, prod(in_dims))``.

    Parameters
    ----------
    x : (batch, n_in) array
    cores : sequence of ``(D_k, in_k, out_k, D_k+1)`` arrays, dtype of ``x``
    method : {"auto", "dense", "network"}
        "dense" forms ``W``; "network" contracts ``x`` through the cores; "auto" takes the
        cheaper one by cotengra's count.
    """
    x = check_float_array("x", x, ndim=2)
    cores = check_cores(cores, dtype=x.dtype)
    in_dims, out_dims = reference.mpo_dims(cores)
    n_in = int(np.prod(in_dims))
    if x.shape[1] != n_in:
        raise ValueError(f"x: expected {n_in} features (prod of the cores' input dims "
                         f"{in_dims}), got {x.shape[1]}")
    if method == "auto":
        method = mpo_apply_method(x.shape[0], cores)[0]
    if method == "dense":
        w, dense_saved = cpu.mpo_to_dense_forward(cores)
        return x @ w, ("dense", x, w, dense_saved)
    if method == "network":
        batch = x.shape[0]
        y = contract(reference.apply_equation(len(cores)), x.reshape(batch, *in_dims), *cores)
        return y.reshape(batch, -1), ("network", x, cores)
    raise ValueError(f"method: expected 'auto', 'dense' or 'network', got {method!r}")


def mpo_apply_backward(saved: Any, g_y: Any, need_g_x: bool = True):
    """``(dL/dx or None, [dL/dcore_k])`` given ``dL/dy``."""
    route, x = saved[0], saved[1]
    if route == "dense":
        w, dense_saved = saved[2], saved[3]
        g_x = g_y @ w.T if need_g_x else None
        return g_x, cpu.mpo_to_dense_backward(dense_saved, x.T @ g_y)
    cores = saved[2]
    n = len(cores)
    in_dims, out_dims = reference.mpo_dims(cores)
    batch = x.shape[0]
    xt = x.reshape(batch, *in_dims)
    gt = array_module(g_y).ascontiguousarray(g_y).reshape(batch, *out_dims)
    b, ins, outs, _ = reference._symbols(n)
    terms = reference.core_terms(n)
    x_term, g_term = b + "".join(ins), b + "".join(outs)
    g_x = None
    if need_g_x:
        g_x = contract(",".join([g_term] + terms) + "->" + x_term, gt, *cores).reshape(batch, -1)
    grads = []
    for k in range(n):
        others = [c for j, c in enumerate(cores) if j != k]
        eq = ",".join([x_term, g_term] + [t for j, t in enumerate(terms) if j != k])
        out = "".join(c for c in terms[k] if c in eq)  # outer bonds (size 1) stay out
        grads.append(contract(eq + "->" + out, xt, gt, *others).reshape(cores[k].shape))
    return g_x, grads


def mpo_apply(x: Any, cores: Sequence[Any], method: str = "auto") -> np.ndarray:
    """``x @ W`` for the MPO ``W`` (see :func:`mpo_apply_forward`)."""
    return mpo_apply_forward(x, cores, method)[0]


class MPOFactorization(NamedTuple):
    """Result of :func:`mpo_from_dense`."""

    cores: List[np.ndarray]
    s: List[np.ndarray]         # kept singular values at each cut
    entropy: np.ndarray         # bond entropies, one per cut
    discarded: np.ndarray       # Frobenius norm dropped at each cut


def mpo_from_dense(w: Any, in_dims: Sequence[int], out_dims: Sequence[int],
                   max_bond: int | None = None, cutoff: float = 0.0) -> MPOFactorization:
    """Compress a dense weight into an MPO by successive truncated SVDs from the left.

    Parameters
    ----------
    w : (prod(in_dims), prod(out_dims)) array
    in_dims, out_dims : sequences of int, one entry per core
    max_bond : int, optional
        Largest bond dimension kept at each cut.
    cutoff : float
        Singular values below ``cutoff * s_max`` of a cut are dropped.

    Returns
    -------
    MPOFactorization
        Left-orthonormal cores (all but the last have orthonormal columns as
        ``(D_k in_k out_k, D_k+1)`` matrices), so the cuts' errors are orthogonal and
        ``|W - W_mpo|_F**2 == sum(discarded**2)``.
    """
    from ..svd_truncate import svd_truncate

    w = check_float_array("w", w, ndim=2)
    check_finite("w", w)
    in_dims = tuple(int(d) for d in in_dims)
    out_dims = tuple(int(d) for d in out_dims)
    if len(in_dims) != len(out_dims) or not in_dims or min(in_dims + out_dims) < 1:
        raise ValueError(f"in_dims, out_dims: expected two equally long sequences of positive "
                         f"ints, got {in_dims} and {out_dims}")
    want = (int(np.prod(in_dims)), int(np.prod(out_dims)))
    if w.shape != want:
        raise ValueError(f"w: expected shape {want} (products of in_dims {in_dims} and out_dims "
                         f"{out_dims}), got {w.shape}")
    n = len(in_dims)
    t = w.reshape(*in_dims, *out_dims).transpose([a for k in range(n) for a in (k, n + k)])
    rest = np.ascontiguousarray(t).reshape(1, -1)
    cores, svals, ent, disc = [], [], [], []
    bond = 1
    for k in range(n - 1):
        m = rest.reshape(bond * in_dims[k] * out_dims[k], -1)
        res = svd_truncate(m, max_bond=max_bond, cutoff=cutoff, absorb="right")
        keep = res.s.shape[-1]
        cores.append(np.ascontiguousarray(res.left).reshape(bond, in_dims[k], out_dims[k], keep))
        svals.append(res.s)
        ent.append(float(res.entropy))
        disc.append(float(res.discarded))
        rest, bond = res.right, keep
    cores.append(np.ascontiguousarray(rest).reshape(bond, in_dims[-1], out_dims[-1], 1))
    return MPOFactorization(cores, svals, np.asarray(ent), np.asarray(disc))
