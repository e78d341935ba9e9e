"""fasttn's saved state carried from a custom op's forward to its backward.

fasttn's forwards return an opaque ``saved`` that their backwards take, but a
``torch.library`` custom op hands only tensors from forward to backward (and under
``torch.compile`` its autograd formula is traced). So each forward also returns a *handle*:
a one-element int64 tensor whose storage keeps ``saved`` alive and whose value finds it
again. The state lives exactly as long as autograd keeps the handle, and no intermediate is
recomputed. Should a handle ever outlive its state, the backward recomputes the forward from
its inputs, which fasttn's ops allow by contract.
"""
from __future__ import annotations

import itertools
import weakref
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["store", "load", "fake_handle"]


class _Held(np.ndarray):
    """The handle's memory; a tensor made from it keeps it, and so ``saved``, alive."""

    saved: Any


_LIVE: "weakref.WeakValueDictionary[int, _Held]" = weakref.WeakValueDictionary()
_KEYS = itertools.count(1)


def store(saved: Any) -> torch.Tensor:
    """A handle tensor holding ``saved``."""
    key = next(_KEYS)
    held = np.array([key], np.int64).view(_Held)
    held.saved = saved
    _LIVE[key] = held
    return torch.from_numpy(held)


def load(handle: torch.Tensor, recompute: Callable[[], Any]) -> Any:
    """The state behind ``handle``, or ``recompute()`` when it is no longer held."""
    held = _LIVE.get(int(handle.item()))
    return recompute() if held is None else held.saved


def fake_handle() -> torch.Tensor:
    """A handle of the right shape and dtype, for the ops' shape functions."""
    return torch.empty(1, dtype=torch.int64)
