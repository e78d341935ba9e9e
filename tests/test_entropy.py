"""Tests for fasttn.analysis.entropy: the q-CNN entanglement entropy (paper eqs. 36-45).

The reference here is brute force: the full coefficient tensor of each class state over the
local basis ``[channels..., constant]`` of every pixel, built by contracting the extended
layer tensors (checked against a direct per-site forward pass, and for 4 pixels against a
least-squares fit of sampled outputs), each leg moved to orthonormal coordinates with
``K^{1/2}``, and the Schmidt values taken by SVD.
"""
from __future__ import annotations

from functools import reduce

import numpy as np
import pytest

from fasttn.analysis.entropy import _class_entropies, qcnn_entanglement_entropy
from fasttn.ops.feature_maps import feature_map, gram_matrix

ATOL = 1e-8  # float64 throughout
EPS = 1e-5


# ---------------------------------------------------------------- helpers

def random_params(widths, n_classes, rng):
    """Random q-CNN parameters; ``widths = [d_0, ..., d_L]``.

    Nonzero shifts and random running statistics, so the constant channel matters.
    """
    n_levels = len(widths) - 1
    outs = list(widths[1:]) + [n_classes]
    return {
        "weights": [rng.normal(size=(outs[l], widths[l])) / np.sqrt(widths[l])
                    for l in range(n_levels + 1)],
        "gammas": [rng.uniform(0.5, 1.5, d) for d in widths],
        "betas": [rng.normal(scale=0.7, size=d) for d in widths],
        "running_means": [rng.normal(scale=0.5, size=d) for d in widths],
        "running_vars": [rng.uniform(0.5, 2.0, d) for d in widths],
    }


def entropy(params, window, fmap, n_features, constant, **kw):
    return qcnn_entanglement_entropy(**params, eps=EPS, window=window, feature_map=fmap,
                                     n_features=n_features, constant=constant, **kw)


def forward(params, x, window, fmap, n_features, constant, separate=False):
    """The network exactly as the model runs it, site by site: x (N,) -> alpha (C,). With
    ``separate``, each window position goes through its own block of the stacked weights."""
    zeta = feature_map(x, fmap, n_features, constant, dtype=np.float64)
    n_levels = len(params["weights"]) - 1

    def bn(z, l):
        return (params["gammas"][l] * (z - params["running_means"][l])
                / np.sqrt(params["running_vars"][l] + EPS) + params["betas"][l])

    for l in range(n_levels):
        w = params["weights"][l]
        z = bn(zeta, l).reshape(-1, window, zeta.shape[1])
        blocks = np.split(w, window) if separate else [w] * window
        zeta = np.prod([z[:, k] @ blocks[k].T for k in range(window)], axis=0)
    assert zeta.shape[0] == 1
    return params["weights"][n_levels] @ bn(zeta[0], n_levels)


def extended_layers(params):
    """Batch norm + conv on [channels, 1]; the last one is the classifier with its constant row."""
    out = []
    for w, g, b, mu, var in zip(params["weights"], params["gammas"], params["betas"],
                                params["running_means"], params["running_vars"]):
        s = g / np.sqrt(var + EPS)
        top = np.hstack([w * s, (w @ (b - s * mu))[:, None]])
        const = np.zeros((1, w.shape[1] + 1))
        const[0, -1] = 1.0
        out.append(np.vstack([top, const]))
    return out[:-1], out[-1][:-1]


def half_tensors(params, window):
    """Coefficients of the half states phi_I over the local basis of each pixel of one half.

    Returns ``(phi : (D_L, D_0 ** (N / 2)), a : (C, D_L))`` with
    ``Psi_y = sum_I a[y, I] phi_I (x) phi_I``.
    """
    layers, a = extended_layers(params)
    z = np.eye(layers[0].shape[1])  # one pixel: zeta~ = [f(x), 1] in its own basis
    for l, layer in enumerate(layers):
        x = layer @ z
        copies = window // 2 if l == len(layers) - 1 else window
        # same-channel product over disjoint pixel sets = Kronecker product of the rows
        z = np.stack([reduce(np.kron, [row] * copies) for row in x])
    return z, a


