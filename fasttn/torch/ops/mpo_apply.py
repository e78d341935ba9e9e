"""``mpo_apply`` as a differentiable torch op over :mod:`fasttn.ops.mpo`."""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from ... import ops as fops
from ..._validate import check_choice
from ...ops.mpo import cpu as mpo_cpu
from ._contract import mixed_precision, function_for, transforms_active, loop_vmap, register
from ..bridge import check_inputs, device_scope, from_array, to_array

__all__ = ["mpo_apply"]


@torch.library.custom_op("fasttn::mpo_apply", mutates_args=())
def _forward(x: Tensor, cores: List[Tensor], method: str) -> Tuple[Tensor, List[Tensor]]:
    """``(y, prefixes)``: on the dense route the MPO's prefix contractions (the last is
    ``W``), which the backward takes instead of recomputing them; none on the network
    route."""
    with device_scope(x):
        out, saved = fops.mpo_apply_forward(to_array(x), [to_array(c) for c in cores], method)
    pre = [from_array(p) for p in saved[3][1]] if saved[0] == "dense" else []
    return from_array(out), pre


def _route(batch, cores, method):
    if method != "auto":
        return method
    return fops.mpo_apply_method(int(batch), [c.detach() if isinstance(c, Tensor) else c
                                              for c in cores])[0]


@_forward.register_fake
def _(x, cores, method):
    out = x.new_empty((x.shape[0], math.prod(c.shape[2] for c in cores)))
    if _route(x.shape[0], [torch.empty(tuple(int(d) for d in c.shape)) for c in cores],
              method) != "dense":
        return out, []
    pre, n_in, n_out = [x.new_empty((1, 1, 1))], 1, 1
    for c in cores:
        n_in, n_out = n_in * c.shape[1], n_out * c.shape[2]
        pre.append(x.new_empty((n_in, n_out, c.shape[3])))
    return out, pre


def _saved(x, cores, pre):
    """fasttn's saved state, rebuilt from the inputs and the forward's prefixes."""
    xa, ca = to_array(x), [to_array(c) for c in cores]
    if pre:
        pa = [to_array(p) for p in pre]
        return ("dense", xa, pa[-1][:, :, 0], (ca, pa))
    return ("network", xa, ca)


@torch.library.custom_op("fasttn::mpo_apply_backward", mutates_args=())
def _backward_op(x: Tensor, cores: List[Tensor], prefixes: List[Tensor], grad_out: Tensor,
                 need_g_x: bool) -> List[Tensor]:
    with device_scope(x):
        g_x, g_cores = fops.mpo_apply_backward(_saved(x, cores, prefixes), to_array(grad_out),
                                               need_g_x)
    g_x = x.new_empty(0) if g_x is None else from_array(g_x)
    return [g_x] + [from_array(g) for g in g_cores]


@_backward_op.register_fake
def _(x, cores, prefixes, grad_out, need_g_x):
    g_x = torch.empty_like(x) if need_g_x else x.new_empty(0)
    return [g_x] + [torch.empty_like(c) for c in cores]


def _setup_context(ctx, inputs, output):
    x, cores, _ = inputs
    pre = output[1]
    ctx.mark_non_differentiable(*pre)
    ctx.n_cores = len(cores)
    ctx.save_for_backward(x, *cores, *pre)


def _backward(ctx, grad_out, _grad_pre):
    x, *rest = ctx.saved_tensors
    cores, pre = rest[:ctx.n_cores], rest[ctx.n_cores:]
    need_g_x = ctx.needs_input_grad[0]
    if transforms_active():
        g_x, *g_cores = _BackwardFunction.apply(x, grad_out.contiguous(), need_g_x, len(cores),
                                                *cores, *pre)
    else:
        g_x, *g_cores = _backward_op(x, cores, pre, grad_out.contiguous(), need_g_x)
    return (g_x if need_g_x else None), g_cores, None


_forward.register_autograd(_backward, setup_context=_setup_context)


