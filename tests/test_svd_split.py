"""The warm-started truncated split of one small matrix (``ops.svd_truncate.subspace``)
against ``np.linalg.svd``: the best rank-D approximation, the spectrum, the sign rule, and
the fallback where the subspace iteration cannot certify its answer."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import with_spectrum
from fasttn.ops.svd_truncate import svd_truncate
from fasttn.ops.svd_truncate.subspace import JACOBI_MAX_RANK, svd_split


def best_rank(a, d):
    """The best rank-``d`` approximation of ``a`` and the weight it leaves, from LAPACK."""
    u, s, vt = np.linalg.svd(np.asarray(a, np.float64), full_matrices=False)
    return (u[:, :d] * s[:d]) @ vt[:d], np.sqrt(np.sum(s[d:] ** 2)), s


def low_rank(rng, m, n, d, noise):
    """A rank-``d`` matrix plus ``noise`` relative to it, and the rows of its right factor
    (the start a sweep has)."""
    left, right = rng.standard_normal((m, d)), rng.standard_normal((d, n))
    a = left @ right
    return a + noise * np.abs(a).max() * rng.standard_normal((m, n)), right


def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


SHAPES = [(16, 16, 4), (32, 32, 8), (48, 48, 12), (16, 48, 12), (48, 16, 12), (40, 24, 5)]


@pytest.mark.parametrize("m,n,d", SHAPES)
@pytest.mark.parametrize("warm", [True, False])
def test_low_rank_plus_perturbation_is_exact(rng, m, n, d, warm):
    """The sweep's case: the subspace route, converged to the rounding floor."""
    a, right = low_rank(rng, m, n, d, 1e-3)
    out, info = svd_split(a, d, start=right if warm else None)
    # iterations over 2,400 draws of these shapes: warm 3-6, cold 4-7 (the rate is the
    # drawn (s_d+1 / s_d)^2); the warm start never took more than the cold one
    assert info["method"] == "subspace" and 1 <= info["iterations"] <= (7 if warm else 9)
    if warm:
        assert info["iterations"] <= svd_split(a, d)[1]["iterations"]
    best, tail, s = best_rank(a, d)
    assert rel(out.left @ out.right, best) < 1e-12
    assert rel(out.s, s[:d]) < 1e-13
    assert abs(out.discarded - tail) <= 1e-13 * s[0]
    # the same factors as the LAPACK route of svd_truncate (sign rule included)
    ref = svd_truncate(a, d)
    assert rel(out.left, ref.left) < 1e-11 and rel(out.right, ref.right) < 1e-11
    assert abs(out.entropy - ref.entropy) < 1e-12


def test_warm_start_saves_iterations(rng):
    # per matrix the warm start saved 0-2 iterations (two in three draws saved one or more):
    # over 24 matrices it must save some
    warm = cold = 0
    for m, n, d in SHAPES * 4:
        a, right = low_rank(rng, m, n, d, 1e-3)
        warm += svd_split(a, d, start=right)[1]["iterations"]
        cold += svd_split(a, d)[1]["iterations"]
    assert warm < cold, (warm, cold)


@pytest.mark.parametrize("m,n,d", SHAPES)
def test_flat_spectrum_falls_back_and_stays_exact(rng, m, n, d):
    """A flat random spectrum: nothing certifies the cut, so the full route answers."""
    a = rng.standard_normal((m, n))
    out, info = svd_split(a, d)
    assert info["method"] in ("jacobi", "lapack")
    best, tail, _ = best_rank(a, d)
    assert rel(out.left @ out.right, best) < 1e-12
    assert abs(out.discarded - tail) <= 1e-13 * np.abs(a).max() * max(m, n)


def test_degenerate_values_at_the_cut(rng):
    """s_D = s_D+1: the best rank-D approximation is not unique, but its error and the kept
    spectrum are; every answer must reach that error."""
    spec = np.array([9.0, 5.0, 3.0, 2.0, 2.0, 1.0, 0.5, 0.1, 0.01, 0.0])
    a = with_spectrum(rng, 20, 10, spec)
    out, info = svd_split(a, 4)
    err = np.linalg.norm(a - out.left @ out.right)
    assert abs(err - np.sqrt(np.sum(spec[4:] ** 2))) < 1e-12
    assert rel(out.s, spec[:4]) < 1e-13
    assert abs(out.discarded - err) < 1e-12


