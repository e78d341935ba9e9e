"""On-disk NeedleMNIST cache: uint8 ``.npy`` images read back memory-mapped.

A cache directory holds ``images.npy`` (n, S, S) uint8 (intensity x 255, rounded: lossless for
8-bit sources such as MNIST), ``labels.npy`` (n,) int64, ``needle_boxes.npy`` (n, 4) int64
``(row, col, height, width)`` of each needle (-1 for negatives) and ``metadata.json``. It is
written into a temporary sibling directory and renamed into place, so a directory with the
final name is always complete.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import (_DIR_LOCK, atomic_directory_temp, fsync_dir, fsync_file,
                       publish_mode)
from .errors import DatasetError, DatasetNotFoundError
from .needle import NeedleMNIST, needle_mnist
from .stream import BatchedDataset
from .._validate import check_positive_int

FORMAT = "fasttn-needle-cache/1"
_FILES = ("images.npy", "labels.npy", "needle_boxes.npy", "metadata.json")


def _write_images(path: Path, dataset: NeedleMNIST, batch_size: int, progress: bool | None
                  ) -> None:
    """Stream the images to ``path`` batch by batch (plain writes, so memory stays bounded)."""
    from tqdm.auto import tqdm  # lazy: only writers need a progress bar

    n, size = len(dataset), dataset.size
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|u1", "fortran_order": False, "shape": (n, size, size)})
        bar = tqdm(total=n, unit="img", desc=f"needle {size}x{size}",
                   disable=(not progress) if progress is not None else None)
        with bar:
            for X, _ in dataset.batches(batch_size, prefetch=2):
                f.write(np.rint(X * 255.0).astype(np.uint8).tobytes())
                bar.update(len(X))
        f.flush()
        os.fsync(f.fileno())


def write_needle_dataset(out_dir: str | os.PathLike, dataset: NeedleMNIST | None = None, *,
                         overwrite: bool = False, batch_size: int = 32,
                         progress: bool | None = None, **needle_kwargs: Any) -> Path:
    """Generate a NeedleMNIST dataset and store it as a memory-mappable cache, atomically.

    Parameters
    ----------
    out_dir : the directory to create (or an empty directory to fill). Its parent must
        exist.
    dataset : the dataset to store; otherwise built by ``needle_mnist(**needle_kwargs)``
        (``size``, ``count``, ``split``, ``seed``, ``source``, ``target``, ...).
    overwrite : replace an existing ``out_dir`` (the old one is removed only after the new
        one is complete).
    batch_size : images generated per batch while writing.
    progress : show a tqdm bar (None: only on a terminal).

    Returns
    -------
    The path of the written directory. Read it with :func:`load_needle_dataset`.

    Raises
    ------
    FileExistsError
        ``out_dir`` exists, is not an empty directory and ``overwrite`` is False; or
        another writer finished it first (checked atomically at the end: of concurrent
        writers exactly one succeeds, and nothing finished is ever deleted).
    """
    out_dir = Path(out_dir)
    if dataset is None:
        dataset = needle_mnist(**needle_kwargs)
    elif needle_kwargs:
        raise TypeError(f"pass either dataset or needle_mnist arguments, not both (got "
                        f"{sorted(needle_kwargs)})")
    batch_size = check_positive_int("batch_size", batch_size)
    if not overwrite:
        _check_free(out_dir)
    if not out_dir.parent.is_dir():
        raise FileNotFoundError(f"out_dir: the parent directory {out_dir.parent} does not exist")
    with atomic_directory_temp(out_dir) as tmp:
        _write_images(tmp / "images.npy", dataset, batch_size, progress)
        np.save(tmp / "labels.npy", dataset.labels)
        np.save(tmp / "needle_boxes.npy", dataset.needle_boxes())
        meta = {"format": FORMAT, **dataset.metadata()}
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / _DIR_LOCK).unlink()  # the lock stays held through its open descriptor
        for item in tmp.iterdir():
            fsync_file(item)
            publish_mode(item)
        publish_mode(tmp, directory=True)
        _publish(tmp, out_dir, overwrite)
    fsync_dir(out_dir.parent)
    return out_dir


def _check_free(out_dir: Path) -> None:
    """Refuse an ``out_dir`` that holds anything (an empty directory is used)."""
    if out_dir.is_dir() and not out_dir.is_symlink():
        if next(os.scandir(out_dir), None) is None:
            return
        what = "already exists and is not empty"
    elif os.path.lexists(out_dir):
        what = "already exists and is not a directory"
    else:
        return
    raise FileExistsError(f"out_dir: {out_dir} {what}; choose another directory or "
                          f"overwrite it (overwrite=True, --overwrite)")


def _publish(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` to ``out_dir``.

    ``rename`` of a directory replaces only a missing or empty destination, atomically: of
    two writers racing for one ``out_dir``, exactly one wins, whatever the timing, and the
    other's data never replaces it (the check at the start cannot promise that alone).
    With ``overwrite`` the current ``out_dir`` is moved aside first and removed only once
    the new one is in place.
    """
    for _ in range(8):  # overwrite: another writer may slip in between aside and rename
        try:
            os.rename(tmp, out_dir)
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
            if not overwrite:
                raise FileExistsError(
                    f"out_dir: {out_dir} was written by another process while this one "
                    f"was generating; it is kept as that process wrote it (pass "
                    f"overwrite=True, --overwrite, to replace it)") from exc
        with atomic_directory_temp(out_dir) as old:
            try:
                os.rename(out_dir, old / "previous")
            except FileNotFoundError:
                pass
            try:
                os.rename(tmp, out_dir)
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
    raise FileExistsError(f"out_dir: {out_dir} keeps being replaced by other writers; "
                          f"gave up")


