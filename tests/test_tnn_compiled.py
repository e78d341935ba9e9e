"""The compiled PaL sweep (``sweep_engine="compiled"``) against the Python one (the layer
objects and ``run_sweep``): the same cores, biases, head and history from the same seed.

Float64: 1e-10 relative (measured: 1e-13 to 1e-12 after three sweeps; the two paths differ
in the order of their sums and in the SVD routine, so only by rounding). Float32: the
compiled path computes in float64 and rounds what it stores, the Python path computes in
float32 throughout; 1e-4 relative on the parameters, 1e-6 on the losses, 1e-5 of the
largest singular value on the discarded weights (measured 1e-5, 1e-8 and 1e-7).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

import fasttn
from fasttn.data import toy
from fasttn.models.tnn_layers import Dense, TNLayer

F64 = {"params": 1e-10, "loss": 1e-10, "discarded": 1e-9}
# the discarded weight, relative to the largest singular value: the float32 rounding of the
# bond tensor's entries moves the small values it is made of by ~1e-6 of the largest
F32 = {"params": 1e-4, "loss": 1e-6, "discarded": 1e-5}


def fit_both(layers, X, y, engine_kw=None, **kw):
    models = []
    for engine in ("compiled", "python"):
        m = fasttn.TNN(copy.deepcopy(layers), solver="sweep", random_state=0,
                       sweep_engine=engine, **kw)
        models.append(m.fit(X, y, **(engine_kw or {})))
    return models


def assert_same(fast, ref, tol):
    assert len(fast.layers_) == len(ref.layers_)
    for j, (a, b) in enumerate(zip(fast.layers_, ref.layers_)):
        for name, pa, pb in zip(a.param_names(), a.params(), b.params()):
            assert pa.shape == pb.shape and pa.dtype == pb.dtype, (j, name)
            err = np.abs(pa.astype(np.float64) - pb).max() / max(np.abs(pb).max(), 1e-30)
            assert err <= tol["params"], f"layers[{j}].{name}: relative error {err:.2e}"
    assert len(fast.history_) == len(ref.history_)
    for ra, rb in zip(fast.history_, ref.history_):
        assert set(ra) == set(rb)
        assert ra["epoch"] == rb["epoch"]
        assert abs(ra["loss"] - rb["loss"]) <= tol["loss"] * abs(rb["loss"])
        if "accuracy" in rb:
            assert abs(ra["accuracy"] - rb["accuracy"]) <= 0.01  # a prediction on a tie
        np.testing.assert_allclose(ra["entropy"], rb["entropy"], rtol=1e3 * tol["params"],
                                   atol=1e3 * tol["params"])
        for sa, sb in zip(ra["singular_values"][0], rb["singular_values"][0]):
            np.testing.assert_allclose(sa, sb, rtol=tol["params"], atol=0)
        s0 = max(sb[0] for sb in rb["singular_values"][0])
        np.testing.assert_allclose(ra["discarded"], rb["discarded"], rtol=0,
                                   atol=tol["discarded"] * s0)


def paper(tn, head):
    return [Dense(64, trainable=False), tn, head]


SPIRAL = toy.spiral(200, seed=1)
BLOBS = toy.gaussian_blobs(200, seed=1)
LINE = toy.noisy_line(200, seed=1)

CASES = {
    # the benchmark's network: ReLU, softmax, D from the product-operator regime up
    "relu D2": (paper(TNLayer(64, 6, 2, "relu", init="random"), Dense(3, activation="softmax")),
                SPIRAL, dict(sweep_lr=0.05, lr=0.01)),
    "relu D4": (paper(TNLayer(64, 6, 4, "relu", init="random"), Dense(3, activation="softmax")),
                SPIRAL, dict(sweep_lr=0.05, lr=0.01)),
    "relu D12 scaled": (paper(TNLayer(64, 6, 12, "relu", init="random"),
                              Dense(3, activation="softmax")),
                        SPIRAL, dict(sweep_lr=1.0, sweep_step="scaled", lr=0.01)),
    "relu D8 cutoff, batches with a remainder": (
        paper(TNLayer(64, 6, 8, "relu", init="random"), Dense(3, activation="softmax")),
        SPIRAL, dict(sweep_lr=0.05, lr=0.01, cutoff=0.02, batch_size=64)),
    "product init, no biases": (
        paper(TNLayer(64, 6, 4, "relu", use_bias=False), Dense(3, activation="softmax",
                                                               use_bias=False)),
        SPIRAL, dict(sweep_lr=0.1, lr=0.01)),
    # binary cross-entropy on one sigmoid unit, tanh units
    "tanh, sigmoid output": (paper(TNLayer(64, 6, 4, "tanh", init="random"),
                                   Dense(1, activation="sigmoid")),
                             BLOBS, dict(sweep_lr=0.05, lr=0.01, batch_size=50)),
    "sigmoid units, softmax": (paper(TNLayer(64, 6, 4, "sigmoid"), Dense(2, activation="softmax")),
                               BLOBS, dict(sweep_lr=0.1, lr=0.01, sweep_step="scaled")),
    # regression: linear units and output, mean squared error
    "linear, mse": (paper(TNLayer(64, 6, 4, "linear"), Dense(1)), LINE,
                    dict(sweep_lr=0.05, lr=0.01)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_sweeps_match_the_python_path(case):
    layers, (X, y), kw = CASES[case]
    fast, ref = fit_both(layers, X, y, epochs=3, **kw)
    assert_same(fast, ref, F64)
    assert fast.history_[-1]["loss"] != fast.history_[0]["loss"]  # it trained


def test_float32(rng):
    X, y = SPIRAL
    layers = paper(TNLayer(64, 6, 4, "relu", init="random"), Dense(3, activation="softmax"))
    fast, ref = fit_both(layers, X.astype(np.float32), y, epochs=3, sweep_lr=0.05, lr=0.01,
                         dtype="float32")
    assert fast.layers_[1].cores[0].dtype == np.float32
    assert_same(fast, ref, F32)


def test_wide_inputs_and_frozen_layers_before_the_fold():
    """No folded layer: the TNLayer straight on 16 features, and behind two frozen layers
    (the first nonlinear, so their output is the features), through the BLAS data pass."""
    rng = np.random.default_rng(5)
    X = rng.uniform(0, 1, (150, 16))
    y = (X[:, :8].sum(1) > X[:, 8:].sum(1)).astype(int) + (X[:, 0] > 0.7)
    nets = [[TNLayer(16, 4, 3, "relu", init="random"), Dense(3, activation="softmax")],
            [Dense(12, activation="tanh", trainable=False), Dense(16, trainable=False),
             TNLayer(16, 4, 3, "relu", init="random"), Dense(3, activation="softmax")]]
    for layers in nets:
        fast, ref = fit_both(layers, X, y, epochs=3, sweep_lr=0.05, lr=0.01)
        assert_same(fast, ref, F64)


def test_folded_layer_with_a_bias():
    X, y = SPIRAL
    layers = [Dense(64, trainable=False), TNLayer(64, 6, 4, "relu", init="random"),
              Dense(3, activation="softmax")]
    models = []
    for engine in ("compiled", "python"):
        m = fasttn.TNN(copy.deepcopy(layers), solver="sweep", random_state=0, epochs=1,
                       sweep_engine=engine, sweep_lr=0.05)
        m.fit(X, y)
        m.layers_[0].b[:] = np.linspace(-0.5, 0.5, 64)  # frozen, but not zero
        models.append(m.fit(X, y, epochs=2, warm_start=True))
    assert_same(*models, F64)


def test_warm_starts_and_edits_between_fits():
    """Each fit starts a fresh Adam, as on the Python path; cores changed in place between
    fits are seen (the compiled path keeps its environments between fits)."""
    X, y = SPIRAL
    layers = paper(TNLayer(64, 6, 4, "relu", init="random"), Dense(3, activation="softmax"))
    models = []
    for engine in ("compiled", "python"):
        m = fasttn.TNN(copy.deepcopy(layers), solver="sweep", random_state=0, epochs=2,
                       sweep_engine=engine, sweep_lr=0.05, lr=0.01).fit(X, y)
        m.fit(X, y, epochs=1, warm_start=True)
        m.layers_[1].cores[2] *= 1.5
        m.fit(X, y, epochs=1, warm_start=True)
        m.layers_[1].cores = [c.copy() for c in m.layers_[1].cores]
        m.layers_[2].w[0] = 0.0
        models.append(m.fit(X, y, epochs=2, warm_start=True))
    assert len(models[0].history_) == 6
    assert_same(*models, F64)


def test_auto_takes_the_compiled_path_where_it_can():
    X, y = BLOBS
    m = fasttn.TNN(paper(TNLayer(64, 6, 4, "relu"), Dense(2, activation="softmax")),
                   solver="sweep", epochs=1, random_state=0).fit(X, y)
    assert getattr(m, "_sweep_runner", None) is not None
    # two TNLayers, LbL: the Python path, with the same records
    for layers, kw in (([Dense(64, trainable=False), TNLayer(64, 6, 2, "relu"),
                         TNLayer(64, 6, 2, "relu"), Dense(2, activation="softmax")], {}),
                       (paper(TNLayer(64, 6, 2, "relu"), Dense(2, activation="softmax")),
                        {"schedule": "lbl"})):
        m = fasttn.TNN(layers, solver="sweep", epochs=1, random_state=0, **kw).fit(X, y)
        assert getattr(m, "_sweep_runner", None) is None
        assert {"entropy", "singular_values", "discarded"} <= set(m.history_[0])


@pytest.mark.parametrize("layers,kw,why", [
    (paper(TNLayer(64, 6, 2, "relu"), Dense(2, activation="softmax")), {"schedule": "lbl"},
     "PaL"),
    ([Dense(64), TNLayer(64, 6, 2, "relu"), Dense(2, activation="softmax")], {}, "frozen"),
    ([Dense(64, trainable=False), TNLayer(64, 6, 2, "softmax"), Dense(2, activation="softmax")],
     {}, "elementwise"),
    ([Dense(64, trainable=False), TNLayer(64, 6, 2, "relu"), Dense(8, activation="relu"),
      Dense(2, activation="softmax")], {}, "head"),
])
def test_compiled_engine_refuses_what_it_cannot_run(layers, kw, why):
    X, y = BLOBS
    with pytest.raises(ValueError, match=f"sweep_engine: 'compiled' cannot run.*{why}"):
        fasttn.TNN(layers, solver="sweep", epochs=1, sweep_engine="compiled", **kw).fit(X, y)
    with pytest.raises(ValueError, match="sweep_engine: expected one of"):
        fasttn.TNN(layers, solver="sweep", sweep_engine="numba").fit(X, y)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the Python path overflows on its way
def test_divergence_is_reported_as_on_the_python_path():
    X, y = BLOBS
    for engine in ("compiled", "python"):
        m = fasttn.TNN(paper(TNLayer(64, 6, 4, "relu"), Dense(2, activation="softmax")),
                       solver="sweep", sweep_lr=1e6, epochs=3, sweep_engine=engine,
                       random_state=0)
        with pytest.raises(FloatingPointError, match="sweep_lr"):
            m.fit(X, y)


@pytest.mark.parametrize("case", ["relu D4", "relu D8 cutoff, batches with a remainder",
                                  "tanh, sigmoid output", "sigmoid units, softmax",
                                  "linear, mse"])
def test_data_pass_cut_into_sample_ranges(monkeypatch, case):
    # The cases' batches (50-200 samples) are below two ranges of MIN_PART; with 24 samples
    # per range every data pass runs as two to MAX_PARTS ranges whose gradient sums and loss
    # terms are added, and must give what the Python path gives.
    from fasttn.train import pal_compiled as pc
    monkeypatch.setattr(pc, "MIN_PART", 24)
    layers, (X, y), kw = CASES[case]
    fast, ref = fit_both(layers, X, y, epochs=3, **kw)
    assert_same(fast, ref, F64)


@pytest.mark.parametrize("batch_size", [None, 48])
def test_sweeps_per_kernel_call_do_not_change_results(monkeypatch, batch_size):
    """A fit runs all its sweeps in one kernel call, one sweep per call under a progress
    bar, and mini-batch sweeps in chunks (``MAX_BATCH_ROWS``): the same state and history
    either way, bit for bit, and each sweep's seconds add up to about the fit's time."""
    from fasttn.models import tnn_compiled

    X, y = SPIRAL
    layers = paper(TNLayer(64, 6, 4, "relu", init="random"), Dense(3, activation="softmax"))
    kw = dict(solver="sweep", random_state=0, sweep_engine="compiled", sweep_lr=0.05,
              lr=0.01, epochs=5, batch_size=batch_size)
    whole = fasttn.TNN(copy.deepcopy(layers), **kw).fit(X, y)
    barred = fasttn.TNN(copy.deepcopy(layers), verbose=1, **kw).fit(X, y)
    # two sweeps' rows per call: chunks of 2, 2 and 1 sweeps
    monkeypatch.setattr(tnn_compiled, "MAX_BATCH_ROWS", 2 * 10 * (batch_size or 200))
    chunked = fasttn.TNN(copy.deepcopy(layers), **kw).fit(X, y)
    for other in (barred, chunked):
        for a, b in zip(whole.layers_, other.layers_):
            for pa, pb in zip(a.params(), b.params()):
                np.testing.assert_array_equal(pa, pb)
        assert [r["epoch"] for r in other.history_] == [1, 2, 3, 4, 5]
        for ra, rb in zip(whole.history_, other.history_):
            assert {k: v for k, v in ra.items() if k != "seconds"} == \
                {k: v for k, v in rb.items() if k != "seconds"}
    assert len({r["loss"] for r in whole.history_}) == 5  # it trains
    assert all(r["seconds"] > 0 for r in whole.history_)
