"""fasttn.torch: gradients by finite differences (torch.autograd.gradcheck), equality with
fasttn's own forward/backward, memory shared with fasttn, the nn.Modules, a CNN + TNLayer
that trains, torch.compile against eager, errors for bad input, and ``import fasttn``
without torch."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fasttn  # noqa: E402
import fasttn.ops as fops  # noqa: E402
import fasttn.torch as ft  # noqa: E402

from conftest import DTYPES, assert_close  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TORCH_DTYPES = {np.float32: torch.float32, np.float64: torch.float64}


def _t(a, grad=False):
    return torch.from_numpy(np.ascontiguousarray(a)).requires_grad_(grad)


@pytest.fixture
def seeded(rng):
    """Torch's generator seeded from the test's fresh seed (module initialisers use it)."""
    torch.manual_seed(int(rng.integers(2 ** 31)))
    return rng


# ------------------------------------------------------------------------------ the ops
# Each case: name -> (inputs(rng, dtype) -> arrays, the torch call, fasttn's own path). fasttn's
# path runs its forward and, given grad_out, its backward: (out, gradients of the inputs).
def _pool_inputs(rng, dt, grid=False):
    shape = (3, 4, 6, 2) if grid else (3, 8, 4)
    return [rng.standard_normal(shape).astype(dt)]


def _qcnn_inputs(rng, dt, d_in=4, d_out=5, sites=8):
    return [rng.standard_normal((3, sites, d_in)).astype(dt),
            rng.standard_normal((d_out, d_in)).astype(dt),
            (0.5 + rng.random(d_in)).astype(dt), rng.standard_normal(d_in).astype(dt)]


def _running_stats(rng, d_in=4):
    return rng.standard_normal(d_in), 0.5 + rng.random(d_in)


def _mera_inputs(rng, dt, p=2, b=2, chi=2, d_out=3):
    shapes = [(2, 4, 8, p), (p,) * 4 + (b,) * 4, (4, p, p, p, b, chi), (chi,) * 8,
              (chi,) * 4 + (d_out,)]
    return [(rng.standard_normal(s) / (1 if k == 0 else np.sqrt(np.prod(s[:4])))).astype(dt)
            for k, s in enumerate(shapes)]


def _mpo_inputs(rng, dt):
    shapes = [(1, 3, 2, 3), (3, 2, 2, 2), (2, 2, 3, 1)]  # 12 -> 12
    return [rng.standard_normal((4, 12)).astype(dt)] + [
        rng.standard_normal(s).astype(dt) for s in shapes]


def _tree_inputs(rng, dt):
    return [rng.standard_normal((3, 4, 6, 2)).astype(dt),
            rng.standard_normal((2, 3, 2, 2, 2, 2, 3)).astype(dt)]


def _qcnn_fasttn(training, stats=None):
    def run(x, w, g, b, grad_out=None):
        s = fops.batch_stats(x) if training else stats
        out, saved, _ = fops.qcnn_level_forward(x, w, g, b, training=training, stats=s)
        return out, (None if grad_out is None else fops.qcnn_level_backward(saved, grad_out))
    return run


def _pair(forward, backward):
    def run(*args, grad_out=None):
        out, saved = forward(*args)
        return out, (None if grad_out is None else backward(saved, grad_out))
    return run


def _mpo_fasttn(method):
    def run(x, *cores, grad_out=None):
        out, saved = fops.mpo_apply_forward(x, list(cores), method)
        if grad_out is None:
            return out, None
        g_x, g_cores = fops.mpo_apply_backward(saved, grad_out)
        return out, [g_x] + list(g_cores)
    return run


def _cases(rng):
    stats = _running_stats(rng)
    return {
        "product_pool chain": (_pool_inputs, lambda x: ft.product_pool(x, 2),
                               _pair(lambda x: fops.product_pool_forward(x, 2),
                                     lambda s, g: [fops.product_pool_backward(s, g)])),
        "product_pool grid": (lambda r, d: _pool_inputs(r, d, grid=True), ft.product_pool,
                              _pair(fops.product_pool_forward,
                                    lambda s, g: [fops.product_pool_backward(s, g)])),
        "qcnn_level train": (_qcnn_inputs, ft.qcnn_level, _qcnn_fasttn(True)),
        "qcnn_level eval": (
            _qcnn_inputs,
            lambda *a: ft.qcnn_level(*a, training=False, running_mean=_t(stats[0]),
                                     running_var=_t(stats[1])),
            _qcnn_fasttn(False, stats)),
        "mera_block": (_mera_inputs, ft.mera_block,
                       _pair(fops.mera_block_forward, fops.mera_block_backward)),
        "mpo_apply dense": (_mpo_inputs, lambda x, *c: ft.mpo_apply(x, c, "dense"),
                            _mpo_fasttn("dense")),
        "mpo_apply network": (_mpo_inputs, lambda x, *c: ft.mpo_apply(x, list(c), "network"),
                              _mpo_fasttn("network")),
        "tree_node": (_tree_inputs, ft.tree_node,
                      _pair(fops.tree_node_forward, lambda s, g: fops.tree_node_backward(s, g))),
    }


CASES = ["product_pool chain", "product_pool grid", "qcnn_level train", "qcnn_level eval",
         "mera_block", "mpo_apply dense", "mpo_apply network", "tree_node"]


@pytest.mark.parametrize("case", CASES)
def test_gradcheck(rng, case):
    make, op, _ = _cases(rng)[case]
    inputs = [_t(a, grad=True) for a in make(rng, np.float64)]
    assert torch.autograd.gradcheck(op, inputs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_matches_fasttn(rng, case, dtype):
    make, op, reference = _cases(rng)[case]
    arrays = make(rng, dtype)
    inputs = [_t(a, grad=True) for a in arrays]
    out = op(*inputs)
    assert out.dtype == TORCH_DTYPES[dtype]
    g = rng.standard_normal(tuple(out.shape)).astype(dtype)
    out.backward(_t(g))
    exp, exp_grads = reference(*arrays, grad_out=g)
    assert_close(out.detach().numpy(), exp, dtype, f"{case}: out")
    for k, (t, e) in enumerate(zip(inputs, exp_grads)):
        assert t.grad.dtype == TORCH_DTYPES[dtype]
        assert_close(t.grad.numpy(), e, dtype, f"{case}: gradient of input {k}")


def test_non_contiguous_inputs(rng):
    x = _t(rng.standard_normal((4, 3, 8))).permute(0, 2, 1)                 # (4, 8, 3)
    x4 = _t(rng.standard_normal((2, 4, 4, 2))).transpose(1, 2)
    w = _t(rng.standard_normal((2, 2, 2, 2, 2, 3, 2))).transpose(5, 6)      # (..., 2, 3)
    assert not (x.is_contiguous() or x4.is_contiguous() or w.is_contiguous())
    assert torch.equal(ft.product_pool(x), ft.product_pool(x.contiguous()))
    assert torch.equal(ft.tree_node(x4, w), ft.tree_node(x4.contiguous(), w.contiguous()))


def test_qcnn_level_stats_and_no_input_gradient(rng):
    x, w, g, b = (_t(a) for a in _qcnn_inputs(rng, np.float64))
    out, mean, var = ft.qcnn_level_with_stats(x, w, g, b)
    assert mean.dtype == var.dtype == torch.float64 and not mean.requires_grad
    np.testing.assert_allclose(mean.numpy(), x.numpy().mean(axis=(0, 1)), rtol=1e-12)
    np.testing.assert_allclose(var.numpy(), x.numpy().var(axis=(0, 1)), rtol=1e-12)
    rm, rv = (_t(s) for s in _running_stats(rng))
    _, m_used, v_used = ft.qcnn_level_with_stats(x, w, g, b, training=False, running_mean=rm,
                                                 running_var=rv)
    assert torch.equal(m_used, rm) and torch.equal(v_used, rv)
    # data input: only the parameters need gradients, and they match the full backward
    params = [t.clone().requires_grad_() for t in (w, g, b)]
    ft.qcnn_level(x, *params).sum().backward()
    full = [t.clone().requires_grad_() for t in (x, w, g, b)]
    ft.qcnn_level(*full).sum().backward()
    for p, f in zip(params, full[1:]):
        assert torch.equal(p.grad, f.grad)


def test_fasttn_sees_the_tensors_memory(rng, monkeypatch):
    """Inputs reach fasttn as views of the tensors, and outputs are fasttn's arrays."""
    seen = {}

    def spy(name):
        original = getattr(fops, name)

        def wrapper(*args, **kwargs):
            result = original(*args, **kwargs)
            seen[name] = (args, result)
            return result
        monkeypatch.setattr(fops, name, wrapper)

    for name in ("tree_node_forward", "tree_node_backward", "mera_block_forward",
                 "mpo_apply_forward", "product_pool_forward", "qcnn_level_forward"):
        spy(name)
    x, w = (_t(a, grad=True) for a in _tree_inputs(rng, np.float32))
    out = ft.tree_node(x, w)
    args, (arr, _) = seen["tree_node_forward"]
    assert np.shares_memory(args[0], x.detach().numpy())
    assert np.shares_memory(args[1], w.detach().numpy())
    assert out.data_ptr() == arr.ctypes.data
    g = torch.ones_like(out)
    out.backward(g)
    args, _ = seen["tree_node_backward"]
    assert np.shares_memory(args[1], g.numpy())
    assert np.shares_memory(args[0][0], x.detach().numpy())  # fasttn's saved state
    for name, tensors, call in (
            ("mera_block_forward", _mera_inputs(rng, np.float32), ft.mera_block),
            ("mpo_apply_forward", _mpo_inputs(rng, np.float32),
             lambda x, *c: ft.mpo_apply(x, c)),
            ("product_pool_forward", _pool_inputs(rng, np.float32), ft.product_pool),
            ("qcnn_level_forward", _qcnn_inputs(rng, np.float32), ft.qcnn_level)):
        tensors = [_t(a) for a in tensors]
        out = call(*tensors)
        args, result = seen[name]
        assert out.data_ptr() == result[0].ctypes.data, name
        assert np.shares_memory(args[0], tensors[0].numpy()), name


