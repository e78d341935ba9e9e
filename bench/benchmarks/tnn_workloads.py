"""TNN sweep workloads shared by ``bench_tnn.py`` and the script entry point.

The paper's model I/II: ``Dense(64, frozen) -> TNLayer(64, 6 sites, D, relu) ->
Dense(3, softmax)`` on 600 spiral points (the whole set is the batch), one PaL sweep
(2 x 5 bond updates). fasttn's ``TNN`` and the plain NumPy loop of
``baselines/numpy_tnn.py`` run the same algorithm from the same weights.

fasttn runs its default sweep engine, which for this network is the compiled one (a whole
sweep in one Numba call, ``fasttn/train/pal_compiled.py``). Its first call compiles: about
45 s in a fresh environment with an empty Numba cache (10-20 s more for each further
combination of input width, outputs and activation), about 0.5 s to load from the cache in a
new process; ``PalSweep.__init__`` makes that call (one fit that also grows the bonds to D),
so the timed region never includes it.

``python -m benchmarks.tnn_workloads`` (from ``bench/``) prints the table;
``--parts`` adds where the time of a compiled sweep goes.
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


def parts(bond: int = 12, repeats: int = 20) -> dict:
    """Microseconds per sweep in each part of the compiled sweep (its cycle counter, the
    fastest of ``repeats`` sweeps), and the whole fit call around it."""
    from fasttn._numba import timestamp
    from fasttn.train.pal_compiled import PROF_PARTS

    w = PalSweep(bond)
    runner = w.model._sweep_runner
    t0, c0 = time.perf_counter(), timestamp()
    time.sleep(0.05)
    ticks_per_us = (timestamp() - c0) / (time.perf_counter() - t0) / 1e6
    best = None
    for _ in range(repeats):
        runner.prof = np.zeros(len(PROF_PARTS), np.int64)
        t = time.perf_counter()
        w.step()
        dt = time.perf_counter() - t
        if best is None or dt < best[0]:
            best = (dt, runner.prof / ticks_per_us)
    out = dict(zip(PROF_PARTS, best[1]))
    out["outside the parts (Python, kernel entry)"] = 1e6 * best[0] - best[1].sum()
    out["fit"] = 1e6 * best[0]
    runner.prof = np.zeros(0, np.int64)
    return out


def main() -> None:
    print("PaL sweep of Dense(64, frozen) -> TNLayer(64, 6 sites, D) -> Dense(3), batch 600")
    print(f"{'D':>3} {'fasttn ms':>10} {'NumPy ms':>10} {'speed-up':>9}")
    for bond in (4, 8, 12):
        r = measure(bond)
        print(f"{bond:3d} {r['fasttn_ms']:10.2f} {r['numpy_ms']:10.2f} {r['speedup']:8.1f}x")
    if "--parts" in sys.argv[1:]:
        print("\ncompiled sweep, microseconds per sweep")
        for bond in (4, 8, 12):
            p = parts(bond)
            print(f"D={bond:<3d}" + ", ".join(f"{k} {v:.0f}" for k, v in p.items()))


if __name__ == "__main__":
    main()
