"""mps_contract: the Numba kernels and the array-module version against the NumPy reference,
the reference against the unnormalised chain, gradients against finite differences,
finiteness on 128x128 and 256x256 chains in float32, canonical forms and bond entropies,
and the errors for bad input."""
import numpy as np
import pytest

from fasttn.ops import feature_map, mps_contract, mps_contract_backward, mps_contract_forward
from fasttn.ops.mps_contract import canonical
from fasttn.ops.mps_contract import reference as ref
from fasttn.ops.mps_contract import xp as xp_version

from conftest import DTYPES, RTOL, assert_close, check_gradient

# (n, L, d, D, C, center): head in the middle, at either end, a one-site chain, bond 1,
# wide features, more classes than the bond, a batch of one
SHAPES = [(5, 9, 2, 4, 3, 4), (3, 6, 3, 5, 10, 0), (4, 7, 2, 3, 2, 7), (2, 1, 2, 3, 4, 1),
          (6, 8, 4, 1, 3, 5), (1, 12, 2, 6, 7, 6), (33, 16, 2, 8, 10, 9)]


def _inputs(rng, shape, dtype, near_identity=False):
    n, L, d, D, C, _ = shape
    phi = rng.standard_normal((n, L, d))
    cores = rng.standard_normal((L, D, d, D))
    if near_identity:  # the model's start: long chains stay informative
        phi = feature_map(rng.uniform(size=(n, L)), "cos_sin", d)
        cores = np.eye(D)[None, :, None, :] + 0.1 * cores
    head = rng.standard_normal((D, C, D))
    return phi.astype(dtype), cores.astype(dtype), head.astype(dtype)


