"""The fit loop: shuffled mini-batches, a progress bar, one history record per epoch.

A step that compiles kernels (the first use of a model, tens of seconds) is announced on
standard error and kept out of the progress bar's rate and remaining-time estimate.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm.auto import tqdm

from .._numba import compile_watch

StepFn = Callable[[np.ndarray], Tuple[float, int]]


def fit_loop(step: StepFn, n_samples: int, *, epochs: int, batch_size: int,
             rng: np.random.Generator, set_epoch: Optional[Callable[[int], float]] = None,
             end_of_epoch: Sequence[Callable[[int, Dict], Optional[Dict]]] = (),
             verbose: int = 1, desc: str = "fit") -> List[Dict]:
    """Run ``epochs`` passes of ``step`` over shuffled index batches.

    Parameters
    ----------
    step : callable
        ``step(indices) -> (mean loss, number correct)`` trains on one batch.
    set_epoch : callable, optional
        Called with the epoch number before it starts; returns the learning rate.
    end_of_epoch : callables
        ``f(epoch, record) -> dict or None``; returned items join the epoch's record
        (validation accuracy, entanglement entropy, ...). An item ``"stop": True`` ends
        the fit after this epoch (early stopping); it is not kept in the record.
    verbose : int
        0 silent, 1 a progress bar and one line per epoch, and a line on standard error
        when a step stalls to compile kernels.

    Returns
    -------
    history : list of dict, one per epoch (loss, accuracy, images_per_s, seconds, lr, ...)
    """
    history: List[Dict] = []
    show = verbose > 0
    with compile_watch(notice=show) as watch:
        for epoch in range(epochs):
            lr = set_epoch(epoch) if set_epoch else float("nan")
            order = rng.permutation(n_samples)
            batches = [order[i:i + batch_size] for i in range(0, n_samples, batch_size)]
            loss_sum = 0.0
            correct = 0
            t0 = time.perf_counter()
            with tqdm(total=len(batches), desc=f"{desc} {epoch + 1}/{epochs}",
                      disable=not show, leave=False, file=sys.stderr, unit="batch") as bar:
                for idx in batches:
                    compiled = watch.count
                    loss, n_ok = step(idx)
                    if not np.isfinite(loss):
                        raise FloatingPointError(f"loss became {loss} in epoch {epoch + 1}; "
                                                 "lower the learning rate or use domain='log'")
                    loss_sum += loss * len(idx)
                    correct += n_ok
                    if watch.count != compiled:
                        restart_clock(bar, advance=1)  # the step counts, its time does not
                    else:
                        bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}")
            seconds = time.perf_counter() - t0
            record = {"epoch": epoch + 1, "loss": loss_sum / n_samples,
                      "accuracy": correct / n_samples, "images_per_s": n_samples / seconds,
                      "seconds": seconds, "lr": lr}
            for fn in end_of_epoch:
                extra = fn(epoch, record)
                if extra:
                    record.update(extra)
            stop = bool(record.pop("stop", False))
            history.append(record)
            if show:
                tqdm.write(_format(record), file=sys.stdout)
            if stop:
                break
    return history


def restart_clock(bar: tqdm, advance: int = 0) -> None:
    """Advance ``bar`` by ``advance`` steps and restart its clock and rate average there:
    the time already spent (a step that compiled kernels) leaves its rate and
    remaining-time estimate."""
    if bar.disable:
        bar.n += advance
        return
    n = bar.n + advance
    bar.reset()
    # tqdm's rate is (n - initial) / elapsed, its running average from last_print_n on
    bar.n = bar.last_print_n = bar.initial = n
    bar.refresh()


def _format(record: Dict) -> str:
    parts = [f"epoch {record['epoch']:3d}"]
    for key, value in record.items():
        if key == "epoch":
            continue
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}" if key != "images_per_s" else f"{key} {value:.0f}")
        elif isinstance(value, (int, str)):
            parts.append(f"{key} {value}")
    return "  ".join(parts)