class NeedleDataset(BatchedDataset):
    """A NeedleMNIST cache read back from disk (see :func:`load_needle_dataset`).

    Attributes
    ----------
    images : (n, S, S) uint8 read-only memory map (intensity x 255).
    labels : (n,) int64.
    needle_boxes : (n, 4) int64, ``(row, col, height, width)`` of each needle, -1 for negatives.
    metadata : dict, as written (size, count, split, seed, source, target, o2i, ...).
    path : the directory.
    """

    def __init__(self, path: Path, images: np.ndarray, labels: np.ndarray,
                 needle_boxes: np.ndarray, metadata: dict[str, Any]) -> None:
        self.path = path
        self.images = images
        self.labels = labels
        self.needle_boxes = needle_boxes
        self.metadata = metadata
        self._image_bytes = int(np.prod(images.shape[1:]))
        self._offset = int(images.offset)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        m = self.metadata
        return (f"NeedleDataset({str(self.path)!r}, size={m['size']}, count={len(self)}, "
                f"split={m['split']!r}, source={m['source']!r}, target={m['target']})")

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    @property
    def o2i(self) -> float:
        return float(self.metadata["o2i"])

    @property
    def noise_digits(self) -> int:
        return int(self.metadata["noise_digits"])

    def _default_shuffle_seed(self) -> int:
        return int(self.metadata.get("seed", 0))

    def _batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Read with pread rather than through the memory map: mapped pages would count
        # towards the process's resident memory for as long as the kernel keeps them.
        raw = np.empty((len(indices),) + self.images.shape[1:], dtype=np.uint8)
        flat = raw.reshape(len(indices), -1)
        fd = os.open(self.path / "images.npy", os.O_RDONLY)
        try:
            for k, i in enumerate(indices):
                got = os.preadv(fd, [flat[k]], self._offset + int(i) * self._image_bytes)
                if got != self._image_bytes:
                    raise DatasetError(f"{self.path / 'images.npy'}: truncated at image {i}")
        finally:
            os.close(fd)
        X = raw.astype(np.float32)
        X *= np.float32(1.0 / 255.0)
        return X, self.labels[indices]


def load_needle_dataset(path: str | os.PathLike) -> NeedleDataset:
    """Open a cache written by :func:`write_needle_dataset` (images memory-mapped, not read).

    Returns
    -------
    NeedleDataset
        Same interface as :class:`NeedleMNIST`: ``ds[i]``, ``len``, ``arrays``, ``batches``.

    Raises
    ------
    DatasetNotFoundError
        The directory or one of its files is missing.
    DatasetError
        A file is unreadable, truncated or inconsistent with the others.
    """
    path = Path(path)
    missing = [name for name in _FILES if not (path / name).is_file()]
    if missing:
        raise DatasetNotFoundError(f"{path}: not a NeedleMNIST cache (missing "
                                   f"{', '.join(missing)}); write one with `fasttn data needle "
                                   f"--out {path}` or write_needle_dataset()")
    metadata = _read_metadata(path / "metadata.json")
    n, size = metadata["count"], metadata["size"]
    # Every array's header is read and checked against the metadata and its file's length
    # before any data is read: nothing is allocated beyond what the files hold.
    offset = _check_npy(path / "images.npy", (n, size, size), "u", itemsize=1)
    images = np.memmap(path / "images.npy", dtype=np.uint8, mode="r", offset=offset,
                       shape=(n, size, size))
    _check_npy(path / "labels.npy", (n,), "iu")
    _check_npy(path / "needle_boxes.npy", (n, 4), "iu")
    try:
        labels = np.load(path / "labels.npy", allow_pickle=False).astype(np.int64)
        boxes = np.load(path / "needle_boxes.npy", allow_pickle=False).astype(np.int64)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable cache file ({exc})") from exc
    # the generator's labels: image 2k holds the needle, 2k + 1 does not
    want = 1 - np.arange(n, dtype=np.int64) % 2
    if not np.array_equal(labels, want):
        bad = int(np.flatnonzero(labels != want)[0])
        raise DatasetError(f"{path / 'labels.npy'}: labels: expected 1 at even and 0 at odd "
                           f"indices ({metadata['n_positive']} positives, "
                           f"{metadata['n_negative']} negatives in metadata.json), got "
                           f"{labels[bad]} at index {bad}")
    if np.any(boxes[want == 0] != -1) or np.any(boxes[want == 1] < 0):
        raise DatasetError(f"{path / 'needle_boxes.npy'}: needle_boxes: expected -1 rows for "
                           f"the negatives (odd indices) and non-negative boxes for the "
                           f"positives")
    return NeedleDataset(path, images, labels, boxes, metadata)


