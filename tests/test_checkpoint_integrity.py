"""Checkpoints are untrusted input: every field is checked before it is used, and load
gives a result or a CheckpointError (a ValueError) naming the file and the field."""
from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from fasttn.models import MERA2D, QCNN, TNN, TTN2D, load
from fasttn.models.base import CheckpointError

_CACHE = {}


def fitted(cls):
    """One small fitted model per class (fitted once per session)."""
    if cls not in _CACHE:
        rng = np.random.default_rng(0)
        X, y = rng.random((40, 8, 8)), np.arange(40) % 3
        if cls is TNN:
            m = TNN(epochs=1, random_state=0).fit(X.reshape(40, -1), y)
        elif cls is QCNN:
            m = QCNN(d=2, epochs=1, random_state=0, early_stopping=False).fit(X, y)
        elif cls is MERA2D:
            m = MERA2D(chi=2, epochs=1, random_state=0, early_stopping=False).fit(X, y)
        else:
            m = TTN2D(chi=2, epochs=1, random_state=0, early_stopping=False).fit(X, y)
        _CACHE[cls] = m
    return _CACHE[cls]


def parts(path):
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(arrays.pop("__header__").tobytes().decode())
    return header, arrays


def write(path, header, arrays):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    np.savez(path, __header__=np.frombuffer(raw, np.uint8), **arrays)
    return path


def saved(tmp_path, cls=QCNN):
    path = tmp_path / f"{cls.__name__}.npz"
    fitted(cls).save(path)
    return path


def changed(tmp_path, cls, change):
    header, arrays = parts(saved(tmp_path, cls))
    change(header, arrays)
    return write(tmp_path / "bad.npz", header, arrays)


@pytest.mark.parametrize("cls", [QCNN, MERA2D, TTN2D, TNN], ids=lambda c: c.__name__)
def test_a_saved_model_loads_back(tmp_path, cls):
    m = load(saved(tmp_path, cls))
    X = np.random.default_rng(1).random((5, 8, 8))
    X = X.reshape(5, -1) if cls is TNN else X
    np.testing.assert_array_equal(m.predict(X), fitted(cls).predict(X))


def _set(arrays, name, value):
    arrays[name] = value


