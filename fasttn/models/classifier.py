"""The scikit-learn classifier contract shared by the image models (QCNN, MERA2D, TTN2D).

What a model sees and what a user passes differ, and this module is the one place that
translates between them:

* labels: any labels scikit-learn accepts (strings, non-contiguous integers) become class
  indices ``0 .. n_classes_ - 1`` through ``classes_``; predictions go back to the labels;
* images: ``(n, height, width)`` or flat ``(n, height * width)`` rows (the side of a square
  inferred, or ``image_shape=``; a row that is not a square is one image row), of any real
  dtype; with ``input_scaling="auto"`` values outside [0, 1] are mapped into it by the
  range seen in ``fit`` (values past that range at prediction are clipped); images are then
  zero-padded, centred, to the shape the network needs (:meth:`_network_shape`);
* early stopping: a stratified part of the training set held out, scored after every
  epoch, the best epoch's parameters restored.

A model implements ``_network_shape``, ``_setup``/``_init_params`` (sizes from
``n_classes_``), ``_decision(images)`` (class scores of network images) and optionally
``_log_proba(images)``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d

from .._validate import (check_choice, check_dtype, check_finite, check_number,
                         check_positive_int, check_real_array)
from ..train.early_stopping import BestEpoch
from .base import Estimator

INPUT_SCALINGS = ("auto", "none")


def next_power_of_two(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def binary_margin(scores: np.ndarray) -> np.ndarray:
    """Scores ``(n, k)`` as scikit-learn's ``decision_function`` gives them: unchanged for
    k > 2, the second column minus the first for two classes."""
    return scores[:, 1] - scores[:, 0] if scores.shape[1] == 2 else scores


class ImageClassifier(ClassifierMixin, Estimator):
    """Base of the image classifiers: labels, image layouts, early stopping, predictions.

    Subclasses take these constructor parameters: ``n_classes``, ``image_shape``,
    ``input_scaling``, ``early_stopping``, ``validation_fraction``, ``n_iter_no_change``,
    ``batch_size``, ``epochs``, ``dtype``, ``random_state``.
    """

    @property
    def n_classes_(self) -> int:
        """Number of class outputs: set by ``fit`` (from ``y``, or ``n_classes``); before
        a fit, ``n_classes`` when given."""
        value = self.__dict__.get("_fitted_n_classes")
        if value is None:
            value = self.n_classes
        if value is None:
            raise AttributeError("n_classes_: set by fit (n_classes=None takes it from y)")
        return int(value)

    @n_classes_.setter
    def n_classes_(self, value: int) -> None:
        self.__dict__["_fitted_n_classes"] = int(value)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True  # (n, height, width) images
        return tags

    def _expected_failed_checks(self) -> Dict[str, str]:
        """scikit-learn's estimator checks that do not apply to this configuration, with
        the reason (pass to ``check_estimator(..., expected_failed_checks=...)``)."""
        if np.dtype(self.dtype) == np.float32:
            return {"check_methods_subset_invariance":
                    "float32 arithmetic: the batched kernels (BLAS blocks, chunked levels) "
                    "round differently for different batch sizes, by about float32's "
                    "epsilon (1e-7 relative), which is the check's tolerance; with "
                    "dtype='float64' the check passes"}
        return {}

    # -- configuration -------------------------------------------------------------------
    def _check_classifier_config(self) -> None:
        """The hyper-parameters every image classifier has."""
        if self.n_classes is not None:
            check_positive_int("n_classes", self.n_classes)
            if self.n_classes < 2:
                raise ValueError(f"n_classes: expected at least 2 (or None: from y), got "
                                 f"{self.n_classes}")
        if self.image_shape is not None:
            shape = tuple(self.image_shape) if hasattr(self.image_shape, "__len__") else ()
            if len(shape) != 2:
                raise ValueError(f"image_shape: expected (height, width), got "
                                 f"{self.image_shape!r}")
            for v in shape:
                check_positive_int("image_shape", v)
        check_choice("input_scaling", self.input_scaling, INPUT_SCALINGS)
        check_choice("early_stopping", self.early_stopping, (True, False))
        v = self.validation_fraction
        if isinstance(v, bool) or not isinstance(v, (float, int)) or not 0 < v < 1:
            raise ValueError(f"validation_fraction: expected a number in (0, 1), got {v!r}")
        check_positive_int("n_iter_no_change", self.n_iter_no_change)
        check_dtype("dtype", self.dtype)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("epochs", self.epochs)
        # the optimizer's settings, of the models trained by AdamW: a NaN or negative value
        # would fail only after training (or silently give NaN parameters)
        for name, low, low_open in (("lr", 0, False), ("weight_decay", 0, False),
                                    ("lr_gamma", 0, True)):
            if hasattr(self, name):
                check_number(name, getattr(self, name), low, low_open=low_open)
        if hasattr(self, "lr_step"):
            check_positive_int("lr_step", self.lr_step)

    # -- images --------------------------------------------------------------------------
    def _network_shape(self, height: int, width: int) -> Tuple[int, int]:
        """The image shape the network runs on for inputs of ``height x width`` (inputs are
        zero-padded, centred, to it). Default: each side to a power of two, at least 2x2."""
        return max(next_power_of_two(height), 2), max(next_power_of_two(width), 2)

    def _input_shape(self, X: np.ndarray) -> Tuple[int, int]:
        """``(height, width)`` of the images in a fit's ``X``."""
        if X.ndim == 3:
            shape = X.shape[1:]
            if self.image_shape is not None and tuple(self.image_shape) != shape:
                raise ValueError(f"X: expected images of image_shape={tuple(self.image_shape)}"
                                 f", got {shape[0]}x{shape[1]}")
            return int(shape[0]), int(shape[1])
        n_features = X.shape[1]
        if self.image_shape is not None:
            h, w = (int(v) for v in self.image_shape)
            if h * w != n_features:
                raise ValueError(f"X: rows of {n_features} features do not make images of "
                                 f"image_shape={(h, w)} ({h * w} pixels)")
            return h, w
        side = math.isqrt(n_features)
        if side * side == n_features:
            return side, side
        return 1, n_features  # not a square: one row of pixels

    def _check_X(self, X: Any, fitted: bool) -> np.ndarray:
        """The network's images for a user's ``X``: checked, reshaped, scaled into [0, 1]
        and padded. ``fitted=False`` (in ``fit``) fixes the shape and the scaling."""
        uint8 = getattr(X, "dtype", None) == np.uint8
        X = check_real_array("X", X)
        if X.ndim not in (2, 3):
            raise ValueError(f"X: expected images (n, height, width) or flat rows "
                             f"(n, height * width), got an array of shape {X.shape}; "
                             f"Reshape your data: a single image as X[None] or "
                             f"X.reshape(1, -1)")
        if X.shape[0] == 0:
            raise ValueError("X: expected at least one image, got 0")
        check_finite("X", X)
        if fitted:
            self._check_fitted()
            (h, w), network_shape, offset, scale = self._input_layout()
            if X.ndim == 2 and X.shape[1] != h * w:
                raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is "
                                 f"expecting {h * w} features as input (images of {h}x{w})")
            if X.ndim == 3 and tuple(X.shape[1:]) != (h, w):
                raise ValueError(f"X: expected images of shape {(h, w)} (as in fit), got "
                                 f"{tuple(X.shape[1:])}")
        else:
            h, w = self.input_shape_ = self._input_shape(X)
            offset, scale = self._fit_scaling(X, uint8)
            network_shape = self._network_shape(h, w)
        X = X.reshape(X.shape[0], h, w)
        if offset != 0.0 or scale != 1.0:
            X = (X - X.dtype.type(offset)) * X.dtype.type(scale)
        lo, hi = float(X.min()), float(X.max())
        if lo < 0 or hi > 1:
            if self.input_scaling == "none":
                raise ValueError(f"X: expected pixel values in [0, 1], got values in "
                                 f"[{lo:.4g}, {hi:.4g}] (scale uint8 images by 1/255, or "
                                 f"input_scaling='auto')")
            X = np.clip(X, 0, 1)  # beyond the range seen in fit
        ph, pw = network_shape
        if (ph, pw) != (h, w):
            top, left = (ph - h) // 2, (pw - w) // 2
            padded = np.zeros((X.shape[0], ph, pw), X.dtype)
            padded[:, top:top + h, left:left + w] = X
            X = padded
        return X

    def _adopt_image_size(self, X: Any) -> None:
        """``fit(warm_start=True)`` on images of another size: set the network up for them
        and keep the learned tensors, where the new network's tensors have exactly the same
        names and shapes (e.g. a scanning :class:`MERA2D`, whose shared levels read a fixed
        window at any canvas size); anything else is refused naming both sizes. The pixel
        scaling fixed in the first fit stays."""
        X = check_real_array("X", X)
        if X.ndim not in (2, 3) or X.shape[0] == 0:
            return  # _check_X says what is wrong
        old_shape = tuple(self._input_layout()[0])
        shape = self._input_shape(X)
        if shape == old_shape:
            return
        spec = self._state_spec()
        self.input_shape_ = shape
        self.network_shape_ = self._network_shape(*shape)
        self._setup(self.network_shape_)
        self.n_features_in_ = int(np.prod(shape))
        if spec is None or self._state_spec() != spec:
            raise ValueError(
                f"X: warm_start continues a model fitted on {old_shape[0]}x{old_shape[1]} "
                f"images; on {shape[0]}x{shape[1]} images its network has other tensors, so "
                f"fit from scratch (warm_start=False) or use images of the fitted size")

    def _fit_scaling(self, X: np.ndarray, uint8: bool = False) -> Tuple[float, float]:
        """The affine map of pixel values into [0, 1], fixed in ``fit``: none for images in
        [0, 1]; with ``input_scaling="auto"``, ``1/255`` for uint8 images and the range of
        the training images for anything else."""
        lo, hi = float(X.min()), float(X.max())
        self.input_offset_, self.input_scale_ = 0.0, 1.0
        if uint8 and hi > 1 and self.input_scaling == "auto":
            self.input_scale_ = 1.0 / 255.0
        elif (lo < 0 or hi > 1) and self.input_scaling == "auto":
            self.input_offset_ = lo
            self.input_scale_ = 1.0 / (hi - lo) if hi > lo else 1.0
        return self.input_offset_, self.input_scale_

    def _input_layout(self):
        """``(input shape, network shape, offset, scale)`` of a fitted model; a model set
        up directly through ``_setup`` (tests, benchmarks) takes its network's images as
        they are."""
        net = getattr(self, "network_shape_", None) or self.image_shape_
        return (getattr(self, "input_shape_", None) or net, net,
                getattr(self, "input_offset_", 0.0), getattr(self, "input_scale_", 1.0))

    def _check_augmented(self, images: np.ndarray) -> np.ndarray:
        """An ``augment`` callable's output: network images in [0, 1]."""
        images = np.asarray(images)
        check_finite("augment", images)
        lo, hi = float(images.min()), float(images.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"augment: expected it to return pixel values in [0, 1], got "
                             f"[{lo:.4g}, {hi:.4g}]")
        return images

    # -- labels --------------------------------------------------------------------------
    def _fit_classes(self, y: Any, n_samples: int) -> np.ndarray:
        """Set ``classes_`` and ``n_classes_`` from the training labels; return their
        class indices."""
        y = self._as_label_vector(y, n_samples)
        classes, idx = np.unique(y, return_inverse=True)
        k = self.n_classes
        if k is not None and y.dtype.kind in "iu" and classes[0] >= 0 and classes[-1] < k:
            # integer labels 0 .. k-1: every class has its output even if y lacks some
            self.classes_ = np.arange(k, dtype=y.dtype)
            self.n_classes_ = int(k)
            return y.astype(np.int64)
        if k is not None and len(classes) != k:
            raise ValueError(f"y: n_classes={k}, but y holds {len(classes)} distinct labels "
                             f"({_preview(classes)}); pass n_classes=None to take the classes "
                             f"from y")
        if len(classes) < 2:
            raise ValueError(f"y: expected at least 2 classes to classify, got 1 class "
                             f"({_preview(classes)})")
        self.classes_ = classes
        self.n_classes_ = len(classes)
        return idx.astype(np.int64)

    def _class_indices(self, y: Any, n_samples: int, name: str = "y") -> np.ndarray:
        """Indices into ``classes_`` of labels seen in fit (warm starts, validation data)."""
        y = self._as_label_vector(y, n_samples, name)
        idx = np.searchsorted(self.classes_, y)
        idx = np.minimum(idx, len(self.classes_) - 1)
        bad = self.classes_[idx] != y
        if np.any(bad):
            extra = np.unique(y[bad])
            raise ValueError(f"{name}: labels {_preview(extra)} were not among the classes "
                             f"seen in fit ({_preview(self.classes_)})")
        return idx.astype(np.int64)

    def _as_label_vector(self, y: Any, n_samples: int, name: str = "y") -> np.ndarray:
        if y is None:
            raise ValueError(f"{name}: {type(self).__name__} requires y to be passed, but the "
                             f"target y is None")
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:  # a column of labels
            y = column_or_1d(y, warn=True)
        if y.ndim != 1:
            raise ValueError(f"{name}: expected a 1-dimensional array of labels, got shape "
                             f"{y.shape}")
        if y.shape[0] != n_samples:
            raise ValueError(f"{name}: expected {n_samples} labels (one per image), got "
                             f"{y.shape[0]}")
        check_classification_targets(y)
        return y

    # -- fit -----------------------------------------------------------------------------
    def _start_fit(self, X: Any, y: Any, epochs: Any, batch_size: Any, warm_start: bool,
                   validation_data: Optional[Tuple[Any, Any]] = None,
                   restore_best: bool = False):
        """Checks shared by every ``fit``; (re)initialises unless warm-starting a fitted
        model, holds out the early-stopping split, places the learned state on the model's
        device. Returns ``(X, y, epochs, batch_size, rng, monitor)`` with network images,
        class indices and the :class:`BestEpoch` hook (None without validation)."""
        before = dict(self.__dict__)
        try:
            return self._prepare_fit(X, y, epochs, batch_size, warm_start, validation_data,
                                     restore_best)
        except BaseException:
            self.__dict__.clear()  # a failed check leaves the model as it was
            self.__dict__.update(before)
            raise

    def _prepare_fit(self, X, y, epochs, batch_size, warm_start, validation_data,
                     restore_best):
        self._check_config()
        self._device_module()  # a missing GPU fails here, before any work
        epochs = check_positive_int("epochs", epochs if epochs is not None else self.epochs)
        batch_size = check_positive_int("batch_size",
                                        batch_size if batch_size is not None else self.batch_size)
        fitted = warm_start and getattr(self, self._FITTED_ATTR, None) is not None
        if restore_best and validation_data is None and not self.early_stopping:
            raise ValueError("restore_best: needs validation_data (a split held out from "
                             "training, not the test set) or early_stopping=True")
        if fitted:
            self._adopt_image_size(X)
        X = self._check_X(X, fitted=fitted)
        y = (self._class_indices(y, X.shape[0]) if fitted
             else self._fit_classes(y, X.shape[0]))
        rng = np.random.default_rng(self.random_state)
        if validation_data is not None:
            Xv, yv = validation_data
            Xv = self._check_X(Xv, fitted=True) if fitted else None
            held = (validation_data, Xv)
        else:
            held = None
            if self.early_stopping:
                X, y, held_X, held_y = self._hold_out(X, y)
                if held_X is not None:
                    held = ((None, held_y), held_X)
        if not fitted:
            self.network_shape_ = tuple(X.shape[1:])
            self._setup(self.network_shape_)
            self._check_state_size()  # before allocating the parameters
            self.n_features_in_ = int(np.prod(self.input_shape_))
            self._init_params(rng)
            self.history_ = []
            self.best_epoch_ = None
        self._place_state()
        monitor = None
        if held is not None:
            (raw_Xv, yv), Xv = held
            if Xv is None:
                Xv = self._check_X(raw_Xv, fitted=True)
            yv = yv if raw_Xv is None else self._class_indices(yv, Xv.shape[0],
                                                               "validation_data")
            patience = self.n_iter_no_change if self.early_stopping else None
            keep = self.early_stopping or restore_best
            monitor = BestEpoch(lambda: self._validation_score(Xv, yv),
                                self._snapshot if keep else (lambda: None), patience,
                                first_epoch=len(self.history_) + 1)
        return X, y, epochs, batch_size, rng, monitor

    def _hold_out(self, X: np.ndarray, y: np.ndarray):
        """The early-stopping split: ``validation_fraction`` of the images, stratified,
        drawn with ``random_state``; none where the set is too small to give every class
        a held-out image and a training image."""
        n = X.shape[0]
        n_val = int(math.ceil(self.validation_fraction * n))
        counts = np.bincount(y, minlength=self.n_classes_)
        present = int(np.count_nonzero(counts))
        if n_val < present or n - n_val < present or counts[counts > 0].min() < 2:
            return X, y, None, None
        from sklearn.model_selection import train_test_split  # heavy: only when holding out

        seed = None if self.random_state is None else np.random.RandomState(
            self.random_state).randint(2 ** 31)
        idx = np.arange(n)
        fit_idx, val_idx = train_test_split(idx, test_size=n_val, stratify=y,
                                            random_state=seed)
        fit_idx.sort()
        val_idx.sort()
        return X[fit_idx], y[fit_idx], X[val_idx], y[val_idx]

    def _validation_score(self, images: np.ndarray, y: np.ndarray) -> Tuple[float, float]:
        """``(accuracy, -log-loss)`` on held-out network images: the accuracy picks the best
        epoch, the log-loss breaks its ties."""
        log_p = self._log_proba(images)
        accuracy = float(np.mean(np.argmax(log_p, axis=1) == y))
        picked = np.maximum(log_p[np.arange(len(y)), y], -1e300)
        return accuracy, float(np.mean(picked))

    def _epoch_hooks(self, monitor: Any, callbacks: Sequence[Callable]) -> List[Callable]:
        """The fit loop's end-of-epoch hooks: the early-stopping monitor (when there is
        one), then each ``callback(model, epoch, record)`` of ``fit``."""
        hooks: List[Callable] = [] if monitor is None else [monitor]
        hooks += [lambda epoch, rec, cb=cb: cb(self, epoch, rec) for cb in callbacks]
        return hooks

    def _finish_fit(self, monitor: Optional[BestEpoch]) -> None:
        """After the epochs: return to the best validation epoch where one was kept."""
        if monitor is not None and monitor.best_state is not None:
            self._restore(monitor.best_state)
            self.best_epoch_ = monitor.best_epoch
            self.best_validation_score_ = monitor.best_score[0]

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean accuracy of :meth:`predict` on ``(X, y)``; ``y`` is checked like ``fit``'s
        labels (one per image, and of the kind of ``classes_``: strings against numbers is
        an error, not an accuracy of 0)."""
        from sklearn.metrics import accuracy_score

        self._check_fitted()
        images = self._check_X(X, fitted=True)
        y = self._as_label_vector(y, images.shape[0])
        classes = getattr(self, "classes_", None)
        pred = self._predict_index(images)
        if classes is not None:
            check_label_kind(y, classes)
            pred = classes[pred]
        return float(accuracy_score(y, pred, sample_weight=sample_weight))

    # -- predictions ---------------------------------------------------------------------
    def decision_function(self, X: Any, batch_size: Optional[int] = None) -> np.ndarray:
        """Class scores ``(n, n_classes_)``, columns in the order of ``classes_``; for two
        classes the margin of the second over the first, ``(n,)`` (scikit-learn's
        convention)."""
        batch_size = check_batch_size(batch_size)
        self._check_fitted()
        return binary_margin(self._decision(self._check_X(X, fitted=True), batch_size))

    def predict(self, X: Any, batch_size: Optional[int] = None) -> np.ndarray:
        """Predicted labels (from ``classes_``), one per image."""
        batch_size = check_batch_size(batch_size)
        self._check_fitted()
        index = self._predict_index(self._check_X(X, fitted=True), batch_size)
        classes = getattr(self, "classes_", None)
        return index if classes is None else classes[index]

    def predict_proba(self, X: Any, batch_size: Optional[int] = None) -> np.ndarray:
        """Class probabilities ``(n, n_classes_)``, columns in the order of ``classes_``;
        rows sum to 1."""
        batch_size = check_batch_size(batch_size)
        self._check_fitted()
        return np.exp(self._log_proba(self._check_X(X, fitted=True), batch_size))

    def predict_log_proba(self, X: Any, batch_size: Optional[int] = None) -> np.ndarray:
        """Logarithms of :meth:`predict_proba`."""
        batch_size = check_batch_size(batch_size)
        self._check_fitted()
        return self._log_proba(self._check_X(X, fitted=True), batch_size)

    def _predict_index(self, images: np.ndarray, batch_size: Optional[int] = None) -> np.ndarray:
        """Class indices of network images: argmax of the scores."""
        return np.argmax(self._decision(images, batch_size), axis=1)

    def _log_proba(self, images: np.ndarray, batch_size: Optional[int] = None) -> np.ndarray:
        """Log-softmax of the scores (what cross-entropy training fits)."""
        z = np.asarray(self._decision(images, batch_size), dtype=np.float64)
        z = np.nan_to_num(z, nan=0.0, posinf=1e300, neginf=-1e300)
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    # -- checkpoints ---------------------------------------------------------------------
    def _contract_meta(self) -> Dict[str, Any]:
        return {"classes": self.classes_.tolist(), "input_shape": list(self.input_shape_),
                "input_offset": self.input_offset_, "input_scale": self.input_scale_,
                "network_shape": list(self.network_shape_),
                "best_epoch": self.best_epoch_}

    def _set_contract_state(self, meta: Dict[str, Any]) -> None:
        """Labels, input layout and scaling of a checkpoint (before the model's arrays;
        checkpoints written before these were stored hold integer classes 0..k-1 and
        unscaled, unpadded images)."""
        if "classes" in meta:
            classes = meta["classes"]
            kinds = {type(c) for c in classes} if isinstance(classes, list) else set()
            if not kinds or not (kinds <= {int, float} or kinds <= {str}) or any(
                    isinstance(c, float) and not math.isfinite(c) for c in classes):
                raise ValueError(f"classes: expected a list of finite numbers or of strings, "
                                 f"got {str(classes)[:200]}")
            classes = np.asarray(classes)
        elif self.n_classes is not None:
            classes = np.arange(int(self.n_classes))
        else:
            raise ValueError("classes: missing (and n_classes is None)")
        if classes.ndim != 1 or len(classes) < 2 or len(np.unique(classes)) != len(classes):
            raise ValueError(f"classes: expected 2 or more distinct labels, got "
                             f"{_preview(classes)}")
        self.classes_ = classes
        self.n_classes_ = len(classes)
        self.input_shape_ = _meta_shape(meta, "input_shape")
        self.network_shape_ = _meta_shape(meta, "network_shape")
        offset, scale = meta.get("input_offset", 0.0), meta.get("input_scale", 1.0)
        check_number("input_offset", offset)
        check_number("input_scale", scale, 0, low_open=True)
        self.input_offset_, self.input_scale_ = float(offset), float(scale)
        self.n_features_in_ = int(np.prod(self.input_shape_))
        best = meta.get("best_epoch")
        if best is not None:
            check_positive_int("best_epoch", best)
        self.best_epoch_ = best

    def _checkpoint_spec(self, meta: Dict[str, Any]):
        """Set up the network of the saved images (checked against the saved input shape
        and bounded in size before anything is allocated); the arrays it needs."""
        image_shape = _meta_shape(meta, "image_shape")
        if image_shape != self.network_shape_:
            raise ValueError(f"image_shape: expected the network shape "
                             f"{self.network_shape_}, got {image_shape}")
        want = self._network_shape(*self.input_shape_)
        if tuple(want) != self.network_shape_:
            raise ValueError(f"network_shape: expected {tuple(want)} for inputs of "
                             f"{self.input_shape_} with these parameters, got "
                             f"{self.network_shape_}")
        self._setup(self.network_shape_)
        return self._check_state_size()

    # Hyper-parameters that set the number of learned numbers (named when it is too large).
    _SIZE_PARAMS: Tuple[str, ...] = ()

    def _check_state_size(self):
        """After ``_setup``: refuse a model whose learned arrays would hold more than
        ``MAX_STATE_ELEMENTS`` numbers, before they are allocated (or a TTN2D of chi=10**6
        would take hours to fail); return the :meth:`_state_spec`."""
        from .base import MAX_STATE_ELEMENTS

        spec = self._state_spec()
        if spec is None:
            return None
        total = sum(math.prod(shape) for shape, _ in spec.values())
        if total > MAX_STATE_ELEMENTS:
            names = ", ".join(self._SIZE_PARAMS) or "parameters"
            raise ValueError(f"{names}: expected a model of at most {MAX_STATE_ELEMENTS:,} "
                             f"learned numbers, these give {total:,} for "
                             f"{self.network_shape_[0]}x{self.network_shape_[1]} network "
                             f"images")
        return spec


def _meta_shape(meta: Dict[str, Any], key: str) -> Tuple[int, int]:
    """``(height, width)`` of a checkpoint's metadata (older checkpoints hold only
    ``image_shape``), bounded by ``MAX_PIXELS``."""
    from .base import MAX_PIXELS

    shape = meta.get(key, meta.get("image_shape"))
    if not (isinstance(shape, list) and len(shape) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                    for v in shape)):
        raise ValueError(f"{key}: expected [height, width], two positive integers, got "
                         f"{str(shape)[:100]}")
    if shape[0] * shape[1] > MAX_PIXELS:
        raise ValueError(f"{key}: expected images of at most {MAX_PIXELS} pixels, got "
                         f"{shape[0]}x{shape[1]}")
    return int(shape[0]), int(shape[1])


def check_batch_size(batch_size: Any) -> Optional[int]:
    """A prediction's ``batch_size``: None (the model's default) or a positive integer
    (0 is not read as the default)."""
    return None if batch_size is None else check_positive_int("batch_size", batch_size)


def check_label_kind(y: np.ndarray, classes: np.ndarray) -> None:
    """Labels to compare with ``classes``: numbers against numbers, text against text."""
    def kind(a):
        a = np.asarray(a)
        if a.dtype.kind == "O":
            return "text" if all(isinstance(v, str) for v in a.ravel()[:100]) else "number"
        return "text" if a.dtype.kind in "USO" else "number"

    if len(y) and kind(y) != kind(classes):
        raise ValueError(f"y: expected labels of the kind seen in fit ({kind(classes)}s such "
                         f"as {_preview(classes[:3])}), got {kind(y)}s such as "
                         f"{_preview(np.asarray(y)[:3])}")


def _preview(values: np.ndarray, k: int = 6) -> str:
    """A short list of labels for messages."""
    vals = list(np.asarray(values).tolist())
    more = f", ... ({len(vals)} in all)" if len(vals) > k else ""
    return "[" + ", ".join(repr(v) for v in vals[:k]) + more + "]"
