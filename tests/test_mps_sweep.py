"""Two-site DMRG sweeps of the MPS classifier: exact splits keep the chain, truncation obeys
max_bond and cutoff, environments moved one site at a time equal recomputed ones (and the
op's forward), the bond history and its plot, DMRG fits through fasttn.MPS, bad
arguments."""
import numpy as np
import pytest

import fasttn
from fasttn.data import load_task
from fasttn.ops import feature_map
from fasttn.ops.mps_contract import mps_environment_step
from fasttn.ops.mps_contract import reference as ref
from fasttn.train.mps_sweep import MPSSweep, mps_sweep_schedule


def _chain(rng, n=12, L=7, d=2, D=8, C=3, true_bond=2, center=3):
    """A random chain of bond ``true_bond`` padded to storage ``D``: every bond a sweep
    can need (moving the class leg costs a factor ``d`` per site, up to ``C``) fits."""
    phi = feature_map(rng.uniform(size=(n, L)), "cos_sin", d)
    cores = np.zeros((L, D, d, D))
    cores[:, :true_bond, :, :true_bond] = rng.standard_normal((L, true_bond, d, true_bond))
    head = np.zeros((D, C, D))
    head[:true_bond, :, :true_bond] = rng.standard_normal((true_bond, C, true_bond))
    y = rng.integers(0, C, n)
    return phi, y, cores, head, center


def _exact(sweep):
    cores, head, center = sweep.storage()
    return ref.mps_contract_dense(sweep.phi, cores, head, center)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_schedule_round_trip():
    sched = mps_sweep_schedule(6, 3)
    centers = [c for c, _ in sched]
    assert centers == [3, 4, 5, 4, 3, 2, 1, 2]
    c = 3
    for centre, direction in sched:
        assert centre == c
        c += 1 if direction == "right" else -1
    assert c == 3
    # every bond between sites is visited
    assert {c - 1 for c, _ in sched} == set(range(5))


@pytest.mark.parametrize("center", [1, 3, 6])
def test_split_without_truncation_keeps_the_chain(rng, center):
    phi, y, cores, head, _ = _chain(rng, center=center)
    before = ref.mps_contract_dense(phi, cores, head, center)
    sw = MPSSweep(phi, y, cores, head, center, max_bond=8, cutoff=0.0, steps=0)
    np.testing.assert_allclose(_exact(sw), before, rtol=1e-10, atol=1e-12 * abs(before).max())
    for c, direction in mps_sweep_schedule(sw.n_sites, center):
        sw.step(direction)
        np.testing.assert_allclose(_exact(sw), before, rtol=1e-9,
                                   atol=1e-11 * abs(before).max())
    assert sw.center == center
    # the normalised scores of a bond step are the exact chain's up to a positive factor
    X, Y = sw._bond_inputs()
    out = sw.bond_scores(X, Y, sw.bond_tensor())
    ratio = out / before
    np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones_like(ratio), rtol=1e-8)
    assert np.all(ratio > 0)


def test_truncation_obeys_max_bond_and_cutoff(rng):
    phi, y, cores, head, center = _chain(rng, D=8, true_bond=8, L=8, C=4)
    cores[:] = rng.standard_normal(cores.shape)
    head[:] = rng.standard_normal(head.shape)
    sw = MPSSweep(phi, y, cores, head, center, max_bond=3, cutoff=0.0, steps=0)
    bonds = sw.sweep()
    assert bonds.max() == 3 and bonds.min() >= 1
    for t in sw.ts:
        assert t.shape[0] <= 3 and t.shape[2] <= 3
    cores2, head2, _ = sw.storage()
    assert np.all(cores2[:, 3:] == 0) and np.all(cores2[:, :, :, 3:] == 0)
    # a cutoff drops the values below cutoff * s_0 at the split it decides
    sw = MPSSweep(phi, y, cores, head, center, max_bond=8, cutoff=0.3, steps=0)
    bond = sw.bond_tensor()
    a, d, C, d2, b = bond.shape
    s = np.linalg.svd(bond.transpose(0, 1, 3, 2, 4).reshape(a * d, -1), compute_uv=False)
    want = min(int(np.sum(s >= 0.3 * s[0])), 8)
    assert sw.split(bond, "right") == want < min(a * d, d2 * C * b)
    assert sw.bonds[center - 1] == want


def test_incremental_environments_equal_recomputed(rng):
    phi, y, cores, head, center = _chain(rng, n=9, L=8, D=6, true_bond=3)
    sw = MPSSweep(phi, y, cores, head, center, max_bond=6, cutoff=1e-3, lr=0.05, steps=3)
    for c, direction in mps_sweep_schedule(sw.n_sites, center)[:9]:
        sw.step(direction)
        lefts, rights = sw.environments()
        for k in range(sw.center):
            np.testing.assert_allclose(sw.lefts[k], lefts[k], rtol=1e-12, atol=1e-14)
        for k in range(sw.center + 1, sw.n_sites + 1):
            np.testing.assert_allclose(sw.rights[k], rights[k], rtol=1e-12, atol=1e-14)
    # and the op's forward on the padded storage holds the same environments
    st_cores, st_head, c = sw.storage()
    _, _, saved = ref.mps_contract_forward(phi, st_cores, st_head, c)
    ref_lefts = saved[4]
    for k in range(c):
        a = sw.lefts[k].shape[1]
        np.testing.assert_allclose(ref_lefts[k][:, :a], sw.lefts[k], rtol=1e-10, atol=1e-12)
        assert np.all(ref_lefts[k][:, a:] == 0)


