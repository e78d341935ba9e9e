"""What every ``torch.ops.fasttn.*`` op shares to stay inside PyTorch's custom-op contract.

Each op's outputs are functions of its inputs alone: the intermediates a backward needs and
cannot rebuild cheaply are returned as extra (non-differentiable) outputs and passed to the
backward op as inputs, and those it can rebuild cheaply (views of the inputs, folded weights)
are rebuilt there. This module holds the pieces the ops share: the error for an unsupported
double backward, a batching rule that loops over the vmapped dimension, and the list of
registered ops.
"""
from __future__ import annotations

from typing import Any, Callable, List, Sequence

import torch

__all__ = ["OPS", "register", "refuse_double_backward", "loop_vmap"]

#: every ``fasttn::`` custom op defined by fasttn.torch, by qualified name
OPS: List[str] = []


def register(op: Any) -> Any:
    """Record a custom op in :data:`OPS`; returns it."""
    OPS.append(op._qualname if hasattr(op, "_qualname") else str(op))
    return op


def refuse_double_backward(op: Any, name: str) -> type:
    """Give the backward op ``op`` an autograd formula that raises a clear error: fasttn has
    no second derivative for ``fasttn.<name>``. Returns the same as an ``autograd.Function``
    (see :func:`function_for`)."""

    def _setup(ctx, inputs, output):
        pass

    def _backward(ctx, *grads):
        raise NotImplementedError(
            f"double backward is not supported for fasttn.{name} (its backward is a fused "
            f"kernel without a derivative of its own); use create_graph=False, or "
            f"fasttn.torch.mpo_apply / product_pool, which have one")

    op.register_autograd(_backward, setup_context=_setup)
    return function_for(f"{name}_backward", op, _setup, _backward)


def _slice(arg: Any, dim: Any, i: int) -> Any:
    if dim is None:
        return arg
    if isinstance(arg, (list, tuple)):
        dims = dim if isinstance(dim, (list, tuple)) else [dim] * len(arg)
        return [_slice(a, d, i) for a, d in zip(arg, dims)]
    return arg.select(dim, i)


def _stack(outs: Sequence[Any]) -> Any:
    first = outs[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(list(outs)), 0
    stacked = [_stack([o[k] for o in outs]) for k in range(len(first))]
    values = [s[0] for s in stacked]
    dims = [s[1] for s in stacked]
    if isinstance(first, tuple):
        return tuple(values), tuple(dims)
    return values, dims


def loop_vmap(op: Callable) -> Callable:
    """A batching rule for ``op``: the op once per index of the vmapped dimension, stacked."""

    def rule(info, in_dims, *args):
        outs = [op(*(_slice(a, d, i) for a, d in zip(args, in_dims)))
                for i in range(info.batch_size)]
        return _stack(outs)

    return rule


def transforms_active() -> bool:
    """Whether a ``torch.func`` transform (grad, vmap, jacrev, ...) is running."""
    return torch._C._are_functorch_transforms_active()


def function_for(name: str, forward: Callable, setup_context: Callable,
                 backward: Callable) -> type:
    """An ``autograd.Function`` with an op's own formulas, for ``torch.func`` transforms.

    torch.library's autograd registration has no ``setup_context`` of its own that functorch
    can use, so under a transform the public functions call the custom op through this
    class instead; its vmap rule comes from the op's batching rule."""
    return type(name, (torch.autograd.Function,), {
        "generate_vmap_rule": True,
        "forward": staticmethod(forward),
        "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward),
    })


#: dtypes fasttn's kernels do not take: computed in float32 (float32 accumulation)
LOW_PRECISION = (torch.bfloat16, torch.float16)


def _map_tensors(value: Any, fn: Callable) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
        return type(value)(_map_tensors(v, fn) for v in value)
    return value


def _low_dtype(values: Sequence[Any]) -> Any:
    found = []
    _map_tensors(list(values), lambda t: found.append(t.dtype) or t)
    low = [d for d in found if d in LOW_PRECISION]
    return low[0] if low else None


def mixed_precision(fn: Callable) -> Callable:
    """Let a public op take bfloat16 / float16 tensors: they are cast to float32, fasttn
    computes (and accumulates) in float32, and the float32 results are cast back to the low
    dtype, or left float32 under ``torch.autocast`` (the autocast policy of an op that runs
    in float32). Float64 arguments and results (statistics, log-scales) are left alone.
    Gradients flow through the casts."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        low = _low_dtype(list(args) + list(kwargs.values()))
        if low is None:
            return fn(*args, **kwargs)
        up = lambda t: t.float() if t.dtype in LOW_PRECISION else t  # noqa: E731
        out = fn(*(_map_tensors(a, up) for a in args),
                 **{k: _map_tensors(v, up) for k, v in kwargs.items()})
        device = _first_device(args)
        if torch.is_autocast_enabled(device):
            return out
        return _map_tensors(out, lambda t: t.to(low) if t.dtype == torch.float32 else t)

    return wrapper


def _first_device(args: Sequence[Any]) -> str:
    found = []
    _map_tensors(list(args), lambda t: found.append(t.device.type) or t)
    return found[0] if found else "cpu"
