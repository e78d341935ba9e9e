"""tree_node: the Numba kernel against the einsum spec, the spec against explicit loops,
gradients against finite differences, and the errors for bad input."""
import itertools

import numpy as np
import pytest

from fasttn.ops import tree_node, tree_node_backward, tree_node_forward
from fasttn.ops.tree_node import reference as ref

from conftest import DTYPES, assert_close, check_gradient

# (batch, H, W, p, chi): loop path (p^4 chi <= 256) and BLAS path, a single position (the
# images then split into parallel groups), non-square grids, p = 1
SHAPES = [(3, 4, 6, 2, 3), (5, 2, 2, 3, 4), (7, 4, 4, 4, 8), (70, 4, 4, 8, 8), (9, 2, 2, 8, 5),
          (2, 8, 8, 2, 2), (4, 2, 6, 1, 3), (1, 6, 2, 3, 1)]


def _inputs(rng, shape, dtype):
    n, h, w, p, chi = shape
    x = rng.standard_normal((n, h, w, p)).astype(dtype)
    weights = rng.standard_normal((h // 2, w // 2, p, p, p, p, chi)).astype(dtype)
    return x, weights


def test_reference_is_the_literal_sum(rng):
    x, w = _inputs(rng, (2, 4, 2, 2, 3), np.float64)
    out = ref.tree_node_forward(x, w)[0]
    for s, i, j, z in itertools.product(range(2), range(2), range(1), range(3)):
        total = 0.0
        for a, b, c, d in itertools.product(range(2), repeat=4):
            total += (x[s, 2 * i, 2 * j, a] * x[s, 2 * i, 2 * j + 1, b]
                      * x[s, 2 * i + 1, 2 * j, c] * x[s, 2 * i + 1, 2 * j + 1, d]
                      * w[i, j, a, b, c, d, z])
        assert abs(out[s, i, j, z] - total) <= 1e-12 * max(1.0, abs(total))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_reference(rng, dtype, shape):
    x, w = _inputs(rng, shape, dtype)
    out, saved = tree_node_forward(x, w)
    exp, exp_saved = ref.tree_node_forward(x.astype(np.float64), w.astype(np.float64))
    assert out.dtype == dtype and out.shape == exp.shape
    assert_close(out, exp, dtype, "out")
    g = rng.standard_normal(out.shape).astype(dtype)
    g_x, g_w = tree_node_backward(saved, g)
    e_x, e_w = ref.tree_node_backward(exp_saved, g.astype(np.float64))
    assert g_x.dtype == dtype and g_w.dtype == dtype
    assert_close(g_x, e_x, dtype, "g_x")
    assert_close(g_w, e_w, dtype, "g_w")
    none_x, g_w2 = tree_node_backward(saved, g, need_g_x=False)
    assert none_x is None
    assert np.array_equal(g_w2, g_w)


@pytest.mark.parametrize("shape", [(3, 4, 6, 2, 3), (4, 2, 2, 5, 4)])
def test_backward_finite_differences(rng, shape):
    x, w = _inputs(rng, shape, np.float64)
    g = rng.standard_normal(tree_node(x, w).shape)
    g_x, g_w = tree_node_backward(tree_node_forward(x, w)[1], g)
    check_gradient(lambda v: float(np.sum(g * tree_node(v, w))), x, g_x, rng)
    check_gradient(lambda v: float(np.sum(g * tree_node(x, v))), w, g_w, rng)
    r_x, r_w = ref.tree_node_backward((x, w), g)
    check_gradient(lambda v: float(np.sum(g * ref.tree_node_forward(v, w)[0])), x, r_x, rng)
    check_gradient(lambda v: float(np.sum(g * ref.tree_node_forward(x, v)[0])), w, r_w, rng)


def test_empty_batch(rng):
    x, w = _inputs(rng, (0, 4, 4, 2, 3), np.float64)
    out, saved = tree_node_forward(x, w)
    assert out.shape == (0, 2, 2, 3)
    g_x, g_w = tree_node_backward(saved, out)
    assert g_x.shape == x.shape and np.all(g_w == 0)


@pytest.mark.parametrize("args,match", [
    (((2, 3, 4, 2), (1, 2, 2, 2, 2, 2, 3)), "x: expected a grid whose height and width"),
    (((2, 4, 4, 2), (2, 2, 2, 2, 2, 2)), "w: expected a 7-dimensional"),
    (((2, 4, 4, 2), (2, 1, 2, 2, 2, 2, 3)), r"w: expected shape \(2, 2, 2, 2, 2, 2, 'chi'\)"),
    (((2, 4, 4, 3), (2, 2, 2, 2, 2, 2, 3)), "site dimension 3"),
    (((4, 4, 2), (2, 2, 2, 2, 2, 2, 3)), "x: expected a 4-dimensional"),
])
def test_bad_shapes(args, match):
    xs, ws = args
    with pytest.raises(ValueError, match=match):
        tree_node(np.ones(xs), np.ones(ws))


def test_bad_dtypes_and_gradient_shape(rng):
    x, w = _inputs(rng, (2, 4, 4, 2, 3), np.float64)
    with pytest.raises((TypeError, ValueError), match="w"):
        tree_node(x, w.astype(np.float32))
    with pytest.raises((TypeError, ValueError), match="x"):
        tree_node(x.astype(np.int64), w)
    saved = tree_node_forward(x, w)[1]
    with pytest.raises(ValueError, match=r"g_out: expected shape \(2, 2, 2, 3\)"):
        tree_node_backward(saved, np.ones((2, 2, 2, 4)))
