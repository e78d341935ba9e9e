"""q-CNN (Anagiannis & Cheng): feature map -> L x [batch norm -> 1x1 conv -> product pool]
-> batch norm -> dense classifier.

The model holds parameters and orchestrates; every level is one call of the fused
``fasttn.ops.qcnn_level`` op, forward then backward in reverse. With ``device="cuda"`` the
parameters, running statistics, activations, gradients and optimizer moments stay on the GPU;
each batch of site chains goes up once and only the loss and the correct count come back.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import ops
from ..backend import array_module, to_numpy
from .._validate import check_choice, check_number, check_positive_int
from ..ops.feature_maps import FEATURE_MAPS, n_channels
from ..ops.layout import SITE_ORDERS, site_order
from ..ops.site_norm import unit_sites, unit_sites_log
from ..train import AdamW, StepLR, loss_fn, n_correct
from ..train.loop import fit_loop
from .base import augmented, check_augment, register
from .classifier import ImageClassifier, binary_margin, check_batch_size
from .layer_outputs import gather_layer_outputs

DOMAINS = ("auto", "linear", "log")


def _own_blocks(x_all, window: int):
    """``(batch, sites, window * d)`` -> ``(batch, sites // window, window, d)``: for window
    position k, channel block k (its own convolution's output)."""
    b, s, c = x_all.shape
    k = array_module(x_all).arange(window)
    return x_all.reshape(b, s // window, window, window, c // window)[:, :, k, k, :]


def _own_blocks_scatter(g, window: int):
    """Adjoint of :func:`_own_blocks`: zeros outside each position's own block."""
    xp = array_module(g)
    b, p, w, d = g.shape
    out = xp.zeros((b, p, w, w, d), g.dtype)
    k = xp.arange(window)
    out[:, :, k, k, :] = g
    return out.reshape(b, p * w, w * d)


def _prod_others(xs):
    """``(..., window, d)`` -> for each position k the product of the other positions
    (no division, so zero factors are exact)."""
    xp = array_module(xs)
    w = xs.shape[-2]
    out = xp.empty_like(xs)
    for k in range(w):
        rest = [xs[..., j, :] for j in range(w) if j != k]
        acc = rest[0].copy()
        for r in rest[1:]:
            acc *= r
        out[..., k, :] = acc
    return out


@register
class QCNN(ImageClassifier):
    """Entangled q-convolutional network classifier.

    Parameters
    ----------
    n_classes : int, optional
        Number of class outputs; None (default) takes the classes from ``y`` in ``fit``.
        With an integer ``k`` and integer labels in ``[0, k)``, every label ``0 .. k-1``
        has its output even if the training labels lack some.
    d : int
        Base width: level widths are ``d * (l + 1)`` (q-CNN paper) unless ``widths`` is given;
        also the number of feature channels unless ``n_features`` is given. Default 14, chosen
        on validation splits: 5-fold CV on the digits at 16x16 0.986 (d = 12: 0.972, d = 16:
        0.983 at 2.4x the cost of 12), a held-out 10% of Fashion-MNIST 16x16 0.902 (0.901).
    widths : list of int, optional
        Output width of each of the L levels (L = log2 of the sites for 1D pooling, log2 of
        the side for 2D pooling).
    feature_map : {"fourier", "legendre", "cos_sin"}
    n_features : int, optional
        Feature channels before the optional constant (default ``d``; 2 for ``cos_sin``,
        whose degree it sets).
    constant : bool
        Add the constant channel f_0 = 1 to the feature map.
    pooling : {"1d", "2d"}
        Pairs of a flattened chain, or 2x2 windows of the grid.
    child_weights : {"shared", "separate"}
        ``shared`` (the paper): one 1x1 convolution for every site, so each level's product
        is symmetric in the sites of its window and the model cannot tell an image from one
        with sibling blocks swapped (e.g. its upper and lower halves, for row-major 1D
        pooling; every permutation of each 2x2 block for 2D pooling). ``separate``: each
        position in the pooling window has its own convolution (a 2x1 or 2x2 kernel of
        stride 2, still shared over the image), which removes that symmetry; the tensor
        network is the same tree with non-symmetric rank-d nodes. Level weights are then
        stored stacked, ``(window * d_out, d_in)``, rows ``k * d_out:(k + 1) * d_out``
        for window position k; a level costs ``window`` times the convolution work.
    order : {"row", "column", "z"}
        Flattening order for 1D pooling: row-major puts the top split between the upper and
        lower halves, column-major between left and right; Z order pairs alternately along
        rows and columns, so every level summarises a compact block.
    loss : {"square", "cross_entropy"}
        Square loss (eq. 48) or softmax cross-entropy. Prediction is argmax |alpha_y| for
        the square loss, argmax alpha_y for cross-entropy.
    lr, weight_decay, lr_step, lr_gamma : float, float, int, float
        AdamW with the learning rate multiplied by ``lr_gamma`` every ``lr_step`` epochs.
    batch_size, epochs : int
    momentum, eps : float
        Batch-norm running-statistics momentum and variance regulariser.
    beta_init : float
        Initial batch-norm shift. 0 as in the reference code; a positive shift starts every
        factor of the product near a constant (the identity-bias idea of MPS classifiers),
        which keeps products of many factors from being dominated by a few samples.
    domain : {"auto", "linear", "log"}
        Arithmetic of the hierarchy. ``log`` carries log|x| and a sign and is finite at any
        depth; ``linear`` is faster. ``auto`` trains in the linear domain (batch statistics
        bound every level) and predicts with one log-scale per site (running statistics do
        not bound the levels; this is finite at any depth at the speed of the linear form).
    pad : bool
        Zero-pad images (centred) whose sides are not powers of two (otherwise an error).
    image_shape : (int, int), optional
        ``(height, width)`` of flat rows ``X (n, height * width)``; by default a row of a
        square number of pixels is a square image and any other row one image row.
    input_scaling : {"auto", "none"}
        ``auto``: training images with values outside [0, 1] (uint8 pixels, standardised
        features) are mapped into it by the range seen in ``fit`` (``input_offset_``,
        ``input_scale_``), and values past that range are clipped at prediction.
        ``none``: values outside [0, 1] are an error.
    early_stopping : bool
        Hold out a stratified ``validation_fraction`` of the training images (or use
        ``fit``'s ``validation_data``), score it after every epoch, stop after
        ``n_iter_no_change`` epochs without improvement and end with the parameters of
        the best epoch (``best_epoch_``). Sets too small to give every class a held-out
        image train on everything for ``epochs``.
    validation_fraction : float
    n_iter_no_change : int
    dtype : {"float32", "float64"}
    device : {"cpu", "cuda"}
        Where training and inference run. ``"cuda"`` keeps the parameters, batch-norm
        running statistics and optimizer state on the GPU (CuPy arrays) and needs CuPy and
        an NVIDIA GPU (checked by ``fit``); results come back as NumPy arrays and
        checkpoints hold host arrays.
    random_state : int, optional
    verbose : int
    """

    _FITTED_ATTR = "weights_"
    _DEVICE_STATE = ("weights_", "gammas_", "betas_", "running_means_", "running_vars_")
    _NONNEGATIVE_STATE = ("running_vars_",)
    _SIZE_PARAMS = ("d", "widths", "n_features")

    def __init__(self, n_classes: Optional[int] = None, d: int = 14,
                 widths: Optional[Sequence[int]] = None,
                 feature_map: str = "cos_sin", n_features: Optional[int] = None,
                 constant: bool = False, pooling: str = "1d", child_weights: str = "separate",
                 order: str = "z",
                 loss: str = "cross_entropy", lr: float = 0.01, weight_decay: float = 0.01,
                 lr_step: int = 10, lr_gamma: float = 0.5, batch_size: int = 50,
                 epochs: int = 40, momentum: float = 0.1, eps: float = 1e-5,
                 beta_init: float = 1.0, domain: str = "auto", pad: bool = True,
                 image_shape: Optional[Tuple[int, int]] = None, input_scaling: str = "auto",
                 early_stopping: bool = True, validation_fraction: float = 0.1,
                 n_iter_no_change: int = 8,
                 dtype: str = "float32", device: str = "cpu",
                 random_state: Optional[int] = None, verbose: int = 0):
        self.n_classes = n_classes
        self.d = d
        self.widths = widths
        self.feature_map = feature_map
        self.n_features = n_features
        self.constant = constant
        self.pooling = pooling
        self.child_weights = child_weights
        self.order = order
        self.loss = loss
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_step = lr_step
        self.lr_gamma = lr_gamma
        self.batch_size = batch_size
        self.epochs = epochs
        self.momentum = momentum
        self.eps = eps
        self.beta_init = beta_init
        self.domain = domain
        self.pad = pad
        self.image_shape = image_shape
        self.input_scaling = input_scaling
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.dtype = dtype
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    PAPER = dict(d=18, feature_map="fourier", child_weights="shared", order="row",
                 loss="square", beta_init=0.0, pad=False, early_stopping=False, epochs=10)

    @classmethod
    def paper(cls, **params: Any) -> "QCNN":
        """The q-CNN paper's model as its reference code trains it: widths ``18 (l + 1)``,
        the Fourier map, one shared 1x1 convolution per level, row-major pairs, the square
        loss (eq. 48), batch-norm shift 0, 10 epochs, no early stopping; ``params``
        override any of these. (On real data it trains far less reliably than the
        defaults: see the README.)"""
        return cls(**{**cls.PAPER, **params})

    # ------------------------------------------------------------------ configuration
    def _check_config(self) -> None:
        self._check_classifier_config()
        check_positive_int("d", self.d)
        check_choice("feature_map", self.feature_map, FEATURE_MAPS)
        check_choice("pooling", self.pooling, ("1d", "2d"))
        check_choice("child_weights", self.child_weights, ("shared", "separate"))
        check_choice("order", self.order, SITE_ORDERS)
        check_choice("loss", self.loss, ("square", "cross_entropy"))
        check_choice("domain", self.domain, DOMAINS)
        self._check_device()
        # running statistics blend with weights (1 - momentum, momentum): outside [0, 1]
        # they leave the convex hull, and variances turn negative, then NaN
        check_number("momentum", self.momentum, 0, 1)
        check_number("eps", self.eps, 0, low_open=True)
        check_number("beta_init", self.beta_init)
        if self.n_features is not None:
            check_positive_int("n_features", self.n_features)
        if self.widths is not None:  # integers: 2.7 is not silently 2, 'a' not a raw error
            try:
                widths = list(self.widths)
            except TypeError:
                widths = None
            if widths is None or not all(isinstance(w, (int, np.integer))
                                         and not isinstance(w, bool) and w >= 1
                                         for w in widths):
                raise ValueError(f"widths: expected positive level widths (a list of "
                                 f"integers), got {self.widths!r}")
        try:
            n_channels(self.feature_map, self._n_features(), self.constant)
        except ValueError as exc:
            if self.n_features is not None:
                raise
            # the count came from d: say so, not n_features (which the caller left None)
            raise ValueError(f"d: n_features=None takes d={self.d} feature channels, and "
                             f"{str(exc).split(': ', 1)[1]}; pass another d or "
                             f"n_features") from None

    def _n_features(self) -> int:
        if self.n_features is not None:
            return int(self.n_features)
        return 2 if self.feature_map == "cos_sin" else int(self.d)

    def _network_shape(self, height: int, width: int) -> Tuple[int, int]:
        """Sides that are powers of two (a square for 2D pooling); with ``pad=False`` the
        images must have them already."""
        def up(n):
            return 1 << (n - 1).bit_length()

        if self.pooling == "2d":
            side = max(up(height), up(width), 2)
            if not self.pad and (height != width or height != side):
                raise ValueError(f"X: 2d pooling expects square images with a power-of-two side, "
                                 f"got {height}x{width}; pass pad=True (command line: --pad) to "
                                 f"zero-pad to {side}x{side}")
            return side, side
        ph, pw = up(height), max(up(width), 3 - up(height))  # at least one pair of sites
        if not self.pad and (ph, pw) != (height, width):
            raise ValueError(f"X: expected image height and width that are powers of two, got "
                             f"{height}x{width}; pass pad=True (command line: --pad) to "
                             f"zero-pad to {ph}x{pw}")
        return ph, pw

    def _geometry(self, height: int, width: int) -> Tuple[int, int, int]:
        """``(height, width, levels)`` for network images (sides powers of two)."""
        if self.pooling == "2d":
            return height, width, height.bit_length() - 1
        return height, width, (height * width).bit_length() - 1

    def _level_widths(self, levels: int) -> List[int]:
        if self.widths is None:
            return [self.d * (l + 1) for l in range(1, levels + 1)]
        widths = [int(w) for w in self.widths]
        if any(w < 1 for w in widths):
            raise ValueError(f"widths: expected positive level widths, got {widths}")
        if len(widths) != levels:
            raise ValueError(f"widths: expected {levels} level widths for this image size, got "
                             f"{len(widths)}")
        return widths

    # --------------------------------------------------------------------- parameters
    def _init_params(self, rng: np.random.Generator) -> None:
        dt = np.dtype(self.dtype)
        dims = [self.d0_] + self.widths_
        self.weights_, self.gammas_, self.betas_ = [], [], []
        self.running_means_, self.running_vars_ = [], []
        for l in range(self.n_levels_ + 1):
            d_in = dims[l]
            d_out = dims[l + 1] if l < self.n_levels_ else self.n_classes_
            if l < self.n_levels_:  # Xavier-uniform, as the reference conv1d layers
                bound = np.sqrt(6.0 / (d_in + d_out))
            else:  # torch.nn.Linear's default for the classifier
                bound = 1.0 / np.sqrt(d_in)
            rows = d_out * self._weight_copies(l)
            self.weights_.append(rng.uniform(-bound, bound, (rows, d_in)).astype(dt))
            self.gammas_.append(np.ones(d_in, dt))
            self.betas_.append(np.full(d_in, self.beta_init, dt))
            self.running_means_.append(np.zeros(d_in))
            self.running_vars_.append(np.ones(d_in))

    def _weight_copies(self, level: int) -> int:
        """Stacked convolutions of a level: one per window position with separate child
        weights (not for the classifier head), else one."""
        if self.child_weights == "separate" and level < self.n_levels_:
            return self.window_
        return 1

    def _state_spec(self) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
        """Shapes and dtypes of the learned arrays after ``_setup`` (what
        :meth:`_init_params` allocates)."""
        dt, dims, spec = np.dtype(self.dtype), [self.d0_] + self.widths_, {}
        for l in range(self.n_levels_ + 1):
            d_in = dims[l]
            d_out = (dims[l + 1] if l < self.n_levels_ else self.n_classes_)
            spec[f"weights_{l}"] = ((d_out * self._weight_copies(l), d_in), dt)
            for name, t in (("gammas_", dt), ("betas_", dt), ("running_means_", np.float64),
                            ("running_vars_", np.float64)):
                spec[f"{name}{l}"] = ((d_in,), np.dtype(t))
        return spec

    def _params(self) -> List[np.ndarray]:
        return self.weights_ + self.gammas_ + self.betas_

    @property
    def n_params_(self) -> int:
        """Trainable parameters (q-CNN eq. 46)."""
        return int(sum(p.size for p in self._params()))

    # ------------------------------------------------------------------------ inputs
    def _sites(self, X: np.ndarray) -> np.ndarray:
        """Network images -> (n, sites) chains in the pooling order, in the model dtype."""
        n = X.shape[0]
        return np.ascontiguousarray(X.reshape(n, -1)[:, self.perm_], dtype=self.dtype)

    def _features(self, chains: np.ndarray) -> np.ndarray:
        return ops.feature_map(chains, self.feature_map, self._n_features(), self.constant)

    # ----------------------------------------------------------------------- compute
    def _forward_backward(self, chains: np.ndarray, y: Optional[np.ndarray], training: bool,
                          domain: str, record: Optional[List[np.ndarray]] = None):
        """Scores for a batch; with labels, also the loss, its gradients and batch stats.

        ``chains`` and ``y`` are on the parameters' device. Returns ``(scores, log_scores,
        loss, grads, used_stats)``, arrays on that device, where ``log_scores`` is
        ``(logabs, sign)`` in the log and scaled domains (None in the linear one). A
        ``record`` list receives the features and then each pooling level's output with
        every site divided by its norm, as host float64 arrays.
        """
        x = self._features(chains)
        xp = array_module(x)
        if record is not None:
            record.append(to_numpy(x).astype(np.float64))
        win = self.window_
        L = self.n_levels_
        tapes, used = [], []
        if domain == "linear":
            stats = ops.batch_stats(x) if training else None
            for l in range(L + 1):
                s = stats if training else (self.running_means_[l], self.running_vars_[l])
                used.append(s)
                if self._weight_copies(l) > 1:  # convolve with every copy, pool own blocks
                    x_all, saved, _ = ops.qcnn_level_forward(
                        x, self.weights_[l], self.gammas_[l], self.betas_[l],
                        window=1, eps=self.eps, training=training, stats=s)
                    xs = _own_blocks(x_all, win)
                    x = xp.prod(xs, axis=2)
                    stats = ops.batch_stats(x) if training else None
                    saved = (saved, xs, x)
                else:
                    x, saved, stats = ops.qcnn_level_forward(
                        x, self.weights_[l], self.gammas_[l], self.betas_[l],
                        window=win if l < L else 1, eps=self.eps, training=training, stats=s)
                tapes.append(saved)
                if record is not None and l < L:
                    record.append(to_numpy(unit_sites(x)))
            scores = x[:, 0, :]
            log_scores = None
        elif domain == "scaled":  # inference only: one log-scale per site
            if training or y is not None:
                raise ValueError("the scaled domain is for inference; train in 'linear' or 'log'")
            logscale = xp.zeros(x.shape[:2])
            for l in range(L + 1):
                copies = self._weight_copies(l)
                x, logscale = ops.qcnn_level_scaled_forward(
                    x, logscale, self.weights_[l], self.gammas_[l], self.betas_[l],
                    window=win if copies == 1 and l < L else 1, eps=self.eps,
                    stats=(self.running_means_[l], self.running_vars_[l]))
                if copies > 1:  # pool the own blocks; the site maximum moves to the scale
                    x = xp.prod(_own_blocks(x, win), axis=2)
                    b_, p_ = x.shape[:2]
                    m = xp.max(xp.abs(x), axis=2)
                    m = xp.where(m > 0, m, 1.0)
                    x = x / m[..., None].astype(x.dtype)
                    logscale = logscale.reshape(b_, p_, win).sum(axis=2) + xp.log(m)
                if record is not None and l < L:  # the log-scale only rescales each site
                    record.append(to_numpy(unit_sites(x)))
            out, logscale = x[:, 0, :], logscale[:, :1]
            with np.errstate(divide="ignore"):
                log_scores = (xp.log(xp.abs(out)) + logscale, xp.sign(out).astype(np.int8))
            with np.errstate(over="ignore"):
                scores = out * xp.exp(logscale)
        else:
            with np.errstate(divide="ignore"):
                la = xp.log(xp.abs(x))
            sg = xp.sign(x).astype(np.int8)
            for l in range(L + 1):
                s = None if training else (self.running_means_[l], self.running_vars_[l])
                copies = self._weight_copies(l)
                la, sg, saved, s_used = ops.qcnn_level_log_forward(
                    la, sg, self.weights_[l], self.gammas_[l], self.betas_[l],
                    window=win if copies == 1 and l < L else 1, eps=self.eps,
                    training=training, stats=s)
                if copies > 1:  # pool the own blocks: add log-magnitudes, multiply signs
                    la = _own_blocks(la, win).sum(axis=2)
                    sg = xp.prod(_own_blocks(sg, win), axis=2).astype(np.int8)
                tapes.append(saved)
                used.append(s_used)
                if record is not None and l < L:
                    record.append(to_numpy(unit_sites_log(la, sg)))
            log_scores = (la[:, 0, :], sg[:, 0, :])
            with np.errstate(over="ignore"):
                scores = log_scores[1] * xp.exp(log_scores[0].astype(np.float64))
        if y is None:
            return scores, log_scores, None, None, used
        loss, g_scores = loss_fn(self.loss)(scores, y)
        grads_w, grads_g, grads_b = [None] * (L + 1), [None] * (L + 1), [None] * (L + 1)
        dt = np.dtype(self.dtype)
        if domain == "linear":
            g = g_scores.astype(dt)[:, None, :]
            backward = ops.qcnn_level_backward
        else:  # dL/dlogabs = dL/dscore * score
            g = (g_scores * scores).astype(dt)[:, None, :]
            backward = ops.qcnn_level_log_backward
        affine = None  # batch-norm term of each level's input gradient, applied one level down
        for l in range(L, -1, -1):
            separate = self._weight_copies(l) > 1
            if domain == "linear" and separate:
                saved, xs, out = tapes[l]
                if affine is not None:  # the level above left its batch-norm term to us
                    scale, shift = (xp.asarray(c, dtype=dt) for c in affine)
                    g = g - (scale * out + shift)
                g_all = _own_blocks_scatter(g[:, :, None, :] * _prod_others(xs), win)
                g, grads_w[l], grads_g[l], grads_b[l], affine = backward(
                    saved, g_all, need_g_x=l > 0, return_affine=True)
            elif domain == "linear":  # the first level's input is data: no gradient needed
                g, grads_w[l], grads_g[l], grads_b[l], affine = backward(
                    tapes[l], g, need_g_x=l > 0, g_out_affine=affine, return_affine=True)
            else:
                if separate:  # d out_logabs / d logabs of each own block = 1
                    b_, p_, d_ = g.shape
                    g = _own_blocks_scatter(
                        xp.broadcast_to(g[:, :, None, :], (b_, p_, win, d_)), win)
                g, grads_w[l], grads_g[l], grads_b[l] = backward(tapes[l], g)
            tapes[l] = None  # free each level's saved state as soon as it is used
        return scores, log_scores, loss, grads_w + grads_g + grads_b, used

    def _train_domain(self) -> str:
        return "log" if self.domain == "log" else "linear"

    def _predict_domain(self) -> str:
        return {"auto": "scaled"}.get(self.domain, self.domain)

    def _update_running(self, used: List[Tuple[np.ndarray, np.ndarray]], batch: int) -> None:
        """Blend the batch statistics into the running ones (on their device)."""
        m = self.momentum
        for l, (mean, var) in enumerate(used):
            xp = array_module(self.running_means_[l])
            n = batch * self.sites_per_level_[l]
            unbiased = xp.asarray(var, dtype=np.float64) * (n / max(n - 1, 1))
            self.running_means_[l] = (1 - m) * self.running_means_[l] + m * xp.asarray(mean)
            self.running_vars_[l] = (1 - m) * self.running_vars_[l] + m * unbiased

    # ------------------------------------------------------------------------ public
    def fit(self, X: Any, y: Any, *, epochs: Optional[int] = None,
            batch_size: Optional[int] = None,
            validation_data: Optional[Tuple[Any, Any]] = None,
            callbacks: Sequence[Callable[["QCNN", int, Dict], Optional[Dict]]] = (),
            warm_start: bool = False,
            augment: Optional[Callable[[np.ndarray, np.random.Generator], np.ndarray]] = None,
            restore_best: bool = False) -> "QCNN":
        """Train on images with labels.

        Parameters
        ----------
        X : array (n, height, width) or (n, height * width)
            Images, ideally in [0, 1] (see ``input_scaling``).
        y : array (n,)
            Labels of any kind scikit-learn classifies (integers, strings, ...).
        epochs, batch_size : int, optional
            Override the constructor values for this call.
        validation_data : (X_val, y_val), optional
            Accuracy on it is recorded each epoch as ``val_accuracy``; with
            ``early_stopping`` it replaces the split held out of ``X``.
        callbacks : callables
            ``f(model, epoch, record) -> dict or None`` after each epoch; returned items join
            the epoch's history record (e.g. entanglement entropy).
        warm_start : bool
            Continue from the current parameters instead of re-initialising.
        augment : callable, optional
            ``augment(images, rng) -> images`` applied to every training batch (same shape,
            values in [0, 1]), e.g. ``functools.partial(fasttn.data.random_shift,
            max_shift=1.0)``; drawn from the model's own seeded generator.
        restore_best : bool
            With ``validation_data`` and ``early_stopping=False``: end with the parameters
            (and running statistics) of the epoch of highest validation accuracy, recorded
            as ``best_epoch_`` (``early_stopping`` always does).

        Returns
        -------
        self, with ``history_`` (one dict per epoch).
        """
        check_augment(augment)
        X, y, epochs, batch_size, rng, monitor = self._start_fit(
            X, y, epochs, batch_size, warm_start, validation_data, restore_best)
        chains = None if augment is not None else self._sites(X)
        opt = AdamW(self._params(), lr=self.lr, weight_decay=self.weight_decay)
        sched = StepLR(opt, step_size=self.lr_step, gamma=self.lr_gamma)
        domain = self._train_domain()
        abs_pred = self.loss == "square"

        def batch_chains(idx):
            if augment is None:
                return chains[idx]
            images = augmented(augment, X[idx], rng)
            return self._sites(self._check_augmented(images))

        def step(idx):
            chains_b, y_b = self._to_device(batch_chains(idx)), self._to_device(y[idx])
            scores, _, loss, grads, used = self._forward_backward(chains_b, y_b, True, domain)
            opt.step(grads)
            self._update_running(used, len(idx))
            return loss, n_correct(abs(scores) if abs_pred else scores, y_b)

        hooks = self._epoch_hooks(monitor, callbacks)
        start = len(self.history_)
        hist = fit_loop(step, len(y), epochs=epochs, batch_size=batch_size, rng=rng,
                        set_epoch=lambda e: sched.set_epoch(start + e), end_of_epoch=hooks,
                        verbose=self.verbose, desc="QCNN")
        for rec in hist:
            rec["epoch"] += start
        self.history_.extend(hist)
        self._finish_fit(monitor)
        return self

    def _setup(self, image_shape: Tuple[int, int]) -> None:
        h, w = image_shape
        ph, pw, levels = self._geometry(h, w)
        self.image_shape_ = (h, w)
        self.padded_shape_ = (ph, pw)
        self.n_levels_ = levels
        self.window_ = 4 if self.pooling == "2d" else 2
        self.perm_ = site_order(ph, pw, "z" if self.pooling == "2d" else self.order)
        self.d0_ = n_channels(self.feature_map, self._n_features(), self.constant)
        self.widths_ = self._level_widths(levels)
        n_sites = ph * pw
        self.sites_per_level_ = [n_sites // self.window_ ** l for l in range(levels + 1)]

    def decision_function(self, X: Any, batch_size: Optional[int] = None,
                          log: bool = False):
        """Class scores alpha, columns in the order of ``classes_``.

        Parameters
        ----------
        X : array (n, height, width) or (n, height * width)
        batch_size : int, optional
            Images per forward pass (default 256).
        log : bool
            Return ``(log|alpha|, sign)`` instead, finite even where alpha itself is not
            representable (deep hierarchies).

        Returns
        -------
        scores : (n, n_classes_) float64 (two classes: ``(n,)``, the second score minus
            the first), or with ``log`` the pair ``(log|alpha|, sign)``, each
            ``(n, n_classes_)``.
        """
        batch_size = check_batch_size(batch_size)
        self._check_fitted()
        images = self._check_X(X, fitted=True)
        if log:
            return self._decision_log(images, batch_size)
        scores = self._decision(images, batch_size)
        if not np.all(np.isfinite(scores)):
            # deep hierarchies (e.g. 1024x1024 images) give scores past float64's range
            n_bad = int(np.count_nonzero(~np.all(np.isfinite(scores), axis=1)))
            raise FloatingPointError(
                f"decision_function: the scores of {n_bad} image(s) exceed float64's range "
                f"at this depth ({self.n_levels_} levels); call decision_function(X, "
                f"log=True) for the finite pair (log|alpha|, sign)")
        return binary_margin(scores)

    def _decision(self, images: np.ndarray, batch_size: Optional[int] = None) -> np.ndarray:
        return self._decision_log(images, batch_size, with_scores=True)[2]

    def _decision_log(self, images: np.ndarray, batch_size: Optional[int] = None,
                      with_scores: bool = False):
        """``(log|alpha|, sign)`` of network images (and the scores with
        ``with_scores``)."""
        batch_size = batch_size or 256
        domain = self._predict_domain()
        outs_la, outs_sg, outs = [], [], []
        for i in range(0, images.shape[0], batch_size):
            chains = self._to_device(self._sites(images[i:i + batch_size]))
            scores, log_scores, *_ = self._forward_backward(chains, None, False, domain)
            scores = to_numpy(scores)
            if log_scores is None:
                with np.errstate(divide="ignore"):
                    log_scores = (np.log(np.abs(scores)), np.sign(scores).astype(np.int8))
            else:
                log_scores = tuple(to_numpy(a) for a in log_scores)
            outs.append(scores)
            outs_la.append(log_scores[0])
            outs_sg.append(log_scores[1])
        la, sg = np.concatenate(outs_la), np.concatenate(outs_sg)
        if np.isnan(la).any():
            # the linear domain overflows (inf * 0, inf - inf) in deep hierarchies; a NaN
            # score would otherwise rank as class 0 with only a warning
            raise FloatingPointError(
                f"domain={self.domain!r}: the class scores overflow to NaN at this depth "
                f"({self.n_levels_} levels); predict with domain='auto' or 'log' "
                f"(set_params(domain='auto')), which are finite at any depth")
        if with_scores:
            return la, sg, np.concatenate(outs).astype(np.float64)
        return la, sg

    def _predict_index(self, images: np.ndarray, batch_size: Optional[int] = None) -> np.ndarray:
        """argmax |alpha_y| (square loss, eq. 35) or argmax alpha_y (cross-entropy)."""
        la, sg = self._decision_log(images, batch_size)
        if self.loss == "square":
            return np.argmax(la, axis=1)
        # cross-entropy ranks signed scores; a per-sample shift keeps them in range
        with np.errstate(invalid="ignore"):
            shifted = la.astype(np.float64) - la.max(axis=1, keepdims=True)
        return np.argmax(sg * np.exp(np.nan_to_num(shifted, nan=-np.inf)), axis=1)

    def _log_proba(self, images: np.ndarray, batch_size: Optional[int] = None) -> np.ndarray:
        """Cross-entropy: the softmax of the scores. Square loss: the Born rule,
        ``p_y = alpha_y^2 / sum alpha^2`` (the class state's squared amplitudes)."""
        la, sg = self._decision_log(images, batch_size)
        la = la.astype(np.float64)
        if self.loss == "square":
            z = np.nan_to_num(2 * la, nan=-np.inf, neginf=-1e300)
        else:  # scores past exp's range saturate; their ranking is kept
            with np.errstate(over="ignore"):
                z = sg * np.exp(np.minimum(np.nan_to_num(la, neginf=-1e300), 700.0))
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def layer_outputs(self, X: Any, batch_size: int = 256) -> Dict[str, np.ndarray]:
        """Per-image representation at every layer, in the arithmetic :meth:`predict` uses.

        Parameters
        ----------
        X : (n, height, width)
            Images in [0, 1] of the fitted shape.
        batch_size : int
            Images per forward pass; memory is the result plus one batch.

        Returns
        -------
        dict of name -> (n, n_features) float64, in network order:

        ``"input"``
            The feature map of the (padded) pixels in the model's site order,
            ``n_features = sites * channels``.
        ``"level 1"`` ... ``"level L"``
            The output of each pooling level, ``sites_per_level_[l] * widths_[l - 1]``
            features, every site divided by its norm (a zero site stays zero): the
            levels' scales differ by many orders of magnitude, their directions do not.
        ``"scores"``
            The class scores, equal to :meth:`decision_function`.
        """
        self._check_fitted()
        X = self._check_X(X, fitted=True)
        domain = self._predict_domain()

        def forward(start: int, stop: int) -> List[np.ndarray]:
            record: List[np.ndarray] = []
            chains = self._to_device(self._sites(X[start:stop]))
            scores = self._forward_backward(chains, None, False, domain, record=record)[0]
            return record + [to_numpy(scores)]

        return gather_layer_outputs(X.shape[0], batch_size, forward)

    # ------------------------------------------------------------------- checkpoints
    def _state_arrays(self) -> Dict[str, np.ndarray]:
        arrays = {}
        for name in ("weights_", "gammas_", "betas_", "running_means_", "running_vars_"):
            for l, a in enumerate(getattr(self, name)):
                arrays[f"{name}{l}"] = a
        return arrays

    def _state_meta(self) -> Dict[str, Any]:
        return {"image_shape": list(self.image_shape_), "history": self.history_}

    def _set_state(self, arrays: Dict[str, np.ndarray], meta: Dict[str, Any]) -> None:
        self._check_config()
        self._setup(tuple(meta["image_shape"]))
        dims = [self.d0_] + self.widths_
        for name in ("weights_", "gammas_", "betas_", "running_means_", "running_vars_"):
            setattr(self, name, [arrays[f"{name}{l}"] for l in range(self.n_levels_ + 1)])
        for l, w in enumerate(self.weights_):
            d_out = dims[l + 1] if l < self.n_levels_ else self.n_classes_
            d_out *= self._weight_copies(l)
            if w.shape != (d_out, dims[l]):
                raise ValueError(f"checkpoint: weights_{l} has shape {w.shape}, expected "
                                 f"{(d_out, dims[l])}")
        self.history_ = meta.get("history", [])
