"""IDX loading, dataset location, resizing and download checks (fasttn.data: idx, sources)."""
from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from fasttn.data import (DATA_DIR_ENV, DatasetError, DatasetNotFoundError, dataset_locations,
                         find_dataset_files, load_digits, load_fashion_mnist, load_idx,
                         load_idx_pair, normalize_images, random_shift, resize_images,
                         save_idx)
from fasttn.data.download import _fetch

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
needs_fashion = pytest.mark.skipif(
    not all((FASHION_DIR / f"{name}.gz").is_file() for name in FASHION_FILES),
    reason="Fashion-MNIST IDX files not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


@pytest.fixture
def fashion_copy(tmp_path) -> Path:
    """A private copy of the Fashion-MNIST test files: gzipped, plus raw decompressed ones."""
    src = tmp_path / "src"
    src.mkdir()
    for name in FASHION_FILES[2:]:
        shutil.copy(FASHION_DIR / f"{name}.gz", src / f"{name}.gz")
        (src / name).write_bytes(gzip.decompress((FASHION_DIR / f"{name}.gz").read_bytes()))
    return src


def _fashion_dir_with(tmp_path: Path, images: Path, labels: Path) -> Path:
    """A data directory holding the given files under the test-split names."""
    d = tmp_path / "data"
    d.mkdir()
    shutil.copy(images, d / ("t10k-images-idx3-ubyte" + (".gz" if images.suffix == ".gz" else "")))
    shutil.copy(labels, d / ("t10k-labels-idx1-ubyte" + (".gz" if labels.suffix == ".gz" else "")))
    return d


# ----------------------------------------------------------------------------- real files
@needs_fashion
def test_fashion_mnist_shapes_label_counts_and_values():
    X, y = load_fashion_mnist("train")
    assert X.shape == (60000, 28, 28) and X.dtype == np.float32
    assert y.shape == (60000,) and y.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 6000))
    assert X.min() == 0.0 and X.max() == 1.0
    assert abs(float(X.mean()) - 0.2860) < 1e-3  # the published Fashion-MNIST mean
    Xt, yt = load_fashion_mnist("test")
    assert Xt.shape == (10000, 28, 28)
    np.testing.assert_array_equal(np.bincount(yt), np.full(10, 1000))


@needs_fashion
def test_raw_idx_reader_on_real_files():
    images = load_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz")
    labels = load_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
    assert images.dtype == np.uint8 and images.shape == (10000, 28, 28)
    assert labels.dtype == np.uint8 and labels.shape == (10000,)
    assert images.flags.writeable
    assert labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]  # first test labels


@needs_fashion
def test_system_location_found_without_arguments():
    images, labels = find_dataset_files("fashion-mnist", "test")
    assert images.parent == FASHION_DIR and labels.parent == FASHION_DIR


@needs_fashion
@pytest.mark.parametrize("layout", ["", "fashion-mnist", "FashionMNIST/raw"])
@pytest.mark.parametrize("compressed", [True, False])
def test_data_dir_argument_and_environment_variable(tmp_path, fashion_copy, monkeypatch,
                                                    layout, compressed):
    root = tmp_path / "root"
    target = root / layout if layout else root
    target.mkdir(parents=True)
    for name in FASHION_FILES[2:]:
        src = fashion_copy / (f"{name}.gz" if compressed else name)
        shutil.copy(src, target / src.name)
    want_X, want_y = load_fashion_mnist("test")
    X, y = load_fashion_mnist("test", data_dir=root)
    np.testing.assert_array_equal(X, want_X)
    np.testing.assert_array_equal(y, want_y)
    monkeypatch.setenv(DATA_DIR_ENV, str(root))
    assert find_dataset_files("fashion-mnist", "test")[0].parent == target


# ----------------------------------------------------------------------------- broken files
@needs_fashion
def test_truncated_gzip_raises_naming_the_file(fashion_copy):
    path = fashion_copy / "t10k-images-idx3-ubyte.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte\.gz: truncated gzip"):
        load_idx(path)


@needs_fashion
def test_truncated_raw_file_reports_declared_and_found_sizes(fashion_copy):
    path = fashion_copy / "t10k-images-idx3-ubyte"
    data = path.read_bytes()
    path.write_bytes(data[:-1000])
    with pytest.raises(DatasetError) as info:
        load_idx(path)
    msg = str(info.value)
    assert str(path) in msg and "truncated" in msg and "(10000, 28, 28)" in msg
    assert f"holds {len(data) - 16 - 1000} bytes" in msg


@needs_fashion
def test_corrupted_gzip_payload_is_detected(fashion_copy):
    path = fashion_copy / "t10k-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte\.gz: corrupt gzip"):
        load_idx(path)


