"""Product pooling: same-channel product over non-overlapping windows.

``x : (batch, sites, channels)`` pools windows of ``window`` consecutive sites (pairs by
default); ``x : (batch, height, width, channels)`` pools 2x2 windows. The log-domain form
takes ``(logabs, sign)`` and returns the same pair, finite at any depth.
"""
from __future__ import annotations

from typing import Any, Tuple

from ..._validate import check_float_array
from ...backend import array_module, kernel_threads
from . import cpu, reference

__all__ = ["product_pool", "product_pool_forward", "product_pool_backward",
           "product_pool_log", "product_pool_log_backward"]


def _check(name: str, x: Any, window: int) -> None:
    check_float_array(name, x, ndim=(3, 4))
    if x.ndim == 3:
        if window < 1:
            raise ValueError(f"window: expected a positive integer, got {window}")
        if x.shape[1] % window:
            raise ValueError(f"{name}: expected a number of sites divisible by window={window}, "
                             f"got shape {tuple(x.shape)}")
    elif x.shape[1] % 2 or x.shape[2] % 2:
        raise ValueError(f"{name}: 2x2 pooling needs even height and width, got shape "
                         f"{tuple(x.shape)}")


def _impl(x: Any):
    xp = array_module(x)
    if xp.__name__ == "numpy":
        return cpu
    from . import cuda  # pragma: no cover - needs a GPU

    return cuda


def product_pool(x: Any, window: int = 2) -> Any:
    """Same-channel product over windows.

    Parameters
    ----------
    x : (batch, sites, channels) or (batch, height, width, channels)
    window : int
        Sites per window on a chain (ignored for a grid, which pools 2x2).

    Returns
    -------
    out : (batch, sites // window, channels) or (batch, height // 2, width // 2, channels)
    """
    _check("x", x, window)
    with kernel_threads():
        return _impl(x).product_pool(x, window)


def product_pool_forward(x: Any, window: int = 2) -> Tuple[Any, Any]:
    """``(out, saved)``; ``saved`` is what :func:`product_pool_backward` needs."""
    return product_pool(x, window), (x, window)


def product_pool_backward(saved: Any, grad_out: Any) -> Any:
    """Gradient with respect to ``x`` given ``grad_out`` of the output's shape."""
    x, window = saved
    check_float_array("grad_out", grad_out, ndim=x.ndim, dtype=x.dtype)
    with kernel_threads():
        return _impl(x).product_pool_backward(x, grad_out, window)


def product_pool_log(logabs: Any, sign: Any, window: int = 2) -> Tuple[Any, Any]:
    """Log-domain pooling of ``sign * exp(logabs)``; returns ``(logabs_out, sign_out)``."""
    _check("logabs", logabs, window)
    if sign.shape != logabs.shape:
        raise ValueError(f"sign: expected shape {tuple(logabs.shape)} (that of logabs), "
                         f"got {tuple(sign.shape)}")
    with kernel_threads():
        return _impl(logabs).product_pool_log(logabs, sign, window)


def product_pool_log_backward(grad_out: Any, shape: tuple, window: int = 2) -> Any:
    """Gradient of ``sum(grad_out * logabs_out)`` with respect to ``logabs`` (a broadcast)."""
    return reference.product_pool_log_backward(grad_out, shape, window)
