"""NeedleMNIST: one small target digit (the needle) on a large canvas cluttered with other digits.

The protocol is that of the public generator of Pawlowski et al., "Needles in Haystacks"
(facebookresearch/Needles-in-Haystacks, ``data/cluttered_mnist/generate_data.py``):

* The canvas (``size x size``) is cut into cells of 64x64. A positive image holds the target
  digit at a uniformly drawn cell and a uniform offset in ``[0, 64 - 28)`` inside it, so the
  needle never crosses a cell boundary; then ``noise_digits`` digits of the other classes at
  uniform positions ``[0, size - 28)`` anywhere on the canvas. Digits add; the sum is clipped
  to [0, 1].
* A negative image holds ``noise_digits + 1`` noise digits and no target, so both classes
  carry the same number of digits.
* Image ``2k`` is a positive, ``2k + 1`` its negative partner; pair ``k`` uses target digit
  ``k mod T`` of the split (``T`` targets), so the protocol's ``duplicates`` passes over the
  targets are indices ``[0, 2 T duplicates)``. Longer datasets keep cycling.
* Noise digits come from the same split as the targets, drawn with replacement.
* Noise-digit counts keep the protocol's density (400 at 1024^2): 2, 6, 25, 100, 400, 1,600
  at 64, 128, 256, 512, 1024, 2048.

Every random choice of image ``i`` comes from ``SeedSequence((salt, seed, split, i))``, mapped
to ranges by integer arithmetic, so an image is a function of ``(seed, split, i)`` alone, the
same on every machine and NumPy version, and any image can be produced without the others.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .render import render_canvases
from .splits import SPLITS, DigitSource, digit_source
from .stream import BatchedDataset
from .._validate import check_positive_int

CELL_SIZE = 64            # the protocol's --patch-size
DUPLICATES = 2            # the protocol's --duplicates
_SALT = 0x6E656564        # "need"
_SPLIT_CODES = {split: code for code, split in enumerate(SPLITS)}
_WORDS_FIXED = 3          # needle cell, row offset, column offset
_WORDS_PER_NOISE = 3      # source digit, row, column


def noise_digit_count(size: int) -> int:
    """The protocol's number of noise digits on a ``size x size`` canvas.

    400 at 1024^2 and the same density elsewhere, rounded: 2, 6, 25, 100, 400, 1,600, 6,400
    and 14,400 at 64, 128, 256, 512, 1024, 2048, 4096 and 6144 (the Needles-in-Haystacks
    README's table).
    """
    size = check_positive_int("size", size)
    return int(np.floor(400 * size * size / 1024**2 + 0.5))


def _below(words: np.ndarray, n: int) -> np.ndarray:
    """Map uniform 32-bit words to ``[0, n)`` (multiply-shift; bias below n / 2**32)."""
    return ((words.astype(np.uint64) * np.uint64(n)) >> np.uint64(32)).astype(np.int64)


@dataclass(frozen=True)
class NeedleLayout:
    """Where every digit of one image goes.

    Attributes
    ----------
    label : 1 when the needle is present, 0 otherwise.
    digits : (k,) int64, indices into ``dataset.source.images`` in drawing order; for a
        positive the first one is the needle.
    rows, cols : (k,) int64, top-left corner of each digit on the canvas.
    cell : grid cell ``(row, col)`` holding the needle, or None for a negative.
    """

    label: int
    digits: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    cell: tuple[int, int] | None


class NeedleMNIST(BatchedDataset):
    """NeedleMNIST images generated on demand from their index.

    Build it with :func:`needle_mnist`. ``ds[i]`` is ``(image (size, size) float32, label)``;
    ``ds.batches(...)`` streams ``(X (b, size, size), y (b,))`` with background prefetch;
    ``ds.arrays(n)`` materialises. See the module docstring for the protocol.

    Attributes
    ----------
    source : :class:`~fasttn.data.splits.DigitSource`, the split's digit stack.
    size, seed, target, cell_size, duplicates : as given to :func:`needle_mnist`.
    noise_digits : noise digits in a positive image (a negative has one more).
    """

    def __init__(self, source: DigitSource, *, size: int = 128, count: int | None = None,
                 seed: int = 0, target: int = 3, noise_digits: int | None = None,
                 cell_size: int = CELL_SIZE, duplicates: int = DUPLICATES) -> None:
        self.source = source
        self.size = check_positive_int("size", size)
        self.cell_size = check_positive_int("cell_size", cell_size)
        self.duplicates = check_positive_int("duplicates", duplicates)
        h, w = source.images.shape[1:]
        if self.cell_size <= max(h, w):
            raise ValueError(f"cell_size: expected more than the digit size {h}x{w} (the needle "
                             f"must fit strictly inside a cell), got {cell_size}")
        if self.size % self.cell_size:
            raise ValueError(f"size: expected a multiple of the {self.cell_size}-pixel cell "
                             f"(e.g. 64, 128, 256, 512, 1024), got {size}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        present = np.unique(source.labels)
        if isinstance(target, bool) or not isinstance(target, (int, np.integer)) \
                or target not in present:
            raise ValueError(f"target: expected a class present in the {source.split} split of "
                             f"{source.name} ({', '.join(str(c) for c in present)}), "
                             f"got {target!r}")
        self.target = int(target)
        self._targets = np.flatnonzero(source.labels == self.target)
        self._noise_pool = np.flatnonzero(source.labels != self.target)
        if self._noise_pool.size == 0:
            raise ValueError(f"source: the {source.split} split of {source.name} holds no digit "
                             f"of a class other than the target {self.target}")
        if noise_digits is None:
            noise_digits = noise_digit_count(self.size)
        if isinstance(noise_digits, bool) or not isinstance(noise_digits, (int, np.integer)) \
                or noise_digits < 0:
            raise ValueError(f"noise_digits: expected a non-negative integer, got "
                             f"{noise_digits!r}")
        self.noise_digits = int(noise_digits)
        protocol_length = 2 * self.duplicates * len(self._targets)
        self._length = protocol_length if count is None else check_positive_int("count", count)
        self._split_code = _SPLIT_CODES[source.split]

    # ------------------------------------------------------------------ description
    def __len__(self) -> int:
        return self._length

    def __repr__(self) -> str:
        return (f"NeedleMNIST(size={self.size}, count={len(self)}, split={self.source.split!r}, "
                f"seed={self.seed}, source={self.source.name!r}, target={self.target}, "
                f"noise_digits={self.noise_digits})")

    @property
    def digit_shape(self) -> tuple[int, int]:
        return tuple(self.source.images.shape[1:])  # type: ignore[return-value]

    @property
    def o2i(self) -> float:
        """Object-to-image ratio: digit area over canvas area (784 / size^2 for 28x28 digits)."""
        h, w = self.digit_shape
        return h * w / self.size**2

    @property
    def digits_per_image(self) -> int:
        return self.noise_digits + 1

    @property
    def labels(self) -> np.ndarray:
        """(n,) int64: 1 at even indices (needle present), 0 at odd ones."""
        return 1 - np.arange(len(self), dtype=np.int64) % 2

    def metadata(self) -> dict[str, Any]:
        """A JSON-ready description (what the on-disk cache stores)."""
        labels = self.labels
        return {
            "size": self.size, "count": len(self), "split": self.source.split,
            "seed": self.seed, "source": self.source.name, "target": self.target,
            "target_name": self.source.class_names[self.target]
            if self.target < len(self.source.class_names) else str(self.target),
            "noise_digits": self.noise_digits, "digits_per_image": self.digits_per_image,
            "cell_size": self.cell_size, "duplicates": self.duplicates,
            "digit_shape": list(self.digit_shape), "o2i": self.o2i,
            "n_positive": int(labels.sum()), "n_negative": int(len(labels) - labels.sum()),
            "n_targets_in_split": int(len(self._targets)),
            "protocol_length": 2 * self.duplicates * int(len(self._targets)),
        }

    # ------------------------------------------------------------------ generation
    def _words(self, indices: np.ndarray) -> np.ndarray:
        """(b, n_words) uint32: the random words of each image, from its index alone."""
        n_words = _WORDS_FIXED + _WORDS_PER_NOISE * (self.noise_digits + 1)
        words = np.empty((len(indices), n_words), dtype=np.uint32)
        for k, i in enumerate(indices):
            seq = np.random.SeedSequence([_SALT, self.seed, self._split_code, int(i)])
            words[k] = seq.generate_state(n_words, np.uint32)
        return words

    def _placements(self, indices: np.ndarray):
        """Placements of a batch: (labels, slots (b, k+2) digit/row/col arrays, valid mask)."""
        h, w = self.digit_shape
        words = self._words(indices)
        labels = (1 - indices % 2).astype(np.int64)
        n_cells = self.size // self.cell_size
        cell = _below(words[:, 0], n_cells * n_cells)
        needle_row = (cell // n_cells) * self.cell_size + _below(words[:, 1], self.cell_size - h)
        needle_col = (cell % n_cells) * self.cell_size + _below(words[:, 2], self.cell_size - w)
        needle = self._targets[(indices // 2) % len(self._targets)]
        noise = words[:, _WORDS_FIXED:].reshape(len(indices), -1, _WORDS_PER_NOISE)
        noise_digit = self._noise_pool[_below(noise[..., 0], len(self._noise_pool))]
        noise_row = _below(noise[..., 1], self.size - h)
        noise_col = _below(noise[..., 2], self.size - w)
        # slot 0 is the needle, slots 1.. the noise digits; a positive uses the needle and the
        # first noise_digits noise slots, a negative every noise slot.
        digit = np.concatenate([needle[:, None], noise_digit], axis=1)
        row = np.concatenate([needle_row[:, None], noise_row], axis=1)
        col = np.concatenate([needle_col[:, None], noise_col], axis=1)
        valid = np.ones(digit.shape, dtype=bool)
        valid[labels == 1, -1] = False
        valid[labels == 0, 0] = False
        return labels, digit, row, col, valid, cell

    def layout(self, index: int) -> NeedleLayout:
        """Where every digit of image ``index`` goes (for checks and for drawing boxes)."""
        i = self._check_index(index)
        labels, digit, row, col, valid, cell = self._placements(np.array([i], dtype=np.int64))
        keep = valid[0]
        n_cells = self.size // self.cell_size
        where = (int(cell[0] // n_cells), int(cell[0] % n_cells)) if labels[0] == 1 else None
        return NeedleLayout(label=int(labels[0]), digits=digit[0, keep], rows=row[0, keep],
                            cols=col[0, keep], cell=where)

    def _batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        labels, digit, row, col, valid, _ = self._placements(indices)
        image_of = np.broadcast_to(np.arange(len(indices))[:, None], digit.shape)
        X = np.zeros((len(indices), self.size, self.size), dtype=np.float32)
        render_canvases(X, self.source.images, image_of[valid], digit[valid], row[valid],
                        col[valid])
        return X, labels

    def _default_shuffle_seed(self) -> int:
        return self.seed

    def needle_boxes(self, indices: np.ndarray | None = None) -> np.ndarray:
        """(n, 4) int64 ``(row, col, height, width)`` of the needle, ``-1`` rows for negatives."""
        indices = np.arange(len(self)) if indices is None else np.asarray(indices, np.int64)
        labels, _, row, col, _, _ = self._placements(indices)
        h, w = self.digit_shape
        boxes = np.stack([row[:, 0], col[:, 0], np.full(len(indices), h),
                          np.full(len(indices), w)], axis=1)
        boxes[labels == 0] = -1
        return boxes


def needle_mnist(size: int = 128, count: int | None = None, split: str = "train", seed: int = 0,
                 source: Any = "digits", target: int = 3, noise_digits: int | None = None,
                 cell_size: int = CELL_SIZE, duplicates: int = DUPLICATES,
                 data_dir: str | os.PathLike | None = None) -> NeedleMNIST:
    """A NeedleMNIST dataset, generated on demand (nothing is drawn until asked for).

    Parameters
    ----------
    size : canvas side, a multiple of ``cell_size`` (64, 128, 256, 512, 1024, 2048, ...).
    count : number of images; default the protocol's ``2 * duplicates * T`` for the ``T``
        target digits of the split (22,552 for MNIST train). Any count is allowed: indices
        past the protocol's length keep cycling over the targets with fresh layouts.
    split : ``"train"``, ``"validation"`` or ``"test"``. Needles and noise digits both come
        from this split only. MNIST / Fashion-MNIST: the protocol's 55,000 / 5,000 / 10,000;
        scikit-learn digits: 1,257 / 180 / 360 (see :mod:`fasttn.data.splits`).
    seed : any non-negative integer; image ``i`` depends on ``(seed, split, i)`` only.
    source : ``"digits"`` (default: the scikit-learn 8x8 digits, always available, drawn at
        20x20 in a 28x28 frame like MNIST's), ``"mnist"``, ``"fashion"`` (IDX files; a
        Fashion-MNIST class is the needle), or an ``(images, labels)`` pair used as the split.
    target : the needle's class (the protocol's ``--digit``, 3 by default).
    noise_digits : noise digits per positive image; default :func:`noise_digit_count`.
    cell_size : side of the grid cells that hold the needle (the protocol's 64).
    duplicates : times each target digit is used in the default length (protocol: 2).
    data_dir : where to look for IDX files.

    Returns
    -------
    NeedleMNIST
        ``ds[i] -> (image (size, size) float32 in [0, 1], label int)``, ``len(ds)``,
        ``ds.o2i``, ``ds.noise_digits``, ``ds.arrays(n)``, ``ds.batches(batch_size, ...)``.
    """
    stack = source if isinstance(source, DigitSource) else digit_source(source, split, data_dir)
    return NeedleMNIST(stack, size=size, count=count, seed=seed, target=target,
                       noise_digits=noise_digits, cell_size=cell_size, duplicates=duplicates)
