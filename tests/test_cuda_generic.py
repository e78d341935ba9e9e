"""The array-module GPU versions of ``mera_block`` and ``svd_truncate`` (``ops/*/cuda.py``).

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






# --- backends: NumPy standing in for CuPy, and CuPy on a GPU --------------------------------



@pytest.fixture
def cupy_gpu():
    reason = gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    import cupy

    return cupy


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
        monkeypatch.setattr(module, name,
                            lambda *args, _fn=fn, _name=name: calls.append(_name) or _fn(*args))
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
