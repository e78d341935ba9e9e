"""2D tree tensor network classifier (Liu et al.): feature map -> levels of 2x2 -> 1 tree
nodes -> class scores.

Every pixel becomes the degree-``d`` cos/sin vector, then each level contracts every 2x2
block of sites into one site of dimension ``chi`` with its own tensor
(``fasttn.ops.tree_node``), until one site remains: the class scores. Between levels every
site is divided by its norm and the log of the norm is tracked (each node is linear in each
of its sites, so the exact network output is the scores times ``exp(log_scale)`` per image).

Two heads: ``top="multiclass"``, one tree whose last tensor outputs ``n_classes`` scores, or
``top="ovr"``, one binary tree per class (the reference's one-vs-rest set-up), whose class
score is the tree's "yes" output minus its "no" output. The ``ovr`` trees are stacked along
the grid's height and run as one tree layer per level.

Two solvers: ``adam`` (backpropagation, softmax cross-entropy) and ``sweep``, the reference's
isometric update. Level by level from the bottom, the environment of every tensor (the
derivative of the fidelity ``sum_n <label_n | out_n>`` with respect to that tensor, the
normalisations held fixed, summed over the training images) is computed, and the tensor is
set to ``U V^T`` from its SVD ``E = U S V^T``, the isometry that maximises the fidelity with
the rest of the network fixed. All tensors of a level are updated together (their inputs do
not overlap), the SVDs of a level as one stack through ``fasttn.ops.svd_truncate``.

With ``device="cuda"`` the weights, activations, gradients, environments and optimizer
moments stay on the GPU; each batch (each chunk of a sweep's pass) goes up once.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm.auto import tqdm

from .. import ops
from .._validate import check_choice, check_per_level, check_positive_int
from ..backend import array_module, to_numpy
from ..ops.site_norm import site_norm_backward, site_norm_forward, unit_sites
from ..train import AdamW, StepLR
from ..train.loop import fit_loop
from ..train.losses import cross_entropy_loss, n_correct
from ..train.stiefel import isometry_error
from .base import register
from .classifier import ImageClassifier, next_power_of_two
from .layer_outputs import gather_layer_outputs

TOPS = ("multiclass", "ovr")
SOLVERS = ("adam", "sweep")
_SWEEP_CHUNK = 1024  # images per environment pass: bounds the memory of a sweep


@register
class TTN2D(ImageClassifier):
    """Tree tensor network. The network runs on square images whose side is a power of 2
    (at least 2); other images are zero-padded, centred, to the next such square.

    Parameters
    ----------
    n_classes : int, optional
        Number of class outputs; None (default) takes the classes from ``y`` in ``fit``
        (see :class:`QCNN`).
    chi : int or sequence of int
        Bond dimension of the output sites of every level but the last (one value, or one per
        level from the bottom).
    d : int
        Degree of the cos/sin feature map (``d = 2``: [cos(pi x / 2), sin(pi x / 2)]).
    top : {"multiclass", "ovr"}
        One tree with ``n_classes`` outputs, or one binary tree per class.
    solver : {"adam", "sweep"}
        Backpropagation with AdamW, or the isometric environment-SVD sweep (``epochs``
        sweeps over the levels, bottom to top).
    lr, weight_decay, lr_step, lr_gamma : float, float, int, float
        AdamW; the learning rate is multiplied by ``lr_gamma`` every ``lr_step`` epochs.
    batch_size, epochs : int
    init_scale : float
        Gaussian initialisation, each tensor then made an isometry (its polar factor) and
        multiplied by ``init_scale``.
    image_shape, input_scaling, early_stopping, validation_fraction, n_iter_no_change
        Input layout, pixel scaling and early stopping, as for :class:`QCNN` (early
        stopping scores every Adam epoch or sweep).
    dtype : {"float32", "float64"}
    device : {"cpu", "cuda"}
        Where training and inference run (both solvers). ``"cuda"`` keeps the weights and
        optimizer state on the GPU (CuPy arrays) and needs CuPy and an NVIDIA GPU (checked
        by ``fit``); results come back as NumPy arrays and checkpoints hold host arrays.
    random_state : int, optional
    verbose : int
    """

    _FITTED_ATTR = "weights_"
    _DEVICE_STATE = ("weights_",)

    def __init__(self, n_classes: Optional[int] = None, chi: Union[int, Sequence[int]] = 8, d: int = 2,
                 top: str = "multiclass", solver: str = "adam", lr: float = 0.01,
                 weight_decay: float = 0.0, lr_step: int = 10, lr_gamma: float = 0.5,
                 batch_size: int = 64, epochs: int = 15, init_scale: float = 1.0,
                 image_shape: Optional[Tuple[int, int]] = None, input_scaling: str = "auto",
                 early_stopping: bool = True, validation_fraction: float = 0.1,
                 n_iter_no_change: int = 4,
                 dtype: str = "float32", device: str = "cpu",
                 random_state: Optional[int] = None, verbose: int = 0):
        self.n_classes = n_classes
        self.chi = chi
        self.d = d
        self.top = top
        self.solver = solver
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_step = lr_step
        self.lr_gamma = lr_gamma
        self.batch_size = batch_size
        self.epochs = epochs
        self.init_scale = init_scale
        self.image_shape = image_shape
        self.input_scaling = input_scaling
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.dtype = dtype
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    PAPER = dict(top="ovr", solver="sweep", chi=4, d=2, epochs=3, early_stopping=False)

    @classmethod
    def paper(cls, **params: Any) -> "TTN2D":
        """Liu et al.'s tree as its reference code trains it: one binary tree per class,
        bond dimension 4, the [cos, sin] map, three isometric environment-SVD sweeps, no
        early stopping; ``params`` override any of these."""
        return cls(**{**cls.PAPER, **params})

    # ------------------------------------------------------------------ configuration
    def _check_config(self) -> None:
        self._check_classifier_config()
        check_positive_int("d", self.d)
        ops.feature_maps.n_channels("cos_sin", self.d, False)
        check_choice("top", self.top, TOPS)
        check_choice("solver", self.solver, SOLVERS)
        self._check_device()
        check_per_level("chi", self.chi)

    def _network_shape(self, height: int, width: int) -> Tuple[int, int]:
        side = max(next_power_of_two(max(height, width)), 2)
        return side, side

    def _setup(self, image_shape: Tuple[int, int]) -> None:
        h, w = image_shape
        if h != w or h < 2 or h & (h - 1):
            raise ValueError(f"X: expected square images whose side is a power of 2 (2, 4, 8, "
                             f"..., 1024), got {h}x{w}; pad or resize them")
        levels = h.bit_length() - 1
        chis = check_per_level("chi", self.chi, levels - 1,
                               f" below the top for {h}x{w} images")
        self.image_shape_ = (h, w)
        self.n_levels_ = levels
        self.n_trees_ = self.n_classes_ if self.top == "ovr" else 1
        d_top = 2 if self.top == "ovr" else self.n_classes_
        self.site_dims_ = [int(self.d)] + chis + [d_top]  # site dimension entering each level

    def _weight_shape(self, level: int) -> Tuple[int, ...]:
        side = self.image_shape_[0] >> (level + 1)
        p, out = self.site_dims_[level], self.site_dims_[level + 1]
        return (self.n_trees_ * side, side, p, p, p, p, out)

    _SIZE_PARAMS = ("chi", "d")

    def _state_spec(self) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
        """Shapes and dtypes of the learned arrays after ``_setup``."""
        return {f"w{level}": (self._weight_shape(level), np.dtype(self.dtype))
                for level in range(self.n_levels_)}

    def _init_params(self, rng: np.random.Generator) -> None:
        dt = np.dtype(self.dtype)
        self.weights_: List[np.ndarray] = []
        for level in range(self.n_levels_):
            shape = self._weight_shape(level)
            t = rng.standard_normal(shape)
            self.weights_.append((self.init_scale * _polar(t)).astype(dt))

    @property
    def n_params_(self) -> int:
        return int(sum(w.size for w in self.weights_))

    # ----------------------------------------------------------------------- compute
    def _features(self, X: np.ndarray) -> np.ndarray:
        """``(n, trees * H, W, d)``: the feature map, repeated once per tree."""
        xp = array_module(X)
        x = ops.feature_map(xp.ascontiguousarray(X, dtype=self.dtype), "cos_sin", self.d)
        return xp.concatenate([x] * self.n_trees_, axis=1) if self.n_trees_ > 1 else x

    def _forward(self, X: np.ndarray, keep_sites: bool = False):
        """``(out, tapes, norms, log_scale, sites)``: the top output ``(n, trees, 1, d_top)``,
        the saved state of every level, the log-norm tracking, and (with ``keep_sites``)
        every level's normalised output."""
        x = self._features(X)
        n = X.shape[0]
        log_scale = array_module(x).zeros((n, self.n_trees_))
        tapes, norms, sites = [], [], []
        for level, w in enumerate(self.weights_):
            out, saved = ops.tree_node_forward(x, w)
            tapes.append(saved)
            if level < self.n_levels_ - 1:
                x, log_norm, nsaved = site_norm_forward(out)
                log_scale += log_norm.reshape(n, self.n_trees_, -1).sum(axis=2)
                norms.append(nsaved)
                if keep_sites:
                    sites.append(x)
        return out, tapes, norms, (log_scale if self.n_trees_ > 1 else log_scale[:, 0]), sites

    def _backward(self, tapes, norms, g: np.ndarray, down_to: int = 0,
                  frozen_norms: bool = False) -> List[Optional[np.ndarray]]:
        """Weight gradients of levels ``down_to..top`` from ``g = dL/d out``. With
        ``frozen_norms`` the normalisations count as constants (the sweep's environments)."""
        grads: List[Optional[np.ndarray]] = [None] * self.n_levels_
        for level in range(self.n_levels_ - 1, down_to - 1, -1):
            g_x, grads[level] = ops.tree_node_backward(tapes[level], g,
                                                       need_g_x=level > down_to)
            tapes[level] = None
            if level > down_to:
                norm = norms[level - 1][1]
                g = ((g_x / norm[..., None]).astype(g_x.dtype) if frozen_norms
                     else site_norm_backward(norms[level - 1], g_x))
        return grads

    def _scores(self, out: np.ndarray) -> np.ndarray:
        out = out.astype(np.float64)
        if self.top == "ovr":
            return out[:, :, 0, 1] - out[:, :, 0, 0]
        return out.reshape(out.shape[0], self.n_classes_)

    def _loss(self, out: np.ndarray, y: np.ndarray) -> Tuple[float, np.ndarray]:
        """Mean softmax cross-entropy (summed over the binary trees with ``ovr``) and its
        gradient with respect to ``out``."""
        n = out.shape[0]
        if self.top == "ovr":
            pairs = out.reshape(n * self.n_trees_, 2)
            trees = array_module(out).arange(self.n_trees_)
            yes = (y[:, None] == trees).astype(np.int64).reshape(-1)
            loss, g = cross_entropy_loss(pairs, yes)
            return loss * self.n_trees_, (g * self.n_trees_).reshape(out.shape)
        loss, g = cross_entropy_loss(out.reshape(n, self.n_classes_), y)
        return loss, g.reshape(out.shape)

    def _target(self, y: np.ndarray, dtype) -> np.ndarray:
        """The label states ``|label_n>`` in the shape of the top output (on the labels'
        device)."""
        xp = array_module(y)
        n = y.shape[0]
        if self.top == "ovr":
            t = xp.zeros((n, self.n_trees_, 1, 2), dtype)
            t[:, :, 0, 1] = y[:, None] == xp.arange(self.n_trees_)
            t[:, :, 0, 0] = 1 - t[:, :, 0, 1]
            return t
        t = xp.zeros((n, 1, 1, self.n_classes_), dtype)
        t[xp.arange(n), 0, 0, y] = 1
        return t

    def _forward_backward(self, X: np.ndarray, y: np.ndarray):
        out, tapes, norms, _, _ = self._forward(X)
        loss, g = self._loss(out, y)
        grads = self._backward(tapes, norms, g.astype(self.dtype))
        return self._scores(out), loss, grads

    # ------------------------------------------------------------------------ training
    def fit(self, X: Any, y: Any, *, epochs: Optional[int] = None,
            batch_size: Optional[int] = None,
            validation_data: Optional[Tuple[Any, Any]] = None,
            callbacks: Sequence[Callable[["TTN2D", int, Dict], Optional[Dict]]] = (),
            warm_start: bool = False) -> "TTN2D":
        """Train on images ``X : (n, side, side)`` in [0, 1] with labels ``y``.

        ``epochs`` counts passes of AdamW (``solver="adam"``) or isometric sweeps
        (``solver="sweep"``).

        Returns
        -------
        self, with ``history_`` (one dict per epoch or sweep: loss (Adam) or fidelity and
        ``entropy`` (sweeps: per level, the mean entropy of the environments' normalised
        squared singular values, the spectrum each update keeps), accuracy, seconds, and
        ``val_accuracy`` with ``validation_data``). Each ``callbacks`` entry,
        ``f(model, epoch, record) -> dict or None``, runs after each epoch or sweep; returned
        items join that record.
        """
        X, y, epochs, batch_size, rng, monitor = self._start_fit(
            X, y, epochs, batch_size, warm_start, validation_data)
        hooks = self._epoch_hooks(monitor, callbacks)
        start = len(self.history_)
        if self.solver == "sweep":
            hist = self._fit_sweeps(X, y, epochs, hooks)
        else:
            opt = AdamW(self.weights_, lr=self.lr, weight_decay=self.weight_decay)
            sched = StepLR(opt, step_size=self.lr_step, gamma=self.lr_gamma)

            def step(idx):
                X_b, y_b = self._batch_to_device(X[idx], y[idx])
                scores, loss, grads = self._forward_backward(X_b, y_b)
                opt.step(grads)
                return loss, n_correct(scores, y_b)

            hist = fit_loop(step, len(y), epochs=epochs, batch_size=batch_size, rng=rng,
                            set_epoch=lambda e: sched.set_epoch(start + e),
                            end_of_epoch=hooks, verbose=self.verbose, desc="TTN2D")
        for rec in hist:
            rec["epoch"] += start
        self.history_.extend(hist)
        self._finish_fit(monitor)
        return self

    def _batch_to_device(self, X: np.ndarray, y: Optional[np.ndarray] = None):
        """Images (and labels) of one batch on the model's device, one transfer each; the
        images in the model dtype, cast on the host so that no wider copy goes up."""
        X = self._to_device(np.ascontiguousarray(X, dtype=self.dtype))
        return X if y is None else (X, self._to_device(y))

    def environments(self, X: Any, y: Any, level: int) -> np.ndarray:
        """The environment of every tensor of ``level``: the derivative of the fidelity
        ``sum_n <label_n | out_n>`` with respect to it, the normalisations held fixed,
        summed over the images (float64 NumPy array, the shape of the level's weights)."""
        self._check_fitted()
        X = self._check_X(X, fitted=True)
        return to_numpy(self._environments(X, self._class_indices(y, X.shape[0]), level))

    def _environments(self, X: np.ndarray, y: np.ndarray, level: int) -> Any:
        """:meth:`environments` on the weights' device, chunk by chunk."""
        env = array_module(self.weights_[level]).zeros(self.weights_[level].shape)
        for i in range(0, X.shape[0], _SWEEP_CHUNK):
            Xc, yc = self._batch_to_device(X[i:i + _SWEEP_CHUNK], y[i:i + _SWEEP_CHUNK])
            out, tapes, norms, _, _ = self._forward(Xc)
            grads = self._backward(tapes, norms, self._target(yc, out.dtype), down_to=level,
                                   frozen_norms=True)
            env += grads[level]
        return env

    def _fit_sweeps(self, X: np.ndarray, y: np.ndarray, sweeps: int, hooks) -> List[Dict]:
        history = []
        for sweep in range(sweeps):
            t0 = time.perf_counter()
            bar = tqdm(range(self.n_levels_), desc=f"TTN2D sweep {sweep + 1}/{sweeps}",
                       disable=self.verbose <= 0, leave=False, file=sys.stderr, unit="level")
            entropy = []
            for level in bar:
                env = self._environments(X, y, level)
                self.weights_[level][...], ent = _polar(env, with_entropy=True)
                entropy.append(float(ent.mean()))
            fidelity, correct = 0.0, 0
            for i in range(0, X.shape[0], _SWEEP_CHUNK):
                Xc, yc = self._batch_to_device(X[i:i + _SWEEP_CHUNK], y[i:i + _SWEEP_CHUNK])
                out = self._forward(Xc)[0]
                fidelity += float((out * self._target(yc, out.dtype)).sum())
                correct += n_correct(self._scores(out), yc)
            record = {"epoch": sweep + 1, "fidelity": fidelity / X.shape[0],
                      "accuracy": correct / X.shape[0], "entropy": entropy,
                      "seconds": time.perf_counter() - t0}
            for fn in hooks:
                record.update(fn(sweep, record) or {})
            stop = bool(record.pop("stop", False))
            history.append(record)
            if self.verbose > 0:
                tqdm.write("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in record.items()), file=sys.stdout)
            if stop:
                break
        return history

    def isometry_errors(self) -> List[float]:
        """``max |T^T T - I|`` over the tensors of each level (viewed as inputs x output)."""
        self._check_fitted()
        errs = []
        for w in map(to_numpy, self.weights_):
            mats = w.reshape(-1, w.shape[2] ** 4, w.shape[-1])
            errs.append(max(isometry_error(m) for m in mats))
        return errs

    # ------------------------------------------------------------------------ public
    def _batched(self, X: np.ndarray, batch_size: int, fn) -> np.ndarray:
        """``fn`` of each batch of network images on the model's device, gathered on the
        host."""
        check_positive_int("batch_size", batch_size)
        return np.concatenate([to_numpy(fn(self._batch_to_device(X[i:i + batch_size])))
                               for i in range(0, X.shape[0], batch_size)])

    def _decision(self, images: np.ndarray, batch_size: Optional[int] = None) -> np.ndarray:
        """Class scores ``(n, n_classes_)``: the top output (``ovr``: each tree's "yes"
        minus its "no"), of the network divided by ``exp(log_scale)`` per image."""
        return self._batched(images, batch_size or 256,
                             lambda b: self._scores(self._forward(b)[0]))

    def log_scale(self, X: Any, batch_size: int = 256) -> np.ndarray:
        """Log of the factor the normalisations divided out: ``(n,)``, or ``(n, n_classes)``
        with ``ovr`` (one factor per tree). The exact network's top output is the
        normalised one times ``exp(log_scale)``."""
        self._check_fitted()
        return self._batched(self._check_X(X, fitted=True), batch_size,
                             lambda b: self._forward(b)[3])

    def layer_outputs(self, X: Any, batch_size: int = 256) -> Dict[str, np.ndarray]:
        """Each layer's representation of every image, flattened, float64.

        Returns
        -------
        dict, in network order: ``"input"`` (the feature-mapped pixels), ``"level 1"`` ...
        ``"level L-1"`` (each level's normalised output sites; with ``ovr`` the trees side
        by side), ``"scores"`` (as :meth:`decision_function`).
        """
        self._check_fitted()
        X = self._check_X(X, fitted=True)

        def forward(start: int, stop: int) -> List[np.ndarray]:
            b = self._batch_to_device(X[start:stop])
            out, _, _, _, sites = self._forward(b, keep_sites=True)
            xp = array_module(b)
            feats = ops.feature_map(xp.ascontiguousarray(b, dtype=self.dtype), "cos_sin", self.d)
            layers = [feats] + [unit_sites(s) for s in sites] + [self._scores(out)]
            return [to_numpy(a) for a in layers]

        return gather_layer_outputs(X.shape[0], batch_size, forward)

    # ------------------------------------------------------------------- checkpoints
    def _state_arrays(self) -> Dict[str, np.ndarray]:
        return {f"w{level}": w for level, w in enumerate(self.weights_)}

    def _state_meta(self) -> Dict[str, Any]:
        return {"image_shape": list(self.image_shape_), "history": self.history_}

    def _set_state(self, arrays: Dict[str, np.ndarray], meta: Dict[str, Any]) -> None:
        self._check_config()
        self._setup(tuple(meta["image_shape"]))
        self.weights_ = []
        for level in range(self.n_levels_):
            a = arrays[f"w{level}"]
            shape = self._weight_shape(level)
            if a.shape != shape:
                raise ValueError(f"checkpoint: w{level} has shape {a.shape}, expected {shape}")
            self.weights_.append(a)
        self.history_ = meta.get("history", [])


def _polar(t: np.ndarray, with_entropy: bool = False):
    """The polar factor ``U V^T`` of every tensor of a level, viewed as (p^4, out) matrices,
    as one stacked SVD (float64); with ``with_entropy`` also the entropy of each matrix's
    normalised squared singular values."""
    shape = t.shape
    xp = array_module(t)
    mats = xp.asarray(t, dtype=np.float64).reshape(-1, shape[2] ** 4, shape[-1])
    split = ops.svd_truncate(mats, absorb="none")
    polar = xp.matmul(split.left, split.right).reshape(shape)
    return (polar, split.entropy) if with_entropy else polar
