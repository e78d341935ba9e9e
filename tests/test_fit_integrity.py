"""A fit either returns finite parameters or raises and leaves the estimator exactly as it
was; hyper-parameters out of range are refused up front, naming the argument."""
from __future__ import annotations

import numpy as np
import pytest

from fasttn.models import MERA2D, QCNN, TNN, TTN2D
from fasttn.train import optim
from fasttn.train.optim import AdamW


def _data(n=80, side=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((n, side, side))
    y = np.arange(n) % 3
    X[y == 1, :2] += 0.5  # something to learn
    return np.clip(X, 0, 1), y


def _small(cls, **kw):
    if cls is TNN:
        return TNN(**{"epochs": 2, "random_state": 0, **kw})
    common = dict(epochs=2, random_state=0, early_stopping=False, dtype="float64")
    kw = {**common, **kw}
    common = {}
    if cls is QCNN:
        return QCNN(d=2, **common, **kw)
    if cls is MERA2D:
        return MERA2D(chi=2, **common, **kw)
    return TTN2D(chi=2, **common, **kw)


def _fit_args(cls):
    X, y = _data()
    return (X.reshape(len(X), -1), y) if cls is TNN else (X, y)


def _state(model):
    """Every attribute, arrays as bytes: equal only if bit for bit the same."""
    def freeze(v):
        if isinstance(v, np.ndarray):
            return ("array", v.dtype.str, v.shape, v.tobytes())
        if isinstance(v, (list, tuple)):
            return (type(v).__name__, tuple(freeze(x) for x in v))
        if isinstance(v, dict):
            return ("dict", tuple((k, freeze(x)) for k, x in v.items()))
        return repr(v)
    return {k: freeze(v) for k, v in model.__dict__.items()}


MODELS = [QCNN, MERA2D, TTN2D, TNN]


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_a_warm_start_that_fails_mid_training_leaves_the_model_bit_for_bit(cls, monkeypatch):
    """The optimizer updates the parameters in place; a failure after some steps (here the
    third) must not leave those updates behind."""
    X, y = _fit_args(cls)
    model = _small(cls).fit(X, y)
    before = _state(model)
    original = AdamW.step
    calls = {"n": 0}

    def failing_step(self, grads):
        calls["n"] += 1
        original(self, grads)
        if calls["n"] == 3:
            raise FloatingPointError("grads: simulated divergence")

    monkeypatch.setattr(AdamW, "step", failing_step)
    with pytest.raises(FloatingPointError, match="simulated"):
        model.fit(X, y, warm_start=True, epochs=3)
    assert calls["n"] == 3
    assert _state(model) == before


@pytest.mark.parametrize("cls", [QCNN], ids=lambda c: c.__name__)
def test_a_diverging_warm_start_keeps_the_good_model(cls):
    X, y = _fit_args(cls)
    model = _small(cls).fit(X, y)
    before = _state(model)
    pred = model.predict(X)
    model.set_params(lr=1e30)  # finite, so accepted; the training blows up
    with pytest.raises(FloatingPointError):
        model.fit(X, y, warm_start=True, epochs=3)
    model.set_params(lr=_small(cls).lr)
    assert _state(model) == before
    np.testing.assert_array_equal(model.predict(X), pred)


def test_a_fresh_fit_that_fails_leaves_an_unfitted_model():
    X, y = _fit_args(QCNN)
    model = _small(QCNN)

    def boom(m, epoch, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model.fit(X, y, callbacks=[boom])
    assert not hasattr(model, "weights_") and not hasattr(model, "history_")
    assert _state(model) == _state(_small(QCNN))


def test_a_fit_never_returns_non_finite_parameters():
    """Whatever makes a learned array NaN without a NaN gradient (here a callback, as a
    momentum outside [0, 1] did to the running variances), fit raises and the model stays
    as before."""
    X, y = _fit_args(QCNN)
    model = _small(QCNN).fit(X, y)
    before = _state(model)

    def poison(m, epoch, record):
        m.running_vars_[1][:] = np.nan

    with pytest.raises(FloatingPointError, match="running_vars_1"):
        model.fit(X, y, warm_start=True, epochs=1, callbacks=[poison])
    assert _state(model) == before


@pytest.mark.parametrize("kw, name", [
    (dict(lr=float("nan")), "lr"), (dict(lr=float("inf")), "lr"), (dict(lr=-0.1), "lr"),
    (dict(weight_decay=float("nan")), "weight_decay"),
    (dict(weight_decay=-1), "weight_decay"), (dict(lr_gamma=float("nan")), "lr_gamma"),
    (dict(lr_step=0), "lr_step"), (dict(momentum=2), "momentum"),
    (dict(momentum=-1), "momentum"), (dict(momentum=float("nan")), "momentum"),
    (dict(eps=0), "eps"), (dict(eps=float("inf")), "eps"), (dict(beta_init=float("nan")),
                                                             "beta_init"),
    (dict(n_features=0), "n_features"), (dict(n_features=2.5), "n_features"),
    (dict(widths=["a"] * 6), "widths"), (dict(widths=[2.7] * 6), "widths"),
    (dict(d=5, feature_map="fourier"), "d"),
])
def test_qcnn_hyper_parameters_out_of_range_are_refused(kw, name):
    X, y = _fit_args(QCNN)
    model = QCNN(epochs=1, **kw)
    with pytest.raises(ValueError, match=f"^{name}: expected|^{name}: "):
        model.fit(X, y)
    assert not hasattr(model, "weights_")


@pytest.mark.parametrize("cls", [MERA2D, TTN2D], ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", ["lr", "weight_decay", "lr_gamma"])
def test_optimizer_settings_are_checked_before_training(cls, name):
    X, y = _fit_args(cls)
    with pytest.raises(ValueError, match=f"^{name}: expected a finite number"):
        _small(cls, **{name: float("nan")}).fit(X, y)


@pytest.mark.parametrize("kw, name", [
    (dict(lr=float("nan")), "lr"), (dict(lr=-1.0), "lr"), (dict(weight_decay=float("inf")),
                                                            "weight_decay"),
    (dict(eps=0.0), "eps"), (dict(betas=(1.0, 0.999)), "betas"), (dict(betas=0.9), "betas"),
])
def test_adamw_refuses_settings_that_turn_parameters_into_nan(kw, name):
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        AdamW([np.zeros(3)], **kw)


@pytest.mark.parametrize("cls", [QCNN, MERA2D, TTN2D], ids=lambda c: c.__name__)
@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_prediction_batch_size_is_checked(cls, bad):
    X, y = _fit_args(cls)
    model = _small(cls, epochs=1).fit(X, y)
    for method in (model.predict, model.decision_function, model.predict_proba):
        with pytest.raises(ValueError, match="^batch_size: expected a positive integer"):
            method(X, batch_size=bad)


def test_qcnn_scores_past_float64_raise_instead_of_inf_or_nan():
    """Deep hierarchies (1024x1024 images) give scores past float64's range: weights scaled
    by 1e30 make a 16x16 model do the same. decision_function must not return inf, and the
    linear domain must not rank NaN scores as class 0; log=True and domain='auto' stay
    finite."""
    X, y = _data(n=20, side=16)
    model = _small(QCNN, epochs=1).fit(X, y)
    for w in model.weights_:
        w *= 1e30
    with pytest.raises(FloatingPointError, match=r"log=True"):
        model.decision_function(X)
    logabs, sign = model.decision_function(X, log=True)
    assert np.isfinite(logabs).all()
    pred = model.predict(X)
    model.set_params(domain="linear")
    with pytest.raises(FloatingPointError, match="domain='linear'"):
        model.predict(X)
    model.set_params(domain="auto")
    np.testing.assert_array_equal(model.predict(X), pred)
