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
        from ._cuda import require_cupy  # one message for a missing CuPy or GPU

        return require_cupy()
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
    return int(env) if env else _CPU_COUNT


_CPU_COUNT = os.cpu_count() or 1

# The CPU kernels cut their work (row chunks, sample ranges, image groups) for this many
# threads, whatever the number that runs it: the chunk boundaries, and with them the order
# of every partial sum, depend only on the problem's size, so that a result is the same to
# the bit for any FASTTN_NUM_THREADS or NUMBA_NUM_THREADS (and on any machine with the same
# libraries). Large problems are cut by cache size long before this count matters; small
# ones get enough chunks to keep up to this many cores busy.
PARTITION_THREADS = 8


class _KernelBLAS:
    """One BLAS thread under fasttn's CPU kernels, set once and left so; Numba's threads
    capped at ``FASTTN_NUM_THREADS`` while a kernel runs, where that is set.

    The kernels parallelise over row chunks with Numba and call BLAS once per chunk from each
    worker; a multi-threaded BLAS underneath would put two thread pools on the same cores.
    The thread count is set once rather than lowered and restored around each kernel:
    OpenBLAS wakes its workers on every restore and they spin for a while, stealing the
    cores from Numba's workers (measured on 2 cores: a 128x128 q-CNN step 162 ms with a
    restore per pass, 147 ms set once, over 1 s with a restore per kernel).

    Only the library Numba's ``np.dot`` calls (SciPy's BLAS, through
    ``scipy.linalg.cython_blas``) is set; NumPy's own BLAS keeps its threads for the user's
    code. Where one library serves both, both are set.

    Numba's thread count is per calling thread and costs nothing to change, so it is set on
    entry and restored on exit (the user's own parallel functions keep theirs). The kernels
    cut their work by :data:`PARTITION_THREADS`, not by this count: it changes the speed,
    never the result.
    """

    def __init__(self):
        import threading

        self._lock = threading.Lock()
        self._local = threading.local()  # Numba thread counts to restore, per thread
        self.pinned = None  # filepaths of the libraries set to one thread

    def pin(self) -> None:
        if self.pinned is not None:
            return
        with self._lock:
            if self.pinned is not None:
                return
            import scipy.linalg.cython_blas  # noqa: F401 - load the library Numba calls
            from threadpoolctl import ThreadpoolController

            blas = [lib for lib in ThreadpoolController().lib_controllers
                    if lib.user_api == "blas"]
            numpy_libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)),
                                      "numpy.libs")
            kernel_libs = [lib for lib in blas if not lib.filepath.startswith(numpy_libs)]
            for lib in kernel_libs or blas:
                lib.set_num_threads(1)
            self.pinned = [lib.filepath for lib in kernel_libs or blas]

    def __enter__(self):
        self.pin()
        saved = getattr(self._local, "saved", None)
        if saved is None:
            saved = self._local.saved = []
        limit = _numba_thread_limit()
        if limit is None:
            saved.append(None)
        else:
            import numba

            saved.append(numba.get_num_threads())
            numba.set_num_threads(limit)
        return self

    def __exit__(self, *exc):
        previous = self._local.saved.pop()
        if previous is not None:
            import numba

            numba.set_num_threads(previous)
        return False


def _numba_thread_limit():
    """``FASTTN_NUM_THREADS`` within Numba's pool size, or None when it is not set."""
    env = os.environ.get("FASTTN_NUM_THREADS")
    if not env or os.environ.get("FASTTN_DISABLE_JIT", "") not in ("", "0"):
        return None
    import numba

    try:
        n = int(env)
    except ValueError:
        raise ValueError(f"FASTTN_NUM_THREADS: expected a positive integer, got {env!r}") \
            from None
    if n < 1:
        raise ValueError(f"FASTTN_NUM_THREADS: expected a positive integer, got {env!r}")
    return min(n, numba.config.NUMBA_NUM_THREADS)


_KERNEL_BLAS = _KernelBLAS()


def kernel_threads() -> _KernelBLAS:
    """Context for fasttn's CPU kernels: the BLAS they call runs on one thread (set on first
    use, then left so), and Numba on at most ``FASTTN_NUM_THREADS`` threads (see
    :class:`_KernelBLAS`)."""
    return _KERNEL_BLAS


class _Lease:
    """Owner of a pooled block while any array made from it lives.

    Arrays are built from this object's ``__array_interface__``, so every array and view
    derived from them keeps the lease (not the raw block) as its base; the block returns to
    the pool only when the last of them dies. (A finaliser on an ndarray view would fire too
    early: NumPy points views of views straight at the owning block.)
    """

    __slots__ = ("block", "__array_interface__", "__weakref__")

    def __init__(self, block: np.ndarray, shape: tuple, dtype: np.dtype):
        self.block = block
        self.__array_interface__ = {"shape": tuple(shape), "typestr": dtype.str,
                                    "data": (block.ctypes.data, False), "version": 3}


class _BufferPool:
    """Reuses large host buffers between calls (forward/backward passes of the same shapes).

    A fresh multi-megabyte array costs the kernel page faults and zero-filling on first
    touch, several times the arithmetic of a first q-CNN level (measured: 18 -> 36 channels
    over 262,144 rows, 5 ms into reused buffers, 17-47 ms into fresh ones).
    """

    MIN_BYTES = 1 << 20

    def __init__(self, max_free_bytes: int = 2 << 30):
        import threading

        self._free: dict = {}
        self._free_bytes = 0
        self.max_free_bytes = max_free_bytes
        self._lock = threading.RLock()  # a finaliser may run inside the locked section

    def empty(self, shape, dtype) -> np.ndarray:
        """An uninitialised C-contiguous array, from the pool when one of its size is free."""
        import weakref

        dtype = np.dtype(dtype)
        shape = tuple(int(n) for n in shape)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if nbytes < self.MIN_BYTES:
            return np.empty(shape, dtype)
        with self._lock:
            blocks = self._free.get(nbytes)
            block = blocks.pop() if blocks else None
            if block is not None:
                self._free_bytes -= nbytes
        if block is None:
            block = np.empty(nbytes, np.uint8)
        lease = _Lease(block, shape, dtype)
        weakref.finalize(lease, self._give_back, block)
        return np.asarray(lease)

    def _give_back(self, block: np.ndarray) -> None:
        with self._lock:
            if self._free_bytes + block.nbytes <= self.max_free_bytes:
                self._free.setdefault(block.nbytes, []).append(block)
                self._free_bytes += block.nbytes

    def clear(self) -> None:
        """Return the pooled memory to the system."""
        with self._lock:
            self._free.clear()
            self._free_bytes = 0


workspace = _BufferPool()
