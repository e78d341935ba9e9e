"""DMRG-like sweeps over the cores of matrix product operators (Jahromi & Orus, Sec. III).

For each bond ``k`` (left to right, then back): form the bond tensor
``B = core_k . core_k+1``, take ``dL/dB`` from the model's ``dL/dW`` through the cached left
and right environments, step ``B <- B - lr dL/dB``, split it again with one fused
truncated SVD (``ops.svd_truncate``, sqrt(S) absorbed on both sides) and update the
environment on the side the sweep moves away from. This module updates cores, never a
model: the model hands in a ``forward_backward(ws)`` that evaluates the loss with the given
dense weights and returns their gradients.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..ops.mpo import cpu as mpo_cpu
from ..ops.svd_truncate import svd_truncate

__all__ = ["MPOSweep", "CompiledMPOSweep", "sweep_schedule", "run_sweep"]


def sweep_schedule(n_sites: int) -> List[Tuple[int, str]]:
    """Bond updates of one sweep: ``(bond, direction)``, left to right then right to left."""
    bonds = list(range(n_sites - 1))
    return [(k, "right") for k in bonds] + [(k, "left") for k in reversed(bonds)]


class MPOSweep:
    """One MPO's cores (updated in place) with their cached environments.

    ``pre[k]`` holds cores ``0..k-1`` contracted, ``suf[k]`` cores ``k..N-1``; a bond
    update at ``k`` needs ``pre[k]`` and ``suf[k+2]``, which the schedule keeps valid.
    """

    def __init__(self, cores: List[np.ndarray], max_bond: int, cutoff: float = 0.0):
        if len(cores) < 2:
            raise ValueError(f"cores: a sweep needs at least 2 cores (one bond), got {len(cores)}")
        self.cores = cores
        self.max_bond = int(max_bond)
        self.cutoff = float(cutoff)
        n = len(cores)
        self.schedule = sweep_schedule(n)
        self.n_bonds = n - 1
        # last singular values and entropy seen at each bond
        self.s: List[Optional[np.ndarray]] = [None] * self.n_bonds
        self.entropy = np.zeros(self.n_bonds)
        self.discarded = np.zeros(self.n_bonds)
        self.refresh()

    def refresh(self) -> None:
        """Recompute every environment (after the cores changed outside the sweep)."""
        self.pre = mpo_cpu.prefixes(self.cores)
        self.suf = mpo_cpu.suffixes(self.cores)

    def dense(self) -> np.ndarray:
        """The current ``W`` from the cached environments."""
        return mpo_cpu.contract_with_envs(self.pre[0], self.cores[0], self.suf[1])

    def bond_tensor(self, k: int) -> np.ndarray:
        """``B (Da, i1, o1, i2, o2, Db)`` of cores ``k`` and ``k+1``."""
        return np.tensordot(self.cores[k], self.cores[k + 1], axes=([3], [0]))

    def dense_from_bond(self, k: int, bond: np.ndarray) -> np.ndarray:
        return mpo_cpu.contract_with_envs(self.pre[k], _grouped(bond), self.suf[k + 2])

    def bond_grad(self, k: int, g_w: np.ndarray) -> np.ndarray:
        """``dL/dB`` from ``dL/dW``."""
        da, i1, o1, i2, o2, db = self.bond_tensor_shape(k)
        g = mpo_cpu.segment_grad(self.pre[k], g_w, self.suf[k + 2], i1 * i2, o1 * o2)
        return g.reshape(da, i1, i2, o1, o2, db).transpose(0, 1, 3, 2, 4, 5)

    def step_scale(self, k: int) -> float:
        """``1 / (|L|_2 |R|_2)^2`` for the environments of bond ``k``: a step ``dB`` moves
        ``W`` by at most ``|L|_2 |dB| |R|_2`` and the gradient is at most
        ``|L|_2 |dL/dW| |R|_2``, so the scaled step moves ``W`` no further than a plain
        gradient step on ``W`` itself, whatever the gauge and size of the environments."""
        left = self.pre[k].reshape(-1, self.pre[k].shape[2])
        right = self.suf[k + 2].reshape(self.suf[k + 2].shape[0], -1)
        l2 = float(np.linalg.eigvalsh(left.T @ left)[-1])
        r2 = float(np.linalg.eigvalsh(right @ right.T)[-1])
        return 1.0 / max(l2 * r2, 1e-300)

    def bond_tensor_shape(self, k: int) -> Tuple[int, ...]:
        a, b = self.cores[k], self.cores[k + 1]
        return (a.shape[0], a.shape[1], a.shape[2], b.shape[1], b.shape[2], b.shape[3])

    def split(self, k: int, bond: np.ndarray, direction: str) -> None:
        """Truncated SVD of ``B`` back into cores ``k, k+1``; update the environment."""
        da, i1, o1, i2, o2, db = bond.shape
        res = svd_truncate(np.ascontiguousarray(bond).reshape(da * i1 * o1, i2 * o2 * db),
                           max_bond=self.max_bond, cutoff=self.cutoff, absorb="both")
        keep = res.s.shape[-1]
        self.cores[k] = np.ascontiguousarray(res.left).reshape(da, i1, o1, keep)
        self.cores[k + 1] = np.ascontiguousarray(res.right).reshape(keep, i2, o2, db)
        self.s[k], self.entropy[k], self.discarded[k] = res.s, res.entropy, res.discarded
        if direction == "right":
            self.pre[k + 1] = mpo_cpu.prefix_step(self.pre[k], self.cores[k])
        else:
            self.suf[k + 1] = mpo_cpu.suffix_step(self.cores[k + 1], self.suf[k + 2])


class CompiledMPOSweep(MPOSweep):
    """:class:`MPOSweep` on the kernels of the compiled PaL sweep (``ops.mpo.kernels`` for
    the contractions, ``ops.svd_truncate.subspace.svd_split_kernel`` for the split, warm
    started from the old right core), in float64: the same interface, so that ``run_sweep``
    and the tests drive the compiled path's pieces one bond at a time."""

    def __init__(self, cores: List[np.ndarray], max_bond: int, cutoff: float = 0.0):
        super().__init__([np.ascontiguousarray(c, np.float64) for c in cores], max_bond,
                         cutoff)

    def refresh(self) -> None:
        from ..ops.mpo import kernels

        n = len(self.cores)
        self.pre = [np.ones((1, 1, 1))] + [None] * n
        self.suf = [None] * n + [np.ones((1, 1, 1))]
        for k, c in enumerate(self.cores):
            il, ol, _ = self.pre[k].shape
            self.pre[k + 1] = np.empty((il * c.shape[1], ol * c.shape[2], c.shape[3]))
            kernels.prefix_step(self.pre[k], c, self.pre[k + 1])
        for k in range(n - 1, -1, -1):
            c = self.cores[k]
            _, ir, orr = self.suf[k + 1].shape
            self.suf[k] = np.empty((c.shape[0], c.shape[1] * ir, c.shape[2] * orr))
            kernels.suffix_step(c, self.suf[k + 1], self.suf[k])

    def bond_tensor(self, k: int) -> np.ndarray:
        from ..ops.mpo import kernels

        a, b = self.cores[k], self.cores[k + 1]
        out = np.empty((a.shape[0] * a.shape[1] * a.shape[2], b.shape[1] * b.shape[2] * b.shape[3]))
        kernels.bond_matrix(a, b, out)
        return out.reshape(self.bond_tensor_shape(k))

    def dense_from_bond(self, k: int, bond: np.ndarray) -> np.ndarray:
        from ..ops.mpo import kernels

        da, i1, o1, i2, o2, db = bond.shape
        left, right = self.pre[k], self.suf[k + 2]
        out = np.empty((left.shape[0] * i1 * i2 * right.shape[1],
                        left.shape[1] * o1 * o2 * right.shape[2]))
        kernels.dense_from_bond(left, np.ascontiguousarray(bond, np.float64).reshape(
            da * i1 * o1, i2 * o2 * db), right, i1, o1, out)
        return out

    def bond_grad(self, k: int, g_w: np.ndarray) -> np.ndarray:
        from ..ops.mpo import kernels

        da, i1, o1, i2, o2, db = self.bond_tensor_shape(k)
        out = np.empty((da * i1 * o1, i2 * o2 * db))
        kernels.bond_grad(self.pre[k], np.ascontiguousarray(g_w, np.float64), self.suf[k + 2],
                          i1, o1, i2, o2, out)
        return out.reshape(da, i1, o1, i2, o2, db)

    def step_scale(self, k: int) -> float:
        from ..ops.mpo import kernels

        norms = kernels.env_norm_sq(self.pre[k], 0) * kernels.env_norm_sq(self.suf[k + 2], 1)
        return 1.0 / max(norms, 1e-300)

    def split(self, k: int, bond: np.ndarray, direction: str) -> None:
        from ..ops.mpo import kernels
        from ..ops.svd_truncate.subspace import svd_split_kernel

        da, i1, o1, i2, o2, db = bond.shape
        m, n = da * i1 * o1, i2 * o2 * db
        kb = min(self.max_bond, m, n)
        left, right, s = np.empty(m * kb), np.empty(kb * n), np.empty(kb)
        start = np.ascontiguousarray(self.cores[k + 1]).reshape(self.cores[k + 1].shape[0], n)
        keep, ent, disc, _, _ = svd_split_kernel(
            np.ascontiguousarray(bond, np.float64).reshape(m, n), self.max_bond, self.cutoff,
            start, left, right, s)
        self.cores[k] = left[:m * keep].reshape(da, i1, o1, keep)
        self.cores[k + 1] = right[:keep * n].reshape(keep, i2, o2, db)
        self.s[k], self.entropy[k], self.discarded[k] = s[:keep].copy(), ent, disc
        if direction == "right":
            il, ol, _ = self.pre[k].shape
            self.pre[k + 1] = np.empty((il * i1, ol * o1, keep))
            kernels.prefix_step(self.pre[k], self.cores[k], self.pre[k + 1])
        else:
            _, ir, orr = self.suf[k + 2].shape
            self.suf[k + 1] = np.empty((keep, i2 * ir, o2 * orr))
            kernels.suffix_step(self.cores[k + 1], self.suf[k + 2], self.suf[k + 1])