def test_outputs_are_functions_of_the_inputs(rng):
    """No hidden state: two forwards give equal outputs, and the backward op called directly
    on the inputs gives the gradients autograd gives."""
    x, w = (_t(a) for a in _tree_inputs(rng, np.float64))
    out = torch.ops.fasttn.tree_node(x, w)
    assert torch.equal(out, torch.ops.fasttn.tree_node(x, w))
    g = _t(rng.standard_normal(tuple(out.shape)))
    direct = torch.ops.fasttn.tree_node_backward(x, w, g, True)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    ft.tree_node(xg, wg).backward(g)
    assert torch.equal(direct[0], xg.grad) and torch.equal(direct[1], wg.grad)


# ---------------------------------------------------------------------------- the modules
def test_qcnn_level_module_running_stats(seeded):
    rng = seeded
    layer = ft.QCNNLevel(4, 6, momentum=0.2, dtype=torch.float64)
    bound = np.sqrt(6.0 / 10)
    assert layer.weight.abs().max() <= bound
    assert torch.equal(layer.gamma, torch.ones(4, dtype=torch.float64))
    x = _t(rng.standard_normal((5, 8, 4)), grad=True)
    out = layer(x)
    assert out.shape == (5, 4, 6)
    out.square().sum().backward()
    assert x.grad.shape == x.shape and layer.weight.grad.shape == (6, 4)
    xs = x.detach().numpy().reshape(-1, 4)
    n = xs.shape[0]
    np.testing.assert_allclose(layer.running_mean.numpy(), 0.2 * xs.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(layer.running_var.numpy(),
                               0.8 + 0.2 * xs.var(axis=0) * n / (n - 1), rtol=1e-12)
    assert int(layer.num_batches_tracked) == 1
    layer.eval()
    exp = fops.qcnn_level(x.detach().numpy(), layer.weight.detach().numpy(),
                          layer.gamma.detach().numpy(), layer.beta.detach().numpy(),
                          training=False, stats=(layer.running_mean.numpy(),
                                                 layer.running_var.numpy()))
    assert_close(layer(x).detach().numpy(), exp, np.float64, "eval output")
    assert int(layer.num_batches_tracked) == 1


@pytest.mark.parametrize("make, shape, out_shape", [
    (lambda: ft.MERABlockLayer(2, 2, 3), (2, 8, 4, 2), (2, 2, 1, 3)),
    (lambda: ft.MERABlockLayer(3, 2, 4, bond=1), (1, 4, 4, 3), (1, 1, 1, 4)),
    (lambda: ft.TreeNodeLayer(4, 2, 3), (3, 4, 4, 2), (3, 2, 2, 3)),
    (lambda: ft.TNLayer(24, 6, n_sites=2, bond_dim=3), (5, 24), (5, 6)),
    (lambda: ft.TNLayer(24, 8, n_sites=3, bond_dim=2, bias=False), (2, 3, 24), (2, 3, 8)),
])
def test_module_shapes(seeded, make, shape, out_shape):
    layer = make()
    x = torch.randn(shape, requires_grad=True)
    out = layer(x)
    assert out.shape == out_shape and out.dtype == torch.float32
    out.square().sum().backward()
    assert x.grad.shape == x.shape
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name


def test_module_initialisation(seeded, monkeypatch):
    tree = ft.TreeNodeLayer(4, 2, 3, dtype=torch.float64)
    mats = tree.weight.detach().reshape(-1, 16, 3)
    eye = torch.eye(3, dtype=torch.float64).expand(4, 3, 3)
    assert torch.allclose(mats.transpose(1, 2) @ mats, eye, atol=1e-12)  # isometries
    mera = ft.MERABlockLayer(2, 3, 4, init_scale=2.0)
    assert abs(float(mera.u2.detach().std()) / (2.0 / 3 ** 2) - 1) < 0.1  # scale / sqrt(fan_in)
    # the MPO cores are fasttn.TNLayer's own draw, from a generator seeded by torch's
    import fasttn.torch.modules as modules
    seed = int(seeded.integers(2 ** 31))
    monkeypatch.setattr(modules, "_numpy_rng", lambda: np.random.default_rng(seed))
    mpo = ft.TNLayer(64, 64, n_sites=3, bond_dim=4, dtype=torch.float64)
    spec = fasttn.TNLayer(64, n_sites=3, bond_dim=4)
    spec.build(64, np.random.default_rng(seed), np.dtype(np.float64))
    assert mpo.in_dims == spec.in_dims_ == (4, 4, 4)
    assert all(np.array_equal(c.detach().numpy(), e) for c, e in zip(mpo.cores, spec.cores))
    assert torch.equal(mpo.bias, torch.zeros(64, dtype=torch.float64))
    monkeypatch.undo()
    torch.manual_seed(1)
    a = ft.TNLayer(12, 12, n_sites=2)
    torch.manual_seed(1)
    b = ft.TNLayer(12, 12, n_sites=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_cnn_with_tn_layer_trains(seeded):
    rng = seeded
    n = 32
    y = rng.integers(0, 4, n)
    images = 0.1 * rng.random((n, 1, 8, 8))
    for k, c in enumerate(y):  # a bright 2x2 patch in the quadrant of the class
        r, col = 4 * (c // 2) + rng.integers(0, 3), 4 * (c % 2) + rng.integers(0, 3)
        images[k, 0, r:r + 2, col:col + 2] = 1.0
    X, Y = torch.from_numpy(images).float(), torch.from_numpy(y)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), ft.TNLayer(64, 4, n_sites=2, bond_dim=4))
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(X), Y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


class _SmallNet(torch.nn.Module):
    """Every op once: q-CNN level, tree node, product pool, MERA block, MPO layer."""

    def __init__(self):
        super().__init__()
        self.level = ft.QCNNLevel(2, 4, window=4, dtype=torch.float64)
        self.tree = ft.TreeNodeLayer(4, 4, 4, dtype=torch.float64)
        self.mera = ft.MERABlockLayer(4, 2, 4, dtype=torch.float64)
        self.head = ft.TNLayer(8, 4, n_sites=2, bond_dim=2, dtype=torch.float64)

    def forward(self, x):  # (batch, 64, 2)
        b = x.shape[0]
        y = self.level(x).reshape(b, 4, 4, 4)
        pooled = ft.product_pool(self.tree(y)).reshape(b, 4)
        return self.head(torch.cat([pooled, self.mera(y).reshape(b, 4)], dim=1))


# aot_eager traces the ops' shape functions and autograd formulas as inductor does, without
# generating code; inductor (the default backend) once, at one size, for its compile time
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("backend, batches", [("aot_eager", (6, 5)), ("inductor", (6,))])
def test_torch_compile_matches_eager(seeded, backend, batches):
    torch._dynamo.reset()
    model = _SmallNet()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    for batch in batches:  # a second size recompiles with a symbolic batch
        x = torch.randn(batch, 64, 2, dtype=torch.float64)
        grads = []
        for net in (model, compiled):
            model.zero_grad()
            out = net(x)
            out.square().sum().backward()
            grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
        (out_e, g_e), (out_c, g_c) = grads
        assert torch.allclose(out_c, out_e, rtol=1e-12, atol=0)
        for a, b in zip(g_c, g_e):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("call, error, match", [
    (lambda: ft.product_pool(torch.zeros(2, 4, 3, dtype=torch.int64)), TypeError, "^x: "),
    (lambda: ft.product_pool(torch.zeros(2, 4, 3, dtype=torch.int64)), TypeError, "^x: "),
    (lambda: ft.product_pool(np.zeros((2, 4, 3))), TypeError, "^x: expected a torch.Tensor"),
    (lambda: ft.product_pool(torch.zeros(2, 4)), ValueError, "^x: "),
    (lambda: ft.product_pool(torch.zeros(2, 5, 3)), ValueError, "^x: .*divisible"),
    (lambda: ft.product_pool(torch.zeros(2, 4, 3), window=0), ValueError, "^window: "),
    (lambda: ft.qcnn_level(torch.zeros(2, 4, 3, dtype=torch.float64), torch.zeros(5, 3),
                           torch.ones(3), torch.zeros(3)), TypeError, "^weight: "),
    (lambda: ft.qcnn_level(torch.zeros(2, 4, 3), torch.zeros(5, 2), torch.ones(3),
                           torch.zeros(3)), ValueError, "^weight: "),
    (lambda: ft.qcnn_level(torch.zeros(2, 4, 3), torch.zeros(5, 3), torch.ones(4),
                           torch.zeros(3)), ValueError, "^gamma: "),
    (lambda: ft.qcnn_level(torch.zeros(2, 4, 3), torch.zeros(5, 3), torch.ones(3),
                           torch.zeros(3), window=3), ValueError, "^window: "),
    (lambda: ft.qcnn_level(torch.zeros(2, 4, 3), torch.zeros(5, 3), torch.ones(3),
                           torch.zeros(3), training=False), ValueError, "^running_mean: "),
    (lambda: ft.qcnn_level(torch.zeros(2, 4, 3), torch.zeros(5, 3), torch.ones(3),
                           torch.zeros(3), training=False, running_mean=torch.zeros(3),
                           running_var=torch.ones(4)), ValueError, "^running_var: "),
    (lambda: ft.mera_block(torch.zeros(1, 4, 6, 2), *(_t(a) for a in _mera_inputs(
        np.random.default_rng(0), np.float32)[1:])), ValueError, "^x: "),
    (lambda: ft.mera_block(*(_t(a) for a in _mera_inputs(np.random.default_rng(0), np.float32)[:3]),
                           torch.zeros((2,) * 7), torch.zeros((2,) * 4 + (3,))),
     ValueError, "^u2: "),
    (lambda: ft.mpo_apply(torch.zeros(2, 12), torch.zeros(1, 12, 12, 1)), ValueError, "^cores: "),
    (lambda: ft.mpo_apply(torch.zeros(2, 12), [torch.zeros(1, 3, 2, 3), torch.zeros(2, 4, 2, 1)]),
     ValueError, r"^cores\[1\]: "),
    (lambda: ft.mpo_apply(torch.zeros(2, 10), [torch.zeros(1, 3, 2, 3), torch.zeros(3, 4, 2, 1)]),
     ValueError, "^x: expected 12 features"),
    (lambda: ft.mpo_apply(torch.zeros(2, 12), [torch.zeros(1, 3, 2, 3),
                                               torch.zeros(3, 4, 2, 1, dtype=torch.float64)]),
     TypeError, r"^cores\[1\]: "),
    (lambda: ft.mpo_apply(torch.zeros(2, 12), [torch.zeros(1, 12, 2, 1)], method="fast"),
     ValueError, "^method: "),
    (lambda: ft.tree_node(torch.zeros(1, 4, 4, 2), torch.zeros(2, 2, 2, 2, 2, 3, 3)),
     ValueError, "^w: "),
    (lambda: ft.tree_node(torch.zeros(1, 4, 4, 2, device="meta"),
                          torch.zeros(2, 2, 2, 2, 2, 2, 3, device="meta")),
     NotImplementedError, "tree_node.*meta"),
    (lambda: ft.tree_node(torch.zeros(1, 4, 4, 2), torch.zeros(2, 2, 2, 2, 2, 2, 3, device="meta")),
     ValueError, "^w: expected a tensor on cpu"),
    (lambda: ft.TNLayer(10, 10, n_sites=3), ValueError, "^in_features: "),
    (lambda: ft.TNLayer(12, 12, n_sites=2, in_dims=(3, 3)), ValueError, "^in_dims: "),
    (lambda: ft.TNLayer(12, 12, n_sites=2, bond_dim=0), ValueError, "^bond_dim: "),
    (lambda: ft.QCNNLevel(4, 4, window=3), ValueError, "^window: "),
    (lambda: ft.TreeNodeLayer(5, 2, 2), ValueError, "^side: "),
])
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------------------------------------- imports
def _python(code):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_import_fasttn_does_not_import_torch():
    r = _python("import sys, fasttn, fasttn.ops, fasttn.models\n"
                f"assert fasttn.__file__.startswith({str(ROOT)!r}), fasttn.__file__\n"
                "assert 'torch' not in sys.modules, 'torch imported'\n")
    assert r.returncode == 0, r.stderr


def test_missing_torch_says_how_to_install():
    # A finder that refuses ``torch`` stands for an environment without it. Setting
    # ``sys.modules['torch'] = None`` would not: array libraries look torch up there and
    # expect a module or nothing.
    r = _python("import sys, importlib.abc\n"
                "class NoTorch(importlib.abc.MetaPathFinder):\n"
                "    def find_spec(self, name, path=None, target=None):\n"
                "        if name == 'torch' or name.startswith('torch.'):\n"
                "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
                "        return None\n"
                "sys.modules.pop('torch', None)\n"
                "sys.meta_path.insert(0, NoTorch())\n"
                "try:\n    import fasttn.torch\nexcept ImportError as e:\n    print(e)\n")
    assert r.returncode == 0, r.stderr
    assert "pip install 'fasttn[torch]'" in r.stdout


def test_cuda_paths_are_the_ops_with_a_device_module():
    """The ops whose CUDA tensors fasttn admits: those with an ``ops/<op>/cuda.py`` (and
    tree_node's array-module spec); the MPO contraction stays on the host."""
    from fasttn.torch.bridge import has_cuda_path

    for op in ("product_pool", "qcnn_level", "mera_block", "tree_node"):
        assert has_cuda_path(op), op
    assert not has_cuda_path("mpo_apply") and not has_cuda_path("no_such_op")
