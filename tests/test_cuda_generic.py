"""The array-module GPU versions of ``mera_block``, ``svd_truncate`` and ``qcnn_level``
(``ops/*/cuda.py``).

They are written against ``array_module(x)``, so the same functions run here on NumPy
arrays (imported directly, standing in for CuPy) against the NumPy references, and on a
machine with CuPy and a GPU on CuPy arrays through the public ops (skipped elsewhere).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import (DTYPES, RTOL, assert_close, check_gradient, gpu_skip_reason, mera_inputs,
                      with_spectrum)
from fasttn.ops.mera_block import cpu as mera_cpu
from fasttn.ops.mera_block import cuda as mera_cuda
from fasttn.ops.mera_block import reference as mera_ref
from fasttn.ops.qcnn_level import cpu as qcnn_cpu
from fasttn.ops.qcnn_level import cpu_log as qcnn_cpu_log
from fasttn.ops.qcnn_level import cuda as qcnn_cuda
from fasttn.ops.qcnn_level import reference as qcnn_ref
from fasttn.ops.svd_truncate import cpu as svd_cpu
from fasttn.ops.svd_truncate import cuda as svd_cuda
from fasttn.ops.svd_truncate import reference as svd_ref

REPO = Path(__file__).resolve().parents[1]
ABSORB = ["both", "left", "right", "none"]

# (batch, H, W, p, b, chi, d_out): tall, wide, square, p = 1
MERA_CASES = [(2, 8, 4, 2, 3, 2, 3), (1, 4, 8, 3, 2, 3, 2), (2, 8, 8, 2, 2, 3, 4),
              (3, 4, 4, 1, 2, 2, 5)]
# (shape, max_bond, cutoff): single matrices, tall / wide / vector shapes, 2-D to 4-D stacks
# (small for cuSOLVER's batched Jacobi, larger for its gesvd loop), cutoffs that keep
# different counts per item
SVD_CASES = [((6, 6), None, 0.0), ((9, 4), 3, 0.0), ((4, 9), None, 0.3), ((5, 1, 7), None, 0.0),
             ((3, 7, 1), 2, 0.0), ((9, 5, 5), 3, 0.2), ((2, 5, 8, 6), 4, 0.05),
             ((3, 40, 36), 10, 0.0), ((2, 33, 45), None, 0.4)]
# (batch, sites, d_in, d_out, window): windows 1, 2 and 4, d_in above and below d_out, and
# one case of 512 rows (several of the CPU kernel's chunks, which it is compared with)
QCNN_CASES = [(3, 8, 5, 7, 2), (2, 16, 6, 4, 4), (4, 6, 3, 5, 1), (5, 12, 7, 3, 2),
              (2, 20, 4, 9, 4), (4, 128, 9, 6, 4)]

# --- backends: NumPy standing in for CuPy, and CuPy on a GPU --------------------------------



# --- mera_block -----------------------------------------------------------------------------

def _mera_expected(version, args, g):
    """``(out, grads, grads_abs)`` in float64 by ``version`` (the reference, or the CPU
    kernel where the reference's einsum path is too slow); ``grads_abs`` is the same network
    on |inputs| and |g|, the size of the rounding of each entry."""
    f64 = [a.astype(np.float64) for a in args]
    out, saved = version.mera_block_forward(*f64)
    _, saved_abs = version.mera_block_forward(*[np.abs(a) for a in f64])
    return (out, version.mera_block_backward(saved, g),
            version.mera_block_backward(saved_abs, np.abs(g)))


def _check_mera_grads(grads, expected, expected_abs, dtype):
    """Each gradient against the expected one, the error measured against the network on
    |inputs| (entries that cancel would fail float32 otherwise), as in ``test_mera_block``."""
    for name, a, r, r_abs in zip(("g_x", "g_u1", "g_w", "g_u2", "g_top"), grads, expected,
                                 expected_abs):
        assert a.dtype == dtype and a.shape == r.shape, name
        err = float(np.abs(a - r).max() / np.abs(r_abs).max())
        assert err <= RTOL[dtype], f"{name}: error {err:.3e} relative to the sum of |terms|"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MERA_CASES)
def test_mera_block_matches_reference(rng, dtype, case):
    args = mera_inputs(rng, *case, dtype)
    out, saved = mera_cuda.mera_block_forward(*args)
    g = rng.standard_normal(out.shape)
    out_ref, grads_ref, grads_abs = _mera_expected(mera_ref, args, g)
    assert out.dtype == dtype and out.shape == out_ref.shape
    assert_close(out, out_ref, dtype, "forward")
    _check_mera_grads(mera_cuda.mera_block_backward(saved, g.astype(dtype)), grads_ref,
                      grads_abs, dtype)


def test_mera_block_saved_is_the_cpu_kernels(rng):
    """Both versions keep the same ``saved``, so either backward takes the other's."""
    args = mera_inputs(rng, *MERA_CASES[2], np.float64)
    out, saved = mera_cuda.mera_block_forward(*args)
    out_cpu, saved_cpu = mera_cpu.mera_block_forward(*args)
    assert_close(out, out_cpu, np.float64, "forward vs CPU")
    assert len(saved) == len(saved_cpu)
    g = rng.standard_normal(out.shape)
    for a, b in zip(mera_cpu.mera_block_backward(saved, g),
                    mera_cuda.mera_block_backward(saved_cpu, g)):
        assert_close(a, b, np.float64, "backward vs CPU")


def test_mera_block_empty_batch(rng):
    args = mera_inputs(rng, 0, 8, 4, 2, 3, 2, 3, np.float32)
    out, saved = mera_cuda.mera_block_forward(*args)
    assert out.shape == (0, 2, 1, 3) and out.dtype == np.float32
    for g, a in zip(mera_cuda.mera_block_backward(saved, out), args):
        assert g.shape == a.shape and g.dtype == np.float32 and not np.any(g)


def test_mera_block_backward_finite_differences(rng):
    args = mera_inputs(rng, *MERA_CASES[1], np.float64)
    out, saved = mera_cuda.mera_block_forward(*args)
    g = rng.standard_normal(out.shape)
    grads = mera_cuda.mera_block_backward(saved, g)
    for k, grad in enumerate(grads):
        def loss(a, k=k):
            moved = list(args)
            moved[k] = a
            return float(np.sum(g * mera_cuda.mera_block_forward(*moved)[0]))

        check_gradient(loss, args[k], grad, rng, n_dirs=1)


# --- svd_truncate ---------------------------------------------------------------------------

def _random_grads(rng, out):
    return tuple(rng.standard_normal(t.shape) for t in out[:3])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", SVD_CASES)
def test_svd_truncate_matches_reference(rng, dtype, case):
    shape, max_bond, cutoff = case
    a = rng.standard_normal(shape).astype(dtype)
    for absorb in ABSORB:
        out, saved = svd_cuda.svd_truncate_forward(a, max_bond, cutoff, absorb)
        exp, saved_ref = svd_ref.svd_truncate_forward(a, max_bond, cutoff, absorb)
        assert saved.k == saved_ref.k and np.array_equal(saved.kept, saved_ref.kept)
        for name, got, want in zip(out._fields, out, exp):
            assert got.shape == want.shape and got.dtype == want.dtype, (absorb, name)
            tol_dtype = dtype if name in ("left", "right", "s") else np.float64
            assert_close(got, want, tol_dtype, f"{absorb} {name}")
        g_left, g_right, g_s = (g.astype(dtype) for g in _random_grads(rng, out))
        g = svd_cuda.svd_truncate_backward(saved, g_left, g_right, g_s)
        assert g.dtype == dtype and g.shape == shape
        expected = svd_ref.svd_truncate_backward(saved_ref, g_left, g_right, g_s)
        assert_close(g, expected, dtype, f"{absorb} g_a")
        # a missing gradient is a zero one
        assert_close(svd_cuda.svd_truncate_backward(saved, None, g_right, None),
                     svd_ref.svd_truncate_backward(saved_ref, None, g_right, None), dtype,
                     f"{absorb} g_right only")


def test_svd_truncate_saved_is_the_cpu_kernels(rng):
    """The ``SVDSaved`` of either version feeds the other's backward."""
    a = rng.standard_normal((9, 5, 5))
    for absorb in ABSORB:
        out, saved = svd_cuda.svd_truncate_forward(a, 3, 0.2, absorb)
        out_cpu, saved_cpu = svd_cpu.svd_truncate_forward(a, 3, 0.2, absorb)
        for name, got, want in zip(out._fields, out, out_cpu):
            assert_close(got, want, np.float64, f"{absorb} {name} vs CPU")
        grads = _random_grads(rng, out)
        assert_close(svd_cpu.svd_truncate_backward(saved, *grads),
                     svd_cuda.svd_truncate_backward(saved_cpu, *grads), np.float64,
                     f"{absorb} backward vs CPU")


def test_svd_truncate_zero_rank_deficient_and_extreme_matrices(rng):
    """A zero matrix, a rank-2 one and two at scales whose squares leave float64: values,
    entropy and discarded weight against the reference on the unscaled matrices (whose own
    squares would overflow), and the split still reproduces ``a``."""
    unscaled = np.zeros((4, 6, 4))
    unscaled[1] = rng.standard_normal((6, 2)) @ rng.standard_normal((2, 4))
    unscaled[2:] = rng.standard_normal((2, 6, 4))
    scales = np.array([1.0, 1.0, 1e-200, 1e200])
    a = unscaled * scales[:, None, None]
    for cutoff in (0.0, 1e-9):
        out, saved = svd_cuda.svd_truncate_forward(a, None, cutoff, "right")
        exp, _ = svd_ref.svd_truncate_forward(unscaled, None, cutoff, "right")
        assert out.s.shape == exp.s.shape
        assert list(saved.kept) == ([4, 4, 4, 4] if cutoff == 0 else [1, 2, 4, 4])
        for b, scale in enumerate(scales):
            size = max(np.abs(exp.s[b]).max(), 1.0)
            assert np.abs(out.s[b] / scale - exp.s[b]).max() <= 1e-12 * size
            assert abs(out.entropy[b] - exp.entropy[b]) <= 1e-12
            assert abs(out.discarded[b] / scale - exp.discarded[b]) <= 1e-12 * size
            assert np.abs(out.left[b] @ out.right[b] - a[b]).max() <= 1e-12 * size * scale
        assert np.all(out.s[0] == 0) and out.entropy[0] == 0 and out.discarded[0] == 0
        grads = _random_grads(rng, out)
        # 1/s broadened as s / (s^2 + eps^2): s^2 overflows at 1e200 and the term is 0, as
        # in the reference and the CPU kernel
        with np.errstate(over="ignore"):
            assert np.all(np.isfinite(svd_cuda.svd_truncate_backward(saved, *grads)))


def test_svd_truncate_empty_stack():
    out, saved = svd_cuda.svd_truncate_forward(np.zeros((0, 5, 3), np.float32), 2, 0.0, "both")
    assert out.left.shape == (0, 5, 1) and out.right.shape == (0, 1, 3)
    assert out.s.shape == (0, 1) and out.entropy.shape == (0,) and out.left.dtype == np.float32
    g = svd_cuda.svd_truncate_backward(saved, out.left, out.right, out.s)
    assert g.shape == (0, 5, 3) and g.dtype == np.float32


@pytest.mark.parametrize("absorb", ABSORB)
def test_svd_truncate_backward_finite_differences(rng, absorb):
    max_bond = 3
    a = np.stack([with_spectrum(rng, 6, 5, 3.0 * 0.55 ** np.arange(5), 0.05) for _ in range(2)])
    out, saved = svd_cuda.svd_truncate_forward(a, max_bond, 0.0, absorb)
    g_left, g_right, g_s = _random_grads(rng, out)

    def loss(x):
        o = svd_cuda.svd_truncate_forward(x, max_bond, 0.0, absorb)[0]
        return float(np.sum(g_left * o.left) + np.sum(g_right * o.right) + np.sum(g_s * o.s))

    check_gradient(loss, a, svd_cuda.svd_truncate_backward(saved, g_left, g_right, g_s), rng,
                   n_dirs=2)


# --- qcnn_level -----------------------------------------------------------------------------

def _qcnn_inputs(rng, b, s, d_in, d_out, dtype, training):
    """Random ``(x, weight, gamma, beta, stats)``: channels with their own offsets, gammas of
    both signs, running ``stats = (mean, var)`` (float64, on the host) unless training."""
    x = (rng.standard_normal((b, s, d_in)) + rng.standard_normal(d_in)).astype(dtype)
    weight = (rng.standard_normal((d_out, d_in)) / np.sqrt(d_in)).astype(dtype)
    gamma = (rng.uniform(0.5, 1.5, d_in) * rng.choice([-1.0, 1.0], d_in)).astype(dtype)
    beta = rng.standard_normal(d_in).astype(dtype)
    stats = None if training else (rng.standard_normal(d_in), rng.uniform(0.5, 2.0, d_in))
    return x, weight, gamma, beta, stats


def _qcnn_stats_kw(stats):
    return {"mean": None, "var": None} if stats is None else {"mean": stats[0], "var": stats[1]}


def _f64(*arrays):
    return [np.asarray(a, np.float64) for a in arrays]


def _close(got, want, dtype, what, terms=0.0):
    """``max|got - want|`` against ``max|want|``, or against ``terms`` (the size of the terms
    summed into ``want``) where that is larger: an entry that cancels to near zero is only
    as exact as the terms it is made of."""
    got, want = _f64(got, want)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    scale = max(float(np.abs(want).max(initial=0.0)), float(terms), 1e-300)
    err = float(np.abs(got - want).max(initial=0.0)) / scale
    assert err <= RTOL[np.dtype(dtype).type], f"{what}: error {err:.3e} relative to {scale:.3e}"


def _backward_variants(rng, d_out, dtype):
    """Every ``(need_g_x, g_out_affine, return_affine)``, with a random affine term."""
    affine = tuple(rng.standard_normal(d_out).astype(dtype) for _ in range(2))
    return [(need, aff, ret) for need in (True, False) for aff in (None, affine)
            for ret in (False, True)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("case", QCNN_CASES)
def test_qcnn_level_matches_cpu_kernel_and_reference(rng, dtype, training, case):
    b, s, d_in, d_out, window = case
    x, weight, gamma, beta, stats = _qcnn_inputs(rng, b, s, d_in, d_out, dtype, training)
    kw = dict(window=window, eps=1e-5, training=training)
    out, saved, next_stats = qcnn_cuda.qcnn_level_forward(x, weight, gamma, beta, **kw,
                                                          **_qcnn_stats_kw(stats))
    out_cpu, saved_cpu, next_cpu = qcnn_cpu.qcnn_level_forward(x, weight, gamma, beta, **kw,
                                                               **_qcnn_stats_kw(stats))
    ref_kw = {} if stats is None else _qcnn_stats_kw(stats)
    out_ref, saved_ref = qcnn_ref.qcnn_level_forward(*_f64(x, weight, gamma, beta), **kw,
                                                     **ref_kw)
    assert out.dtype == dtype and out.shape == (b, s // window, d_out)
    _close(out, out_cpu, dtype, "forward vs CPU")
    _close(out, out_ref, dtype, "forward vs reference")
    for name, got, cpu, want in zip(("next mean", "next var"), next_stats, next_cpu,
                                    qcnn_ref.batch_stats(out_ref)):
        assert got.dtype == np.float64 and got.shape == (d_out,), name
        _close(got, cpu, dtype, name + " vs CPU")
        _close(got, want, dtype, name + " vs reference")
    g_out = rng.standard_normal(out.shape).astype(dtype)
    for need_g_x, affine, return_affine in _backward_variants(rng, d_out, dtype):
        what = f"need_g_x={need_g_x} affine={affine is not None} return={return_affine}"
        grads = qcnn_cuda.qcnn_level_backward(saved, g_out, need_g_x, affine, return_affine)
        grads_cpu = qcnn_cpu.qcnn_level_backward(saved_cpu, g_out, need_g_x, affine,
                                                 return_affine)
        assert len(grads) == len(grads_cpu) == (5 if return_affine else 4), what
        g_true = g_out.astype(np.float64)
        if affine is not None:  # what the level sees: g_out less the upper level's term
            g_true = g_true - (affine[0] * out_ref + affine[1])
        grads_ref = qcnn_ref.qcnn_level_backward(saved_ref, g_true)
        for name, got, cpu, want in zip(("g_x", "g_weight", "g_gamma", "g_beta"), grads,
                                        grads_cpu, grads_ref):
            if name == "g_x" and not need_g_x:
                assert got is None and cpu is None, what
                continue
            assert got.dtype == dtype and got.shape == want.shape, (what, name)
            _close(got, cpu, dtype, f"{what} {name} vs CPU")
            terms = 0.0
            if name == "g_x" and return_affine and training:  # the term left out: add it
                term = grads[4][0] * x + grads[4][1]
                terms = max(np.abs(got).max(), np.abs(term).max())
                got = got - term
            _close(got, want, dtype, f"{what} {name} vs reference", terms)
        if return_affine:
            if need_g_x and training:
                for k in range(2):
                    assert grads[4][k].dtype == dtype and grads[4][k].shape == (d_in,)
                    _close(grads[4][k], grads_cpu[4][k], dtype, f"{what} affine[{k}] vs CPU")
            else:
                assert grads[4] is None and grads_cpu[4] is None, what


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [1, 2, 4])
def test_qcnn_level_deferred_batch_norm_term(rng, dtype, window):
    """Two training levels: the upper hands its batch-statistics term down
    (``return_affine``), the lower applies it (``g_out_affine``); both equal the reference
    chain, which applies it in full."""
    x, w1, g1, b1, _ = _qcnn_inputs(rng, 3, 16, 5, 7, dtype, True)
    _, w2, g2, b2, _ = _qcnn_inputs(rng, 1, 1, 7, 6, dtype, True)
    kw = dict(eps=1e-5, training=True)
    h, saved1, stats_h = qcnn_cuda.qcnn_level_forward(x, w1, g1, b1, window=window, **kw)
    # the upper level normalised with the lower one's next_stats, as a model chains them
    out, saved2, _ = qcnn_cuda.qcnn_level_forward(h, w2, g2, b2, window=2, mean=stats_h[0],
                                                  var=stats_h[1], **kw)
    h_ref, saved1_ref = qcnn_ref.qcnn_level_forward(*_f64(x, w1, g1, b1), window=window, **kw)
    _, saved2_ref = qcnn_ref.qcnn_level_forward(h_ref, *_f64(w2, g2, b2), window=2, **kw)
    g_out = rng.standard_normal(out.shape).astype(dtype)
    g_h_raw, *grads2, affine = qcnn_cuda.qcnn_level_backward(saved2, g_out, True, None, True)
    ref2 = qcnn_ref.qcnn_level_backward(saved2_ref, g_out.astype(np.float64))
    term = affine[0] * h + affine[1]
    _close(g_h_raw - term, ref2[0], dtype, "g_h with its term",
           max(np.abs(g_h_raw).max(), np.abs(term).max()))
    for name, a, r in zip(("g_weight", "g_gamma", "g_beta"), grads2, ref2[1:]):
        _close(a, r, dtype, name)
    grads1 = qcnn_cuda.qcnn_level_backward(saved1, g_h_raw, True, affine, False)
    ref1 = qcnn_ref.qcnn_level_backward(saved1_ref, ref2[0])
    for name, a, r in zip(("g_x", "g_weight", "g_gamma", "g_beta"), grads1, ref1):
        terms = 0.0
        if name == "g_beta" and window == 1:
            # h is affine in the level's input and a batch-normalised input's gradient sums
            # to zero, so g_beta is zero up to rounding: measured against its terms
            terms = (np.abs(w1).T @ np.abs(ref2[0]).sum(axis=(0, 1))).max()
        _close(a, r, dtype, name + " below", terms)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("case", QCNN_CASES)
def test_qcnn_level_log_matches_cpu_kernel_reference_and_linear(rng, dtype, training, case):
    b, s, d_in, d_out, window = case
    x, weight, gamma, beta, stats = _qcnn_inputs(rng, b, s, d_in, d_out, dtype, training)
    kw = dict(window=window, eps=1e-5, training=training)
    la, sg = np.log(np.abs(x)), np.sign(x).astype(np.int8)
    out_la, out_sg, saved, used = qcnn_cuda.qcnn_level_log_forward(
        la, sg, weight, gamma, beta, **kw, **_qcnn_stats_kw(stats))
    cpu_la, cpu_sg, saved_cpu, used_cpu = qcnn_cpu_log.qcnn_level_log_forward(
        la, sg, weight, gamma, beta, **kw, **_qcnn_stats_kw(stats))
    ref_kw = {} if stats is None else _qcnn_stats_kw(stats)
    ref_la, ref_sg, saved_ref = qcnn_ref.qcnn_level_log_forward(
        *_f64(la), sg, *_f64(weight, gamma, beta), **kw, **ref_kw)
    assert out_la.dtype == dtype and out_sg.dtype == np.int8
    assert out_la.shape == out_sg.shape == (b, s // window, d_out)
    # compared as values: near a zero of xi the log magnifies rounding, the value does not
    value = out_sg * np.exp(out_la.astype(np.float64))
    _close(value, cpu_sg * np.exp(cpu_la.astype(np.float64)), dtype, "log forward vs CPU")
    _close(value, ref_sg * np.exp(ref_la), dtype, "log forward vs reference")
    for name, got, cpu in zip(("mean", "var"), used, used_cpu):
        assert got.dtype == np.float64
        _close(got, cpu, np.float64 if stats is not None else dtype, f"used {name} vs CPU")
    if stats is not None:
        _close(used[0], stats[0], np.float64, "used mean")
        _close(used[1], stats[1], np.float64, "used var")
    # the linear level in the same dtype: same values, same statistics
    out_lin, saved_lin, _ = qcnn_cuda.qcnn_level_forward(x, weight, gamma, beta, **kw,
                                                         **_qcnn_stats_kw(stats))
    _close(value, out_lin, dtype, "log vs linear")
    if training:
        for got, want in zip(used, qcnn_cuda.batch_stats(x)):
            _close(got, want, dtype, "log batch stats vs linear")
    # L = sum(g_lin * out): dL/dlogabs_out = g_lin * out, each path fed its own out
    g_lin = rng.standard_normal(out_la.shape)
    grads = qcnn_cuda.qcnn_level_log_backward(saved, (g_lin * value).astype(dtype))
    grads_cpu = qcnn_cpu_log.qcnn_level_log_backward(
        saved_cpu, (g_lin * cpu_sg * np.exp(cpu_la.astype(np.float64))).astype(dtype))
    grads_ref = qcnn_ref.qcnn_level_log_backward(saved_ref, g_lin * ref_sg * np.exp(ref_la))
    grads_lin = qcnn_cuda.qcnn_level_backward(saved_lin, g_lin.astype(dtype))
    for k, name in enumerate(("g_logabs", "g_weight", "g_gamma", "g_beta")):
        assert grads[k].dtype == dtype and grads[k].shape == grads_ref[k].shape, name
        _close(grads[k], grads_cpu[k], dtype, name + " vs CPU")
        _close(grads[k], grads_ref[k], dtype, name + " vs reference")
        # dL/dlogabs = x dL/dx
        lin = grads_lin[k] * x.astype(np.float64) if k == 0 else grads_lin[k]
        _close(grads[k], lin, dtype, name + " vs linear")


def test_qcnn_level_log_saved_is_the_cpu_kernels(rng):
    """The log forward keeps :mod:`cpu_log`'s ``saved``, so either backward takes it."""
    x, weight, gamma, beta, _ = _qcnn_inputs(rng, 3, 8, 5, 7, np.float64, True)
    la, sg = np.log(np.abs(x)), np.sign(x).astype(np.int8)
    out_la, _, saved, _ = qcnn_cuda.qcnn_level_log_forward(la, sg, weight, gamma, beta,
                                                           window=2, eps=1e-5, training=True)
    _, _, saved_cpu, _ = qcnn_cpu_log.qcnn_level_log_forward(la, sg, weight, gamma, beta,
                                                             window=2, eps=1e-5, training=True)
    assert len(saved) == len(saved_cpu)
    g = rng.standard_normal(out_la.shape)
    for a, b in zip(qcnn_cpu_log.qcnn_level_log_backward(saved, g),
                    qcnn_cuda.qcnn_level_log_backward(saved_cpu, g)):
        _close(a, b, np.float64, "log backward across versions")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", QCNN_CASES)
def test_qcnn_level_scaled_matches_cpu_kernel_and_reference(rng, dtype, case):
    b, s, d_in, d_out, window = case
    x, weight, gamma, beta, stats = _qcnn_inputs(rng, b, s, d_in, d_out, dtype, False)
    logscale = rng.uniform(-70.0, 70.0, (b, s))  # 1e-30 to 1e+30, mixed within the batch
    kw = dict(window=window, eps=1e-5, mean=stats[0], var=stats[1])
    out, out_ls = qcnn_cuda.qcnn_level_scaled_forward(x, logscale, weight, gamma, beta, **kw)
    cpu_out, cpu_ls = qcnn_cpu.qcnn_level_scaled_forward(x, logscale, weight, gamma, beta, **kw)
    ref_out, ref_ls = qcnn_ref.qcnn_level_scaled_forward(*_f64(x, logscale, weight, gamma,
                                                               beta), **kw)
    assert out.dtype == dtype and out.shape == (b, s // window, d_out)
    assert out_ls.dtype == np.float64 and out_ls.shape == (b, s // window)
    assert np.abs(out).max() <= 1.0 + 1e-6
    # values compared with their scales, site by site
    _close(out * np.exp(out_ls - ref_ls)[..., None], ref_out, dtype, "scaled vs reference")
    _close(out * np.exp(out_ls - cpu_ls)[..., None], cpu_out, dtype, "scaled vs CPU")
    # the same frame as the CPU kernel: the scales agree to rounding, not just up to a factor
    assert np.abs(out_ls - cpu_ls).max() <= 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
def test_qcnn_level_scaled_beyond_float_range(rng, dtype):
    """Scales of e^+-3000 (with a batch-norm shift) and e^-2000..-1000 without one (beta =
    mean = 0: the frame follows the data, where exp(-c) alone overflows): finite, equal to the
    reference, and (the first, whose shift keeps the log domain's frame in range) to the log
    domain's log-magnitudes and signs."""
    x, weight, gamma, beta, stats = _qcnn_inputs(rng, 2, 16, 4, 5, dtype, False)
    cases = [(beta, stats, rng.choice([-3000.0, 3000.0], (2, 16)) + rng.uniform(-5, 5, (2, 16))),
             (np.zeros_like(beta), (np.zeros(4), stats[1]), rng.uniform(-2000.0, -1000.0, (2, 16)))]
    for k, (be, st, logscale) in enumerate(cases):
        kw = dict(window=2, eps=1e-5, mean=st[0], var=st[1])
        out, out_ls = qcnn_cuda.qcnn_level_scaled_forward(x, logscale, weight, gamma, be, **kw)
        ref_out, ref_ls = qcnn_ref.qcnn_level_scaled_forward(*_f64(x, logscale, weight, gamma,
                                                                   be), **kw)
        assert np.isfinite(out).all() and np.isfinite(out_ls).all()
        _close(out * np.exp(out_ls - ref_ls)[..., None], ref_out, dtype, "scaled, extreme")
        if dtype is np.float64 and k == 0:
            la = np.log(np.abs(x)) + logscale[..., None]
            out_la, out_sg, _, _ = qcnn_cuda.qcnn_level_log_forward(
                la, np.sign(x).astype(np.int8), weight, gamma, be, window=2, eps=1e-5,
                training=False, mean=st[0], var=st[1])
            big = np.abs(out) > 1e-6  # not a near-cancellation
            np.testing.assert_allclose((np.log(np.abs(out)) + out_ls[..., None])[big],
                                       out_la[big], rtol=0, atol=1e-8)
            np.testing.assert_array_equal(np.sign(out)[big], out_sg[big])


def test_qcnn_level_log_beyond_float_range(rng):
    x, weight, gamma, beta, _ = _qcnn_inputs(rng, 2, 8, 3, 4, np.float64, True)
    la = np.log(np.abs(x)) + rng.choice([-4600.0, 4600.0], size=(2, 8, 1))
    sg = np.sign(x).astype(np.int8)
    for training in (True, False):
        kw = dict(window=2, eps=1e-5, training=training, mean=None if training else np.zeros(3),
                  var=None if training else np.ones(3))
        with np.errstate(over="ignore"):  # the used variance, e^9200, is inf in float64
            out_la, out_sg, saved, _ = qcnn_cuda.qcnn_level_log_forward(la, sg, weight, gamma,
                                                                        beta, **kw)
            cpu_la, cpu_sg, _, _ = qcnn_cpu_log.qcnn_level_log_forward(la, sg, weight, gamma,
                                                                       beta, **kw)
        assert np.isfinite(out_la).all()
        big = out_la - out_la.max() > -30  # not a near-cancellation
        np.testing.assert_allclose(out_la[big], cpu_la[big], rtol=1e-12, atol=1e-8)
        np.testing.assert_array_equal(out_sg[big], cpu_sg[big])
        grads = qcnn_cuda.qcnn_level_log_backward(saved, rng.standard_normal(out_la.shape))
        assert all(np.isfinite(a).all() for a in grads)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("case", QCNN_CASES[:3])
def test_qcnn_level_backward_finite_differences(rng, training, case):
    b, s, d_in, d_out, window = case
    x, weight, gamma, beta, stats = _qcnn_inputs(rng, b, s, d_in, d_out, np.float64, training)
    kw = dict(window=window, eps=1e-5, training=training, **_qcnn_stats_kw(stats))
    args = [x, weight, gamma, beta]
    r = rng.standard_normal((b, s // window, d_out))
    grads = qcnn_cuda.qcnn_level_backward(qcnn_cuda.qcnn_level_forward(*args, **kw)[1], r)
    la, sg = np.log(np.abs(x)), np.sign(x).astype(np.int8)
    log_args = [la, weight, gamma, beta]
    out_la, out_sg, saved, _ = qcnn_cuda.qcnn_level_log_forward(la, sg, weight, gamma, beta,
                                                                **kw)
    log_grads = qcnn_cuda.qcnn_level_log_backward(saved, r * out_sg * np.exp(out_la))
    for k in range(4):
        def loss(a, k=k):
            moved = list(args)
            moved[k] = a
            return float(np.sum(r * qcnn_cuda.qcnn_level_forward(*moved, **kw)[0]))

        def log_loss(a, k=k):  # on the represented values, smooth unlike log|out|
            moved = list(log_args)
            moved[k] = a
            o_la, o_sg, _, _ = qcnn_cuda.qcnn_level_log_forward(moved[0], sg, *moved[1:], **kw)
            return float(np.sum(r * o_sg * np.exp(o_la)))

        check_gradient(loss, args[k], grads[k], rng, n_dirs=2)
        check_gradient(log_loss, log_args[k], log_grads[k], rng, n_dirs=2)


def test_qcnn_batch_stats_matches_cpu(rng):
    x = rng.standard_normal((3, 10, 6)) * 3.0 + rng.standard_normal(6) * 5.0
    for dt in DTYPES:
        for got, cpu, want in zip(qcnn_cuda.batch_stats(x.astype(dt)),
                                  qcnn_cpu.column_stats(x.astype(dt).reshape(-1, 6), 2),
                                  qcnn_ref.batch_stats(x.astype(dt).astype(np.float64))):
            assert got.dtype == np.float64 and got.shape == (6,)
            _close(got, cpu, np.float64, "batch stats vs CPU")
            _close(got, want, np.float64, "batch stats vs reference")


# --- dispatch and imports -------------------------------------------------------------------

def test_svd_truncate_dispatches_cupy_arrays_to_cuda(monkeypatch):
    from fasttn.ops.svd_truncate import _impl

    # array_module() recognises CuPy by the array type's module name and imports it
    monkeypatch.setitem(sys.modules, "cupy", types.ModuleType("cupy"))
    fake_array = type("ndarray", (), {"__module__": "cupy._core.core"})()
    assert _impl(fake_array) is svd_cuda
    assert _impl(np.ones((2, 2))) is svd_cpu
    with pytest.raises(NotImplementedError, match="NumPy or CuPy arrays, got a builtins.list"):
        _impl([[1.0]])


def test_mera_block_dispatches_cupy_arrays_to_cuda(monkeypatch):
    from fasttn.ops.mera_block import _impl

    monkeypatch.setitem(sys.modules, "cupy", types.ModuleType("cupy"))
    fake_array = type("ndarray", (), {"__module__": "cupy._core.core"})()
    assert _impl(fake_array) is mera_cuda
    assert _impl(np.ones(2)) is mera_cpu


def test_qcnn_level_dispatches_cupy_arrays_to_cuda(monkeypatch):
    from fasttn.ops.qcnn_level import _impls

    monkeypatch.setitem(sys.modules, "cupy", types.ModuleType("cupy"))
    fake_array = type("ndarray", (), {"__module__": "cupy._core.core"})()
    assert _impls(fake_array) == (qcnn_cuda, qcnn_cuda)
    assert _impls(np.ones(2)) == (qcnn_cpu, qcnn_cpu_log)
    for name in ("batch_stats", "qcnn_level_forward", "qcnn_level_backward",
                 "qcnn_level_scaled_forward", "qcnn_level_log_forward",
                 "qcnn_level_log_backward"):
        assert callable(getattr(qcnn_cuda, name)), name


def test_cuda_modules_import_and_run_without_cupy():
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from fasttn.ops.mera_block import cuda as mera_cuda
        from fasttn.ops.svd_truncate import cuda as svd_cuda
        x = np.ones((1, 4, 4, 1)); u1 = np.ones((1,) * 8); w = np.ones((4, 1, 1, 1, 1, 1))
        out, saved = mera_cuda.mera_block_forward(x, u1, w, np.ones((1,) * 8), np.ones((1,) * 5))
        mera_cuda.mera_block_backward(saved, out)
        o, s = svd_cuda.svd_truncate_forward(np.eye(3)[None], 2, 0.0, "both")
        svd_cuda.svd_truncate_backward(s, o.left, o.right, o.s)
        from fasttn.ops.qcnn_level import cuda as qcnn_cuda
        x = np.arange(16.0).reshape(2, 4, 2); w = np.ones((3, 2)); g = np.ones(2)
        out, saved, _ = qcnn_cuda.qcnn_level_forward(x, w, g, g, window=2, eps=1e-5,
                                                     training=True)
        qcnn_cuda.qcnn_level_backward(saved, out, True, None, True)
        la, sg, saved, _ = qcnn_cuda.qcnn_level_log_forward(np.log(x + 1), np.sign(x + 1),
                                                            w, g, g, window=4, eps=1e-5,
                                                            training=True)
        qcnn_cuda.qcnn_level_log_backward(saved, la)
        qcnn_cuda.qcnn_level_scaled_forward(x, np.zeros((2, 4)), w, g, g, window=1, eps=1e-5,
                                            mean=np.zeros(2), var=np.ones(2))
        qcnn_cuda.batch_stats(x)
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("cupy", "cupyx"))
        assert not bad, bad
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr


# --- the public ops on device arrays: a NumPy stand-in for CuPy, and CuPy on a GPU ---------

class _StandInArray(np.ndarray):
    """A NumPy array that ``array_module`` takes for a CuPy one (by its type's module)."""


_StandInArray.__module__ = "cupy._core.core"


class _NumPyAsCuPy(types.ModuleType):
    """``import cupy`` for the stand-in: every attribute is NumPy's."""

    def __getattr__(self, name):
        return getattr(np, name)


@pytest.fixture(params=["stand-in", "gpu"])
def device(request, monkeypatch):
    """``(to_device, to_host)``: the stand-in puts ``_NumPyAsCuPy`` in ``sys.modules`` (put
    back afterwards), so the public ops dispatch to ``cuda.py`` and run it on NumPy."""
    if request.param == "gpu":
        reason = gpu_skip_reason()
        if reason:
            pytest.skip(reason)
        import cupy

        def to_host(a):
            assert type(a).__module__.split(".")[0] == "cupy", type(a)
            return cupy.asnumpy(a)

        return cupy.asarray, to_host
    monkeypatch.setitem(sys.modules, "cupy", _NumPyAsCuPy("cupy"))
    return (lambda a: np.asarray(a).view(_StandInArray)), np.asarray


def _record_calls(monkeypatch, module, names):
    """Wrap ``module.<name>`` for each name; returns the list of names called, in order."""
    calls = []
    for name in names:
        fn = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *args, _fn=fn, _name=name, **kwargs:
                            calls.append(_name) or _fn(*args, **kwargs))
    return calls


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MERA_CASES[:3] + [(4, 16, 32, 2, 3, 3, 4)])
def test_device_mera_block_matches_cpu_kernel(device, rng, monkeypatch, dtype, case):
    from fasttn.ops import mera_block_backward, mera_block_forward

    to_device, to_host = device
    calls = _record_calls(monkeypatch, mera_cuda, ("mera_block_forward", "mera_block_backward"))
    args = mera_inputs(rng, *case, dtype)
    out, saved = mera_block_forward(*(to_device(a) for a in args))
    g = rng.standard_normal(out.shape)
    out_ref, grads_ref, grads_abs = _mera_expected(mera_cpu, args, g)
    assert out.dtype == dtype
    assert_close(to_host(out), out_ref, dtype, "forward")
    grads = mera_block_backward(saved, to_device(g.astype(dtype)))
    _check_mera_grads([to_host(t) for t in grads], grads_ref, grads_abs, dtype)
    assert calls == ["mera_block_forward", "mera_block_backward"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_device_mera_end_block_matches_host(device, rng, dtype):
    from fasttn.ops import mera_end_backward, mera_end_forward

    to_device, to_host = device
    x = rng.standard_normal((3, 2, 2, 3)).astype(dtype)
    u = rng.standard_normal((3,) * 4 + (2,) * 4).astype(dtype)
    top = rng.standard_normal((2,) * 4 + (4,)).astype(dtype)
    out, saved = mera_end_forward(x, u, top)
    out_d, saved_d = mera_end_forward(*(to_device(a) for a in (x, u, top)))
    assert_close(to_host(out_d), out, dtype, "end forward")
    g = rng.standard_normal(out.shape).astype(dtype)
    for a, b in zip(mera_end_backward(saved_d, to_device(g)), mera_end_backward(saved, g)):
        assert a.dtype == dtype
        assert_close(to_host(a), b, dtype, "end backward")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", SVD_CASES[1::2] + [((64, 8, 8), 4, 0.0),
                                                    ((4, 64, 48), 16, 1e-3)])
def test_device_svd_truncate_matches_reference(device, rng, monkeypatch, dtype, case):
    from fasttn.ops import svd_truncate_backward, svd_truncate_forward

    to_device, to_host = device
    calls = _record_calls(monkeypatch, svd_cuda, ("svd_truncate_forward",
                                                  "svd_truncate_backward"))
    shape, max_bond, cutoff = case
    a = rng.standard_normal(shape).astype(dtype)
    for absorb in ABSORB:
        out, saved = svd_truncate_forward(to_device(a), max_bond, cutoff, absorb)
        exp, saved_ref = svd_ref.svd_truncate_forward(a, max_bond, cutoff, absorb)
        assert saved.k == saved_ref.k
        for name, got, want in zip(out._fields, out, exp):
            got = to_host(got)
            assert got.shape == want.shape and got.dtype == want.dtype, (absorb, name)
            tol_dtype = dtype if name in ("left", "right", "s") else np.float64
            assert_close(got, want, tol_dtype, f"{absorb} {name}")
        grads = [g.astype(dtype) for g in _random_grads(rng, exp)]
        g = svd_truncate_backward(saved, *(to_device(t) for t in grads))
        assert g.dtype == dtype
        assert_close(to_host(g), svd_ref.svd_truncate_backward(saved_ref, *grads), dtype,
                     f"{absorb} g_a")
    assert calls == ["svd_truncate_forward", "svd_truncate_backward"] * len(ABSORB)


@pytest.fixture
def qcnn_device(device, monkeypatch):
    """``device`` for the q-CNN ops. They pool through the public product_pool ops, which
    under the stand-in would launch product_pool's CUDA kernels: there they get the CPU
    kernels instead (on the same NumPy memory); on a GPU nothing changes."""
    if isinstance(sys.modules.get("cupy"), _NumPyAsCuPy):
        from fasttn.ops.product_pool import cpu as pool_cpu

        monkeypatch.setattr(sys.modules["fasttn.ops.product_pool"], "_impl",
                            lambda x: pool_cpu)
    return device


QCNN_NAMES = ("batch_stats", "qcnn_level_forward", "qcnn_level_backward",
              "qcnn_level_log_forward", "qcnn_level_log_backward", "qcnn_level_scaled_forward")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("case", QCNN_CASES[1:4] + [(8, 256, 18, 36, 4), (16, 64, 36, 10, 1)])
def test_device_qcnn_level_matches_cpu_kernels(qcnn_device, rng, monkeypatch, dtype, training,
                                               case):
    """The public ops on device arrays (stand-in or CuPy) against the CPU kernels on the host:
    linear forward and every backward variant, log forward and backward, the scaled forward
    and the batch statistics, each dispatched to ``qcnn_level/cuda.py``."""
    from fasttn.ops import (batch_stats, qcnn_level_backward, qcnn_level_forward,
                            qcnn_level_log_backward, qcnn_level_log_forward,
                            qcnn_level_scaled_forward)

    to_device, to_host = qcnn_device
    calls = _record_calls(monkeypatch, qcnn_cuda, QCNN_NAMES)
    b, s, d_in, d_out, window = case
    x, weight, gamma, beta, stats = _qcnn_inputs(rng, b, s, d_in, d_out, dtype, training)
    params = [to_device(a) for a in (weight, gamma, beta)]
    xd = to_device(x)
    kw = dict(window=window, eps=1e-5, training=training)
    expected_calls = []
    if training:  # the statistics a model passes in: batch_stats of the level input
        used = batch_stats(xd)
        expected_calls.append("batch_stats")
        for got, want in zip(used, qcnn_cpu.column_stats(x.reshape(-1, d_in), 2)):
            got = to_host(got)
            assert got.dtype == np.float64
            _close(got, want, np.float64, "batch stats")
    else:  # running statistics stay on the host, as the models keep them
        used = stats
    out, saved, next_stats = qcnn_level_forward(xd, *params, stats=used, **kw)
    out_c, saved_c, next_c = qcnn_cpu.qcnn_level_forward(x, weight, gamma, beta, **kw,
                                                         **_qcnn_stats_kw(stats))
    assert out.dtype == dtype
    _close(to_host(out), out_c, dtype, "forward")
    for got, want in zip(next_stats, next_c):
        _close(to_host(got), want, dtype, "next stats")
    expected_calls.append("qcnn_level_forward")
    g_out = rng.standard_normal(out.shape).astype(dtype)
    for need_g_x, affine, return_affine in _backward_variants(rng, d_out, dtype):
        what = f"need_g_x={need_g_x} affine={affine is not None} return={return_affine}"
        affine_d = None if affine is None else tuple(to_device(c) for c in affine)
        grads = qcnn_level_backward(saved, to_device(g_out), need_g_x, g_out_affine=affine_d,
                                    return_affine=return_affine)
        grads_c = qcnn_cpu.qcnn_level_backward(saved_c, g_out, need_g_x, affine, return_affine)
        expected_calls.append("qcnn_level_backward")
        assert len(grads) == len(grads_c), what
        for name, got, want in zip(("g_x", "g_weight", "g_gamma", "g_beta"), grads, grads_c):
            if want is None:
                assert got is None, (what, name)
                continue
            assert got.dtype == dtype, (what, name)
            _close(to_host(got), want, dtype, f"{what} {name}")
        if return_affine:
            assert (grads[4] is None) == (grads_c[4] is None), what
            for k in range(2 if grads_c[4] is not None else 0):
                _close(to_host(grads[4][k]), grads_c[4][k], dtype, f"{what} affine[{k}]")
    # log domain
    la, sg = np.log(np.abs(x)), np.sign(x).astype(np.int8)
    out_la, out_sg, saved_l, used_l = qcnn_level_log_forward(to_device(la), to_device(sg),
                                                             *params, stats=stats, **kw)
    cpu_la, cpu_sg, saved_lc, used_lc = qcnn_cpu_log.qcnn_level_log_forward(
        la, sg, weight, gamma, beta, **kw, **_qcnn_stats_kw(stats))
    out_la, out_sg = to_host(out_la), to_host(out_sg)
    assert out_la.dtype == dtype and out_sg.dtype == np.int8
    value = out_sg * np.exp(out_la.astype(np.float64))
    value_c = cpu_sg * np.exp(cpu_la.astype(np.float64))
    _close(value, value_c, dtype, "log forward")
    for got, want in zip(used_l, used_lc):
        _close(to_host(got), want, dtype, "log used stats")
    g_lin = rng.standard_normal(out_la.shape)
    grads = qcnn_level_log_backward(saved_l, to_device((g_lin * value).astype(dtype)))
    grads_c = qcnn_cpu_log.qcnn_level_log_backward(saved_lc, (g_lin * value_c).astype(dtype))
    for name, got, want in zip(("g_logabs", "g_weight", "g_gamma", "g_beta"), grads, grads_c):
        assert got.dtype == dtype, name
        _close(to_host(got), want, dtype, "log " + name)
    expected_calls += ["qcnn_level_log_forward", "qcnn_level_log_backward"]
    if not training:  # scaled domain: inference only
        logscale = rng.uniform(-70.0, 70.0, (b, s))
        skw = dict(window=window, eps=1e-5)
        out_s, ls = qcnn_level_scaled_forward(xd, to_device(logscale), *params, stats=stats,
                                              **skw)
        out_sc, ls_c = qcnn_cpu.qcnn_level_scaled_forward(x, logscale, weight, gamma, beta,
                                                          mean=stats[0], var=stats[1], **skw)
        out_s, ls = to_host(out_s), to_host(ls)
        assert out_s.dtype == dtype and ls.dtype == np.float64
        _close(out_s * np.exp(ls - ls_c)[..., None], out_sc, dtype, "scaled forward")
        assert np.abs(ls - ls_c).max() <= 1e-5
        expected_calls.append("qcnn_level_scaled_forward")
    assert calls == expected_calls
