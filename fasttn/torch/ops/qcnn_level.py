"""``qcnn_level`` as a differentiable torch op over :mod:`fasttn.ops.qcnn_level`."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ... import ops as fops
from ..._validate import check_choice, check_positive_int
from ...backend import array_module
from ._contract import mixed_precision, function_for, transforms_active, loop_vmap, refuse_double_backward, register
from ..bridge import check_inputs, device_scope, from_array, to_array

__all__ = ["qcnn_level", "qcnn_level_given_stats", "qcnn_level_with_stats"]


@torch.library.custom_op("fasttn::qcnn_level", mutates_args=())
def _forward(x: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor,
             running_mean: Optional[Tensor], running_var: Optional[Tensor], window: int,
             eps: float, training: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(out, mean, var, xi)``: ``xi (batch * sites, d_out)`` is the convolution's output
    before pooling, which the backward takes instead of recomputing it."""
    with device_scope(x):
        xa = to_array(x)
        if training:  # computed here so that the caller gets them for its running averages
            stats = fops.batch_stats(xa)
        else:
            xp = array_module(xa)
            stats = tuple(xp.array(to_array(s), np.float64) for s in (running_mean, running_var))
        out, saved, _ = fops.qcnn_level_forward(
            xa, to_array(weight), to_array(gamma), to_array(beta), window=window, eps=eps,
            training=training, stats=stats)
        return from_array(out), from_array(stats[0]), from_array(stats[1]), from_array(saved[1])


