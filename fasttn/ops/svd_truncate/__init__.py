"""Truncated SVD split of a stack of matrices: ``a (..., m, n) ~= left (..., m, k) @ right
(..., k, n)``, the bond step of MPS / MPO / tree algorithms.

Each matrix keeps at most ``max_bond`` singular values and none below ``cutoff`` times its
largest; ``k`` is the largest count kept in the stack (items keeping fewer are zero-padded,
so each ``left @ right`` is still that item's own truncation). ``absorb`` says where the
singular values go. Signs are fixed (largest-|.| entry of each left singular vector
positive), so the outputs are a continuous function of ``a`` between degeneracies. The rules
are written out in ``reference.py``; ``cpu.py`` does the whole stack in one Numba call and
``cuda.py`` (CuPy arrays) in batched array operations.
"""
from __future__ import annotations

import numbers
from typing import Any, Optional, Tuple

import numpy as np

from ..._validate import check_choice, check_finite, check_float_array
from ...backend import array_module
from . import cpu
from .reference import ABSORB, SVDSaved, SVDTruncation

__all__ = ["SVDTruncation", "svd_truncate", "svd_truncate_forward", "svd_truncate_backward"]


def _impl(a: Any):
    """The version for ``a``'s array module: ``cpu`` for NumPy, ``cuda`` for CuPy."""
    if array_module(a) is not np:
        from . import cuda  # only reached with a CuPy array in hand

        return cuda
    if isinstance(a, np.ndarray):
        return cpu
    raise NotImplementedError(f"a: svd_truncate runs on NumPy or CuPy arrays, got a "
                              f"{type(a).__module__}.{type(a).__name__}; convert it with "
                              f"numpy.asarray or cupy.asarray")


def _check(a: Any, max_bond: Any, cutoff: Any, absorb: Any) -> Tuple[Any, Optional[int], float]:
    a = check_float_array("a", a)
    if a.ndim < 2:
        raise ValueError(f"a: expected an array of matrices (..., m, n) with at least 2 "
                         f"dimensions, got shape {tuple(a.shape)}")
    if a.shape[-1] == 0 or a.shape[-2] == 0:
        raise ValueError(f"a: expected matrices with m >= 1 and n >= 1, got shape "
                         f"{tuple(a.shape)}")
    check_finite("a", a)
    if max_bond is not None:
        if isinstance(max_bond, bool) or not isinstance(max_bond, numbers.Integral):
            raise TypeError(f"max_bond: expected None or a positive integer, got {max_bond!r}")
        if max_bond < 1:
            raise ValueError(f"max_bond: expected None or a positive integer, got {max_bond!r}")
        max_bond = int(max_bond)
    if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real):
        raise TypeError(f"cutoff: expected a real number >= 0, got {cutoff!r}")
    cutoff = float(cutoff)
    if not np.isfinite(cutoff) or cutoff < 0:
        raise ValueError(f"cutoff: expected a finite number >= 0, got {cutoff!r}")
    if not isinstance(absorb, str):
        raise ValueError(f"absorb: expected one of {list(ABSORB)}, got {absorb!r}")
    check_choice("absorb", absorb, ABSORB)
    return a, max_bond, cutoff


def svd_truncate_forward(a: Any, max_bond: Optional[int] = None, cutoff: float = 0.0,
                         absorb: str = "both") -> Tuple[SVDTruncation, SVDSaved]:
    """Split every matrix of ``a`` by a truncated SVD.

    Parameters
    ----------
    a : (..., m, n) float32 or float64
        Any number of leading batch axes (none for a single matrix); finite.
    max_bond : int or None
        Most singular values kept per matrix; ``None`` keeps up to ``min(m, n)``.
    cutoff : float
        Singular values below ``cutoff * s_0`` (``s_0`` the matrix's largest) are dropped;
        with ``cutoff > 0`` exact zeros are dropped too. At least one value is always kept.
    absorb : {"both", "left", "right", "none"}
        ``"both"``: ``left = U sqrt(S)``, ``right = sqrt(S) V^T``; ``"left"``: ``left = U S``,
        ``right = V^T``; ``"right"``: ``left = U``, ``right = S V^T``; ``"none"``: ``left = U``,
        ``right = V^T`` (their product is the polar factor of an untruncated matrix).

    Returns
    -------
    out : SVDTruncation
        ``left (..., m, k)``, ``right (..., k, n)``, ``s (..., k)`` (descending, zero-padded
        where an item keeps fewer than ``k``), all in ``a``'s dtype; ``entropy (...,)`` the
        entanglement entropy of the kept spectrum and ``discarded (...,)`` the Frobenius norm
        of what was dropped (``= ||a - left @ right||_F``), both float64.
    saved : SVDSaved
        The full thin SVD in float64 and the truncation, for :func:`svd_truncate_backward`.
    """
    a, max_bond, cutoff = _check(a, max_bond, cutoff, absorb)
    impl = _impl(a)
    a = a if a.flags.c_contiguous else array_module(a).ascontiguousarray(a)
    return impl.svd_truncate_forward(a, max_bond, cutoff, absorb)


def _check_grad(name: str, g: Any, shape: tuple) -> Any:
    if g is None:
        return None
    g = check_float_array(name, g)
    if tuple(g.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(g.shape)}")
    return g


def svd_truncate_backward(saved: SVDSaved, g_left: Any = None, g_right: Any = None,
                          g_s: Any = None) -> Any:
    """Gradient with respect to ``a`` of a loss whose gradients with respect to the outputs
    are ``g_left``, ``g_right`` and ``g_s`` (each ``None`` for zero).

    The standard real thin-SVD backward on the full thin SVD, the gradients of the kept
    values and vectors coming through the absorption (padding and discarded values get
    none). Exact while the singular values are distinct and the kept ones non-zero. Guard:
    ``1/(s_j^2 - s_i^2)`` is applied as ``1/(s_j - s_i)`` and ``1/(s_j + s_i)`` and, like
    ``1/s``, each ``1/x`` is broadened to ``x / (x^2 + eps^2)`` with ``eps = 1e-12 s_0``: no
    change for ``|x| >> eps``, bounded near 0, and 0 for an exactly degenerate pair (whose
    gradient is then finite but no longer exact, even for a loss that does not depend on
    the basis inside the pair).

    Parameters
    ----------
    saved : SVDSaved
        From :func:`svd_truncate_forward`.
    g_left : (..., m, k) or None
    g_right : (..., k, n) or None
    g_s : (..., k) or None
        Gradients of the loss with respect to ``left``, ``right`` and ``s`` (any float dtype);
        the entries in the zero padding are ignored.

    Returns
    -------
    g_a : (..., m, n), the dtype of ``a``
    """
    if not isinstance(saved, SVDSaved):
        raise TypeError(f"saved: expected the SVDSaved returned by svd_truncate_forward, got "
                        f"{type(saved).__name__}")
    *batch, m, _ = saved.u.shape
    n = saved.v.shape[-2]
    k = saved.k
    g_left = _check_grad("g_left", g_left, (*batch, m, k))
    g_right = _check_grad("g_right", g_right, (*batch, k, n))
    g_s = _check_grad("g_s", g_s, (*batch, k))
    return _impl(saved.u).svd_truncate_backward(saved, g_left, g_right, g_s)


def svd_truncate(a: Any, max_bond: Optional[int] = None, cutoff: float = 0.0,
                 absorb: str = "both") -> SVDTruncation:
    """Forward only; see :func:`svd_truncate_forward`."""
    return svd_truncate_forward(a, max_bond, cutoff, absorb)[0]