def local_basis(x, fmap, n_features, constant):
    f = feature_map(np.asarray(x, dtype=np.float64), fmap, n_features, constant)
    return np.concatenate([f, np.ones(f.shape[:-1] + (1,))], axis=-1)


def tensor_alpha(phi, a, x, fmap, n_features, constant):
    """Evaluate the contracted tensor at pixels x (N,)."""
    v = local_basis(x, fmap, n_features, constant)
    half = len(x) // 2
    left = phi @ reduce(np.kron, v[:half])
    right = phi @ reduce(np.kron, v[half:])
    return a @ (left * right)


def brute_force_entropies(phi, a, k):
    """Schmidt spectrum of each class state in orthonormal coordinates."""
    d0 = k.shape[0]
    n_legs = round(np.log(phi.shape[1]) / np.log(d0))
    vals, vecs = np.linalg.eigh(k)  # K is singular when the map has its own constant
    root = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    # K^{1/2} on every leg: coefficients -> coordinates in an orthonormal basis
    phi_o = phi.reshape((-1,) + (d0,) * n_legs)
    for leg in range(1, n_legs + 1):
        phi_o = np.moveaxis(np.tensordot(root, phi_o, axes=(1, leg)), 0, leg)
    phi_o = phi_o.reshape(phi.shape[0], -1)
    out = []
    for a_y in a:
        if phi_o.shape[1] <= 256:
            psi = phi_o.T @ (a_y[:, None] * phi_o)  # (U, U-bar), the full matrix
            s = np.linalg.svd(psi, compute_uv=False)
        else:
            # Psi = Q R diag(a) R^T Q^T has the singular values of R diag(a) R^T (rank <= D_L)
            _, r = np.linalg.qr(phi_o.T)
            s = np.linalg.svd(r @ (a_y[:, None] * r.T), compute_uv=False)
        p = s ** 2 / np.sum(s ** 2)
        p = p[p > 1e-300]
        out.append(-np.sum(p * np.log(p)))
    return np.array(out)


# (feature map, n_features, constant, window, widths, seed): N = window ** L pixels. Deep random
# q-CNN states are often nearly product states; the seeds give at least one clearly entangled class.
BRUTE_CASES = [
    ("fourier", 2, False, 2, [2, 3, 2], 2),        # N = 4
    ("fourier", 2, False, 2, [2, 3, 2, 3], 2),     # N = 8
    ("fourier", 2, False, 4, [2, 3, 2], 5),        # N = 16, 2x2 windows
    ("cos_sin", 2, False, 2, [2, 3, 2, 3], 4),     # non-orthonormal map: K is not the identity
    ("cos_sin", 2, False, 4, [2, 3, 2], 2),
    ("fourier", 2, True, 2, [3, 3, 2, 3], 3),      # constant channel twice: K is singular
    ("legendre", 2, False, 4, [2, 2, 3], 4),
]


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize("fmap,n_features,constant,window,widths,seed", BRUTE_CASES)
def test_matches_brute_force_schmidt_spectrum(fmap, n_features, constant, window, widths, seed):
    rng = np.random.default_rng(seed)
    params = random_params(widths, 3, rng)
    phi, a = half_tensors(params, window)
    n_pixels = window ** (len(widths) - 1)

    # the contracted tensor is the network: compare with the per-site forward pass
    for _ in range(5):
        x = rng.uniform(size=n_pixels)
        np.testing.assert_allclose(tensor_alpha(phi, a, x, fmap, n_features, constant),
                                   forward(params, x, window, fmap, n_features, constant),
                                   rtol=1e-10, atol=1e-12)

    k = gram_matrix(fmap, n_features, constant, with_constant_channel=True)
    expected = brute_force_entropies(phi, a, k)
    got = entropy(params, window, fmap, n_features, constant)
    # relative too: deep random q-CNN states are often only weakly entangled
    np.testing.assert_allclose(got["per_class"], expected, atol=1e-10, rtol=1e-6)
    np.testing.assert_allclose(got["per_class"], expected, atol=ATOL, rtol=0)
    assert got["mean"] == pytest.approx(np.mean(expected), abs=ATOL)
    assert np.max(expected) > 0.05  # entangled, so the comparison is not 0 == 0


