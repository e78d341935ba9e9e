"""Local feature maps: one pixel value in [0, 1] -> a short vector of channels.

All maps are evaluated elementwise, so ``x`` of any shape gives ``x.shape + (r,)``.

``fourier``  sqrt(2) cos(2 pi k x), sqrt(2) sin(2 pi k x), k = 1..n   (q-CNN eq. 19; r = 2n)
``legendre`` sqrt(2k+1) P_k(2x - 1), k = 1..r                        (orthonormal on [0, 1])
``cos_sin``  sqrt(C(d-1, s)) cos(pi x / 2)^(d-1-s) sin(pi x / 2)^s, s = 0..d-1
                                                                     (Liu et al.; r = d >= 2)

The ``cos_sin`` map of degree d is the binomial expansion of (cos + sin)^(d-1) split into its
terms, so its squares sum to 1 at every x; d = 2 is the [cos(pi x / 2), sin(pi x / 2)] map of
Stoudenmire & Schwab.

With ``constant=True`` the constant function f_0 = 1 is prepended (eq. 19 keeps it; the
reference q-CNN code leaves it out because the batch-norm shift supplies it).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._numba import njit, prange
from .._validate import check_choice

FEATURE_MAPS = ("fourier", "legendre", "cos_sin")
_CODES = {"fourier": 0, "legendre": 1, "cos_sin": 2}


_BLOCK = 256  # pixels per inner block: the quarter-angle pass below vectorises across them


@njit(fastmath=False, inline="always")
def _sincos_quarter(a):
    """``(sin a, cos a)`` for ``|a| <= pi / 4`` by Taylor polynomials (error < 1e-16)."""
    a2 = a * a
    sn = a * (1.0 + a2 * (-1.0 / 6 + a2 * (1.0 / 120 + a2 * (-1.0 / 5040 + a2 * (
        1.0 / 362880 + a2 * (-1.0 / 39916800 + a2 * (1.0 / 6227020800
                                                     - a2 / 1307674368000)))))))
    cs = 1.0 + a2 * (-0.5 + a2 * (1.0 / 24 + a2 * (-1.0 / 720 + a2 * (1.0 / 40320 + a2 * (
        -1.0 / 3628800 + a2 * (1.0 / 479001600 - a2 / 87178291200))))))
    return sn, cs


@njit(parallel=True)
def _feature_map_cpu(x, code, n_features, base, out):
    """All maps by recurrences, evaluated in float64 and stored in ``out.dtype``.

    Per block of pixels, one vectorised pass finds each pixel's base angle as a
    quarter-range sine and cosine (libm's scalar sin/cos calls cost more than all the rest);
    angle doubling and angle addition then give the Fourier modes, Bonnet's recursion the
    Legendre polynomials, and running powers of the cosine and sine the ``cos_sin`` terms."""
    flat = x.reshape(-1)
    o = out.reshape(-1, out.shape[-1])
    n = flat.size
    # sqrt(C(d-1, k)) for the cos_sin map: C(d-1, k) = C(d-1, k-1) (d-k) / k divides exactly,
    # so the binomials are exact while the products C(d-1, k) k stay below 2^53 (d <= 52),
    # and rounded to within a few ulps beyond.
    root_binom = np.empty(n_features)
    b = 1.0
    for k in range(n_features):
        if k:
            b = b * (n_features - k) / k
        root_binom[k] = np.sqrt(b)
    for blk in prange((n + _BLOCK - 1) // _BLOCK):
        lo = blk * _BLOCK
        hi = min(n, lo + _BLOCK)
        c1 = np.empty(hi - lo)
        s1 = np.empty(hi - lo)
        c_pow = np.empty(n_features)
        if code == 0:  # cos, sin of 2 pi v = 4 a with a = (pi / 2) (v - round(v)) in [-pi/4, pi/4]
            for i in range(hi - lo):
                v = np.float64(flat[lo + i])
                a = (np.pi / 2) * (v - np.floor(v + 0.5))
                sn, cs = _sincos_quarter(a)
                sn, cs = 2.0 * sn * cs, (cs - sn) * (cs + sn)
                s1[i], c1[i] = 2.0 * sn * cs, (cs - sn) * (cs + sn)
        elif code == 2:  # cos, sin of (pi / 2) v = a + pi / 4 with a = (pi / 2)(v - 1/2)
            for i in range(hi - lo):
                v = np.float64(flat[lo + i])
                sn, cs = _sincos_quarter((np.pi / 2) * (v - 0.5))
                c1[i] = (cs - sn) * np.sqrt(0.5)
                s1[i] = (sn + cs) * np.sqrt(0.5)
        for i in range(hi - lo):
            p = lo + i
            if base:
                o[p, 0] = 1.0
            if code == 0:
                c, s = c1[i], s1[i]
                for k in range(n_features // 2):
                    o[p, base + 2 * k] = np.sqrt(2.0) * c
                    o[p, base + 2 * k + 1] = np.sqrt(2.0) * s
                    c, s = c * c1[i] - s * s1[i], s * c1[i] + c * s1[i]
            elif code == 1:
                t = 2 * np.float64(flat[p]) - 1
                p_prev, pk = 1.0, t
                for k in range(1, n_features + 1):
                    o[p, base + k - 1] = np.sqrt(2.0 * k + 1) * pk
                    p_prev, pk = pk, ((2 * k + 1) * t * pk - k * p_prev) / (k + 1)
            elif n_features == 2:  # the default degree, kept free of the power loops below
                o[p, base] = c1[i]
                o[p, base + 1] = s1[i]
            else:
                # c^(d-1-k) comes from a table of ascending powers, s^k from a running product
                c_pow[0] = 1.0
                for k in range(1, n_features):
                    c_pow[k] = c_pow[k - 1] * c1[i]
                s_k = 1.0
                for k in range(n_features):
                    o[p, base + k] = root_binom[k] * c_pow[n_features - 1 - k] * s_k
                    s_k *= s1[i]


def n_channels(name: str, n_features: int, constant: bool) -> int:
    """Number of channels the map produces."""
    check_choice("feature_map", name, FEATURE_MAPS)
    if name == "fourier" and n_features % 2:
        raise ValueError(f"n_features: the fourier map needs an even count (cos and sin pairs), "
                         f"got {n_features}")
    if name == "cos_sin" and n_features < 2:
        raise ValueError(f"n_features: the cos_sin map needs at least 2 channels (its degree d), "
                         f"got {n_features}")
    return n_features + int(constant)


def feature_map(x: Any, name: str = "fourier", n_features: int = 18, constant: bool = False,
                dtype: Any = None) -> Any:
    """Embed every pixel of ``x`` with the named local map.

    Parameters
    ----------
    x : array, any shape, values in [0, 1]
    name : {"fourier", "legendre", "cos_sin"}
    n_features : int
        Channels before the optional constant: even for ``fourier`` (cos and sin pairs);
        the degree d >= 2 for ``cos_sin`` (d = 2 gives [cos(pi x / 2), sin(pi x / 2)]).
    constant : bool
        Prepend the constant channel f_0 = 1.
    dtype : float dtype, optional
        Output dtype (default: that of ``x``).

    Returns
    -------
    phi : array, shape ``x.shape + (n_features + constant,)``
    """
    from ..backend import array_module

    xp = array_module(x)
    n_channels(name, n_features, constant)
    dtype = np.dtype(dtype or x.dtype)
    shape = x.shape + (n_features + int(constant),)
    if xp is np and x.size:
        from ..backend import kernel_threads, workspace

        out = workspace.empty(shape, dtype)
        with kernel_threads():
            _feature_map_cpu(np.ascontiguousarray(x), _CODES[name], n_features, int(constant),
                             out)
        return out
    return feature_map_reference(x, name, n_features, constant, xp.empty(shape, dtype=dtype))


def feature_map_reference(x: Any, name: str, n_features: int, constant: bool, out: Any) -> Any:
    """The maps written directly from their definitions (the spec the kernel is tested
    against); fills and returns ``out``."""
    from ..backend import array_module

    xp = array_module(x)
    dtype = out.dtype
    base = 0
    if constant:
        out[..., 0] = 1
        base = 1
    if name == "fourier":
        k = xp.arange(1, n_features // 2 + 1, dtype=dtype)
        ang = (2 * np.pi) * x[..., None].astype(dtype) * k
        out[..., base::2] = np.sqrt(2) * xp.cos(ang)
        out[..., base + 1::2] = np.sqrt(2) * xp.sin(ang)
    elif name == "legendre":
        t = 2 * x.astype(dtype) - 1
        p_prev, p = xp.ones_like(t), t
        for k in range(1, n_features + 1):  # Bonnet recursion: (k+1) P_{k+1} = (2k+1) t P_k - k P_{k-1}
            out[..., base + k - 1] = np.sqrt(2 * k + 1) * p
            p_prev, p = p, ((2 * k + 1) * t * p - k * p_prev) / (k + 1)
    else:  # phi_k = sqrt(C(d-1, k)) cos(pi x / 2)^(d-1-k) sin(pi x / 2)^k, k = 0..d-1
        ang = (np.pi / 2) * x.astype(dtype)
        c, s = xp.cos(ang), xp.sin(ang)
        d = n_features
        for k in range(d):
            out[..., base + k] = np.sqrt(math.comb(d - 1, k)) * c ** (d - 1 - k) * s ** k
    return out


def gram_matrix(name: str, n_features: int, constant: bool, with_constant_channel: bool = True,
                n_nodes: int = 256) -> np.ndarray:
    """Inner products of the map's channel functions over [0, 1] (float64).

    ``K[i, j] = integral_0^1 f_i(x) f_j(x) dx`` by Gauss-Legendre quadrature, exact for the
    polynomial maps and accurate to machine precision for the trigonometric ones at the
    frequencies used here. With ``with_constant_channel`` an extra constant channel is appended
    last (the batch-norm shift of the tensor description, q-CNN eqs. 11-13).
    """
    nodes, weights = np.polynomial.legendre.leggauss(n_nodes)
    x = (nodes + 1) / 2
    f = feature_map(x, name, n_features, constant, dtype=np.float64)
    if with_constant_channel:
        f = np.concatenate([f, np.ones((x.size, 1))], axis=1)
    return (f * (weights / 2)[:, None]).T @ f
