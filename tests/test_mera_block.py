import numpy as np
import pytest

from conftest import RTOL, DTYPES, assert_close
from conftest import mera_inputs as make
from fasttn.ops import mera_block, mera_block_backward, mera_block_forward
from fasttn.ops.mera_block import reference as ref

# (batch, H, W, p, b, chi, d_out)
CASES = [(2, 8, 4, 2, 3, 2, 3), (1, 4, 8, 3, 2, 3, 2), (3, 8, 8, 2, 4, 4, 4), (2, 4, 4, 1, 2, 2, 5)]
# wide sites (raw patches, p >= WIDE_SITES): the route that contracts the centre sites one by one
WIDE_CASES = [(2, 8, 4, 9, 2, 3, 3), (1, 4, 8, 10, 3, 2, 2)]




def brute_force_block(sites, u1, iso, u2, top):
    """One block, every index written out: sum over all bonds of the product of all tensors."""
    f, g, j, k = sites[5], sites[6], sites[9], sites[10]
    z = np.einsum("a,b,c,d,abcdQRST->QRST", f, g, j, k, u1)
    outer = [(0, 1, 4), (2, 3, 7), (8, 12, 13), (11, 14, 15)]
    v = [np.einsum("a,b,c,abcQA->QA", *(sites[s] for s in idx), iso[q])
         for q, idx in enumerate(outer)]
    t2 = np.einsum("QRST,QA,RB,SC,TD->ABCD", z, *v)
    return np.einsum("ABCD,ABCDEFGH,EFGHZ->Z", t2, u2, top)


def test_wide_sites_take_their_own_route():
    import importlib

    pkg = importlib.import_module("fasttn.ops.mera_block")  # the package, not its function

    assert all(case[3] >= pkg.wide.WIDE_SITES for case in WIDE_CASES)
    assert all(case[3] < pkg.wide.WIDE_SITES for case in CASES)
    assert pkg._impl(np.zeros((1, 4, 4, pkg.wide.WIDE_SITES))) is pkg.wide
    assert pkg._impl(np.zeros((1, 4, 4, pkg.wide.WIDE_SITES - 1))) is pkg.cpu


def test_reference_is_the_network_block_by_block(rng):
    x, u1, iso, u2, top = make(rng, 2, 8, 4, 2, 3, 2, 3, np.float64)
    out, _ = ref.mera_block_forward(x, u1, iso, u2, top)
    for n in range(2):
        for bi in range(2):
            for bj in range(1):
                sites = [x[n, 4 * bi + r, 4 * bj + c] for r in range(4) for c in range(4)]
                assert_close(out[n, bi, bj], brute_force_block(sites, u1, iso, u2, top),
                             np.float64, "block")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES + WIDE_CASES)
def test_kernel_matches_reference(rng, dtype, case):
    args = make(rng, *case, dtype)
    out, saved = mera_block_forward(*args)
    f64 = [a.astype(np.float64) for a in args]
    out_ref, saved_ref = ref.mera_block_forward(*f64)
    assert out.dtype == dtype and out.shape == out_ref.shape
    assert_close(out, out_ref, dtype, "forward")
    assert_close(mera_block(*args), out_ref, dtype, "mera_block")
    g = rng.standard_normal(out.shape)
    # Rounding scales with the sum of |terms| of each entry, which is the same multilinear
    # network on |inputs|: measuring against it keeps entries that cancel (p = 1 leaves a
    # gradient of 32 numbers whose largest can be a near-cancellation) from failing float32.
    _, saved_abs = ref.mera_block_forward(*[np.abs(a) for a in f64])
    for name, a, r, r_abs in zip(("g_x", "g_u1", "g_w", "g_u2", "g_top"),
                                 mera_block_backward(saved, g.astype(dtype)),
                                 ref.mera_block_backward(saved_ref, g),
                                 ref.mera_block_backward(saved_abs, np.abs(g))):
        assert a.dtype == dtype and a.shape == r.shape, name
        err = float(np.abs(a - r).max() / np.abs(r_abs).max())
        assert err <= RTOL[dtype], f"{name}: error {err:.3e} relative to the sum of |terms|"


