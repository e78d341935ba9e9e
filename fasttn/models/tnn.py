"""TNN: a sequential network of ``Dense`` and MPO ``TNLayer`` layers (Jahromi & Orus).

Trained either by backpropagation with Adam over every parameter (``solver="adam"``) or by
the DMRG-like sweep of the paper (``solver="sweep"``): the MPO cores are updated in pairs
(bond tensor, gradient step, truncated SVD back to bond dimension ``bond_dim``), the dense
layers and biases by gradient steps, either all layers at each bond update (``"pal"``) or
one layer after the other (``"lbl"``). Classification (cross-entropy on a softmax or
sigmoid output) and regression (mean squared error) share one estimator.

With ``device="cuda"`` the Adam solver keeps the layers' parameters, activations,
gradients and optimizer moments on the GPU; each batch goes up once. The sweep solvers run
on the CPU only.
"""
from __future__ import annotations

import copy
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm.auto import tqdm

from sklearn.utils import ClassifierTags, RegressorTags
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d

from .._numba import compile_watch
from .._validate import check_choice, check_dtype, check_finite, check_positive_int, check_real_array
from ..backend import array_module, to_numpy
from ..ops.svd_truncate import svd_truncate
from ..train import AdamW
from ..train.losses import cross_entropy_loss
from ..train.loop import fit_loop, restart_clock
from ..train.sweeps import MPOSweep, run_sweep
from .base import Estimator, register
from .classifier import check_label_kind
from .tnn_layers import (Dense, Layer, TNLayer, activation_forward, factor_dims, fusable,
                         fused_backward, fused_forward, layer_from_config)

LOSSES = ("auto", "cross_entropy", "mse")
SOLVERS = ("adam", "sweep")
SCHEDULES = ("pal", "lbl")
SWEEP_ENGINES = ("auto", "compiled", "python")


def _as_layers(layers: Sequence[Any]) -> List[Layer]:
    if isinstance(layers, (Layer, dict)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"layers: expected a list of Dense/TNLayer layers, got "
                        f"{type(layers).__name__}")
    out = [layer_from_config(l) if isinstance(l, dict) else l for l in layers]
    for k, layer in enumerate(out):
        if not isinstance(layer, Layer):
            raise TypeError(f"layers[{k}]: expected a Dense or TNLayer, got {type(layer).__name__}")
    if not out:
        raise ValueError("layers: expected at least one layer, got none")
    return out


#: The default stack's hidden layer: 512 ReLU units on 3 sites (8 x 8 x 8 outputs) with bond
#: dimension 16, chosen by 5-fold cross-validation on the digits' training split (0.974 with
#: Adam; 0.962 for the 64-unit, 6-site, bond-4 layer it replaces, which underfits the classes
#: it has to separate).
DEFAULT_HIDDEN_DIMS = (8, 8, 8)
DEFAULT_BOND = 16


def default_layers(n_features: int, n_classes: int) -> List[Dict[str, Any]]:
    """The classifier that ``TNN(layers=None)`` builds for ``n_features`` inputs and
    ``n_classes`` classes: one ReLU ``TNLayer`` of 512 units (3 sites, outputs 8 x 8 x 8,
    inputs split into 3 near-equal factors, bond dimension 16), then a softmax ``Dense``
    head. Inputs whose width does not split into 3 factors > 1 (primes, widths below 8)
    first go through a frozen ``Dense`` to the next power of two >= 8 (a fixed random
    linear map, which loses nothing when it widens)."""
    sites = len(DEFAULT_HIDDEN_DIMS)
    layers: List[Layer] = []
    try:
        factor_dims(int(n_features), sites, "n_features")
    except ValueError:
        layers.append(Dense(max(1 << (int(n_features) - 1).bit_length(), 1 << sites),
                            trainable=False))
    layers += [TNLayer(int(np.prod(DEFAULT_HIDDEN_DIMS)), n_sites=sites,
                       out_dims=DEFAULT_HIDDEN_DIMS, bond_dim=DEFAULT_BOND, activation="relu"),
               Dense(int(n_classes), activation="softmax")]
    return [layer.get_config() for layer in layers]


class _Fused:
    """Saved state of a ``Dense(linear) -> TNLayer`` pair run as one contraction."""

    __slots__ = ("saved", "tail_pending")

    def __init__(self, saved):
        self.saved = saved
        self.tail_pending = True


