"""fasttn.torch's ops inside PyTorch's custom-op contract: torch.library.opcheck for every
registered op in float32 and float64, gradcheck and gradgradcheck where a second derivative
is defined, the clear error where it is not, and torch.func.grad / vmap on TNLayer and
QCNNLevel against autograd and a loop."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fasttn.torch as ft  # noqa: E402
from fasttn.torch.ops import _contract  # noqa: E402

DTYPES = (torch.float32, torch.float64)


def _r(rng, *shape, dtype, grad=False, pos=False):
    a = rng.standard_normal(shape)
    a = np.abs(a) + 0.5 if pos else a
    return torch.tensor(a, dtype=dtype).requires_grad_(grad)


def _mpo(rng, dt, grad):
    x = _r(rng, 5, 12, dtype=dt, grad=grad)
    cores = [_r(rng, *s, dtype=dt, grad=grad) for s in ((1, 2, 3, 2), (2, 3, 2, 2), (2, 2, 2, 1))]
    return x, cores


def _samples(name, rng, dt):
    """Argument tuples for the op ``fasttn::name``."""
    ops = torch.ops.fasttn
    if name == "mpo_apply":
        return [(*_mpo(rng, dt, True), m) for m in ("dense", "network", "auto")]
    if name == "mpo_apply_backward":
        out = []
        for m in ("dense", "network"):
            x, cores = _mpo(rng, dt, True)
            pre = [p.detach() for p in ops.mpo_apply(x, cores, m)[1]]
            out.append((x, cores, pre, _r(rng, 5, 12, dtype=dt, grad=True), True))
        return out
    if name == "product_pool":
        return [(_r(rng, 3, 8, 4, dtype=dt, grad=True, pos=True), 2),
                (_r(rng, 2, 4, 6, 3, dtype=dt, grad=True, pos=True), 2)]
    if name == "product_pool_backward":
        return [(_r(rng, 3, 8, 4, dtype=dt, grad=True), _r(rng, 3, 4, 4, dtype=dt, grad=True), 2)]
    if name == "tree_node":
        return [(_r(rng, 2, 4, 4, 2, dtype=dt, grad=True),
                 _r(rng, 2, 2, 2, 2, 2, 2, 3, dtype=dt, grad=True))]
    if name == "tree_node_backward":
        return [(_r(rng, 2, 4, 4, 2, dtype=dt), _r(rng, 2, 2, 2, 2, 2, 2, 3, dtype=dt),
                 _r(rng, 2, 2, 2, 3, dtype=dt), True)]
    if name in ("mera_block", "mera_block_backward"):
        p, b, chi, d = 2, 2, 2, 3
        grad = name == "mera_block"
        args = (_r(rng, 2, 4, 4, p, dtype=dt, grad=grad), _r(rng, *(p,) * 4, *(b,) * 4, dtype=dt, grad=grad),
                _r(rng, 4, p, p, p, b, chi, dtype=dt, grad=grad), _r(rng, *(chi,) * 8, dtype=dt, grad=grad),
                _r(rng, chi, chi, chi, chi, d, dtype=dt, grad=grad))
        return [args] if grad else [args + (_r(rng, 2, 1, 1, d, dtype=dt),)]
    if name in ("mps_contract", "mps_contract_backward"):
        phi, cores, head = (_r(rng, 3, 6, 2, dtype=dt), 0.5 * _r(rng, 6, 4, 2, 4, dtype=dt),
                            _r(rng, 4, 3, 4, dtype=dt))
        if name == "mps_contract":
            return [(phi.requires_grad_(), cores.requires_grad_(), head.requires_grad_(), 2)]
        envs = ops.mps_contract(phi, cores, head, 2)[2:]
        return [(phi, cores, head, *envs, 2, _r(rng, 3, 3, dtype=dt),
                 _r(rng, 3, dtype=torch.float64), True)]
    x, w, g, b = (_r(rng, 4, 8, 3, dtype=dt), _r(rng, 5, 3, dtype=dt),
                  _r(rng, 3, dtype=dt, pos=True), _r(rng, 3, dtype=dt))
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    if name == "qcnn_level":
        return [tuple(t.requires_grad_() for t in (x, w, g, b)) + (rm, rv, 2, 1e-5, training)
                for training in (True, False)]
    _, mean, var, xi = ops.qcnn_level(x, w, g, b, rm, rv, 2, 1e-5, True)
    go = _r(rng, 4, 4, 5, dtype=dt)
    if name == "qcnn_level_backward":
        return [(x, w, g, b, mean, var, xi, go, 2, 1e-5, True, True)]
    if name == "qcnn_level_given_stats":
        return [tuple(t.requires_grad_() for t in (x, w, g, b)) + (mean, var, 2, 1e-5)]
    if name == "qcnn_level_given_stats_backward":
        return [(x, w, g, b, mean, var, xi, go, 2, 1e-5)]
    raise KeyError(name)


def test_every_op_is_registered():
    names = {q.split("::")[1] for q in _contract.OPS}
    assert {"mpo_apply", "product_pool", "tree_node", "mera_block", "mps_contract",
            "qcnn_level", "qcnn_level_given_stats"} <= names
    assert all(f"{n}_backward" in names for n in names if not n.endswith("_backward"))


@pytest.mark.parametrize("dt", DTYPES, ids=str)
@pytest.mark.parametrize("qualname", _contract.OPS)
def test_opcheck(qualname, dt, rng):
    name = qualname.split("::")[1]
    op = getattr(torch.ops.fasttn, name).default
    for args in _samples(name, rng, dt):  # KeyError: a new op without samples here
        result = torch.library.opcheck(op, args)
        assert set(result.values()) == {"SUCCESS"}, result
        assert len(result) == 4


def _mpo_fn(method):
    return lambda x, *c: ft.mpo_apply(x, c, method)


@pytest.mark.parametrize("method", ["dense", "network"])
def test_mpo_apply_second_derivative(method, rng):
    x, cores = _mpo(rng, torch.float64, True)
    assert torch.autograd.gradcheck(_mpo_fn(method), (x, *cores))
    assert torch.autograd.gradgradcheck(_mpo_fn(method), (x, *cores))


@pytest.mark.parametrize("shape", [(3, 8, 4), (2, 4, 6, 3)])
def test_product_pool_second_derivative(shape, rng):
    x = _r(rng, *shape, dtype=torch.float64, grad=True, pos=True)
    assert torch.autograd.gradcheck(ft.product_pool, (x,))
    assert torch.autograd.gradgradcheck(ft.product_pool, (x,))


def test_first_derivatives(rng):
    x, w = (_r(rng, 2, 4, 4, 2, dtype=torch.float64, grad=True),
            _r(rng, 2, 2, 2, 2, 2, 2, 3, dtype=torch.float64, grad=True))
    assert torch.autograd.gradcheck(ft.tree_node, (x, w))
    args = [t.detach().requires_grad_() for t in _samples("qcnn_level", rng, torch.float64)[0][:4]]
    assert torch.autograd.gradcheck(lambda *a: ft.qcnn_level(*a), args)


@pytest.mark.parametrize("name", ["tree_node", "mera_block", "mps_contract", "qcnn_level",
                                  "qcnn_level_given_stats"])
def test_double_backward_refused_clearly(name, rng):
    args = _samples(name, rng, torch.float64)[0]
    out = getattr(torch.ops.fasttn, name)(*args)
    out = out[0] if isinstance(out, (tuple, list)) else out
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    grads = torch.autograd.grad(out.square().sum(), leaves, create_graph=True)
    with pytest.raises(NotImplementedError, match=f"double backward is not supported for "
                                                  f"fasttn.{name}"):
        torch.autograd.grad(sum(g.sum() for g in grads), leaves)


def test_vmap_tnlayer():
    torch.manual_seed(0)
    layer = ft.TNLayer(16, 12, n_sites=2, bond_dim=3, dtype=torch.float64)
    xs = torch.randn(3, 4, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(torch.func.vmap(layer)(xs), torch.stack([layer(t) for t in xs]))


def test_vmap_qcnn_level():
    torch.manual_seed(0)
    layer = ft.QCNNLevel(3, 5, dtype=torch.float64).eval()
    xs = torch.rand(3, 4, 8, 3, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(torch.func.vmap(layer)(xs), torch.stack([layer(t) for t in xs]))
    p = [layer.weight, layer.gamma, layer.beta]
    f = lambda t: ft.qcnn_level(t, *p)  # noqa: E731  (training: statistics per sample)
    with torch.no_grad():
        torch.testing.assert_close(torch.func.vmap(f)(xs), torch.stack([f(t) for t in xs]))


def test_func_grad_and_vmap_tnlayer():
    torch.manual_seed(0)
    layer = ft.TNLayer(16, 12, n_sites=2, bond_dim=3, dtype=torch.float64)
    params = dict(layer.named_parameters())
    x = torch.randn(4, 16, dtype=torch.float64)

    def loss(p, x):
        return torch.func.functional_call(layer, p, (x,)).square().sum()

    g = torch.func.grad(loss)(params, x)
    loss(params, x).backward()
    for k, v in params.items():
        torch.testing.assert_close(g[k], v.grad)
    xs = torch.randn(3, 4, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(torch.func.vmap(layer)(xs), torch.stack([layer(t) for t in xs]))
    # per-sample gradients: vmap over grad
    per = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, xs)
    for i in range(3):
        ref = torch.func.grad(loss)(params, xs[i])
        for k in params:
            torch.testing.assert_close(per[k][i], ref[k])


def test_func_grad_and_vmap_qcnn_level():
    torch.manual_seed(0)
    layer = ft.QCNNLevel(3, 5, dtype=torch.float64)
    params = dict(layer.named_parameters())
    buffers = dict(layer.named_buffers())
    x = torch.rand(4, 8, 3, dtype=torch.float64)

    def loss(p, x):
        return torch.func.functional_call(layer, {**p, **buffers}, (x,)).square().sum()

    layer.eval()
    g = torch.func.grad(loss)(params, x)
    loss(params, x).backward()
    for k, v in params.items():
        torch.testing.assert_close(g[k], v.grad)
    xs = torch.rand(3, 4, 8, 3, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(torch.func.vmap(layer)(xs), torch.stack([layer(t) for t in xs]))
    # training mode: batch statistics per vmapped sample, through the functional op
    p = [params[k] for k in ("weight", "gamma", "beta")]
    f = lambda t: ft.qcnn_level(t, *p)  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(torch.func.vmap(f)(xs), torch.stack([f(t) for t in xs]))


@pytest.mark.parametrize("name", ["tree_node", "mera_block", "product_pool", "mps_contract",
                                  "qcnn_level", "qcnn_level_given_stats", "mpo_apply"])
def test_func_grad_matches_autograd(name, rng):
    args = _samples(name, rng, torch.float64)[0]
    idx = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]
    public = {"tree_node": ft.tree_node, "mera_block": ft.mera_block,
              "product_pool": ft.product_pool,
              "mps_contract": lambda *a: ft.mps_contract(*a)[0],
              "qcnn_level": lambda x, w, g, b, *_: ft.qcnn_level(x, w, g, b),
              "qcnn_level_given_stats": lambda x, w, g, b, m, v, *_: ft.qcnn_level_given_stats(
                  x, w, g, b, m, v),
              "mpo_apply": lambda x, cores, m: ft.mpo_apply(x, cores, m)}[name]

    def loss(*leaves):
        full = list(args)
        for i, t in zip(idx, leaves):
            full[i] = t
        return public(*full).square().sum()

    leaves = [args[i] for i in idx]
    got = torch.func.grad(loss, argnums=tuple(range(len(leaves))))(*leaves)
    want = torch.autograd.grad(loss(*leaves), leaves)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


# ------------------------------------------------------------------------ mixed precision
@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_inputs_computed_in_float32(low, rng):
    """bf16 / fp16 tensors are computed in float32 and come back in their dtype; the error
    against float64 is the rounding of inputs and output (README: < 1e-2 bf16, < 2e-3 fp16,
    mera_block's eighth-order products 5e-2 in bf16)."""
    tol = 1e-2 if low == torch.bfloat16 else 2e-3
    x, cores = _mpo(rng, torch.float64, True)
    ref = ft.mpo_apply(x, cores)
    out = ft.mpo_apply(x.to(low), [c.to(low) for c in cores])
    assert out.dtype == low
    assert (out.double() - ref).abs().max() <= tol * ref.abs().max()
    xl = x.detach().to(low).requires_grad_()
    ft.mpo_apply(xl, [c.detach().to(low) for c in cores]).sum().backward()
    assert xl.grad.dtype == low
    p = _r(rng, 3, 8, 4, dtype=torch.float64, pos=True)
    ref = ft.product_pool(p)
    assert (ft.product_pool(p.to(low)).double() - ref).abs().max() <= tol * ref.abs().max()


def test_cnntn_bf16_autocast_training_step():
    """A training step of the CNN + TNLayer model under torch.autocast(bfloat16) on the CPU:
    its loss within 2e-3 (relative) of float32's, and its gradients close too."""
    torch.manual_seed(0)
    model = ft.CNNTN(channels=(4, 8, 8), tn_units=16, n_sites=2, bond_dim=3)
    images, labels = torch.rand(16, 28, 28), torch.randint(0, 10, (16,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model(images).float(), labels)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss32, grads32 = step()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, grads16 = step()
    assert abs(loss16.item() - loss32.item()) <= 2e-3 * abs(loss32.item())
    g32 = torch.cat([g.flatten() for g in grads32])
    g16 = torch.cat([g.float().flatten() for g in grads16])
    assert torch.isfinite(g16).all()
    assert (g16 - g32).norm() <= 0.1 * g32.norm()
    torch.optim.SGD(model.parameters(), lr=0.1).step()  # the step itself runs


@pytest.mark.parametrize("name", ["tree_node", "mera_block", "product_pool", "mps_contract",
                                  "qcnn_level_given_stats"])
def test_vmap_matches_a_loop(name, rng):
    args = [a.detach() if isinstance(a, torch.Tensor) else a
            for a in _samples(name, rng, torch.float64)[0]]
    x = torch.stack([args[0], args[0] * 0.5 + 0.25])
    public = {"tree_node": ft.tree_node, "mera_block": ft.mera_block,
              "product_pool": ft.product_pool,
              "mps_contract": lambda *a: ft.mps_contract(*a)[0],
              "qcnn_level_given_stats": lambda x, w, g, b, m, v, *_: ft.qcnn_level_given_stats(
                  x, w, g, b, m, v)}[name]
    f = lambda t: public(t, *args[1:])  # noqa: E731
    torch.testing.assert_close(torch.func.vmap(f)(x), torch.stack([f(t) for t in x]))
