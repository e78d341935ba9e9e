"""The project's one ``njit``: cached to disk, fastmath off where exactness matters.

``FASTTN_DISABLE_JIT=1`` runs every kernel as plain Python (slow; for debugging).
"""
from __future__ import annotations

import os

import numba

# Numba's "omp" layer (picked when a GNU OpenMP runtime is present, e.g. beside PyTorch) made a
# 16x16 q-CNN step 20x slower than "workqueue" on the 2-core machine (533 ms vs 27 ms), and
# collapses further when other processes share the cores. A user's explicit
# NUMBA_THREADING_LAYER wins; the layer is fixed at Numba's first parallel launch. workqueue
# runs one parallel launch at a time, so call fasttn's kernels from one thread.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

_DISABLED = os.environ.get("FASTTN_DISABLE_JIT", "") not in ("", "0")


def njit(*args, parallel: bool = False, fastmath: bool = False, **kwargs):
    """``numba.njit`` with ``cache=True``; ``parallel`` opts in to ``prange`` threading."""
    def wrap(fn):
        if _DISABLED:
            return fn
        return numba.njit(cache=True, parallel=parallel, fastmath=fastmath, nogil=True,
                          **kwargs)(fn)

    if args and callable(args[0]):
        return wrap(args[0])
    return wrap


prange = numba.prange
