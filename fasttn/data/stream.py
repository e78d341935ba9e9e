"""Batch iteration with background prefetch, shared by the generator and the on-disk cache."""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np

from .._validate import check_positive_int

Batch = tuple[np.ndarray, np.ndarray]

_PERMUTATION_SALT = 0x7065726D  # "perm": keeps shuffle streams apart from image streams


def shuffled_order(n: int, seed: int) -> np.ndarray:
    """A permutation of ``range(n)`` fixed by ``seed``, the same on every machine.

    Sorting 64-bit words from ``SeedSequence.generate_state`` (a fixed hash, unlike the
    ``Generator`` streams NumPy may change between versions) gives the permutation.
    """
    keys = np.random.SeedSequence([_PERMUTATION_SALT, int(seed), int(n)]).generate_state(
        n, np.uint64)
    return np.argsort(keys, kind="stable")


def iterate_batches(make_batch: Callable[[np.ndarray], Batch], order: np.ndarray,
                    batch_size: int, prefetch: int = 2, drop_last: bool = False
                    ) -> Iterator[Batch]:
    """Yield ``make_batch(order[k:k + batch_size])`` in order, computed ahead in threads.

    Parameters
    ----------
    make_batch : indices (b,) int64 -> (X (b, ...), y (b,)); called from worker threads, so
        its heavy part should release the GIL (the render kernel does).
    order : (n,) int64, the indices to visit.
    batch_size : images per batch; the last one is smaller unless ``drop_last``.
    prefetch : batches computed ahead by as many background threads (0: none, all work in the
        caller's thread). At most ``prefetch + 2`` batches are alive at once: those ahead, the
        one handed out and the one the caller may still hold.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    if isinstance(prefetch, bool) or not isinstance(prefetch, (int, np.integer)) or prefetch < 0:
        raise ValueError(f"prefetch: expected a non-negative integer, got {prefetch!r}")
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    chunks = (order[s:min(s + batch_size, stop)] for s in range(0, stop, batch_size))
    # checked above, generated below: bad arguments fail at the call, not at the first next()
    return _generate(make_batch, chunks, int(prefetch))


def _generate(make_batch: Callable[[np.ndarray], Batch], chunks: Iterator[np.ndarray],
              prefetch: int) -> Iterator[Batch]:
    if prefetch == 0:
        for chunk in chunks:
            yield make_batch(chunk)
        return
    pool = ThreadPoolExecutor(max_workers=prefetch, thread_name_prefix="fasttn-prefetch")
    pending: deque = deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(make_batch, chunk))
            if len(pending) > prefetch:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        # Reached on exhaustion, on an error, and when the caller stops early (close()).
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)


class BatchedDataset:
    """Mix-in: ``arrays`` and ``batches`` for a dataset defined by ``__len__`` and ``_batch``."""

    def __len__(self) -> int:  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    def _batch(self, indices: np.ndarray) -> Batch:  # pragma: no cover
        raise NotImplementedError

    def _default_shuffle_seed(self) -> int:
        return 0

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        i = self._check_index(index)
        X, y = self._batch(np.array([i], dtype=np.int64))
        return X[0], int(y[0])

    def _check_index(self, index) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index: expected an integer, got {type(index).__name__}")
        n = len(self)
        i = int(index) + n if index < 0 else int(index)
        if not 0 <= i < n:
            raise IndexError(f"index: expected -{n} <= index < {n}, got {index}")
        return i

    def arrays(self, n: int | None = None, batch_size: int = 64) -> Batch:
        """Materialise the first ``n`` images (all by default).

        Returns
        -------
        X : (n, H, W) float32 in [0, 1].
        y : (n,) int64.
        """
        total = len(self) if n is None else check_positive_int("n", n)
        if total > len(self):
            raise ValueError(f"n: expected at most {len(self)} (the dataset length), got {n}")
        parts = list(iterate_batches(self._batch, np.arange(total, dtype=np.int64), batch_size,
                                     prefetch=0))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def batches(self, batch_size: int = 32, shuffle: bool = False, seed: int | None = None,
                prefetch: int = 2, drop_last: bool = False) -> Iterator[Batch]:
        """Iterate over the dataset in batches, computing the next ones in background threads.

        Parameters
        ----------
        batch_size : images per batch.
        shuffle : visit the images in a permutation fixed by ``seed`` (pass e.g. the epoch
            number for a new order each epoch) instead of in index order.
        seed : permutation seed; defaults to the dataset's own seed.
        prefetch : batches prepared ahead by as many threads; memory stays within about
            ``(prefetch + 2) * batch_size`` images whatever the dataset length.
        drop_last : skip a final batch smaller than ``batch_size``.

        Yields
        ------
        X : (b, H, W) float32 in [0, 1].
        y : (b,) int64.
        """
        n = len(self)
        if shuffle:
            order = shuffled_order(n, self._default_shuffle_seed() if seed is None else seed)
        else:
            order = np.arange(n, dtype=np.int64)
        return iterate_batches(self._batch, order, batch_size, prefetch, drop_last)

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
        for X, y in self.batches(batch_size=32, prefetch=0):
            for image, label in zip(X, y):
                yield image, int(label)
