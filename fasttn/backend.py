"""The one place that knows about devices.

Arrays stay on the device they come from: an op receives an array, asks
:func:`array_module` which module owns it and dispatches there. Models never
branch on NumPy versus CuPy; they call ops and ``xp`` functions only.
"""
from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy as np

DEFAULT_DTYPE = np.dtype(np.float32)


def array_module(x: Any) -> ModuleType:
    """NumPy for host arrays, CuPy for device arrays (found from the array's own type)."""
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy  # only reached when the caller already holds a CuPy array

        return cupy
    return np


def device_of(x: Any) -> str:
    """``"cuda"`` for CuPy arrays, else ``"cpu"``."""
    return "cuda" if array_module(x) is not np else "cpu"


def get_module(device: str) -> ModuleType:
    """Array module for a device name (``"cpu"`` or ``"cuda"``)."""
    if device == "cpu":
        return np
    if device == "cuda":
        try:
            import cupy
        except ImportError as exc:  # pragma: no cover - depends on the machine
            raise RuntimeError("device: 'cuda' needs CuPy; install fasttn[cuda] on a machine "
                               "with an NVIDIA GPU") from exc
        return cupy
    raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")


def to_device(x: Any, device: str) -> Any:
    """Move ``x`` to ``device`` (no copy when it is already there)."""
    if device == "cpu":
        if array_module(x) is np:
            return np.asarray(x)
        return x.get()
    return get_module(device).asarray(x)


def to_numpy(x: Any) -> np.ndarray:
    return to_device(x, "cpu")


def num_threads() -> int:
    """Threads the CPU kernels may use (``FASTTN_NUM_THREADS`` overrides)."""
    env = os.environ.get("FASTTN_NUM_THREADS")
    return int(env) if env else (os.cpu_count() or 1)
