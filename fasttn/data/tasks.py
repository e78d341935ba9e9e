"""Ready-made classification tasks: train/test arrays by name, for the CLI and benchmarks."""
from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

from .._validate import check_choice

TASKS = ("digits", "fashion-mnist", "mnist", "needle")
Arrays = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def load_task(name: str, size: Optional[int] = None, n_train: Optional[int] = None,
              n_test: Optional[int] = None, data_dir: Optional[str | os.PathLike] = None,
              seed: int = 0, needle_source: str = "digits", needle_target: int = 3) -> Arrays:
    """``(X_train, y_train, X_test, y_test)`` for a named task, images float32 in [0, 1].

    Parameters
    ----------
    name : {"digits", "fashion-mnist", "mnist", "needle"}
        ``digits``: the scikit-learn 8x8 digits (always available), a stratified 80/20 split
        drawn with ``seed``. ``fashion-mnist`` / ``mnist``: the IDX train and test files.
        ``needle``: NeedleMNIST (target vs not) at canvas ``size`` (default 128), train and
        test splits of the protocol, drawn from ``needle_source``.
    size : int, optional
        Resize to ``size x size`` (the q-CNN paper uses 16 for (Fashion-)MNIST).
    n_train, n_test : int, optional
        Keep only the first examples of each split (``needle``: generate that many; past the
        protocol's length the needles recur with fresh layouts).
    needle_source : {"digits", "mnist", "fashion"}
        Where ``needle`` draws its digits (see :func:`fasttn.data.needle_mnist`).
    needle_target : int
        The needle's class in that source (3: the protocol's digit; for Fashion-MNIST, dress).
    """
    check_choice("name", name, TASKS)
    if name == "digits":
        from sklearn.model_selection import train_test_split

        from .sources import load_digits

        X, y = load_digits(size=size)
        X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, stratify=y,
                                                  random_state=seed)
    elif name == "needle":
        from .needle import needle_mnist

        side = size or 128
        kw = dict(size=side, seed=seed, source=needle_source, target=needle_target,
                  data_dir=data_dir)
        train = needle_mnist(split="train", count=n_train, **kw)
        test = needle_mnist(split="test", count=n_test, **kw)
        X_tr, y_tr = train.arrays()
        X_te, y_te = test.arrays()
    else:
        from .sources import load_fashion_mnist, load_mnist

        load = load_fashion_mnist if name == "fashion-mnist" else load_mnist
        X_tr, y_tr = load("train", data_dir=data_dir, size=size)
        X_te, y_te = load("test", data_dir=data_dir, size=size)
    return (np.ascontiguousarray(X_tr[:n_train]), y_tr[:n_train],
            np.ascontiguousarray(X_te[:n_test]), y_te[:n_test])


def select_classes(X: np.ndarray, y: np.ndarray, classes) -> Tuple[np.ndarray, np.ndarray]:
    """The images of the listed classes, relabelled ``0..len(classes)-1`` in the order given
    (``classes=[6, 0]``: shirts become 0, T-shirts 1)."""
    classes = [int(c) for c in classes]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"classes: expected at least two distinct labels, got {classes}")
    missing = [c for c in classes if not np.any(y == c)]
    if missing:
        raise ValueError(f"classes: no images with label(s) {missing}; the labels present "
                         f"are {sorted(set(np.unique(y).tolist()))}")
    keep = np.isin(y, classes)
    relabel = np.full(int(max(classes)) + 1, -1, np.int64)
    relabel[classes] = np.arange(len(classes))
    return np.ascontiguousarray(X[keep]), relabel[y[keep]]
