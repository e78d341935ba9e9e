"""The project's one ``njit``: cached to disk, fastmath off where exactness matters.

``FASTTN_DISABLE_JIT=1`` runs every kernel as plain Python (slow; for debugging).
"""
from __future__ import annotations

import os

import numba

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
