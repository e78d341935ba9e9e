"""The GPU path without a GPU where the toolchain allows, and on a GPU where there is one.

* every ``fasttn/csrc/*.cu`` compiles with ``nvcc`` for sm_80 and sm_90;
* the CUDA kernel bodies run on the host (compiled by g++ with a small shim for the thread
  indices) behind the real ``ops/product_pool/cuda.py`` launch code, against the NumPy
  reference;
* ``import fasttn`` never imports CuPy, and asking for CUDA without it says what is missing;
* the numba.cuda AdamW kernel runs under Numba's CUDA simulator;
* on a machine with CuPy and a GPU, the same comparisons run on the device.
"""
from __future__ import annotations

import ctypes
import importlib
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import DTYPES, assert_close, gpu_skip_reason
from fasttn import _cuda
from fasttn.ops.product_pool import reference as ref

SOURCES = sorted(_cuda.CSRC_DIR.glob("*.cu"))
SHAPES = [((2, 8, 3), 2), ((5, 16, 7), 2), ((3, 12, 4), 4), ((2, 9, 33), 3), ((1, 2, 1), 2),
          ((2, 4, 6, 3), 2), ((3, 8, 2, 5), 2), ((1, 6, 10, 40), 2)]
REPO = Path(__file__).resolve().parents[1]


def _nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    for candidate in ("/usr/local/cuda/bin/nvcc",):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def test_csrc_is_shipped_and_found():
    assert SOURCES, f"no CUDA sources under {_cuda.CSRC_DIR}"
    assert set(_cuda.cuda_sources()) == {p.stem for p in SOURCES}
    assert "csrc/*.cu" in (REPO / "pyproject.toml").read_text()


