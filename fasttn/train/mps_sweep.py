"""Two-site DMRG sweeps for the MPS classifier (Stoudenmire & Schwab, 2016).

The chain is held as a list of three-leg tensors ``(left bond, physical, right bond)``, the
class head at position ``center`` between sites ``center - 1`` and ``center`` (the form of
``ops.mps_contract.canonical``). A bond step at ``center = c``:

1. merge ``B = A[c-1] H A[c]``, a tensor ``(a, d, C, d, b)`` holding both pixels and the
   class leg;
2. take ``steps`` Adam steps on ``B`` against the mean softmax cross-entropy of the whole
   training set, whose scores are linear in ``B``:
   ``out[n, c] = l[n, a] phi_{c-1}[n, s] B[a, s, c, t, b] phi_c[n, t] r[n, b]``, with the
   cached normalised environments ``l`` (sites ``0 .. c-2``) and ``r`` (sites
   ``c+1 .. L-1``);
3. split ``B`` with ``ops.svd_truncate`` (at most ``max_bond`` values, none below
   ``cutoff`` times the largest): moving right, ``(a d) | (d C b)`` gives the new
   left-orthogonal ``A[c-1]`` and the bond it chose; a second split ``(m d) | (C b)``
   puts the head right of ``A[c]`` (``center = c + 1``); moving left, the mirror image;
4. move one environment one site (``ops.mps_environment_step``): the left one across the
   new ``A[c-1]`` moving right, the right one across the new ``A[c]`` moving left. Nothing
   else is recomputed.

One sweep starts and ends at the model's centre: right to ``center = L - 1``, left to
``center = 1``, right back. Every bond between sites is visited (most twice); the bond
dimension chosen at its last visit is recorded. This module updates tensors, never a model.
"""
from __future__ import annotations

import numbers
from typing import Any, List, Optional, Tuple

import numpy as np

from ..ops.mps_contract import canonical, mps_environment_step
from ..ops.svd_truncate import svd_truncate
from .losses import cross_entropy_loss
from .optim import AdamW

__all__ = ["MPSSweep", "mps_sweep_schedule"]


def mps_sweep_schedule(n_sites: int, center: int) -> List[Tuple[int, str]]:
    """``(center, direction)`` of every bond step of one sweep from ``center`` and back."""
    right = [(c, "right") for c in range(center, n_sites - 1)]
    left = [(c, "left") for c in range(n_sites - 1, 1, -1)]
    back = [(c, "right") for c in range(1, center)]
    return right + left + back


