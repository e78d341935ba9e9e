"""The 2D tree tensor network written as plain NumPy: one ``np.einsum`` per level (BLAS
path search on), normalisation between levels, the backward by the same einsums with one
tensor taken out, as a research script does it.

Same network and arithmetic as ``fasttn.TTN2D(top="multiclass")``'s forward and
backward (softmax cross-entropy), from the same weights.
"""
from __future__ import annotations

import numpy as np

_EQ = "nija,nijb,nijc,nijd,ijabcdz->nijz"


def _corners(x):
    n, h, w, p = x.shape
    blocks = x.reshape(n, h // 2, 2, w // 2, 2, p)
    return [blocks[:, :, r, :, c, :] for r in (0, 1) for c in (0, 1)]


def node_forward(x, w):
    return np.einsum(_EQ, *_corners(x), w, optimize=True)


def node_backward(x, w, g):
    """``(g_x, g_w)`` of one level."""
    terms = ["nija", "nijb", "nijc", "nijd", "ijabcdz", "nijz"]
    ops = _corners(x) + [w, g]

    def grad(k):
        rest = [t for i, t in enumerate(terms) if i != k]
        return np.einsum(",".join(rest) + "->" + terms[k],
                         *[o for i, o in enumerate(ops) if i != k], optimize=True)

    g_x = np.empty_like(x)
    gb = g_x.reshape(x.shape[0], x.shape[1] // 2, 2, x.shape[2] // 2, 2, x.shape[3])
    for k, (r, c) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        gb[:, :, r, :, c, :] = grad(k)
    return g_x, grad(4)


def train_step_grads(weights, X, y):
    """Loss and weight gradients of one batch (images ``X`` in [0, 1])."""
    ang = (np.pi / 2) * X.astype(weights[0].dtype)
    x = np.stack([np.cos(ang), np.sin(ang)], axis=-1)
    inputs, norms = [], []
    for level, w in enumerate(weights):
        inputs.append(x)
        out = node_forward(x, w)
        if level < len(weights) - 1:
            norm = np.sqrt(np.sum(out.astype(np.float64) ** 2, axis=-1))
            x = (out / norm[..., None]).astype(out.dtype)
            norms.append((x, norm))
    n = X.shape[0]
    s = out.reshape(n, -1).astype(np.float64)
    s = s - s.max(axis=1, keepdims=True)
    p = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
    loss = float(-np.mean(np.log(p[np.arange(n), y])))
    p[np.arange(n), y] -= 1
    g = (p / n).astype(out.dtype).reshape(out.shape)
    grads = [None] * len(weights)
    for level in range(len(weights) - 1, -1, -1):
        g_x, grads[level] = node_backward(inputs[level], weights[level], g)
        if level:
            y_, norm = norms[level - 1]
            proj = np.sum(y_ * g_x, axis=-1, keepdims=True)
            g = ((g_x - y_ * proj) / norm[..., None]).astype(g_x.dtype)
    return loss, grads
