"""Tree node: every 2x2 block of a grid of sites contracted to one site by its own tensor
(the layer of a 2D tree tensor network; the network is written out in ``reference.py``).

``x : (batch, H, W, p)`` and ``w : (H/2, W/2, p, p, p, p, chi)`` give
``out : (batch, H/2, W/2, chi)``. Corners in the order top-left, top-right, bottom-left,
bottom-right.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from ..._validate import check_float_array
from ...backend import array_module
from . import cpu, reference

__all__ = ["tree_node", "tree_node_forward", "tree_node_backward"]


def _impl(x: Any):
    if array_module(x) is np:
        return cpu
    return reference  # other array modules: the einsum spec (CuPy runs it on the device)


def _check(x: Any, w: Any) -> None:
    check_float_array("x", x, ndim=4)
    n, h, wd, p = x.shape
    if h % 2 or wd % 2 or h == 0 or wd == 0:
        raise ValueError(f"x: expected a grid whose height and width are positive even numbers "
                         f"(2x2 blocks), got {h}x{wd}")
    check_float_array("w", w, ndim=7, dtype=x.dtype)
    if tuple(w.shape[:6]) != (h // 2, wd // 2, p, p, p, p):
        raise ValueError(f"w: expected shape {(h // 2, wd // 2, p, p, p, p, 'chi')} (one "
                         f"tensor per 2x2 block of x, site dimension {p}), got "
                         f"{tuple(w.shape)}")


def tree_node_forward(x: Any, w: Any) -> Tuple[Any, Any]:
    """Contract every 2x2 block of ``x`` with its own tensor.

    Parameters
    ----------
    x : (batch, H, W, p) float32 or float64
        Site vectors; H and W even.
    w : (H/2, W/2, p, p, p, p, chi), the dtype of ``x``
        One tensor per block: four corner legs, then the output leg.

    Returns
    -------
    out : (batch, H/2, W/2, chi)
    saved : opaque, for :func:`tree_node_backward`
    """
    _check(x, w)
    xp = array_module(x)
    return _impl(x).tree_node_forward(xp.ascontiguousarray(x), xp.ascontiguousarray(w))


def tree_node_backward(saved: Any, g_out: Any, need_g_x: bool = True
                       ) -> Tuple[Optional[Any], Any]:
    """``(g_x, g_w)`` given ``g_out = dL/d out``; ``g_x`` is None when ``need_g_x`` is
    false (the first layer's input is data)."""
    x, w = saved
    expected = (x.shape[0], x.shape[1] // 2, x.shape[2] // 2, w.shape[-1])
    if tuple(g_out.shape) != expected:
        raise ValueError(f"g_out: expected shape {expected}, got {tuple(g_out.shape)}")
    xp = array_module(x)
    g_out = xp.asarray(g_out, dtype=x.dtype)
    if _impl(x) is cpu:
        return cpu.tree_node_backward(saved, g_out, need_g_x)
    g_x, g_w = reference.tree_node_backward(saved, g_out)
    return (g_x if need_g_x else None), g_w


def tree_node(x: Any, w: Any) -> Any:
    """Forward only; see :func:`tree_node_forward`."""
    return tree_node_forward(x, w)[0]