@pytest.mark.parametrize("case", CASES[:2] + WIDE_CASES[:1])
def test_backward_finite_differences(rng, case):
    args = make(rng, *case, np.float64)
    out, saved = mera_block_forward(*args)
    g = rng.standard_normal(out.shape)
    grads = mera_block_backward(saved, g)
    h = 1e-6
    for k, (a, ga) in enumerate(zip(args, grads)):
        d = rng.standard_normal(a.shape)
        plus = list(args)
        minus = list(args)
        plus[k] = a + h * d
        minus[k] = a - h * d
        fd = (np.sum(g * mera_block(*plus)) - np.sum(g * mera_block(*minus))) / (2 * h)
        assert abs(fd - np.sum(ga * d)) <= 1e-6 * max(1.0, abs(fd)), f"operand {k}"


@pytest.mark.parametrize("which,bad,match", [
    (0, np.zeros((2, 6, 4, 2)), "multiples of 4"),
    (0, np.zeros((2, 8, 4)), "x"),
    (1, np.zeros((2, 2, 2, 2, 3, 3, 3, 2)), "u1: expected shape"),
    (2, np.zeros((4, 2, 2, 2, 2, 2)), "w: expected shape"),
    (3, np.zeros((2,) * 7), "u2"),
    (4, np.zeros((3, 2, 2, 2, 3)), "top: expected shape"),
    (1, np.zeros((2, 2, 2, 2, 3, 3, 3, 3), np.float32), "u1"),
])
def test_bad_input_is_named(rng, which, bad, match):
    args = list(make(rng, 2, 8, 4, 2, 3, 2, 3, np.float64))
    args[which] = bad
    with pytest.raises((ValueError, TypeError), match=match):
        mera_block_forward(*args)
    out, saved = mera_block_forward(*make(rng, 2, 8, 4, 2, 3, 2, 3, np.float64))
    with pytest.raises(ValueError, match="g_out: expected shape"):
        mera_block_backward(saved, np.zeros((2, 2, 1, 4)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_end_block_is_the_2x2_network(rng, dtype):
    from fasttn.ops import mera_end_backward, mera_end_forward

    n, p, b, d_out = 3, 3, 2, 4
    x = rng.standard_normal((n, 2, 2, p)).astype(dtype)
    u = rng.standard_normal((p,) * 4 + (b,) * 4).astype(dtype)
    top = rng.standard_normal((b,) * 4 + (d_out,)).astype(dtype)
    out, saved = mera_end_forward(x, u, top)
    x64, u64, top64 = (a.astype(np.float64) for a in (x, u, top))
    expected = np.einsum("na,nb,nc,nd,abcdQRST,QRSTZ->nZ", x64[:, 0, 0], x64[:, 0, 1],
                         x64[:, 1, 0], x64[:, 1, 1], u64, top64)
    assert out.shape == (n, 1, 1, d_out) and out.dtype == dtype
    assert_close(out[:, 0, 0], expected, dtype, "end block")
    g = rng.standard_normal(out.shape)
    grads = mera_end_backward(saved, g.astype(dtype))
    h = 1e-6
    args = [x64, u64, top64]
    for k, ga in enumerate(grads):
        d = rng.standard_normal(args[k].shape)
        plus, minus = list(args), list(args)
        plus[k] = args[k] + h * d
        minus[k] = args[k] - h * d
        fd = (np.sum(g * mera_end_forward(*plus)[0]) - np.sum(g * mera_end_forward(*minus)[0]))
        fd /= 2 * h
        tol = 1e-6 if dtype == np.float64 else 1e-3
        assert abs(fd - np.sum(ga * d)) <= tol * max(1.0, abs(fd)), f"operand {k}"
    with pytest.raises(ValueError, match="2x2 grid"):
        mera_end_forward(np.zeros((1, 4, 4, p), dtype), u, top)
