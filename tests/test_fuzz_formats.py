"""Property-based fuzzing of the three file formats fasttn reads: checkpoints (header and
arrays), IDX headers and the NeedleMNIST cache's metadata.

The property: whatever the file holds, reading it gives a result or an error that is a
ValueError or OSError subclass and names the file (and, for a bad field, the field);
and reading allocates at most ALLOCATION_BOUND bytes (the files here are a few KB, so a
reader that trusts a declared size is caught).
"""
from __future__ import annotations

import atexit
import io
import json
import shutil
import struct
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fasttn.data import DatasetError, load_needle_dataset, needle_mnist, write_needle_dataset  # noqa: E402
from fasttn.data.idx import load_idx  # noqa: E402
from fasttn.models import QCNN, TNN, load  # noqa: E402

ALLOCATION_BOUND = 64 * 2**20
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=12)
# values that look like the fields they replace: shapes, class lists, big numbers
shaped_values = (json_values | st.lists(st.integers(-3, 2**20), min_size=0, max_size=3)
                 | st.lists(st.integers(0, 70000), min_size=2, max_size=2)
                 | st.sampled_from([[65536, 65536], [8, 8], [0, 8], [2**40, 1], "bogus",
                                    "classification", "regression", [0, 1], [0, 0], ["a"]]))

_DIR = Path(tempfile.mkdtemp(prefix="fasttn-fuzz-"))  # shared by the examples of a run
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)


def _reference():
    """A saved QCNN and TNN, and the parts of their checkpoints."""
    if not hasattr(_reference, "done"):
        rng = np.random.default_rng(0)
        X, y = rng.random((30, 4, 4)), np.arange(30) % 2
        QCNN(d=2, epochs=1, random_state=0, early_stopping=False).fit(X, y).save(
            _DIR / "QCNN.npz")
        TNN(epochs=1, random_state=0).fit(X.reshape(30, -1), y).save(_DIR / "TNN.npz")
        _reference.parts = {}
        for name in ("QCNN", "TNN"):
            with np.load(_DIR / f"{name}.npz") as data:
                arrays = {k: data[k] for k in data.files}
            header = json.loads(arrays.pop("__header__").tobytes().decode())
            _reference.parts[name] = (header, arrays)
        _reference.done = True
    return _reference.parts


def _bounded(read, path):
    """``read(path)``: the result, or the error, which must be a ValueError or OSError
    naming the file; at most ALLOCATION_BOUND bytes allocated."""
    tracemalloc.start()
    try:
        try:
            result = read(path)
        except (ValueError, OSError) as exc:
            assert str(path) in str(exc), f"the error does not name the file: {exc}"
            result = exc
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < ALLOCATION_BOUND, f"reading allocated {peak} bytes"
    return result


def _write_checkpoint(path, header, arrays):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    np.savez(path, __header__=np.frombuffer(raw, np.uint8), **arrays)


# ---------------------------------------------------------------------------- checkpoints
header_paths = st.sampled_from([
    ("format",), ("version",), ("class",), ("params",), ("meta",), ("params", "momentum"),
    ("params", "d"), ("params", "widths"), ("params", "lr"), ("params", "dtype"),
    ("meta", "classes"), ("meta", "input_shape"), ("meta", "network_shape"),
    ("meta", "image_shape"), ("meta", "input_scale"), ("meta", "best_epoch"),
    ("meta", "task"), ("meta", "n_features_in"), ("meta", "layer_configs"),
    ("meta", "history")])


@SETTINGS
@given(model=st.sampled_from(["QCNN", "TNN"]), where=header_paths, value=shaped_values,
       drop=st.booleans())
def test_checkpoint_header_fields(model, where, value, drop):
    header, arrays = _reference()[model]
    header = json.loads(json.dumps(header))
    node = header
    for key in where[:-1]:
        node = node[key]
    if drop:
        node.pop(where[-1], None)
    else:
        node[where[-1]] = value
    path = _DIR / "fuzz_header.npz"
    _write_checkpoint(path, header, arrays)
    result = _bounded(load, path)
    if isinstance(result, Exception):
        assert isinstance(result, ValueError)


@SETTINGS
@given(raw=st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()))
def test_checkpoint_header_bytes(raw):
    _, arrays = _reference()["QCNN"]
    path = _DIR / "fuzz_raw_header.npz"
    _write_checkpoint(path, raw, arrays)
    assert isinstance(_bounded(load, path), ValueError)


