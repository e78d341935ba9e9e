import numpy as np
import pytest

from conftest import DTYPES, RTOL, assert_close, check_gradient
from fasttn.ops import (qcnn_level, qcnn_level_backward, qcnn_level_forward,
                        qcnn_level_log_backward, qcnn_level_log_forward,
                        qcnn_level_scaled_forward)
from fasttn.ops.qcnn_level import reference as ref

# the last cases span several 64-row chunks
CASES = [(3, 8, 5, 7, 2), (2, 16, 4, 4, 4), (4, 6, 3, 5, 1), (1, 4, 18, 36, 2), (6, 32, 9, 3, 2),
         (2, 8, 30, 7, 2), (3, 16, 27, 5, 4), (4, 64, 6, 5, 4), (2, 100, 30, 7, 1)]


def make(rng, b, s, d_in, d_out, dtype, training):
    x = rng.standard_normal((b, s, d_in)).astype(dtype) + rng.standard_normal(d_in).astype(dtype)
    weight = (rng.standard_normal((d_out, d_in)) / np.sqrt(d_in)).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, d_in).astype(dtype)
    beta = rng.standard_normal(d_in).astype(dtype)
    stats = None if training else (rng.standard_normal(d_in), rng.uniform(0.5, 2.0, d_in))
    return x, weight, gamma, beta, stats


def ref_kwargs(stats):
    return {} if stats is None else {"mean": stats[0], "var": stats[1]}


def f64(*arrays):
    # The reference runs in float64 on the same (possibly float32) inputs: it is the exact answer
    # the fast path is measured against, so the tolerance covers the fast path's rounding alone.
    return [np.asarray(a, np.float64) for a in arrays]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("b,s,d_in,d_out,window", CASES)
