"""Truncated SVD split: the kernel against the NumPy reference, the truncation rules on
matrices of known spectrum, the identities the outputs must satisfy, the backward against
finite differences, and every refused input."""
import numpy as np
import pytest

from conftest import DTYPES, RTOL, assert_close, check_gradient, with_spectrum
from fasttn.ops.svd_truncate import (SVDTruncation, svd_truncate, svd_truncate_backward,
                                     svd_truncate_forward)
from fasttn.ops.svd_truncate import cpu
from fasttn.ops.svd_truncate import reference as ref

ABSORB = ["both", "left", "right", "none"]
# (shape, max_bond, cutoff): square, tall, wide, a single row and column, 2-D to 4-D stacks,
# stacks of at least cpu.JACOBI_MIN_ITEMS small matrices (the Jacobi route), and fewer or
# larger ones (the LAPACK route)
CASES = [((6, 6), None, 0.0), ((9, 4), 3, 0.0), ((4, 9), None, 0.3), ((5, 1, 7), None, 0.0),
         ((3, 7, 1), 2, 0.0), ((9, 5, 5), 3, 0.2), ((2, 5, 8, 6), 4, 0.05),
         ((3, 40, 36), 10, 0.0), ((2, 33, 45), None, 0.4)]


def _route_is_jacobi(shape):
    return cpu.use_jacobi(*shape[-2:], int(np.prod(shape[:-2], dtype=int)))


def test_both_routes_are_covered():
    assert any(_route_is_jacobi(c[0]) for c in CASES)
    assert any(not _route_is_jacobi(c[0]) for c in CASES)
    assert not cpu.use_jacobi(8, 8, 1)  # a lone small matrix goes to LAPACK