@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_source_compiles_with_nvcc_for_sm80_and_sm90(source, tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not on PATH nor at /usr/local/cuda/bin/nvcc: CUDA toolkit not installed")
    # Both architectures in one call; the options match fasttn._cuda.COMPILE_OPTIONS.
    cmd = [nvcc, *_cuda.COMPILE_OPTIONS, "-c", "-o", str(tmp_path / "out.o"),
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
           str(source)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"{' '.join(cmd)}\n{run.stdout}\n{run.stderr}"


# --- kernel bodies on the host --------------------------------------------------------------

_HOST_SHIM = """
// Host build of a CUDA source: the thread indices become globals that the test sets before
// each call, so one call runs one (block, thread) pair of the grid-stride loop.
struct fasttn_dim3 {{ unsigned x, y, z; }};
static fasttn_dim3 blockIdx, blockDim, threadIdx, gridDim;
#define __global__
#define __device__
#include "{source}"
extern "C" void fasttn_set_thread(unsigned grid, unsigned block, unsigned b, unsigned t) {{
    gridDim.x = grid; blockDim.x = block; blockIdx.x = b; threadIdx.x = t;
}}
"""


@pytest.fixture(scope="module")
def host_product_pool(tmp_path_factory):
    """``csrc/product_pool.cu`` built for the host as a shared library (ctypes)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler (g++) to run the kernel bodies on the CPU")
    d = tmp_path_factory.mktemp("host_cuda")
    shim = d / "shim.cpp"
    shim.write_text(_HOST_SHIM.format(source=_cuda.CSRC_DIR / "product_pool.cu"))
    lib = d / "libproduct_pool_host.so"
    run = subprocess.run([cxx, "-std=c++17", "-O1", "-shared", "-fPIC", "-x", "c++",
                          str(shim), "-o", str(lib)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return ctypes.CDLL(str(lib))


class _HostKernel:
    """Stands in for a ``cupy.RawKernel``: ``kernel(grid, block, args)``, run thread by thread."""

    def __init__(self, lib, entry):
        self.lib = lib
        self.fn = getattr(lib, entry)  # AttributeError: the launcher names a missing entry
        self.fn.restype = None

    def __call__(self, grid, block, args):
        cargs = []
        for a in args:
            if isinstance(a, np.ndarray):
                assert a.flags.c_contiguous
                cargs.append(ctypes.c_void_p(a.ctypes.data))
            else:
                assert isinstance(a, np.int64), f"scalar argument {a!r} is not int64"
                cargs.append(ctypes.c_longlong(int(a)))
        for b in range(grid[0]):
            for t in range(block[0]):
                self.lib.fasttn_set_thread(grid[0], block[0], b, t)
                self.fn(*cargs)


@pytest.fixture
def host_cuda_module(host_product_pool, monkeypatch):
    """``fasttn.ops.product_pool.cuda`` imported against a NumPy stand-in for CuPy, its
    kernels the host build, and a small launch so that the grid-stride loops go round."""
    fake_cupy = types.ModuleType("cupy")
    for name in ("ascontiguousarray", "empty", "empty_like", "ndarray"):
        setattr(fake_cupy, name, getattr(np, name))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    # Both the module entry and the package attribute are put back afterwards, so that a
    # later test on a GPU imports the real launcher, not this one.
    monkeypatch.delitem(sys.modules, "fasttn.ops.product_pool.cuda", raising=False)
    monkeypatch.setattr(sys.modules["fasttn.ops.product_pool"], "cuda", None, raising=False)
    mod = importlib.import_module("fasttn.ops.product_pool.cuda")
    monkeypatch.setattr(mod, "get_kernel",
                        lambda name, entry: _HostKernel(host_product_pool, entry))
    monkeypatch.setattr(mod, "launch_config", lambda n: ((2,), (3,)))
    yield mod
    sys.modules.pop("fasttn.ops.product_pool.cuda", None)  # monkeypatch restores any real one


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,window", SHAPES)
def test_kernel_bodies_on_host_match_reference(host_cuda_module, rng, dtype, shape, window):
    x = rng.standard_normal(shape).astype(dtype)
    x.flat[rng.integers(x.size)] = 0.0  # products through a zero stay exact (no division)
    out = host_cuda_module.product_pool(x, window)
    assert out.dtype == dtype
    assert_close(out, ref.product_pool(x, window), dtype, "forward")
    g = rng.standard_normal(out.shape).astype(dtype)
    grad = host_cuda_module.product_pool_backward(x, g, window)
    assert grad.dtype == dtype
    assert_close(grad, ref.product_pool_backward(x, g, window), dtype, "backward")


@pytest.mark.parametrize("sign_dtype", [np.int8, np.float32, np.float64, np.int32])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,window", [SHAPES[2], SHAPES[3], SHAPES[6]])
def test_log_kernel_bodies_on_host_match_reference(host_cuda_module, rng, dtype, sign_dtype,
                                                   shape, window):
    x = rng.standard_normal(shape)
    x.flat[rng.integers(x.size)] = 0.0
    with np.errstate(divide="ignore"):
        logabs = np.log(np.abs(x)).astype(dtype)
    sign = np.sign(x).astype(sign_dtype)
    la, sg = host_cuda_module.product_pool_log(logabs, sign, window)
    la_ref, sg_ref = ref.product_pool_log(logabs, sign, window)
    assert la.dtype == dtype and sg.dtype == sign_dtype
    finite = np.isfinite(la_ref)
    np.testing.assert_array_equal(np.isfinite(la), finite)
    assert_close(la[finite], la_ref[finite], dtype, "log forward")
    np.testing.assert_array_equal(sg, sg_ref)


def test_launch_config_caps_the_grid():
    assert _cuda.launch_config(0) == ((1,), (256,))
    assert _cuda.launch_config(257) == ((2,), (256,))
    assert _cuda.launch_config(10 ** 12) == ((65535,), (256,))


# --- no CuPy, no GPU ------------------------------------------------------------------------

def test_import_fasttn_and_numpy_ops_do_not_import_cupy():
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import fasttn
        from fasttn.ops import product_pool, product_pool_backward, product_pool_log
        x = np.ones((2, 4, 3))
        product_pool(x); product_pool_backward((x, 2), np.ones((2, 2, 3)))
        product_pool_log(np.zeros((2, 4, 3)), np.ones((2, 4, 3), np.int8))
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("cupy", "cupyx")
                     or m == "fasttn.ops.product_pool.cuda")
        assert not bad, bad
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr


def test_loader_without_cupy_says_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    with pytest.raises(_cuda.CUDAUnavailableError) as err:
        _cuda.load_module("product_pool")
    msg = str(err.value)
    assert "CUDA needs CuPy and an NVIDIA GPU" in msg
    assert "pip install 'fasttn[cuda]'" in msg
    assert "CuPy is not importable" in msg
    assert isinstance(err.value, RuntimeError)


def test_device_cuda_without_cupy_says_what_is_missing(monkeypatch):
    from fasttn.backend import get_module

    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(_cuda.CUDAUnavailableError, match=r"pip install 'fasttn\[cuda\]'"):
        get_module("cuda")


def test_loader_with_cupy_but_no_gpu_says_so(monkeypatch):
    fake = types.ModuleType("cupy")
    fake.__version__ = "0.0-test"

    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(_cuda.CUDAUnavailableError, match="finds no usable GPU"):
        _cuda.get_kernel("product_pool", "product_pool_chain_float")


def test_cupy_arrays_dispatch_to_the_cuda_version(host_cuda_module, monkeypatch):
    # array_module() recognises CuPy by the array type's module name.
    from fasttn.ops.product_pool import _impl

    fake_array = type("ndarray", (), {"__module__": "cupy._core.core"})()
    assert _impl(fake_array) is host_cuda_module
    assert _impl(np.ones(2)).__name__ == "fasttn.ops.product_pool.cpu"


def test_host_stand_in_is_gone_afterwards():
    # Runs after the tests above (file order): the NumPy stand-in must not leak into later
    # tests, which on a GPU import the real launcher.
    pkg = sys.modules["fasttn.ops.product_pool"]
    mod = getattr(pkg, "cuda", None) or sys.modules.get("fasttn.ops.product_pool.cuda")
    assert mod is None or mod.cp.ndarray is not np.ndarray
    assert getattr(sys.modules.get("cupy"), "ndarray", None) is not np.ndarray


# --- numba.cuda under the simulator ---------------------------------------------------------

_ADAMW_CHECK = """
import sys
import numpy as np
from fasttn.train.optim import _adamw_update
from fasttn.train.optim_cuda import adamw_update_cuda

on_gpu = sys.argv[1] == "gpu"
if on_gpu:
    import cupy as xp
else:
    xp = np
rng = np.random.default_rng(int(sys.argv[2]))
lr, wd, b1, b2, eps = 0.01, 0.05, 0.9, 0.999, 1e-8
for dtype in (np.float32, np.float64):
    for n in (1, 7, 300):
        p = rng.standard_normal(n).astype(dtype)
        m = np.zeros(n)
        v = np.zeros(n)
        pd, md, vd = xp.array(p), xp.array(m), xp.array(v)  # copies, also under NumPy
        for t in range(1, 4):
            g = (rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 1)).astype(dtype)
            c1, c2 = 1 - b1 ** t, 1 - b2 ** t
            _adamw_update(p, g, m, v, lr, wd, b1, b2, c1, c2, eps)
            adamw_update_cuda(pd, xp.array(g), md, vd, lr, wd, b1, b2, c1, c2, eps)
        got = [a.get() if on_gpu else a for a in (pd, md, vd)]
        rtol = 1e-12 if dtype == np.float64 else 1e-6
        for name, a, b in zip("pmv", got, (p, m, v)):
            assert a.dtype == b.dtype, (name, a.dtype, b.dtype)
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max(),
                                       err_msg=f"{name} {dtype} {n}")
