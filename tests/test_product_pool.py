import numpy as np
import pytest

from conftest import DTYPES, assert_close, check_gradient
from fasttn.ops import (product_pool, product_pool_backward, product_pool_forward,
                        product_pool_log, product_pool_log_backward)
from fasttn.ops.product_pool import reference as ref

SHAPES = [((2, 8, 3), 2), ((5, 16, 7), 2), ((3, 12, 4), 4), ((1, 2, 1), 2), ((2, 4, 6, 3), 2),
          ((3, 8, 2, 5), 2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,window", SHAPES)
def test_forward_backward_match_reference(rng, dtype, shape, window):
    x = rng.standard_normal(shape).astype(dtype)
    out, saved = product_pool_forward(x, window)
    assert out.dtype == dtype
    assert_close(out, ref.product_pool(x, window), dtype, "forward")
    g = rng.standard_normal(out.shape).astype(dtype)
    assert_close(product_pool_backward(saved, g), ref.product_pool_backward(x, g, window),
                 dtype, "backward")


@pytest.mark.parametrize("shape,window", SHAPES)
def test_backward_finite_difference(rng, shape, window):
    x = rng.standard_normal(shape)
    g = rng.standard_normal(product_pool(x, window).shape)
    grad = product_pool_backward((x, window), g)
    check_gradient(lambda v: float(np.sum(g * product_pool(v, window))), x, grad, rng)


def test_reference_is_the_pair_product(rng):
    x = rng.standard_normal((2, 6, 3))
    np.testing.assert_allclose(ref.product_pool(x), x[:, 0::2] * x[:, 1::2])
    y = rng.standard_normal((1, 4, 4, 2))
    np.testing.assert_allclose(ref.product_pool(y)[0, 1, 0],
                               y[0, 2, 0] * y[0, 2, 1] * y[0, 3, 0] * y[0, 3, 1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,window", SHAPES)
def test_log_domain_agrees_with_linear(rng, dtype, shape, window):
    x = rng.standard_normal(shape).astype(dtype)
    la, sg = product_pool_log(np.log(np.abs(x)), np.sign(x).astype(np.int8), window)
    la_ref, sg_ref = ref.product_pool_log(np.log(np.abs(x)), np.sign(x).astype(np.int8), window)
    assert_close(la, la_ref, dtype, "log forward")
    np.testing.assert_array_equal(sg, sg_ref)
    assert_close(sg * np.exp(la), ref.product_pool(x, window), dtype, "log vs linear")
    g = rng.standard_normal(la.shape)
    gl = product_pool_log_backward(g, x.shape, window)
    # d(sum g * log|out|)/d log|x| equals x * d(sum (g/out) * out)/dx
    out = ref.product_pool(x.astype(np.float64), window)
    lin = ref.product_pool_backward(x.astype(np.float64), g / out, window) * x
    assert_close(gl, lin, dtype, "log backward vs linear")


def test_log_domain_stays_finite_where_linear_overflows(rng):
    # 2**20 factors of magnitude ~e^{+-1}: the linear product over/underflows, the log does not.
    la = rng.standard_normal((1, 2 ** 20, 1))
    sg = np.where(rng.random(la.shape) < 0.5, -1, 1).astype(np.int8)
    for _ in range(20):
        la, sg = product_pool_log(la, sg)
    assert la.shape == (1, 1, 1) and np.isfinite(la).all()
    assert abs(la[0, 0, 0]) < 1e5


@pytest.mark.parametrize("bad,match", [
    (np.ones((2, 7, 3)), "divisible by window"),
    (np.ones((2, 3, 4, 1)), "even height and width"),
    (np.ones((2, 8)), "3 or 4-dimensional"),
    (np.ones((2, 8, 3), dtype=np.int64), "float32 or float64"),
])
def test_bad_input_is_named(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        product_pool(bad)
