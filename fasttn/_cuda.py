"""CUDA C++ sources of fasttn: where they live, how they compile, what a missing GPU says.

The kernels are real ``.cu`` files under ``fasttn/csrc/`` (shipped as package data, so the
same path serves an installed wheel and an editable checkout). They compile at first use
through CuPy's :class:`cupy.RawModule` (NVRTC, no host compiler needed). CuPy keeps the
compiled binary on disk under ``~/.cupy/kernel_cache`` (``CUPY_CACHE_DIR`` moves it), keyed by
the source text and options, so a later process skips NVRTC; this module adds only an
in-memory map from (source, device) to the loaded module, so the source is read once.

Nothing here imports CuPy at import time: ``import fasttn`` works on a machine without it.
"""
from __future__ import annotations

import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Tuple

__all__ = ["CUDAUnavailableError", "CSRC_DIR", "COMPILE_OPTIONS", "cuda_sources",
           "require_cupy", "load_module", "get_kernel", "launch_config"]

CSRC_DIR = Path(__file__).resolve().parent / "csrc"

# C++17 for the templated device bodies; NVRTC targets the current device's architecture.
COMPILE_OPTIONS: Tuple[str, ...] = ("-std=c++17",)

_INSTALL_HINT = "fasttn: CUDA needs CuPy and an NVIDIA GPU: pip install 'fasttn[cuda]'"


class CUDAUnavailableError(RuntimeError):
    """CUDA was asked for where CuPy or a usable NVIDIA GPU is missing."""


def cuda_sources() -> Dict[str, Path]:
    """The CUDA sources fasttn ships, by op name (``{"product_pool": .../product_pool.cu}``)."""
    return {p.stem: p for p in sorted(CSRC_DIR.glob("*.cu"))}


def require_cupy() -> ModuleType:
    """CuPy, after checking that it imports and sees at least one GPU.

    Raises
    ------
    CUDAUnavailableError
        Saying which of the two is missing and how to install the extra.
    """
    try:
        import cupy
    except ImportError as exc:
        raise CUDAUnavailableError(
            f"{_INSTALL_HINT}; CuPy is not importable here ({exc}). Install the CuPy wheel "
            "matching your CUDA driver (cupy-cuda12x for CUDA 12) on a machine with an "
            "NVIDIA GPU, or use device='cpu'.") from exc
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError when there is no driver or no device
        raise CUDAUnavailableError(
            f"{_INSTALL_HINT}; CuPy {cupy.__version__} is installed but finds no usable GPU "
            f"({exc}). Check the NVIDIA driver (nvidia-smi) or use device='cpu'.") from exc
    if n_devices < 1:
        raise CUDAUnavailableError(
            f"{_INSTALL_HINT}; CuPy {cupy.__version__} is installed but sees no GPU "
            "(check CUDA_VISIBLE_DEVICES and nvidia-smi), or use device='cpu'.")
    return cupy


_MODULES: Dict[Tuple[str, int], Any] = {}
_LOCK = threading.Lock()


def load_module(name: str) -> Any:
    """The compiled :class:`cupy.RawModule` of ``csrc/<name>.cu`` on the current device.

    Parameters
    ----------
    name : str
        The source's stem, e.g. ``"product_pool"``.
    """
    cupy = require_cupy()
    sources = cuda_sources()
    if name not in sources:
        raise ValueError(f"name: expected one of {sorted(sources)} (the files in "
                         f"{CSRC_DIR}), got {name!r}")
    # A loaded module belongs to one device's context, hence the device in the key.
    key = (name, cupy.cuda.runtime.getDevice())
    module = _MODULES.get(key)
    if module is None:
        with _LOCK:
            module = _MODULES.get(key)
            if module is None:
                code = sources[name].read_text()
                module = cupy.RawModule(code=code, options=COMPILE_OPTIONS)
                _MODULES[key] = module
    return module


def get_kernel(name: str, entry: str) -> Any:
    """The :class:`cupy.RawKernel` ``entry`` (an ``extern "C"`` name) of ``csrc/<name>.cu``."""
    return load_module(name).get_function(entry)


def launch_config(n: int, threads: int = 256) -> Tuple[Tuple[int], Tuple[int]]:
    """``(grid, block)`` for a grid-stride kernel over ``n`` elements.

    The grid is capped: the kernels loop, and a few thousand blocks already fill any current
    GPU, so the cap only saves launch overhead on huge inputs.
    """
    blocks = max(1, min((n + threads - 1) // threads, 65535))
    return (blocks,), (threads,)
