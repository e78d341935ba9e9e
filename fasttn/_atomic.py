"""Atomic writes: build a temporary sibling, then rename it over the destination.

What every write here guarantees:

* a reader sees the old content or the new one, never half of either (``os.replace``);
* the new content is on disk before the rename makes it visible (``fsync`` of the file,
  then of the directory, so a power cut cannot leave an empty file under the final name);
* an existing destination keeps its permission bits, and a symbolic link keeps pointing at
  its target, which is the file replaced (the link itself is left alone);
* a temporary left by a process that was killed mid-write (nothing removes it then) is
  removed by the next write to the same destination. A writer holds an ``flock`` on its
  temporary for as long as it works on it, so only temporaries whose writer is gone are
  removed, never those of a concurrent writer.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

# Temporaries of a destination NAME are ".NAME.<random>.tmp" (files) and
# ".NAME.tmp-<random>" (directories); a directory's lock is this file inside it.
_DIR_LOCK = ".lock"


def _umask() -> int:
    """The process umask, read without changing it where Linux allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: read by setting (briefly process-wide)
    os.umask(mask)
    return mask


def publish_mode(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a temporary file or directory the permissions a plain ``open``/``mkdir`` would have.

    ``tempfile`` creates them private (0600 / 0700); a finished dataset or figure should not be.
    """
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def resolve_target(path: str | os.PathLike) -> Path:
    """The file a write to ``path`` replaces: ``path`` itself, or where its chain of
    symbolic links ends (so that the link survives the write and its target is updated)."""
    path = Path(path)
    if path.is_symlink():
        return Path(os.path.realpath(path))
    return path


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be
    opened, e.g. on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename still happened
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's data to disk (it may have been written and closed by a caller)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock(fd: int) -> bool:
    """Take an exclusive ``flock`` on ``fd`` without waiting; False if another holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return False  # a file system without flock: never treat a temporary as stale
    return True


def remove_stale_temporaries(target: str | os.PathLike) -> list:
    """Remove the temporaries of ``target`` whose writer has died; return their paths.

    A temporary is stale when nobody holds its lock: the kernel drops a lock when its
    process ends, however it ends. A directory temporary still being created (no lock
    file yet) is left for the next write.
    """
    target = Path(target)
    removed = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    file_prefix, dir_prefix = f".{target.name}.", f".{target.name}.tmp-"
    for entry in entries:
        name = entry.name
        is_dir = entry.is_dir(follow_symlinks=False)
        if is_dir and name.startswith(dir_prefix):
            lock_path = os.path.join(entry.path, _DIR_LOCK)
        elif (not is_dir and entry.is_file(follow_symlinks=False)
              and name.startswith(file_prefix) and name.endswith(".tmp")
              and not name.startswith(dir_prefix)):
            lock_path = entry.path
        else:
            continue
        try:
            fd = os.open(lock_path, os.O_RDONLY)
        except OSError:
            continue  # vanished, or a directory whose writer has not locked it yet
        try:
            if not _lock(fd):
                continue  # a live writer
            if is_dir:
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _keep_mode(tmp: str | os.PathLike, target: Path) -> None:
    """Give ``tmp`` the permission bits of the file it replaces, or those of a new file."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        publish_mode(tmp)
        return
    os.chmod(tmp, mode)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, else vanishes.

    The caller writes the temporary (and closes it) inside the block. On success the file is
    flushed to disk, takes the mode of the file it replaces (or a new file's), and is renamed
    over ``path`` (over the target of ``path`` where ``path`` is a symbolic link).
    """
    target = resolve_target(path)
    remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    _lock(fd)  # held until we are done: marks the temporary as live for other writers
    try:
        yield Path(tmp)
        fsync_file(tmp)
        _keep_mode(tmp, target)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_directory_temp(target: str | os.PathLike) -> Iterator[Path]:
    """A locked temporary directory next to ``target``, removed on leaving unless the
    caller has renamed it into place; stale temporaries of ``target`` are removed first."""
    target = Path(target)
    remove_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    fd = os.open(tmp / _DIR_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    _lock(fd)
    try:
        yield tmp
    finally:
        os.close(fd)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
