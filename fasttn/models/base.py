"""The estimator contract shared by every model, and safe checkpoints.

A checkpoint is one ``.npz`` file holding plain arrays plus a JSON header (model class,
constructor parameters, learned metadata). It is read with ``allow_pickle=False``, so
loading never runs code from the file, and written to a temporary file that is renamed
into place, so a crash never leaves half a checkpoint.
"""
from __future__ import annotations

import inspect
import json
import os
import zipfile
from typing import Any, Dict, Type

import numpy as np

from .._atomic import atomic_file
from .._validate import (check_dtype, check_finite, check_float_array, check_labels,
                         check_positive_int)

_REGISTRY: Dict[str, Type["Estimator"]] = {}
FORMAT = "fasttn-checkpoint"
FORMAT_VERSION = 1


def register(cls):
    _REGISTRY[cls.__name__] = cls
    return cls


class Estimator:
    """scikit-learn-like base: hyper-parameters are constructor arguments stored unchanged,
    learned state ends in ``_``."""

    def get_params(self, deep: bool = True) -> Dict[str, Any]:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params: Any) -> "Estimator":
        valid = self.get_params()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"{key}: not a parameter of {type(self).__name__}; "
                                 f"expected one of {sorted(valid)}")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _check_classifier_config(self) -> None:
        """The hyper-parameters every classifier here has: n_classes, dtype, batch_size,
        epochs."""
        check_positive_int("n_classes", self.n_classes)
        if self.n_classes < 2:
            raise ValueError(f"n_classes: expected at least 2, got {self.n_classes}")
        check_dtype("dtype", self.dtype)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("epochs", self.epochs)

    _FITTED_ATTR = "history_"  # set by fit; models name their parameter attribute

    def _start_fit(self, X: Any, y: Any, epochs: Any, batch_size: Any, warm_start: bool):
        """Checks shared by every ``fit``; (re)initialises unless warm-starting a fitted
        model. Returns ``(X, y, epochs, batch_size, rng)``."""
        self._check_config()
        epochs = check_positive_int("epochs", epochs if epochs is not None else self.epochs)
        batch_size = check_positive_int("batch_size",
                                        batch_size if batch_size is not None else self.batch_size)
        X = check_float_array("X", X, ndim=3)
        y = check_labels("y", y, self.n_classes, n_samples=X.shape[0])
        fitted = warm_start and hasattr(self, self._FITTED_ATTR)
        X = self._check_X(X, fitted=fitted)
        rng = np.random.default_rng(self.random_state)
        if not fitted:
            self._setup(X.shape[1:])
            self._init_params(rng)
            self.history_ = []
        return X, y, epochs, batch_size, rng

    def _check_X(self, X: Any, fitted: bool) -> np.ndarray:
        """Images ``(n, height, width)`` in [0, 1], finite; once fitted, of the fitted shape."""
        X = check_float_array("X", X, ndim=3)
        if X.shape[0] == 0:
            raise ValueError("X: expected at least one image, got 0")
        check_finite("X", X)
        lo, hi = float(X.min()), float(X.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"X: expected pixel values in [0, 1], got values in [{lo:.4g}, "
                             f"{hi:.4g}] (scale uint8 images by 1/255)")
        if fitted and tuple(X.shape[1:]) != tuple(self.image_shape_):
            raise ValueError(f"X: expected images of shape {tuple(self.image_shape_)} (as in "
                             f"fit), got {tuple(X.shape[1:])}")
        return X

    def score(self, X: Any, y: Any) -> float:
        """Mean accuracy of :meth:`predict` on ``(X, y)``."""
        pred = self.predict(X)
        y = np.asarray(y)
        if y.shape != pred.shape:
            raise ValueError(f"y: expected {pred.shape[0]} labels (one per image), got shape "
                             f"{y.shape}")
        return float(np.mean(pred == y))

    # -- checkpoints ---------------------------------------------------------------------
    def _state_arrays(self) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def _state_meta(self) -> Dict[str, Any]:
        return {}

    def _set_state(self, arrays: Dict[str, np.ndarray], meta: Dict[str, Any]) -> None:
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted model to ``path`` (``.npz``), atomically."""
        if not hasattr(self, "n_features_in_"):
            raise ValueError(f"{type(self).__name__} is not fitted yet; call fit before save")
        header = {"format": FORMAT, "version": FORMAT_VERSION, "class": type(self).__name__,
                  "params": _jsonable(self.get_params()), "meta": _jsonable(self._state_meta())}
        arrays = dict(self._state_arrays())
        arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        with atomic_file(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)


def load(path: str | os.PathLike) -> Estimator:
    """Read a checkpoint written by ``save``; returns a fitted model of the stored class."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"path: no checkpoint at {path!r}")
    try:
        data = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ValueError(f"path: {path!r} is not a readable fasttn checkpoint ({exc})") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"path: {path!r} holds a single array, not a fasttn checkpoint (.npz)")
    try:
        with data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ValueError(f"path: {path!r} is not a readable fasttn checkpoint ({exc})") from exc
    if "__header__" not in arrays:
        raise ValueError(f"path: {path!r} has no fasttn header; it is not a fasttn checkpoint")
    try:
        header = json.loads(arrays.pop("__header__").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"path: {path!r} has a corrupt header ({exc})") from exc
    if header.get("format") != FORMAT or header.get("version", 0) > FORMAT_VERSION:
        raise ValueError(f"path: {path!r} is format {header.get('format')!r} version "
                         f"{header.get('version')!r}; this fasttn reads {FORMAT!r} up to "
                         f"version {FORMAT_VERSION}")
    cls = _REGISTRY.get(header.get("class"))
    if cls is None:
        raise ValueError(f"path: {path!r} holds an unknown model class {header.get('class')!r}")
    try:
        model = cls(**header["params"])
        model._set_state(arrays, header["meta"])
    except KeyError as exc:
        raise ValueError(f"path: {path!r} lacks the array {exc.args[0]!r} that a "
                         f"{header['class']} checkpoint holds") from exc
    except TypeError as exc:
        raise ValueError(f"path: {path!r} has parameters this fasttn does not accept "
                         f"({exc})") from exc
    return model


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.dtype):
        return obj.name
    if isinstance(obj, type) and issubclass(obj, np.generic):
        return np.dtype(obj).name
    return obj
