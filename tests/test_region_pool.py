import numpy as np
import pytest

from conftest import DTYPES, assert_close, check_gradient
from fasttn.ops.region_pool import (lse_pool_backward, lse_pool_forward, mean_log_softmax,
                                    scan_windows, scan_windows_backward, translate)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,g,s,p", [(2, 4, 2, 3), (1, 5, 4, 2), (3, 8, 4, 5), (2, 3, 3, 1)])
def test_scan_windows_are_every_window_and_the_backward_its_adjoint(rng, dtype, n, g, s, p):
    x = rng.standard_normal((n, g, g, p)).astype(dtype)
    out = scan_windows(x, s)
    side = g - s + 1
    assert out.shape == (n, side, side, s, s, p) and out.dtype == dtype
    for i in range(side):
        for j in range(side):
            np.testing.assert_array_equal(out[:, i, j], x[:, i:i + s, j:j + s])
    # <scan(x), w> == <x, scan_backward(w)> for any w: the backward is the adjoint
    w = rng.standard_normal(out.shape).astype(dtype)
    g_x = scan_windows_backward(w, g)
    assert g_x.shape == x.shape and g_x.dtype == dtype
    assert_close(np.sum(g_x.astype(np.float64) * x), np.sum(w.astype(np.float64) * out),
                 dtype, "adjoint")


def test_scan_windows_refuses_a_window_larger_than_the_grid(rng):
    with pytest.raises(ValueError, match="^x: expected a square grid of at least 4x4"):
        scan_windows(rng.standard_normal((1, 3, 3, 2)), 4)
    with pytest.raises(ValueError, match="^x: "):
        scan_windows(rng.standard_normal((1, 4, 5, 2)), 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,r,c", [(3, 1, 2), (2, 9, 2), (4, 25, 10)])
def test_lse_pool_is_the_log_mean_exp_and_its_gradient(rng, dtype, n, r, c):
    z = rng.standard_normal((n, r, c)).astype(dtype)
    scores, saved = lse_pool_forward(z)
    assert scores.shape == (n, c) and scores.dtype == np.float64
    expected = np.log(np.mean(np.exp(z.astype(np.float64)), axis=1))
    np.testing.assert_allclose(scores, expected, rtol=1e-12, atol=1e-12)
    # a weighted sum of the scores, differentiated in float64
    w = rng.standard_normal((n, c))
    z64 = z.astype(np.float64)
    grad = lse_pool_backward(lse_pool_forward(z64)[1], w)
    check_gradient(lambda v: float(np.sum(w * lse_pool_forward(v)[0])), z64, grad, rng)


def test_lse_pool_is_stable_far_from_zero():
    # scores of +-1000 overflow a naive exp; one strong position dominates the pool
    z = np.full((1, 4, 2), -1000.0)
    z[0, 2, 1] = 1000.0
    scores, saved = lse_pool_forward(z)
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores[0], [-1000.0, 1000.0 - np.log(4)])
    np.testing.assert_allclose(saved[0, :, 1], [0, 0, 1, 0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dy,dx", [(0, 0), (2, -3), (-1, 4), (5, 5), (-6, 0), (9, 1)])
def test_translate_moves_pixels_and_fills_with_zero(rng, dtype, dy, dx):
    X = rng.uniform(0.1, 1, (2, 6, 7)).astype(dtype)
    out = translate(X, dy, dx)
    assert out.shape == X.shape and out.dtype == dtype
    for r in range(6):
        for c in range(7):
            inside = 0 <= r - dy < 6 and 0 <= c - dx < 7
            expected = X[:, r - dy, c - dx] if inside else np.zeros(2, dtype)
            np.testing.assert_array_equal(out[:, r, c], expected)
    assert np.shares_memory(out, X) is False


def test_mean_log_softmax_is_the_mean_of_the_copies_log_probabilities(rng):
    copies = [rng.standard_normal((4, 3)) * 10 for _ in range(3)]
    out = mean_log_softmax(copies)
    expected = np.mean([z - np.log(np.exp(z).sum(axis=1, keepdims=True)) for z in copies],
                       axis=0)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    # scores far beyond exp's range stay finite
    assert np.isfinite(mean_log_softmax([np.array([[1e4, -1e4]], np.float32)])).all()