@pytest.mark.parametrize("gap", [1e-3, 1e-6])
def test_near_degenerate_values_at_the_cut(rng, gap):
    """s_D = (1 + gap) s_D+1: the best rank-D approximation is unique; the truncated product
    matches it to what its conditioning (1 / gap) allows, through either route."""
    spec = np.array([9.0, 5.0, 3.0, 2.0 * (1 + gap), 2.0, 1.0, 0.5, 0.1])
    a = with_spectrum(rng, 24, 8, spec)
    out, info = svd_split(a, 4)
    best, _, _ = best_rank(a, 4)
    assert rel(out.left @ out.right, best) < 1e-13 / gap
    assert rel(out.s, spec[:4]) < 1e-13


def test_near_degenerate_start_is_refused_by_the_certificate(rng):
    """A perturbation as large as the kept values: the warm start misses, the certificate
    (weight outside below the smallest kept value) fails, and LAPACK answers."""
    a, right = low_rank(rng, 48, 48, 12, 0.5)
    out, info = svd_split(a, 12, start=right)
    best, _, _ = best_rank(a, 12)
    assert info["method"] == "lapack"
    assert rel(out.left @ out.right, best) < 1e-12


@pytest.mark.parametrize("m,n", [(4, 48), (48, 4), (16, 16), (12, 30)])
def test_untruncated_split_is_exact(rng, m, n):
    a = rng.standard_normal((m, n))
    out, info = svd_split(a, 64)
    assert info["method"] == ("jacobi" if min(m, n) <= JACOBI_MAX_RANK else "lapack")
    assert out.s.shape == (min(m, n),)
    assert rel(out.left @ out.right, a) < 1e-13
    ref = svd_truncate(a)
    assert rel(out.left, ref.left) < 1e-12 and rel(out.s, ref.s) < 1e-13
    assert out.discarded == 0.0


def test_cutoff_and_exact_low_rank(rng):
    """A rank-3 matrix with max_bond 6: the cutoff drops the zero values (and sets the
    discarded weight from the values beyond the cut)."""
    a = with_spectrum(rng, 30, 20, np.array([4.0, 2.0, 1e-3] + [0.0] * 17))
    out, _ = svd_split(a, 6, cutoff=1e-2)
    assert out.s.shape == (2,)
    assert abs(out.discarded - 1e-3) < 1e-13
    assert rel(out.left @ out.right, best_rank(a, 2)[0]) < 1e-12
    out, _ = svd_split(a, 6)
    assert out.s.shape == (6,) and np.all(out.s[3:] < 1e-14)
    assert rel(out.left @ out.right, a) < 1e-13


def test_float32_in_float32_out(rng):
    a, right = low_rank(rng, 32, 32, 8, 1e-3)
    a32 = a.astype(np.float32)
    out, info = svd_split(a32, 8, start=right.astype(np.float32))
    assert out.left.dtype == out.right.dtype == out.s.dtype == np.float32
    # computed in float64 from the float32 matrix: only the outputs are rounded
    best, _, s = best_rank(a32, 8)
    assert rel(out.left.astype(np.float64) @ out.right, best) < 1e-6
    assert rel(out.s, s[:8]) < 1e-6


def test_scale_extremes(rng):
    """Values near the ends of the float64 range split as their scaled copies do."""
    a, right = low_rank(rng, 16, 24, 4, 1e-3)
    base, _ = svd_split(a, 4, start=right)
    for scale in (1e-150, 1e150):
        out, _ = svd_split(a * scale, 4, start=right)
        assert rel(out.s, base.s * scale) < 1e-13
        assert rel(out.left @ out.right, base.left @ base.right * scale) < 1e-12


def test_zero_matrix(rng):
    out, _ = svd_split(np.zeros((6, 9)), 3)
    assert np.all(out.left @ out.right == 0) and out.entropy == 0 and out.discarded == 0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="a: expected finite"):
        svd_split(np.full((3, 3), np.nan), 2)
    with pytest.raises(ValueError, match="a: expected one matrix"):
        svd_split(np.zeros((2, 3, 3)), 2)
    with pytest.raises(ValueError, match="start: expected rows of length 3"):
        svd_split(np.ones((4, 3)), 2, start=np.ones((2, 4)))
    with pytest.raises(ValueError, match="max_bond"):
        svd_split(np.ones((4, 3)), 0)
