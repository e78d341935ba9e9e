"""MPO ops against the einsum reference, finite differences, from_dense and the path cache."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import DTYPES, RTOL, assert_close, check_gradient, rel_err
from fasttn import plan
from fasttn.ops import mpo
from fasttn.ops.mpo import reference

SHAPES = [  # (in_dims, out_dims, bond)
    ((2, 2, 2), (2, 2, 2), 3),
    ((3, 2, 4, 2), (2, 3, 2, 2), 4),
    ((2,) * 6, (2,) * 6, 5),
    ((4, 5), (3, 2), 2),
    ((6,), (5,), 1),
]


def random_cores(rng, in_dims, out_dims, bond, dtype=np.float64):
    n = len(in_dims)
    bonds = [1] + [bond] * (n - 1) + [1]
    return [rng.standard_normal((bonds[k], in_dims[k], out_dims[k], bonds[k + 1])).astype(dtype)
            for k in range(n)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_dims,out_dims,bond", SHAPES)
def test_to_dense_and_backward_match_reference(rng, dtype, in_dims, out_dims, bond):
    cores = random_cores(rng, in_dims, out_dims, bond, dtype)
    w, saved = mpo.mpo_to_dense_forward(cores)
    c64 = [c.astype(np.float64) for c in cores]
    assert w.dtype == dtype
    assert w.shape == (int(np.prod(in_dims)), int(np.prod(out_dims)))
    assert_close(w, reference.mpo_to_dense(c64), dtype, "W")
    g_w = rng.standard_normal(w.shape).astype(dtype)
    for k, (got, want) in enumerate(zip(mpo.mpo_to_dense_backward(saved, g_w),
                                        reference.mpo_to_dense_backward(c64, g_w))):
        assert got.shape == cores[k].shape
        assert_close(got, want, dtype, f"g_core{k}")


@pytest.mark.parametrize("method", ["dense", "network", "auto"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_dims,out_dims,bond", SHAPES[:4])
def test_apply_matches_reference(rng, dtype, method, in_dims, out_dims, bond):
    cores = random_cores(rng, in_dims, out_dims, bond, dtype)
    batch = int(rng.integers(1, 9))
    x = rng.standard_normal((batch, int(np.prod(in_dims)))).astype(dtype)
    y, saved = mpo.mpo_apply_forward(x, cores, method)
    c64 = [c.astype(np.float64) for c in cores]
    assert y.dtype == dtype
    assert_close(y, reference.mpo_apply(x.astype(np.float64), c64), dtype, "y")
    g_y = rng.standard_normal(y.shape).astype(dtype)
    g_x, g_cores = mpo.mpo_apply_backward(saved, g_y)
    want_x, want_cores = reference.mpo_apply_backward(x.astype(np.float64), c64,
                                                      g_y.astype(np.float64))
    assert_close(g_x, want_x, dtype, "g_x")
    for k, (got, want) in enumerate(zip(g_cores, want_cores)):
        assert_close(got, want, dtype, f"g_core{k}")


@pytest.mark.parametrize("method", ["dense", "network"])
def test_apply_backward_finite_differences(rng, method):
    cores = random_cores(rng, (2, 3, 2), (3, 2, 2), 3)
    x = rng.standard_normal((4, 12))
    g_y = rng.standard_normal((4, 12))
    _, saved = mpo.mpo_apply_forward(x, cores, method)
    g_x, g_cores = mpo.mpo_apply_backward(saved, g_y)
    check_gradient(lambda t: float(np.sum(g_y * mpo.mpo_apply(t, cores, method))), x, g_x, rng)
    for k in range(3):
        def f(c, k=k):
            cs = list(cores)
            cs[k] = c
            return float(np.sum(g_y * mpo.mpo_apply(x, cs, method)))
        check_gradient(f, cores[k], g_cores[k], rng)


def test_apply_method_follows_cost():
    rng = np.random.default_rng(0)
    small = random_cores(rng, (2,) * 6, (2,) * 6, 12)
    method, dense, network = mpo.mpo_apply_method(600, small)
    assert method == "dense" and dense <= network  # the paper's 64 -> 64 layer: form W
    big = random_cores(rng, (2,) * 10, (2,) * 10, 4)
    method, dense, network = mpo.mpo_apply_method(8, big)
    assert method == "network" and network < dense  # 1024 x 1024 W for 8 samples: do not


@pytest.mark.parametrize("dtype", DTYPES)
def test_from_dense_error_is_the_discarded_weight(rng, dtype):
    in_dims, out_dims = (2, 3, 2, 2), (2, 2, 3, 2)
    w = rng.standard_normal((24, 24)).astype(dtype)
    exact = mpo.mpo_from_dense(w, in_dims, out_dims)
    assert np.all(exact.discarded == 0)
    assert_close(mpo.mpo_to_dense(exact.cores), w, dtype, "untruncated W")
    for max_bond in (1, 3, 7):
        fac = mpo.mpo_from_dense(w, in_dims, out_dims, max_bond=max_bond)
        assert max(c.shape[3] for c in fac.cores) <= max_bond
        err = np.linalg.norm((mpo.mpo_to_dense(fac.cores) - w).astype(np.float64))
        want = np.sqrt(np.sum(fac.discarded ** 2))
        assert want > 0
        assert abs(err - want) <= RTOL[dtype] * 100 * np.linalg.norm(w), (max_bond, err, want)
    # against the reference TT-SVD
    fac = mpo.mpo_from_dense(w.astype(np.float64), in_dims, out_dims, max_bond=3)
    _, disc = reference.mpo_from_dense(w.astype(np.float64), in_dims, out_dims, max_bond=3)
    assert rel_err(fac.discarded, disc) < 1e-10


def test_from_dense_recovers_a_low_rank_mpo(rng):
    cores = random_cores(rng, (2,) * 5, (2,) * 5, 2)
    w = mpo.mpo_to_dense(cores)
    fac = mpo.mpo_from_dense(w, (2,) * 5, (2,) * 5, cutoff=1e-10)
    assert max(c.shape[3] for c in fac.cores) == 2  # the true bond dimension is found
    assert rel_err(mpo.mpo_to_dense(fac.cores), w) < 1e-10
    assert np.all(fac.entropy >= 0)


def test_bad_input_is_refused(rng):
    cores = random_cores(rng, (2, 2), (2, 2), 2)
    with pytest.raises(ValueError, match="cores"):
        mpo.mpo_to_dense([])
    with pytest.raises(ValueError, match=r"cores\[1\]"):
        mpo.mpo_to_dense([cores[0], rng.standard_normal((3, 2, 2, 1))])
    with pytest.raises(ValueError, match="outer bond"):
        mpo.mpo_to_dense([rng.standard_normal((2, 2, 2, 1))])
    with pytest.raises(TypeError, match=r"cores\[1\]"):
        mpo.mpo_to_dense([cores[0], cores[1].astype(np.float32)])
    with pytest.raises(ValueError, match="x: expected 4 features"):
        mpo.mpo_apply(rng.standard_normal((3, 5)), cores)
    with pytest.raises(ValueError, match="method"):
        mpo.mpo_apply(rng.standard_normal((3, 4)), cores, method="fast")
    with pytest.raises(ValueError, match="w: expected shape"):
        mpo.mpo_from_dense(rng.standard_normal((4, 5)), (2, 2), (2, 2))
    with pytest.raises(ValueError, match="w: expected finite"):
        mpo.mpo_from_dense(np.full((4, 4), np.nan), (2, 2), (2, 2))


def test_paths_are_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTTN_CACHE_DIR", str(tmp_path))
    plan.clear_memory_cache()
    eq = "ab,bc,cd->ad"
    first = plan.contraction_plan(eq, (3, 40), (40, 50), (50, 2))
    stored = json.loads((tmp_path / "paths.json").read_text())
    assert len(stored) == 1
    plan.clear_memory_cache()
    again = plan.contraction_plan(eq, (3, 40), (40, 50), (50, 2))
    assert again == first
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(s) for s in ((3, 40), (40, 50), (50, 2))]
    assert rel_err(plan.contract(eq, *arrays), arrays[0] @ arrays[1] @ arrays[2]) < 1e-12
    (tmp_path / "paths.json").write_text("{ not json")  # a corrupt cache is searched afresh
    plan.clear_memory_cache()
    assert plan.contraction_plan(eq, (3, 40), (40, 50), (50, 2)) == first
    plan.clear_memory_cache()
