"""Data layer: IDX loaders (MNIST, Fashion-MNIST), scikit-learn digits, and NeedleMNIST.

Loaders
    :func:`load_idx`, :func:`load_idx_pair`, :func:`load_mnist`, :func:`load_fashion_mnist`,
    :func:`load_digits`, :func:`resize_images`, :func:`normalize_images`. Nothing downloads
    unless :func:`download_dataset` (``fasttn data download``) is called.
NeedleMNIST
    :func:`needle_mnist` builds a :class:`NeedleMNIST` whose images are generated on demand from
    their index (deterministic, streamable with background prefetch);
    :func:`write_needle_dataset` / :func:`load_needle_dataset` store and memory-map a cache.
"""
from __future__ import annotations

from .cache import NeedleDataset, load_needle_dataset, write_needle_dataset
from .download import download_dataset
from .errors import DatasetError, DatasetNotFoundError
from .idx import load_idx, save_idx
from .needle import NeedleLayout, NeedleMNIST, needle_mnist, noise_digit_count
from .registry import DATA_DIR_ENV, DATASETS, dataset_locations
from .sources import (find_dataset_files, load_digits, load_fashion_mnist, load_idx_pair,
                      load_idx_split, load_mnist)
from .splits import DigitSource, digit_source
from .tasks import TASKS, load_task, select_classes
from .transforms import normalize_images, random_shift, resize_images

__all__ = [
    "DATASETS", "DATA_DIR_ENV", "TASKS", "load_task", "DatasetError", "DatasetNotFoundError", "DigitSource",
    "NeedleDataset", "NeedleLayout", "NeedleMNIST", "dataset_locations", "digit_source",
    "download_dataset", "find_dataset_files", "load_digits", "load_fashion_mnist", "load_idx",
    "load_idx_pair", "random_shift", "load_idx_split", "load_mnist", "load_needle_dataset", "needle_mnist",
    "noise_digit_count", "normalize_images", "resize_images", "save_idx", "select_classes",
    "write_needle_dataset",
]
