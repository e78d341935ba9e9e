"""TNN benchmarks: one DMRG-like PaL sweep of the paper's model (6-site MPO, 64 units,
batch 600) against the plain NumPy loop over bonds of ``baselines/numpy_tnn.py``, from the
same weights in the same process. fasttn runs its default (compiled) sweep engine; its
compilation happens in ``setup`` (see ``tnn_workloads``).

``python -m benchmarks.tnn_workloads`` (from ``bench/``) prints the same figures without asv.
"""
from __future__ import annotations

from . import tnn_workloads as W


class PalSweep:
    params = [4, 12]
    param_names = ["bond"]
    timeout = 300

    def setup(self, bond):
        self.w = W.PalSweep(bond)  # compiles and grows the bonds outside the timed region
        self.base = self.w.baseline()

    def time_fasttn_sweep(self, bond):
        self.w.step()

    def time_numpy_sweep(self, bond):
        self.base.sweep(self.w.X, self.w.y)

    def track_speedup_over_numpy(self, bond):
        t_fast = W.best_time(self.w.step)
        t_base = W.best_time(lambda: self.base.sweep(self.w.X, self.w.y))
        return t_base / t_fast
    track_speedup_over_numpy.unit = "x"
