"""Waiting for a quiet machine before a measurement (Linux ``/proc/stat``)."""
from __future__ import annotations

import time


def busy_fraction(interval: float = 1.0) -> float:
    """Fraction of all cores busy over ``interval`` seconds (Linux ``/proc/stat``; 0 elsewhere)."""
    def sample():
        with open("/proc/stat") as fh:
            vals = [int(v) for v in fh.readline().split()[1:]]
        return sum(vals), vals[3] + vals[4]  # total, idle + iowait

    try:
        t0, i0 = sample()
        time.sleep(interval)
        t1, i1 = sample()
    except OSError:
        return 0.0
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_for_quiet(max_wait_s: float, threshold: float = 0.15) -> float:
    """Wait up to ``max_wait_s`` for other processes to leave the cores; returns the busy
    fraction seen last."""
    deadline = time.monotonic() + max_wait_s
    busy = busy_fraction()
    while busy > threshold and time.monotonic() < deadline:
        time.sleep(4.0)
        busy = busy_fraction()
    return busy
