"""The 2x2 end block of a MERA on a grid whose side is a power of two but not of four: a
disentangler ``u (p,p,p,p,b,b,b,b)`` on the four sites, then an isometry
``top (b,b,b,b,d_out)`` to one output site. Applied once per image on the last 2x2 grid, so
plain array expressions are both the definition and the fast path; the two tensors compose
into one map ``T = u top`` of the four sites' outer product.
"""
from __future__ import annotations

from typing import Any

from ..._validate import check_float_array
from .reference import check_disentangler
from ...backend import array_module


def _check(x, u, top):
    check_float_array("x", x, ndim=4)
    n, h, w, p = x.shape
    if (h, w) != (2, 2):
        raise ValueError(f"x: expected a 2x2 grid of sites, got {h}x{w}")
    b = check_disentangler("u", u, p, x.dtype)
    check_float_array("top", top, ndim=5, dtype=x.dtype)
    if top.shape[:4] != (b,) * 4:
        raise ValueError(f"top: expected shape {(b,) * 4 + ('d_out',)} (b from u), got "
                         f"{tuple(top.shape)}")


def mera_end_forward(x: Any, u: Any, top: Any):
    """``x : (batch, 2, 2, p) -> (out (batch, 1, 1, d_out), saved)``."""
    _check(x, u, top)
    xp = array_module(x)
    n, _, _, p = x.shape
    b, d_out = u.shape[-1], top.shape[-1]
    xc = xp.einsum("na,nb,nc,nd->nabcd", x[:, 0, 0], x[:, 0, 1], x[:, 1, 0],
                   x[:, 1, 1]).reshape(n, p ** 4)
    t = u.reshape(p ** 4, b ** 4) @ top.reshape(b ** 4, d_out)
    out = (xc @ t).reshape(n, 1, 1, d_out)
    return out, (x, u, top, xc, t)


def mera_end_backward(saved: Any, g_out: Any):
    """``(g_x, g_u, g_top)`` given ``g_out = dL/d out``."""
    x, u, top, xc, t = saved
    n, _, _, p = x.shape
    b, d_out = u.shape[-1], top.shape[-1]
    if tuple(g_out.shape) != (n, 1, 1, d_out):
        raise ValueError(f"g_out: expected shape {(n, 1, 1, d_out)}, got {tuple(g_out.shape)}")
    g = g_out.reshape(n, d_out).astype(x.dtype)
    g_t = xc.T @ g
    g_u = (g_t @ top.reshape(b ** 4, d_out).T).reshape(u.shape)
    g_top = (u.reshape(p ** 4, b ** 4).T @ g_t).reshape(top.shape)
    g_xc = (g @ t.T).reshape(n, p, p, p, p)
    s = [x[:, 0, 0], x[:, 0, 1], x[:, 1, 0], x[:, 1, 1]]
    xp = array_module(x)
    g_x = xp.empty_like(x)
    g_x[:, 0, 0] = xp.einsum("nabcd,nb,nc,nd->na", g_xc, s[1], s[2], s[3])
    g_x[:, 0, 1] = xp.einsum("nabcd,na,nc,nd->nb", g_xc, s[0], s[2], s[3])
    g_x[:, 1, 0] = xp.einsum("nabcd,na,nb,nd->nc", g_xc, s[0], s[1], s[3])
    g_x[:, 1, 1] = xp.einsum("nabcd,na,nb,nc->nd", g_xc, s[0], s[1], s[2])
    return g_x, g_u.astype(x.dtype), g_top.astype(x.dtype)