dtypes = st.sampled_from(["<f4", "<f8", ">f4", ">f8", "<i8", "|u1", "|b1", "<c16", "<f2"])


@SETTINGS
@given(model=st.sampled_from(["QCNN", "TNN"]), index=st.integers(0, 100), dtype=dtypes,
       shape=st.lists(st.integers(0, 6), max_size=3), fill=st.sampled_from(
           [0.0, 1.0, -1.0, np.nan, np.inf, 1e300]), drop=st.booleans())
def test_checkpoint_arrays(model, index, dtype, shape, fill, drop):
    header, arrays = _reference()[model]
    arrays = dict(arrays)
    name = sorted(arrays)[index % len(arrays)]
    if drop:
        arrays.pop(name)
    else:
        with np.errstate(all="ignore"):
            arrays[name] = np.full(shape, fill).astype(dtype)
    path = _DIR / "fuzz_arrays.npz"
    _write_checkpoint(path, header, arrays)
    result = _bounded(load, path)
    if not isinstance(result, Exception):  # only an unchanged array can load
        assert not drop and np.isfinite(fill)


@SETTINGS
@given(index=st.integers(0, 100), shape=st.lists(st.integers(0, 2**31), min_size=1,
                                                  max_size=4),
       descr=st.sampled_from(["<f4", "<f8", "|O", "<U4", ">f8"]),
       payload=st.integers(0, 256), fortran=st.booleans())
def test_checkpoint_array_headers_declaring_any_shape(index, shape, descr, payload, fortran):
    """A forged .npy header inside the archive: the declared shape is never allocated."""
    names = sorted(k for k in zipfile.ZipFile(_DIR / "QCNN.npz").namelist())
    _reference()
    target = names[index % len(names)]
    path = _DIR / "fuzz_npy_header.npz"
    with zipfile.ZipFile(_DIR / "QCNN.npz") as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == target:
                buf = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    buf, {"descr": descr, "fortran_order": fortran, "shape": tuple(shape)})
                data = buf.getvalue() + b"\0" * payload
            dst.writestr(info.filename, data)
    result = _bounded(load, path)
    assert isinstance(result, ValueError)


# ------------------------------------------------------------------------------------ IDX
@SETTINGS
@given(code=st.integers(0, 255), ndim=st.integers(0, 6),
       dims=st.lists(st.integers(0, 2**32 - 1), max_size=6),
       payload=st.integers(0, 600), cut=st.integers(0, 40), gz=st.booleans())
def test_idx_headers(code, ndim, dims, payload, cut, gz):
    import gzip

    head = bytes([0, 0, code, ndim]) + struct.pack(f">{len(dims)}I", *dims)
    data = head + b"\x01" * payload
    data = data[:len(data) - cut] if cut < len(data) else data
    if gz:
        data = gzip.compress(data, mtime=0)
    path = _DIR / "fuzz.idx"
    path.write_bytes(data)
    result = _bounded(load_idx, path)
    if not isinstance(result, Exception):
        assert result.size * result.itemsize <= payload


# ------------------------------------------------------------------------- needle metadata
def _cache():
    if not hasattr(_cache, "path"):
        _cache.path = write_needle_dataset(_DIR / "needle", needle_mnist(size=64, count=4),
                                           progress=False)
        _cache.meta = json.loads((_cache.path / "metadata.json").read_text())
    return _cache.path, _cache.meta


metadata_fields = st.sampled_from(["format", "count", "size", "seed", "split", "source",
                                   "target", "noise_digits", "o2i", "n_positive",
                                   "n_negative", "digit_shape"])


@SETTINGS
@given(field=metadata_fields, value=shaped_values, drop=st.booleans(),
       whole=st.none() | json_values)
def test_needle_cache_metadata(field, value, drop, whole):
    path, meta = _cache()
    work = _DIR / "needle_fuzz"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(path, work)
    if whole is not None:
        meta = whole
    else:
        meta = dict(meta)
        if drop:
            meta.pop(field)
        else:
            meta[field] = value
    (work / "metadata.json").write_text(json.dumps(meta))
    result = _bounded(load_needle_dataset, work)
    if isinstance(result, Exception):
        assert isinstance(result, DatasetError)
    else:
        assert len(result) == 4
        result.arrays()
