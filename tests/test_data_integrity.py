"""The NeedleMNIST cache and IDX readers refuse what they cannot read right, naming the
file and the field, instead of returning wrong data or failing with a raw error."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from fasttn.data import DatasetError, load_needle_dataset, needle_mnist, write_needle_dataset
from fasttn.data.idx import load_idx


@pytest.fixture
def cache(tmp_path):
    return write_needle_dataset(tmp_path / "d", needle_mnist(size=64, count=6), progress=False)


def _rewrite_meta(cache, change):
    meta = json.loads((cache / "metadata.json").read_text())
    meta = change(meta)
    (cache / "metadata.json").write_text(json.dumps(meta))


def test_fortran_ordered_images_are_refused_not_scrambled(cache):
    images = np.load(cache / "images.npy")
    np.save(cache / "images.npy", np.asfortranarray(images))
    with pytest.raises(DatasetError, match=r"images\.npy: fortran_order: expected C order"):
        load_needle_dataset(cache)


@pytest.mark.parametrize("labels", [np.ones(6, np.int64), np.full(6, 9),
                                    np.full(6, 0.7), np.array([1, 0, 1, 0, 0, 1])])
def test_labels_that_disagree_with_the_generator_are_refused(cache, labels):
    np.save(cache / "labels.npy", labels)
    with pytest.raises(DatasetError, match=r"labels\.npy: (labels|dtype): expected"):
        load_needle_dataset(cache)


def test_labels_of_another_length_are_refused(cache):
    np.save(cache / "labels.npy", 1 - np.arange(8) % 2)
    with pytest.raises(DatasetError, match=r"labels\.npy: shape: expected \(6,\)"):
        load_needle_dataset(cache)


@pytest.mark.parametrize("change, field", [
    (lambda m: {k: v for k, v in m.items() if k != "count"}, "count: missing"),
    (lambda m: [m], "expected a JSON object, got a list"),
    (lambda m: {**m, "count": "6"}, "count: expected a positive integer"),
    (lambda m: {**m, "size": 64.0}, "size: expected a positive integer"),
    (lambda m: {**m, "n_positive": 5}, "n_positive, n_negative"),
    (lambda m: {**m, "o2i": None}, "o2i: expected"),
])
def test_metadata_fields_are_checked(cache, change, field):
    _rewrite_meta(cache, change)
    with pytest.raises(DatasetError, match=f"metadata.json: {field}"):
        load_needle_dataset(cache)


def test_an_empty_images_file_is_a_dataset_error(cache):
    (cache / "images.npy").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"images\.npy: not a readable \.npy file"):
        load_needle_dataset(cache)


def test_a_header_claiming_a_huge_labels_array_is_refused_before_reading(cache):
    header = {"descr": "<i8", "fortran_order": False, "shape": (10**12,)}
    with open(cache / "labels.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
    with pytest.raises(DatasetError, match=r"labels\.npy: shape: expected \(6,\)"):
        load_needle_dataset(cache)


def test_idx_dimensions_whose_product_overflows_int64(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(bytes([0, 0, 0x08, 4]) + struct.pack(">4I", *[2**32 - 1] * 4) + b"\0" * 8)
    with pytest.raises(DatasetError, match="truncated") as err:
        load_idx(path)
    assert "-" not in str(err.value).split("bytes of data")[0].split("(")[-1]
    assert str((2**32 - 1) ** 4) in str(err.value)
