import numpy as np
import pytest

from conftest import DTYPES, assert_close
from fasttn.ops.feature_maps import feature_map, feature_map_reference, gram_matrix, n_channels

CASES = [("fourier", 18, False), ("fourier", 2, True), ("legendre", 6, False),
         ("legendre", 3, True), ("cos_sin", 2, False)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,n,const", CASES)
def test_kernel_matches_definition(rng, dtype, name, n, const):
    x = rng.random((3, 17)).astype(dtype)
    out = feature_map(x, name, n, const)
    assert out.shape == (3, 17, n_channels(name, n, const)) and out.dtype == dtype
    ref = feature_map_reference(x.astype(np.float64), name, n, const,
                                np.empty(out.shape, np.float64))
    assert_close(out, ref, dtype, name)


@pytest.mark.parametrize("name,n,const", CASES[:4])
def test_orthonormal_on_unit_interval(name, n, const):
    k = gram_matrix(name, n, const, with_constant_channel=False)
    np.testing.assert_allclose(k, np.eye(len(k)), atol=1e-12)


def test_fourier_values_follow_eq_19(rng):
    x = rng.random(5)
    out = feature_map(x, "fourier", 4, True)
    np.testing.assert_allclose(out[:, 0], 1.0)
    np.testing.assert_allclose(out[:, 3], np.sqrt(2) * np.cos(4 * np.pi * x), rtol=1e-12)
    np.testing.assert_allclose(out[:, 4], np.sqrt(2) * np.sin(4 * np.pi * x), rtol=1e-12)


@pytest.mark.parametrize("name,n,match", [("fourier", 3, "even"), ("cos_sin", 4, "exactly 2"),
                                          ("wavelet", 2, "feature_map")])
def test_bad_arguments_are_named(name, n, match):
    with pytest.raises(ValueError, match=match):
        feature_map(np.zeros(3), name, n)