@pytest.mark.parametrize("window", [2, 4])
def test_least_squares_fit_recovers_the_tensor(window):
    """4 pixels: fit alpha_y(x) into the 3^4 product basis with no knowledge of the layers."""
    rng = np.random.default_rng(7)
    widths = [2, 3, 2] if window == 2 else [2, 3]
    params = random_params(widths, 3, rng)
    xs = rng.uniform(size=(600, 4))
    design = np.stack([reduce(np.kron, local_basis(x, "fourier", 2, False)) for x in xs])
    alphas = np.stack([forward(params, x, window, "fourier", 2, False) for x in xs])
    coef, *_ = np.linalg.lstsq(design, alphas, rcond=None)  # (81, C)

    phi, a = half_tensors(params, window)
    for y in range(3):
        psi = coef[:, y].reshape(9, 9)  # pixels (0, 1) | (2, 3), basis orthonormal here
        np.testing.assert_allclose(psi, phi.T @ (a[y][:, None] * phi), atol=1e-9)
    s = np.linalg.svd(coef.T.reshape(3, 9, 9), compute_uv=False)
    p = s ** 2 / np.sum(s ** 2, axis=1, keepdims=True)
    expected = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), axis=1)
    got = entropy(params, window, "fourier", 2, False)["per_class"]
    np.testing.assert_allclose(got, expected, atol=ATOL)


@pytest.mark.parametrize("window", [2, 4])
def test_product_state_has_zero_entropy(window):
    """One nonzero top coefficient per class: Psi_y = a phi_I (x) phi_I is a product state."""
    rng = np.random.default_rng(3)
    widths = [2, 4, 3, 5]
    params = random_params(widths, 4, rng)
    d_top = widths[-1]
    w_top = np.zeros((4, d_top))
    w_top[np.arange(4), rng.permutation(d_top)[:4]] = rng.uniform(0.5, 2.0, 4)
    params["weights"][-1] = w_top
    # a zero top shift, so the constant coefficient vanishes too
    params["betas"][-1] = (params["gammas"][-1] * params["running_means"][-1]
                           / np.sqrt(params["running_vars"][-1] + EPS))
    got = entropy(params, window, "fourier", 2, False, include_constant_row=True)
    np.testing.assert_allclose(got["per_class"], 0.0, atol=1e-10)
    assert got["constant_row"] == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("window", [2, 4])
@pytest.mark.parametrize("seed", range(4))
def test_entropy_within_bounds_and_scale_invariant(window, seed):
    rng = np.random.default_rng(seed)
    widths = [4, 5, 6, 7, 5]
    params = random_params(widths, 5, rng)
    got = entropy(params, window, "fourier", 4, False, include_constant_row=True)
    s = got["per_class"]
    assert s.shape == (5,)
    assert np.all(s >= 0) and np.all(s <= np.log(widths[-1] + 1) + 1e-12)
    assert got["max_entropy"] == pytest.approx(np.log(widths[-1] + 1))
    assert got["constant_row"] == pytest.approx(0.0, abs=1e-10)
    # the entropy of the normalised state ignores the overall scale of the classifier
    params["weights"][-1] = params["weights"][-1] * 1e3
    np.testing.assert_allclose(entropy(params, window, "fourier", 4, False)["per_class"], s,
                               atol=1e-10)


# ------------------------------------------- separate convolutions per window position

