"""Shared test helpers: fresh random inputs, per-dtype tolerances, finite differences."""
from __future__ import annotations

import numpy as np
import pytest

# Relative tolerances of fast paths against the NumPy reference, stated once per dtype.
RTOL = {np.float64: 1e-10, np.float32: 1e-4}
DTYPES = [np.float64, np.float32]


def rel_err(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    scale = max(np.abs(b).max(), 1e-300)
    return float(np.abs(a - b).max() / scale)


def assert_close(actual, expected, dtype, what=""):
    err = rel_err(actual, expected)
    assert err <= RTOL[np.dtype(dtype).type], f"{what}: relative error {err:.3e} > {RTOL[np.dtype(dtype).type]}"


def finite_difference(f, x: np.ndarray, direction: np.ndarray, h: float = 1e-4) -> float:
    """Central difference of scalar ``f`` along ``direction`` (float64), Richardson-extrapolated
    so the truncation error is O(h^4)."""
    def central(step):
        return (f(x + step * direction) - f(x - step * direction)) / (2 * step)

    return (4 * central(h / 2) - central(h)) / 3


def check_gradient(f, x: np.ndarray, grad: np.ndarray, rng, n_dirs: int = 3, rtol: float = 1e-6):
    """Compare ``<grad, v>`` with the finite difference of ``f`` along random ``v``."""
    for _ in range(n_dirs):
        v = rng.standard_normal(x.shape)
        fd = finite_difference(f, x, v)
        an = float(np.sum(grad * v))
        assert abs(fd - an) <= rtol * max(1.0, abs(fd), abs(an)), f"finite difference {fd} vs analytic {an}"


@pytest.fixture
def rng(request):
    # Fresh inputs every run, reproducible from the printed seed when a test fails.
    seed = np.random.SeedSequence().entropy % (2**32)
    request.node.user_properties.append(("seed", seed))
    print(f"seed={seed}")
    return np.random.default_rng(seed)


def with_spectrum(rng, m, n, spectrum, sign_margin=0.0):
    """``Q1 diag(spectrum) Q2^T`` with random orthonormal ``Q1 (m, r)``, ``Q2 (n, r)``.

    ``sign_margin``: redraw ``Q1`` until the two largest |entries| of each column differ by
    that much, so that finite-difference steps cannot flip the sign convention."""
    r = min(m, n)
    while True:
        q1 = np.linalg.qr(rng.standard_normal((m, r)))[0]
        top = np.sort(np.abs(q1), axis=0)
        if m == 1 or np.all(top[-1] - top[-2] >= sign_margin):
            break
    q2 = np.linalg.qr(rng.standard_normal((n, r)))[0]
    return q1 @ np.diag(spectrum) @ q2.T


def mera_inputs(rng, n, h, w, p, b, chi, d_out, dtype):
    """Random ``(x, u1, w, u2, top)`` of one MERA level (shapes as ``ops.mera_block``)."""
    x = rng.standard_normal((n, h, w, p)).astype(dtype)
    u1 = rng.standard_normal((p,) * 4 + (b,) * 4).astype(dtype)
    iso = rng.standard_normal((4, p, p, p, b, chi)).astype(dtype)
    u2 = rng.standard_normal((chi,) * 8).astype(dtype)
    top = rng.standard_normal((chi,) * 4 + (d_out,)).astype(dtype)
    return x, u1, iso, u2, top


def gpu_skip_reason():
    """``None`` when CuPy sees a GPU, else why the GPU tests are skipped."""
    try:
        import cupy
    except ImportError:
        return "CuPy not installed: GPU tests skipped"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no GPU"
    except Exception as exc:  # no driver
        return f"CuPy finds no usable GPU ({exc})"
    return None


@pytest.fixture
def cupy_gpu():
    """CuPy, for tests that need a GPU (skipped with the reason where there is none)."""
    reason = gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    import cupy

    return cupy