def _versions():
    # the array-module version runs here on NumPy arrays, standing in for CuPy
    return [("cpu", mps_contract_forward, mps_contract_backward),
            ("xp", xp_version.mps_contract_forward, xp_version.mps_contract_backward)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("version", ["cpu", "xp"])
def test_fast_paths_match_reference(rng, dtype, shape, version):
    phi, cores, head = _inputs(rng, shape, dtype)
    center = shape[-1]
    _, fwd, bwd = dict((v[0], v) for v in _versions())[version]
    out, log_scale, saved = fwd(phi, cores, head, center)
    f64 = [a.astype(np.float64) for a in (phi, cores, head)]
    e_out, e_ls, e_saved = ref.mps_contract_forward(*f64, center)
    assert out.dtype == dtype and out.shape == e_out.shape
    assert log_scale.dtype == np.float64 and log_scale.shape == (shape[0],)
    assert_close(out, e_out, dtype, "out")
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert np.abs(log_scale - e_ls).max() <= tol * max(1.0, np.abs(e_ls).max())
    g = rng.standard_normal(out.shape).astype(dtype)
    g_ls = rng.standard_normal(shape[0])
    grads = bwd(saved, g, g_ls)
    expected = ref.mps_contract_backward(e_saved, g.astype(np.float64), g_ls)
    for name, a, e in zip(("g_phi", "g_cores", "g_head"), grads, expected):
        assert a.dtype == dtype and a.shape == e.shape, name
        assert_close(a, e, dtype, name)
    # without the log-scale's gradient, and without the feature gradient (with bond 1 the
    # normalised environments are +-1 and the core gradient is exactly 0: rounding is
    # measured against the size of the gradient with the log-scale)
    scale = [np.abs(e).max() for e in expected]
    grads = bwd(saved, g, None, need_g_phi=False)
    expected = ref.mps_contract_backward(e_saved, g.astype(np.float64))
    assert grads[0] is None
    for k, name in ((1, "g_cores"), (2, "g_head")):
        err = np.abs(grads[k] - expected[k]).max() / max(np.abs(expected[k]).max(), scale[k])
        assert err <= RTOL[dtype], f"{name}: relative error {err:.3e}"


@pytest.mark.parametrize("shape", SHAPES[:4])
def test_reference_is_the_chain(rng, shape):
    """``out * exp(log_scale)`` is the plain product of transfer matrices, and ``out`` is
    that product with each environment's norm divided out (so of order one)."""
    phi, cores, head = _inputs(rng, shape, np.float64)
    center = shape[-1]
    out, log_scale, _ = ref.mps_contract_forward(phi, cores, head, center)
    dense = ref.mps_contract_dense(phi, cores, head, center)
    assert_close(out * np.exp(log_scale)[:, None], dense, np.float64, "chain")
    assert np.abs(out).max() <= np.abs(head).sum()


@pytest.mark.parametrize("shape", [(3, 6, 2, 3, 4, 2), (2, 5, 3, 2, 3, 0), (2, 4, 2, 3, 2, 4)])
def test_backward_finite_differences(rng, shape):
    """Every version's gradient of ``L = sum(g * out) + sum(g_ls * log_scale)`` against
    float64 central differences of the same version's forward."""
    phi, cores, head = _inputs(rng, shape, np.float64)
    center = shape[-1]
    g = rng.standard_normal((shape[0], shape[4]))
    g_ls = rng.standard_normal(shape[0])
    versions = _versions() + [("reference", ref.mps_contract_forward,
                               ref.mps_contract_backward)]
    for _, fwd, bwd in versions:
        def loss(p, c, h):
            out, ls, _ = fwd(p, c, h, center)
            return float(np.sum(g * out) + np.sum(g_ls * ls))

        g_phi, g_cores, g_head = bwd(fwd(phi, cores, head, center)[2], g, g_ls)
        check_gradient(lambda v: loss(v, cores, head), phi, g_phi, rng)
        check_gradient(lambda v: loss(phi, v, head), cores, g_cores, rng)
        check_gradient(lambda v: loss(phi, cores, v), head, g_head, rng)


@pytest.mark.parametrize("side", [128, 256])
def test_float32_finite_on_long_chains(rng, side):
    """16,384 and 65,536 sites in float32: the unnormalised chain over- or underflows by
    thousands of orders of magnitude, the normalised one stays finite both ways."""
    n, L, d, D, C = 3, side * side, 2, 4, 10
    phi, cores, head = _inputs(rng, (n, L, d, D, C, L // 2), np.float32, near_identity=True)
    for scale in (0.5, 2.0):  # transfer matrices shrinking and growing the state
        out, log_scale, saved = mps_contract_forward(phi, scale * cores, head, L // 2)
        assert np.all(np.isfinite(out)) and np.all(np.isfinite(log_scale))
        assert np.abs(log_scale).min() > 1000  # exp(log_scale) is far outside float32
        assert np.abs(out).max() > 1e-3  # and the normalised scores are of order one
        grads = mps_contract_backward(saved, np.ones((n, C), np.float32),
                                      np.ones(n, np.float64))
        for name, a in zip(("g_phi", "g_cores", "g_head"), grads):
            assert np.all(np.isfinite(a)), name
        assert np.abs(grads[1]).max() > 0


def test_float32_long_chain_matches_float64(rng):
    """At 16,384 sites the float32 kernel stays close to the float64 one (no drift)."""
    n, L = 2, 128 * 128
    phi, cores, head = _inputs(rng, (n, L, 2, 4, 3, L // 3), np.float64, near_identity=True)
    o64, l64, s64 = mps_contract_forward(phi, cores, head, L // 3)
    o32, l32, s32 = mps_contract_forward(*(a.astype(np.float32) for a in (phi, cores, head)),
                                         L // 3)
    assert np.abs(o32 - o64).max() <= 1e-3 * np.abs(o64).max()
    assert np.abs(l32 - l64).max() <= 1e-6 * np.abs(l64).max()
    g = np.ones((n, 3))
    c64 = mps_contract_backward(s64, g)[1]
    c32 = mps_contract_backward(s32, g.astype(np.float32))[1]
    assert np.abs(c32 - c64).max() <= 1e-3 * np.abs(c64).max()


def test_zero_chain_stays_zero(rng):
    """A sample whose environment vanishes exactly gives zero scores and gradients, not
    NaN."""
    phi, cores, head = _inputs(rng, (2, 5, 2, 3, 2, 2), np.float64)
    phi[1, 3] = 0
    out, log_scale, saved = mps_contract_forward(phi, cores, head, 2)
    assert np.all(out[1] == 0) and np.all(np.isfinite(log_scale))
    grads = mps_contract_backward(saved, np.ones_like(out), np.ones(2))
    assert all(np.all(np.isfinite(a)) for a in grads)


def test_empty_batch(rng):
    phi, cores, head = _inputs(rng, (0, 5, 2, 3, 2, 2), np.float64)
    out, log_scale, saved = mps_contract_forward(phi, cores, head, 2)
    assert out.shape == (0, 2) and log_scale.shape == (0,)
    g_phi, g_cores, g_head = mps_contract_backward(saved, out)
    assert g_phi.shape == phi.shape and np.all(g_cores == 0) and np.all(g_head == 0)


def test_mps_contract_is_forward_without_saved(rng):
    phi, cores, head = _inputs(rng, SHAPES[0], np.float64)
    out, ls = mps_contract(phi, cores, head, 4)
    out2, ls2, _ = mps_contract_forward(phi, cores, head, 4)
    assert np.array_equal(out, out2) and np.array_equal(ls, ls2)


# --- canonical forms and bond entropies ------------------------------------------------------

@pytest.mark.parametrize("form", canonical.FORMS)
@pytest.mark.parametrize("center", [0, 3, 7])
def test_canonical_forms_keep_the_scores(rng, form, center):
    n, L, d, D, C = 4, 7, 2, 3, 5
    phi, cores, head = _inputs(rng, (n, L, d, D, C, center), np.float64)
    c2, h2 = canonical.canonicalize(cores, head, center, form)
    assert c2.shape == cores.shape and h2.shape == head.shape
    assert_close(ref.mps_contract_dense(phi, c2, h2, center),
                 ref.mps_contract_dense(phi, cores, head, center), np.float64, form)
    ts = canonical._chain(c2, h2, center)
    eye_err = []
    left_orth = {"left": range(L), "right": [], "mixed": range(center)}[form]
    right_orth = {"left": [], "right": range(1, L + 1), "mixed": range(center + 1, L + 1)}[form]
    for i in left_orth:
        t = ts[i].reshape(-1, ts[i].shape[2])
        eye_err.append(np.abs(t.T @ t - np.diag(np.diag(t.T @ t))).max())
        assert np.all(np.isclose(np.diag(t.T @ t), 1) | np.isclose(np.diag(t.T @ t), 0))
    for i in right_orth:
        t = ts[i].reshape(ts[i].shape[0], -1)
        eye_err.append(np.abs(t @ t.T - np.diag(np.diag(t @ t.T))).max())
        assert np.all(np.isclose(np.diag(t @ t.T), 1) | np.isclose(np.diag(t @ t.T), 0))
    assert max(eye_err, default=0) < 1e-12


@pytest.mark.parametrize("center", [0, 2, 5])
def test_bond_entropies_match_the_dense_state(rng, center):
    """The entropy of each cut equals that of the singular values of the whole chain's
    tensor (the class leg as a site) reshaped across the cut."""
    L, d, D, C = 5, 2, 3, 3
    _, cores, head = _inputs(rng, (1, L, d, D, C, center), np.float64)
    ts = canonical._chain(cores, head, center)
    state = ts[0]
    for t in ts[1:]:
        state = np.tensordot(state, t, axes=([-1], [0]))
    state = state.reshape([t.shape[1] for t in ts])
    dims = state.shape
    ent = canonical.bond_entropies(cores, head, center)
    assert ent.shape == (L,)
    for cut in range(1, L + 1):
        s = np.linalg.svd(state.reshape(int(np.prod(dims[:cut])), -1), compute_uv=False)
        p = s ** 2 / np.sum(s ** 2)
        p = p[p > 0]
        assert abs(ent[cut - 1] - float(-(p * np.log(p)).sum())) < 1e-10
    assert np.all(ent <= np.log(D) + 1e-12)


def test_product_state_has_no_entanglement(rng):
    L, d, D, C = 6, 2, 4, 3
    cores = np.zeros((L, D, d, D))
    cores[:, 0, :, 0] = rng.standard_normal((L, d))
    head = np.zeros((D, C, D))
    head[0, :, 0] = rng.standard_normal(C)
    assert np.abs(canonical.bond_entropies(cores, head, 3)).max() < 1e-12


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("shapes,center,match", [
    (((2, 5), (5, 3, 2, 3), (3, 2, 3)), 2, "phi: expected a 3-dimensional"),
    (((2, 0, 2), (0, 3, 2, 3), (3, 2, 3)), 0, "phi: expected .* at least one site"),
    (((2, 5, 2), (4, 3, 2, 3), (3, 2, 3)), 2, r"cores: expected shape \(5, D, 2, D\)"),
    (((2, 5, 2), (5, 3, 3, 3), (3, 2, 3)), 2, r"cores: expected shape \(5, D, 2, D\)"),
    (((2, 5, 2), (5, 3, 2, 4), (3, 2, 3)), 2, "cores: expected shape .*equal bonds"),
    (((2, 5, 2), (5, 3, 2, 3), (3, 2, 4)), 2, r"head: expected shape \(3, n_classes, 3\)"),
    (((2, 5, 2), (5, 3, 2, 3), (3, 2)), 2, "head: expected a 3-dimensional"),
    (((2, 5, 2), (5, 3, 2, 3), (3, 2, 3)), 6, "center: expected an integer from 0 to 5"),
    (((2, 5, 2), (5, 3, 2, 3), (3, 2, 3)), -1, "center: expected an integer from 0 to 5"),
    (((2, 5, 2), (5, 3, 2, 3), (3, 2, 3)), 2.0, "center: expected an integer"),
])
def test_bad_shapes(shapes, center, match):
    with pytest.raises(ValueError, match=match):
        mps_contract(*(np.ones(s) for s in shapes), center)


def test_bad_dtypes_and_gradient_shapes(rng):
    phi, cores, head = _inputs(rng, SHAPES[0], np.float64)
    with pytest.raises(TypeError, match="cores: expected dtype float64"):
        mps_contract(phi, cores.astype(np.float32), head, 4)
    with pytest.raises(TypeError, match="head: expected dtype float64"):
        mps_contract(phi, cores, head.astype(np.float32), 4)
    with pytest.raises(TypeError, match="phi: expected a float32 or float64 array"):
        mps_contract(phi.astype(np.int64), cores, head, 4)
    saved = mps_contract_forward(phi, cores, head, 4)[2]
    with pytest.raises(ValueError, match=r"g_out: expected shape \(5, 3\)"):
        mps_contract_backward(saved, np.ones((5, 4)))
    with pytest.raises(ValueError, match=r"g_log_scale: expected shape \(5\)"):
        mps_contract_backward(saved, np.ones((5, 3)), np.ones(4))
    with pytest.raises(ValueError, match="form: expected one of"):
        canonical.canonicalize(cores, head, 4, "diagonal")
