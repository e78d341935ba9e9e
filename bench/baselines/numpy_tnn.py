"""The DMRG-like PaL sweep of a TNN written as plain NumPy: a loop over bonds with
``np.einsum`` contractions and ``np.linalg.svd``, as a research script does it.

Same model and algorithm as ``fasttn.TNN(solver="sweep", schedule="pal")`` with one TNLayer
between a frozen and a trainable Dense layer: environments are cached and updated like the
library's (step (g) of the paper), the biases and the last dense layer take an Adam step per
bond update, as ``TNN``'s PaL schedule does.
"""
from __future__ import annotations

import numpy as np


def _relu(z):
    return np.maximum(z, 0)


class NumpyTNNSweep:
    """``x -> frozen A -> relu(. W + b) -> softmax(. V + c)``, ``W`` an MPO of 2x2 cores."""

    def __init__(self, A, cores, b, V, c, bond_dim, lr=0.1, dense_lr=0.01):
        self.A, self.b, self.V, self.c = A.copy(), b.copy(), V.copy(), c.copy()
        self.cores = [t.copy() for t in cores]
        self.D = bond_dim
        self.lr, self.dense_lr = lr, dense_lr
        self.n = len(cores)
        self.t = 0
        self.moments = [(np.zeros_like(p), np.zeros_like(p)) for p in (self.b, self.V, self.c)]

    def _adam(self, grads, b1=0.9, b2=0.999, eps=1e-8):
        self.t += 1
        for p, g, (m, v) in zip((self.b, self.V, self.c), grads, self.moments):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= self.dense_lr * (m / (1 - b1 ** self.t)) / (np.sqrt(v / (1 - b2 ** self.t)) + eps)

    # environments: L[k] = cores 0..k-1 as (I<, O<, D_k); R[k] = cores k..N-1 as (D_k, I>, O>)
    def _left(self, L, core):
        t = np.einsum("xya,aiob->xiyob", L, core)
        return t.reshape(t.shape[0] * t.shape[1], t.shape[2] * t.shape[3], t.shape[4])

    def _right(self, core, R):
        t = np.einsum("aiob,bxy->aixoy", core, R)
        return t.reshape(t.shape[0], t.shape[1] * t.shape[2], t.shape[3] * t.shape[4])

    def _envs(self):
        L = [np.ones((1, 1, 1))]
        for core in self.cores:
            L.append(self._left(L[-1], core))
        R = [np.ones((1, 1, 1))]
        for core in reversed(self.cores):
            R.append(self._right(core, R[-1]))
        return L, R[::-1]

    def _weight(self, L, B, R):
        """W from the left environment, the bond tensor (a, i1, o1, i2, o2, b) and the right."""
        da, i1, o1, i2, o2, db = B.shape
        mid = np.einsum("aiojpb->aijopb", B).reshape(da, i1 * i2, o1 * o2, db)
        t = self._left(L, mid)
        w = np.einsum("xya,auv->xuyv", t, R)
        return w.reshape(w.shape[0] * w.shape[1], w.shape[2] * w.shape[3])

    def _bond_grad(self, L, G, R, shape):
        da, i1, o1, i2, o2, db = shape
        il, ol, _ = L.shape
        _, ir, or_ = R.shape
        g = G.reshape(il, i1, i2, ir, ol, o1, o2, or_)
        t = np.einsum("xya,xijuyopv->aijuopv", L, g)
        t = np.einsum("aijuopv,buv->aijopb", t, R)
        return np.einsum("aijopb->aiojpb", t)

    def _loss_grads(self, X, y, W):
        n = X.shape[0]
        h = X @ self.A
        z = h @ W + self.b
        a = _relu(z)
        s = a @ self.V + self.c
        s = s - s.max(axis=1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        loss = -np.mean(np.log(p[np.arange(n), y]))
        p[np.arange(n), y] -= 1
        gs = p / n
        gV, gc = a.T @ gs, gs.sum(axis=0)
        gz = (gs @ self.V.T) * (z > 0)
        return loss, h.T @ gz, gz.sum(axis=0), gV, gc

    def dense_weight(self):
        L, R = self._envs()
        return L[-1][:, :, 0]

    def sweep(self, X, y):
        L, R = self._envs()
        bonds = list(range(self.n - 1))
        for k, direction in [(k, "right") for k in bonds] + [(k, "left") for k in bonds[::-1]]:
            B = np.einsum("aiob,bjpc->aiojpc", self.cores[k], self.cores[k + 1])
            W = self._weight(L[k], B, R[k + 2])
            loss, gW, gb, gV, gc = self._loss_grads(X, y, W)
            B = B - self.lr * self._bond_grad(L[k], gW, R[k + 2], B.shape)
            da, i1, o1, i2, o2, db = B.shape
            u, s, vt = np.linalg.svd(B.reshape(da * i1 * o1, i2 * o2 * db), full_matrices=False)
            keep = min(self.D, len(s))
            root = np.sqrt(s[:keep])
            self.cores[k] = (u[:, :keep] * root).reshape(da, i1, o1, keep)
            self.cores[k + 1] = (root[:, None] * vt[:keep]).reshape(keep, i2, o2, db)
            p = s[:keep] ** 2 / np.sum(s[:keep] ** 2)
            self.entropy = -np.sum(p * np.log(np.where(p > 0, p, 1)))
            if direction == "right":
                L[k + 1] = self._left(L[k], self.cores[k])
            else:
                R[k + 1] = self._right(self.cores[k + 1], R[k + 2])
            self._adam((gb, gV, gc))
        return loss
