"""Exact 2D MERA block: disentangler, four corner isometries, second disentangler and top
tensor on every 4x4 block of a grid of sites (the network is drawn in ``reference.py``).

``x : (batch, H, W, p) -> out : (batch, H/4, W/4, d_out)``, weights shared by all blocks:
``u1 (p,)*4 + (b,)*4``, ``w (4, p, p, p, b, chi)``, ``u2 (chi,)*8``, ``top (chi,)*4 + (d_out,)``.
The contraction is exact and linear in the number of sites.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..._validate import check_float_array
from ...backend import array_module
from . import cpu, reference, wide
from .end import mera_end_backward, mera_end_forward

__all__ = ["mera_block", "mera_block_forward", "mera_block_backward", "mera_end_forward",
           "mera_end_backward"]


def _impl(x: Any):
    if array_module(x) is np:
        # wide sites (raw patches): the centre sites one at a time instead of their product
        return wide if x.shape[-1] >= wide.WIDE_SITES else cpu
    from . import cuda  # pragma: no cover - needs a GPU

    return cuda


def _check(x, u1, w, u2, top):
    check_float_array("x", x, ndim=4)
    n, h, wd, p = x.shape
    if h % 4 or wd % 4 or h == 0 or wd == 0:
        raise ValueError(f"x: expected a grid whose height and width are positive multiples of "
                         f"4 (4x4 blocks), got {h}x{wd}")
    b = reference.check_disentangler("u1", u1, p, x.dtype)
    check_float_array("w", w, ndim=6, dtype=x.dtype)
    chi = w.shape[-1]
    if w.shape != (4, p, p, p, b, chi):
        raise ValueError(f"w: expected shape (4, {p}, {p}, {p}, {b}, chi) (p from x, b from "
                         f"u1), got {tuple(w.shape)}")
    check_float_array("u2", u2, ndim=8, dtype=x.dtype)
    if u2.shape != (chi,) * 8:
        raise ValueError(f"u2: expected shape {(chi,) * 8} (chi from w), got "
                         f"{tuple(u2.shape)}")
    check_float_array("top", top, ndim=5, dtype=x.dtype)
    if top.shape[:4] != (chi,) * 4:
        raise ValueError(f"top: expected shape {(chi,) * 4 + ('d_out',)} (chi from w), got "
                         f"{tuple(top.shape)}")


def mera_block_forward(x: Any, u1: Any, w: Any, u2: Any, top: Any):
    """Contract every 4x4 block of ``x`` exactly.

    Parameters
    ----------
    x : (batch, H, W, p)
        Site vectors; H and W multiples of 4.
    u1 : (p, p, p, p, b, b, b, b)
        Disentangler on the four central sites.
    w : (4, p, p, p, b, chi)
        Corner isometries (top-left, top-right, bottom-left, bottom-right).
    u2 : (chi,) * 8
        Disentangler on the isometry outputs.
    top : (chi, chi, chi, chi, d_out)

    Returns
    -------
    out : (batch, H/4, W/4, d_out)
    saved : opaque, for :func:`mera_block_backward`
    """
    _check(x, u1, w, u2, top)
    xp = array_module(x)
    x = x if x.flags.c_contiguous else xp.ascontiguousarray(x)
    return _impl(x).mera_block_forward(x, *(xp.ascontiguousarray(t) for t in (u1, w, u2, top)))


def mera_block_backward(saved: Any, g_out: Any):
    """``(g_x, g_u1, g_w, g_u2, g_top)`` given ``g_out = dL/d out``."""
    x = saved[0]
    expected = (x.shape[0], x.shape[1] // 4, x.shape[2] // 4, saved[4].shape[-1])
    if tuple(g_out.shape) != expected:
        raise ValueError(f"g_out: expected shape {expected}, got {tuple(g_out.shape)}")
    return _impl(x).mera_block_backward(saved, array_module(x).asarray(g_out, x.dtype))


def mera_block(x: Any, u1: Any, w: Any, u2: Any, top: Any) -> Any:
    """Forward only; see :func:`mera_block_forward`."""
    return mera_block_forward(x, u1, w, u2, top)[0]

