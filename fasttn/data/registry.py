"""What fasttn knows about each IDX dataset: file names, sizes, where to look, how to get it."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DATA_DIR_ENV = "FASTTN_DATA_DIR"

IMAGE_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
LABEL_FILES = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}


@dataclass(frozen=True)
class IdxDataset:
    """One MNIST-layout dataset: four IDX files, 28x28 uint8 images, labels 0..9."""

    name: str
    counts: dict[str, int]                       # split -> number of images
    class_names: tuple[str, ...]
    system_dirs: tuple[str, ...]                 # where distribution packages install it
    subdirs: tuple[str, ...]                     # layouts tried under --data-dir / $FASTTN_DATA_DIR
    how_to_get: str
    mirrors: tuple[str, ...]                     # download base URLs, tried in order
    md5: dict[str, str]                          # published MD5 of each .gz download
    # SHA-256 of the decompressed IDX bytes, so that raw and re-gzipped copies can be checked
    content_sha256: dict[str, str] = field(default_factory=dict)
    image_shape: tuple[int, int] = (28, 28)


DATASETS: dict[str, IdxDataset] = {
    "mnist": IdxDataset(
        name="mnist",
        counts={"train": 60000, "test": 10000},
        class_names=tuple(str(d) for d in range(10)),
        # Debian ships no MNIST package (checked: `apt-cache policy dataset-mnist` finds none);
        # the path follows dataset-fashion-mnist's layout in case one appears.
        system_dirs=("/usr/share/datasets/mnist",),
        subdirs=("", "mnist", "MNIST/raw"),
        how_to_get="run `fasttn data download mnist` (downloads with MD5 checks), or put the four "
                   "IDX files in a directory and pass it with --data-dir or $FASTTN_DATA_DIR",
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        md5={"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
             "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
             "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
             "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
    ),
    "fashion-mnist": IdxDataset(
        name="fashion-mnist",
        counts={"train": 60000, "test": 10000},
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        subdirs=("", "fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
        how_to_get="install the Debian/Ubuntu package (`apt-get install dataset-fashion-mnist`), "
                   "or run `fasttn data download fashion-mnist`, or put the four IDX files in a "
                   "directory and pass it with --data-dir or $FASTTN_DATA_DIR",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                 "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/"
                 "data/fashion/"),
        md5={"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
             "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
             "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
             "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
        # measured on the files of Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1
        content_sha256={
            "train-images-idx3-ubyte":
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte":
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte":
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte":
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"},
    ),
}

_ALIASES = {"fashion": "fashion-mnist", "fashion_mnist": "fashion-mnist",
            "fashionmnist": "fashion-mnist"}


def dataset_info(name: str) -> IdxDataset:
    """The registry entry for ``name`` (``"mnist"``, ``"fashion-mnist"`` or an alias)."""
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in DATASETS:
        raise ValueError(f"name: expected one of {sorted(DATASETS)}, got {name!r}")
    return DATASETS[key]


def default_download_dir(name: str) -> Path:
    """Where `fasttn data download` puts a dataset: ``$XDG_CACHE_HOME/fasttn/<name>``."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "fasttn" / dataset_info(name).name


def dataset_locations(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for ``name``, in order.

    An explicit ``data_dir`` is the only place searched (as given and with the usual sub-folder
    layouts, e.g. ``<dir>/fashion-mnist`` or torchvision's ``<dir>/FashionMNIST/raw``), so a
    wrong path is reported rather than silently replaced by another copy. Without it:
    ``$FASTTN_DATA_DIR`` (same layouts), the system directories of distribution packages
    (``/usr/share/datasets/fashion-mnist`` from Debian's ``dataset-fashion-mnist``), then the
    download cache of `fasttn data download`.
    """
    info = dataset_info(name)
    env = os.environ.get(DATA_DIR_ENV)
    roots = [Path(data_dir)] if data_dir else ([Path(env)] if env else [])
    dirs = [root / sub if sub else root for root in roots for sub in info.subdirs]
    if not data_dir:
        dirs += [Path(p) for p in info.system_dirs]
        dirs.append(default_download_dir(name))
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique
