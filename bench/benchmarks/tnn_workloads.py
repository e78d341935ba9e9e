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


SWEEPS = 10  # sweeps per timed run
# After a call, OpenBLAS's threads (NumPy's) spin for about 2^28 cycles before they sleep; a
# sweep timed in that window shares its second core with them. Pause that long in between.
SETTLE = 0.25


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
        """One warm-started ``fit`` of one sweep: a sweep plus the per-call work of ``fit``
        (input checks, loading the MPO into the kernel's buffers, writing it back)."""
        self.model.history_.clear()  # thousands of fits would keep as many records
        self.model.fit(self.X, self.y, epochs=1, warm_start=True)

    def sweeps(self, n: int = SWEEPS):
        """``n`` sweeps in one warm-started ``fit`` (how training runs them)."""
        self.model.history_.clear()
        self.model.fit(self.X, self.y, epochs=n, warm_start=True)

    def baseline(self) -> NumpyTNNSweep:
        a, tn, out = self.model.layers_
        return NumpyTNNSweep(a.w, tn.cores, tn.b, out.w, out.b, self.bond, lr=0.01,
                             dense_lr=0.001)


def measure(bond: int = 12, repeats: int = 15) -> dict:
    """Milliseconds per sweep: fasttn in a fit of ``SWEEPS`` sweeps and in a fit of one,
    the NumPy loop over ``SWEEPS`` sweeps; the fastest of ``repeats`` runs of each, the runs
    of the three interleaved so that drift of the machine hits them alike."""
    w = PalSweep(bond)
    base = w.baseline()

    def numpy_sweeps():
        for _ in range(SWEEPS):
            base.sweep(w.X, w.y)

    t_sweep = t_fit = t_base = float("inf")
    for _ in range(repeats):
        t_base = min(t_base, best_time(numpy_sweeps, 1) / SWEEPS)
        time.sleep(SETTLE)
        t_sweep = min(t_sweep, best_time(w.sweeps, 1) / SWEEPS)
        t_fit = min(t_fit, best_time(w.step, 1, SWEEPS))
    return {"bond": bond, "fasttn_ms": 1e3 * t_sweep, "fit_ms": 1e3 * t_fit,
            "numpy_ms": 1e3 * t_base, "speedup": t_base / t_sweep,
            "speedup_fit": t_base / t_fit}


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
    print("PaL sweep of Dense(64, frozen) -> TNLayer(64, 6 sites, D) -> Dense(3), batch 600;")
    print(f"ms per sweep: fasttn in a fit of {SWEEPS} sweeps and in a fit of one (the per-call "
          f"work of fit included), the NumPy loop")
    print(f"{'D':>3} {'fasttn':>8} {'speed-up':>9} {'one-sweep fit':>14} {'speed-up':>9} "
          f"{'NumPy':>7}")
    for bond in (4, 8, 12):
        r = measure(bond)
        print(f"{bond:3d} {r['fasttn_ms']:8.3f} {r['speedup']:8.1f}x {r['fit_ms']:14.3f} "
              f"{r['speedup_fit']:8.1f}x {r['numpy_ms']:7.2f}")
    if "--parts" in sys.argv[1:]:
        print("\ncompiled sweep, microseconds per sweep")
        for bond in (4, 8, 12):
            p = parts(bond)
            print(f"D={bond:<3d}" + ", ".join(f"{k} {v:.0f}" for k, v in p.items()))


if __name__ == "__main__":
    main()
