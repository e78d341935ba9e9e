"""Where compiled kernels are cached, and what the compile watch sees.

Each check runs in a fresh interpreter with its own home and cache folders: Numba decides
where a function caches when the function is decorated, at import.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fasttn

PACKAGE = Path(fasttn.__file__).resolve().parent


def _cache_files_in_package():
    """``{path: mtime}`` of every Numba cache file under the package."""
    return {str(p): p.stat().st_mtime_ns for p in PACKAGE.rglob("*.nb[ic]")}


def _run(code: str, tmp_path: Path, **env_extra) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "FASTTN_CACHE_DIR", "XDG_CACHE_HOME",
                        "FASTTN_DISABLE_JIT", "NUMBA_DISABLE_JIT")}
    env.update(HOME=str(tmp_path / "home"), **env_extra)
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


# Compiles a small kernel (fasttn's cycle counter) and lists where every kernel of the
# imported modules caches (the locator is fixed at decoration, so this needs no compiling).
_PROBE = """
import importlib, json, pkgutil, sys
import numba
from numba.core.registry import CPUDispatcher
import fasttn
from fasttn._numba import timestamp
timestamp()
for info in pkgutil.walk_packages(fasttn.__path__, "fasttn."):
    if any(part in info.name for part in ("cuda", "torch")):
        continue  # optional dependencies; no CPU kernels there
    importlib.import_module(info.name)
paths = {}
for name, mod in list(sys.modules.items()):
    if not name.startswith("fasttn"):
        continue
    for attr, obj in vars(mod).items():
        if isinstance(obj, CPUDispatcher):
            paths[name + "." + attr] = getattr(obj._cache, "_cache_path", None)
print(json.dumps(paths))
"""


def test_kernels_cache_in_the_user_folder_never_in_the_package(tmp_path):
    before = _cache_files_in_package()
    out = _run(_PROBE, tmp_path, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "xdg" / "fasttn" / "numba"
    paths = json.loads(out.stdout.splitlines()[-1])
    assert len(paths) > 50  # every module's kernels, not just the one compiled
    outside = {k: v for k, v in paths.items() if v is None or not v.startswith(str(folder))}
    assert not outside, f"kernels caching elsewhere than {folder}: {outside}"
    assert list(folder.rglob("_numba.timestamp-*.nbi")), "the compiled kernel was not cached"
    assert list(folder.rglob("_numba.timestamp-*.nbc"))
    assert _cache_files_in_package() == before


def test_fasttn_cache_dir_and_home_defaults(tmp_path):
    out = _run(_PROBE, tmp_path, FASTTN_CACHE_DIR=str(tmp_path / "mine"))
    assert out.returncode == 0, out.stderr
    assert list((tmp_path / "mine" / "numba").rglob("_numba.timestamp-*.nbi"))
    out = _run(_PROBE, tmp_path)
    assert out.returncode == 0, out.stderr
    assert list((tmp_path / "home" / ".cache" / "fasttn" / "numba").rglob("*.nbi"))


def test_numba_cache_dir_set_by_the_user_is_kept(tmp_path):
    before = _cache_files_in_package()
    out = _run(_PROBE, tmp_path, NUMBA_CACHE_DIR=str(tmp_path / "numba"),
               XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert out.returncode == 0, out.stderr
    assert list((tmp_path / "numba").rglob("_numba.timestamp-*.nbi"))
    assert not (tmp_path / "xdg" / "fasttn" / "numba").exists()
    assert _cache_files_in_package() == before


def test_unwritable_cache_folder_warns_once_and_compiles(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")  # a file where the folder would go: unwritable even for root
    before = _cache_files_in_package()
    out = _run(_PROBE, tmp_path, XDG_CACHE_HOME=str(blocker))
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("cannot write the kernel cache") == 1, out.stderr
    paths = json.loads(out.stdout.splitlines()[-1])
    assert all(v is None for v in paths.values())  # no cache at all, not the package's
    assert _cache_files_in_package() == before


def test_compile_watch_counts_compilations_and_gives_one_notice(tmp_path):
    code = """
import numba
from fasttn._numba import compile_watch, njit, COMPILE_NOTICE
import sys

@numba.njit
def f(x):
    return x + 1

@numba.njit
def g(x):
    return 2 * x

with compile_watch() as outer:
    with compile_watch() as inner:
        f(1)
    g(1.5)
    f(2)  # compiled already: not counted
with compile_watch(notice=False) as quiet:
    g(2)
print(outer.count, inner.count, quiet.count)
"""
    out = _run(code, tmp_path, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "1", "1"]
    assert out.stderr.count("compiling kernels for first use") == 1, out.stderr


@pytest.mark.skipif(os.environ.get("FASTTN_DISABLE_JIT", "") not in ("", "0"),
                    reason="no compilation without the JIT")
def test_compile_watch_ignores_kernels_loaded_from_the_cache(tmp_path):
    code = """
from fasttn._numba import compile_watch, timestamp
with compile_watch(notice=False) as w:
    timestamp()
print(w.count)
"""
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    first = _run(code, tmp_path, **env)
    second = _run(code, tmp_path, **env)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.split() == ["1"] and second.stdout.split() == ["0"]