CASES = {
    "nan-weight": (QCNN, lambda h, a: a["weights_0"].__setitem__((0, 0), np.nan),
                   "weights_0: expected finite values"),
    "negative-running-variance": (QCNN, lambda h, a: a["running_vars_1"].__setitem__(0, -1.0),
                                  "running_vars_1: expected values >= 0"),
    "int-dtype": (QCNN, lambda h, a: _set(a, "weights_0", a["weights_0"].astype(np.int64)),
                  "weights_0: expected float32 or float64"),
    "complex-dtype": (QCNN, lambda h, a: _set(a, "gammas_0", a["gammas_0"].astype(complex)),
                      "gammas_0: expected float32 or float64"),
    "big-endian": (QCNN, lambda h, a: _set(a, "weights_0", a["weights_0"].astype(">f4")),
                   "weights_0: expected float32 or float64 in native byte order"),
    "wrong-shape-batch-norm": (QCNN, lambda h, a: _set(a, "gammas_1", a["gammas_1"][:-1]),
                               "gammas_1: expected shape"),
    "wrong-dtype-running-mean": (QCNN, lambda h, a: _set(a, "running_means_0",
                                                         a["running_means_0"].astype("f4")),
                                 "running_means_0: expected shape .* of float64"),
    "extra-array": (TTN2D, lambda h, a: _set(a, "w9", np.zeros(3)), "w9: expected the arrays"),
    "tnn-bogus-task": (TNN, lambda h, a: h["meta"].__setitem__("task", "bogus"),
                       "task: expected one of"),
    "tnn-missing-classes": (TNN, lambda h, a: h["meta"].pop("classes"), "classes"),
    "missing-classes": (QCNN, lambda h, a: h["meta"].pop("classes"), "classes: missing"),
    "nan-class": (MERA2D, lambda h, a: h["meta"].__setitem__("classes", [0, 1, float("nan")]),
                  "classes: expected"),
    "version-string": (QCNN, lambda h, a: h.__setitem__("version", "1"), "version: expected"),
    "class-list": (QCNN, lambda h, a: h.__setitem__("class", ["QCNN"]), "class: expected"),
    "params-list": (QCNN, lambda h, a: h.__setitem__("params", []), "params: expected"),
    "momentum-out-of-range": (QCNN, lambda h, a: h["params"].__setitem__("momentum", 5),
                              "momentum: expected"),
    "input-shape-floats": (QCNN, lambda h, a: h["meta"].__setitem__("input_shape", [8.5, 8]),
                           "input_shape: expected"),
    "network-shape-mismatch": (QCNN, lambda h, a: h["meta"].__setitem__("network_shape",
                                                                        [16, 16]),
                               "image_shape: expected|network_shape: expected"),
    "input-scale-nan": (TTN2D, lambda h, a: h["meta"].__setitem__("input_scale", float("nan")),
                        "input_scale: expected"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_field_is_refused_naming_the_file_and_the_field(tmp_path, case):
    cls, change, message = CASES[case]
    path = changed(tmp_path, cls, change)
    with pytest.raises(CheckpointError, match=message) as err:
        load(path)
    assert str(path) in str(err.value)


def test_a_header_that_is_a_json_list(tmp_path):
    _, arrays = parts(saved(tmp_path))
    path = write(tmp_path / "bad.npz", b"[1, 2]", arrays)
    with pytest.raises(CheckpointError, match="__header__: expected a JSON object"):
        load(path)


@pytest.mark.parametrize("cls", [QCNN, MERA2D, TTN2D], ids=lambda c: c.__name__)
def test_a_huge_image_shape_is_refused_before_allocating(tmp_path, cls):
    def huge(h, a):
        for key in ("input_shape", "network_shape", "image_shape"):
            h["meta"][key] = [65536, 65536]

    path = changed(tmp_path, cls, huge)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="shape: expected images of at most"):
            load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20


def test_an_array_header_claiming_a_huge_shape_is_refused_before_reading(tmp_path):
    import zipfile

    path = saved(tmp_path)
    forged = tmp_path / "forged.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(forged, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "weights_0.npy":
                import io
                buf = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    buf, {"descr": "<f4", "fortran_order": False, "shape": (2**20, 2**20)})
                data = buf.getvalue() + b"\0" * 64
            dst.writestr(info.filename, data)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="weights_0: expected at most"):
            load(forged)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20


def test_a_chi_too_large_is_refused_up_front():
    X, y = np.random.default_rng(0).random((20, 16, 16)), np.arange(20) % 2
    for model in (TTN2D(chi=10**6, epochs=1), MERA2D(chi=10**6, epochs=1),
                  QCNN(widths=[10**6] * 8, epochs=1)):
        with pytest.raises(ValueError, match=r"^(chi|d, widths).*: expected a model of at most"):
            model.fit(X, y)


def test_tnn_score_with_a_scalar_label():
    m = fitted(TNN)
    X = np.random.default_rng(1).random((5, 64))
    with pytest.raises(ValueError, match=r"^y: expected 5 labels"):
        m.score(X, 1)


def test_a_mera2d_checkpoint_from_before_window_keeps_its_whole_image_read_out(tmp_path, rng):
    # such a file has no "window" parameter: it loads as the network that wrote it
    X, y = rng.random((8, 64, 64)), np.array([0, 1] * 4)
    m = MERA2D(window=None, chi=2, epochs=1, random_state=0).fit(X, y)
    path = tmp_path / "old.npz"
    m.save(path)
    header, arrays = parts(path)
    del header["params"]["window"]
    write(path, header, arrays)
    back = load(path)
    assert back.window is None and back.scan_ == 1 and back.patch_ == 4
    np.testing.assert_array_equal(back.decision_function(X), m.decision_function(X))
