"""MPS contraction: a matrix product state over a chain of feature vectors, with the class
leg on a head tensor between two sites (the network is drawn in ``reference.py``).

``phi : (n, L, d)``, ``cores : (L, D, d, D)``, ``head : (D, C, D)`` and the head's position
``center`` (sites to its left, ``0 <= center <= L``) give ``out : (n, C)`` of order one and
``log_scale : (n,)`` float64: the exact chain scores are ``out * exp(log_scale[:, None])``,
finite in float32 for any number of sites. Gauge changes of the cores and their bond
entropies are in :mod:`.canonical`.
"""
from __future__ import annotations

import numbers
from typing import Any, Optional, Tuple

import numpy as np

from ..._validate import check_float_array, check_shape
from ...backend import array_module
from . import cpu

__all__ = ["mps_contract", "mps_contract_forward", "mps_contract_backward",
           "mps_environment_step"]


def _impl(x: Any):
    if array_module(x) is np:
        return cpu
    from . import xp  # CuPy arrays: batched products on their device

    return xp


def _check(phi: Any, cores: Any, head: Any, center: Any) -> None:
    check_float_array("phi", phi, ndim=3)
    n, L, d = phi.shape
    if L == 0 or d == 0:
        raise ValueError(f"phi: expected (n, sites, features) with at least one site and one "
                         f"feature, got shape {tuple(phi.shape)}")
    check_float_array("cores", cores, ndim=4, dtype=phi.dtype)
    D = cores.shape[1]
    if D == 0 or tuple(cores.shape) != (L, D, d, D):
        raise ValueError(f"cores: expected shape ({L}, D, {d}, D) (one core per site of phi, "
                         f"feature dimension {d}, equal bonds D >= 1), got "
                         f"{tuple(cores.shape)}")
    check_float_array("head", head, ndim=3, dtype=phi.dtype)
    if head.shape[0] != D or head.shape[2] != D or head.shape[1] == 0:
        raise ValueError(f"head: expected shape ({D}, n_classes, {D}) (bond D={D} from "
                         f"cores), got {tuple(head.shape)}")
    if isinstance(center, bool) or not isinstance(center, numbers.Integral) \
            or not 0 <= center <= L:
        raise ValueError(f"center: expected an integer from 0 to {L} (sites left of the "
                         f"head), got {center!r}")


def mps_contract_forward(phi: Any, cores: Any, head: Any, center: int
                         ) -> Tuple[Any, Any, Any]:
    """Contract the chain of every sample, environments normalised at every site.

    Parameters
    ----------
    phi : (n, L, d) float32 or float64
        Feature vector of every site of every sample.
    cores : (L, D, d, D), the dtype of ``phi``
        Site tensors (left bond, feature, right bond); the chain's ends are closed by the
        bond's first basis vector.
    head : (D, C, D), the dtype of ``phi``
        The class tensor, between sites ``center - 1`` and ``center``.
    center : int
        Number of sites left of the head, ``0 <= center <= L``.

    Returns
    -------
    out : (n, C), the dtype of ``phi``
        Scores with the environments' norms divided out.
    log_scale : (n,) float64
        Sum of the logs of those norms: the chain's value is ``out * exp(log_scale)``.
    saved : opaque
        The environments, for :func:`mps_contract_backward`.
    """
    _check(phi, cores, head, center)
    xp = array_module(phi)
    return _impl(phi).mps_contract_forward(xp.ascontiguousarray(phi),
                                           xp.ascontiguousarray(cores),
                                           xp.ascontiguousarray(head), int(center))


def mps_contract_backward(saved: Any, g_out: Any, g_log_scale: Optional[Any] = None,
                          need_g_phi: bool = True) -> Tuple[Optional[Any], Any, Any]:
    """``(g_phi, g_cores, g_head)`` of a loss ``L(out, log_scale)``.

    Parameters
    ----------
    saved : from :func:`mps_contract_forward`
    g_out : (n, C)
        ``dL/d out``.
    g_log_scale : (n,), optional
        ``dL/d log_scale`` (None: the loss does not depend on it, e.g. cross-entropy on
        ``out``).
    need_g_phi : bool
        False skips the feature gradient (fixed data) and returns None for it.
    """
    phi, head = saved[0], saved[2]
    xp = array_module(phi)
    check_shape("g_out", g_out, (phi.shape[0], head.shape[1]))
    g_out = xp.ascontiguousarray(xp.asarray(g_out, dtype=phi.dtype))
    if g_log_scale is not None:
        check_shape("g_log_scale", g_log_scale, (phi.shape[0],))
    return _impl(phi).mps_contract_backward(saved, g_out, g_log_scale, need_g_phi)


def mps_contract(phi: Any, cores: Any, head: Any, center: int) -> Tuple[Any, Any]:
    """``(out, log_scale)``; see :func:`mps_contract_forward`."""
    out, log_scale, _ = mps_contract_forward(phi, cores, head, center)
    return out, log_scale


def mps_environment_step(env: Any, core: Any, phi_k: Any, side: str) -> Tuple[Any, Any]:
    """Move a normalised environment across one site (the step a sweep repeats).

    Parameters
    ----------
    env : (n, a) for ``side="left"`` (the sites left of ``core``), (n, b) for
        ``side="right"`` (the sites right of it)
    core : (a, d, b), the dtype of ``env``
        One site tensor; bonds of any size (a sweep's bonds vary along the chain).
    phi_k : (n, d), the dtype of ``env``
        The site's feature vectors.
    side : {"left", "right"}

    Returns
    -------
    env' : (n, b) or (n, a)
        ``u / |u|`` with ``u = env A(phi_k)`` (left) or ``A(phi_k) env`` (right), as the
        forward's environments (an exact zero stays zero).
    norm : (n,) float64
        ``|u|`` (1 where ``u`` is zero).
    """
    if side not in ("left", "right"):
        raise ValueError(f"side: expected 'left' or 'right', got {side!r}")
    check_float_array("env", env, ndim=2)
    check_float_array("core", core, ndim=3, dtype=env.dtype)
    check_float_array("phi_k", phi_k, ndim=2, dtype=env.dtype)
    a, d, b = core.shape
    n, e = env.shape
    want = a if side == "left" else b
    if e != want or tuple(phi_k.shape) != (n, d):
        raise ValueError(f"env, phi_k: expected ({n}, {want}) and ({n}, {d}) for a "
                         f"{side} step over a core of shape {tuple(core.shape)}, got "
                         f"{tuple(env.shape)} and {tuple(phi_k.shape)}")
    from . import xp  # batched products: one GEMM per step on any array module

    return xp.environment_step(env, core, phi_k, side)