def _grouped(bond: np.ndarray) -> np.ndarray:
    """``(Da, i1, o1, i2, o2, Db) -> (Da, i1 i2, o1 o2, Db)`` (W's row-major grouping)."""
    da, i1, o1, i2, o2, db = bond.shape
    return bond.transpose(0, 1, 3, 2, 4, 5).reshape(da, i1 * i2, o1 * o2, db)


ForwardBackward = Callable[[Sequence[np.ndarray]], Tuple[float, Sequence[np.ndarray], object]]


def run_sweep(mpos: Sequence[MPOSweep], active: Sequence[bool], forward_backward: ForwardBackward,
              lr: float, step_others: Callable[[object], None] | None = None,
              scaled: bool = False) -> float:
    """One sweep; every active MPO moves along its schedule together (one model evaluation
    per bond step updates that bond in all of them).

    Parameters
    ----------
    mpos : MPO states (cores updated in place)
    active : which of them are updated
    forward_backward : ``ws -> (loss, [dL/dW per MPO], other_grads)``
    lr : bond-tensor step size
    step_others : called with ``other_grads`` after each bond step (the PaL schedule's
        dense-layer updates), or None
    scaled : bool
        Divide each bond step by the squared spectral norms of its environments
        (:meth:`MPOSweep.step_scale`); plain gradient steps (the paper's) otherwise.

    Returns
    -------
    float
        Mean loss over the sweep's bond steps (each evaluated before its update).
    """
    ws = [None if a else m.dense() for m, a in zip(mpos, active)]
    n_steps = max(len(m.schedule) for m, a in zip(mpos, active) if a)
    losses = []
    for t in range(n_steps):
        moves = []
        for j, (m, a) in enumerate(zip(mpos, active)):
            if not a:
                continue
            if t < len(m.schedule):
                k, direction = m.schedule[t]
                bond = m.bond_tensor(k)
                ws[j] = m.dense_from_bond(k, bond)
                moves.append((j, k, direction, bond))
            else:
                ws[j] = m.dense()
        loss, g_ws, other = forward_backward(ws)
        losses.append(loss)
        for j, k, direction, bond in moves:
            g_bond = mpos[j].bond_grad(k, g_ws[j])
            step = lr * mpos[j].step_scale(k) if scaled else lr
            mpos[j].split(k, bond - step * g_bond, direction)
        if step_others is not None:
            step_others(other)
    return float(np.mean(losses))
