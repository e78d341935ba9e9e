"""Tensors in and out of fasttn's ops without copies.

CPU tensors become NumPy arrays over the same memory (``Tensor.numpy``) and results come back
with ``torch.from_numpy``; CUDA tensors go to CuPy and back through DLPack. Only a
non-contiguous tensor is copied, because fasttn's kernels index C-ordered memory.
"""
from __future__ import annotations

import contextlib
import importlib.util
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch

from .._validate import check_dtype

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}

# Ops with a CUDA path: those with a module of their own in fasttn.ops, tree_node, whose
# einsum spec runs on CuPy arrays, and mps_contract (its array-module version); the MPO contractions run on the host only. Looked up once,
# so that checking a call stays traceable by torch.compile.
_CUDA_MODULES = ("product_pool", "qcnn_level", "mera_block")
_CUDA_PATHS = {"tree_node": True, "mps_contract": True, "mpo_apply": False,
               **{op: importlib.util.find_spec(f"fasttn.ops.{op}.cuda") is not None
                  for op in _CUDA_MODULES}}


def has_cuda_path(op: str) -> bool:
    """Whether fasttn can run ``op`` on CuPy arrays."""
    return _CUDA_PATHS.get(op, False)


def check_inputs(op: str, tensors: Dict[str, Optional[torch.Tensor]]) -> None:
    """Check the tensor arguments of ``op`` (``name: tensor``, None for an absent optional).

    Each must be a float32 or float64 tensor, all on one device, and fasttn must have a path
    for that device. Messages name the argument, what was expected and what came.
    """
    device = None
    first = None
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        check_dtype(name, _NUMPY_DTYPES.get(t.dtype, str(t.dtype)))
        if device is None:
            device, first = t.device, name
        elif t.device != device:
            raise ValueError(f"{name}: expected a tensor on {device} (the device of {first}), "
                             f"got {t.device}")
    if device is None or device.type == "cpu":
        return
    if device.type != "cuda" or not has_cuda_path(op):
        raise NotImplementedError(f"fasttn.torch.{op}: fasttn has no {device.type} path for "
                                  f"{op}; got tensors on {device} (move them to the CPU)")


def to_array(t: torch.Tensor) -> Any:
    """A NumPy (CPU) or CuPy (CUDA) array over the memory of ``t``; no copy when ``t`` is
    contiguous."""
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    if t.device.type == "cpu":
        return t.numpy()
    import cupy  # only reached for CUDA tensors, which check_inputs admitted

    return cupy.from_dlpack(t)


def from_array(a: Any) -> torch.Tensor:
    """The tensor over the memory of a NumPy or CuPy array ``a`` (no copy), contiguous: a
    custom op's outputs have the strides its shape function promises (a strided result, such
    as a transposed gradient, is copied)."""
    if isinstance(a, np.ndarray):
        if not a.flags.writeable:  # torch tensors are always writable
            a = a.copy()
        return torch.from_numpy(a).contiguous()
    return torch.from_dlpack(a).contiguous()


@contextlib.contextmanager
def device_scope(t: torch.Tensor) -> Iterator[None]:
    """Run fasttn's CuPy kernels on the device and stream torch is using for ``t``."""
    if t.device.type != "cuda":
        yield
        return
    import cupy

    stream = torch.cuda.current_stream(t.device)
    with cupy.cuda.Device(t.device.index), cupy.cuda.ExternalStream(stream.cuda_stream):
        yield
