"""Image sources: MNIST and Fashion-MNIST from IDX files, and the scikit-learn 8x8 digits.

Nothing here downloads; see :mod:`fasttn.data.download` for the explicit, checksummed download.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np

from .errors import DatasetError, DatasetNotFoundError
from .idx import idx_bytes, load_idx
from .registry import IMAGE_FILES, LABEL_FILES, dataset_info, dataset_locations
from .transforms import normalize_images, resize_images
from .._validate import check_choice

FILE_SPLITS = ("train", "test")


def _existing(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def find_dataset_files(name: str, split: str = "train",
                       data_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Paths of the image and label IDX files of one split (raw or ``.gz``).

    Returns
    -------
    (images_path, labels_path)

    Raises
    ------
    DatasetNotFoundError
        Listing every directory searched (see :func:`dataset_locations`) and how to get the data.
    """
    info = dataset_info(name)
    split = check_choice("split", split, FILE_SPLITS)
    looked = dataset_locations(info.name, data_dir)
    for directory in looked:
        images, labels = (_existing(directory, IMAGE_FILES[split]),
                          _existing(directory, LABEL_FILES[split]))
        if images is not None and labels is not None:
            return images, labels
    raise DatasetNotFoundError(
        f"{info.name} ({split} split): found no {IMAGE_FILES[split]}[.gz] with "
        f"{LABEL_FILES[split]}[.gz] in any of: {', '.join(str(d) for d in looked)}. "
        f"To get it: {info.how_to_get}.")


def load_idx_pair(images_path: str | os.PathLike, labels_path: str | os.PathLike, *,
                  n_classes: int | None = None,
                  count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load an image IDX file and its label IDX file (MNIST, Fashion-MNIST, EMNIST layout).

    Parameters
    ----------
    images_path, labels_path : IDX files, raw or gzipped.
    n_classes : if given, labels must lie in ``[0, n_classes)``.
    count : if given, the number of images both files must declare.

    Returns
    -------
    images : (n, H, W) uint8, as stored (EMNIST stores its images transposed).
    labels : (n,) int64.

    Raises
    ------
    DatasetError
        Any check of :func:`load_idx`, differing lengths, or labels out of range.
    """
    images = load_idx(images_path, ndim=3, shape=(count, None, None))
    labels = load_idx(labels_path, ndim=1, shape=(count,))
    if images.dtype != np.uint8 or labels.dtype.kind not in "iu":
        raise DatasetError(f"{images_path} / {labels_path}: expected uint8 images and integer "
                           f"labels, got {images.dtype} and {labels.dtype}")
    if len(images) != len(labels):
        raise DatasetError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                           f"{len(labels)} labels: the files do not belong together")
    labels = labels.astype(np.int64)
    if n_classes is not None and labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DatasetError(f"{labels_path}: expected labels in [0, {n_classes}), got values in "
                           f"[{labels.min()}, {labels.max()}]")
    return images, labels


def _check_content(path: Path, array: np.ndarray, expected: str | None) -> None:
    """Compare the SHA-256 of the decompressed IDX bytes with the known one, when known."""
    if expected is None:
        return
    digest = hashlib.sha256(idx_bytes(array)).hexdigest()
    if digest != expected:
        raise DatasetError(f"{path}: corrupt: SHA-256 of its decompressed content is {digest}, "
                           f"expected {expected}; copy or download it again")


@functools.lru_cache(maxsize=4)
def _cached_split(images_path: Path, labels_path: Path, stamp: tuple, name: str,
                  split: str, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    info = dataset_info(name)
    images, labels = load_idx_pair(images_path, labels_path, n_classes=len(info.class_names))
    if images.shape != (info.counts[split], *info.image_shape):
        raise DatasetError(f"{images_path}: expected {info.name} {split} images of shape "
                           f"{(info.counts[split], *info.image_shape)}, got {images.shape}")
    if verify:
        _check_content(images_path, images, info.content_sha256.get(IMAGE_FILES[split]))
        _check_content(labels_path, labels.astype(np.uint8),
                       info.content_sha256.get(LABEL_FILES[split]))
    images.setflags(write=False)  # shared by every caller through the cache
    labels.setflags(write=False)
    return images, labels


def load_idx_split(name: str, split: str = "train", data_dir: str | os.PathLike | None = None,
                   verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Raw ``(uint8 images (n, 28, 28), int64 labels (n,))`` of one file split, read-only.

    Checks the shape against the known size of the dataset and, with ``verify``, the content
    against its known SHA-256 where the registry has one (Fashion-MNIST). Results are cached
    per file, so the needle generator and the loaders share one copy.
    """
    info = dataset_info(name)
    split = check_choice("split", split, FILE_SPLITS)
    images_path, labels_path = find_dataset_files(info.name, split, data_dir)
    stamp = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in (images_path, labels_path))
    return _cached_split(images_path.resolve(), labels_path.resolve(), stamp, info.name, split,
                         bool(verify))