class MPSSweep:
    """An MPS classifier's tensors and the cached environments of a training set.

    Parameters
    ----------
    phi : (n, L, d) array
        Feature vectors of the training images in chain order.
    y : (n,) int
        Class indices.
    cores : (L, D, d, D), head : (D, C, D), center : int
        The classifier in storage form (``fasttn.MPS.params_``); ``1 <= center <= L - 1``.
        Copied and brought into mixed canonical form (same scores).
    max_bond : int
        Largest bond a split may keep (at most ``D``, the storage bond).
    cutoff : float
        Relative singular-value cutoff of the splits (0 keeps up to ``max_bond``).
    lr : float
        Adam learning rate of the steps on each bond tensor.
    steps : int
        Adam steps per bond (0: split only, the chain's scores unchanged up to truncation).
    head_norm : float, optional
        Rescale the head (after the canonical form) to this Frobenius norm. In mixed
        canonical form the head holds the norm of the whole chain, which grows
        exponentially with its length, while the scores are taken with unit
        environments: a fresh chain starts with scores of order ``head_norm``. None keeps
        the chain's scale (its scores change by no factor at all).
    """

    def __init__(self, phi: np.ndarray, y: np.ndarray, cores: np.ndarray, head: np.ndarray,
                 center: int, max_bond: int, cutoff: float = 0.0, lr: float = 0.01,
                 steps: int = 5, head_norm: Optional[float] = None):
        phi = np.asarray(phi)
        if phi.ndim != 3:
            raise ValueError(f"phi: expected (n, sites, features), got shape {phi.shape}")
        n, L, d = phi.shape
        if L < 2:
            raise ValueError(f"phi: a two-site sweep needs at least 2 sites, got {L}")
        if tuple(cores.shape[:1] + cores.shape[2:3]) != (L, d) or cores.ndim != 4:
            raise ValueError(f"cores: expected ({L}, D, {d}, D), got {tuple(cores.shape)}")
        D = cores.shape[1]
        if isinstance(center, bool) or not isinstance(center, numbers.Integral) \
                or not 1 <= center <= L - 1:
            raise ValueError(f"center: a two-site sweep needs the head between two sites, "
                             f"1 <= center <= {L - 1}, got {center!r}")
        for name, v in (("max_bond", max_bond), ("steps", steps)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{name}: expected an integer, got {v!r}")
        if not 1 <= max_bond <= D:
            raise ValueError(f"max_bond: expected 1 to the storage bond {D}, got {max_bond}")
        if steps < 0:
            raise ValueError(f"steps: expected an integer >= 0, got {steps}")
        for name, v in (("cutoff", cutoff), ("lr", lr)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v) \
                    or v < 0:
                raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
        y = np.asarray(y)
        if y.shape != (n,):
            raise ValueError(f"y: expected {n} class indices, got shape {y.shape}")
        self.phi = np.ascontiguousarray(phi, np.float64)
        self.y = y.astype(np.int64)
        self.shapes = (cores.shape, head.shape, cores.dtype)
        self.n_classes = head.shape[1]
        self.max_bond, self.cutoff = int(max_bond), float(cutoff)
        self.lr, self.steps = float(lr), int(steps)
        self.center = int(center)
        ts = canonical.chain_tensors(cores, head, center)
        canonical.left_orthogonalize(ts, 0, center)
        canonical.right_orthogonalize(ts, len(ts) - 1, center + 1)
        if head_norm is not None:
            if isinstance(head_norm, bool) or not isinstance(head_norm, numbers.Real) \
                    or not np.isfinite(head_norm) or head_norm <= 0:
                raise ValueError(f"head_norm: expected None or a finite number > 0, got "
                                 f"{head_norm!r}")
            norm = np.linalg.norm(ts[center])
            if norm > 0:
                ts[center] *= head_norm / norm
        self.ts = ts
        self.n_sites = L
        self.bonds = np.zeros(L - 1, np.int64)  # chosen at each bond's last visit
        for k in range(L - 1):  # the dimensions the chain starts with
            self.bonds[k] = self.site(k).shape[2]
        self.loss = float("nan")
        self.accuracy = float("nan")
        self.lefts: List[Optional[np.ndarray]] = [None] * (L + 1)
        self.rights: List[Optional[np.ndarray]] = [None] * (L + 1)
        self.lefts, self.rights = self.environments()

    # -------------------------------------------------------------------------- chain
    def site(self, k: int) -> np.ndarray:
        """Site tensor ``k`` (the head is not a site)."""
        return self.ts[k if k < self.center else k + 1]

    def head(self) -> np.ndarray:
        return self.ts[self.center]

    def storage(self) -> Tuple[np.ndarray, np.ndarray, int]:
        """``(cores, head, center)`` in the storage shapes and dtype given."""
        cores, head = canonical.storage_from_chain(self.ts, self.center, *self.shapes)
        return cores, head, self.center

    def environments(self) -> Tuple[List[Optional[np.ndarray]], List[Optional[np.ndarray]]]:
        """The environments the next bond step needs, computed from scratch:
        ``lefts[k]`` (sites ``0 .. k-1``) for ``k <= center - 1`` and ``rights[k]`` (sites
        ``k .. L-1``) for ``k >= center + 1``; the others None."""
        n, L, _ = self.phi.shape
        lefts: List[Optional[np.ndarray]] = [None] * (L + 1)
        rights: List[Optional[np.ndarray]] = [None] * (L + 1)
        lefts[0] = np.ones((n, 1))
        for k in range(self.center - 1):
            lefts[k + 1] = mps_environment_step(lefts[k], self.site(k), self.phi[:, k],
                                                "left")[0]
        rights[L] = np.ones((n, 1))
        for k in range(L - 1, self.center, -1):
            rights[k] = mps_environment_step(rights[k + 1], self.site(k), self.phi[:, k],
                                             "right")[0]
        return lefts, rights

    # --------------------------------------------------------------------- bond steps
    def bond_tensor(self) -> np.ndarray:
        """``B (a, d, C, d, b)`` of the two sites around the head."""
        c = self.center
        return np.einsum("asx,xcy,ytb->asctb", self.ts[c - 1], self.ts[c], self.ts[c + 1])

    def _bond_inputs(self) -> Tuple[np.ndarray, np.ndarray]:
        """``X = l (x) phi_{c-1}`` ``(n, a d)`` and ``Y = phi_c (x) r`` ``(n, d b)``."""
        c = self.center
        n = self.phi.shape[0]
        l, r = self.lefts[c - 1], self.rights[c + 1]
        X = (l[:, :, None] * self.phi[:, c - 1, None, :]).reshape(n, -1)
        Y = (self.phi[:, c, :, None] * r[:, None, :]).reshape(n, -1)
        return X, Y

    @staticmethod
    def bond_scores(X: np.ndarray, Y: np.ndarray, bond: np.ndarray) -> np.ndarray:
        """Normalised scores ``(n, C)`` of the chain with bond tensor ``bond``."""
        n = X.shape[0]
        a, d, C, _, b = bond.shape
        t = (X @ bond.reshape(a * d, C * d * b)).reshape(n, C, d * b)
        return np.einsum("ncj,nj->nc", t, Y)

    @staticmethod
    def bond_gradient(X: np.ndarray, Y: np.ndarray, g_out: np.ndarray,
                      shape: Tuple[int, ...]) -> np.ndarray:
        """``dL/dB`` from ``dL/d out``."""
        n = X.shape[0]
        a, d, C, d2, b = shape
        gx = (X[:, :, None] * g_out[:, None, :]).reshape(n, -1)   # (n, a d C)
        return (gx.T @ Y).reshape(shape)

    def optimise_bond(self) -> np.ndarray:
        """``B`` after ``steps`` Adam steps on the training loss (mean cross-entropy)."""
        bond = np.ascontiguousarray(self.bond_tensor())
        X, Y = self._bond_inputs()
        opt = AdamW([bond], lr=self.lr, weight_decay=0.0) if self.steps else None
        for _ in range(self.steps):
            _, g = cross_entropy_loss(self.bond_scores(X, Y, bond), self.y)
            opt.step([self.bond_gradient(X, Y, g, bond.shape)])
        out = self.bond_scores(X, Y, bond)
        self.loss, _ = cross_entropy_loss(out, self.y)
        self.accuracy = float(np.mean(np.argmax(out, axis=1) == self.y))
        return bond

    def _split(self, m: np.ndarray, absorb: str):
        res = svd_truncate(np.ascontiguousarray(m), max_bond=self.max_bond, cutoff=self.cutoff,
                           absorb=absorb)
        return res.left, res.right

    def split(self, bond: np.ndarray, direction: str) -> int:
        """Write ``B`` back as two sites and the head, the head moved one site towards
        ``direction``; move the environment on the side left behind. Returns the bond
        dimension chosen between the two sites."""
        c = self.center
        a, d, C, d2, b = bond.shape
        if direction == "right":
            left, rest = self._split(bond.transpose(0, 1, 3, 2, 4).reshape(a * d, d2 * C * b),
                                     "right")
            m = left.shape[1]
            site_l = left.reshape(a, d, m)
            site_r, head = self._split(rest.reshape(m * d2, C * b), "right")
            self.ts[c - 1:c + 2] = [site_l, site_r.reshape(m, d2, -1),
                                    head.reshape(-1, C, b)]
            self.center = c + 1
            self.lefts[c] = mps_environment_step(self.lefts[c - 1], site_l,
                                                 self.phi[:, c - 1], "left")[0]
        elif direction == "left":
            rest, right = self._split(bond.transpose(0, 2, 1, 3, 4).reshape(a * C * d, d2 * b),
                                      "left")
            m = right.shape[0]
            site_r = right.reshape(m, d2, b)
            head, site_l = self._split(rest.reshape(a * C, d * m), "left")
            self.ts[c - 1:c + 2] = [head.reshape(a, C, -1), site_l.reshape(-1, d, m), site_r]
            self.center = c - 1
            self.rights[c] = mps_environment_step(self.rights[c + 1], site_r,
                                                  self.phi[:, c], "right")[0]
        else:
            raise ValueError(f"direction: expected 'right' or 'left', got {direction!r}")
        self.bonds[c - 1] = m
        return m

    def step(self, direction: str) -> int:
        """One bond step (optimise, split, move): returns the bond chosen."""
        return self.split(self.optimise_bond(), direction)

    def sweep(self) -> np.ndarray:
        """One sweep from the current centre to the right end, the left end and back.

        Returns
        -------
        (L - 1,) int64: the dimension of every bond between sites at its last visit.
        """
        for c, direction in mps_sweep_schedule(self.n_sites, self.center):
            assert self.center == c
            self.step(direction)
        return self.bonds.copy()