def test_environment_step_matches_reference(rng):
    phi, y, cores, head, center = _chain(rng, n=5, L=6, D=4, true_bond=4)
    _, _, saved = ref.mps_contract_forward(phi, cores, head, 6)
    lefts = saved[4]
    env = lefts[0]
    for k in range(6):
        env, norm = mps_environment_step(env, cores[k], phi[:, k], "left")
        np.testing.assert_allclose(env, lefts[k + 1], rtol=1e-12)
        np.testing.assert_allclose(norm, saved[6][:, k], rtol=1e-12)
    _, _, saved = ref.mps_contract_forward(phi, cores, head, 0)
    env = saved[5][-1]
    for k in range(5, -1, -1):
        env, _ = mps_environment_step(env, cores[k], phi[:, k], "right")
        np.testing.assert_allclose(env, saved[5][k], rtol=1e-12)
    with pytest.raises(ValueError, match="side"):
        mps_environment_step(env, cores[0], phi[:, 0], "up")
    with pytest.raises(ValueError, match="env, phi_k"):
        mps_environment_step(env[:, :2], cores[0], phi[:, 0], "left")


def test_steps_lower_the_training_loss(rng):
    phi, y, cores, head, center = _chain(rng, n=40, L=6, D=6, true_bond=3)
    sw = MPSSweep(phi, y, cores, head, center, max_bond=6, cutoff=0.0, lr=0.0, steps=1,
                  head_norm=1.0)
    sw.optimise_bond()
    loss0 = sw.loss
    sw.lr = 0.05
    sw.steps = 20
    sw.optimise_bond()
    assert sw.loss < loss0


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(center=0), ValueError, "center"),
    (dict(center=7), ValueError, "center"),
    (dict(max_bond=0), ValueError, "max_bond"),
    (dict(max_bond=9), ValueError, "max_bond"),
    (dict(max_bond=2.5), TypeError, "max_bond"),
    (dict(cutoff=-1.0), ValueError, "cutoff"),
    (dict(lr=float("nan")), ValueError, "lr"),
    (dict(steps=-1), ValueError, "steps"),
    (dict(head_norm=0.0), ValueError, "head_norm"),
])
def test_bad_sweep_arguments(rng, kwargs, exc, match):
    phi, y, cores, head, center = _chain(rng)
    args = dict(center=center, max_bond=8)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        MPSSweep(phi, y, cores, head, **args)


@pytest.fixture(scope="module")
def digits():
    return load_task("digits", seed=0)


def test_dmrg_fit_learns_and_records_bonds(digits, tmp_path):
    X_tr, y_tr, X_te, y_te = digits
    m = fasttn.MPS(solver="dmrg", bond_dim=6, cutoff=1e-2, epochs=2, early_stopping=False,
                   random_state=0).fit(X_tr[:400], y_tr[:400])
    assert m.score(X_te, y_te) > 0.8
    assert m.bond_history_.shape == (2, 63) and m.bond_history_.dtype == np.int64
    assert m.bond_history_.min() >= 1 and m.bond_history_.max() <= 6
    assert len(m.history_) == 2 and "mean_bond" in m.history_[0]
    # the stored bonds are those chosen: zero beyond them
    for k, D in enumerate(m.bond_history_[-1]):
        if k + 1 != m.center_:
            assert np.all(m.cores_[k][:, :, D:] == 0)
    # warm start adds a sweep's row; checkpoints keep the history
    m.fit(X_tr[:400], y_tr[:400], epochs=1, warm_start=True)
    assert m.bond_history_.shape == (3, 63)
    path = tmp_path / "dmrg.npz"
    m.save(path)
    m2 = fasttn.load(path)
    np.testing.assert_array_equal(m2.bond_history_, m.bond_history_)
    np.testing.assert_array_equal(m2.predict(X_te), m.predict(X_te))
    from fasttn.analysis.plots import save_bond_history

    png = save_bond_history(m.bond_history_, tmp_path / "bonds.png", max_bond=6)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_adam_fit_has_empty_bond_history(digits):
    X_tr, y_tr, _, _ = digits
    m = fasttn.MPS(bond_dim=4, epochs=1, random_state=0).fit(X_tr[:100], y_tr[:100])
    assert m.bond_history_.shape == (0, 63)


@pytest.mark.parametrize("params, match", [
    (dict(solver="svd"), "solver"),
    (dict(solver="dmrg", cutoff=-0.1), "cutoff"),
    (dict(solver="dmrg", sweep_lr=-1.0), "sweep_lr"),
    (dict(solver="dmrg", sweep_steps=-2), "sweep_steps"),
    (dict(solver="dmrg", sweep_steps=1.5), "sweep_steps"),
    (dict(solver="dmrg", center=0), "center"),
    (dict(solver="dmrg", center=64), "center"),
])
def test_bad_dmrg_parameters(digits, params, match):
    X_tr, y_tr, _, _ = digits
    with pytest.raises(ValueError, match=match):
        fasttn.MPS(epochs=1, **params).fit(X_tr[:50], y_tr[:50])


def test_plot_rejects_bad_history(tmp_path):
    from fasttn.analysis.plots import save_bond_history

    with pytest.raises(ValueError, match="bond_history"):
        save_bond_history(np.zeros((0, 5)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="bond_history"):
        save_bond_history(np.zeros(5), tmp_path / "x.png")
