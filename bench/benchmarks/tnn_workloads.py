"""TNN sweep workloads shared by ``bench_tnn.py`` and the script entry point.

The paper's model I/II: ``Dense(64, frozen) -> TNLayer(64, 6 sites, D, relu) ->
Dense(3, softmax)`` on 600 spiral points (the whole set is the batch), one PaL sweep
(2 x 5 bond updates). fasttn's ``TNN`` and the plain NumPy loop of
``baselines/numpy_tnn.py`` run the same algorithm from the same weights.

``python -m benchmarks.tnn_workloads`` (from ``bench/``) prints the table.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

import fasttn
from fasttn.data import toy
from fasttn.models.tnn_layers import Dense, TNLayer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from baselines.numpy_tnn import NumpyTNNSweep  # noqa: E402


def best_time(fn, repeats: int = 5, number: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


class PalSweep:
    """One fasttn PaL sweep (plain steps, as the baseline)."""

    def __init__(self, bond: int = 12, n: int = 600, seed: int = 0):
        self.X, self.y = toy.spiral(n, seed=seed)
        self.bond = bond
        self.model = fasttn.TNN([Dense(64, trainable=False),
                                 TNLayer(64, n_sites=6, bond_dim=bond, activation="relu",
                                         init="random"),
                                 Dense(3, activation="softmax")],
                                solver="sweep", epochs=1, sweep_lr=0.01, lr=0.001,
                                random_state=seed)
        self.model.fit(self.X, self.y)  # builds, compiles, and grows the bonds to D

    def step(self):
        self.model.fit(self.X, self.y, epochs=1, warm_start=True)

    def baseline(self) -> NumpyTNNSweep:
        a, tn, out = self.model.layers_
        return NumpyTNNSweep(a.w, tn.cores, tn.b, out.w, out.b, self.bond, lr=0.01,
                             dense_lr=0.001)


def measure(bond: int = 12, repeats: int = 5) -> dict:
    w = PalSweep(bond)
    base = w.baseline()
    t_fast = best_time(w.step, repeats)
    t_base = best_time(lambda: base.sweep(w.X, w.y), repeats)
    return {"bond": bond, "fasttn_ms": 1e3 * t_fast, "numpy_ms": 1e3 * t_base,
            "speedup": t_base / t_fast}


def main() -> None:
    print("PaL sweep of Dense(64, frozen) -> TNLayer(64, 6 sites, D) -> Dense(3), batch 600")
    print(f"{'D':>3} {'fasttn ms':>10} {'NumPy ms':>10} {'speed-up':>9}")
    for bond in (4, 8, 12):
        r = measure(bond)
        print(f"{bond:3d} {r['fasttn_ms']:10.2f} {r['numpy_ms']:10.2f} {r['speedup']:8.1f}x")


if __name__ == "__main__":
    main()
