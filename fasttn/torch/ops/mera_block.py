"""``mera_block`` as a differentiable torch op over :mod:`fasttn.ops.mera_block`."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ... import ops as fops
from ._contract import mixed_precision, function_for, transforms_active, loop_vmap, refuse_double_backward, register
from ..bridge import check_inputs, device_scope, from_array, to_array

__all__ = ["mera_block"]


@torch.library.custom_op("fasttn::mera_block", mutates_args=())
def _forward(x: Tensor, u1: Tensor, w: Tensor, u2: Tensor, top: Tensor) -> Tensor:
    with device_scope(x):
        out, _ = fops.mera_block_forward(*(to_array(t) for t in (x, u1, w, u2, top)))
    return from_array(out)


@_forward.register_fake
def _(x, u1, w, u2, top):
    return x.new_empty((x.shape[0], x.shape[1] // 4, x.shape[2] // 4, top.shape[-1]))


def _saved(x, u1, w, u2, top):
    """fasttn's saved state, rebuilt: the inputs and ``u2`` folded into ``top`` (one small
    matrix product, as the forward computes it)."""
    arrays = [to_array(t) for t in (x, u1, w, u2, top)]
    if x.device.type == "cpu":
        from ...ops.mera_block.cpu import _fold_top

        m = _fold_top(arrays[3], arrays[4])
    else:  # pragma: no cover - needs a GPU
        from ...backend import array_module
        from ...ops.mera_block.cuda import _fold_top

        m = _fold_top(array_module(arrays[0]), arrays[3], arrays[4])
    return (*arrays, m)


@torch.library.custom_op("fasttn::mera_block_backward", mutates_args=())
def _backward_op(x: Tensor, u1: Tensor, w: Tensor, u2: Tensor, top: Tensor,
                 grad_out: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    with device_scope(x):
        grads = fops.mera_block_backward(_saved(x, u1, w, u2, top), to_array(grad_out))
    return tuple(from_array(g) for g in grads)


@_backward_op.register_fake
def _(x, u1, w, u2, top, grad_out):
    return tuple(torch.empty_like(t) for t in (x, u1, w, u2, top))


def _backward_fn():
    return _BackwardFunction.apply if transforms_active() else _backward_op


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_out):
    return _backward_fn()(*ctx.saved_tensors, grad_out.contiguous())


_forward.register_autograd(_backward, setup_context=_setup_context)
_BackwardFunction = refuse_double_backward(_backward_op, "mera_block")
_forward.register_vmap(loop_vmap(_forward))
_backward_op.register_vmap(loop_vmap(_backward_op))
register(_forward)
_Function = function_for("MERABlock", _forward, _setup_context, _backward)
register(_backward_op)


@mixed_precision
def mera_block(x: Tensor, u1: Tensor, w: Tensor, u2: Tensor, top: Tensor) -> Tensor:
    """The exact 2D MERA block on every 4x4 block of a grid (:func:`fasttn.ops.mera_block`),
    differentiable in every argument.

    Parameters
    ----------
    x : (batch, H, W, p) float32 or float64
        Site vectors; H and W positive multiples of 4.
    u1 : (p, p, p, p, b, b, b, b)
        Disentangler on the four central sites.
    w : (4, p, p, p, b, chi)
        Corner isometries (top-left, top-right, bottom-left, bottom-right).
    u2 : (chi,) * 8
        Disentangler on the isometry outputs.
    top : (chi, chi, chi, chi, d_out)

    All tensors share the dtype of ``x``.

    Returns
    -------
    out : (batch, H / 4, W / 4, d_out)
    """
    check_inputs("mera_block", {"x": x, "u1": u1, "w": w, "u2": u2, "top": top})
    if transforms_active():
        return _Function.apply(x, u1, w, u2, top)
    return _forward(x, u1, w, u2, top)
