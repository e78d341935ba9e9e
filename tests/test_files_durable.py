"""Writes that lose nothing: concurrent dataset writers, file modes, symbolic links, fsync
and temporaries left by killed writers."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import fasttn._atomic as atomic
from fasttn._atomic import atomic_file
from fasttn.data import load_needle_dataset, needle_mnist, write_needle_dataset
from fasttn.data.needle import NeedleMNIST


def _verify(path, ds):
    """The cache at ``path`` holds exactly the images and labels of ``ds``."""
    cache = load_needle_dataset(path)
    X, y = ds.arrays()
    np.testing.assert_array_equal(cache.images, np.rint(X * 255).astype(np.uint8))
    np.testing.assert_array_equal(cache.labels, y)


# ------------------------------------------------------------------- concurrent writers
def test_a_writer_that_finishes_second_fails_and_keeps_the_first_dataset(tmp_path, monkeypatch):
    """Writer B runs to completion while writer A is generating: A must fail, B's dataset
    must survive (A used to move it aside, delete it and report success)."""
    out = tmp_path / "x"
    ds_a, ds_b = needle_mnist(size=64, count=8, seed=1), needle_mnist(size=64, count=6, seed=2)
    original = NeedleMNIST._batch
    state = {"ran": False}

    def batch_then_race(self, indices):
        if self is ds_a and not state["ran"]:
            state["ran"] = True
            write_needle_dataset(out, ds_b, progress=False)  # the other writer finishes
        return original(self, indices)

    monkeypatch.setattr(NeedleMNIST, "_batch", batch_then_race)
    with pytest.raises(FileExistsError, match="another process"):
        write_needle_dataset(out, ds_a, progress=False)
    monkeypatch.setattr(NeedleMNIST, "_batch", original)
    _verify(out, ds_b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_two_concurrent_cli_writers_exactly_one_succeeds(tmp_path):
    out = tmp_path / "x"
    cmd = [sys.executable, "-m", "fasttn.cli", "data", "needle", "--size", "64", "--count",
           "48", "--no-progress", "--batch-size", "4", "--out", str(out)]
    procs = [subprocess.Popen(cmd + ["--seed", str(s)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for s in (1, 2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    winner = 1 if results[0][0] == 0 else 2
    loser_err = results[1 if winner == 1 else 0][2]
    assert "out_dir:" in loser_err and str(out) in loser_err
    _verify(out, needle_mnist(size=64, count=48, seed=winner))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_an_empty_out_directory_is_used(tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    ds = needle_mnist(size=64, count=4)
    write_needle_dataset(out, ds, progress=False)
    _verify(out, ds)
    with pytest.raises(FileExistsError, match="not empty"):
        write_needle_dataset(out, ds, progress=False)
    (tmp_path / "f").write_text("")
    with pytest.raises(FileExistsError, match="not a directory"):
        write_needle_dataset(tmp_path / "f", ds, progress=False)


def test_killed_dataset_writer_leaves_nothing_behind_the_next_write(tmp_path):
    """A writer killed mid-generation leaves its temporary directory; the next write to
    the same target removes it (and only a dead writer's)."""
    out = tmp_path / "x"
    script = textwrap.dedent(f"""
        import sys, time
        from fasttn.data import needle_mnist, write_needle_dataset
        from fasttn.data.needle import NeedleMNIST
        original = NeedleMNIST._batch
        def slow(self, idx):
            print("generating", flush=True)
            time.sleep(60)
        NeedleMNIST._batch = slow
        write_needle_dataset({str(out)!r}, needle_mnist(size=64, count=4), progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "generating"
        live = [p for p in tmp_path.iterdir() if p.name.startswith(".x.tmp-")]
        assert len(live) == 1
        atomic.remove_stale_temporaries(out)  # a live writer's temporary is kept
        assert live[0].exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert live[0].exists()  # nothing removes it at the kill
    ds = needle_mnist(size=64, count=4, seed=3)
    write_needle_dataset(out, ds, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]
    _verify(out, ds)


# ------------------------------------------------------------------------ atomic files
def test_atomic_file_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(b"old")
    os.chmod(path, 0o600)
    with atomic_file(path) as tmp:
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_atomic_file_writes_through_a_symbolic_link(tmp_path):
    real = tmp_path / "store" / "m.bin"
    real.parent.mkdir()
    real.write_bytes(b"old")
    link = tmp_path / "m.bin"
    link.symlink_to(real)
    with atomic_file(link) as tmp:
        tmp.write_bytes(b"new")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_bytes() == b"new"


def test_atomic_file_fsyncs_the_file_before_the_rename_and_then_the_directory(tmp_path,
                                                                              monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode)))
        return real_fsync(fd)

    def replace(a, b):
        events.append(("replace", None))
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    with atomic_file(tmp_path / "a") as tmp:
        tmp.write_bytes(b"x")
    assert events == [("fsync", False), ("replace", None), ("fsync", True)]


def test_a_killed_save_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    path = tmp_path / "m.npz"
    script = textwrap.dedent(f"""
        import time
        from fasttn._atomic import atomic_file
        with atomic_file({str(path)!r}) as tmp:
            tmp.write_bytes(b"partial")
            print("writing", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        live = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert len(live) == 1
        with atomic_file(path) as tmp:  # a concurrent writer keeps the other's temporary
            tmp.write_bytes(b"one")
        assert live[0].exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with atomic_file(path) as tmp:
        tmp.write_bytes(b"two")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]
    assert path.read_bytes() == b"two"