def separate_params(widths, n_classes, window, rng):
    """``random_params`` with each level's convolution stacked once per window position."""
    params = random_params(widths, n_classes, rng)
    for l in range(len(widths) - 1):
        params["weights"][l] = rng.normal(size=(window * widths[l + 1], widths[l])) / np.sqrt(
            widths[l])
    return params


def separate_half_tensors(params, window):
    """``(phi_A, phi_B, a)`` with ``Psi_y = sum_I a[y, I] phi_A[I] (x) phi_B[I]``."""
    layers, a = extended_layers(params)  # each (window * D_{l+1} + 1, D_l + 1): split below
    z = np.eye(layers[0].shape[1])
    for l, layer in enumerate(layers):
        d = (layer.shape[0] - 1) // window
        const = layer[-1:]
        xs = [np.vstack([layer[k * d:(k + 1) * d], const]) @ z for k in range(window)]
        if l == len(layers) - 1:
            half = window // 2
            phi_a = np.stack([reduce(np.kron, rows) for rows in zip(*xs[:half])])
            phi_b = np.stack([reduce(np.kron, rows) for rows in zip(*xs[half:])])
            return phi_a, phi_b, a
        z = np.stack([reduce(np.kron, rows) for rows in zip(*xs)])


@pytest.mark.parametrize("fmap,constant,window,widths,seed", [
    ("fourier", False, 2, [2, 3, 2, 3], 2),   # N = 8
    ("cos_sin", False, 2, [2, 2, 3], 8),      # non-orthonormal map
    ("fourier", True, 4, [3, 2], 0),          # 2x2 window, singular K
    ("fourier", False, 4, [2, 3], 1),
])
def test_separate_child_weights_match_brute_force(fmap, constant, window, widths, seed):
    rng = np.random.default_rng(seed)
    params = separate_params(widths, 3, window, rng)
    phi_a, phi_b, a = separate_half_tensors(params, window)
    n_pixels = window ** (len(widths) - 1)
    half = n_pixels // 2
    for _ in range(4):  # the contracted tensors are the network
        x = rng.uniform(size=n_pixels)
        v = local_basis(x, fmap, 2, constant)
        got = a @ ((phi_a @ reduce(np.kron, v[:half])) * (phi_b @ reduce(np.kron, v[half:])))
        np.testing.assert_allclose(got, forward(params, x, window, fmap, 2, constant, separate=True),
                                   rtol=1e-10, atol=1e-12)
    k = gram_matrix(fmap, 2, constant, with_constant_channel=True)
    vals, vecs = np.linalg.eigh(k)
    root = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    ortho = reduce(np.kron, [root] * half)  # K^{1/2} on every leg of a half
    expected = []
    for a_y in a:
        s = np.linalg.svd((ortho @ phi_a.T) @ (a_y[:, None] * (phi_b @ ortho.T)),
                          compute_uv=False)
        p = s ** 2 / np.sum(s ** 2)
        p = p[p > 1e-300]
        expected.append(-np.sum(p * np.log(p)))
    got = entropy(params, window, fmap, 2, constant, child_weights="separate")["per_class"]
    np.testing.assert_allclose(got, expected, atol=1e-10, rtol=1e-6)
    assert np.max(expected) > 0.05  # entangled, so the comparison is not 0 == 0
    # read as shared weights, the stacked rows are a different (wrong-shaped) network
    with pytest.raises(ValueError, match=r"weights\[1\]"):
        entropy(params, window, fmap, 2, constant)


def test_separate_child_weights_need_stacked_rows():
    params = random_params([2, 3, 2], 3, np.random.default_rng(0))
    params["weights"][0] = np.ones((5, 2))  # 5 rows: not 2 stacked convolutions
    with pytest.raises(ValueError, match=r"weights\[0\]: expected 2 stacked"):
        entropy(params, 2, "fourier", 2, False, child_weights="separate")
    with pytest.raises(ValueError, match="child_weights"):
        entropy(params, 2, "fourier", 2, False, child_weights="own")


