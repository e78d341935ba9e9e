"""2D MERA classifier: feature map -> levels of exact MERA blocks (4x4 -> 1) -> class scores.

Every level tiles the current grid of sites into 4x4 blocks and contracts each block exactly
(``fasttn.ops.mera_block``: disentangler, four corner isometries, second disentangler, top
tensor, weights shared by the blocks of a level). Between levels each site is divided by its
norm and the log of the norm is tracked: every block is linear in each of its sites, so this
changes the network's output only by a positive factor per image, ``exp(log_scale_)``, and
keeps the values of deep hierarchies (1024x1024 = 5 levels) of order one. The class scores
are the last level's output; predictions (argmax) are those of the exact network. With a
``window`` smaller than the image, the top block instead scans every position of its grid
and the per-region class scores are pooled (a detector of small objects in large images;
``fasttn.ops.region_pool``). The
option ``level_map="relu"`` gives up that exactness for a non-linear hierarchy: each
normalised site ``y`` enters the next level as ``[1, relu(y)]``. With
``device="cuda"`` the tensors, activations, gradients and optimizer moments stay on the GPU;
each batch of images goes up once and only the loss and the correct count come back.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .. import ops
from .._validate import check_choice, check_number, check_per_level, check_positive_int
from ..backend import array_module, to_numpy
from ..ops.feature_maps import FEATURE_MAPS, n_channels
from ..ops.region_pool import (lse_pool_backward, lse_pool_forward, mean_log_softmax,
                               scan_windows, scan_windows_backward, translate)
from ..ops.site_norm import (relu_sites_backward, relu_sites_forward, site_norm_backward,
                             site_norm_forward, unit_sites)
from ..train import AdamW, StepLR, loss_fn, n_correct
from ..train.loop import fit_loop
from ..train.stiefel import polar_retract
from .base import Augment, augmented, check_augment, register
from .classifier import ImageClassifier, next_power_of_two
from .layer_outputs import gather_layer_outputs

LEVEL_MAPS = ("none", "relu")


def _block_levels(sites: int) -> Optional[Tuple[int, int]]:
    """``(4x4 levels, side left)`` that bring a square grid of ``sites`` per side down to
    one site (side left 1) or to the 2x2 end block (side left 2); None where ``sites`` is not
    a power of 2 of at least 2."""
    if sites < 2:
        return None
    levels = 0
    while sites % 4 == 0:
        sites //= 4
        levels += 1
    return (levels, sites) if sites in (1, 2) else None
_PARAMS = ("u1", "w", "u2", "top")
_END_PARAMS = ("u", "top")  # the 2x2 end block of grids whose side is not a power of 4


@register
class MERA2D(ImageClassifier):
    """Hierarchical 2D MERA classifier. The network runs on square images whose side (in
    sites) is a power of 2, at least 2; other images are zero-padded, centred, to the next
    such square. Each level maps 4x4 blocks to one site; a side that is not a power of 4
    ends with a 2x2 block (disentangler ``u`` and isometry ``top``).

    Parameters
    ----------
    n_classes : int, optional
        Number of class outputs; None (default) takes the classes from ``y`` in ``fit``
        (see :class:`QCNN`).
    chi : int or sequence of int
        Bond dimension of the isometry outputs (the output sites) of every 4x4 level, or one
        per 4x4 level (the last level's ``top`` maps its ``chi`` to the classes).
    bond : int or sequence of int, optional
        Dimension of the disentangler legs, for every level or one per level (the 2x2 end
        block included); default: the level's ``chi`` (the end block: the dimension of its
        input sites), lowered where ``u1`` would exceed 2^21 numbers (4x4 patch sites: 2).
    shared : bool
        One set of tensors per level, shared by all its blocks (default: parameters
        independent of the image size), or one set per block (``False``: position-specific
        blocks, as the reference's NeedleMNIST models; the tensors gain a leading axis over
        the level's blocks in row-major order).
    window : int, "auto" or None
        Side in pixels of the square region one read-out sees. ``None``: the whole image,
        contracted to one vector of class scores (the reference's network). An int ``W``
        smaller than the (padded) image: the levels below the top run over the whole
        image as usual, and the top block, instead of tiling its grid of sites, is
        contracted at every position of it (stride one site: regions of ``W x W`` pixels
        every ``window_stride_`` pixels); the class scores of the ``scan_ x scan_``
        regions are pooled by ``log(mean(exp(.)))``, a smooth maximum, so an object
        anywhere raises its class's score and every region is read by the same tensors.
        :meth:`evidence_map` gives the per-region scores. ``"auto"``: 32 on images larger
        than 32x32, else the whole image.
    patch : int or "auto"
        Side of the square of pixels that forms one input site. ``"auto"`` (default): with
        a scanning read-out a sixteenth of the window (each window is then two 4x4 levels;
        2 for ``W = 32``); with one read-out of the image, 1 up to 32x32 images and 4
        above (the first level's tensors stay small: a 4x4 patch is a site of 17 entries
        with the constant, and ``u1`` holds ``17^4 b^4`` numbers). The fitted value is
        ``patch_``. 1: every pixel is a site, embedded by ``feature_map``. ``k > 1``:
        every ``k x k`` patch is a site whose vector is its raw pixel values (``k^2``
        entries, row-major in the patch; the 2D MERA reference's input, whose
        ``GridMERAin16`` is ``patch=4, chi=2`` on 16x16 images); ``feature_map`` and
        ``n_features`` are then unused. Images must tile into patches, and the grid of
        patches must have a power-of-2 side.
    feature_map : {"cos_sin", "fourier", "legendre"}
        Per-pixel map; ``cos_sin`` is [cos(pi x / 2), sin(pi x / 2)] at its default degree 2.
    n_features : int, optional
        Channels of the map (default 2 for ``cos_sin``, any degree >= 2 allowed; else 4,
        required even for ``fourier``).
    constant : bool
        Prepend the constant channel 1 to every site (pixel features or patch vector): with
        the identity initialisation each block then starts close to an affine function of
        its sites, not a product of them.
    level_map : {"none", "relu"}
        What a level's normalised output site ``y`` (``chi`` entries) becomes before the
        next level. ``none``: ``y`` itself, so the whole network stays one multilinear
        tensor network, exact up to the per-image factor ``exp(log_scale)``. ``relu``
        (default): ``[1, relu(y)]`` (``chi + 1`` entries), a non-linear hierarchy in which a
        level can report "some part of this block looks like the object" instead of
        multiplying the evidence of every part; ``log_scale`` then only sums the
        normalisations. On cluttered NeedleMNIST-64 (three objects per canvas) it is what
        lets the network learn at all (see the README's MERA section).
    lr, weight_decay, lr_step, lr_gamma : float, float, int, float
        AdamW, the learning rate multiplied by ``lr_gamma`` every ``lr_step`` epochs.
    batch_size, epochs : int
    init : {"random", "identity"}
        ``identity``: every tensor but the class map starts as the map of the all-first-index
        inputs to the first output index (with ``constant``, every block then starts close
        to an affine function of its sites) plus Gaussian noise; the class map (the last
        ``top``) is noise only, so no class is favoured (default). ``random``: noise only
        (with ``level_map="none"`` it trains more reliably on the digits).
    init_scale : float
        Standard deviation of the noise relative to ``1 / sqrt(fan_in)``.
    constraint : {"none", "isometric", "norm"}
        ``isometric``: every tensor but the class map is kept an isometry from its input
        legs to its output legs (``u1``: 4 sites -> 4 legs, each ``w``: 3 sites + leg -> chi,
        ``u2``, and the ``top`` of every level but the last), by a polar retraction after
        each optimiser step (see :mod:`fasttn.train.stiefel`). ``norm``: every tensor of the
        levels before the last keeps the Frobenius norm it had before each step (the step is
        rescaled back onto that sphere). The per-site normalisation divides those tensors'
        scales out of the scores, so only their directions matter; without the constraint
        their norms drift under Adam and with them the size of each step relative to the
        tensor. With three or more levels (64x64 and up) a random start is chaotic (the
        scores of an image and of a slightly noisy copy are uncorrelated) and training
        often stalls at chance; with the norms fixed it left that start more reliably in
        our runs (64x64 digits: 4 of 4 seeds against 3 of 4 for ten classes, 2 of 3
        against 0 of 3 for 3 vs 8). At 16x16 the two are alike.
    augment_shift : float or "auto"
        Training batches are shifted by random sub-pixel offsets of up to this many pixels
        per axis, fresh every batch (:func:`fasttn.data.random_shift`), unless ``fit`` gets
        its own ``augment``. ``"auto"`` (default): half the stride between regions with a
        scanning read-out (4 pixels for ``W = 32``), else one patch with patch sites and
        none with pixel sites. The blocks sit on a fixed grid of patches; shifted copies
        show a level-0 block every alignment of an object to that grid, which a few
        thousand images do not (NeedleMNIST-64, 3,000 canvases: see the README).
    predict_shift : int or "auto"
        With ``s > 0``, the scores behind ``predict``, ``predict_proba``,
        ``decision_function``, ``score`` and the early-stopping validation are the mean of
        the log-probabilities of four copies of the image, moved by ``(+-s, +-s)`` pixels
        (zero-filled): the regions then sit every half stride, not every stride, at four
        times the cost of one forward pass. ``"auto"`` (default): a quarter of the stride
        between regions with a scanning read-out (2 pixels for ``W = 32``), else 0.
        ``evidence_map`` and ``log_scale`` read the image as it is.
    image_shape, input_scaling, early_stopping, validation_fraction, n_iter_no_change
        Input layout, pixel scaling and early stopping, as for :class:`QCNN`.
    dtype : {"float32", "float64"}
    device : {"cpu", "cuda"}
        Where training and inference run. ``"cuda"`` keeps the tensors and the optimizer
        state on the GPU (CuPy arrays) and needs CuPy and an NVIDIA GPU (checked by
        ``fit``); results come back as NumPy arrays and checkpoints hold host arrays.
    random_state : int, optional
    verbose : int
    """

    _FITTED_ATTR = "params_"
    #: Checkpoints written before ``window`` existed hold whole-image read-outs.
    _PARAMS_BEFORE_SAVED = {"window": None}

    def __init__(self, n_classes: Optional[int] = None, chi: Union[int, Sequence[int]] = 4,
                 bond: Union[None, int, Sequence[int]] = None, shared: bool = True,
                 patch: Union[int, str] = "auto", feature_map: str = "cos_sin",
                 n_features: Optional[int] = None,
                 constant: bool = True, level_map: str = "relu", lr: float = 0.002,
                 weight_decay: float = 0.0, lr_step: int = 10, lr_gamma: float = 0.5,
                 batch_size: int = 32, epochs: int = 40,
                 init: str = "identity", init_scale: float = 1.0, constraint: str = "none",
                 augment_shift: Union[float, str] = "auto",
                 window: Union[None, int, str] = "auto",
                 predict_shift: Union[int, str] = "auto",
                 image_shape: Optional[Tuple[int, int]] = None, input_scaling: str = "auto",
                 early_stopping: bool = True, validation_fraction: float = 0.1,
                 n_iter_no_change: int = 8,
                 dtype: str = "float32", device: str = "cpu",
                 random_state: Optional[int] = None, verbose: int = 0):
        self.n_classes = n_classes
        self.chi = chi
        self.bond = bond
        self.shared = shared
        self.patch = patch
        self.feature_map = feature_map
        self.n_features = n_features
        self.constant = constant
        self.level_map = level_map
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_step = lr_step
        self.lr_gamma = lr_gamma
        self.batch_size = batch_size
        self.epochs = epochs
        self.init = init
        self.init_scale = init_scale
        self.constraint = constraint
        self.augment_shift = augment_shift
        self.window = window
        self.predict_shift = predict_shift
        self.image_shape = image_shape
        self.input_scaling = input_scaling
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.dtype = dtype
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    PAPER = dict(patch=4, chi=2, bond=2, constant=False, level_map="none", init="random",
                 lr=0.0005, epochs=20, early_stopping=False, augment_shift=0.0, window=None)

    @classmethod
    def paper(cls, **params: Any) -> "MERA2D":
        """The 2D MERA reference's block (``GridMERAin16``): raw 4x4 patches as sites
        without a constant, bond dimensions 2, the exact multilinear network, Adam at
        5e-4, 20 epochs, no early stopping; ``params`` override any of these. (On the
        digits it scores far below the defaults: see the README.)"""
        return cls(**{**cls.PAPER, **params})

    # ------------------------------------------------------------------ configuration
    def _check_config(self) -> None:
        self._check_classifier_config()
        check_per_level("chi", self.chi)
        if self.patch != "auto":
            check_positive_int("patch", self.patch)
        if self.bond is not None:
            check_per_level("bond", self.bond)
        check_choice("shared", self.shared, (True, False))
        check_choice("feature_map", self.feature_map, FEATURE_MAPS)
        check_choice("init", self.init, ("identity", "random"))
        check_choice("constraint", self.constraint, ("none", "isometric", "norm"))
        check_choice("level_map", self.level_map, LEVEL_MAPS)
        if self.augment_shift != "auto":
            check_number("augment_shift", self.augment_shift, low=0.0)
        if self.window not in (None, "auto"):
            check_positive_int("window", self.window)
        if self.predict_shift != "auto" and (
                isinstance(self.predict_shift, bool)
                or not isinstance(self.predict_shift, (int, np.integer)) or self.predict_shift < 0):
            raise ValueError(f"predict_shift: expected 'auto' or a non-negative integer "
                             f"(pixels), got {self.predict_shift!r}")
        self._check_device()

    def _n_features(self) -> int:
        if self.n_features is not None:
            return int(self.n_features)
        return 2 if self.feature_map == "cos_sin" else 4

    #: Side of the regions ``window="auto"`` reads out, in pixels, on larger images.
    AUTO_WINDOW = 32

    def _window_for(self, side: int) -> int:
        """The side in pixels of the square region one read-out sees, on images of this
        side: ``window``, capped at the image; ``None``: the image; ``"auto"``:
        ``AUTO_WINDOW`` when the side rounds up to a larger power of two, else the
        image. The answer is the same for an input side and for the network side it pads
        to, so a checkpoint's network shape gives back its window."""
        padded = next_power_of_two(int(side))
        if self.window is None or (self.window == "auto" and padded <= self.AUTO_WINDOW):
            return padded
        cap = self.AUTO_WINDOW if self.window == "auto" else int(self.window)
        return min(cap, padded)

    def _patch_for(self, side: int) -> int:
        """The ``patch`` for images of this side: the parameter, or for ``"auto"``: with a
        scanning read-out, a sixteenth of the window (each window two 4x4 levels of
        sites); with one read-out of the image, 1 up to 32x32, else 4. The same for an
        input side and its padded side."""
        if self.patch != "auto":
            return int(self.patch)
        padded, window = next_power_of_two(int(side)), self._window_for(side)
        if window < padded:
            return max(1, window // 16)
        return 1 if padded <= 32 else 4

    def _network_shape(self, height: int, width: int) -> Tuple[int, int]:
        """A square of ``patch``-sided sites, the grid's side a power of two (at least 2)."""
        k = self._patch_for(max(height, width))
        grid = max(next_power_of_two(-(-max(height, width) // k)), 2)
        return grid * k, grid * k

    def _setup(self, image_shape: Tuple[int, int]) -> None:
        h, w = image_shape
        k = self.patch_ = self._patch_for(max(h, w))
        if h != w or h % k or w % k:
            raise ValueError(f"X: expected square images whose side is a multiple of patch={k}"
                             f" (a power-of-2 grid of patches), got {h}x{w}")
        if _block_levels(h // k) is None:
            what = "side" if k == 1 else f"side in patches of {k}x{k}"
            raise ValueError(f"X: expected square images whose {what} is a power of 2 (2, 4, "
                             f"8, ..., 1024), got {h}x{w}; pad or resize them")
        self.image_shape_ = (h, w)
        # the levels are those of the network on one window (the whole image without a
        # scanning read-out)
        self.window_ = min(self._window_for(h), h)  # a grid of 3x3 patches: 24, not 32
        shape = _block_levels(self.window_ // k) if self.window_ % k == 0 else None
        if shape is None:
            raise ValueError(f"window: expected a power of 2 of at least 2 patches of "
                             f"{k}x{k} pixels, got {self.window_} pixels")
        levels, side = shape
        self.has_end_ = side == 2
        self.n_levels_ = levels + int(self.has_end_)
        # positions per axis of the top block: 1, or every site of the grid below it
        self.scan_ = h // self.window_stride_ - self._top_side + 1
        if self.scan_ > 1 and not self.shared:
            raise ValueError(f"shared: position-specific blocks (shared=False) need one read-"
                             f"out of the whole image (window=None), got window="
                             f"{self.window!r} on {h}x{w} images")
        self.chis_ = check_per_level("chi", self.chi, levels,
                                     f" 4x4 levels for {h}x{w} images in {k}x{k} sites")
        if k == 1:
            self.p0_ = n_channels(self.feature_map, self._n_features(), self.constant)
        else:
            self.p0_ = k * k + int(self.constant)
        end_bond = (self.chis_[-1] + (self.level_map == "relu") if self.chis_
                    else check_positive_int("chi", self.chi))
        if self.bond is not None:
            self.bonds_ = check_per_level("bond", self.bond, self.n_levels_,
                                          f" levels for {h}x{w} images in {k}x{k} sites")
        else:
            self.bonds_ = [self._default_bond(self._site_dim(level), b) for level, b in
                           enumerate(self.chis_ + [end_bond] * self.has_end_)]
        # blocks of each level: (grid side / 4)^2, one for the end block, or the
        # positions of a scanning top block
        self.n_blocks_ = [(h // k // 4 ** (l + 1)) ** 2 for l in range(levels)] + \
            [1] * self.has_end_
        if self.scan_ > 1:
            self.n_blocks_[-1] = self.scan_ ** 2

    @property
    def _top_side(self) -> int:
        """Sites per axis of the top block: 2 for the end block, else 4."""
        return 2 if self.has_end_ else 4

    #: Most entries a default disentangler ``u1`` (``p^4 b^4``) may hold.
    MAX_DEFAULT_U1 = 1 << 21

    @classmethod
    def _default_bond(cls, p: int, b: int) -> int:
        """The default bond of a level with sites of dimension ``p``: its ``chi`` (``b``),
        lowered until ``u1`` holds at most ``MAX_DEFAULT_U1`` numbers (raw 4x4 patches,
        ``p = 17``, get 2: ``u1`` is then 1.3 M numbers instead of 21 M at ``chi = 4``)."""
        while b > 1 and (p * b) ** 4 > cls.MAX_DEFAULT_U1:
            b -= 1
        return b

    def _augment_shift(self) -> float:
        """``augment_shift`` resolved for the fitted read-out: half the stride between
        regions with a scanning read-out, one patch with patch sites, else 0."""
        if self.augment_shift != "auto":
            return float(self.augment_shift)
        if self.scan_ > 1:
            return self.window_stride_ / 2
        return float(self.patch_) if self.patch_ > 1 else 0.0

    def _predict_shift(self) -> int:
        """``predict_shift`` resolved for the fitted read-out: a quarter of the stride
        between regions with a scanning read-out (2 pixels for ``W = 32``), else 0."""
        if self.predict_shift != "auto":
            return int(self.predict_shift)
        return self.window_stride_ // 4 if self.scan_ > 1 else 0

    def _site_dim(self, level: int) -> int:
        """Dimension of the sites a level reads (``p``)."""
        return self.p0_ if level == 0 else self.chis_[level - 1] + (self.level_map == "relu")

    def _names(self, level: int) -> Tuple[str, ...]:
        return _END_PARAMS if self.has_end_ and level == self.n_levels_ - 1 else _PARAMS

    def _dims(self, level: int) -> Tuple[int, int, int, int]:
        """``(p, b, chi, d_out)`` of a level (``chi`` 0 for the end block)."""
        p = self._site_dim(level)
        chi = self.chis_[level] if level < len(self.chis_) else 0
        d_out = self.n_classes_ if level == self.n_levels_ - 1 else chi
        return p, self.bonds_[level], chi, d_out

    def _per_block(self, level: int) -> bool:
        """Whether the level has one set of tensors per block."""
        return not self.shared and self._names(level) == _PARAMS

    def _shapes(self, level: int) -> Dict[str, Tuple[Tuple[int, ...], int]]:
        """``name: (shape, fan_in)`` of each tensor of a level (with the leading block axis
        of unshared levels)."""
        p, b, chi, d_out = self._dims(level)
        if self._names(level) == _END_PARAMS:
            return {"u": ((p,) * 4 + (b,) * 4, p ** 4), "top": ((b,) * 4 + (d_out,), b ** 4)}
        lead = (self.n_blocks_[level],) if self._per_block(level) else ()
        return {"u1": (lead + (p,) * 4 + (b,) * 4, p ** 4),
                "w": (lead + (4, p, p, p, b, chi), p ** 3 * b),
                "u2": (lead + (chi,) * 8, chi ** 4),
                "top": (lead + (chi,) * 4 + (d_out,), chi ** 4)}

    _SIZE_PARAMS = ("chi", "bond")

    def _state_spec(self) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
        """Shapes and dtypes of the learned arrays after ``_setup``."""
        dt = np.dtype(self.dtype)
        return {f"{name}{level}": (shape, dt) for level in range(self.n_levels_)
                for name, (shape, _) in self._shapes(level).items()}

    def _block_tensors(self, level: int) -> List[Dict[str, Any]]:
        """The tensors of each block of a level (views; one dict for a shared level)."""
        prm = self.params_[level]
        if not self._per_block(level):
            return [prm]
        return [{name: t[j] for name, t in prm.items()} for j in range(self.n_blocks_[level])]

    def _init_params(self, rng: np.random.Generator) -> None:
        dt = np.dtype(self.dtype)
        self.params_: List[Dict[str, np.ndarray]] = []
        for level in range(self.n_levels_):
            shapes = self._shapes(level)
            prm = {}
            lead = 1 if self._per_block(level) else 0
            for name, (shape, fan_in) in shapes.items():
                t = self.init_scale / np.sqrt(fan_in) * rng.standard_normal(shape)
                last_top = name == "top" and level == self.n_levels_ - 1
                if self.init == "identity" and not last_top:  # w: each of the four isometries
                    free = lead + (name == "w")  # axes over blocks and isometries
                    t[(slice(None),) * free + (0,) * (len(shape) - free)] += 1.0
                prm[name] = t.astype(dt)
            self.params_.append(prm)
        self._retract()

    def isometric_views(self) -> List[np.ndarray]:
        """The constrained tensors as (inputs x outputs) matrices (views of the weights)."""
        views = []
        for level in range(self.n_levels_):
            p, b, chi, d_out = self._dims(level)
            for prm in self._block_tensors(level):
                if self._names(level) == _END_PARAMS:
                    views.append(prm["u"].reshape(p ** 4, b ** 4))
                    continue
                views.append(prm["u1"].reshape(p ** 4, b ** 4))
                views.extend(prm["w"][q].reshape(p ** 3 * b, chi) for q in range(4))
                views.append(prm["u2"].reshape(chi ** 4, chi ** 4))
                if level < self.n_levels_ - 1:
                    views.append(prm["top"].reshape(chi ** 4, d_out))
        return views

    def _retract(self, norms: Optional[List[float]] = None) -> None:
        """Put the tensors back on their constraint set after a step; ``norms`` are those of
        :meth:`_scale_free_tensors` before it (``constraint="norm"``)."""
        if self.constraint == "isometric":
            for view in self.isometric_views():
                view[...] = polar_retract(view)
        elif self.constraint == "norm" and norms is not None:
            for t, norm in zip(self._scale_free_tensors(), norms):
                now = float(array_module(t).linalg.norm(t))
                if now > 0:
                    t *= t.dtype.type(norm / now)

    def _scale_free_tensors(self) -> List[np.ndarray]:
        """The tensors whose scale the per-site normalisation divides out of the scores:
        those of every level but the last (each block's own, on unshared levels)."""
        return [prm[name] for level in range(self.n_levels_ - 1)
                for prm in self._block_tensors(level) for name in self._names(level)]

    def _norms(self) -> Optional[List[float]]:
        if self.constraint != "norm":
            return None
        return [float(array_module(t).linalg.norm(t)) for t in self._scale_free_tensors()]

    def _place_state(self) -> None:
        """Every tensor onto the model's device (a no-op where it is)."""
        self._device_module()
        self.params_ = [{name: self._to_device(t) for name, t in prm.items()}
                        for prm in self.params_]

    def _param_list(self) -> List[np.ndarray]:
        return [prm[name] for level, prm in enumerate(self.params_)
                for name in self._names(level)]

    @property
    def n_params_(self) -> int:
        return int(sum(a.size for a in self._param_list()))

    # ------------------------------------------------------------------------ inputs
    def _sites(self, X: np.ndarray) -> np.ndarray:
        """Images ``(n, H, W)`` -> input sites ``(n, H / k, W / k, p0)``: per-pixel features
        (``patch=1``) or raw ``k x k`` patch vectors, the constant first when asked for."""
        xp = array_module(X)
        X = xp.ascontiguousarray(X, dtype=self.dtype)
        k = self.patch_
        if k == 1:
            return ops.feature_map(X, self.feature_map, self._n_features(), self.constant)
        n, h, w = X.shape
        c = int(self.constant)
        x = xp.empty((n, h // k, w // k, c + k * k), X.dtype)
        if c:
            x[..., 0] = 1
        x[..., c:] = X.reshape(n, h // k, k, w // k, k).transpose(0, 1, 3, 2, 4).reshape(
            n, h // k, w // k, k * k)
        return x

    # ----------------------------------------------------------------------- compute
    def _level_forward(self, level: int, x: Any) -> Tuple[Any, Any]:
        """One level's blocks on the sites ``x (n, g, g, p)``: ``(out (n, g/4, g/4, d),
        saved)``; an unshared level contracts each block with its own tensors."""
        prm = self.params_[level]
        if self._names(level) == _END_PARAMS:
            return ops.mera_end_forward(x, prm["u"], prm["top"])
        if not self._per_block(level):
            return ops.mera_block_forward(x, prm["u1"], prm["w"], prm["u2"], prm["top"])
        xp = array_module(x)
        n, g = x.shape[:2]
        side = g // 4
        out, saved = None, []
        for j, t in enumerate(self._block_tensors(level)):
            r, c = divmod(j, side)
            o, sv = ops.mera_block_forward(
                xp.ascontiguousarray(x[:, 4 * r:4 * r + 4, 4 * c:4 * c + 4]),
                t["u1"], t["w"], t["u2"], t["top"])
            if out is None:
                out = xp.empty((n, side, side, o.shape[-1]), o.dtype)
            out[:, r:r + 1, c:c + 1] = o
            saved.append(sv)
        return out, (x.shape, saved)

    def _level_backward(self, level: int, saved: Any, g: Any) -> Tuple[Any, List[Any]]:
        """``(dL/dx, gradients of the level's tensors in _names order)``."""
        if self._names(level) == _END_PARAMS:
            g_x, *grads = ops.mera_end_backward(saved, g)
            return g_x, grads
        if not self._per_block(level):
            g_x, *grads = ops.mera_block_backward(saved, g)
            return g_x, grads
        xp = array_module(g)
        shape, blocks = saved
        side = shape[1] // 4
        g_x = None
        grads = [xp.empty(self.params_[level][name].shape, g.dtype) for name in _PARAMS]
        for j, sv in enumerate(blocks):
            r, c = divmod(j, side)
            g_xb, *g_t = ops.mera_block_backward(
                sv, xp.ascontiguousarray(g[:, r:r + 1, c:c + 1]))
            if g_x is None:
                g_x = xp.empty(shape, g_xb.dtype)
            g_x[:, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = g_xb
            for dst, src in zip(grads, g_t):
                dst[j] = src
        return g_x, grads

    def _network_forward(self, X: Any, record: Optional[List[np.ndarray]] = None,
                         evidence: Optional[List[Any]] = None):
        """The levels on images ``X``: ``(scores, log_scale, tapes)``, ``scores (n,
        n_classes_)`` float64 and ``tapes`` what :meth:`_network_backward` needs. A
        ``record`` list receives the features, then the normalised output of every level
        but the last (host float64); an ``evidence`` list the per-position class scores
        ``(n, scan_, scan_, n_classes_)`` (float64, on the device)."""
        x = self._sites(X)
        xp = array_module(x)
        n = X.shape[0]
        if record is not None:
            record.append(to_numpy(x).astype(np.float64))
        log_scale = xp.zeros(n)
        tapes = []
        for level in range(self.n_levels_):
            top = level == self.n_levels_ - 1
            if top and self.scan_ > 1:  # one read-out per position of the grid
                side = x.shape[1]
                x = scan_windows(x, side - self.scan_ + 1)
                x = x.reshape((-1,) + x.shape[3:])
            out, saved = self._level_forward(level, x)
            if top:
                tapes.append((saved, None))
                break
            x, log_norm, nsaved = site_norm_forward(out)
            log_scale += log_norm.reshape(n, -1).sum(axis=1)
            if self.level_map == "relu":
                x = relu_sites_forward(x)
            tapes.append((saved, nsaved))
            if record is not None:  # normalised again in float64: unit to rounding
                record.append(to_numpy(unit_sites(out)))
        z = out.reshape(n, self.scan_ ** 2, self.n_classes_)
        if evidence is not None:
            evidence.append(z.astype(np.float64).reshape(
                n, self.scan_, self.scan_, self.n_classes_))
        if self.scan_ == 1:
            return z[:, 0].astype(np.float64), log_scale, tapes
        scores, pooled = lse_pool_forward(z)
        tapes.append(pooled)
        return scores, log_scale, tapes

    def _network_backward(self, tapes: List[Any], g_scores: Any) -> List[Any]:
        """Gradients of every tensor (``_param_list`` order) from ``dL/dscores``; frees
        the tapes as it goes."""
        n = g_scores.shape[0]
        if self.scan_ > 1:
            g_scores = lse_pool_backward(tapes.pop(), g_scores)
        g = g_scores.astype(self.dtype).reshape(-1, 1, 1, self.n_classes_)
        per_level: List[List[np.ndarray]] = [[] for _ in range(self.n_levels_)]
        for level in range(self.n_levels_ - 1, -1, -1):
            g_x, per_level[level] = self._level_backward(level, tapes[level][0], g)
            if level == self.n_levels_ - 1 and self.scan_ > 1:
                s = g_x.shape[1]
                g_x = scan_windows_backward(
                    g_x.reshape((n, self.scan_, self.scan_) + g_x.shape[1:]),
                    self.scan_ + s - 1)
            tapes[level] = None
            if level:
                nsaved = tapes[level - 1][1]
                if self.level_map == "relu":
                    g_x = relu_sites_backward(nsaved[0], g_x)
                g = site_norm_backward(nsaved, g_x)
        return [g_p for level_grads in per_level for g_p in level_grads]

    def _forward_backward(self, X: np.ndarray, y: Optional[np.ndarray],
                          record: Optional[List[np.ndarray]] = None):
        """Scores (and with labels the loss and the gradients) of a batch of images.

        ``X`` and ``y`` are on the tensors' device. Returns ``(scores, log_scale, loss,
        grads)``, arrays on that device; ``log_scale`` is the per-image log of the factor the
        normalisations divided out. ``record``: see :meth:`_network_forward`."""
        scores, log_scale, tapes = self._network_forward(X, record)
        if y is None:
            return scores, log_scale, None, None
        loss, g_scores = loss_fn("cross_entropy")(scores, y)
        return scores, log_scale, loss, self._network_backward(tapes, g_scores)

    # ------------------------------------------------------------------------ public
    def fit(self, X: Any, y: Any, *, epochs: Optional[int] = None,
            batch_size: Optional[int] = None,
            validation_data: Optional[Tuple[Any, Any]] = None,
            callbacks: Sequence[Callable[["MERA2D", int, Dict], Optional[Dict]]] = (),
            warm_start: bool = False, augment: Optional[Augment] = None) -> "MERA2D":
        """Train with softmax cross-entropy on images with labels.

        Parameters
        ----------
        X : array (n, height, width) or (n, height * width)
            Images, ideally in [0, 1] (see ``input_scaling``).
        y : array (n,)
            Labels of any kind scikit-learn classifies.
        epochs, batch_size : int, optional
            Override the constructor values for this call.
        validation_data : (X_val, y_val), optional
            Scored after every epoch (``val_accuracy``); with ``early_stopping`` it
            replaces the split held out of ``X``.
        callbacks : callables
            ``f(model, epoch, record) -> dict or None`` after each epoch; returned items join
            the epoch's history record (e.g. a test-set score).
        warm_start : bool
            Continue from the current parameters instead of re-initialising. With a
            scanning read-out the images may have another size than in the first fit
            (same window and patch: the tensors do not depend on the canvas), e.g. a
            curriculum from small canvases to large; the pixel scaling stays the first
            fit's.
        augment : callable, optional
            ``augment(images, rng) -> images`` applied to every training batch (same shape,
            values in [0, 1]), e.g. ``functools.partial(fasttn.data.random_shift,
            max_shift=4.0)``; drawn from the model's own seeded generator. The blocks sit on
            a fixed grid, so shifted copies teach a level-0 block every offset of an object.

        Returns
        -------
        self, with ``history_`` (one dict per epoch: loss, accuracy, images/s, lr, and
        ``val_accuracy`` with ``validation_data``).
        """
        check_augment(augment)
        X, y, epochs, batch_size, rng, monitor = self._start_fit(
            X, y, epochs, batch_size, warm_start, validation_data)
        if augment is None and self._augment_shift() > 0:
            from ..data.transforms import random_shift  # lazy: keeps `import fasttn` light

            augment = functools.partial(random_shift, max_shift=self._augment_shift())
        opt = AdamW(self._param_list(), lr=self.lr, weight_decay=self.weight_decay)
        sched = StepLR(opt, step_size=self.lr_step, gamma=self.lr_gamma)

        def step(idx):
            images = X[idx] if augment is None else self._check_augmented(
                augmented(augment, X[idx], rng))
            X_b, y_b = self._to_device(images), self._to_device(y[idx])
            scores, _, loss, grads = self._forward_backward(X_b, y_b)
            norms = self._norms()
            opt.step(grads)
            self._retract(norms)
            return loss, n_correct(scores, y_b)

        hooks = self._epoch_hooks(monitor, callbacks)
        start = len(self.history_)
        hist = fit_loop(step, len(y), epochs=epochs, batch_size=batch_size, rng=rng,
                        set_epoch=lambda e: sched.set_epoch(start + e), end_of_epoch=hooks,
                        verbose=self.verbose, desc="MERA2D")
        for rec in hist:
            rec["epoch"] += start
        self.history_.extend(hist)
        self._finish_fit(monitor)
        return self

    def _decision(self, images: np.ndarray, batch_size: Optional[int] = None) -> np.ndarray:
        """Class scores ``(n, n_classes_)``: the network's output divided by the positive
        per-image factor ``exp(log_scale)`` (see :meth:`log_scale`; with
        ``level_map="none"`` the exact network's); with a ``predict_shift`` of ``s > 0``,
        the mean of the log-probabilities of the four copies shifted by ``(+-s, +-s)``."""
        def scores(X: np.ndarray) -> np.ndarray:
            return self._batched(X, batch_size or 64,
                                 lambda batch: self._network_forward(batch)[0])

        s = self._predict_shift()
        if s == 0:
            return scores(images)
        return mean_log_softmax([scores(translate(images, dy, dx))
                                 for dy in (-s, s) for dx in (-s, s)])

    def _batched(self, X: np.ndarray, batch_size: int,
                 forward: Callable[[Any], Any]) -> np.ndarray:
        """``forward(images on the device)`` over ``X`` in batches, gathered on the host."""
        return np.concatenate([to_numpy(forward(self._to_device(X[i:i + batch_size])))
                               for i in range(0, X.shape[0], batch_size)])

    def log_scale(self, X: Any, batch_size: int = 64) -> np.ndarray:
        """Per-image log of the factor between the exact network output and the scores."""
        self._check_fitted()
        X = self._check_X(X, fitted=True)
        return self._batched(X, batch_size, lambda batch: self._network_forward(batch)[1])

    def evidence_map(self, X: Any, batch_size: int = 64) -> np.ndarray:
        """Class scores of every region the network reads out: where it looked.

        Parameters
        ----------
        X : (n, height, width) or (n, height * width)
            Images of the fitted shape.
        batch_size : int
            Images per forward pass.

        Returns
        -------
        (n, scan_, scan_, n_classes_) float64
            ``[:, i, j]``: the scores of the ``window_ x window_`` region whose top-left
            pixel is ``(i, j) * window_stride_`` on the network's image (the input,
            zero-padded and centred to ``network_shape_``); the scores of an image are
            ``log(mean over regions of exp(these))``. For two classes,
            ``[..., 1] - [..., 0]`` is each region's evidence for the second class. With a
            read-out of the whole image (``scan_ == 1``) the one region is the image.
        """
        self._check_fitted()
        X = self._check_X(X, fitted=True)

        def evidence_of(images: Any) -> Any:
            evidence: List[Any] = []
            self._network_forward(images, evidence=evidence)
            return evidence[0]

        return self._batched(X, check_positive_int("batch_size", batch_size), evidence_of)

    @property
    def window_stride_(self) -> int:
        """Pixels between neighbouring regions of :meth:`evidence_map` (on the network's
        image): the side of the sites the top block reads."""
        return self.window_ // self._top_side

    def layer_outputs(self, X: Any, batch_size: int = 64) -> Dict[str, np.ndarray]:
        """Per-image representation at every layer of the network.

        Parameters
        ----------
        X : (n, side, side)
            Images in [0, 1] of the fitted shape.
        batch_size : int
            Images per forward pass; memory is the result plus one batch.

        Returns
        -------
        dict of name -> (n, n_features) float64, in network order:

        ``"input"``
            The feature map of the pixels, row-major, ``side * side * p`` features.
        ``"level 1"`` ... ``"level n_levels_ - 1"``
            The output sites of each level but the last, ``(side / 4^l)^2 * chi``
            features, every site divided by its norm (as the network itself does between
            levels; a zero site stays zero).
        ``"scores"``
            The last level's output: the class scores, equal to :meth:`decision_function`.
        """
        self._check_fitted()
        X = self._check_X(X, fitted=True)

        def forward(start: int, stop: int) -> List[np.ndarray]:
            record: List[np.ndarray] = []
            scores = self._forward_backward(self._to_device(X[start:stop]), None,
                                            record=record)[0]
            return record + [to_numpy(scores)]

        return gather_layer_outputs(X.shape[0], batch_size, forward)

    # ------------------------------------------------------------------- checkpoints
    def _state_arrays(self) -> Dict[str, np.ndarray]:
        return {f"{name}{level}": prm[name] for level, prm in enumerate(self.params_)
                for name in self._names(level)}

    def _state_meta(self) -> Dict[str, Any]:
        return {"image_shape": list(self.image_shape_), "history": self.history_}

    def _set_state(self, arrays: Dict[str, np.ndarray], meta: Dict[str, Any]) -> None:
        self._check_config()
        self._setup(tuple(meta["image_shape"]))
        self.params_ = []
        for level in range(self.n_levels_):
            prm = {}
            for name, (shape, _) in self._shapes(level).items():
                a = arrays[f"{name}{level}"]
                if a.shape != shape:
                    raise ValueError(f"checkpoint: {name}{level} has shape {a.shape}, "
                                     f"expected {shape}")
                prm[name] = a
            self.params_.append(prm)
        self.history_ = meta.get("history", [])
