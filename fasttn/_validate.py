"""Boundary checks. Every message names the argument, what was expected and what came."""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_dtype(name: str, dtype: Any) -> np.dtype:
    """Return ``dtype`` as a NumPy float dtype, or raise naming ``name``."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"{name}: expected float32 or float64, got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected float32 or float64, got {dt}")
    return dt


def check_float_array(name: str, x: Any, ndim: int | Sequence[int] | None = None,
                      dtype: Any = None) -> np.ndarray:
    """Check that ``x`` is a real floating array of the given rank; return it unchanged.

    Integer or boolean arrays are refused rather than silently cast, so that a caller
    passing labels where images belong learns of it.
    """
    xp_type = type(x).__module__.split(".")[0]
    if xp_type not in ("numpy", "cupy"):
        x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{name}: expected a float32 or float64 array, got dtype {x.dtype}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected float32 or float64, got {x.dtype}")
    if dtype is not None and x.dtype != np.dtype(dtype):
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)}, got {x.dtype}")
    if ndim is not None:
        ranks = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in ranks:
            want = " or ".join(str(r) for r in ranks)
            raise ValueError(f"{name}: expected a {want}-dimensional array, got shape {x.shape}")
    return x


def check_real_array(name: str, x: Any, ndim: int | Sequence[int] | None = None) -> np.ndarray:
    """A real-valued array (float, integer, or numbers held as objects) of the given rank;
    float32/float64 kept, anything else converted to float64. Booleans, complex numbers
    and strings are refused."""
    if hasattr(x, "toarray") or type(x).__module__.startswith("scipy.sparse"):
        raise TypeError(f"{name}: sparse input is not supported; pass a dense array "
                        f"({name}.toarray())")
    x = np.asarray(x)
    if x.dtype.kind == "O":
        x = x.astype(np.float64)  # numbers stored as objects; anything else raises
    if x.dtype.kind == "c":
        raise ValueError(f"{name}: Complex data not supported; expected real numbers, got "
                         f"dtype {x.dtype}")
    if x.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected real numbers, got dtype {x.dtype}")
    if x.dtype not in FLOAT_DTYPES:
        x = x.astype(np.float64)
    if ndim is not None:
        ranks = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in ranks:
            want = " or ".join(str(r) for r in ranks)
            hint = ("; Reshape your data: X.reshape(1, -1) for a single sample"
                    if x.ndim == 1 else "")
            raise ValueError(f"{name}: expected a {want}-dimensional array, got shape "
                             f"{x.shape}{hint}")
    if x.ndim >= 2 and x.shape[0] and not all(x.shape[1:]):
        raise ValueError(f"{name}: found 0 feature(s) (shape={x.shape}) while a minimum of 1 "
                         f"is required.")
    return x


def check_finite(name: str, x: Any) -> None:
    """Raise if ``x`` holds NaN or Inf, saying how many and where the first one is."""
    mod = type(x).__module__.split(".")[0]
    xp = np if mod == "numpy" else __import__(mod)
    bad = ~xp.isfinite(x)
    n_bad = int(bad.sum())
    if n_bad:
        first = tuple(int(i) for i in np.unravel_index(int(xp.argmax(bad.ravel())), x.shape))
        raise ValueError(f"{name}: expected finite values, got {n_bad} NaN/Inf entries "
                         f"(first at index {first})")


def check_shape(name: str, x: Any, shape: Sequence[int | None]) -> None:
    """Check ``x.shape`` against ``shape``, where ``None`` matches any length."""
    ok = len(x.shape) == len(shape) and all(s is None or s == t for s, t in zip(shape, x.shape))
    if not ok:
        want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(x.shape)}")


def check_power_of_two(name: str, n: int) -> None:
    if n < 1 or n & (n - 1):
        raise ValueError(f"{name}: expected a power of two, got {n}")


def check_labels(name: str, y: Any, n_classes: int, n_samples: int | None = None) -> np.ndarray:
    """Integer class labels in ``[0, n_classes)``, one per sample."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name}: expected a 1-dimensional array of labels, got shape {y.shape}")
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and y.size and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise TypeError(f"{name}: expected integer class labels, got dtype {y.dtype}")
    if n_samples is not None and y.shape[0] != n_samples:
        raise ValueError(f"{name}: expected {n_samples} labels (one per sample), got {y.shape[0]}")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{name}: expected labels in [0, {n_classes}), got values in "
                         f"[{int(y.min())}, {int(y.max())}]")
    return y.astype(np.int64, copy=False)


def check_positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    return int(v)


def check_per_level(name: str, v: Any, n_levels: Optional[int] = None,
                    what: str = "") -> List[int]:
    """A positive integer for every level, or a sequence of one per level: the list of
    per-level values (``n_levels`` of them when given; with a sequence, its length must be
    ``n_levels``, described by ``what`` in the error)."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        vals = [check_positive_int(name, v)] * (n_levels if n_levels is not None else 1)
        return vals
    try:
        vals = list(v)
    except TypeError:
        raise ValueError(f"{name}: expected a positive integer or a list of them, "
                         f"got {v!r}") from None
    if not vals:
        raise ValueError(f"{name}: expected a positive integer or a non-empty list of them")
    vals = [check_positive_int(name, c) for c in vals]
    if n_levels is not None and len(vals) != n_levels:
        raise ValueError(f"{name}: expected one value per level ({n_levels}{what}), "
                         f"got {len(vals)}")
    return vals


def check_choice(name: str, v: Any, choices: Sequence[Any]) -> Any:
    if v not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {v!r}")
    return v


def check_number(name: str, v: Any, low: Optional[float] = None, high: Optional[float] = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number (not a bool) in the given interval; returned as a float.

    Parameters
    ----------
    low, high : float, optional
        Bounds of the interval (None: unbounded on that side).
    low_open, high_open : bool
        Exclude the bound itself.
    """
    lo_br, hi_br = ("(" if low_open or low is None else "["), (")" if high_open or high is None
                                                                 else "]")
    what = ("a finite number" if low is None and high is None else
            f"a finite number in {lo_br}{'-inf' if low is None else low}, "
            f"{'inf' if high is None else high}{hi_br}")
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer,
                                                             np.floating)):
        raise ValueError(f"{name}: expected {what}, got {v!r}")
    x = float(v)
    ok = np.isfinite(x)
    if ok and low is not None:
        ok = x > low if low_open else x >= low
    if ok and high is not None:
        ok = x < high if high_open else x <= high
    if not ok:
        raise ValueError(f"{name}: expected {what}, got {v!r}")
    return x
