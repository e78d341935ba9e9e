"""The scikit-learn estimator contract: scikit-learn's own estimator checks, model selection,
pipelines, cloning, labels of any kind, probabilities."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.exceptions import DataConversionWarning, NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.utils.estimator_checks import check_estimator, check_methods_subset_invariance

import fasttn
from fasttn import MERA2D, MPS, QCNN, TNN, TTN2D, Dense, TNLayer

IMAGE_MODELS = [QCNN, MERA2D, TTN2D, MPS]


def _expected(est):
    return est._expected_failed_checks() if hasattr(est, "_expected_failed_checks") else {}


@pytest.mark.parametrize("cls", IMAGE_MODELS + [TNN], ids=lambda c: c.__name__)
def test_check_estimator_passes(cls):
    """Every check of scikit-learn's suite on the bare estimator; the only declared
    exception is float32's batch-size rounding (checked in float64 below)."""
    est = cls()
    expected = _expected(est)
    assert set(expected) <= {"check_methods_subset_invariance"}
    results = check_estimator(est, expected_failed_checks=expected, on_fail=None,
                              on_skip=None)
    bad = [(r["check_name"], str(r["exception"])[:200]) for r in results
           if r["status"] == "failed"]
    assert not bad, bad
    assert sum(r["status"] == "passed" for r in results) >= 45


@pytest.mark.parametrize("cls", IMAGE_MODELS, ids=lambda c: c.__name__)
def test_float64_predictions_do_not_depend_on_the_batch(cls):
    est = cls(dtype="float64")
    assert _expected(est) == {}
    check_methods_subset_invariance(cls.__name__, est)


def _digits(n=300, flat=False, seed=0):
    from fasttn.data import load_task

    X, y, _, _ = load_task("digits", seed=seed)
    X, y = X[:n], y[:n]
    return (X.reshape(len(X), -1) if flat else X), y


def test_cross_val_score_and_is_classifier():
    X, y = _digits(300)
    m = QCNN(epochs=10, random_state=0)
    assert is_classifier(m) and is_classifier(MERA2D()) and is_classifier(TTN2D())
    scores = cross_val_score(m, X, y, cv=3)
    assert scores.shape == (3,) and np.all(np.isfinite(scores))
    assert np.all(scores > 0.5)  # well above chance (0.1)


def test_grid_search_over_a_pipeline_gives_finite_distinct_scores():
    """Flat rows through a scikit-learn transformer into the model: every candidate gets a
    real score (a model that rejects the pipeline's output would give NaN)."""
    X, y = _digits(240, flat=True)
    pipe = Pipeline([("scale", StandardScaler()), ("m", QCNN(epochs=3, random_state=0))])
    search = GridSearchCV(pipe, {"m__d": [2, 8]}, cv=2, error_score="raise")
    search.fit(X, y)
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores)) and len(set(scores.tolist())) == 2
    assert search.best_params_["m__d"] in (2, 8)
    assert 0 <= search.score(X, y) <= 1
    # a MinMaxScaler's test rows may leave [0, 1]: they are clipped, not refused
    pipe = Pipeline([("scale", MinMaxScaler()), ("m", TTN2D(epochs=2, random_state=0))])
    pipe.fit(X[:120], y[:120])
    assert pipe.predict(X[120:] * 1.5).shape == (120,)


@pytest.mark.parametrize("make", [
    lambda: QCNN(d=4, epochs=2), lambda: MERA2D(chi=2, epochs=2), lambda: TTN2D(epochs=2),
    lambda: TNN(epochs=5), lambda: MPS(epochs=2)], ids=["QCNN", "MERA2D", "TTN2D", "TNN", "MPS"])
def test_string_labels_round_trip_and_probabilities(make, tmp_path):
    X, y = _digits(150, flat=True)
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                      "nine"])[y]
    m = make().set_params(random_state=0).fit(X, names)
    assert sorted(m.classes_.tolist()) == sorted(set(names.tolist()))
    pred = m.predict(X)
    assert pred.dtype.kind == "U" and set(pred.tolist()) <= set(m.classes_.tolist())
    assert m.score(X, names) == np.mean(pred == names)
    proba = m.predict_proba(X)
    assert proba.shape == (150, len(m.classes_))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    # the most probable class is the predicted one
    np.testing.assert_array_equal(m.classes_[np.argmax(proba, axis=1)], pred)
    # labels round-trip through a checkpoint
    path = tmp_path / "m.npz"
    m.save(path)
    m2 = fasttn.load(path)
    np.testing.assert_array_equal(m2.predict(X), pred)
    # score checks its labels like fit: numbers against string classes are an error
    with pytest.raises((TypeError, ValueError)):
        m.score(X, y)


def test_non_contiguous_integer_labels_and_binary_decision_function():
    X, y = _digits(600)
    keep = (y == 3) | (y == 8)
    X, y = X[keep], np.where(y[keep] == 3, -7, 40)
    m = QCNN(epochs=20, batch_size=10, random_state=0).fit(X, y)
    assert m.classes_.tolist() == [-7, 40] and m.n_classes_ == 2
    d = m.decision_function(X)
    assert d.shape == (len(y),)
    np.testing.assert_array_equal(m.predict(X), np.where(d > 0, 40, -7))
    assert m.score(X, y) > 0.8


@pytest.mark.parametrize("est", [
    QCNN(d=4), MERA2D(chi=[4, 2], bond=3), TTN2D(chi=[8, 4]),
    TNN([Dense(64, trainable=False), TNLayer(64, n_sites=6, bond_dim=2), Dense(3, "softmax")],
        solver="sweep"),
    TNN([{"type": "Dense", "units": 4}, {"type": "Dense", "units": 1}]),
    MPS(bond_dim=4, order="hilbert", center=3)],
    ids=["QCNN", "MERA2D", "TTN2D", "TNN-layers", "TNN-dicts", "MPS"])
def test_clone_keeps_every_parameter(est):
    c = clone(est)
    assert type(c) is type(est)
    p, q = est.get_params(), c.get_params()
    assert p.keys() == q.keys()
    for k in p:
        assert repr(p[k]) == repr(q[k]), k


def test_tnn_tags_follow_its_output_layer():
    assert is_classifier(TNN()) and not is_regressor(TNN())
    reg = TNN([TNLayer(4, n_sites=2), Dense(1)])
    assert is_regressor(reg) and not is_classifier(reg)
    X = np.random.default_rng(0).uniform(size=(40, 4))
    reg.set_params(epochs=3).fit(X, X.sum(axis=1))
    assert not hasattr(reg, "predict_proba")
    assert np.isfinite(reg.score(X, X.sum(axis=1)))


def test_tnn_score_checks_label_shape():
    X, y = _digits(120, flat=True)
    m = TNN(epochs=5, random_state=0).fit(X, y)
    acc = m.score(X, y)
    # a column of labels is the same labels (it used to broadcast to an (n, n) comparison)
    with pytest.warns(DataConversionWarning):
        assert m.score(X, y[:, None]) == acc
    with pytest.raises(ValueError):
        m.score(X, y[:-3])


@pytest.mark.parametrize("cls", IMAGE_MODELS + [TNN], ids=lambda c: c.__name__)
def test_not_fitted_error(cls):
    X, _ = _digits(5, flat=True)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        cls().predict(X)
