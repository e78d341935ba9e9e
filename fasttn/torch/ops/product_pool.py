"""``product_pool`` as a differentiable torch op over :mod:`fasttn.ops.product_pool`."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ... import ops as fops
from ..._validate import check_positive_int
from ._contract import mixed_precision, function_for, transforms_active, loop_vmap, register
from ..bridge import check_inputs, device_scope, from_array, to_array

__all__ = ["product_pool"]


def _reference(x: Tensor, window: int) -> Tensor:
    """The same product in plain torch ops (differentiable to any order); the double
    backward goes through it."""
    if x.dim() == 3:
        b, s, c = x.shape
        n = s // window
        return x[:, :n * window].reshape(b, n, window, c).prod(2)
    b, h, w, c = x.shape
    return (x[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
            .prod(4).prod(2))


@torch.library.custom_op("fasttn::product_pool", mutates_args=())
def _forward(x: Tensor, window: int) -> Tensor:
    with device_scope(x):
        out, _ = fops.product_pool_forward(to_array(x), window)
    return from_array(out)


@_forward.register_fake
def _(x, window):
    if x.dim() == 3:
        shape = (x.shape[0], x.shape[1] // window, x.shape[2])
    else:
        shape = (x.shape[0], x.shape[1] // 2, x.shape[2] // 2, x.shape[3])
    return x.new_empty(shape)


@torch.library.custom_op("fasttn::product_pool_backward", mutates_args=())
def _backward_op(x: Tensor, grad_out: Tensor, window: int) -> Tensor:
    with device_scope(x):  # fasttn's saved state is (x, window): nothing to keep
        return from_array(fops.product_pool_backward((to_array(x), window),
                                                     to_array(grad_out)))


@_backward_op.register_fake
def _(x, grad_out, window):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    x, window = inputs
    ctx.save_for_backward(x)
    ctx.window = window


def _backward(ctx, grad_out):
    x, = ctx.saved_tensors
    bw = _BackwardFunction.apply if transforms_active() else _backward_op
    return bw(x, grad_out.contiguous(), ctx.window), None


_forward.register_autograd(_backward, setup_context=_setup_context)


def _double_setup(ctx, inputs, output):
    x, grad_out, window = inputs
    ctx.save_for_backward(x, grad_out)
    ctx.window = window


def _double_backward(ctx, gg_x):
    """The backward is linear in ``grad_out``: its vector-Jacobian product, through the
    plain-torch product (so still differentiable)."""
    x, grad_out = ctx.saved_tensors
    window = ctx.window

    def pullback(x_, g_):
        return torch.func.vjp(lambda t: _reference(t, window), x_)[1](g_)[0]

    g_x, g_grad = torch.func.vjp(pullback, x, grad_out)[1](gg_x)
    return g_x, g_grad, None


_backward_op.register_autograd(_double_backward, setup_context=_double_setup)
_BackwardFunction = function_for("ProductPoolBackward", _backward_op, _double_setup,
                                 _double_backward)
_forward.register_vmap(loop_vmap(_forward))
_backward_op.register_vmap(loop_vmap(_backward_op))
register(_forward)
_Function = function_for("ProductPool", _forward, _setup_context, _backward)
register(_backward_op)


@mixed_precision
def product_pool(x: Tensor, window: int = 2) -> Tensor:
    """Same-channel product over windows (:func:`fasttn.ops.product_pool`), differentiable.

    Parameters
    ----------
    x : (batch, sites, channels) or (batch, height, width, channels) float32 or float64
    window : int
        Sites per window on a chain (a grid pools 2x2).

    Returns
    -------
    out : (batch, sites // window, channels) or (batch, height // 2, width // 2, channels)
    """
    check_inputs("product_pool", {"x": x})
    window = check_positive_int("window", window)
    if transforms_active():
        return _Function.apply(x, window)
    return _forward(x, window)
