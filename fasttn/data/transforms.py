"""Image resizing and intensity normalisation for the loaders.

Resizing is separable: each axis is a fixed ``(out, in)`` weight matrix, so a batch is resized
by two matrix products, computed in float64 and rounded once to float32 (deterministic for a
given input; the rounding hides summation-order differences between BLAS builds).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .._validate import check_choice

RESIZE_METHODS = ("bilinear", "area")
NORMALIZE_MODES = ("unit", "symmetric", "none")

_CHUNK = 4096  # images per matrix product, so resizing 60k images never holds a float64 copy


def _axis_weights(n_in: int, n_out: int, method: str) -> np.ndarray:
    """(n_out, n_in) resampling weights along one axis; every row sums to one."""
    scale = n_in / n_out
    centres = (np.arange(n_out) + 0.5) * scale          # output pixel centres in input units
    pos = np.arange(n_in) + 0.5                          # input pixel centres
    if method == "bilinear":
        # Triangle filter widened by the downscale factor: PIL's BILINEAR and torchvision's
        # Resize(antialias=True). When enlarging it is plain half-pixel bilinear, edges clamped.
        support = max(scale, 1.0)
        w = np.clip(1.0 - np.abs(pos[None, :] - centres[:, None]) / support, 0.0, None)
    else:
        # Box filter: the fraction of each output pixel's footprint that an input pixel covers.
        lo = np.arange(n_out)[:, None] * scale
        hi = lo + scale
        left = np.arange(n_in)[None, :]
        w = np.clip(np.minimum(hi, left + 1.0) - np.maximum(lo, left), 0.0, None)
    return w / w.sum(axis=1, keepdims=True)


def _check_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        pair = (int(size), int(size))
    else:
        try:
            pair = tuple(int(s) for s in size)  # type: ignore[union-attr]
        except TypeError:
            pair = ()
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"size: expected a positive int or a (height, width) pair, got {size!r}")
    return pair  # type: ignore[return-value]


def resize_images(X: np.ndarray, size: int | Sequence[int], method: str = "bilinear") -> np.ndarray:
    """Resize a stack of grey-scale images.

    Parameters
    ----------
    X : (n, H, W) or (H, W), float32, float64 or uint8.
    size : output side ``S`` (square) or ``(height, width)``.
    method : ``"bilinear"`` (default) is antialiased bilinear, the filter of PIL's ``BILINEAR``
        and of torchvision's ``Resize(antialias=True)`` that the q-CNN code uses: a triangle
        filter whose width grows with the downscale factor, plain bilinear when enlarging.
        ``"area"`` averages the input pixels under each output pixel (``tf.image.resize``'s
        ``area``; for an integer factor, the mean of each block).

    Returns
    -------
    Y : (n, height, width) or (height, width), float32. Values stay within the input's range.
    """
    X = np.asarray(X)
    if X.dtype.kind != "f" and X.dtype != np.uint8:
        raise TypeError(f"X: expected a float or uint8 image array, got dtype {X.dtype}")
    if X.ndim not in (2, 3) or 0 in X.shape[-2:]:
        raise ValueError(f"X: expected images of shape (n, H, W) or (H, W), got shape {X.shape}")
    method = check_choice("method", method, RESIZE_METHODS)
    out_h, out_w = _check_size(size)
    single = X.ndim == 2
    stack = X[None] if single else X
    in_h, in_w = stack.shape[1:]
    if (in_h, in_w) == (out_h, out_w):
        out = stack.astype(np.float32, copy=True)
        return out[0] if single else out
    w_rows = _axis_weights(in_h, out_h, method)
    w_cols_t = _axis_weights(in_w, out_w, method).T.copy()
    out = np.empty((stack.shape[0], out_h, out_w), dtype=np.float32)
    for start in range(0, stack.shape[0], _CHUNK):
        chunk = stack[start:start + _CHUNK].astype(np.float64)
        out[start:start + _CHUNK] = np.matmul(w_rows, np.matmul(chunk, w_cols_t))
    return out[0] if single else out


def normalize_images(X: np.ndarray, mode: str = "unit") -> np.ndarray:
    """Map raw 8-bit intensities (0..255) to float32.

    Parameters
    ----------
    X : (n, H, W) uint8 (or float holding 0..255 values, e.g. after resizing).
    mode : ``"unit"`` -> [0, 1] (x/255, the default, as the q-CNN and MPS codes);
        ``"symmetric"`` -> [-1, 1] (x/127.5 - 1, LoTeNet's ``Normalize(0.5, 0.5)``);
        ``"none"`` -> the raw 0..255 values as float32.

    Returns
    -------
    (n, H, W) float32.
    """
    mode = check_choice("normalize", mode, NORMALIZE_MODES)
    X = np.asarray(X)
    if X.dtype == np.uint8:
        # one table gather: a single pass and a single allocation for 60k images
        table = normalize_images(np.arange(256, dtype=np.float32), mode)
        return table[X]
    X = X.astype(np.float32, copy=True)
    if mode == "unit":
        X /= np.float32(255.0)
    elif mode == "symmetric":
        X /= np.float32(127.5)
        X -= np.float32(1.0)
    return X


def random_shift(X: np.ndarray, rng: np.random.Generator, max_shift: float = 1.0) -> np.ndarray:
    """Translate each image by its own random sub-pixel offset (training augmentation).

    Offsets are drawn uniformly from ``[-max_shift, max_shift]`` pixels on each axis; pixels
    are resampled bilinearly, and what enters from outside the image is zero (background).

    Parameters
    ----------
    X : (n, H, W) float array
    rng : numpy Generator
    max_shift : float, non-negative, in pixels

    Returns
    -------
    Y : (n, H, W), same dtype as ``X``; values stay within ``[min(0, X.min()), X.max()]``.
    """
    X = np.asarray(X)
    if X.ndim != 3 or X.dtype.kind != "f":
        raise ValueError(f"X: expected a float array of shape (n, H, W), got {X.dtype} "
                         f"{X.shape}")
    if not np.isfinite(max_shift) or max_shift < 0:
        raise ValueError(f"max_shift: expected a finite non-negative number, got {max_shift!r}")
    n, h, w = X.shape
    out = X.astype(np.float64)
    for axis, size in ((1, h), (2, w)):
        # out'[i] = (1 - f) * out[i - k] + f * out[i - k - 1] for the shift k + f, per image
        shift = rng.uniform(-max_shift, max_shift, n)
        k = np.floor(shift).astype(np.int64)
        f = (shift - k).reshape((n,) + (1,) * 2)
        src = np.arange(size)[None, :] - k[:, None]                       # (n, size)
        lo = _gather_zero(out, src, axis)
        hi = _gather_zero(out, src - 1, axis)
        out = (1.0 - f) * lo + f * hi
    return out.astype(X.dtype)


def _gather_zero(X: np.ndarray, src: np.ndarray, axis: int) -> np.ndarray:
    """``X`` indexed along ``axis`` by per-image indices ``src``, zero where out of range."""
    size = X.shape[axis]
    valid = (src >= 0) & (src < size)
    idx = np.clip(src, 0, size - 1)
    if axis == 1:
        g = np.take_along_axis(X, idx[:, :, None], axis=1)
        return g * valid[:, :, None]
    g = np.take_along_axis(X, idx[:, None, :], axis=2)
    return g * valid[:, None, :]
