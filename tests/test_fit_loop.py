"""The fit loop's bookkeeping: compile notices and progress-bar timing."""
from __future__ import annotations

import io
import time

import numpy as np
import pytest
from numba.core import event

from fasttn._numba import COMPILE_NOTICE
from fasttn.train import loop

STALL = 0.4  # seconds the fake compilation takes


class RecordingBar(loop.tqdm):
    """The loop's tqdm, keeping what each bar showed when it closed."""

    closed = []

    def close(self):
        if not self.disable:
            RecordingBar.closed.append(dict(self.format_dict))
        super().close()


@pytest.fixture
def bars(monkeypatch):
    RecordingBar.closed = []
    monkeypatch.setattr(loop, "tqdm", RecordingBar)
    return RecordingBar.closed


def fake_step(compile_on=(0,), pause=0.01):
    """A step that pauses a little; on the calls in ``compile_on`` it also 'compiles' (a
    Numba compile event around a stall)."""
    calls = []

    def step(idx):
        if len(calls) in compile_on:
            with event.trigger_event("numba:compile"):
                time.sleep(STALL)
        time.sleep(pause)
        calls.append(len(idx))
        return 0.5, len(idx) // 2

    return step, calls


def test_first_step_compile_is_announced_and_kept_out_of_the_rate(bars, capsys):
    step, calls = fake_step()
    hist = loop.fit_loop(step, 40, epochs=2, batch_size=10, rng=np.random.default_rng(0),
                         verbose=1)
    assert calls == [10] * 8 and len(hist) == 2
    err = capsys.readouterr().err
    assert err.count(COMPILE_NOTICE) == 1
    first, second = bars
    assert first["n"] == 4 and first["initial"] == 1
    # the bar's clock restarted after the compiling step: its rate is the three other steps'
    assert first["elapsed"] < STALL
    rate = (first["n"] - first["initial"]) / first["elapsed"]
    assert rate > 1 / (STALL / 2)
    assert second["initial"] == 0  # nothing compiled in the second epoch
    # the record still states the epoch's wall time
    assert hist[0]["seconds"] >= STALL


def test_no_notice_without_compilation_or_when_silent(bars, capsys):
    step, _ = fake_step(compile_on=())
    loop.fit_loop(step, 20, epochs=1, batch_size=10, rng=np.random.default_rng(0), verbose=1)
    assert COMPILE_NOTICE not in capsys.readouterr().err
    assert bars[0]["initial"] == 0
    step, _ = fake_step()
    loop.fit_loop(step, 20, epochs=1, batch_size=10, rng=np.random.default_rng(0), verbose=0)
    assert capsys.readouterr().err == ""


def test_a_later_compilation_restarts_the_clock_too(bars, capsys):
    step, _ = fake_step(compile_on=(5,))  # the second epoch's second step
    loop.fit_loop(step, 40, epochs=2, batch_size=10, rng=np.random.default_rng(0), verbose=1)
    assert capsys.readouterr().err.count(COMPILE_NOTICE) == 1
    assert bars[0]["initial"] == 0
    assert bars[1]["initial"] == 2 and bars[1]["elapsed"] < STALL


def test_restart_clock_keeps_the_count():
    with loop.tqdm(total=10, disable=False, file=io.StringIO(), mininterval=0) as bar:
        bar.update(3)
        time.sleep(STALL)
        loop.restart_clock(bar, advance=1)
        assert bar.n == 4 and bar.format_dict["initial"] == 4
        bar.update(2)
        assert bar.n == 6 and bar.format_dict["elapsed"] < STALL
    with loop.tqdm(total=10, disable=True) as bar:
        loop.restart_clock(bar, advance=2)  # a disabled bar has no clock, only a count
        assert bar.n == 2
