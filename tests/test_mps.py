"""The MPS classifier: chain orders, learning the digits, checkpoints, canonical forms and bond
entropies that leave the scores alone, long chains, bad parameters."""
import numpy as np
import pytest

import fasttn
from fasttn import MPS
from fasttn.data import load_task
from fasttn.ops.layout import site_order


@pytest.fixture(scope="module")
def digits():
    return load_task("digits", seed=0)


@pytest.mark.parametrize("order", ["row", "column", "snake", "hilbert"])
@pytest.mark.parametrize("shape", [(8, 8), (4, 4), (3, 5)])
def test_chain_orders_visit_every_pixel(order, shape):
    h, w = shape
    if order == "hilbert" and h != w:
        with pytest.raises(ValueError, match="order: 'hilbert' needs a square"):
            site_order(h, w, order)
        return
    perm = site_order(h, w, order)
    assert sorted(perm.tolist()) == list(range(h * w))
    i, j = np.divmod(perm, w)
    steps = np.abs(np.diff(i)) + np.abs(np.diff(j))
    if order in ("snake", "hilbert"):
        assert steps.max() == 1  # consecutive sites are neighbouring pixels
    if order == "hilbert":  # each quadrant is one stretch of the chain
        q = (i >= h // 2) * 2 + (j >= w // 2)
        assert np.count_nonzero(np.diff(q)) == 3


def test_fit_learns_the_digits_and_round_trips(digits, tmp_path):
    X_tr, y_tr, X_te, y_te = digits
    m = MPS(bond_dim=8, epochs=12, random_state=0).fit(X_tr, y_tr)
    acc = m.score(X_te, y_te)
    assert acc > 0.85, acc
    assert m.cores_.shape == (64, 8, 2, 8) and m.head_.shape == (8, 10, 8)
    assert m.center_ == 32 and m.n_params_ == 64 * 8 * 2 * 8 + 8 * 10 * 8
    path = tmp_path / "mps.npz"
    m.save(path)
    m2 = fasttn.load(path)
    assert isinstance(m2, MPS)
    np.testing.assert_array_equal(m2.decision_function(X_te), m.decision_function(X_te))
    # flat rows are the same images
    np.testing.assert_array_equal(m.predict(X_te.reshape(len(X_te), -1)), m.predict(X_te))


@pytest.mark.parametrize("form", ["mixed", "left", "right"])
def test_canonicalize_keeps_predictions(digits, form):
    X_tr, y_tr, X_te, _ = digits
    m = MPS(bond_dim=6, epochs=2, dtype="float64", random_state=1).fit(X_tr[:300], y_tr[:300])
    before = m.decision_function(X_te) * np.exp(m.log_scale(X_te))[:, None]
    pred = m.predict(X_te)
    m.canonicalize(form)
    after = m.decision_function(X_te) * np.exp(m.log_scale(X_te))[:, None]
    np.testing.assert_allclose(after, before, rtol=1e-9, atol=1e-12 * np.abs(before).max())
    np.testing.assert_array_equal(m.predict(X_te), pred)


def test_bond_entropies(digits):
    X_tr, y_tr, _, _ = digits
    m = MPS(bond_dim=6, epochs=2, random_state=0).fit(X_tr[:300], y_tr[:300])
    ent = m.bond_entropies()
    assert ent.shape == (64,) and np.all(np.isfinite(ent))
    assert np.all(ent >= -1e-9) and np.all(ent <= np.log(6) + 1e-6)
    assert ent.max() > 0  # training entangles the chain
    before = m.decision_function(X_tr[:20])
    m.bond_entropies()  # reads the cores, does not change them
    np.testing.assert_array_equal(m.decision_function(X_tr[:20]), before)


def test_long_chain_trains_finite_in_float32():
    """128x128 images (16,384 sites): one epoch in float32 leaves finite cores and
    scores."""
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(8, 128, 128)).astype(np.float32)
    y = np.arange(8) % 2
    m = MPS(bond_dim=3, epochs=1, batch_size=4, early_stopping=False, random_state=0).fit(X, y)
    assert np.all(np.isfinite(m.decision_function(X)))
    assert np.all(np.isfinite(m.log_scale(X))) and np.abs(m.log_scale(X)).max() > 100


def test_hilbert_pads_to_a_power_of_two_square(digits):
    X_tr, y_tr, _, _ = digits
    X = X_tr[:200, :, :6]  # 8x6 images
    m = MPS(order="hilbert", bond_dim=4, epochs=1, random_state=0).fit(X, y_tr[:200])
    assert m.network_shape_ == (8, 8) and m.cores_.shape[0] == 64
    assert m.predict(X).shape == (200,)
    r = MPS(order="row", bond_dim=4, epochs=1, random_state=0).fit(X, y_tr[:200])
    assert r.network_shape_ == (8, 6) and r.cores_.shape[0] == 48


@pytest.mark.parametrize("params,match", [
    (dict(bond_dim=0), "bond_dim: expected a positive integer"),
    (dict(d=1), "n_features: the cos_sin map needs at least 2"),
    (dict(feature_map="gauss"), "feature_map: expected one of"),
    (dict(order="z"), "order: expected one of"),
    (dict(center=-1), "center: expected None"),
    (dict(center=65), "center: expected at most the number of pixels"),
    (dict(init_noise=-0.1), "init_noise"),
])
def test_bad_parameters(digits, params, match):
    X_tr, y_tr, _, _ = digits
    with pytest.raises(ValueError, match=match):
        MPS(**params).fit(X_tr[:50], y_tr[:50])
