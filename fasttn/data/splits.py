"""Train / validation / test digit stacks for the NeedleMNIST generator.

MNIST and Fashion-MNIST follow the protocol's TensorFlow ``read_data_sets`` split: validation
is the first 5,000 images of the training file, train the remaining 55,000, test the test file.
The scikit-learn digits (1,797 images, ordered so that classes cycle) are cut contiguously:
train ``[0, 1257)``, validation ``[1257, 1437)``, test ``[1437, 1797)`` (70 / 10 / 20 %).
Arrays the caller passes are used whole, as the split named.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .registry import dataset_info
from .sources import load_digits, load_idx_split
from .._validate import check_choice

SPLITS = ("train", "validation", "test")
SOURCES = ("digits", "mnist", "fashion")

IDX_VALIDATION = 5000  # the protocol's validation_size
DIGITS_BOUNDS = {"train": (0, 1257), "validation": (1257, 1437), "test": (1437, 1797)}
DIGITS_BOX = 20        # sklearn digits are drawn at 20x20 inside a 28x28 frame, as MNIST's are
FRAME = 28


@dataclass(frozen=True)
class DigitSource:
    """The digits one split may draw from.

    Attributes
    ----------
    name : ``"digits"``, ``"mnist"``, ``"fashion"`` or ``"arrays"``.
    split : ``"train"``, ``"validation"`` or ``"test"``.
    images : (n, h, w) float32 in [0, 1], read-only.
    labels : (n,) int64.
    ids : (n,) int64, each image's position in the source's own numbering (for IDX sources:
        the index in the training file, or 60,000 + the index in the test file), so that
        splits can be checked for shared digits.
    class_names : one name per class.
    """

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    class_names: tuple[str, ...]


def check_split(split: str) -> str:
    return check_choice("split", {"val": "validation"}.get(split, split), SPLITS)


def _idx_split(name: str, split: str, data_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    file_split = "test" if split == "test" else "train"
    images, labels = load_idx_split(name, file_split, data_dir)
    if split == "test":
        ids = np.arange(len(images), dtype=np.int64) + dataset_info(name).counts["train"]
        return images, labels, ids
    rows = slice(0, IDX_VALIDATION) if split == "validation" else slice(IDX_VALIDATION, None)
    ids = np.arange(len(images), dtype=np.int64)[rows]
    return images[rows], labels[rows], ids


def _framed_digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits as 28x28 MNIST look-alikes, quantised to 8 bits like MNIST.

    The 8x8 digits fill their box, MNIST digits fill a 20x20 box centred in 28x28; resizing to
    20x20 and padding by 4 gives the same ink footprint and the protocol's 28x28 object size.
    Quantising to 1/255 steps makes the stack identical on every machine (it hides last-bit
    differences of the resizing arithmetic).
    """
    X, y = load_digits(size=DIGITS_BOX)
    pad = (FRAME - DIGITS_BOX) // 2
    X = np.pad(X, ((0, 0), (pad, pad), (pad, pad)))
    X = np.rint(np.clip(X, 0.0, 1.0) * 255.0).astype(np.uint8)
    return X, y


def _check_arrays(source: Any) -> tuple[np.ndarray, np.ndarray]:
    try:
        images, labels = source
    except (TypeError, ValueError) as exc:
        raise TypeError(f"source: expected a name in {list(SOURCES)} or an (images, labels) "
                        f"pair, got {type(source).__name__}") from exc
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 3:
        raise ValueError(f"source images: expected shape (n, h, w), got {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(f"source labels: expected shape ({len(images)},), got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"source labels: expected integer class labels, got {labels.dtype}")
    if images.dtype == np.uint8:
        return images, labels.astype(np.int64)
    if images.dtype.kind != "f":
        raise TypeError(f"source images: expected uint8 (0..255) or float in [0, 1], got "
                        f"{images.dtype}")
    if images.size and not (np.isfinite(images).all() and images.min() >= 0
                            and images.max() <= 1):
        raise ValueError(f"source images: expected float values in [0, 1], got range "
                         f"[{np.nanmin(images)}, {np.nanmax(images)}]")
    return images, labels.astype(np.int64)


def digit_source(source: Any = "digits", split: str = "train",
                 data_dir: str | os.PathLike | None = None) -> DigitSource:
    """The digit stack of one split of a source (see the module docstring for the splits).

    Parameters
    ----------
    source : ``"digits"`` (scikit-learn, always available), ``"mnist"``, ``"fashion"``
        (IDX files, located as by :func:`load_mnist`), or an ``(images, labels)`` pair with
        images (n, h, w) uint8 or float in [0, 1] and integer labels (n,).
    split : ``"train"``, ``"validation"`` (alias ``"val"``) or ``"test"``.
    data_dir : where to look for the IDX files.
    """
    split = check_split(split)
    if isinstance(source, str):
        name = {"fashion-mnist": "fashion", "fashion_mnist": "fashion"}.get(source, source)
        name = check_choice("source", name, SOURCES)
        if name == "digits":
            images, labels = _framed_digits()
            lo, hi = DIGITS_BOUNDS[split]
            images, labels = images[lo:hi], labels[lo:hi]
            ids = np.arange(lo, hi, dtype=np.int64)
            class_names = tuple(str(d) for d in range(10))
        else:
            idx_name = "fashion-mnist" if name == "fashion" else "mnist"
            images, labels, ids = _idx_split(idx_name, split, data_dir)
            class_names = dataset_info(idx_name).class_names
    else:
        name = "arrays"
        images, labels = _check_arrays(source)
        ids = np.arange(len(images), dtype=np.int64)
        class_names = tuple(str(k) for k in range(int(labels.max(initial=-1)) + 1))
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / np.float32(255.0)
    else:
        images = np.array(images, dtype=np.float32)  # a private copy the caller cannot change
    images.setflags(write=False)
    return DigitSource(name=name, split=split, images=images, labels=np.array(labels),
                       ids=ids, class_names=class_names)
