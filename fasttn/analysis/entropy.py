"""Entanglement entropy of the q-CNN class states (Anagiannis & Cheng, §3.2, eqs. 36-45).

The trained q-CNN computes, for every class ``y``, a multilinear function of the embedded pixels,
i.e. a state ``|Psi_y>`` in the tensor product of the pixels' function spaces. We measure how
entangled that state is across the bipartition made by the top pooling, without ever touching a
pixel: batch norm is folded into the layers with an appended constant channel (eqs. 11-16), the
pixels are integrated out with the feature map's Gram matrix, and the product pooling (a delta
tensor over disjoint patches) turns into a Hadamard power of Gram matrices. The cost therefore
depends on the widths and the depth only, never on the number of pixels.

Notation: ``D_l = d_l + 1`` is the width of level ``l`` with the constant channel appended last.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np
import scipy.linalg

from .._validate import check_choice, check_finite, check_float_array
from ..backend import to_numpy
from ..ops.feature_maps import gram_matrix, n_channels

__all__ = ["qcnn_entanglement_entropy"]

WINDOWS = (2, 4)
# Negative eigenvalues of M_y smaller than this (relative to the largest) are rounding; the
# reference code (QC torchTN.py:EEhalf) uses the same cut.
NEGATIVE_EIGENVALUE_TOL = 1e-7
# A class state whose squared norm is below this fraction of its no-cancellation bound is zero
# up to rounding: its entropy is undefined and reported as NaN.
ZERO_STATE_TOL = 1e-12


def qcnn_entanglement_entropy(
    weights: Sequence[Any],
    gammas: Sequence[Any],
    betas: Sequence[Any],
    running_means: Sequence[Any],
    running_vars: Sequence[Any],
    *,
    eps: float,
    window: int,
    feature_map: str,
    n_features: int,
    constant: bool,
    include_constant_row: bool = False,
    child_weights: str = "shared",
) -> dict[str, Any]:
    """Entanglement entropy of each normalised class state across the top bipartition.

    The network (levels ``l = 0 .. L-1``, then a top classifier) is the q-CNN with batch norm
    in inference mode (running statistics)::

        zeta'  = gammas[l] * (zeta - running_means[l]) / sqrt(running_vars[l] + eps) + betas[l]
        xi     = zeta' @ weights[l].T                         # bias-free 1x1 convolution
        zeta'' = product of xi over each window of ``window`` consecutive sites
        alpha  = weights[L] @ BN_L(zeta_L)                    # one site left after L levels

    The bipartition is the one of the top pooling (paper §3.2): for ``window=2`` its two
    inputs; for ``window=4`` window members {0, 1} versus {2, 3}, which with the 2x2 layout
    of :func:`fasttn.ops.product_pool` is the upper versus the lower half of the image.

    Parameters
    ----------
    weights : sequence of L+1 arrays
        ``weights[l] : (d_{l+1}, d_l)`` for ``l < L``; ``weights[L] : (C, d_L)``, the classifier.
        ``L >= 1``: without a pooling there is no bipartition.
    gammas, betas, running_means, running_vars : sequences of L+1 arrays, each ``(d_l,)``
        Batch-norm scale, shift and running statistics of the norm applied before
        ``weights[l]``.
    eps : float
        Batch-norm epsilon (``>= 0``; ``running_vars + eps`` must be positive).
    window : {2, 4}
        Pooling window: pairs of a 1D chain, or 2x2 windows with members consecutive.
    feature_map, n_features, constant
        The local map of :func:`fasttn.ops.feature_maps.feature_map`; ``d_0`` must equal its
        channel count. Its Gram matrix is the inner product used to integrate out the pixels,
        so non-orthonormal maps (``cos_sin``) are handled exactly.
    include_constant_row : bool
        Also return the entropy of the constant row of the extended classifier (the constant
        function: a product state, so ~0; the reference code logs it as a sanity check).
    child_weights : {"shared", "separate"}
        ``separate``: ``weights[l]`` for ``l < L`` stacks one convolution per window position,
        ``(window * d_{l+1}, d_l)``, rows ``k * d_{l+1}:(k + 1) * d_{l+1}`` for position k
        (:class:`fasttn.QCNN` with ``child_weights="separate"``).

    Returns
    -------
    result : dict
        ``"per_class"`` : (C,) entropies in nats, NaN for a class whose state is zero.
        ``"mean"`` : float, their mean (the paper's figure; NaN if any class is NaN).
        ``"max_entropy"`` : float, ``log(d_L + 1)``, the bound set by the Schmidt rank.
        ``"constant_row"`` : float, only with ``include_constant_row``.

    Raises
    ------
    ValueError
        On inconsistent shapes, a bad ``window`` or ``eps``, non-finite parameters, or when an
        ``M_y`` has a negative eigenvalue beyond rounding (the Gram matrices are then not
        positive semi-definite, which valid parameters cannot produce).

    Notes
    -----
    Cost: ``O(sum_l D_l^3)`` for the Gram recursion plus ``O(C D_L^3)`` for the ``C``
    eigendecompositions, with ``D_l = d_l + 1`` -- independent of the pixel count apart from
    the depth ``L = log_window(N)``. For ``d_l = 18 (l + 1)`` and ``C = 10``: about 20 ms at
    ``L = 8`` (16x16 images) and 65 ms at ``L = 14`` (128x128) on one CPU core, so it can be
    logged many times per epoch.

    Derivation. Write ``F_l`` for the extended matrix of level ``l`` (batch norm and
    convolution acting on ``[channels, 1]``) and ``G_l`` for the Gram matrix of the extended
    ``xi`` of one site of level ``l`` as a function of its patch. Then ``G_0 = F_0 K F_0^T``
    with ``K`` the feature map's Gram matrix, and, because the pooling multiplies functions of
    disjoint pixel sets, ``G_{l+1} = F_{l+1} G_l^{o w} F_{l+1}^T`` (``o w``: Hadamard power).
    The top pooling gives ``Psi_y = sum_I a_yI prod_k xi_{L-1,k,I}``. With ``window=4`` the
    half states are ``phi_I = xi_{0,I} xi_{1,I}`` and ``xi_{2,I} xi_{3,I}``, whose Gram matrix is
    ``G_{L-1} o G_{L-1}`` (disjoint quadrants, shared weights); with ``window=2`` it is
    ``G_{L-1}``. For the half Gram ``N`` the reduced density matrix has the nonzero spectrum of
    ``M_y = N^{1/2} diag(a_y) N diag(a_y) N^{1/2}`` (eqs. 42-43), so
    ``S_y = -sum p log p`` with ``p = m / sum m`` (eqs. 44-45).

    With separate weights per window position ``k`` the Hadamard power becomes the product
    ``o_k F_{l,k} G_l F_{l,k}^T`` (every site of a level still has the same Gram matrix), and
    the two halves of the top have their own Grams ``N_A`` and ``N_B``:
    ``M_y = N_A^{1/2} diag(a_y) N_B diag(a_y) N_A^{1/2}``.
    """
    check_choice("child_weights", child_weights, ("shared", "separate"))
    layers, top = _validated_layers(weights, gammas, betas, running_means, running_vars,
                                    eps=eps, window=window, feature_map=feature_map,
                                    n_features=n_features, constant=constant,
                                    copies=window if child_weights == "separate" else 1)
    k = _feature_gram(feature_map, n_features, constant)
    n_half = _half_system_gram(layers, k, window)
    coeffs = top[:-1]
    per_class = _class_entropies(*n_half, coeffs)
    result: dict[str, Any] = {
        "per_class": per_class,
        "mean": float(np.mean(per_class)),
        "max_entropy": float(np.log(top.shape[1])),
    }
    if include_constant_row:
        result["constant_row"] = float(_class_entropies(*n_half, top[-1:])[0])
    return result


def _fold_batchnorm_conv(weight: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                        mean: np.ndarray, var: np.ndarray, eps: float) -> np.ndarray:
    """Batch norm followed by a bias-free linear map, as one matrix on ``[channels, 1]``.

    Parameters
    ----------
    weight : (d_out, d_in)
    gamma, beta, mean, var : (d_in,)
    eps : float

    Returns
    -------
    extended : (d_out + 1, d_in + 1)
        ``[[weight diag(s), weight (beta - s mean)], [0, 1]]`` with ``s = gamma / sqrt(var + eps)``
        (q-CNN eqs. 13 and 15, constant channel last): the affine norm becomes linear, and the
        constant maps to itself, so the product pooling keeps it at 1.
    """
    scale = gamma / np.sqrt(var + eps)
    d_out, d_in = weight.shape
    extended = np.zeros((d_out + 1, d_in + 1))
    extended[:d_out, :d_in] = weight * scale
    extended[:d_out, d_in] = weight @ (beta - scale * mean)
    extended[d_out, d_in] = 1.0
    return extended


def _half_system_gram(layers: Sequence[Sequence[np.ndarray]], k: np.ndarray,
                      window: int) -> tuple[np.ndarray, np.ndarray]:
    """Gram matrices ``<phi_I | phi_J>`` of the states of the two halves of the top
    bipartition.

    Parameters
    ----------
    layers : L sequences of arrays, ``layers[l][c] : (D_{l+1}, D_l)``
        Extended level matrices from :func:`_fold_batchnorm_conv`: one per level (shared
        weights), or one per window position.
    k : (D_0, D_0)
        Gram matrix of the feature map with the constant channel appended.
    window : {2, 4}

    Returns
    -------
    n_a, n_b : (D_L, D_L)
        Positive semi-definite, each scaled so that its largest entry is 1; the same array
        twice with shared weights.
    """
    n = k
    for level, copies in enumerate(layers):
        # Every factor is scaled to a largest entry of 1: each level squares (w = 2) or raises
        # to the 4th power (w = 4) every entry, so at 20 levels the raw entries leave float64,
        # and the entropy is scale-invariant. The constant-constant entry stays positive.
        grams = [g / np.max(np.abs(g)) for g in (layer @ n @ layer.T for layer in copies)]
        # the product of functions of disjoint pixel sets: Hadamard product of their Grams
        members = [grams[pos % len(grams)] for pos in range(window)]
        if level < len(layers) - 1:
            n = functools.reduce(np.multiply, members)
            continue
        # the top pooling: half of the window's members on each side of the bipartition
        halves = (members[:window // 2], members[window // 2:])
        if len(copies) == 1:
            n_half = functools.reduce(np.multiply, halves[0])
            return n_half, n_half
        n_a, n_b = (functools.reduce(np.multiply, h) for h in halves)
        return n_a, n_b
    raise ValueError("layers: expected at least one pooling level")


def _class_entropies(n_a: np.ndarray, n_b: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """Von Neumann entropies of ``Psi_y = sum_I coeffs[y, I] phi^A_I (x) phi^B_I``.

    Parameters
    ----------
    n_a, n_b : (D, D)
        Gram matrices of the half states ``phi^A_I`` and ``phi^B_I`` (the same with shared
        weights).
    coeffs : (C, D)

    Returns
    -------
    entropies : (C,)
    """
    root = _psd_sqrt(n_a)
    b = root[None, :, :] * coeffs[:, None, :]  # N_A^{1/2} diag(a_y), all classes at once
    m = b @ n_b @ b.transpose(0, 2, 1)
    m = (m + m.transpose(0, 2, 1)) / 2  # exact symmetry for eigh
    # Squared norms of the states, and the same sum without sign cancellations: a state far
    # below its bound is zero up to rounding and its spectrum is noise.
    norm2 = np.einsum("yi,ij,yj->y", coeffs, n_a * n_b, coeffs)
    bound = np.einsum("yi,ij,yj->y", np.abs(coeffs), np.abs(n_a * n_b), np.abs(coeffs))
    out = np.full(coeffs.shape[0], np.nan)
    for y in range(coeffs.shape[0]):
        if bound[y] > 0 and norm2[y] > ZERO_STATE_TOL * bound[y]:
            # divide-and-conquer: the fastest LAPACK driver for a full spectrum at D ~ 100-300
            eigs = scipy.linalg.eigh(m[y], eigvals_only=True, driver="evd")
            out[y] = _spectrum_entropy(eigs, y)
    return out


def _spectrum_entropy(eigs: np.ndarray, y: int) -> float:
    """``-sum p log p`` with ``p = m / sum m``, after clearing rounding-level negatives."""
    top = np.max(np.abs(eigs))
    worst = float(np.min(eigs))
    if worst < -NEGATIVE_EIGENVALUE_TOL * top:
        raise ValueError(
            f"class {y}: the reduced density matrix M_y has eigenvalue {worst:.3e}, below "
            f"-{NEGATIVE_EIGENVALUE_TOL:g} x its largest ({top:.3e}); the Gram matrices are not "
            f"positive semi-definite, so the parameters are not those of a valid q-CNN")
    m = np.where(eigs > 0, eigs, 0.0)
    p = m[m > 0] / np.sum(m)
    return float(-np.sum(p * np.log(p)))


@functools.lru_cache(maxsize=16)
def _feature_gram(name: str, n_features: int, constant: bool) -> np.ndarray:
    """The feature map's Gram matrix, cached: its quadrature costs more than a small network."""
    k = gram_matrix(name, n_features, constant, with_constant_channel=True)
    k.flags.writeable = False  # shared between calls
    return k


def _psd_sqrt(n: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix; rounding-level negative eigenvalues become 0."""
    vals, vecs = scipy.linalg.eigh(n)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def _validated_layers(weights, gammas, betas, running_means, running_vars, *, eps, window,
                      feature_map, n_features, constant,
                      copies: int = 1) -> tuple[list[list[np.ndarray]], np.ndarray]:
    """Check the parameters once and fold them: ``(L lists of level matrices, extended
    top)``, each list holding ``copies`` matrices (one per window position when the
    convolutions of a level are stacked, ``weights[l] : (copies * d_{l+1}, d_l)``).

    The top comes back as ``(C + 1, D_L)``: the classifier rows, then the constant row.
    """
    _check_window(window)
    eps = _check_eps(eps)
    d_in = n_channels(feature_map, n_features, constant)
    n_layers = len(weights)
    if n_layers < 2:
        raise ValueError(f"weights: expected at least 2 arrays (one pooling level and the "
                         f"classifier), got {n_layers}")
    named = {"gammas": gammas, "betas": betas, "running_means": running_means,
             "running_vars": running_vars}
    for name, seq in named.items():
        if len(seq) != n_layers:
            raise ValueError(f"{name}: expected {n_layers} arrays (one per entry of weights), "
                             f"got {len(seq)}")
    folded = []
    for level in range(n_layers):
        w = _param(f"weights[{level}]", weights[level], 2)
        if w.shape[1] != d_in:
            source = ("the feature map's channel count" if level == 0
                      else f"weights[{level - 1}].shape[0]")
            raise ValueError(f"weights[{level}]: expected shape (any, {d_in}) to match "
                             f"{source}, got {w.shape}")
        vecs = {}
        for name, seq in named.items():
            v = _param(f"{name}[{level}]", seq[level], 1)
            if v.shape != (d_in,):
                raise ValueError(f"{name}[{level}]: expected shape ({d_in},) to match "
                                 f"weights[{level}].shape[1], got {v.shape}")
            vecs[name] = v
        if np.any(vecs["running_vars"] + eps <= 0):
            raise ValueError(f"running_vars[{level}]: expected running_vars + eps > 0, got a "
                             f"minimum of {float(np.min(vecs['running_vars'] + eps))}")
        n_copies = copies if level < n_layers - 1 else 1  # the classifier is one map
        if w.shape[0] % n_copies:
            raise ValueError(f"weights[{level}]: expected {n_copies} stacked convolutions "
                             f"(one per window position), so a row count divisible by "
                             f"{n_copies}, got {w.shape}")
        rows = w.shape[0] // n_copies
        folded.append([_fold_batchnorm_conv(w[c * rows:(c + 1) * rows], vecs["gammas"],
                                            vecs["betas"], vecs["running_means"],
                                            vecs["running_vars"], eps)
                       for c in range(n_copies)])
        d_in = rows
    return folded[:-1], folded[-1][0]


def _check_window(window: Any) -> None:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) \
            or window not in WINDOWS:
        raise ValueError(f"window: expected one of {list(WINDOWS)}, got {window!r}")


def _check_eps(eps: Any) -> float:
    try:
        value = float(eps)
    except (TypeError, ValueError):
        value = float("nan")
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"eps: expected a finite float >= 0, got {eps!r}")
    return value


def _param(name: str, x: Any, ndim: int) -> np.ndarray:
    """One parameter as a finite float64 host array (CuPy and float32 accepted)."""
    x = to_numpy(check_float_array(name, x, ndim=ndim))
    check_finite(name, x)
    return x.astype(np.float64, copy=False)


def qcnn_model_entropy(model: Any, include_constant_row: bool = False) -> dict:
    """:func:`qcnn_entanglement_entropy` of a fitted :class:`fasttn.QCNN` (its running
    batch-norm statistics fold into the layers)."""
    return qcnn_entanglement_entropy(
        model.weights_, model.gammas_, model.betas_, model.running_means_, model.running_vars_,
        eps=model.eps, window=model.window_, feature_map=model.feature_map,
        n_features=model._n_features(), constant=model.constant,
        include_constant_row=include_constant_row,
        child_weights=getattr(model, "child_weights", "shared"))


def entropy_callback(model: Any, epoch: int, record: dict) -> dict:
    """``fit`` callback recording the mean and per-class entanglement entropy each epoch."""
    ent = qcnn_model_entropy(model)
    return {"entropy": float(ent["mean"]), "entropy_per_class": ent["per_class"].tolist()}