print("ok")
"""




@pytest.mark.parametrize("mode", ["simulator", "gpu"])
def test_adamw_kernel_matches_cpu_update(mode, rng):
    _run_cuda_script(_ADAMW_CHECK, mode, rng)


def _run_cuda_script(script: str, mode: str, rng) -> None:
    """Run ``script`` in a fresh interpreter under Numba's CUDA simulator (read by numba at
    import) or on the GPU (skipped without one); it prints "ok" when its checks pass."""
    env = dict(os.environ)
    if mode == "simulator":
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    else:
        reason = gpu_skip_reason()
        if reason:
            pytest.skip(reason)
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    run = subprocess.run([sys.executable, "-c", script, mode, str(rng.integers(2**31))],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert run.returncode == 0 and "ok" in run.stdout, run.stdout + run.stderr


# --- on a GPU -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,window", SHAPES + [((4, 256, 64), 2), ((2, 64, 64, 18), 2)])
def test_gpu_product_pool_matches_reference(cupy_gpu, rng, dtype, shape, window):
    from fasttn.ops import product_pool_backward, product_pool_forward, product_pool_log

    x = rng.standard_normal(shape).astype(dtype)
    out, saved = product_pool_forward(cupy_gpu.asarray(x), window)
    assert type(out).__module__.split(".")[0] == "cupy" and out.dtype == dtype
    assert_close(out.get(), ref.product_pool(x, window), dtype, "forward")
    g = rng.standard_normal(out.shape).astype(dtype)
    grad = product_pool_backward(saved, cupy_gpu.asarray(g))
    assert_close(grad.get(), ref.product_pool_backward(x, g, window), dtype, "backward")
    logabs, sign = np.log(np.abs(x)), np.sign(x).astype(np.int8)
    la, sg = product_pool_log(cupy_gpu.asarray(logabs), cupy_gpu.asarray(sign), window)
    la_ref, sg_ref = ref.product_pool_log(logabs, sign, window)
    assert_close(la.get(), la_ref, dtype, "log forward")
    np.testing.assert_array_equal(sg.get(), sg_ref)



_ADAMW_DEVICE_CHECK = """
import sys, types
import numpy as np
on_gpu = sys.argv[1] == "gpu"
if on_gpu:
    import cupy
    to_device, to_host = cupy.asarray, cupy.asnumpy
