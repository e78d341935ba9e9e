"""Matrix product state classifier (Stoudenmire & Schwab): feature map -> one MPS over the
pixel chain -> class scores.

Every pixel becomes a short feature vector (the degree-``d`` cos/sin map by default), the
pixels are laid out as a chain (row by row, column by column, a snake or a Hilbert curve),
and one MPS of bond dimension ``bond_dim`` contracts the chain, its class leg on a head
tensor in the middle (``fasttn.ops.mps_contract``). The environments are normalised at
every site and their log-norms tracked, so the scores are finite for any number of pixels;
the class scores are the normalised ones (the network's output divided by
``exp(log_scale)`` per image, a positive factor shared by the classes), trained with softmax
cross-entropy by Adam (``solver="adam"``) or by two-site DMRG sweeps (``solver="dmrg"``,
``fasttn.train.mps_sweep``), whose truncated splits choose every bond's dimension up to
``bond_dim`` from ``cutoff``.

The cores start as identities on the bond for every feature channel plus small Gaussian
noise: each pixel's transfer matrix is then close to a multiple of the identity, so a
long chain neither loses nor scrambles what reaches the head, and training grows the
bonds from there.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import ops
from .._validate import check_choice, check_number, check_positive_int
from ..backend import array_module, to_numpy
from ..ops.layout import CHAIN_ORDERS, site_order
from ..ops.mps_contract import canonical
from ..train import AdamW, StepLR
from ..train.loop import fit_loop
from ..train.losses import cross_entropy_loss, n_correct
from ..train.mps_sweep import MPSSweep
from .base import register
from .classifier import ImageClassifier, next_power_of_two

FEATURE_MAPS = ("cos_sin", "fourier", "legendre")
SOLVERS = ("adam", "dmrg")


@register
class MPS(ImageClassifier):
    """Matrix product state over the pixels, class leg on a central head tensor.

    Parameters
    ----------
    n_classes : int, optional
        Number of class outputs; None (default) takes the classes from ``y`` in ``fit``.
    bond_dim : int
        Bond dimension ``D`` of the chain.
    d : int
        Feature channels per pixel: the degree of the ``cos_sin`` map (``d = 2``:
        [cos(pi x / 2), sin(pi x / 2)]), or the channel count of ``fourier`` / ``legendre``
        (which then also get the constant channel, where the cores' identity starts).
    feature_map : {"cos_sin", "fourier", "legendre"}
    order : {"column", "row", "snake", "hilbert"}
        How pixels are laid out as the chain (``hilbert`` pads images to a square whose
        side is a power of 2).
    center : int, optional
        Pixels left of the head along the chain; None puts it in the middle.
    solver : {"adam", "dmrg"}
        ``"adam"``: backpropagation through the whole chain, AdamW on every tensor, one
        epoch per pass over the data. ``"dmrg"``: two-site DMRG sweeps (Stoudenmire &
        Schwab); each epoch is one sweep, the head walking from the centre to the right
        end, the left end and back, every pair of neighbouring sites merged with the head,
        optimised on the whole training set (``sweep_steps`` Adam steps of rate
        ``sweep_lr``) and split again by a truncated SVD (at most ``bond_dim`` values, none
        below ``cutoff`` times the largest). The training set's environments are cached,
        ``n * n_sites * bond_dim`` floats (float64), and moved one site per step.
    cutoff : float
        ``solver="dmrg"``: relative singular-value cutoff of the splits (0 keeps
        ``bond_dim``); the chosen dimensions are in ``bond_history_``.
    sweep_lr, sweep_steps : float, int
        ``solver="dmrg"``: Adam rate and steps on each bond tensor.
    lr, weight_decay, lr_step, lr_gamma : float, float, int, float
        AdamW (``solver="adam"``); the learning rate is multiplied by ``lr_gamma`` every
        ``lr_step`` epochs.
    head_lr_factor : float
        The head's learning rate is ``lr * head_lr_factor``: with unit environments the
        head alone sets the scale of the scores, which small core steps grow too slowly.
    batch_size, epochs : int
    init_noise : float
        Standard deviation of the Gaussian noise added to the identity cores (and head).
    image_shape, input_scaling, early_stopping, validation_fraction, n_iter_no_change
        Input layout, pixel scaling and early stopping, as for :class:`QCNN`.
    dtype : {"float32", "float64"}
    device : {"cpu", "cuda"}
        Where training and inference run; ``"cuda"`` needs CuPy and an NVIDIA GPU.
    random_state : int, optional
    verbose : int

    Attributes
    ----------
    cores_ : (n_sites, D, d, D) array
        The site tensors in chain order (left bond, feature, right bond).
    head_ : (D, n_classes, D) array
    center_ : int
        Sites left of the head.
    order_ : (n_sites,) int64
        Row-major pixel index of every site of the chain.
    bond_history_ : (n_sweeps, n_sites - 1) int64
        ``solver="dmrg"``: the dimension each sweep chose for every bond between
        neighbouring sites (at its last visit), one row per sweep of every ``fit``; empty
        for ``solver="adam"``.
    """

    _FITTED_ATTR = "params_"
    _DEVICE_STATE = ("params_",)
    _SIZE_PARAMS = ("bond_dim", "d")

    def __init__(self, n_classes: Optional[int] = None, bond_dim: int = 20, d: int = 2,
                 feature_map: str = "cos_sin", order: str = "column",
                 center: Optional[int] = None, solver: str = "adam", cutoff: float = 1e-3,
                 sweep_lr: float = 0.01, sweep_steps: int = 5,
                 lr: float = 0.0002, head_lr_factor: float = 20.0,
                 weight_decay: float = 0.0, lr_step: int = 10, lr_gamma: float = 0.5,
                 batch_size: int = 32, epochs: int = 30, init_noise: float = 0.05,
                 image_shape: Optional[Tuple[int, int]] = None, input_scaling: str = "auto",
                 early_stopping: bool = True, validation_fraction: float = 0.1,
                 n_iter_no_change: int = 8, dtype: str = "float32", device: str = "cpu",
                 random_state: Optional[int] = None, verbose: int = 0):
        self.n_classes = n_classes
        self.bond_dim = bond_dim
        self.d = d
        self.feature_map = feature_map
        self.order = order
        self.center = center
        self.solver = solver
        self.cutoff = cutoff
        self.sweep_lr = sweep_lr
        self.sweep_steps = sweep_steps
        self.lr = lr
        self.head_lr_factor = head_lr_factor
        self.weight_decay = weight_decay
        self.lr_step = lr_step
        self.lr_gamma = lr_gamma
        self.batch_size = batch_size
        self.epochs = epochs
        self.init_noise = init_noise
        self.image_shape = image_shape
        self.input_scaling = input_scaling
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.dtype = dtype
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ configuration
    def _check_config(self) -> None:
        self._check_classifier_config()
        check_positive_int("bond_dim", self.bond_dim)
        check_positive_int("d", self.d)
        check_choice("feature_map", self.feature_map, FEATURE_MAPS)
        self._n_channels()
        check_choice("order", self.order, CHAIN_ORDERS)
        c = self.center
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, np.integer))
                              or c < 0):
            raise ValueError(f"center: expected None (the middle) or an integer >= 0, "
                             f"got {c!r}")
        check_number("init_noise", self.init_noise, 0)
        check_number("head_lr_factor", self.head_lr_factor, 0, low_open=True)
        check_choice("solver", self.solver, SOLVERS)
        check_number("cutoff", self.cutoff, 0)
        check_number("sweep_lr", self.sweep_lr, 0)
        s = self.sweep_steps
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"sweep_steps: expected an integer >= 0, got {s!r}")
        self._check_device()

    def _n_channels(self) -> int:
        return ops.feature_maps.n_channels(self.feature_map, self.d, self._constant)

    @property
    def _constant(self) -> bool:
        # fourier / legendre channels average to 0: the constant one carries the identity
        return self.feature_map != "cos_sin"

    def _network_shape(self, height: int, width: int) -> Tuple[int, int]:
        if self.order == "hilbert":
            side = next_power_of_two(max(height, width))
            return side, side
        return height, width

    def _setup(self, image_shape: Tuple[int, int]) -> None:
        h, w = image_shape
        self.image_shape_ = (h, w)
        self.n_sites_ = h * w
        center = self.n_sites_ // 2 if self.center is None else int(self.center)
        if center > self.n_sites_:
            raise ValueError(f"center: expected at most the number of pixels "
                             f"({self.n_sites_} for {h}x{w} images), got {center}")
        if self.solver == "dmrg" and not 1 <= center <= self.n_sites_ - 1:
            raise ValueError(f"center: solver='dmrg' needs the head between two sites, "
                             f"1 <= center <= {self.n_sites_ - 1} for {h}x{w} images, got "
                             f"{center}")
        self.center_ = center
        self.order_ = site_order(h, w, self.order)

    def _state_spec(self) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
        D, p = int(self.bond_dim), self._n_channels()
        dt = np.dtype(self.dtype)
        return {"cores": ((self.n_sites_, D, p, D), dt), "head": ((D, self.n_classes_, D), dt)}

    def _init_params(self, rng: np.random.Generator) -> None:
        spec = self._state_spec()
        (cshape, dt), (hshape, _) = spec["cores"], spec["head"]
        D = cshape[1]
        eye = np.eye(D)
        cores = self.init_noise * rng.standard_normal(cshape)
        if self._constant:
            cores[:, :, 0, :] += eye
        else:
            cores += eye[None, :, None, :]
        head = eye[:, None, :] + self.init_noise * rng.standard_normal(hshape)
        self.params_: List[Any] = [cores.astype(dt), head.astype(dt)]

    @property
    def cores_(self) -> Any:
        return self.params_[0]

    @property
    def head_(self) -> Any:
        return self.params_[1]

    @property
    def n_params_(self) -> int:
        return int(sum(p.size for p in self.params_))

    # ----------------------------------------------------------------------- compute
    def _features(self, X: Any) -> Any:
        """``(n, n_sites, channels)``: the feature map of every pixel, in chain order."""
        xp = array_module(X)
        phi = ops.feature_map(xp.ascontiguousarray(X, dtype=self.dtype), self.feature_map,
                              self.d, constant=self._constant)
        phi = phi.reshape(X.shape[0], self.n_sites_, -1)
        return phi[:, xp.asarray(self.order_)]  # a copy: the map's buffer is reused

    def _forward(self, X: Any):
        """``(out, log_scale, saved)`` of the op on a batch of network images."""
        return ops.mps_contract_forward(self._features(X), self.params_[0], self.params_[1],
                                        self.center_)

    def _forward_backward(self, X: Any, y: Any):
        out, _, saved = self._forward(X)
        loss, g = cross_entropy_loss(out, y)
        _, g_cores, g_head = ops.mps_contract_backward(saved, g, need_g_phi=False)
        return out, loss, [g_cores, g_head]

    # ------------------------------------------------------------------------ training
    def fit(self, X: Any, y: Any, *, epochs: Optional[int] = None,
            batch_size: Optional[int] = None,
            validation_data: Optional[Tuple[Any, Any]] = None,
            callbacks: Sequence[Callable[["MPS", int, Dict], Optional[Dict]]] = (),
            warm_start: bool = False) -> "MPS":
        """Train on images ``X : (n, height, width)`` (or flat rows) with labels ``y``.

        Returns
        -------
        self, with ``history_`` (one dict per epoch: loss, accuracy, seconds, lr, and
        ``val_accuracy`` with early stopping or ``validation_data``). Each ``callbacks``
        entry, ``f(model, epoch, record) -> dict or None``, runs after each epoch;
        returned items join that record.
        """
        fresh = not (warm_start and getattr(self, self._FITTED_ATTR, None) is not None)
        X, y, epochs, batch_size, rng, monitor = self._start_fit(
            X, y, epochs, batch_size, warm_start, validation_data)
        hooks = self._epoch_hooks(monitor, callbacks)
        start = len(self.history_)
        if fresh:
            self.bond_history_ = np.zeros((0, max(self.n_sites_ - 1, 0)), np.int64)
        if self.solver == "dmrg":
            return self._fit_sweeps(X, y, epochs, hooks, monitor, fresh)
        # the head sets the scores' scale (the environments are unit vectors), which the
        # cores' small steps would take thousands of steps to grow: it has its own rate
        opts = [AdamW([p], lr=lr, weight_decay=self.weight_decay)
                for p, lr in zip(self.params_, (self.lr, self.lr * self.head_lr_factor))]
        scheds = [StepLR(o, step_size=self.lr_step, gamma=self.lr_gamma) for o in opts]

        def step(idx):
            X_b, y_b = self._batch_to_device(X[idx], y[idx])
            out, loss, grads = self._forward_backward(X_b, y_b)
            for o, g in zip(opts, grads):
                o.step([g])
            return loss, n_correct(out, y_b)

        hist = fit_loop(step, len(y), epochs=epochs, batch_size=batch_size, rng=rng,
                        set_epoch=lambda e: [s.set_epoch(start + e) for s in scheds][0],
                        end_of_epoch=hooks, verbose=self.verbose, desc="MPS")
        for rec in hist:
            rec["epoch"] += start
        self.history_.extend(hist)
        self._finish_fit(monitor)
        return self

    def _fit_sweeps(self, X: np.ndarray, y: np.ndarray, epochs: int, hooks, monitor,
                    fresh: bool) -> "MPS":
        """``epochs`` DMRG sweeps over the whole training set (see :class:`MPSSweep`)."""
        import time

        phi = np.concatenate([to_numpy(self._features(np.ascontiguousarray(
            X[i:i + 1024], dtype=self.dtype))) for i in range(0, X.shape[0], 1024)])
        # a fresh chain's canonical head holds the norm of the whole chain (exponential in
        # its length); scores of order one are where the sweeps start
        sweep = MPSSweep(phi, y, to_numpy(self.params_[0]), to_numpy(self.params_[1]),
                         self.center_, max_bond=int(self.bond_dim), cutoff=float(self.cutoff),
                         lr=float(self.sweep_lr), steps=int(self.sweep_steps),
                         head_norm=1.0 if fresh else None)
        start = len(self.history_)
        for epoch in range(epochs):
            t0 = time.perf_counter()
            bonds = sweep.sweep()
            cores, head, _ = sweep.storage()
            self.params_ = [cores, head]
            self._place_state()
            seconds = time.perf_counter() - t0
            self.bond_history_ = np.concatenate([self.bond_history_, bonds[None]])
            rec = {"epoch": start + epoch + 1, "loss": sweep.loss,
                   "accuracy": sweep.accuracy, "images_per_s": len(y) / seconds,
                   "seconds": seconds, "lr": float(self.sweep_lr),
                   "max_bond": int(bonds.max()), "mean_bond": float(bonds.mean())}
            for fn in hooks:
                extra = fn(epoch, rec)
                if extra:
                    rec.update(extra)
            stop = bool(rec.pop("stop", False))
            self.history_.append(rec)
            if self.verbose:
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in rec.items()), flush=True)
            if stop:
                break
        self._finish_fit(monitor)
        return self

    def _batch_to_device(self, X: np.ndarray, y: Optional[np.ndarray] = None):
        X = self._to_device(np.ascontiguousarray(X, dtype=self.dtype))
        return X if y is None else (X, self._to_device(y))

    # ------------------------------------------------------------------------ public
    def _batched(self, X: np.ndarray, batch_size: int, fn) -> np.ndarray:
        check_positive_int("batch_size", batch_size)
        return np.concatenate([to_numpy(fn(self._batch_to_device(X[i:i + batch_size])))
                               for i in range(0, X.shape[0], batch_size)])

    def _decision(self, images: np.ndarray, batch_size: Optional[int] = None) -> np.ndarray:
        """Class scores ``(n, n_classes_)``: the chain's output divided by
        ``exp(log_scale)`` per image."""
        return self._batched(images, batch_size or 256,
                             lambda b: self._forward(b)[0].astype(np.float64))

    def log_scale(self, X: Any, batch_size: int = 256) -> np.ndarray:
        """``(n,)``: log of the factor the normalisations divided out; the exact chain's
        scores are :meth:`decision_function`'s times ``exp(log_scale)``."""
        self._check_fitted()
        return self._batched(self._check_X(X, fitted=True), batch_size,
                             lambda b: self._forward(b)[1])

    def canonicalize(self, form: str = "mixed") -> "MPS":
        """Rewrite the cores in a canonical gauge without changing the chain.

        The exact chain scores (:meth:`decision_function` times ``exp(log_scale)``) and so
        the predictions stay as they were; the normalised scores change by a positive
        factor per image (the environments' norms depend on the gauge), which sharpens or
        softens :meth:`predict_proba`.

        Parameters
        ----------
        form : {"mixed", "left", "right"}
            ``mixed``: cores left of the head left-orthogonal, right of it right-orthogonal,
            the norm in the head; ``left`` / ``right``: every tensor orthogonal towards one
            end (see :mod:`fasttn.ops.mps_contract.canonical`).

        Returns
        -------
        self
        """
        self._check_fitted()
        check_choice("form", form, canonical.FORMS)
        cores, head = canonical.canonicalize(to_numpy(self.params_[0]),
                                             to_numpy(self.params_[1]), self.center_, form)
        self.params_ = [cores, head]
        self._place_state()
        return self

    def bond_entropies(self) -> np.ndarray:
        """Entanglement entropy of every bond of the normalised MPS, in chain order.

        Returns
        -------
        (n_sites,) float64
            Entry ``i`` is the cut after the ``i``-th tensor of the chain, the head
            counting as one (after site ``i`` left of the head, after site ``i - 1`` right
            of it); natural logarithm, at most ``log(bond_dim)``.
        """
        self._check_fitted()
        return canonical.bond_entropies(to_numpy(self.params_[0]), to_numpy(self.params_[1]),
                                        self.center_)

    # ------------------------------------------------------------------- checkpoints
    def _state_arrays(self) -> Dict[str, np.ndarray]:
        return {"cores": self.params_[0], "head": self.params_[1]}

    def _state_meta(self) -> Dict[str, Any]:
        return {"image_shape": list(self.image_shape_), "history": self.history_,
                "bond_history": np.asarray(getattr(self, "bond_history_", [])).tolist()}

    def _set_state(self, arrays: Dict[str, np.ndarray], meta: Dict[str, Any]) -> None:
        self._check_config()
        self._setup(tuple(meta["image_shape"]))
        for name, (shape, _) in self._state_spec().items():
            if tuple(arrays[name].shape) != shape:
                raise ValueError(f"checkpoint: {name} has shape {arrays[name].shape}, "
                                 f"expected {shape}")
        self.params_ = [arrays["cores"], arrays["head"]]
        self.history_ = meta.get("history", [])
        bonds = meta.get("bond_history") or []
        self.bond_history_ = np.asarray(bonds, np.int64).reshape(
            -1, max(self.n_sites_ - 1, 0))
