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


def _timestamp_py() -> int:
    import time

    return time.perf_counter_ns()


if _DISABLED:
    timestamp = _timestamp_py
else:
    from llvmlite import ir as _ir
    from numba import types as _types
    from numba.extending import intrinsic as _intrinsic

    @_intrinsic
    def _readcyclecounter(typingctx):
        def codegen(context, builder, signature, args):
            fn = builder.module.declare_intrinsic("llvm.readcyclecounter", [],
                                                  _ir.FunctionType(_ir.IntType(64), []))
            return builder.call(fn, [])
        return _types.int64(), codegen

    @numba.njit(cache=True, nogil=True)
    def timestamp():
        """A cycle counter (``rdtsc`` on x86) for profiling inside kernels; ticks, not seconds."""
        return _readcyclecounter()
