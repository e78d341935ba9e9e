"""``mps_contract`` as a differentiable torch op over :mod:`fasttn.ops.mps_contract`."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ... import ops as fops
from .. import tape
from ..bridge import check_inputs, device_scope, from_array, to_array

__all__ = ["mps_contract"]


@torch.library.custom_op("fasttn::mps_contract", mutates_args=())
def _forward(phi: Tensor, cores: Tensor, head: Tensor, center: int
             ) -> Tuple[Tensor, Tensor, Tensor]:
    with device_scope(phi):
        out, log_scale, saved = fops.mps_contract_forward(to_array(phi), to_array(cores),
                                                          to_array(head), center)
    return from_array(out), from_array(log_scale), tape.store(saved)


@_forward.register_fake
def _(phi, cores, head, center):
    out = phi.new_empty((phi.shape[0], head.shape[1]))
    return out, phi.new_empty((phi.shape[0],), dtype=torch.float64), tape.fake_handle()


@torch.library.custom_op("fasttn::mps_contract_backward", mutates_args=())
def _backward_op(handle: Tensor, phi: Tensor, cores: Tensor, head: Tensor, center: int,
                 g_out: Tensor, g_log_scale: Tensor, need_g_phi: bool
                 ) -> Tuple[Tensor, Tensor, Tensor]:
    with device_scope(phi):
        saved = tape.load(handle, lambda: fops.mps_contract_forward(
            to_array(phi), to_array(cores), to_array(head), center)[2])
        g_phi, g_cores, g_head = fops.mps_contract_backward(
            saved, to_array(g_out), to_array(g_log_scale), need_g_phi)
    return ((phi.new_empty(0) if g_phi is None else from_array(g_phi)), from_array(g_cores),
            from_array(g_head))


@_backward_op.register_fake
def _(handle, phi, cores, head, center, g_out, g_log_scale, need_g_phi):
    return ((torch.empty_like(phi) if need_g_phi else phi.new_empty(0)),
            torch.empty_like(cores), torch.empty_like(head))


def _setup_context(ctx, inputs, output):
    phi, cores, head, center = inputs
    ctx.center = center
    ctx.save_for_backward(phi, cores, head, output[2])


def _backward(ctx, g_out, g_log_scale, _g_handle):
    phi, cores, head, handle = ctx.saved_tensors
    if g_out is None:
        g_out = phi.new_zeros((phi.shape[0], head.shape[1]))
    if g_log_scale is None:
        g_log_scale = phi.new_zeros((phi.shape[0],), dtype=torch.float64)
    need_g_phi = ctx.needs_input_grad[0]
    g_phi, g_cores, g_head = _backward_op(handle, phi, cores, head, ctx.center,
                                          g_out.contiguous(),
                                          g_log_scale.to(torch.float64).contiguous(),
                                          need_g_phi)
    return (g_phi if need_g_phi else None), g_cores, g_head, None


_forward.register_autograd(_backward, setup_context=_setup_context)


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
    out, log_scale, _ = _forward(phi, cores, head, int(center))
    return out, log_scale