else:  # a NumPy stand-in that array_module takes for CuPy; the kernel runs in the simulator
    class StandIn(np.ndarray):
        pass
    StandIn.__module__ = "cupy._core.core"
    class NumPyAsCuPy(types.ModuleType):
        def __getattr__(self, name):
            return getattr(np, name)
    sys.modules["cupy"] = NumPyAsCuPy("cupy")
    to_device, to_host = (lambda a: np.array(a).view(StandIn)), np.asarray
import fasttn.train.optim_cuda as optim_cuda
from fasttn.train import AdamW

calls = []
kernel = optim_cuda.adamw_update_cuda
optim_cuda.adamw_update_cuda = lambda *a: (calls.append(1), kernel(*a))
rng = np.random.default_rng(int(sys.argv[2]))
host = [rng.standard_normal(s).astype(d) for s, d in (((3, 4), np.float32), ((7,), np.float64))]
dev = [to_device(p) for p in host]
opt_h, opt_d = AdamW(host, lr=0.01, weight_decay=0.05), AdamW(dev, lr=0.01, weight_decay=0.05)
for t in range(3):
    gs = [(rng.standard_normal(p.shape) * 10.0 ** rng.uniform(-3, 1)).astype(p.dtype)
          for p in host]
    opt_h.step(gs)
    opt_d.step([to_device(g) for g in gs])
assert len(calls) == 6, calls
for a, b in zip(dev, host):
    assert type(a).__module__.split(".")[0] == "cupy" and a.dtype == b.dtype
    rtol = 1e-12 if b.dtype == np.float64 else 1e-6
    np.testing.assert_allclose(to_host(a), b, rtol=rtol, atol=rtol * np.abs(b).max())
bad = [to_device(np.full(p.shape, np.nan, p.dtype)) for p in host]
try:
    opt_d.step(bad)
except FloatingPointError as e:
    assert "grads" in str(e)
else:
    raise AssertionError("a NaN gradient was accepted")
try:
    opt_d.step([host[0], to_device(host[1])])
except TypeError as e:
    assert "grads: expected an array on the parameters' device" in str(e)
else:
    raise AssertionError("a host gradient for a device parameter was accepted")
print("ok")
"""


@pytest.mark.parametrize("mode", ["simulator", "gpu"])
def test_adamw_steps_device_parameters_on_the_device(mode, rng):
    """AdamW on device arrays: moments beside the parameters, one kernel per parameter, the
    same result as the host update; NaN and host gradients refused."""
    _run_cuda_script(_ADAMW_DEVICE_CHECK, mode, rng)
