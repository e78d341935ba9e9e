"""One fused q-CNN level: batch-norm apply -> 1x1 convolution -> product pooling.

Linear form: ``x : (batch, sites, d_in) -> out : (batch, sites // window, d_out)``.
Log form: ``(logabs, sign)`` in and out, gradients with respect to ``logabs``; finite at any
depth. Scaled form (inference): values of order one with one log-scale per site,
``x * exp(logscale)``; finite at any depth at the cost of the linear form. ``window = 1`` is the classifier head (batch norm + dense map, no pooling).

Each forward returns ``(..., saved, stats)``: ``saved`` is exactly what the backward needs,
``stats = (mean, var)`` are the batch statistics used (for running averages); the linear CPU
forward also gathers the *next* level's batch statistics in its pooling pass
(``saved``-independent, returned as ``next_stats`` by :func:`qcnn_level_forward`).
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from ..._validate import check_float_array, check_shape
from ...backend import array_module, kernel_threads
from . import cpu, cpu_log, reference

__all__ = ["batch_stats", "qcnn_level", "qcnn_level_forward", "qcnn_level_backward",
           "qcnn_level_log_forward", "qcnn_level_log_backward", "qcnn_level_scaled_forward"]


def _impls(x: Any):
    if array_module(x) is np:
        return cpu, cpu_log
    from . import cuda  # pragma: no cover - needs a GPU

    return cuda, cuda


def _check(name, x, weight, gamma, beta, window, training, stats):
    check_float_array(name, x, ndim=3)
    b, s, d_in = x.shape
    check_float_array("weight", weight, ndim=2, dtype=x.dtype)
    if weight.shape[1] != d_in:
        raise ValueError(f"weight: expected shape (d_out, {d_in}) to match {name} channels, "
                         f"got {tuple(weight.shape)}")
    for pname, p in (("gamma", gamma), ("beta", beta)):
        check_float_array(pname, p, ndim=1, dtype=x.dtype)
        check_shape(pname, p, (d_in,))
    if window not in (1, 2, 4):
        raise ValueError(f"window: expected 1, 2 or 4, got {window!r}")
    if s % window:
        raise ValueError(f"{name}: expected a number of sites divisible by window={window}, "
                         f"got {s}")
    if not training and stats is None:
        raise ValueError("stats: expected running (mean, var) when training=False, got None")
    if stats is not None:
        for sname, v in zip(("mean", "var"), stats):
            if np.shape(v) != (d_in,):
                raise ValueError(f"stats: expected {sname} of shape ({d_in},), got "
                                 f"{np.shape(v)}")


def batch_stats(x: Any):
    """Per-channel ``(mean, biased var)`` over batch and sites of ``x : (batch, sites, d)``,
    float64."""
    check_float_array("x", x, ndim=3)
    if array_module(x) is np:
        x2 = x.reshape(-1, x.shape[2])
        with kernel_threads():
            return cpu.column_stats(x2, cpu._chunks(x2.shape[0]))
    return _impls(x)[0].batch_stats(x)  # pragma: no cover - needs a GPU


def qcnn_level_forward(x: Any, weight: Any, gamma: Any, beta: Any, *, window: int = 2,
                       eps: float = 1e-5, training: bool = True,
                       stats: Optional[Tuple[Any, Any]] = None):
    """Fused level forward.

    Parameters
    ----------
    x : (batch, sites, d_in)
    weight : (d_out, d_in)
        Bias-free 1x1 convolution.
    gamma, beta : (d_in,)
        Batch-norm scale and shift.
    window : {1, 2, 4}
        Sites multiplied per output site (1: no pooling).
    eps : float
    training : bool
        Normalise with the batch statistics of ``x`` (``stats`` may pass them in, e.g. from
        the previous level's ``next_stats``) or, when False, with ``stats`` = running
        ``(mean, var)``.

    Returns
    -------
    out : (batch, sites // window, d_out)
    saved : opaque, for :func:`qcnn_level_backward`
    next_stats : (mean, var) of ``out`` over batch and sites, float64
    """
    _check("x", x, weight, gamma, beta, window, training, stats)
    mean, var = stats if stats is not None else (None, None)
    return _impls(x)[0].qcnn_level_forward(x, weight, gamma, beta, window=window, eps=eps,
                                          training=training, mean=mean, var=var)


def qcnn_level_backward(saved: Any, g_out: Any, need_g_x: bool = True, *,
                        g_out_affine: Optional[Tuple[Any, Any]] = None,
                        return_affine: bool = False):
    """Returns ``(g_x, g_weight, g_gamma, g_beta)`` given ``g_out = dL/d out``.

    With ``need_g_x=False`` (the first level, whose input is data) ``g_x`` is None and its
    GEMM is skipped.

    In training mode the batch statistics depend on ``x``, which adds the per-channel term
    ``-(scale * x + shift)`` to ``dL/dx``. A chain of levels can leave that term out of
    memory: ``return_affine=True`` returns ``g_x`` without it and ``(scale, shift)`` as a
    fifth item (None in eval mode), and the level below takes them as ``g_out_affine``,
    meaning its true output gradient is ``g_out - (scale * out + shift)``.
    """
    if g_out_affine is not None:
        d_out = g_out.shape[-1]
        for name, c in zip(("scale", "shift"), g_out_affine):
            if np.shape(c) != (d_out,):
                raise ValueError(f"g_out_affine: expected {name} of shape ({d_out},), got "
                                 f"{np.shape(c)}")
    return _impls(g_out)[0].qcnn_level_backward(saved, g_out, need_g_x, g_out_affine,
                                               return_affine)


def qcnn_level(x: Any, weight: Any, gamma: Any, beta: Any, **kwargs) -> Any:
    """Forward only; see :func:`qcnn_level_forward`."""
    return qcnn_level_forward(x, weight, gamma, beta, **kwargs)[0]


def qcnn_level_log_forward(logabs: Any, sign: Any, weight: Any, gamma: Any, beta: Any, *,
                           window: int = 2, eps: float = 1e-5, training: bool = True,
                           stats: Optional[Tuple[Any, Any]] = None):
    """Log-domain level forward on ``sign * exp(logabs)``.

    Returns
    -------
    out_logabs, out_sign : (batch, sites // window, d_out)
    saved : opaque, for :func:`qcnn_level_log_backward`
    stats : (mean, var) of the input used for normalisation, float64
    """
    _check("logabs", logabs, weight, gamma, beta, window, training, stats)
    check_shape("sign", sign, tuple(logabs.shape))
    mean, var = stats if stats is not None else (None, None)
    return _impls(logabs)[1].qcnn_level_log_forward(logabs, sign, weight, gamma, beta,
                                                    window=window, eps=eps, training=training,
                                                    mean=mean, var=var)


def qcnn_level_log_backward(saved: Any, g_out: Any):
    """``(g_logabs, g_weight, g_gamma, g_beta)`` given ``g_out = dL/d out_logabs``."""
    return _impls(g_out)[1].qcnn_level_log_backward(saved, g_out)


def qcnn_level_scaled_forward(x: Any, logscale: Any, weight: Any, gamma: Any, beta: Any, *,
                              stats: Tuple[Any, Any], window: int = 2, eps: float = 1e-5):
    """Inference level on ``x * exp(logscale[..., None])`` with running statistics.

    Parameters
    ----------
    x : (batch, sites, d_in)
        Values of order one (e.g. the previous scaled level's output).
    logscale : (batch, sites) float64
        Log-magnitude of each site.
    stats : (mean, var)
        Running statistics of the level input, in absolute (unscaled) units.

    Returns
    -------
    out : (batch, sites // window, d_out)
        Each output site divided by its largest magnitude.
    out_logscale : (batch, sites // window) float64
    """
    _check("x", x, weight, gamma, beta, window, False, stats)
    check_shape("logscale", logscale, tuple(x.shape[:2]))
    return _impls(x)[0].qcnn_level_scaled_forward(x, logscale, weight, gamma, beta,
                                                  window=window, eps=eps, mean=stats[0],
                                                  var=stats[1])