@needs_fashion
def test_corrupted_magic_number(fashion_copy):
    path = fashion_copy / "t10k-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[0:4] = b"\x89PNG"
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte: bad magic number 0x89504E47"):
        load_idx(path)


@needs_fashion
def test_trailing_bytes_are_refused(fashion_copy):
    path = fashion_copy / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\x00" * 7)
    with pytest.raises(DatasetError, match="7 unexpected trailing bytes"):
        load_idx(path)


@needs_fashion
def test_corrupted_pixel_in_raw_copy_fails_the_content_checksum(tmp_path, fashion_copy):
    path = fashion_copy / "t10k-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[5000] ^= 0x55  # structurally valid, silently wrong
    path.write_bytes(bytes(data))
    d = _fashion_dir_with(tmp_path, path, fashion_copy / "t10k-labels-idx1-ubyte")
    with pytest.raises(DatasetError, match="SHA-256"):
        load_fashion_mnist("test", data_dir=d)


@needs_fashion
def test_mismatched_image_and_label_files(tmp_path, fashion_copy):
    with pytest.raises(DatasetError, match="do not belong together"):
        load_idx_pair(fashion_copy / "t10k-images-idx3-ubyte.gz",
                      FASHION_DIR / "train-labels-idx1-ubyte.gz")
    # a label file where the image file belongs: the rank is wrong
    d = _fashion_dir_with(tmp_path, fashion_copy / "t10k-labels-idx1-ubyte.gz",
                          fashion_copy / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DatasetError, match="expected a 3-dimensional IDX array"):
        load_fashion_mnist("test", data_dir=d)


def test_missing_dataset_lists_places_and_how_to_get_it(tmp_path, monkeypatch):
    if Path("/usr/share/datasets/mnist").exists():
        pytest.skip("an MNIST package is installed")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # hide a real download
    with pytest.raises(DatasetNotFoundError) as info:
        find_dataset_files("mnist", "train")
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path / "env") in msg and "/usr/share/datasets/mnist" in msg
    assert "fasttn data download mnist" in msg and "FASTTN_DATA_DIR" in msg
    assert str(tmp_path / "cache" / "fasttn" / "mnist") in msg
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test", data_dir=tmp_path / "nowhere")
    # an explicit directory is the only place searched
    assert dataset_locations("fashion-mnist", tmp_path)[0] == tmp_path
    assert FASHION_DIR not in dataset_locations("fashion-mnist", tmp_path)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_idx(tmp_path / "absent-idx3-ubyte")


def test_too_short_file(tmp_path):
    path = tmp_path / "tiny"
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DatasetError, match="too short"):
        load_idx(path)


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32,
                                   np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_save_and_load_idx_round_trip(tmp_path, dtype, suffix):
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        a = rng.integers(info.min, info.max, size=(3, 5, 4), endpoint=True).astype(dtype)
    else:
        a = rng.standard_normal((3, 5, 4)).astype(dtype)
    path = save_idx(tmp_path / f"a-idx3{suffix}", a)
    b = load_idx(path, ndim=3, shape=(3, None, 4))
    assert b.dtype == a.dtype and b.dtype.isnative
    np.testing.assert_array_equal(a, b)
    assert not list(tmp_path.glob(".*tmp"))
    with pytest.raises(DatasetError, match=r"expected IDX shape \(2, any, 4\)"):
        load_idx(path, shape=(2, None, 4))


def test_gzipped_idx_bytes_are_reproducible(tmp_path):
    a = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    p1, p2 = save_idx(tmp_path / "x.gz", a), save_idx(tmp_path / "y.gz", a)
    assert hashlib.sha256(p1.read_bytes()).digest() == hashlib.sha256(p2.read_bytes()).digest()


# ----------------------------------------------------------------------------- transforms
def test_bilinear_resize_matches_pil():
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(3)
    for (h, w), (oh, ow) in [((28, 28), (16, 16)), ((8, 8), (20, 20)), ((30, 20), (13, 41))]:
        x = rng.random((h, w)).astype(np.float32)
        ref = np.asarray(Image.fromarray(x, mode="F").resize((ow, oh), Image.BILINEAR))
        np.testing.assert_allclose(resize_images(x, (oh, ow)), ref, atol=1e-6)


