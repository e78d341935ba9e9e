"""``mps_contract`` as a differentiable torch op over :mod:`fasttn.ops.mps_contract`."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ... import ops as fops
from ._contract import mixed_precision, function_for, transforms_active, loop_vmap, refuse_double_backward, register
from ..bridge import check_inputs, device_scope, from_array, to_array

__all__ = ["mps_contract"]


@torch.library.custom_op("fasttn::mps_contract", mutates_args=())
def _forward(phi: Tensor, cores: Tensor, head: Tensor, center: int
             ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(out, log_scale, lefts, rights, norms)``: the last three are the normalised
    environments and their norms, which the backward takes instead of recomputing them."""
    with device_scope(phi):
        out, log_scale, saved = fops.mps_contract_forward(to_array(phi), to_array(cores),
                                                          to_array(head), center)
    lefts, rights, norms = saved[4:]
    return tuple(from_array(a) for a in (out, log_scale, lefts, rights, norms))


@_forward.register_fake
def _(phi, cores, head, center):
    n, L, D = phi.shape[0], cores.shape[0], cores.shape[1]
    out = phi.new_empty((n, head.shape[1]))
    if phi.device.type == "cpu":
        envs = ((n, center + 1, D), (n, L - center + 1, D), (n, L))
    else:  # the array-module version keeps the sample axis second
        envs = ((center + 1, n, D), (L - center + 1, n, D), (L, n))
    return (out, phi.new_empty((n,), dtype=torch.float64), phi.new_empty(envs[0]),
            phi.new_empty(envs[1]), phi.new_empty(envs[2], dtype=torch.float64))


@torch.library.custom_op("fasttn::mps_contract_backward", mutates_args=())
def _backward_op(phi: Tensor, cores: Tensor, head: Tensor, lefts: Tensor, rights: Tensor,
                 norms: Tensor, center: int, g_out: Tensor, g_log_scale: Tensor,
                 need_g_phi: bool) -> Tuple[Tensor, Tensor, Tensor]:
    with device_scope(phi):
        saved = tuple(to_array(t) for t in (phi, cores, head))
        saved = saved + (center,) + tuple(to_array(t) for t in (lefts, rights, norms))
        g_phi, g_cores, g_head = fops.mps_contract_backward(
            saved, to_array(g_out), to_array(g_log_scale), need_g_phi)
    return ((phi.new_empty(0) if g_phi is None else from_array(g_phi)), from_array(g_cores),
            from_array(g_head))


@_backward_op.register_fake
def _(phi, cores, head, lefts, rights, norms, center, g_out, g_log_scale, need_g_phi):
    return ((torch.empty_like(phi) if need_g_phi else phi.new_empty(0)),
            torch.empty_like(cores), torch.empty_like(head))


def _backward_fn():
    return _BackwardFunction.apply if transforms_active() else _backward_op


def _setup_context(ctx, inputs, output):
    phi, cores, head, center = inputs
    ctx.center = center
    ctx.mark_non_differentiable(*output[2:])
    ctx.save_for_backward(phi, cores, head, *output[2:])


def _backward(ctx, g_out, g_log_scale, *_g_envs):
    phi, cores, head, lefts, rights, norms = ctx.saved_tensors
    if g_out is None:
        g_out = phi.new_zeros((phi.shape[0], head.shape[1]))
    if g_log_scale is None:
        g_log_scale = phi.new_zeros((phi.shape[0],), dtype=torch.float64)
    need_g_phi = ctx.needs_input_grad[0]
    g_phi, g_cores, g_head = _backward_fn()(phi, cores, head, lefts, rights, norms, ctx.center,
                                          g_out.contiguous(),
                                          g_log_scale.to(torch.float64).contiguous(),
                                          need_g_phi)
    return (g_phi if need_g_phi else None), g_cores, g_head, None


_forward.register_autograd(_backward, setup_context=_setup_context)
_BackwardFunction = refuse_double_backward(_backward_op, "mps_contract")
_forward.register_vmap(loop_vmap(_forward))
_backward_op.register_vmap(loop_vmap(_backward_op))
register(_forward)
_Function = function_for("MPSContract", _forward, _setup_context, _backward)
register(_backward_op)


@mixed_precision
def mps_contract(phi: Tensor, cores: Tensor, head: Tensor, center: int
                 ) -> Tuple[Tensor, Tensor]:
    """An MPS classifier's chain contracted per sample (:func:`fasttn.ops.mps_contract`),
    differentiable in ``phi``, ``cores`` and ``head``.

    Parameters
    ----------
    phi : (batch, L, d) float32 or float64
    cores : (L, D, d, D), the dtype of ``phi``
    head : (D, n_classes, D), the dtype of ``phi``
    center : int
        Sites left of the head, ``0 <= center <= L``.

    Returns
    -------
    out : (batch, n_classes)
        Scores with the environments' norms divided out (order one at any ``L``).
    log_scale : (batch,) float64
        The chain's exact scores are ``out * exp(log_scale)[:, None]``.
    """
    check_inputs("mps_contract", {"phi": phi, "cores": cores, "head": head})
    if transforms_active():
        return tuple(_Function.apply(phi, cores, head, int(center))[:2])
    out, log_scale = _forward(phi, cores, head, int(center))[:2]
    return out, log_scale
