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


class _KernelThreads:
    """Thread policy while fasttn's CPU kernels run (re-entrant, per calling thread).

    * BLAS runs single-threaded: the kernels parallelise over row chunks with Numba and call
      BLAS once per chunk, and a multi-threaded BLAS underneath would put two thread pools on
      the same cores, whose spinning workers stall each other (measured: 20x slower on 2 cores).
    * Small problems run on one thread: every parallel region ends in a barrier, and when
      other processes share the cores a descheduled worker holds the barrier for a whole
      scheduler slice (measured: a 16x16 q-CNN step 12x slower beside one busy process).
    """

    #: elements of work below which a kernel runs on the calling thread alone. Off (0): with
    #: Numba's OpenMP layer, switching a process to one thread and back leaves later large
    #: kernels several times slower (measured at 128^2), which costs more than it saves.
    SERIAL_BELOW = 0

    def __init__(self):
        import threading

        self._local = threading.local()
        self._controller = None

    def __call__(self, work: int = 0) -> "_KernelThreads":
        self._local.pending_work = work
        return self

    def __enter__(self):
        import numba

        depth = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1
        work = getattr(self._local, "pending_work", 0)
        self._local.pending_work = 0
        stack = getattr(self._local, "threads", None)
        if stack is None:
            stack = self._local.threads = []
        if 0 < work < self.SERIAL_BELOW:
            stack.append(numba.get_num_threads())
            numba.set_num_threads(1)
        else:
            stack.append(None)  # untouched: even a no-op set_num_threads costs with OpenMP
        if depth == 0:
            if self._controller is None:
                from threadpoolctl import ThreadpoolController

                self._controller = ThreadpoolController()
            self._local.limit = self._controller.limit(limits=1, user_api="blas")
        return self

    def __exit__(self, *exc):
        import numba

        previous = self._local.threads.pop()
        if previous is not None:
            numba.set_num_threads(previous)
        self._local.depth -= 1
        if self._local.depth == 0:
            self._local.limit.restore_original_limits()
            self._local.limit = None
        return False


_KERNEL_THREADS = _KernelThreads()


def kernel_threads(work: int = 0) -> _KernelThreads:
    """Context for CPU kernels: single-threaded BLAS, and one thread for ``work`` (elements
    touched) below :attr:`_KernelThreads.SERIAL_BELOW`; ``work=0`` keeps the thread count."""
    return _KERNEL_THREADS(work)