def frobenius(x):
    return np.sqrt(np.sum(np.asarray(x, np.float64) ** 2, axis=(-2, -1)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_reference(rng, dtype, case):
    shape, max_bond, cutoff = case
    a = rng.standard_normal(shape).astype(dtype)
    for absorb in ABSORB:
        out, _ = svd_truncate_forward(a, max_bond, cutoff, absorb)
        exp, _ = ref.svd_truncate_forward(a, max_bond, cutoff, absorb)
        assert isinstance(out, SVDTruncation)
        k = exp.s.shape[-1]
        assert out.left.shape == shape[:-1] + (k,)
        assert out.right.shape == shape[:-2] + (k, shape[-1])
        assert out.left.dtype == out.right.dtype == out.s.dtype == dtype
        assert out.entropy.dtype == out.discarded.dtype == np.float64
        assert out.entropy.shape == out.discarded.shape == shape[:-2]
        for name in SVDTruncation._fields:
            assert_close(getattr(out, name), getattr(exp, name), dtype, f"{absorb} {name}")
        assert_close(out.left.astype(np.float64) @ out.right, exp.left.astype(np.float64) @
                     exp.right, dtype, f"{absorb} left @ right")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_discarded_is_the_truncation_error(rng, dtype, case):
    shape, max_bond, cutoff = case
    a = rng.standard_normal(shape).astype(dtype)
    out = svd_truncate(a, max_bond, cutoff)
    err = frobenius(a.astype(np.float64) - out.left.astype(np.float64) @ out.right)
    tol = (1e-13 if dtype == np.float64 else 1e-6) * frobenius(a).max()
    assert np.all(np.abs(err - out.discarded) <= tol), (err, out.discarded)
    if max_bond is not None and max_bond < min(shape[-2:]):
        assert out.discarded.min() > 100 * tol  # the comparison above is not 0 == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 5), (3, 7, 4), (2, 2, 4, 9), (2, 36, 36)])
def test_no_truncation_is_exact(rng, dtype, shape):
    a = rng.standard_normal(shape).astype(dtype)
    tol = 1e-12 if dtype == np.float64 else 1e-6
    s_np = np.linalg.svd(a.astype(np.float64), compute_uv=False)
    u, _, vt = np.linalg.svd(a.astype(np.float64), full_matrices=False)
    for absorb in ABSORB:
        out = svd_truncate(a, absorb=absorb)
        prod = out.left.astype(np.float64) @ out.right
        # "none" keeps U and V^T apart from S: their product is the polar factor
        expected = u @ vt if absorb == "none" else a
        assert np.abs(prod - expected).max() <= tol * np.abs(expected).max(), absorb
        assert_close(out.s, s_np, dtype, "s")
        assert np.all(out.discarded == 0)
        p = s_np ** 2 / np.sum(s_np ** 2, axis=-1, keepdims=True)
        assert_close(out.entropy, -np.sum(p * np.log(p), axis=-1), np.float64, "entropy")


@pytest.mark.parametrize("m,n", [(6, 6), (8, 5), (5, 8), (40, 34)])
def test_cutoff_keeps_a_different_count_per_item(rng, m, n):
    r = min(m, n)
    spectra = np.zeros((4, r))
    spectra[0] = 2.0 * 0.1 ** np.arange(r)        # keeps 3 at cutoff 1e-2.5
    spectra[1, :r - 1] = 5.0 * np.linspace(1.0, 0.1, r - 1)  # keeps them all but the zero
    spectra[2, 0] = 0.3                          # rank one
    spectra[3] = 1.0 + 0.05 * np.arange(r)[::-1]  # slow decay: keeps all (under max_bond)
    a = np.stack([with_spectrum(rng, m, n, s) for s in spectra])
    cutoff = 10 ** -2.5
    expected = [3, r - 1, 1, r]
    for max_bond in (None, 4):
        kept = [min(e, max_bond or r) for e in expected]
        k = max(kept)
        out = svd_truncate(a, max_bond, cutoff, absorb="both")
        assert out.s.shape == (4, k)
        assert out.left.shape == (4, m, k) and out.right.shape == (4, k, n)
        for b in range(4):
            kb = kept[b]
            sigma = spectra[b]
            assert_close(out.s[b, :kb], sigma[:kb], np.float64, f"item {b} s")
            # padding is exactly zero, so left @ right is the item's own truncation
            assert np.all(out.s[b, kb:] == 0)
            assert np.all(out.left[b, :, kb:] == 0) and np.all(out.right[b, kb:, :] == 0)
            q1, _, q2t = np.linalg.svd(a[b], full_matrices=False)
            best = q1[:, :kb] @ np.diag(sigma[:kb]) @ q2t[:kb]  # Eckart-Young
            assert np.abs(out.left[b] @ out.right[b] - best).max() <= 1e-12 * sigma[0]
            tail = np.sqrt(np.sum(sigma[kb:] ** 2))
            assert abs(out.discarded[b] - tail) <= 1e-13 * sigma[0]
            p = sigma[:kb] ** 2 / np.sum(sigma[:kb] ** 2)
            assert abs(out.entropy[b] + np.sum(p * np.log(p))) <= 1e-12
        assert out.entropy[2] == 0.0 and out.entropy[3] > 0.5


def test_zero_and_rank_deficient_matrices(rng):
    """Exact zeros: kept only without a cutoff, entropy 0, and ``U`` still orthonormal
    (the kernel completes the basis where a Jacobi column vanishes)."""
    a = np.zeros((3, 6, 4))
    a[1] = rng.standard_normal((6, 2)) @ rng.standard_normal((2, 4))   # rank 2
    a[2] = rng.standard_normal((6, 4))
    a[2][:, 1] = 0.0                                                    # a zero column
    for cutoff, k in ((0.0, 4), (1e-9, 3)):
        out = svd_truncate(a, cutoff=cutoff, absorb="right")
        assert out.s.shape == (3, k)
        assert np.all(out.s[0] == 0) and out.entropy[0] == 0 and out.discarded[0] == 0
        assert np.abs(out.left @ out.right - a).max() <= 1e-12 * np.abs(a).max()
        u = out.left[:, :, :k]
        if cutoff == 0:
            for b in range(3):
                assert np.abs(u[b].T @ u[b] - np.eye(k)).max() <= 1e-12, b
        else:
            assert np.all(out.s[0, 1:] == 0) and np.all(out.s[1, 2:] == 0)
    ref_out, _ = ref.svd_truncate_forward(a, None, 1e-9, "right")
    assert_close(svd_truncate(a, cutoff=1e-9).s, ref_out.s, np.float64, "s")


@pytest.mark.parametrize("shape", [(3, 6, 5), (2, 40, 36)])
def test_extreme_scales_and_empty_stacks(rng, shape):
    a = rng.standard_normal(shape)
    base = svd_truncate(a, 3)
    for scale in (1e-200, 1e200):
        out = svd_truncate(a * scale, 3)
        assert_close(out.s / scale, base.s, np.float64, f"s at {scale:g}")
        assert_close(out.discarded / scale, base.discarded, np.float64, f"discarded at {scale:g}")
        assert_close(out.entropy, base.entropy, np.float64, f"entropy at {scale:g}")
    out, saved = svd_truncate_forward(np.zeros((0,) + shape[1:]), 3)
    assert out.left.shape == (0, shape[1], 1) and out.entropy.shape == (0,)
    assert svd_truncate_backward(saved, out.left, out.right, out.s).shape == (0,) + shape[1:]


@pytest.mark.parametrize("m,n", [(7, 7), (9, 4), (4, 9), (36, 40)])
def test_absorb_modes_and_signs(rng, m, n):
    a = rng.standard_normal((3, m, n))
    k = min(m, n) - 1
    both, left, right = (svd_truncate(a, k, absorb=x) for x in ("both", "left", "right"))
    eye = np.eye(k)
    # left: right factor has orthonormal rows; right: left factor has orthonormal columns
    assert np.abs(left.right @ left.right.transpose(0, 2, 1) - eye).max() <= 1e-12
    assert np.abs(right.left.transpose(0, 2, 1) @ right.left - eye).max() <= 1e-12
    # both: each factor carries sqrt(s)
    diag_s = both.s[:, :, None] * eye
    assert np.abs(both.left.transpose(0, 2, 1) @ both.left - diag_s).max() <= 1e-12
    assert np.abs(both.right @ both.right.transpose(0, 2, 1) - diag_s).max() <= 1e-12
    prods = [x.left @ x.right for x in (both, left, right)]
    assert np.abs(prods[0] - prods[1]).max() <= 1e-12 and np.abs(prods[0] - prods[2]).max() <= 1e-12
    # none: both factors orthonormal, the same U and V^T as the others
    none = svd_truncate(a, k, absorb="none")
    assert np.abs(none.left - right.left).max() <= 1e-12
    assert np.abs(none.right - left.right).max() <= 1e-12
    # sign fix: the largest-|.| entry of each column of U is positive
    u = right.left
    at = np.argmax(np.abs(u), axis=1)
    assert np.all(np.take_along_axis(u, at[:, None, :], axis=1) > 0)
    # and so the split is continuous: a small change of a gives a small change of the factors
    nudged = svd_truncate(a + 1e-10 * rng.standard_normal(a.shape), k, absorb="both")
    assert np.abs(nudged.left - both.left).max() < 1e-5
    assert np.abs(nudged.right - both.right).max() < 1e-5


def _loss_and_grads(rng, out):
    g_left = rng.standard_normal(out.left.shape)
    g_right = rng.standard_normal(out.right.shape)
    g_s = rng.standard_normal(out.s.shape)
    return g_left, g_right, g_s


# (shape, max_bond, cutoff); spectra 3 * 0.55^i, so the cutoff 0.2 falls between values
FD_CASES = [((5, 5), None, 0.0), ((7, 4), 2, 0.0), ((4, 7), None, 0.2), ((2, 6, 5), 3, 0.0)]


@pytest.mark.parametrize("absorb", ABSORB)
@pytest.mark.parametrize("case", FD_CASES)
def test_backward_finite_differences(rng, absorb, case):
    shape, max_bond, cutoff = case
    *batch, m, n = shape
    r = min(m, n)
    a = np.stack([with_spectrum(rng, m, n, 3.0 * 0.55 ** np.arange(r), 0.05)
                  for _ in range(int(np.prod(batch)))]).reshape(shape)
    out, saved = svd_truncate_forward(a, max_bond, cutoff, absorb)
    assert out.s.shape[-1] < r or (max_bond is None and cutoff == 0)
    g_left, g_right, g_s = _loss_and_grads(rng, out)

    def loss(x, with_s=True):
        o = svd_truncate(x, max_bond, cutoff, absorb)
        return (np.sum(g_left * o.left) + np.sum(g_right * o.right)
                + (np.sum(g_s * o.s) if with_s else 0.0))

    check_gradient(loss, a, svd_truncate_backward(saved, g_left, g_right, g_s), rng, n_dirs=2)
    check_gradient(lambda x: loss(x, False), a, svd_truncate_backward(saved, g_left, g_right),
                   rng, n_dirs=1)


def test_backward_with_per_item_counts(rng):
    """Items keeping fewer than ``k`` values: the zero padding gets no gradient."""
    m, n = 6, 5
    spectra = [2.0 * 0.5 ** np.arange(5), 2.0 * 0.05 ** np.arange(5), 1.0 * 0.8 ** np.arange(5)]
    a = np.stack([with_spectrum(rng, m, n, s, 0.05) for s in spectra])
    out, saved = svd_truncate_forward(a, 4, 0.02, "both")
    assert list(saved.kept) == [4, 2, 4] and out.s.shape == (3, 4)
    g_left, g_right, g_s = _loss_and_grads(rng, out)

    def loss(x):
        o = svd_truncate(x, 4, 0.02, "both")
        return np.sum(g_left * o.left) + np.sum(g_right * o.right) + np.sum(g_s * o.s)

    check_gradient(loss, a, svd_truncate_backward(saved, g_left, g_right, g_s), rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_backward_kernel_matches_reference(rng, dtype, case):
    shape, max_bond, cutoff = case
    a = rng.standard_normal(shape).astype(dtype)
    for absorb in ABSORB:
        out, saved = svd_truncate_forward(a, max_bond, cutoff, absorb)
        g_left, g_right, g_s = _loss_and_grads(rng, out)
        g = svd_truncate_backward(saved, g_left.astype(dtype), g_right.astype(dtype),
                                  g_s.astype(dtype))
        assert g.dtype == dtype and g.shape == shape
        # the same saved SVD through the reference formula
        expected = ref.svd_truncate_backward(saved, g_left.astype(dtype),
                                             g_right.astype(dtype), g_s.astype(dtype))
        assert_close(g, expected, dtype, f"{absorb} g_a")
        # missing gradients are zeros
        for kw in ({"g_left": g_left}, {"g_right": g_right}, {"g_s": g_s}):
            kw = {key: val.astype(dtype) for key, val in kw.items()}
            full = {"g_left": 0 * g_left, "g_right": 0 * g_right, "g_s": 0 * g_s}
            full.update(kw)
            assert_close(svd_truncate_backward(saved, **kw),
                         svd_truncate_backward(saved, **full), dtype, f"{absorb} {list(kw)}")


@pytest.mark.parametrize("absorb", ABSORB)
def test_backward_near_and_at_degenerate_values(rng, absorb):
    """The guard on 1/(s_j - s_i): two kept values 1e-5 apart still get the exact gradient;
    equal values (kept or discarded) and kept zeros give a finite one."""
    g_prod = rng.standard_normal((6, 6))

    def product_loss(max_bond):
        # a function of left @ right alone: smooth even where singular values meet
        return lambda x: np.sum(g_prod * np.matmul(*svd_truncate(x, max_bond, absorb=absorb)[:2]))

    near = with_spectrum(rng, 6, 6, np.array([3.0, 2.0 + 2e-5, 2.0, 1.0, 0.5, 0.25]), 0.05)
    for max_bond in (None, 4):
        out, saved = svd_truncate_forward(near, max_bond, absorb=absorb)
        g = svd_truncate_backward(saved, g_prod @ out.right.T, out.left.T @ g_prod)
        if max_bond is None and absorb != "none":  # left @ right = a: the gradient is g_prod
            assert np.abs(g - g_prod).max() <= 1e-8 * np.abs(g_prod).max()
        check_gradient(product_loss(max_bond), near, g, rng, n_dirs=2)

    for spectrum in ([3.0, 2.0, 2.0, 1.0, 0.5, 0.5], [3.0, 2.0, 1.0, 0.5, 0.0, 0.0]):
        a = with_spectrum(rng, 6, 6, np.array(spectrum))
        for max_bond in (None, 4):
            out, saved = svd_truncate_forward(a, max_bond, absorb=absorb)
            g = svd_truncate_backward(saved, g_prod @ out.right.T, out.left.T @ g_prod, out.s)
            assert np.all(np.isfinite(g)), (spectrum, max_bond)


def test_float32_forward_matches_float64(rng):
    a = rng.standard_normal((4, 10, 7))
    o32 = svd_truncate(a.astype(np.float32), 5)
    o64 = svd_truncate(a.astype(np.float32).astype(np.float64), 5)
    for name in SVDTruncation._fields:
        assert np.abs(getattr(o32, name) - getattr(o64, name)).max() <= RTOL[np.float32]


@pytest.mark.parametrize("kwargs,error,match", [
    ({"a": np.ones((3, 3), np.int64)}, TypeError, "a: expected a float32 or float64"),
    ({"a": np.ones((3, 3), np.complex128)}, TypeError, "a: expected"),
    ({"a": np.ones((3, 3), np.float16)}, TypeError, "a: expected float32 or float64"),
    ({"a": np.ones(5)}, ValueError, "a: expected an array of matrices"),
    ({"a": np.ones((2, 0, 3))}, ValueError, "a: expected matrices with m >= 1"),
    ({"a": np.array([[1.0, np.nan], [np.inf, -np.inf]])}, ValueError,
     r"a: expected finite values, got 3 NaN/Inf"),
    ({"max_bond": 0}, ValueError, "max_bond: expected None or a positive integer"),
    ({"max_bond": -2}, ValueError, "max_bond"),
    ({"max_bond": 2.5}, TypeError, "max_bond: expected None or a positive integer"),
    ({"max_bond": 2.0}, TypeError, "max_bond"),
    ({"max_bond": True}, TypeError, "max_bond"),
    ({"max_bond": "3"}, TypeError, "max_bond"),
    ({"cutoff": -1e-3}, ValueError, "cutoff: expected a finite number >= 0"),
    ({"cutoff": np.nan}, ValueError, "cutoff"),
    ({"cutoff": np.inf}, ValueError, "cutoff"),
    ({"cutoff": "1e-3"}, TypeError, "cutoff: expected a real number"),
    ({"cutoff": None}, TypeError, "cutoff"),
    ({"absorb": "middle"}, ValueError, r"absorb: expected one of \['both', 'left', 'right', 'none'\]"),
    ({"absorb": None}, ValueError, "absorb"),
])
def test_bad_input_is_named(kwargs, error, match):
    args = {"a": np.ones((2, 3, 3)), "max_bond": None, "cutoff": 0.0, "absorb": "both"}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        svd_truncate_forward(**args)
    with pytest.raises(error, match=match):
        svd_truncate(**args)


def test_numpy_integers_are_accepted_as_max_bond(rng):
    a = rng.standard_normal((2, 5, 5))
    assert svd_truncate(a, np.int32(2)).s.shape == (2, 2)
    assert svd_truncate(a, 99).s.shape == (2, 5)  # more than min(m, n) is min(m, n)


def test_bad_gradients_are_named(rng):
    out, saved = svd_truncate_forward(rng.standard_normal((2, 5, 4)), 3)
    with pytest.raises(ValueError, match=r"g_left: expected shape \(2, 5, 3\)"):
        svd_truncate_backward(saved, np.zeros((2, 5, 4)))
    with pytest.raises(ValueError, match=r"g_right: expected shape \(2, 3, 4\)"):
        svd_truncate_backward(saved, None, np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"g_s: expected shape \(2, 3\)"):
        svd_truncate_backward(saved, g_s=np.zeros((2, 4)))
    with pytest.raises(TypeError, match="g_left: expected a float32 or float64"):
        svd_truncate_backward(saved, np.zeros((2, 5, 3), np.int64))
    with pytest.raises(TypeError, match="saved: expected the SVDSaved"):
        svd_truncate_backward((1, 2, 3), out.left)
