"""fasttn.torch.MPSLayer and the mps_contract custom op: outputs equal fasttn's op and
fasttn.MPS's with the same tensors, gradients against float64 finite differences (gradcheck)
and against the op's backward, float32 and float64, bad input."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fasttn  # noqa: E402
from fasttn import ops  # noqa: E402
from fasttn.data import load_task  # noqa: E402
from fasttn.torch import MPSLayer, mps_contract  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layer_equals_the_op(dtype):
    torch.manual_seed(0)
    layer = MPSLayer(n_sites=9, n_classes=4, bond_dim=5, d=2, center=4, dtype=dtype)
    x = torch.rand(6, 9, dtype=dtype)
    phi = ops.feature_map(x.numpy(), "cos_sin", 2)
    # the layer's own feature map is fasttn's (up to rounding)
    np.testing.assert_allclose(layer.features(x).numpy(), phi,
                               rtol=1e-6 if dtype == torch.float32 else 1e-14, atol=1e-7)
    out, log_scale = layer.forward_with_scale(torch.from_numpy(phi))
    assert out.dtype == dtype and log_scale.dtype == torch.float64
    want, want_ls = ops.mps_contract(phi, layer.cores.detach().numpy(),
                                     layer.head.detach().numpy(), 4)
    np.testing.assert_array_equal(out.detach().numpy(), want)
    np.testing.assert_array_equal(log_scale.detach().numpy(), want_ls)
    # backward equals the op's backward for a loss of both outputs
    g_out = torch.randn(6, 4, dtype=dtype)
    g_ls = torch.randn(6, dtype=torch.float64)
    feats = torch.from_numpy(phi).requires_grad_(True)
    o, ls = mps_contract(feats, layer.cores, layer.head, 4)
    ((o * g_out).sum() + (ls * g_ls).sum()).backward()
    _, _, saved = ops.mps_contract_forward(phi, layer.cores.detach().numpy(),
                                           layer.head.detach().numpy(), 4)
    g_phi, g_cores, g_head = ops.mps_contract_backward(saved, g_out.numpy(), g_ls.numpy())
    np.testing.assert_array_equal(feats.grad.numpy(), g_phi)
    np.testing.assert_array_equal(layer.cores.grad.numpy(), g_cores)
    np.testing.assert_array_equal(layer.head.grad.numpy(), g_head)


@pytest.mark.parametrize("center", [0, 3, 7])
def test_gradcheck_float64(center):
    torch.manual_seed(1)
    phi = torch.randn(3, 7, 2, dtype=torch.float64, requires_grad=True)
    cores = (torch.eye(3, dtype=torch.float64)[None, :, None, :]
             + 0.3 * torch.randn(7, 3, 2, 3, dtype=torch.float64)).requires_grad_(True)
    head = torch.randn(3, 4, 3, dtype=torch.float64, requires_grad=True)

    def f(p, c, h):
        out, ls = mps_contract(p, c, h, center)
        return out, ls

    assert torch.autograd.gradcheck(f, (phi, cores, head), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_float32_gradients_follow_float64():
    torch.manual_seed(2)
    layer = MPSLayer(n_sites=30, n_classes=3, bond_dim=4, dtype=torch.float64)
    x = torch.rand(5, 30, dtype=torch.float64)
    layer.forward(x).square().sum().backward()
    g64 = layer.cores.grad.clone()
    layer32 = MPSLayer(n_sites=30, n_classes=3, bond_dim=4, dtype=torch.float32)
    with torch.no_grad():
        layer32.cores.copy_(layer.cores)
        layer32.head.copy_(layer.head)
    layer32.forward(x.float()).square().sum().backward()
    err = (layer32.cores.grad.double() - g64).abs().max() / g64.abs().max()
    assert err < 1e-4


def test_layer_equals_the_estimator():
    X_tr, y_tr, X_te, _ = load_task("digits", seed=0)
    m = fasttn.MPS(bond_dim=5, epochs=1, dtype="float64", random_state=0).fit(X_tr[:100],
                                                                              y_tr[:100])
    layer = MPSLayer(n_sites=64, n_classes=10, bond_dim=5, center=m.center_,
                     dtype=torch.float64)
    with torch.no_grad():
        layer.cores.copy_(torch.from_numpy(m.cores_))
        layer.head.copy_(torch.from_numpy(m.head_))
    images = m._check_X(X_te[:20], fitted=True).reshape(20, -1)[:, m.order_]
    out = layer(torch.from_numpy(np.ascontiguousarray(images, np.float64)))
    np.testing.assert_allclose(out.detach().numpy(), m.decision_function(X_te[:20]),
                               rtol=1e-12, atol=1e-14)


def test_layer_trains_and_bad_input():
    torch.manual_seed(0)
    layer = MPSLayer(n_sites=16, n_classes=2, bond_dim=4)
    x = torch.rand(32, 16)
    y = (x[:, :8].mean(1) > x[:, 8:].mean(1)).long()
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="x: expected"):
        layer(torch.rand(3, 15))
    with pytest.raises(ValueError, match="center"):
        MPSLayer(n_sites=4, n_classes=2, center=5)
    with pytest.raises(ValueError, match="cores"):
        mps_contract(torch.rand(2, 4, 2), torch.rand(4, 3, 2, 2), torch.rand(3, 2, 3), 2)
