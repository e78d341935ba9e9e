"""``product_pool`` as a differentiable torch op over :mod:`fasttn.ops.product_pool`."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ... import ops as fops
from ..._validate import check_positive_int
from .. import tape
from ..bridge import check_inputs, device_scope, from_array, to_array

__all__ = ["product_pool"]


@torch.library.custom_op("fasttn::product_pool", mutates_args=())
def _forward(x: Tensor, window: int) -> Tuple[Tensor, Tensor]:
    with device_scope(x):
        out, saved = fops.product_pool_forward(to_array(x), window)
    return from_array(out), tape.store(saved)


@_forward.register_fake
def _(x, window):
    if x.dim() == 3:
        shape = (x.shape[0], x.shape[1] // window, x.shape[2])
    else:
        shape = (x.shape[0], x.shape[1] // 2, x.shape[2] // 2, x.shape[3])
    return x.new_empty(shape), tape.fake_handle()


@torch.library.custom_op("fasttn::product_pool_backward", mutates_args=())
def _backward_op(handle: Tensor, x: Tensor, grad_out: Tensor, window: int) -> Tensor:
    with device_scope(x):
        saved = tape.load(handle, lambda: fops.product_pool_forward(to_array(x), window)[1])
        return from_array(fops.product_pool_backward(saved, to_array(grad_out)))


@_backward_op.register_fake
def _(handle, x, grad_out, window):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    x, window = inputs
    ctx.save_for_backward(x, output[1])
    ctx.window = window


def _backward(ctx, grad_out, _grad_handle):
    x, handle = ctx.saved_tensors
    return _backward_op(handle, x, grad_out, ctx.window), None


_forward.register_autograd(_backward, setup_context=_setup_context)


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
    return _forward(x, check_positive_int("window", window))[0]