def test_linear_matches_reference(rng, dtype, training, b, s, d_in, d_out, window):
    x, w, g, be, stats = make(rng, b, s, d_in, d_out, dtype, training)
    kw = dict(window=window, eps=1e-5, training=training)
    out, saved, next_stats = qcnn_level_forward(x, w, g, be, stats=stats, **kw)
    out_ref, saved_ref = ref.qcnn_level_forward(*f64(x, w, g, be), **kw, **ref_kwargs(stats))
    assert out.dtype == dtype and out.shape == (b, s // window, d_out)
    assert_close(out, out_ref, dtype, "forward")
    mean, var = ref.batch_stats(out_ref)
    assert_close(next_stats[0], mean, dtype, "next mean")
    assert_close(next_stats[1], var, dtype, "next var")
    g_out = rng.standard_normal(out.shape).astype(dtype)
    for name, a, r in zip(("g_x", "g_weight", "g_gamma", "g_beta"),
                          qcnn_level_backward(saved, g_out),
                          ref.qcnn_level_backward(saved_ref, g_out.astype(np.float64))):
        assert a.dtype == dtype
        assert_close(a, r, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [1, 2, 4])
def test_deferred_batch_norm_term_matches_reference(rng, dtype, window):
    # Two training levels; the upper one hands its batch-statistics term down instead of
    # applying it, and the lower one applies it to g_out on the fly: both must equal the
    # reference chain, which applies it in full.
    x, w1, g1, b1, _ = make(rng, 3, 16, 5, 7, dtype, True)
    _, w2, g2, b2, _ = make(rng, 1, 1, 7, 6, dtype, True)
    kw = dict(eps=1e-5, training=True)
    h, saved1, _ = qcnn_level_forward(x, w1, g1, b1, window=window, **kw)
    out, saved2, _ = qcnn_level_forward(h, w2, g2, b2, window=2, **kw)
    h_ref, saved1_ref = ref.qcnn_level_forward(*f64(x, w1, g1, b1), window=window, **kw)
    _, saved2_ref = ref.qcnn_level_forward(h_ref, *f64(w2, g2, b2), window=2, **kw)
    g_out = rng.standard_normal(out.shape).astype(dtype)
    g_h_raw, *grads2, affine = qcnn_level_backward(saved2, g_out, return_affine=True)
    ref2 = ref.qcnn_level_backward(saved2_ref, g_out.astype(np.float64))
    assert_close(g_h_raw - (affine[0] * h + affine[1]), ref2[0], dtype, "g_h with its term")
    for name, a, r in zip(("g_weight", "g_gamma", "g_beta"), grads2, ref2[1:]):
        assert_close(a, r, dtype, name)
    grads1 = qcnn_level_backward(saved1, g_h_raw, g_out_affine=affine)
    ref1 = ref.qcnn_level_backward(saved1_ref, ref2[0])
    names = ("g_x", "g_weight", "g_gamma", "g_beta")
    if window == 1:
        # h is affine in xi, and a batch-normalised input's gradient sums to zero over the
        # batch, so g_beta is exactly zero: measured against the size of its terms instead
        scale = np.abs(w1).sum(axis=0).max() * np.abs(ref2[0]).sum(axis=(0, 1)).max()
        assert np.abs(grads1[3]).max() <= 10 * RTOL[np.dtype(dtype).type] * scale
        names = names[:3]
    for name, a, r in zip(names, grads1, ref1):
        assert_close(a, r, dtype, name + " below")
    # eval mode has no batch-statistics term
    _, saved_eval, _ = qcnn_level_forward(h, w2, g2, b2, window=2, eps=1e-5, training=False,
                                          stats=(np.zeros(7), np.ones(7)))
    assert qcnn_level_backward(saved_eval, g_out, return_affine=True)[4] is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("b,s,d_in,d_out,window", CASES)
def test_log_matches_reference_and_linear(rng, dtype, training, b, s, d_in, d_out, window):
    x, w, g, be, stats = make(rng, b, s, d_in, d_out, dtype, training)
    kw = dict(window=window, eps=1e-5, training=training)
    la, sg = np.log(np.abs(x)), np.sign(x).astype(np.int8)
    out_la, out_sg, saved, _ = qcnn_level_log_forward(la, sg, w, g, be, stats=stats, **kw)
    ref_la, ref_sg, saved_ref = ref.qcnn_level_log_forward(*f64(la), sg, *f64(w, g, be), **kw,
                                                           **ref_kwargs(stats))
    # Compared as values: near a zero of xi the log magnifies rounding, the value does not.
    assert_close(out_sg * np.exp(out_la), ref_sg * np.exp(ref_la), dtype, "log forward")
    # The gradients of L = sum(g_lin * out): dL/dlogabs_out = g_lin * out, each path fed its own
    # out as in training, so dL/dxi = g_lin * out / xi is the well-conditioned product of the
    # window's other members (out / xi taken from two different roundings of xi would not be).
    g_lin = rng.standard_normal(out_la.shape)
    out_lin, saved_lin = ref.qcnn_level_forward(*f64(x, w, g, be), **kw, **ref_kwargs(stats))
    grads = qcnn_level_log_backward(saved, (g_lin * out_sg * np.exp(out_la)).astype(dtype))
    grads_ref = ref.qcnn_level_log_backward(saved_ref, g_lin * ref_sg * np.exp(ref_la))
    for name, a, r in zip(("g_logabs", "g_weight", "g_gamma", "g_beta"), grads, grads_ref):
        assert_close(a, r, dtype, name)
    # Against the linear domain in float64: same values, and the same gradients once
    # dL/dlogabs = x dL/dx.
    assert_close(out_sg * np.exp(out_la.astype(np.float64)), out_lin, dtype, "log vs linear")
    lin = ref.qcnn_level_backward(saved_lin, g_lin)
    assert_close(grads[0], lin[0] * x, dtype, "g_logabs vs linear")
    for name, a, r in zip(("g_weight", "g_gamma", "g_beta"), grads[1:], lin[1:]):
        assert_close(a, r, dtype, name + " vs linear")


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("b,s,d_in,d_out,window", CASES[:3])
def test_linear_backward_finite_differences(rng, training, b, s, d_in, d_out, window):
    x, w, g, be, stats = make(rng, b, s, d_in, d_out, np.float64, training)
    kw = dict(window=window, eps=1e-5, training=training, stats=stats)
    out, saved, _ = qcnn_level_forward(x, w, g, be, **kw)
    r = rng.standard_normal(out.shape)
    g_x, g_w, g_g, g_b = qcnn_level_backward(saved, r)
    loss = lambda x_, w_=w, g_=g, b_=be: float(np.sum(r * qcnn_level(x_, w_, g_, b_, **kw)))
    check_gradient(loss, x, g_x, rng)
    check_gradient(lambda v: loss(x, w_=v), w, g_w, rng)
    check_gradient(lambda v: loss(x, g_=v), g, g_g, rng)
    check_gradient(lambda v: loss(x, b_=v), be, g_b, rng)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("b,s,d_in,d_out,window", CASES[:3])
def test_log_backward_finite_differences(rng, training, b, s, d_in, d_out, window):
    x, w, g, be, stats = make(rng, b, s, d_in, d_out, np.float64, training)
    kw = dict(window=window, eps=1e-5, training=training, stats=stats)
    la, sg = np.log(np.abs(x)), np.sign(x).astype(np.int8)
    out_la, out_sg, saved, _ = qcnn_level_log_forward(la, sg, w, g, be, **kw)
    # Loss on the represented values (smooth, unlike log|out| near a zero): dL/dlogabs_out = r*out
    r = rng.standard_normal(out_la.shape)
    g_la, g_w, g_g, g_b = qcnn_level_log_backward(saved, r * out_sg * np.exp(out_la))

    def loss(la_, w_=w, g_=g, b_=be):
        o_la, o_sg, _, _ = qcnn_level_log_forward(la_, sg, w_, g_, b_, **kw)
        return float(np.sum(r * o_sg * np.exp(o_la)))

    check_gradient(loss, la, g_la, rng)
    check_gradient(lambda v: loss(la, w_=v), w, g_w, rng)
    check_gradient(lambda v: loss(la, g_=v), g, g_g, rng)
    check_gradient(lambda v: loss(la, b_=v), be, g_b, rng)


def test_log_domain_handles_magnitudes_beyond_float_range(rng):
    # Inputs around 1e+-2000: meaningless in linear float64, ordinary in the log domain.
    b, s, d = 2, 8, 3
    x, w, g, be, _ = make(rng, b, s, d, 4, np.float64, True)
    la = np.log(np.abs(x)) + rng.choice([-4600.0, 4600.0], size=(b, s, 1))
    sg = np.sign(x).astype(np.int8)
    stats = (np.zeros(d), np.ones(d))
    out_la, _, saved, _ = qcnn_level_log_forward(la, sg, w, g, be, window=2, training=False,
                                                 stats=stats)
    assert np.isfinite(out_la).all()
    grads = qcnn_level_log_backward(saved, rng.standard_normal(out_la.shape))
    assert all(np.isfinite(a).all() for a in grads)


@pytest.mark.parametrize("kwargs,match", [
    (dict(window=3), "window"),
    (dict(x_shape=(2, 7, 3)), "divisible"),
    (dict(w_shape=(4, 2)), "weight"),
    (dict(training=False), "stats"),
    (dict(dtype_w=np.float32), "weight"),
])
def test_bad_input_is_named(rng, kwargs, match):
    x = rng.standard_normal(kwargs.get("x_shape", (2, 8, 3)))
    w = rng.standard_normal(kwargs.get("w_shape", (4, 3))).astype(kwargs.get("dtype_w", np.float64))
    g, be = np.ones(3), np.zeros(3)
    with pytest.raises((ValueError, TypeError), match=match):
        qcnn_level_forward(x, w, g, be, window=kwargs.get("window", 2),
                           training=kwargs.get("training", True))


# Against the linear level on unscaled float64 inputs: the float32 path also rounds its
# input scale into the frame, so float64 is held to 1e-9 rather than the per-op 1e-10.
RTOL_SCALED = {np.float64: 1e-9, np.float32: 1e-4}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,s,d_in,d_out,window", CASES)
def test_scaled_matches_reference_and_linear(rng, dtype, b, s, d_in, d_out, window):
    x, w, g, be, stats = make(rng, b, s, d_in, d_out, dtype, False)
    # Per-site scales from 1e-30 to 1e+30, mixed within the batch.
    logscale = rng.uniform(-70.0, 70.0, (b, s))
    kw = dict(window=window, eps=1e-5)
    out, out_ls = qcnn_level_scaled_forward(x, logscale, w, g, be, stats=stats, **kw)
    assert out.dtype == dtype and out.shape == (b, s // window, d_out)
    assert out_ls.shape == (b, s // window)
    ref_out, ref_ls = ref.qcnn_level_scaled_forward(*f64(x, logscale, w, g, be), **kw,
                                                    **ref_kwargs(stats))
    # Values compared with their scales: out * exp(ls - ref_ls) against ref_out, per site.
    assert_close(out * np.exp(out_ls - ref_ls)[..., None], ref_out, dtype, "scaled forward")
    assert np.abs(out).max(axis=2).max() <= 1.0 + 1e-6
    # Same values as the linear level in float64 on the unscaled input, where it is finite.
    x_lin = x.astype(np.float64) * np.exp(logscale)[..., None]
    lin = ref.qcnn_level_forward(x_lin, *f64(w, g, be), training=False, **kw,
                                 **ref_kwargs(stats))[0]
    scale = np.exp(out_ls)[..., None]
    err = np.abs(out * scale - lin) / np.maximum(np.abs(lin).max(axis=2, keepdims=True), 1e-300)
    assert err.max() <= RTOL_SCALED[np.dtype(dtype).type], err.max()


def test_scaled_matches_log_domain_beyond_float_range(rng):
    b, s, d = 2, 16, 3
    x, w, g, be, stats = make(rng, b, s, d, 5, np.float64, False)
    logscale = rng.choice([-3000.0, 3000.0], size=(b, s)) + rng.uniform(-5, 5, (b, s))
    out, out_ls = qcnn_level_scaled_forward(x, logscale, w, g, be, stats=stats, window=2)
    la = np.log(np.abs(x)) + logscale[..., None]
    out_la, out_sg, _, _ = qcnn_level_log_forward(la, np.sign(x).astype(np.int8), w, g, be,
                                                  window=2, training=False, stats=stats)
    assert np.isfinite(out_ls).all()
    # Compare log-magnitudes where the value is not a near-cancellation.
    big = np.abs(out) > 1e-6
    np.testing.assert_allclose((np.log(np.abs(out)) + out_ls[..., None])[big], out_la[big],
                               rtol=0, atol=1e-8)
    np.testing.assert_array_equal(np.sign(out)[big], out_sg[big])


@pytest.mark.parametrize("dtype", DTYPES)
def test_scaled_without_shift_at_tiny_scales(rng, dtype):
    # beta = mean = 0: no batch-norm shift, so the frame follows the data down to e^-2000,
    # where exp(-c) alone overflows every float type.
    x, w, g, _, _ = make(rng, 2, 8, 4, 3, dtype, False)
    be = np.zeros(4, dtype)
    stats = (np.zeros(4), rng.uniform(0.5, 2.0, 4))
    logscale = rng.uniform(-2000.0, -1000.0, (2, 8))
    out, out_ls = qcnn_level_scaled_forward(x, logscale, w, g, be, stats=stats, window=2)
    ref_out, ref_ls = ref.qcnn_level_scaled_forward(*f64(x, logscale, w, g, be), window=2,
                                                    eps=1e-5, mean=stats[0], var=stats[1])
    assert np.isfinite(out).all() and np.isfinite(out_ls).all()
    assert_close(out * np.exp(out_ls - ref_ls)[..., None], ref_out, dtype, "scaled, no shift")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,s,d_in,d_out,window", [(2, 100, 30, 7, 1), (4, 64, 6, 5, 4),
                                                     (6, 32, 9, 3, 2)])
def test_row_blocked_products_match_reference(rng, monkeypatch, dtype, b, s, d_in, d_out,
                                              window):
    # At these sizes every chunk's products fit OpenBLAS's small-matrix path in one call; 24-row
    # blocks (with uneven tails) exercise the block loops that large levels take.
    from fasttn.ops.qcnn_level import cpu
    monkeypatch.setattr(cpu, "_gemm_rows", lambda d_in, d_out: 24)
    x, w, g, be, _ = make(rng, b, s, d_in, d_out, dtype, True)
    kw = dict(window=window, eps=1e-5, training=True)
    out, saved, _ = qcnn_level_forward(x, w, g, be, **kw)
    out_ref, saved_ref = ref.qcnn_level_forward(*f64(x, w, g, be), **kw)
    assert_close(out, out_ref, dtype, "forward")
    g_out = rng.standard_normal(out.shape).astype(dtype)
    for name, a, r in zip(("g_x", "g_weight", "g_gamma", "g_beta"),
                          qcnn_level_backward(saved, g_out),
                          ref.qcnn_level_backward(saved_ref, g_out.astype(np.float64))):
        assert_close(a, r, dtype, name)
    stats = (rng.standard_normal(d_in), rng.uniform(0.5, 2.0, d_in))
    logscale = rng.uniform(-5.0, 5.0, (b, s))
    out, out_ls = qcnn_level_scaled_forward(x, logscale, w, g, be, stats=stats, window=window,
                                            eps=1e-5)
    ref_out, ref_ls = ref.qcnn_level_scaled_forward(*f64(x, logscale, w, g, be), window=window,
                                                    eps=1e-5, **ref_kwargs(stats))
    assert_close(out * np.exp(out_ls - ref_ls)[..., None], ref_out, dtype, "scaled forward")
