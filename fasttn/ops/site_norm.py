"""Per-site normalisation with a tracked log-scale.

``y = x / |x|`` over the last axis, ``log_norm = log |x|``. Between the levels of a
multilinear hierarchy (a MERA) this changes the network's value only by the positive
per-sample factor ``exp(sum of log_norm)`` (each block is linear in each of its sites), so
deep hierarchies keep values of order one and the exact value stays recoverable. Plain
NumPy (or CuPy) array expressions: these are the reference and the fast path at once.
"""
from __future__ import annotations

from typing import Any, Tuple

from ..backend import array_module

_TINY = 1e-300  # a site of exact zeros stays zero (its gradient is then zero too)


def site_norm_forward(x: Any) -> Tuple[Any, Any, Any]:
    """``(y, log_norm, saved)`` with ``y = x / |x|`` along the last axis.

    ``log_norm`` has the shape of ``x`` without its last axis, float64."""
    xp = array_module(x)
    norm = xp.sqrt(xp.sum(x.astype(xp.float64) ** 2, axis=-1))
    safe = xp.maximum(norm, _TINY)
    y = (x / safe[..., None]).astype(x.dtype)
    return y, xp.log(safe), (y, safe)


def site_norm_backward(saved: Any, g_y: Any, g_log_norm: Any = None) -> Any:
    """``dL/dx`` from ``dL/dy`` (and optionally ``dL/dlog_norm``):
    ``(g_y - y (y . g_y) + y g_log_norm) / |x|``."""
    y, norm = saved
    xp = array_module(y)
    proj = xp.sum(y.astype(xp.float64) * g_y, axis=-1)
    if g_log_norm is not None:
        proj = proj - g_log_norm
    return ((g_y - y * proj[..., None]) / norm[..., None]).astype(y.dtype)


def unit_sites(x: Any) -> Any:
    """``x / |x|`` along the last axis, float64; a site of zeros stays zero.

    Divides by the site's largest magnitude first, so that sites whose squares would
    overflow (a deep hierarchy evaluated in the linear domain) still give unit vectors."""
    xp = array_module(x)
    x = x.astype(xp.float64)
    peak = xp.max(xp.abs(x), axis=-1, keepdims=True)
    y = x / xp.where(peak > 0, peak, 1.0)
    norm = xp.sqrt(xp.sum(y * y, axis=-1, keepdims=True))
    return y / xp.where(norm > 0, norm, 1.0)


def unit_sites_log(logabs: Any, sign: Any) -> Any:
    """Unit site vectors of ``sign * exp(logabs)`` (the log domain), float64.

    Each site is shifted by its largest ``logabs`` before exponentiating, so no
    ``exp(logabs)`` is ever formed: finite for log-magnitudes of any size."""
    xp = array_module(logabs)
    logabs = logabs.astype(xp.float64)
    shift = xp.max(logabs, axis=-1, keepdims=True)
    shift = xp.where(xp.isfinite(shift), shift, 0.0)  # an all-zero site (log 0 = -inf)
    return unit_sites(sign * xp.exp(logabs - shift))


def relu_sites_forward(y: Any) -> Any:
    """``[1, relu(y)]`` along the last axis (one more entry): a site map between the levels
    of a non-linear hierarchy, the constant keeping each block affine in its sites' parts."""
    xp = array_module(y)
    out = xp.empty(y.shape[:-1] + (y.shape[-1] + 1,), y.dtype)
    out[..., 0] = 1
    out[..., 1:] = xp.maximum(y, 0)
    return out


def relu_sites_backward(y: Any, g_out: Any) -> Any:
    """``dL/dy`` from ``dL/d[1, relu(y)]``: the constant's entry dropped, the rest passed
    where ``y > 0`` (the subgradient 0 at 0)."""
    return (g_out[..., 1:] * (y > 0)).astype(y.dtype)
