"""DMRG-like sweeps: exact splits, bond gradients, and a sweep's first-order loss change."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import check_gradient, rel_err
from fasttn.ops.mpo import mpo_to_dense
from fasttn.train.sweeps import CompiledMPOSweep, MPOSweep, run_sweep, sweep_schedule
from test_mpo import random_cores


def test_schedule_goes_right_then_back():
    assert sweep_schedule(4) == [(0, "right"), (1, "right"), (2, "right"), (2, "left"),
                                 (1, "left"), (0, "left")]


# the NumPy path and the compiled sweep's kernels (contractions, warm-started split)
SWEEPS = [MPOSweep, CompiledMPOSweep]


@pytest.mark.parametrize("sweep_cls", SWEEPS)
@pytest.mark.parametrize("in_dims,out_dims,bond", [((2,) * 6, (2,) * 6, 4),
                                                    ((3, 2, 2, 3), (2, 3, 2, 2), 3)])
def test_untruncated_split_leaves_the_weight_unchanged(rng, in_dims, out_dims, bond, sweep_cls):
    cores = random_cores(rng, in_dims, out_dims, bond)
    w0 = mpo_to_dense(cores)
    sweep = sweep_cls(list(cores), max_bond=10_000)
    for k, direction in sweep.schedule:
        b = sweep.bond_tensor(k)
        assert rel_err(sweep.dense_from_bond(k, b), w0) < 1e-12
        sweep.split(k, b, direction)
        assert rel_err(mpo_to_dense(sweep.cores), w0) < 1e-10
        # the environment the sweep moves on with is the one recomputed from scratch
        fresh = sweep_cls(list(sweep.cores), max_bond=10_000)
        if direction == "right":
            assert rel_err(sweep.pre[k + 1], fresh.pre[k + 1]) < 1e-12
        else:
            assert rel_err(sweep.suf[k + 1], fresh.suf[k + 1]) < 1e-12
    assert rel_err(sweep.dense(), w0) < 1e-10


@pytest.mark.parametrize("sweep_cls", SWEEPS)
def test_truncated_split_keeps_the_bond_dimension(rng, sweep_cls):
    cores = random_cores(rng, (2,) * 5, (2,) * 5, 3)
    sweep = sweep_cls(list(cores), max_bond=3)
    b = sweep.bond_tensor(1) + 0.1 * rng.standard_normal(sweep.bond_tensor(1).shape)
    sweep.split(1, b, "right")
    assert sweep.cores[1].shape[3] == 3
    assert sweep.discarded[1] > 0 and sweep.entropy[1] > 0
    m = b.reshape(np.prod(b.shape[:3]), -1)
    s = np.linalg.svd(m, compute_uv=False)
    assert abs(sweep.discarded[1] - np.sqrt(np.sum(s[3:] ** 2))) < 1e-10


@pytest.mark.parametrize("sweep_cls", SWEEPS)
def test_bond_gradient_matches_finite_differences(rng, sweep_cls):
    cores = random_cores(rng, (2, 3, 2, 2), (2, 2, 3, 2), 3)
    x = rng.standard_normal((7, 24))
    t = rng.standard_normal((7, 24))

    def loss_of_w(w):
        return float(np.sum(np.tanh(x @ w) * t))

    def grad_of_w(w):
        return x.T @ ((1 - np.tanh(x @ w) ** 2) * t)

    sweep = sweep_cls(list(cores), max_bond=100)
    for k in (0, 1, 2):
        b = sweep.bond_tensor(k)
        g_b = sweep.bond_grad(k, grad_of_w(sweep.dense_from_bond(k, b)))
        check_gradient(lambda bb, k=k: loss_of_w(sweep.dense_from_bond(k, bb)), b, g_b, rng)
        sweep.split(k, b, "right")


@pytest.mark.parametrize("sweep_cls", SWEEPS)
def test_sweep_loss_change_is_first_order(rng, sweep_cls):
    """Tiny steps, no truncation: the change over a sweep is -lr * sum of |dL/dB|^2."""
    cores = random_cores(rng, (2,) * 4, (2,) * 4, 2)
    x = rng.standard_normal((9, 16))
    t = rng.standard_normal((9, 16))

    def fb(ws):
        z = x @ ws[0]
        return float(np.sum(np.tanh(z) * t)), [x.T @ ((1 - np.tanh(z) ** 2) * t)], None

    lr = 1e-7
    sweep = sweep_cls(list(cores), max_bond=10_000)
    loss0 = fb([mpo_to_dense(cores)])[0]
    squares = []  # |dL/dB|^2 at each step, in the gauge the sweep is in at that step
    bond_grad = sweep.bond_grad

    def recording(k, g_w):
        g = bond_grad(k, g_w)
        squares.append(float(np.sum(g * g)))
        return g

    sweep.bond_grad = recording
    run_sweep([sweep], [True], fb, lr)
    assert len(squares) == len(sweep.schedule)
    predicted = -lr * sum(squares)
    change = fb([mpo_to_dense(sweep.cores)])[0] - loss0
    assert predicted < 0
    assert abs(change - predicted) <= 1e-4 * abs(predicted), (change, predicted)


def test_environments_stay_valid_across_layer_by_layer_sweeps(rng):
    """Sweeping one MPO, then another (LbL), needs no recomputation of environments."""
    mpos = [MPOSweep([0.5 * c for c in random_cores(rng, (2,) * 4, (2,) * 4, 3)], max_bond=3)
            for _ in range(2)]
    x = rng.standard_normal((5, 16))

    def fb(ws):
        z = x @ ws[0] @ ws[1]
        return float(np.sum(z * z)), [x.T @ (2 * z) @ ws[1].T, (x @ ws[0]).T @ (2 * z)], None

    w0 = [mpo_to_dense(m.cores) for m in mpos]
    for active in ([True, False], [False, True], [True, False]):
        run_sweep(mpos, active, fb, 1e-4)
        for m in mpos:
            assert rel_err(m.dense(), mpo_to_dense(m.cores)) < 1e-10
    assert all(rel_err(mpo_to_dense(m.cores), w) > 1e-6 for m, w in zip(mpos, w0))  # trained
