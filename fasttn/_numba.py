"""The project's one ``njit``: cached to disk, fastmath off where exactness matters.

Compiled kernels are cached in the per-user folder ``numba`` under
:func:`fasttn._cache.user_cache_dir` (``~/.cache/fasttn/numba`` by default), never in the
``__pycache__`` folders of the installed package: files Numba leaves there survive a
reinstall, and a ``site-packages/fasttn`` holding nothing else then shadows an editable
install as an empty namespace package. ``NUMBA_CACHE_DIR``, when set, is left to Numba.
When the folder cannot be written, kernels compile in every process (one warning says so).

``FASTTN_DISABLE_JIT=1`` runs every kernel as plain Python (slow; for debugging).

:class:`compile_watch` notices Numba compiling (not loading from the cache): the fit loop
and the command line say on screen when the first use of a kernel stalls for compilation,
and keep that time out of their progress estimates.
"""
from __future__ import annotations

import os
import sys
import tempfile
import threading
import warnings
from typing import List, Optional

import numba

_DISABLED = os.environ.get("FASTTN_DISABLE_JIT", "") not in ("", "0")

_CACHE_LOCK = threading.Lock()
_CACHE_DIR: Optional[str] = None  # resolved on the first decoration
_CACHE_RESOLVED = False
_CACHE_PROBLEM = ""  # why kernels are not cached, when they are not


def _cache_dir() -> Optional[str]:
    """The folder fasttn's kernels cache into; ``""`` when ``NUMBA_CACHE_DIR`` (Numba's own
    setting) decides, ``None`` when no writable folder is available."""
    global _CACHE_DIR, _CACHE_RESOLVED, _CACHE_PROBLEM
    if _CACHE_RESOLVED:
        return _CACHE_DIR
    if numba.config.CACHE_DIR:
        _CACHE_DIR = ""
    else:
        from ._cache import user_cache_dir

        path = os.path.join(user_cache_dir(), "numba")
        try:
            os.makedirs(path, exist_ok=True)
            tempfile.TemporaryFile(dir=path).close()  # Numba's own test of a cache folder
            _CACHE_DIR = path
        except OSError as exc:
            # Numba would fall back to the package's __pycache__; compile every time instead
            _CACHE_DIR = None
            _CACHE_PROBLEM = f"cannot write the kernel cache {path!r} ({exc})"
            warnings.warn(f"fasttn: {_CACHE_PROBLEM}; kernels compile in every process. Set "
                          "FASTTN_CACHE_DIR (or NUMBA_CACHE_DIR) to a writable folder.",
                          RuntimeWarning, stacklevel=4)
    _CACHE_RESOLVED = True
    return _CACHE_DIR


def _compile(fn, **options):
    """``numba.njit(**options)(fn)`` whose disk cache is fasttn's folder.

    Numba places a function's cache when its dispatcher is created (``cache=True`` makes
    the locator then, from ``numba.config.CACHE_DIR``), so the setting is swapped in for
    that moment only: the user's own cached functions keep Numba's default place.
    """
    with _CACHE_LOCK:
        folder = _cache_dir()
        if folder is None:
            return numba.njit(cache=False, **options)(fn)
        if folder == "":
            return numba.njit(cache=True, **options)(fn)
        saved = numba.config.CACHE_DIR
        numba.config.CACHE_DIR = folder
        try:
            return numba.njit(cache=True, **options)(fn)
        finally:
            numba.config.CACHE_DIR = saved


def njit(*args, parallel: bool = False, fastmath: bool = False, **kwargs):
    """``numba.njit`` cached to disk (see the module notes); ``parallel`` opts in to
    ``prange`` threading."""
    def wrap(fn):
        if _DISABLED:
            return fn
        return _compile(fn, parallel=parallel, fastmath=fastmath, nogil=True, **kwargs)

    if args and callable(args[0]):
        return wrap(args[0])
    return wrap


prange = numba.prange


# -- noticing compilation --------------------------------------------------------------
COMPILE_NOTICE = "fasttn: compiling kernels for first use (about 20-60 s, cached afterwards)..."


class compile_watch:
    """Context that counts the Numba compilations starting inside it.

    Loading a kernel from the disk cache is not a compilation; only a real one (tens of
    seconds for the larger kernels) counts. With ``notice``, the first compilation writes
    :data:`COMPILE_NOTICE` (through ``tqdm.write``, so that progress bars stay intact) to
    ``file``, standard error by default, unless an enclosing watch already did: a command
    that runs several fits says it once. Watches see compilations from every thread.

    Attributes
    ----------
    count : int
        Compilations started inside the block so far (a kernel and the functions it calls
        count one each).
    """

    _active: List["compile_watch"] = []
    _lock = threading.Lock()
    _listener = None

    def __init__(self, notice: bool = True, file=None):
        self.notice = notice
        self.file = file
        self.count = 0
        self.announced = False

    def __enter__(self) -> "compile_watch":
        with compile_watch._lock:
            if compile_watch._listener is None:
                compile_watch._listener = _register_listener()
            enclosing = compile_watch._active
            # a notice already given by an enclosing watch stands for this block too
            self.announced = any(w.announced for w in enclosing)
            compile_watch._active = enclosing + [self]
        return self

    def __exit__(self, *exc) -> bool:
        with compile_watch._lock:
            compile_watch._active = [w for w in compile_watch._active if w is not self]
        return False

    @classmethod
    def _on_compile(cls) -> None:
        with cls._lock:
            watches = list(cls._active)
            for w in watches:
                w.count += 1
            speaker = None
            if not any(w.announced for w in watches):
                speaker = next((w for w in watches if w.notice), None)
                if speaker is not None:
                    for w in watches:
                        w.announced = True
        if speaker is not None:
            from tqdm.auto import tqdm

            line = COMPILE_NOTICE
            if _CACHE_PROBLEM:
                line = line.replace("cached afterwards", "not cached: " + _CACHE_PROBLEM)
            tqdm.write(line, file=speaker.file if speaker.file is not None else sys.stderr)


def _register_listener():
    from numba.core import event

    class _CompileListener(event.Listener):
        def on_start(self, ev):
            compile_watch._on_compile()

        def on_end(self, ev):
            pass

    listener = _CompileListener()
    event.register("numba:compile", listener)
    return listener


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

    @njit
    def timestamp():
        """A cycle counter (``rdtsc`` on x86) for profiling inside kernels; ticks, not seconds."""
        return _readcyclecounter()