def _reference(x: Tensor, cores: Sequence[Tensor]) -> Tensor:
    """``x @ W`` in plain torch ops (differentiable to any order); the double backward goes
    through it."""
    w = cores[0].reshape(cores[0].shape[1], cores[0].shape[2], cores[0].shape[3])
    for c in cores[1:]:
        i, o, _ = w.shape
        w = torch.einsum("ioa,ajpb->ijopb", w, c).reshape(i * c.shape[1], o * c.shape[2],
                                                           c.shape[3])
    return x @ w[:, :, 0]


def _double_setup(ctx, inputs, output):
    x, cores, pre, grad_out, need_g_x = inputs
    ctx.n_pre = len(pre)
    ctx.save_for_backward(x, grad_out, *cores)
    ctx.need_g_x = need_g_x


def _double_backward(ctx, grads):
    """The backward's vector-Jacobian product through :func:`_reference` (the backward is
    linear in ``grad_out``, bilinear in ``x`` and each core)."""
    x, grad_out, *cores = ctx.saved_tensors
    gg_x, *gg_cores = grads
    n = len(cores)

    def pullback(x_, g_, *cores_):
        return torch.func.vjp(_reference, x_, list(cores_))[1](g_)

    _, vjp = torch.func.vjp(pullback, x, grad_out, *cores)
    if not ctx.need_g_x or gg_x is None or gg_x.numel() == 0:
        gg_x = torch.zeros_like(x)
    gg_cores = [torch.zeros_like(c) if g is None else g for c, g in zip(cores, gg_cores)]
    g_x, g_grad, *g_cores = vjp((gg_x, gg_cores))
    return g_x, list(g_cores[:n]), [None] * ctx.n_pre, g_grad, None


_backward_op.register_autograd(_double_backward, setup_context=_double_setup)


@_forward.register_vmap
def _(info, in_dims, x, cores, method):
    """Under ``torch.func.vmap`` with shared cores the vmapped dimension joins the batch (one
    call); with vmapped cores, one call per index."""
    x_dim, core_dims, _ = in_dims
    if core_dims is not None and any(d is not None for d in core_dims):
        return loop_vmap(_forward)(info, in_dims, x, cores, method)
    if x_dim is None:
        y, pre = _forward(x, cores, method)
        return (y, pre), (None, [None] * len(pre))
    x = x.movedim(x_dim, 0)
    y, pre = _forward(x.reshape(-1, x.shape[-1]), cores, method)
    return (y.reshape(x.shape[0], x.shape[1], y.shape[-1]), pre), (0, [None] * len(pre))


_backward_op.register_vmap(loop_vmap(_backward_op))


def _function_forward(x, method, *cores):
    y, pre = _forward(x, list(cores), method)
    return (y, *pre)


def _function_setup(ctx, inputs, output):
    x, method, *cores = inputs
    _setup_context(ctx, (x, cores, method), (output[0], list(output[1:])))


def _function_backward(ctx, grad_out, *_grad_pre):
    g_x, g_cores, _ = _backward(ctx, grad_out, None)
    return (g_x, None, *g_cores)


_Function = function_for("MPOApply", _function_forward, _function_setup, _function_backward)


def _bw_function_forward(x, grad_out, need_g_x, n_cores, *rest):
    return tuple(_backward_op(x, list(rest[:n_cores]), list(rest[n_cores:]), grad_out,
                              need_g_x))


def _bw_function_setup(ctx, inputs, output):
    x, grad_out, need_g_x, n_cores, *rest = inputs
    _double_setup(ctx, (x, rest[:n_cores], rest[n_cores:], grad_out, need_g_x), output)


def _bw_function_backward(ctx, *grads):
    g_x, g_cores, g_pre, g_grad, _ = _double_backward(ctx, list(grads))
    return (g_x, g_grad, None, None, *g_cores, *g_pre)


_BackwardFunction = function_for("MPOApplyBackward", _bw_function_forward, _bw_function_setup,
                                 _bw_function_backward)
register(_forward)
register(_backward_op)


@mixed_precision
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
    if transforms_active():
        return _Function.apply(x, method, *cores)[0]
    return _forward(x, cores, method)[0]