@_forward.register_fake
def _(x, weight, gamma, beta, running_mean, running_var, window, eps, training):
    out = x.new_empty((x.shape[0], x.shape[1] // window, weight.shape[0]))
    stat = x.new_empty((x.shape[2],), dtype=torch.float64)
    return out, stat, torch.empty_like(stat), _fake_xi(x, weight)


def _fake_xi(x, weight):
    return x.new_empty((x.shape[0] * x.shape[1], weight.shape[0]))


def _saved(x, weight, gamma, beta, mean, var, xi, window, eps, training):
    """fasttn's saved state for the level, rebuilt from its inputs, the statistics and the
    pre-pooling activations ``xi``: the rest is batch norm folded into the convolution, a
    pass over ``(d_out, d_in)``."""
    xa, wa, ga, ba = (to_array(t) for t in (x, weight, gamma, beta))
    xp = array_module(xa)
    mean64, var64 = (xp.asarray(to_array(t), np.float64) for t in (mean, var))
    b, s, d_in = xa.shape
    d_out = wa.shape[0]
    x2 = xa.reshape(b * s, d_in)
    if xp is np:
        from ...ops.qcnn_level import cpu as impl

        a_w = np.empty((d_out, d_in), xa.dtype)
        bias = np.empty(d_out, xa.dtype)
        w, z, inv_std = impl._fold_batch_norm(wa, ga, ba, mean64, var64, float(eps), a_w,
                                              np.empty((d_in, d_out), xa.dtype), bias)
        return (x2, to_array(xi), bias, a_w, wa, w, z, mean64, inv_std, window, training,
                (b, s, d_in))
    from ...ops.qcnn_level import cuda as impl  # pragma: no cover - needs a GPU

    w, z, inv_std, a_w, _ = impl._fold_batch_norm(xp, wa, ga, ba, mean64, var64, float(eps),
                                                  xa.dtype)
    return (x2, to_array(xi), a_w, wa, w, z, mean64, inv_std, window, training, (b, s, d_in))


@torch.library.custom_op("fasttn::qcnn_level_backward", mutates_args=())
def _backward_op(x: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor, mean: Tensor,
                 var: Tensor, xi: Tensor, grad_out: Tensor, window: int, eps: float,
                 training: bool, need_g_x: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    with device_scope(x):
        saved = _saved(x, weight, gamma, beta, mean, var, xi, window, eps, training)
        g_x, g_w, g_gamma, g_beta = fops.qcnn_level_backward(saved, to_array(grad_out),
                                                             need_g_x)
        g_x = x.new_empty(0) if g_x is None else from_array(g_x)
        return g_x, from_array(g_w), from_array(g_gamma), from_array(g_beta)


@_backward_op.register_fake
def _(x, weight, gamma, beta, mean, var, xi, grad_out, window, eps, training, need_g_x):
    g_x = torch.empty_like(x) if need_g_x else x.new_empty(0)
    return g_x, torch.empty_like(weight), torch.empty_like(gamma), torch.empty_like(beta)


def _backward_fn():
    return _BackwardFunction.apply if transforms_active() else _backward_op


def _setup_context(ctx, inputs, output):
    x, weight, gamma, beta, _, _, window, eps, training = inputs
    _, mean, var, xi = output
    ctx.mark_non_differentiable(mean, var, xi)
    ctx.save_for_backward(x, weight, gamma, beta, mean, var, xi)
    ctx.config = (window, eps, training)


def _backward(ctx, grad_out, _grad_mean, _grad_var, _grad_xi):
    x, weight, gamma, beta, mean, var, xi = ctx.saved_tensors
    need_g_x = ctx.needs_input_grad[0]
    g_x, g_w, g_gamma, g_beta = _backward_fn()(x, weight, gamma, beta, mean, var, xi,
                                             grad_out.contiguous(), *ctx.config, need_g_x)
    return (g_x if need_g_x else None), g_w, g_gamma, g_beta, None, None, None, None, None


_forward.register_autograd(_backward, setup_context=_setup_context)
_BackwardFunction = refuse_double_backward(_backward_op, "qcnn_level")
_backward_op.register_vmap(loop_vmap(_backward_op))
register(_forward)
_Function = function_for("QCNNLevel", _forward, _setup_context, _backward)
register(_backward_op)


@_forward.register_vmap
def _(info, in_dims, x, weight, gamma, beta, running_mean, running_var, window, eps,
      training):
    """Under ``torch.func.vmap``: in evaluation with shared parameters the vmapped dimension
    joins the batch (one call); otherwise (batch statistics are per vmapped sample) one call
    per index."""
    x_dim, *other = in_dims[:6]
    if training or x_dim is None or any(d is not None for d in other):
        return loop_vmap(_forward)(info, in_dims, x, weight, gamma, beta, running_mean,
                                   running_var, window, eps, training)
    x = x.movedim(x_dim, 0)
    n, b, s, d = x.shape
    out, mean, var, xi = _forward(x.reshape(n * b, s, d), weight, gamma, beta, running_mean,
                                  running_var, window, eps, training)
    return ((out.reshape(n, b, *out.shape[1:]), mean, var, xi.reshape(n, b * s, -1)),
            (0, None, None, 0))


@mixed_precision
def qcnn_level_with_stats(x: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor,
                          window: int = 2, eps: float = 1e-5, training: bool = True,
                          running_mean: Optional[Tensor] = None,
                          running_var: Optional[Tensor] = None
                          ) -> Tuple[Tensor, Tensor, Tensor]:
    """One fused q-CNN level (:func:`fasttn.ops.qcnn_level_forward`), differentiable, and the
    statistics it normalised with.

    Batch norm with ``(mean, var)``, then the 1x1 convolution ``weight``, then the
    same-channel product over ``window`` consecutive sites.

    Parameters
    ----------
    x : (batch, sites, d_in) float32 or float64
    weight : (d_out, d_in)
        Bias-free 1x1 convolution, the dtype of ``x``.
    gamma, beta : (d_in,)
        Batch-norm scale and shift, the dtype of ``x``.
    window : {1, 2, 4}
        Sites multiplied per output site (1: no pooling, the classifier head).
    eps : float
    training : bool
        True: normalise with the batch statistics of ``x``; the gradient of ``x`` includes
        their dependence on ``x``. False: normalise with ``running_mean`` and
        ``running_var``.
    running_mean, running_var : (d_in,), optional
        Required when ``training`` is False; any float dtype.

    Returns
    -------
    out : (batch, sites // window, d_out)
    mean, var : (d_in,) float64
        The statistics used (biased variance of the batch when training), detached, for
        updating running averages.
    """
    check_inputs("qcnn_level", {"x": x, "weight": weight, "gamma": gamma, "beta": beta,
                                "running_mean": running_mean, "running_var": running_var})
    check_choice("training", training, (True, False))
    if not training:
        d_in = x.shape[-1]
        for name, s in (("running_mean", running_mean), ("running_var", running_var)):
            if s is None or tuple(s.shape) != (d_in,):
                got = None if s is None else f"shape {tuple(s.shape)}"
                raise ValueError(f"{name}: expected a tensor of shape ({d_in},) (the channels "
                                 f"of x) when training=False, got {got}")
    args = (x, weight, gamma, beta, running_mean, running_var,
            check_positive_int("window", window), float(eps), bool(training))
    out, mean, var, _ = _Function.apply(*args) if transforms_active() else _forward(*args)
    return out, mean.detach(), var.detach()


def qcnn_level(x: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor, window: int = 2,
               eps: float = 1e-5, training: bool = True, running_mean: Optional[Tensor] = None,
               running_var: Optional[Tensor] = None) -> Tensor:
    """One fused q-CNN level, differentiable; the output of :func:`qcnn_level_with_stats`.

    Parameters
    ----------
    x : (batch, sites, d_in)
    weight : (d_out, d_in)
    gamma, beta : (d_in,)
    window, eps, training, running_mean, running_var
        As in :func:`qcnn_level_with_stats`.

    Returns
    -------
    out : (batch, sites // window, d_out)
    """
    return qcnn_level_with_stats(x, weight, gamma, beta, window, eps, training, running_mean,
                                 running_var)[0]


# -- statistics as inputs: the level of a batch norm whose statistics come from elsewhere
# (all processes of a data-parallel group); their gradients flow back through the caller.

@torch.library.custom_op("fasttn::qcnn_level_given_stats", mutates_args=())
def _given_forward(x: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor, mean: Tensor,
                   var: Tensor, window: int, eps: float) -> Tuple[Tensor, Tensor]:
    with device_scope(x):
        out, saved, _ = fops.qcnn_level_forward(
            to_array(x), to_array(weight), to_array(gamma), to_array(beta), window=window,
            eps=eps, training=True, stats=(to_array(mean), to_array(var)))
        return from_array(out), from_array(saved[1])


@_given_forward.register_fake
def _(x, weight, gamma, beta, mean, var, window, eps):
    out = x.new_empty((x.shape[0], x.shape[1] // window, weight.shape[0]))
    return out, _fake_xi(x, weight)


@torch.library.custom_op("fasttn::qcnn_level_given_stats_backward", mutates_args=())
def _given_backward_op(x: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor, mean: Tensor,
                       var: Tensor, xi: Tensor, grad_out: Tensor, window: int, eps: float
                       ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    with device_scope(x):
        saved = _saved(x, weight, gamma, beta, mean, var, xi, window, eps, True)
        g_x, g_w, g_gamma, g_beta, (scale, shift) = fops.qcnn_level_backward(
            saved, to_array(grad_out), True, return_affine=True)
        # fasttn returns the statistics' share of dL/dx as -(scale x + shift) for statistics
        # over this call's n rows: scale = -2 g_var / n, shift + scale mean = -g_mean / n
        xp = array_module(scale)
        n = x.shape[0] * x.shape[1]
        scale = xp.asarray(scale, np.float64)
        shift = xp.asarray(shift, np.float64)
        g_var = -0.5 * n * scale
        g_mean = -n * (shift + scale * to_array(mean))
        return (from_array(g_x), from_array(g_w), from_array(g_gamma), from_array(g_beta),
                from_array(g_mean), from_array(g_var))


@_given_backward_op.register_fake
def _(x, weight, gamma, beta, mean, var, xi, grad_out, window, eps):
    return (torch.empty_like(x), torch.empty_like(weight), torch.empty_like(gamma),
            torch.empty_like(beta), torch.empty_like(mean), torch.empty_like(var))


def _given_setup_context(ctx, inputs, output):
    x, weight, gamma, beta, mean, var, window, eps = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, weight, gamma, beta, mean, var, output[1])
    ctx.config = (window, eps)


def _given_backward(ctx, grad_out, _grad_xi):
    x, weight, gamma, beta, mean, var, xi = ctx.saved_tensors
    grads = (_GivenBackwardFunction.apply if transforms_active() else _given_backward_op)(
        x, weight, gamma, beta, mean, var, xi, grad_out.contiguous(),
                               *ctx.config)
    return (*grads, None, None)


_given_forward.register_autograd(_given_backward, setup_context=_given_setup_context)
_GivenBackwardFunction = refuse_double_backward(_given_backward_op,
                                                "qcnn_level_given_stats")
_given_forward.register_vmap(loop_vmap(_given_forward))
_given_backward_op.register_vmap(loop_vmap(_given_backward_op))
register(_given_forward)
_GivenFunction = function_for("QCNNLevelGivenStats", _given_forward,
                              _given_setup_context, _given_backward)
register(_given_backward_op)


@mixed_precision
def qcnn_level_given_stats(x: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor,
                           mean: Tensor, var: Tensor, window: int = 2, eps: float = 1e-5
                           ) -> Tensor:
    """One fused q-CNN level normalised with statistics computed by the caller, and
    differentiable with respect to them.

    For batch norm over several processes: each computes its sums, they are all-reduced
    (``torch.distributed.nn.functional.all_reduce`` carries the gradients back), and
    ``mean``, ``var`` formed from them enter here. With the statistics of ``x`` itself the
    result and all gradients equal :func:`qcnn_level` in training mode.

    Parameters
    ----------
    x : (batch, sites, d_in)
    weight : (d_out, d_in)
    gamma, beta : (d_in,)
    mean, var : (d_in,) float64
        The statistics to normalise with (biased variance).
    window, eps
        As in :func:`qcnn_level_with_stats`.

    Returns
    -------
    out : (batch, sites // window, d_out)
    """
    check_inputs("qcnn_level", {"x": x, "weight": weight, "gamma": gamma, "beta": beta})
    d_in = x.shape[-1]
    for name, s in (("mean", mean), ("var", var)):
        if not isinstance(s, Tensor) or tuple(s.shape) != (d_in,) or s.dtype != torch.float64:
            got = (f"{s.dtype} of shape {tuple(s.shape)}" if isinstance(s, Tensor)
                   else type(s).__name__)
            raise ValueError(f"{name}: expected a float64 tensor of shape ({d_in},) (the "
                             f"channels of x), got {got}")
    args = (x, weight, gamma, beta, mean, var, check_positive_int("window", window),
            float(eps))
    return (_GivenFunction.apply if transforms_active() else _given_forward)(*args)[0]
