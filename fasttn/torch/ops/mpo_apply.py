"""``mpo_apply`` as a differentiable torch op over :mod:`fasttn.ops.mpo`."""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from ... import ops as fops
from ..._validate import check_choice
from .. import tape
from ..bridge import check_inputs, device_scope, from_array, to_array

__all__ = ["mpo_apply"]


@torch.library.custom_op("fasttn::mpo_apply", mutates_args=())
def _forward(x: Tensor, cores: List[Tensor], method: str) -> Tuple[Tensor, Tensor]:
    with device_scope(x):
        out, saved = fops.mpo_apply_forward(to_array(x), [to_array(c) for c in cores], method)
    return from_array(out), tape.store(saved)


@_forward.register_fake
def _(x, cores, method):
    out = x.new_empty((x.shape[0], math.prod(c.shape[2] for c in cores)))
    return out, tape.fake_handle()


@torch.library.custom_op("fasttn::mpo_apply_backward", mutates_args=())
def _backward_op(handle: Tensor, x: Tensor, cores: List[Tensor], grad_out: Tensor, method: str,
                 need_g_x: bool) -> List[Tensor]:
    with device_scope(x):
        saved = tape.load(handle, lambda: fops.mpo_apply_forward(
            to_array(x), [to_array(c) for c in cores], method)[1])
        g_x, g_cores = fops.mpo_apply_backward(saved, to_array(grad_out), need_g_x)
    g_x = x.new_empty(0) if g_x is None else from_array(g_x)
    return [g_x] + [from_array(g) for g in g_cores]


@_backward_op.register_fake
def _(handle, x, cores, grad_out, method, need_g_x):
    g_x = torch.empty_like(x) if need_g_x else x.new_empty(0)
    return [g_x] + [torch.empty_like(c) for c in cores]


def _setup_context(ctx, inputs, output):
    x, cores, method = inputs
    ctx.save_for_backward(x, output[1], *cores)
    ctx.method = method


def _backward(ctx, grad_out, _grad_handle):
    x, handle, *cores = ctx.saved_tensors
    need_g_x = ctx.needs_input_grad[0]
    g_x, *g_cores = _backward_op(handle, x, cores, grad_out, ctx.method, need_g_x)
    return (g_x if need_g_x else None), g_cores, None


_forward.register_autograd(_backward, setup_context=_setup_context)


def mpo_apply(x: Tensor, cores: Sequence[Tensor], method: str = "auto") -> Tensor:
    """``x @ W`` for the matrix product operator ``W`` held as ``cores``
    (:func:`fasttn.ops.mpo_apply`), differentiable in ``x`` and every core.

    Parameters
    ----------
    x : (batch, n_in) float32 or float64
        ``n_in`` is the product of the cores' input dimensions.
    cores : sequence of (D_k, in_k, out_k, D_k+1) tensors, the dtype of ``x``
        A list, a tuple or an ``nn.ParameterList``.
        Outer bonds ``D_0 = D_N = 1``.
    method : {"auto", "dense", "network"}
        "dense" contracts the cores into ``W`` first, "network" contracts ``x`` through the
        cores; "auto" takes the cheaper by cotengra's count for this batch size.

    Returns
    -------
    y : (batch, prod(out_k))
    """
    if isinstance(cores, Tensor) or not hasattr(cores, "__len__") or len(cores) == 0:
        raise ValueError("cores: expected a non-empty sequence of 4-dimensional tensors "
                         f"(D_k, in_k, out_k, D_k+1), got {type(cores).__name__}")
    cores = list(cores)
    check_inputs("mpo_apply", {"x": x, **{f"cores[{k}]": c for k, c in enumerate(cores)}})
    check_choice("method", method, ("auto", "dense", "network"))
    return _forward(x, cores, method)[0]