def naive_top_gram(params, window, k):
    """The Gram recursion without rescaling, to show that depth 20 needs it."""
    layers, _ = extended_layers(params)
    n = k
    with np.errstate(over="ignore", invalid="ignore"):
        for layer in layers:
            n = (layer @ n @ layer.T) ** window
    return n


@pytest.mark.parametrize("window", [2, 4])
def test_depth_20_stays_finite(window):
    rng = np.random.default_rng(11)
    params = random_params([4] * 21, 10, rng)  # 1024^2 pixels with window 2
    k = gram_matrix("fourier", 4, False, with_constant_channel=True)
    assert not np.all(np.isfinite(naive_top_gram(params, window, k)))  # the case is real
    got = entropy(params, window, "fourier", 4, False)
    assert np.all(np.isfinite(got["per_class"]))
    assert np.all(got["per_class"] >= 0) and np.all(got["per_class"] <= np.log(5) + 1e-12)


def test_float32_inputs_and_zero_class():
    rng = np.random.default_rng(5)
    params = random_params([2, 3, 4], 3, rng)
    ref = entropy(params, 2, "fourier", 2, False)["per_class"]
    as32 = {k: [v.astype(np.float32) for v in vs] for k, vs in params.items()}
    np.testing.assert_allclose(entropy(as32, 2, "fourier", 2, False)["per_class"], ref,
                               atol=1e-5)
    # a class whose top row is zero has no state to normalise: NaN, not a crash
    params["weights"][-1][1] = 0.0
    params["betas"][-1][:] = (params["gammas"][-1] * params["running_means"][-1]
                              / np.sqrt(params["running_vars"][-1] + EPS))
    got = entropy(params, 2, "fourier", 2, False)["per_class"]
    assert np.isnan(got[1]) and np.all(np.isfinite(got[[0, 2]]))


def test_indefinite_gram_raises():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    n = (q * np.array([1.0, 0.8, 0.6, -0.5])) @ q.T  # not a Gram matrix
    with pytest.raises(ValueError, match="class 2: .* eigenvalue"):
        _class_entropies(n, n, rng.normal(size=(3, 4)))


def _bad(mutate, **kw):
    params = random_params([2, 3, 4], 3, np.random.default_rng(1))
    mutate(params)
    opts = {"eps": EPS, "window": 2, "feature_map": "fourier", "n_features": 2,
            "constant": False}
    opts.update(kw)
    qcnn_entanglement_entropy(**params, **opts)


@pytest.mark.parametrize("mutate,kw,match", [
    (lambda p: p["weights"].__setitem__(1, np.ones((4, 2))), {}, r"weights\[1\]"),
    (lambda p: p["weights"].__setitem__(0, np.ones((3, 5))), {}, r"weights\[0\]"),
    (lambda p: p["gammas"].__setitem__(1, np.ones(4)), {}, r"gammas\[1\]"),
    (lambda p: p["betas"].pop(), {}, r"betas"),
    (lambda p: p["running_means"].__setitem__(2, np.ones((4, 1))), {}, r"running_means\[2\]"),
    (lambda p: p["running_vars"].__setitem__(0, -np.ones(2)), {}, r"running_vars\[0\]"),
    (lambda p: p["betas"][1].__setitem__(0, np.nan), {}, r"betas\[1\]"),
    (lambda p: [p[k].__delitem__(slice(1, None)) for k in p], {}, r"weights"),  # L = 0
    (lambda p: None, {"eps": "small"}, r"eps"),
    (lambda p: None, {"window": 3}, r"window"),
    (lambda p: None, {"window": True}, r"window"),
    (lambda p: None, {"eps": -1.0}, r"eps"),
    (lambda p: None, {"feature_map": "wavelet"}, r"feature_map"),
    (lambda p: None, {"n_features": 3}, r"n_features"),
])
def test_bad_input_names_the_argument(mutate, kw, match):
    with pytest.raises(ValueError, match=match):
        _bad(mutate, **kw)
