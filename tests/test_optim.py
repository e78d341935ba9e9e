import importlib.util

import numpy as np
import pytest

from conftest import DTYPES, assert_close
from fasttn.train import AdamW


def adamw_spec(p, grads, lr, weight_decay, betas=(0.9, 0.999), eps=1e-8):
    """AdamW as Loshchilov & Hutter write it (and torch.optim.AdamW computes it), float64."""
    p = p.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        p = p * (1 - lr * weight_decay)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat = m / (1 - betas[0] ** t)
        v_hat = v / (1 - betas[1] ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (5, 3), (2, 3, 4)])
def test_adamw_matches_the_update_rule(rng, dtype, shape):
    p0 = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 1) for _ in range(6)]
    p = p0.copy()
    opt = AdamW([p], lr=0.01, weight_decay=0.05)
    for g in grads:
        opt.step([g.astype(dtype)])
    assert p.dtype == dtype
    expected = adamw_spec(p0, [g.astype(dtype).astype(np.float64) for g in grads], 0.01, 0.05)
    # float32: each step rounds the parameter once (relative 6e-8 of its size)
    assert_close(p, expected, dtype, "AdamW")
    # a non-contiguous parameter takes the array-expression path: the same numbers
    q = np.asfortranarray(np.atleast_2d(p0.copy())) if len(shape) > 1 else None
    if q is not None and not q.flags.c_contiguous:
        opt = AdamW([q], lr=0.01, weight_decay=0.05)
        for g in grads:
            opt.step([np.atleast_2d(g.astype(dtype))])
        assert_close(q, expected.reshape(q.shape), dtype, "AdamW, strided")
    with pytest.raises(ValueError, match="grads: expected shape"):
        AdamW([p]).step([np.zeros(3)])


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
def test_adamw_matches_torch(rng):
    import torch

    p0 = rng.standard_normal((4, 5))
    grads = [rng.standard_normal((4, 5)) for _ in range(5)]
    p = p0.copy()
    opt = AdamW([p], lr=0.02, weight_decay=0.01)
    tp = torch.nn.Parameter(torch.tensor(p0))
    topt = torch.optim.AdamW([tp], lr=0.02, weight_decay=0.01)
    for g in grads:
        opt.step([g])
        tp.grad = torch.tensor(g)
        topt.step()
    assert_close(p, tp.detach().numpy(), np.float64, "AdamW vs torch")
