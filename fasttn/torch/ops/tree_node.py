"""``tree_node`` as a differentiable torch op over :mod:`fasttn.ops.tree_node`."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ... import ops as fops
from ._contract import mixed_precision, function_for, transforms_active, loop_vmap, refuse_double_backward, register
from ..bridge import check_inputs, device_scope, from_array, to_array

__all__ = ["tree_node"]


@torch.library.custom_op("fasttn::tree_node", mutates_args=())
def _forward(x: Tensor, w: Tensor) -> Tensor:
    with device_scope(x):
        out, _ = fops.tree_node_forward(to_array(x), to_array(w))
    return from_array(out)


@_forward.register_fake
def _(x, w):
    return x.new_empty((x.shape[0], x.shape[1] // 2, x.shape[2] // 2, w.shape[-1]))


@torch.library.custom_op("fasttn::tree_node_backward", mutates_args=())
def _backward_op(x: Tensor, w: Tensor, grad_out: Tensor, need_g_x: bool
                 ) -> Tuple[Tensor, Tensor]:
    with device_scope(x):  # fasttn's saved state is (x, w): nothing to keep
        g_x, g_w = fops.tree_node_backward((to_array(x), to_array(w)), to_array(grad_out),
                                           need_g_x)
    return (x.new_empty(0) if g_x is None else from_array(g_x)), from_array(g_w)


@_backward_op.register_fake
def _(x, w, grad_out, need_g_x):
    return (torch.empty_like(x) if need_g_x else x.new_empty(0)), torch.empty_like(w)


def _backward_fn():
    return _BackwardFunction.apply if transforms_active() else _backward_op


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_out):
    x, w = ctx.saved_tensors
    need_g_x = ctx.needs_input_grad[0]
    g_x, g_w = _backward_fn()(x, w, grad_out.contiguous(), need_g_x)
    return (g_x if need_g_x else None), g_w


_forward.register_autograd(_backward, setup_context=_setup_context)
_BackwardFunction = refuse_double_backward(_backward_op, "tree_node")
_forward.register_vmap(loop_vmap(_forward))
_backward_op.register_vmap(loop_vmap(_backward_op))
register(_forward)
_Function = function_for("TreeNode", _forward, _setup_context, _backward)
register(_backward_op)


@mixed_precision
def tree_node(x: Tensor, w: Tensor) -> Tensor:
    """Every 2x2 block of a grid contracted to one site by its own tensor
    (:func:`fasttn.ops.tree_node`), differentiable.

    Parameters
    ----------
    x : (batch, H, W, p) float32 or float64
        Site vectors; H and W positive and even.
    w : (H / 2, W / 2, p, p, p, p, chi), the dtype of ``x``
        One tensor per block: corners top-left, top-right, bottom-left, bottom-right, then
        the output leg.

    Returns
    -------
    out : (batch, H / 2, W / 2, chi)
    """
    check_inputs("tree_node", {"x": x, "w": w})
    if transforms_active():
        return _Function.apply(x, w)
    return _forward(x, w)