def _load_named(name: str, split: str, data_dir, size, normalize: str,
                resize_method: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_idx_split(name, split, data_dir)
    if size is not None:
        images = resize_images(images, size, method=resize_method)  # float32, 0..255
    return normalize_images(images, normalize), labels.copy()


def load_mnist(split: str = "train", data_dir: str | os.PathLike | None = None,
               size: int | tuple[int, int] | None = None, normalize: str = "unit",
               resize_method: str = "bilinear") -> tuple[np.ndarray, np.ndarray]:
    """MNIST from its IDX files (no download; see ``fasttn data download mnist``).

    Parameters
    ----------
    split : ``"train"`` (60,000 images) or ``"test"`` (10,000).
    data_dir : directory holding the files; otherwise ``$FASTTN_DATA_DIR``, the system
        locations and the download cache are searched (:func:`dataset_locations`).
    size : resize to ``size x size`` (or ``(h, w)``), e.g. 16 as the q-CNN and MERA papers do.
    normalize : ``"unit"`` [0, 1] (default), ``"symmetric"`` [-1, 1] or ``"none"`` (0..255).
    resize_method : ``"bilinear"`` (antialiased) or ``"area"``; see :func:`resize_images`.

    Returns
    -------
    X : (n, H, W) float32.
    y : (n,) int64 in 0..9.

    Raises
    ------
    DatasetNotFoundError, DatasetError
    """
    return _load_named("mnist", split, data_dir, size, normalize, resize_method)


def load_fashion_mnist(split: str = "train", data_dir: str | os.PathLike | None = None,
                       size: int | tuple[int, int] | None = None, normalize: str = "unit",
                       resize_method: str = "bilinear") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST from its IDX files; as :func:`load_mnist`.

    Found without arguments where Debian's ``dataset-fashion-mnist`` installs it
    (``/usr/share/datasets/fashion-mnist``). Its content is checked against known SHA-256 sums.
    Class names: ``fasttn.data.DATASETS["fashion-mnist"].class_names``.
    """
    return _load_named("fashion-mnist", split, data_dir, size, normalize, resize_method)


def load_digits(size: int | tuple[int, int] | None = None, normalize: str = "unit",
                resize_method: str = "bilinear") -> tuple[np.ndarray, np.ndarray]:
    """The scikit-learn 8x8 digits (1,797 images, always available, no file needed).

    Parameters
    ----------
    size : resize from 8x8 to ``size x size`` (or ``(h, w)``).
    normalize : ``"unit"`` (0..16 scaled to [0, 1], default), ``"symmetric"`` [-1, 1] or
        ``"none"`` (the raw 0..16 counts).

    Returns
    -------
    X : (1797, H, W) float32.
    y : (1797,) int64 in 0..9.
    """
    from sklearn.datasets import load_digits as _sk_load_digits  # lazy: keeps `import fasttn` light

    check_choice("normalize", normalize, ("unit", "symmetric", "none"))
    bunch = _sk_load_digits()
    X = bunch.images.astype(np.float32)
    if size is not None:
        X = resize_images(X, size, method=resize_method)
    if normalize == "unit":
        X = X / np.float32(16.0)
    elif normalize == "symmetric":
        X = X / np.float32(8.0) - np.float32(1.0)
    return X, bunch.target.astype(np.int64)
