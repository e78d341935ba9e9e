import math

import numpy as np
import pytest

from conftest import DTYPES, assert_close
from fasttn.ops.feature_maps import feature_map, feature_map_reference, gram_matrix, n_channels

CASES = [("fourier", 18, False), ("fourier", 2, True), ("legendre", 6, False),
         ("legendre", 3, True), ("cos_sin", 2, False), ("cos_sin", 3, True)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,n,const", CASES)
def test_kernel_matches_definition(rng, dtype, name, n, const):
    x = rng.random((3, 17)).astype(dtype)
    out = feature_map(x, name, n, const)
    assert out.shape == (3, 17, n_channels(name, n, const)) and out.dtype == dtype
    ref = feature_map_reference(x.astype(np.float64), name, n, const,
                                np.empty(out.shape, np.float64))
    assert_close(out, ref, dtype, name)


@pytest.mark.parametrize("name,n,const", [c for c in CASES if c[0] != "cos_sin"])
def test_orthonormal_on_unit_interval(name, n, const):
    k = gram_matrix(name, n, const, with_constant_channel=False)
    np.testing.assert_allclose(k, np.eye(len(k)), atol=1e-12)


def test_fourier_values_follow_eq_19(rng):
    x = rng.random(5)
    out = feature_map(x, "fourier", 4, True)
    np.testing.assert_allclose(out[:, 0], 1.0)
    np.testing.assert_allclose(out[:, 3], np.sqrt(2) * np.cos(4 * np.pi * x), rtol=1e-12,
                               atol=1e-14)  # values near a zero crossing
    np.testing.assert_allclose(out[:, 4], np.sqrt(2) * np.sin(4 * np.pi * x), rtol=1e-12,
                               atol=1e-14)


@pytest.mark.parametrize("name,n,match", [("fourier", 3, "even"),
                                          ("cos_sin", 1, "^n_features: .*at least 2.*got 1"),
                                          ("cos_sin", 0, "^n_features: .*at least 2.*got 0"),
                                          ("wavelet", 2, "feature_map")])
def test_bad_arguments_are_named(name, n, match):
    with pytest.raises(ValueError, match=match):
        feature_map(np.zeros(3), name, n)


# Several blocks of the kernel, a partial last block, and a single pixel.
SHAPES = [(1,), (3, 17), (2, 3, 300)]


def _unit_inputs(rng, shape, dtype):
    # The end points and the midpoint are where cos or sin vanish or meet.
    x = rng.random(shape)
    x.reshape(-1)[:3] = [0.0, 1.0, 0.5][:x.size]
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("const", [False, True])
@pytest.mark.parametrize("d", [2, 3, 4, 7])
def test_cos_sin_kernel_matches_binomial_definition(rng, dtype, shape, const, d):
    x = _unit_inputs(rng, shape, dtype)
    out = feature_map(x, "cos_sin", d, const)
    assert out.shape == shape + (d + const,) and out.dtype == dtype
    ref = feature_map_reference(x.astype(np.float64), "cos_sin", d, const,
                                np.empty(out.shape, np.float64))
    assert_close(out, ref, dtype, f"cos_sin d={d}")
    if const:
        assert np.all(out[..., 0] == 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cos_sin_degree_2_is_cos_and_sin(rng, dtype):
    x = _unit_inputs(rng, (4, 50), dtype)
    out = feature_map(x, "cos_sin", 2)
    ang = (np.pi / 2) * x.astype(np.float64)
    assert_close(out, np.stack([np.cos(ang), np.sin(ang)], axis=-1), dtype, "[cos, sin]")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [2, 3, 4, 7])
def test_cos_sin_squares_sum_to_one(rng, dtype, d):
    out = feature_map(_unit_inputs(rng, (5, 60), dtype), "cos_sin", d)
    assert_close((out.astype(np.float64) ** 2).sum(-1), np.ones(out.shape[:-1]), dtype,
                 f"sum of squares, d={d}")


def test_cos_sin_degree_3_by_hand():
    # cos = sin = 1/sqrt(2) at x = 1/2: [cos^2, sqrt(2) cos sin, sin^2] = [1/2, 1/sqrt(2), 1/2]
    out = feature_map(np.array([0.0, 0.5, 1.0]), "cos_sin", 3)
    expected = [[1, 0, 0], [0.5, np.sqrt(0.5), 0.5], [0, 0, 1]]
    np.testing.assert_allclose(out, expected, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("d", [2, 3, 7])
def test_cos_sin_gram_matrix_is_exact(d):
    # int_0^1 cos^a sin^b (pi x / 2) dx = B((a + 1) / 2, (b + 1) / 2) / pi
    def beta(p, q):
        return math.gamma(p) * math.gamma(q) / math.gamma(p + q)

    expected = np.array([[math.sqrt(math.comb(d - 1, i) * math.comb(d - 1, j))
                          * beta((2 * d - 1 - i - j) / 2, (i + j + 1) / 2) / np.pi
                          for j in range(d)] for i in range(d)])
    k = gram_matrix("cos_sin", d, False, with_constant_channel=False)
    np.testing.assert_allclose(k, expected, rtol=1e-12)
    np.testing.assert_allclose(np.trace(k), 1.0, rtol=1e-12)  # the squares sum to 1