# metadata.json fields a reader relies on: name -> (check, what is expected)
def _is_int(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


_METADATA_FIELDS = {
    "count": (lambda v: _is_int(v, 1), "a positive integer"),
    "size": (lambda v: _is_int(v, 1), "a positive integer"),
    "seed": (lambda v: _is_int(v, 0), "a non-negative integer"),
    "target": (lambda v: _is_int(v, 0), "a non-negative integer"),
    "noise_digits": (lambda v: _is_int(v, 0), "a non-negative integer"),
    "n_positive": (lambda v: _is_int(v, 0), "a non-negative integer"),
    "n_negative": (lambda v: _is_int(v, 0), "a non-negative integer"),
    "split": (lambda v: isinstance(v, str), "a string"),
    "source": (lambda v: isinstance(v, str), "a string"),
    "o2i": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
            and np.isfinite(v) and 0 < v <= 1, "a number in (0, 1]"),
}


def _read_metadata(path: Path) -> dict[str, Any]:
    """``metadata.json``, every field a reader uses checked for its type and range."""
    try:
        text = path.read_text()
        metadata = json.loads(text)
    except (OSError, ValueError, RecursionError) as exc:
        raise DatasetError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(metadata, dict):
        raise DatasetError(f"{path}: expected a JSON object, got a "
                           f"{type(metadata).__name__}")
    if metadata.get("format") != FORMAT:
        raise DatasetError(f"{path}: format: expected {FORMAT!r}, got "
                           f"{metadata.get('format')!r}")
    for name, (ok, what) in _METADATA_FIELDS.items():
        if name not in metadata:
            raise DatasetError(f"{path}: {name}: missing (expected {what})")
        if not ok(metadata[name]):
            raise DatasetError(f"{path}: {name}: expected {what}, got {metadata[name]!r}")
    n = metadata["count"]
    if metadata["n_positive"] + metadata["n_negative"] != n \
            or metadata["n_positive"] != (n + 1) // 2:
        raise DatasetError(f"{path}: n_positive, n_negative: expected {(n + 1) // 2} and "
                           f"{n // 2} for count {n}, got {metadata['n_positive']} and "
                           f"{metadata['n_negative']}")
    return metadata


def _check_npy(path: Path, shape: tuple, kinds: str, itemsize: int | None = None) -> int:
    """Check an ``.npy`` file's header (C order, an element type of ``kinds``, ``shape``)
    and that the file holds exactly that much data; return the data's offset."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                got_shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                got_shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = f.tell()
            length = os.fstat(f.fileno()).st_size
    except (OSError, ValueError, SyntaxError, TypeError) as exc:
        raise DatasetError(f"{path}: not a readable .npy file ({exc})") from exc
    if dtype.kind not in kinds or dtype.hasobject or (itemsize and dtype.itemsize != itemsize):
        raise DatasetError(f"{path}: dtype: expected {_KIND_NAMES[kinds]}, got {dtype}")
    if fortran and len(got_shape) > 1:
        # the images are read by byte offset, image after image: C order only
        raise DatasetError(f"{path}: fortran_order: expected C order (False), got True")
    if tuple(got_shape) != tuple(shape):
        raise DatasetError(f"{path}: shape: expected {tuple(shape)} from metadata.json, got "
                           f"{tuple(got_shape)}")
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if length - offset != need:
        raise DatasetError(f"{path}: expected {need} bytes of data after the header for "
                           f"shape {tuple(shape)}, the file holds {length - offset}"
                           f"{' (truncated)' if length - offset < need else ''}")
    return offset


_KIND_NAMES = {"u": "uint8", "iu": "integers"}
