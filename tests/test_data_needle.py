"""NeedleMNIST protocol, determinism, streaming and the on-disk cache."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from fasttn.data import (DatasetError, DatasetNotFoundError, digit_source, load_needle_dataset,
                         needle_mnist, noise_digit_count, write_needle_dataset)
from fasttn.data.needle import NeedleMNIST
from fasttn.data.splits import DIGITS_BOUNDS
from fasttn.data.stream import shuffled_order

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST IDX files not installed (apt-get install dataset-fashion-mnist)")


def reference_image(ds: NeedleMNIST, i: int) -> np.ndarray:
    """Plain NumPy rendering of the protocol from the layout: add every digit, then clip."""
    lay = ds.layout(i)
    h, w = ds.digit_shape
    canvas = np.zeros((ds.size, ds.size), np.float32)
    for d, r, c in zip(lay.digits, lay.rows, lay.cols):
        canvas[r:r + h, c:c + w] += ds.source.images[d]
    return np.minimum(canvas, np.float32(1.0))


# ----------------------------------------------------------------------------- protocol
def test_noise_digit_counts_of_the_protocol():
    table = {64: 2, 128: 6, 256: 25, 512: 100, 1024: 400, 2048: 1600, 4096: 6400, 6144: 14400}
    assert {s: noise_digit_count(s) for s in table} == table


@pytest.mark.parametrize("size, count", [(64, 40), (1024, 6)])
def test_generated_images_follow_the_protocol(size, count):
    ds = needle_mnist(size=size, count=count, seed=11)
    src = ds.source
    noise = {64: 2, 1024: 400}[size]
    assert ds.noise_digits == noise and ds.digits_per_image == noise + 1
    assert ds.o2i == 784 / size**2
    assert ds.labels.sum() == count // 2  # balanced
    for i in range(count):
        image, label = ds[i]
        lay = ds.layout(i)
        assert image.shape == (size, size) and image.dtype == np.float32
        assert label == lay.label == (1 if i % 2 == 0 else 0)
        # same number of digits in both classes
        assert len(lay.digits) == noise + 1
        classes = src.labels[lay.digits]
        if label == 1:
            assert classes[0] == 3 and np.all(classes[1:] != 3)
            r, c = int(lay.rows[0]), int(lay.cols[0])
            cell_r, cell_c = lay.cell
            # the needle lies wholly inside its 64x64 cell
            assert cell_r * 64 <= r and r + 28 <= (cell_r + 1) * 64
            assert cell_c * 64 <= c and c + 28 <= (cell_c + 1) * 64
            # every pixel of the needle is visible (digits add, clip at 1)
            needle = src.images[lay.digits[0]]
            window = image[r:r + 28, c:c + 28]
            assert np.all(window >= np.minimum(needle, 1) - 1e-6) and needle.max() > 0.5
        else:
            assert lay.cell is None and np.all(classes != 3)
        assert lay.rows.min() >= 0 and lay.rows.max() < size - 28
        assert lay.cols.min() >= 0 and lay.cols.max() < size - 28
        np.testing.assert_array_equal(image, reference_image(ds, i))
        assert 0 < image.max() <= 1 and image.min() == 0


def test_needle_cells_and_offsets_cover_the_grid():
    ds = needle_mnist(size=256, count=400, seed=3)
    cells = {ds.layout(i).cell for i in range(0, 400, 2)}
    assert len(cells) == 16  # every cell of the 4x4 grid is used
    offsets = np.array([ds.layout(i).rows[0] % 64 for i in range(0, 400, 2)])
    assert offsets.min() == 0 and offsets.max() == 35  # uniform in [0, 64 - 28)


def test_protocol_length_uses_each_target_twice():
    ds = needle_mnist(size=64)
    targets = np.flatnonzero(ds.source.labels == 3)
    assert len(ds) == 2 * 2 * len(targets)
    used = np.array([ds.layout(i).digits[0] for i in range(0, len(ds), 2)])
    np.testing.assert_array_equal(np.bincount(used, minlength=len(ds.source.labels))[targets], 2)
    assert ds.layout(0).digits[0] == ds.layout(2 * len(targets)).digits[0]
    assert ds.layout(0).rows[0] != ds.layout(2 * len(targets)).rows[0] or \
        ds.layout(0).cols[0] != ds.layout(2 * len(targets)).cols[0]


def _used_ids(ds: NeedleMNIST, n: int) -> set[int]:
    return {int(ds.source.ids[d]) for i in range(n) for d in ds.layout(i).digits}


def test_digits_splits_share_no_source_digit():
    used = {split: _used_ids(needle_mnist(size=128, count=120, split=split), 120)
            for split in ("train", "validation", "test")}
    for split, ids in used.items():
        lo, hi = DIGITS_BOUNDS[split]
        assert ids and min(ids) >= lo and max(ids) < hi
    assert not used["train"] & used["validation"]
    assert not used["train"] & used["test"] and not used["validation"] & used["test"]


@needs_fashion
def test_fashion_splits_follow_the_protocol_and_share_nothing():
    sources = {s: digit_source("fashion", s) for s in ("train", "validation", "test")}
    assert {s: len(v.ids) for s, v in sources.items()} == \
        {"train": 55000, "validation": 5000, "test": 10000}
    ids = {s: set(v.ids.tolist()) for s, v in sources.items()}
    assert not ids["train"] & ids["validation"] and not ids["train"] & ids["test"]
    ds = needle_mnist(size=128, count=40, split="validation", source="fashion", target=8)
    assert ds.metadata()["target_name"] == "Bag"
    assert _used_ids(ds, 40) <= ids["validation"]
    lay = ds.layout(0)
    assert ds.source.labels[lay.digits[0]] == 8 and np.all(ds.source.labels[lay.digits[1:]] != 8)


@needs_fashion
def test_mnist_source_found_through_the_environment_variable(tmp_path, monkeypatch):
    # Debian ships no MNIST package; the Fashion-MNIST files, linked under MNIST's layout,
    # exercise the same IDX path (MNIST has no content checksum to refuse them).
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / f"{name}.gz").symlink_to(FASHION_DIR / f"{name}.gz")
    monkeypatch.setenv("FASTTN_DATA_DIR", str(tmp_path))
    ds = needle_mnist(size=64, split="validation", source="mnist")
    assert ds.source.name == "mnist" and len(ds.source.ids) == 5000
    assert len(ds) == 4 * int(np.sum(ds.source.labels == 3))  # 2 duplicates x pos/neg
    assert max(_used_ids(ds, 20)) < 5000
    test = needle_mnist(size=64, count=4, split="test", source="mnist")
    assert min(_used_ids(test, 4)) >= 60000


def test_any_target_class_and_user_arrays():
    ds = needle_mnist(size=64, count=6, target=7)
    assert ds.source.labels[ds.layout(0).digits[0]] == 7
    rng = np.random.default_rng(0)
    images = (rng.random((40, 10, 12)) * 255).astype(np.uint8)
    labels = np.arange(40) % 4
    ds = needle_mnist(size=128, count=4, source=(images, labels), target=2, noise_digits=5)
    assert ds.source.name == "arrays" and ds.o2i == 120 / 128**2
    lay = ds.layout(0)
    assert len(lay.digits) == 6 and labels[lay.digits[0]] == 2
    np.testing.assert_array_equal(ds[0][0], reference_image(ds, 0))


# ----------------------------------------------------------------------------- determinism
def test_same_seed_and_index_give_the_same_image():
    a = needle_mnist(size=128, count=50, seed=5)
    b = needle_mnist(size=128, count=50, seed=5)
    order = [37, 3, 12, 3]
    for i in order:  # access order does not matter
        np.testing.assert_array_equal(a[i][0], b[i][0])
    np.testing.assert_array_equal(a[37][0], b.arrays(38)[0][37])
    assert not np.array_equal(a[3][0], needle_mnist(size=128, count=50, seed=6)[3][0])
    other_split = needle_mnist(size=128, count=50, seed=5, split="test")
    assert not np.array_equal(a[3][0], other_split[3][0])


def test_images_are_the_same_on_every_machine():
    # Golden digests: the generator depends only on SeedSequence hashing, integer arithmetic,
    # the scikit-learn digits and ordered float32 additions, none of which vary by machine.
    def digest(x):
        return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()

    assert digest(digit_source("digits", "train").images) == \
        "6f98faefe6004b6bbd6dc96be8f51a74a5aaa028101988b8dcef2392e909c939"
    assert digest(needle_mnist(size=64)[0][0]) == \
        "2d29bf4b140a309eb5b7f1333e73b2eef0b34b7125f0638773b2591c1e1878ae"
    assert digest(needle_mnist(size=1024, count=4)[1][0]) == \
        "56403801d546768edc6bcfad8ecf2466db5fb7378287b234801164fa85de1e73"


# ----------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_batches_in_order_match_arrays(prefetch):
    ds = needle_mnist(size=64, count=23)
    X, y = ds.arrays()
    parts = list(ds.batches(5, prefetch=prefetch))
    assert [len(p[1]) for p in parts] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), X)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)
    assert [len(p[1]) for p in ds.batches(5, drop_last=True, prefetch=prefetch)] == [5] * 4


def test_shuffled_batches_visit_every_image_once():
    ds = needle_mnist(size=64, count=30)
    order = shuffled_order(30, 9)
    assert sorted(order.tolist()) == list(range(30)) and order.tolist() != list(range(30))
    X = np.concatenate([b[0] for b in ds.batches(8, shuffle=True, seed=9)])
    y = np.concatenate([b[1] for b in ds.batches(8, shuffle=True, seed=9)])
    for k, i in enumerate(order):
        np.testing.assert_array_equal(X[k], ds[int(i)][0])
        assert y[k] == ds[int(i)][1]
    other = np.concatenate([b[1] for b in ds.batches(8, shuffle=True, seed=10)])
    assert sorted(other.tolist()) == sorted(y.tolist())


def test_stopping_early_stops_the_prefetch_threads():
    ds = needle_mnist(size=128, count=200)
    it = ds.batches(4, prefetch=3)
    next(it)
    assert any(t.name.startswith("fasttn-prefetch") for t in threading.enumerate())
    it.close()
    assert not any(t.name.startswith("fasttn-prefetch") for t in threading.enumerate())


def test_streaming_memory_does_not_grow_with_the_count():
    ds = needle_mnist(size=1024, count=96)
    ds.arrays(1)
    batch_bytes = 8 * 1024 * 1024 * 4

    def peak(n_batches):
        tracemalloc.start()
        try:
            for k, _ in enumerate(ds.batches(8, prefetch=2)):
                if k + 1 == n_batches:
                    break
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    short, long = peak(3), peak(12)
    assert long <= 5 * batch_bytes  # prefetch + 2 batches, plus slack
    # A leak would add 9 batches; up to 2 batches more are in-flight prefetches at the break,
    # which depend on thread timing.
    assert long < short + 3 * batch_bytes


def test_iterating_1024_images_stays_under_1_5_gb_rss():
    # A fresh process, so that its peak is the iteration's own (the full 10,000-image run is
    # bench/benchmarks/bench_data.py rss; here 640 images, 20 batches of 32). The peak is the
    # process's VmHWM: Linux carries ru_maxrss across exec from the forking process, so it
    # would report the peak of this test session when that is larger.
    code = (
        "import resource\n"
        "from fasttn.data import needle_mnist\n"
        "ds = needle_mnist(size=1024, count=640)\n"
        "n = sum(len(y) for _, y in ds.batches(32, prefetch=2))\n"
        "assert n == 640\n"
        "try:\n"
        "    status = open('/proc/self/status').read().split('VmHWM:')[1]\n"
        "    print(int(status.split()[0]))\n"
        "except (OSError, IndexError):\n"
        "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True)
    peak_kib = int(out.stdout.split()[-1])
    assert peak_kib < 1.5 * 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs, match", [
    ({"size": 100}, "size: expected a multiple of the 64-pixel cell"),
    ({"size": 0}, "size"),
    ({"target": 11}, "target: expected a class present"),
    ({"split": "dev"}, "split"),
    ({"source": "cifar"}, "source"),
    ({"count": 0}, "count"),
    ({"noise_digits": -1}, "noise_digits"),
    ({"seed": -1}, "seed"),
    ({"cell_size": 28}, "cell_size"),
])
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        needle_mnist(**{"size": 64, **kwargs})


def test_bad_user_arrays_and_indices():
    with pytest.raises(ValueError, match=r"source images: expected float values in \[0, 1\]"):
        needle_mnist(size=64, source=(np.full((4, 8, 8), 2.0), np.arange(4)), target=1)
    with pytest.raises(ValueError, match="source labels"):
        needle_mnist(size=64, source=(np.zeros((4, 8, 8), np.uint8), np.arange(3)), target=1)
    ds = needle_mnist(size=64, count=4)
    assert np.array_equal(ds[-1][0], ds[3][0])
    with pytest.raises(IndexError):
        ds[4]
    with pytest.raises(TypeError):
        ds[1.5]


# ----------------------------------------------------------------------------- cache
def test_cache_round_trip(tmp_path):
    ds = needle_mnist(size=128, count=10, seed=2)
    out = write_needle_dataset(tmp_path / "n128", ds, progress=False)
    cache = load_needle_dataset(out)
    X, y = ds.arrays()
    assert isinstance(cache.images, np.memmap) and cache.images.dtype == np.uint8
    np.testing.assert_array_equal(cache.images, np.rint(X * 255).astype(np.uint8))
    np.testing.assert_array_equal(cache.labels, y)
    Xc, yc = cache.arrays()
    np.testing.assert_allclose(Xc, X, atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in cache.batches(3)]), Xc)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["o2i"] == 784 / 128**2 and meta["count"] == 10 and meta["noise_digits"] == 6
    assert meta["n_positive"] == meta["n_negative"] == 5 and meta["source"] == "digits"
    np.testing.assert_array_equal(cache.needle_boxes, ds.needle_boxes())
    assert (cache.needle_boxes[1::2] == -1).all() and (cache.needle_boxes[::2, 2:] == 28).all()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cache_is_written_atomically(tmp_path, monkeypatch):
    ds = needle_mnist(size=64, count=40)
    calls = {"n": 0}
    original = NeedleMNIST._batch

    def failing(self, indices):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return original(self, indices)

    monkeypatch.setattr(NeedleMNIST, "_batch", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_needle_dataset(tmp_path / "out", ds, batch_size=4, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the directory nor a temporary one


def test_cache_overwrite_and_refusal(tmp_path):
    out = write_needle_dataset(tmp_path / "d", size=64, count=4, progress=False)
    with pytest.raises(FileExistsError, match="already exists"):
        write_needle_dataset(out, size=64, count=6, progress=False)
    write_needle_dataset(out, size=64, count=6, seed=1, overwrite=True, progress=False)
    assert len(load_needle_dataset(out)) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_damaged_cache_is_reported(tmp_path):
    out = write_needle_dataset(tmp_path / "d", size=64, count=4, progress=False)
    images = out / "images.npy"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="d"):
        load_needle_dataset(out)
    (out / "labels.npy").unlink()
    with pytest.raises(DatasetNotFoundError, match="labels.npy"):
        load_needle_dataset(out)


@needs_fashion
def test_load_task_and_cli_take_the_needle_source(capsys):
    from fasttn.cli import main
    from fasttn.data import load_task

    X, y, Xt, yt = load_task("needle", size=64, n_train=8, n_test=4, needle_source="fashion",
                             needle_target=1)
    assert X.shape == (8, 64, 64) and Xt.shape == (4, 64, 64)
    assert set(y.tolist()) == {0, 1} and X.dtype == np.float32 and X.max() > 0.5
    # the same layouts as the generator itself: the source and target reached it
    ref = needle_mnist(size=64, split="train", seed=0, count=8, source="fashion", target=1)
    np.testing.assert_array_equal(X, ref.arrays()[0])
    assert not np.array_equal(X, load_task("needle", size=64, n_train=8)[0])
    assert main(["train", "mera", "--dataset", "needle", "--size", "64", "--n-train", "8",
                 "--n-test", "4", "--needle-source", "fashion", "--needle-target", "1",
                 "--epochs", "1", "--quiet"]) == 0
    assert "8 train / 4 test images of 64x64" in capsys.readouterr().out