@register
class TNN(Estimator):
    """Sequential tensor neural network of ``Dense`` and ``TNLayer`` layers.

    Parameters
    ----------
    layers : list of Dense / TNLayer (or their config dicts), optional
        Applied in order to feature vectors; the last layer's activation and size fix the
        task: softmax (or a single sigmoid unit) for classification, anything else for
        regression. ``None`` (default): a classifier built at ``fit`` from the data's width
        and classes, see :func:`default_layers` (stored in ``layer_configs_``).
    loss : {"auto", "cross_entropy", "mse"}
        ``auto``: cross-entropy after a softmax or sigmoid output, else mean squared error.
    solver : {"adam", "sweep"}
        ``adam``: backpropagation over every parameter. ``sweep``: DMRG-like sweeps on the
        MPO cores (plain gradient steps of size ``sweep_lr`` on bond tensors, truncated
        SVD to the layer's ``bond_dim`` and ``cutoff``), Adam on the other parameters.
    schedule : {"pal", "lbl"}
        For sweeps: all layers at every bond update (PaL) or layer by layer (LbL).
    lr : float
        Adam learning rate.
    sweep_lr : float
        Step size on the bond tensors.
    sweep_step : {"plain", "scaled"}
        ``plain``: ``B <- B - sweep_lr dL/dB`` (the paper's step). ``scaled``: the step is
        divided by the squared norms of the bond's environments, so that it moves ``W`` no
        further than a gradient step of the same size on ``W`` would; stable for any bond
        dimension and weight scale.
    cutoff : float
        Relative singular-value cutoff of the sweeps' SVDs (0 keeps ``bond_dim``).
    sweep_engine : {"auto", "compiled", "python"}
        How sweeps run. ``compiled``: a whole PaL sweep in one Numba call
        (``train/pal_compiled.py``), for frozen Dense layers (or none) -> one TNLayer ->
        one trainable Dense head; same results as ``python`` (the layer objects and
        ``run_sweep``, any network) to rounding. ``auto`` takes ``compiled`` when the
        network and schedule allow it; ``compiled`` raises when they do not.
    epochs : int
        Passes over the data (Adam) or sweeps (sweep solver).
    batch_size : int, optional
        Mini-batch size; None uses the whole training set per step (the paper's setting).
    dtype : float32 or float64
    random_state : int, optional
    verbose : int
    device : {"cpu", "cuda"}
        Where training and inference run. ``"cuda"`` keeps the layers' parameters and the
        optimizer state on the GPU (CuPy arrays) and needs CuPy and an NVIDIA GPU (checked
        by ``fit``) and ``solver="adam"`` (the sweep solvers run on the CPU); results come
        back as NumPy arrays and checkpoints hold host arrays.
    """

    _FITTED_ATTR = "n_features_in_"

    def __init__(self, layers: Optional[Sequence[Any]] = None, loss: str = "auto", solver: str = "adam",
                 schedule: str = "pal", lr: float = 0.01, sweep_lr: float = 0.1,
                 sweep_step: str = "plain",
                 cutoff: float = 0.0, epochs: int = 100, batch_size: Optional[int] = None,
                 dtype: Any = "float64", random_state: Optional[int] = None, verbose: int = 0,
                 sweep_engine: str = "auto", device: str = "cpu"):
        self.layers = layers
        self.loss = loss
        self.solver = solver
        self.schedule = schedule
        self.lr = lr
        self.sweep_lr = sweep_lr
        self.sweep_step = sweep_step
        self.cutoff = cutoff
        self.epochs = epochs
        self.batch_size = batch_size
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose
        self.sweep_engine = sweep_engine
        self.device = device

    # -- configuration ------------------------------------------------------------------
    def _configs(self) -> Optional[List[Dict[str, Any]]]:
        """The ``layers`` parameter as fresh config dicts (None: the default stack, built
        in ``fit`` from the data)."""
        if self.layers is None:
            return None
        return [l.get_config() for l in _as_layers(self.layers)]

    def _check_config(self) -> None:
        self._configs()
        check_choice("loss", self.loss, LOSSES)
        check_choice("solver", self.solver, SOLVERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("sweep_step", self.sweep_step, ("plain", "scaled"))
        check_choice("sweep_engine", self.sweep_engine, SWEEP_ENGINES)
        if self._check_device() != "cpu" and self.solver == "sweep":
            raise ValueError(f"solver: the sweep solvers ('sweep') run on the CPU only; use "
                             f"solver='adam' with device={self.device!r}, or device='cpu'")
        check_dtype("dtype", self.dtype)
        check_positive_int("epochs", self.epochs)
        if self.batch_size is not None:
            check_positive_int("batch_size", self.batch_size)
        for name in ("lr", "sweep_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                raise ValueError(f"{name}: expected a positive finite number, got {v!r}")
        if not (isinstance(self.cutoff, (int, float)) and 0 <= self.cutoff < 1):
            raise ValueError(f"cutoff: expected a number in [0, 1), got {self.cutoff!r}")

    def _task(self, configs: Optional[List[Dict[str, Any]]]) -> str:
        if configs is None:  # the default stack classifies
            if self.loss == "mse":
                raise ValueError("loss: 'mse' needs layers ending in a regression output; "
                                 "layers=None builds a classifier")
            return "classification"
        last = configs[-1]
        if self.loss == "mse":
            return "regression"
        if self.loss == "cross_entropy" or last["activation"] in ("softmax", "sigmoid"):
            if last["activation"] == "sigmoid" and last["units"] != 1:
                raise ValueError("layers: a sigmoid output for cross-entropy has 1 unit (two "
                                 f"classes), got {last['units']}; use softmax for more")
            if last["activation"] not in ("softmax", "sigmoid"):
                raise ValueError("loss: cross_entropy needs a softmax or sigmoid output layer, "
                                 f"got activation {last['activation']!r}")
            return "classification"
        return "regression"

    def _build(self, n_in: int, rng: np.random.Generator) -> None:
        dtype = np.dtype(self.dtype)
        self.layers_ = [layer_from_config(c) for c in self.layer_configs_]
        for layer in self.layers_:
            layer.build(n_in, rng, dtype)
            n_in = layer.units
        self.n_features_in_ = None  # set by fit once built

    # -- forward / backward -------------------------------------------------------------
    def _forward(self, X: np.ndarray, ws: Optional[Sequence[np.ndarray]] = None,
                 logits: bool = True):
        """Run the layers; with ``logits`` the last classification activation is left to the
        loss. ``ws`` (sweeps) gives each TNLayer's current ``W``."""
        saved = []
        h = X
        tn = 0
        classify = self.task_ == "classification"
        last = len(self.layers_) - 1
        for j, layer in enumerate(self.layers_):
            skip = logits and classify and j == last
            if saved and isinstance(saved[-1], _Fused) and saved[-1].tail_pending:
                saved[-1].tail_pending = False  # this layer ran with the one before
                saved.append(None)
                continue
            nxt = self.layers_[j + 1] if j < last else None
            if nxt is not None and fusable(layer, nxt, h.shape[0]) and (
                    ws is not None or nxt.route(h.shape[0]) == "dense"):
                w = None if ws is None else ws[tn]
                tn += 1
                h, pair_saved = fused_forward(layer, nxt, h, w,
                                              skip_activation=logits and classify and j + 1 == last)
                saved.append(_Fused(pair_saved))
                continue
            if isinstance(layer, TNLayer):
                w = None if ws is None else ws[tn]
                tn += 1
                h, s = layer.forward(h, skip_activation=skip, w=w)
            else:
                h, s = layer.forward(h, skip_activation=skip)
            saved.append(s)
        return h, saved

    def _loss(self, out: np.ndarray, y: np.ndarray) -> Tuple[float, np.ndarray]:
        """Loss value and ``dL/dout``, on the device of ``out`` (``y`` on it too)."""
        n = out.shape[0]
        xp = array_module(out)
        if self.task_ == "regression":
            diff = out.astype(np.float64) - y.reshape(n, -1)
            return float(xp.mean(diff * diff)), (2.0 / diff.size) * diff
        z = out.astype(np.float64)
        if z.shape[1] == 1:  # sigmoid unit: binary cross-entropy on the logit
            t = y.astype(np.float64)[:, None]
            loss = xp.mean(xp.maximum(z, 0) - z * t + xp.log1p(xp.exp(-xp.abs(z))))
            p = activation_forward("sigmoid", z)
            return float(loss), (p - t) / n
        return cross_entropy_loss(z, y)

    def _backward(self, saved, g: np.ndarray) -> List[List[np.ndarray]]:
        grads: List[List[np.ndarray]] = [None] * len(self.layers_)  # type: ignore[list-item]
        g = g.astype(np.dtype(self.dtype))
        # no input gradient below the first trainable layer
        first = next((j for j, l in enumerate(self.layers_) if l.trainable), len(self.layers_))
        for j in range(len(self.layers_) - 1, -1, -1):
            if j < first and not isinstance(saved[j], _Fused):
                # frozen layers below every trainable one: nothing to compute
                grads[j] = []
                continue
            if saved[j] is None:  # the tail of a fused pair: done with its head
                continue
            if isinstance(saved[j], _Fused):
                g, grads[j], grads[j + 1] = fused_backward(
                    self.layers_[j], self.layers_[j + 1], saved[j].saved, g, need_g_x=j > first)
                continue
            g, grads[j] = self.layers_[j].backward(saved[j], g, need_g_x=j > first)
        return grads

    # -- fitting ------------------------------------------------------------------------
    def fit(self, X: Any, y: Any, *, epochs: Optional[int] = None,
            warm_start: bool = False) -> "TNN":
        """Train on feature vectors ``X (n, n_features)`` and labels or targets ``y``.

        Returns ``self``; ``history_`` holds one record per epoch (Adam) or sweep, with the
        loss, the training accuracy (classification) and, for sweeps, the bond entropies of
        every TNLayer (``entropy``), their maximum (``entropy_max``) and the kept singular
        values of every bond at its last update (``singular_values[layer][bond]``) and the weight
        its split discarded (``discarded[layer][bond]``).
        """
        self._check_config()
        self._device_module()  # a missing GPU fails here, before any work
        epochs = check_positive_int("epochs", epochs if epochs is not None else self.epochs)
        fitted = warm_start and getattr(self, "n_features_in_", None) is not None
        X = self._check_X(X, fitted=fitted)
        if y is None:
            raise ValueError("y: TNN requires y to be passed, but the target y is None")
        if fitted:
            y_t = self._check_y(y, X.shape[0], self.task_, self.layer_configs_[-1], fitted)
        else:
            configs = self._configs()
            task = self._task(configs)
            y_t = self._check_y(y, X.shape[0], task, None if configs is None else configs[-1],
                                fitted)
            self.task_ = task
            self.layer_configs_ = configs if configs is not None else default_layers(
                X.shape[1], len(self.classes_))
        # a warm-started sweep may need no random numbers (whole-set batches): made on demand
        rng = np.random.default_rng(self.random_state) if not fitted or self.solver != "sweep" \
            else None
        if not fitted:
            self._build(X.shape[1], rng)
            self.n_features_in_ = X.shape[1]
            self.history_ = []
        self._place_state()
        if self.solver == "adam":
            self._fit_adam(X, y_t, epochs, rng)
        else:
            self._fit_sweeps(X, y_t, epochs, rng)
        return self

    def _check_X(self, X: Any, fitted: bool) -> np.ndarray:
        X = check_real_array("X", X, ndim=2)
        if X.shape[0] == 0:
            raise ValueError("X: expected at least one sample, got 0")
        check_finite("X", X)
        if fitted and X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but TNN is expecting "
                             f"{self.n_features_in_} features as input")
        return np.ascontiguousarray(X, dtype=np.dtype(self.dtype))

    def _check_y(self, y: Any, n: int, task: str, last: Optional[Dict[str, Any]],
                 fitted: bool = True) -> np.ndarray:
        """Targets as float64 (regression) or class indices into ``classes_``, which a
        fresh fit sets and a warm start keeps. ``last`` is the last layer's config (None:
        the default stack, sized from the classes)."""
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1 and task == "classification":
            y = column_or_1d(y, warn=True)  # a column of labels
        if y.shape[0:1] != (n,):
            raise ValueError(f"y: expected {n} targets (one per sample), got shape {y.shape}")
        if task == "regression":
            if y.dtype.kind not in "fiu":
                raise TypeError(f"y: expected numeric regression targets, got dtype {y.dtype}")
            y = y.astype(np.float64)
            check_finite("y", y)
            width = 1 if y.ndim == 1 else int(np.prod(y.shape[1:]))
            if width != last["units"]:
                raise ValueError(f"y: expected {last['units']} target value(s) per sample (the "
                                 f"last layer's units), got {width}")
            return y
        if y.ndim != 1:
            raise ValueError(f"y: expected a 1-dimensional array of labels, got shape {y.shape}")
        if fitted and y.dtype.kind in "iu" and self.classes_.dtype.kind in "iu":
            # warm start with integer labels: every label one of classes_ is all there is to
            # check (a sort of y by np.unique costs more than a sweep of a small model)
            c = len(self.classes_)
            if self.classes_[0] == 0 and self.classes_[-1] == c - 1:  # classes 0..c-1
                if y.min() >= 0 and y.max() < c:
                    return np.ascontiguousarray(y, np.int64)
            else:
                idx = np.minimum(np.searchsorted(self.classes_, y), c - 1)
                if np.array_equal(self.classes_[idx], y):
                    return idx.astype(np.int64)
        check_classification_targets(y)
        classes = np.unique(y)
        if last is not None:
            n_classes = 2 if last["units"] == 1 else last["units"]
            if len(classes) > n_classes:
                raise ValueError(f"y: the last layer has {last['units']} unit(s), room for "
                                 f"{n_classes} classes, got {len(classes)} distinct labels")
        if not fitted:
            if len(classes) < 2:
                raise ValueError(f"y: expected at least 2 classes to classify, got 1 class "
                                 f"({classes.tolist()[:1]})")
            self.classes_ = classes
        elif not set(classes.tolist()) <= set(self.classes_.tolist()):
            extra = sorted(set(classes.tolist()) - set(self.classes_.tolist()))
            raise ValueError(f"y: labels {extra} were not among the classes seen in fit "
                             f"{self.classes_.tolist()}")
        return np.searchsorted(self.classes_, y).astype(np.int64)

    def _params(self) -> List[np.ndarray]:
        return [p for layer in self.layers_ if layer.trainable for p in layer.params()]

    def _flat_grads(self, grads: List[List[np.ndarray]]) -> List[np.ndarray]:
        return [g for layer, gs in zip(self.layers_, grads) if layer.trainable for g in gs]

    def _n_correct(self, out: np.ndarray, y: np.ndarray) -> int:
        if self.task_ != "classification":
            return 0
        pred = (out[:, 0] > 0).astype(np.int64) if out.shape[1] == 1 else out.argmax(axis=1)
        return int((pred == y).sum())

    def _fit_adam(self, X, y, epochs, rng) -> None:
        opt = AdamW(self._params(), lr=self.lr, weight_decay=0.0)
        batch = self.batch_size or X.shape[0]

        def step(idx):
            X_b, y_b = self._to_device(X[idx]), self._to_device(y[idx])
            out, saved = self._forward(X_b)
            loss, g = self._loss(out, y_b)
            opt.step(self._flat_grads(self._backward(saved, g)))
            return loss, self._n_correct(out, y_b)

        hist = fit_loop(step, X.shape[0], epochs=epochs, batch_size=batch, rng=rng,
                        verbose=self.verbose, desc="fit tnn")
        self._finish_history(hist)

    def _finish_history(self, hist: List[Dict]) -> None:
        if self.task_ != "classification":
            for r in hist:
                r.pop("accuracy", None)
        start = len(self.history_)
        for r in hist:
            r["epoch"] += start
        self.history_.extend(hist)

    def _fit_sweeps(self, X, y, epochs, rng) -> None:
        tn = [layer for layer in self.layers_ if isinstance(layer, TNLayer)]
        if not tn:
            raise ValueError("solver: 'sweep' needs at least one TNLayer in layers")
        for layer in tn:
            if layer.n_sites < 2:
                raise ValueError("solver: 'sweep' needs TNLayers of at least 2 sites (one bond)")
        if self.sweep_engine != "python":
            from .tnn_compiled import fit_sweeps_compiled

            hist, why = fit_sweeps_compiled(self, X, y, epochs, rng)
            if hist is not None:
                self._finish_history(hist)
                return
            if self.sweep_engine == "compiled":
                raise ValueError(f"sweep_engine: 'compiled' cannot run this network: {why}; "
                                 "use 'auto' or 'python'")
        if rng is None:
            rng = np.random.default_rng(self.random_state)
        mpos = [MPOSweep(layer.cores, layer.bond_dim, self.cutoff) for layer in tn]
        others = [(layer, k) for layer in self.layers_ if layer.trainable
                  for k, p in enumerate(layer.params())
                  if not (isinstance(layer, TNLayer) and k < layer.n_sites)]
        opt = AdamW([layer.params()[k] for layer, k in others], lr=self.lr, weight_decay=0.0)
        n = X.shape[0]
        batch = self.batch_size or n
        state = {"order": rng.permutation(n), "pos": 0, "loss": [], "correct": 0, "seen": 0}

        def next_batch():
            if state["pos"] >= n:
                state["order"], state["pos"] = rng.permutation(n), 0
            idx = state["order"][state["pos"]:state["pos"] + batch]
            state["pos"] += batch
            return idx

        def forward_backward(ws):
            idx = next_batch() if batch < n else slice(None)
            xb, yb = X[idx], y[idx]
            out, saved = self._forward(xb, ws=ws)
            loss, g = self._loss(out, yb)
            if not (np.isfinite(loss) and np.all(np.isfinite(g))):
                raise FloatingPointError(f"loss became {loss} during sweep "
                                         f"{len(hist) + 1}; lower sweep_lr or lr")
            grads = self._backward(saved, g)
            state["correct"] += self._n_correct(out, yb)
            state["seen"] += out.shape[0]
            g_ws, g_others, t = [], [], 0
            for layer, gs in zip(self.layers_, grads):
                if isinstance(layer, TNLayer):
                    g_ws.append(gs[0])
            for layer, k in others:
                gs = grads[self.layers_.index(layer)]
                g_others.append(gs[1 + k - layer.n_sites] if isinstance(layer, TNLayer) else gs[k])
            return loss, g_ws, g_others

        def step_others(g_others):
            if g_others:
                opt.step(g_others)

        hist: List[Dict] = []
        bar = tqdm(total=epochs, desc="sweeps", disable=self.verbose <= 0, file=sys.stderr,
                   unit="sweep")
        watch = compile_watch(notice=self.verbose > 0)
        with watch, bar:
            for sweep in range(epochs):
                compiled = watch.count
                rec = self._python_sweep(sweep, tn, mpos, forward_backward, step_others, state)
                hist.append(rec)
                if watch.count != compiled:
                    restart_clock(bar, advance=1)  # a sweep that compiled: its time is not rate
                else:
                    bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
        self._finish_history(hist)

    def _python_sweep(self, sweep, tn, mpos, forward_backward, step_others, state) -> Dict:
        """One sweep of the layer-object engine; its history record."""
        t0 = time.perf_counter()
        state["correct"] = state["seen"] = 0
        if self.schedule == "pal":
            loss = run_sweep(mpos, [True] * len(mpos), forward_backward, self.sweep_lr,
                             step_others, scaled=self.sweep_step == "scaled")
        else:
            loss = self._lbl_sweep(mpos, forward_backward, step_others)
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} in sweep {sweep + 1}; lower "
                                     "sweep_lr or lr")
        for layer, m in zip(tn, mpos):
            layer.cores = m.cores
        rec = {"epoch": sweep + 1, "loss": loss, "seconds": time.perf_counter() - t0,
               "entropy": [m.entropy.tolist() for m in mpos],
               "entropy_max": float(max(m.entropy.max() for m in mpos)),
               "singular_values": [[[] if sv is None else np.asarray(sv).tolist()
                                    for sv in m.s] for m in mpos],
               "discarded": [m.discarded.tolist() for m in mpos]}
        if self.task_ == "classification":
            rec["accuracy"] = state["correct"] / max(state["seen"], 1)
        return rec

    def _lbl_sweep(self, mpos, forward_backward, step_others) -> float:
        """Layer by layer: each TNLayer swept alone, then one gradient step of the others
        per bond update of the last layer."""
        losses = []
        for j in range(len(mpos)):
            active = [i == j for i in range(len(mpos))]
            # a finished sweep leaves its environments valid; the others did not change
            losses.append(run_sweep(mpos, active, forward_backward, self.sweep_lr, None,
                                    scaled=self.sweep_step == "scaled"))
        for _ in range(len(mpos[-1].schedule)):
            ws = [m.dense() for m in mpos]
            loss, _, g_others = forward_backward(ws)
            step_others(g_others)
            losses.append(loss)
        return float(np.mean(losses))

    # -- prediction ---------------------------------------------------------------------
    def _is_classifier(self) -> bool:
        try:
            task = getattr(self, "task_", None) or self._task(self._configs())
        except (TypeError, ValueError, KeyError):
            task = "classification"
        return task == "classification"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        if self._is_classifier():
            tags.estimator_type = "classifier"
            tags.classifier_tags = ClassifierTags()
            tags.regressor_tags = None
        else:
            tags.estimator_type = "regressor"
            tags.regressor_tags = RegressorTags()
            tags.classifier_tags = None
        return tags

    def _outputs(self, X: Any) -> np.ndarray:
        """Network outputs ``(n, units)`` before a final softmax/sigmoid."""
        self._check_fitted()
        X = self._check_X(X, fitted=True)
        return to_numpy(self._forward(self._to_device(X))[0])

    def decision_function(self, X: Any) -> np.ndarray:
        """Classification: the scores before the final softmax, ``(n, n_classes)``, or
        for two classes the margin of the second over the first ``(n,)`` (scikit-learn's
        convention). Regression: the predictions ``(n, units)``."""
        out = self._outputs(X)
        if self.task_ == "classification" and out.shape[1] <= 2:
            return out[:, 0] if out.shape[1] == 1 else out[:, 1] - out[:, 0]
        return out

    @available_if(_is_classifier)
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n, n_classes)``, columns in the order of ``classes_``."""
        z = self._outputs(X).astype(np.float64)
        if z.shape[1] == 1:
            p = activation_forward("sigmoid", z)
            return np.hstack([1 - p, p])
        return activation_forward("softmax", z)

    @available_if(_is_classifier)
    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Logarithms of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """Class labels (classification) or predicted values (regression)."""
        out = self._outputs(X)
        if self.task_ == "classification":
            idx = (out[:, 0] > 0).astype(np.int64) if out.shape[1] == 1 else out.argmax(axis=1)
            return self.classes_[idx]
        return out[:, 0] if out.shape[1] == 1 else out

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Accuracy (classification) or the coefficient of determination R^2 (regression),
        as scikit-learn's ``accuracy_score`` / ``r2_score`` (which check ``y``)."""
        from sklearn.metrics import accuracy_score, r2_score

        pred = self.predict(X)
        if self.task_ == "classification":
            y = np.asarray(y)
            if y.ndim == 2 and y.shape[1] == 1:
                y = column_or_1d(y, warn=True)
            if y.shape != pred.shape:  # a scalar, a table or another length
                raise ValueError(f"y: expected {len(pred)} labels (one per sample), got "
                                 f"shape {y.shape}")
            check_label_kind(y, self.classes_)
            return float(accuracy_score(y, pred, sample_weight=sample_weight))
        return float(r2_score(y, pred, sample_weight=sample_weight))

    def compress(self, index: int, bond_dim: int, n_sites: int = 6,
                 cutoff: float = 0.0) -> "TNN":
        """A fitted copy with the trained ``Dense`` at ``layers[index]`` replaced by a
        ``TNLayer`` holding its weight compressed to bond dimension ``bond_dim``.

        The new layer's ``discarded_`` gives the weight dropped at each cut.
        """
        self._check_fitted()
        if not (isinstance(index, (int, np.integer)) and -len(self.layers_) <= index
                < len(self.layers_)):
            raise ValueError(f"index: expected a layer position in [0, {len(self.layers_)}), "
                             f"got {index!r}")
        index = int(index) % len(self.layers_)
        dense = self.layers_[index]
        if not isinstance(dense, Dense):
            raise ValueError(f"index: layers[{index}] is a {dense.kind}, not a Dense layer")
        tn = TNLayer.from_dense(to_numpy(dense.w), bond_dim, n_sites,
                                to_numpy(dense.b) if dense.use_bias else None,
                                dense.activation, cutoff=cutoff)
        configs = list(self.layer_configs_)
        configs[index] = tn.get_config()
        new = TNN(configs, **{k: v for k, v in self.get_params().items() if k != "layers"})
        new.task_ = self.task_
        new.layer_configs_ = configs
        new.layers_ = [tn if j == index else copy.deepcopy(layer)
                       for j, layer in enumerate(self.layers_)]
        new.n_features_in_ = self.n_features_in_
        new.history_ = list(self.history_)
        if hasattr(self, "classes_"):
            new.classes_ = self.classes_
        new._place_state()  # the compressed layer was built on the host
        return new

    # -- diagnostics --------------------------------------------------------------------
    def tn_layers(self) -> List[TNLayer]:
        self._check_fitted()
        return [layer for layer in self.layers_ if isinstance(layer, TNLayer)]

    def bond_entropies(self) -> List[np.ndarray]:
        """Entanglement entropy of each TNLayer's weight across each MPO bond.

        The Schmidt spectrum of ``W`` (sites grouped as ``(in_k, out_k)`` pairs) at every
        cut, from the singular values of its unfoldings; independent of the cores' gauge,
        unlike the local bond-tensor spectra the sweep records.
        """
        out = []
        for layer in self.tn_layers():
            from ..ops.mpo import mpo_to_dense

            w = mpo_to_dense([to_numpy(c) for c in layer.cores]).astype(np.float64)
            n = layer.n_sites
            t = w.reshape(*layer.in_dims_, *layer.out_dims_)
            t = t.transpose([a for k in range(n) for a in (k, n + k)])
            ent = []
            for cut in range(1, n):
                rows = int(np.prod([layer.in_dims_[k] * layer.out_dims_[k] for k in range(cut)]))
                ent.append(float(svd_truncate(np.ascontiguousarray(t).reshape(rows, -1)).entropy))
            out.append(np.asarray(ent))
        return out

    # -- checkpoints --------------------------------------------------------------------
    def _state_arrays(self) -> Dict[str, np.ndarray]:
        self._check_fitted()
        arrays = {}
        for j, layer in enumerate(self.layers_):
            for name, p in zip(layer.param_names(), layer.params()):
                arrays[f"layer{j}_{name}"] = p
        return arrays

    def _state_meta(self) -> Dict[str, Any]:
        meta = {"n_features_in": self.n_features_in_, "task": self.task_,
                "layer_configs": self.layer_configs_,
                "history": [{k: v for k, v in r.items()} for r in self.history_]}
        if self.task_ == "classification":
            meta["classes"] = self.classes_.tolist()
        return meta

    def _place_state(self) -> None:
        """Every layer's parameters (frozen ones too) onto the model's device."""
        self._device_module()
        on_cpu = self._device == "cpu"
        for layer in self.layers_:
            params = layer.params()
            # a warm-started fit of a small model costs about one sweep: skip the
            # set_params checks when the arrays are host arrays already
            if on_cpu and all(type(p) is np.ndarray for p in params):
                continue
            layer.set_params([self._to_device(p) for p in params])

    def _set_state(self, arrays: Dict[str, np.ndarray], meta: Dict[str, Any]) -> None:
        # a checkpoint is untrusted: the fields that decide what predict returns first
        check_choice("task", meta["task"], ("classification", "regression"))
        n_in = meta["n_features_in"]
        if isinstance(n_in, bool) or not isinstance(n_in, int) or n_in < 1:
            raise ValueError(f"n_features_in: expected a positive integer, got {n_in!r}")
        if meta["task"] == "classification":
            classes = meta["classes"]
            if not isinstance(classes, list) or len(classes) < 2 or not (
                    all(isinstance(c, str) for c in classes)
                    or all(isinstance(c, (int, float)) and np.isfinite(c) for c in classes)) \
                    or len(set(classes)) != len(classes):
                raise ValueError(f"classes: expected 2 or more distinct finite numbers or "
                                 f"strings, got {str(classes)[:200]}")
        self.task_ = meta["task"]
        configs = meta.get("layer_configs") or self._configs()
        if not configs:
            raise ValueError("checkpoint: holds no layer configuration")
        self.layer_configs_ = [layer_from_config(c).get_config() for c in configs]
        self.layers_ = [layer_from_config(c) for c in self.layer_configs_]
        n_in = meta["n_features_in"]
        for j, layer in enumerate(self.layers_):
            params = [arrays[f"layer{j}_{name}"] for name in layer.param_names()]
            layer.set_params(params)
            want_in = params[0].shape[0] if isinstance(layer, Dense) else \
                int(np.prod([c.shape[1] for c in params[:layer.n_sites]]))
            if want_in != n_in:
                raise ValueError(f"layers[{j}]: stored weights take {want_in} inputs, the layer "
                                 f"before gives {n_in}")
            n_in = layer.units
        self.n_features_in_ = meta["n_features_in"]
        self.history_ = meta.get("history", [])
        if "classes" in meta:
            self.classes_ = np.asarray(meta["classes"])