def test_area_resize_is_block_mean_for_integer_factors():
    rng = np.random.default_rng(4)
    X = rng.random((5, 28, 28)).astype(np.float32)
    Y = resize_images(X, 14, method="area")
    want = X.reshape(5, 14, 2, 14, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(Y, want, rtol=1e-6)
    const = np.full((2, 28, 28), 0.3, np.float32)
    for method in ("area", "bilinear"):
        np.testing.assert_allclose(resize_images(const, (11, 17), method=method), 0.3,
                                   rtol=1e-6)


def test_resize_argument_checks():
    X = np.zeros((2, 8, 8), np.float32)
    with pytest.raises(ValueError, match="size"):
        resize_images(X, 0)
    with pytest.raises(ValueError, match="method"):
        resize_images(X, 4, method="cubic")
    with pytest.raises(TypeError, match="X"):
        resize_images(X.astype(np.int64), 4)
    with pytest.raises(ValueError, match="X"):
        resize_images(np.zeros(8, np.float32), 4)


def test_normalize_modes():
    X = np.array([[[0, 51, 255]]], dtype=np.uint8)
    np.testing.assert_allclose(normalize_images(X, "unit"), [[[0, 0.2, 1]]], rtol=1e-6)
    np.testing.assert_allclose(normalize_images(X, "symmetric"), [[[-1, -0.6, 1]]], rtol=1e-6)
    np.testing.assert_array_equal(normalize_images(X, "none"), [[[0, 51, 255]]])
    with pytest.raises(ValueError, match="normalize"):
        normalize_images(X, "zscore")


@needs_fashion
def test_fashion_resized_to_16_as_the_qcnn_does():
    X, _ = load_fashion_mnist("test", size=16)
    raw = load_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz")
    assert X.shape == (10000, 16, 16) and X.dtype == np.float32
    np.testing.assert_allclose(X[:50], resize_images(raw[:50], 16) / 255, atol=1e-6)
    assert 0 <= X.min() and X.max() <= 1 and X.mean() > 0.2


def test_sklearn_digits():
    X, y = load_digits()
    assert X.shape == (1797, 8, 8) and X.dtype == np.float32 and y.dtype == np.int64
    assert X.min() == 0 and X.max() == 1
    np.testing.assert_array_equal(np.unique(y), np.arange(10))
    X28, _ = load_digits(size=28)
    assert X28.shape == (1797, 28, 28) and 0 <= X28.min() and X28.max() <= 1


# ----------------------------------------------------------------------------- download
def test_download_keeps_only_files_with_the_right_checksum(tmp_path):
    payload = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x03abc")
    src = tmp_path / "mirror" / "f.gz"
    src.parent.mkdir()
    src.write_bytes(payload)
    out = tmp_path / "out"
    out.mkdir()
    md5 = hashlib.md5(payload).hexdigest()
    with pytest.raises(DatasetError, match="checksum mismatch"):
        _fetch(src.as_uri(), out / "f.gz", "0" * 32, timeout=5)
    assert list(out.iterdir()) == []
    _fetch(src.as_uri(), out / "f.gz", md5, timeout=5)
    assert (out / "f.gz").read_bytes() == payload
    assert load_idx(out / "f.gz").tobytes() == b"abc"


class _FixedShifts:
    """A stand-in generator whose uniform draws are given shifts (first rows, then columns)."""

    def __init__(self, rows, cols):
        self.draws = [np.asarray(rows, float), np.asarray(cols, float)]

    def uniform(self, low, high, n):
        return self.draws.pop(0)


def _shift_reference(img, dy, dx):
    """Bilinear translation written pixel by pixel: out(i, j) = img(i - dy, j - dx), 0 outside."""
    h, w = img.shape

    def at(i, j):
        return img[i, j] if 0 <= i < h and 0 <= j < w else 0.0

    out = np.zeros_like(img, dtype=np.float64)
    for i in range(h):
        for j in range(w):
            y, x = i - dy, j - dx
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            fy, fx = y - y0, x - x0
            out[i, j] = ((1 - fy) * (1 - fx) * at(y0, x0) + (1 - fy) * fx * at(y0, x0 + 1)
                         + fy * (1 - fx) * at(y0 + 1, x0) + fy * fx * at(y0 + 1, x0 + 1))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_shift_matches_pixelwise_bilinear_translation(rng, dtype):
    X = rng.random((4, 7, 9)).astype(dtype)
    dy = rng.uniform(-2.5, 2.5, 4)
    dx = rng.uniform(-2.5, 2.5, 4)
    Y = random_shift(X, _FixedShifts(dy, dx), max_shift=2.5)
    assert Y.dtype == dtype and Y.shape == X.shape
    tol = 1e-12 if dtype == np.float64 else 1e-6
    for k in range(4):
        np.testing.assert_allclose(Y[k], _shift_reference(X[k].astype(np.float64), dy[k], dx[k]),
                                   atol=tol)
    # real draws: values stay in range, zero shift is the identity
    Z = random_shift(X, np.random.default_rng(0), max_shift=1.0)
    assert Z.min() >= 0 and Z.max() <= X.max() + tol
    np.testing.assert_array_equal(random_shift(X, np.random.default_rng(0), 0.0), X)
    with pytest.raises(ValueError, match="max_shift"):
        random_shift(X, np.random.default_rng(0), -1.0)
    with pytest.raises(ValueError, match="X: expected a float array"):
        random_shift(X[0], np.random.default_rng(0))
