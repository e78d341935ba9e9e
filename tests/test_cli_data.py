"""`fasttn data ...` commands: needle, show, download (argument handling and outputs)."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from fasttn.cli import main
from fasttn.data import load_needle_dataset, needle_mnist


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_needle_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "n64"
    rc = main(["data", "needle", "--size", "64", "--count", "12", "--out", str(out),
               "--seed", "4", "--target", "5", "--split", "validation", "--no-progress"])
    assert rc == 0
    assert "O2I = 19.1406%" in capsys.readouterr().out
    meta = json.loads((out / "metadata.json").read_text())
    assert (meta["size"], meta["count"], meta["seed"], meta["target"], meta["split"]) == \
        (64, 12, 4, 5, "validation")
    cache = load_needle_dataset(out)
    want = needle_mnist(size=64, count=12, seed=4, target=5, split="validation")
    np.testing.assert_array_equal(cache.images[3], np.rint(want[3][0] * 255).astype(np.uint8))


def test_needle_errors_are_clean(tmp_path, capsys):
    assert main(["data", "needle", "--size", "100", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fasttn: error: size: expected a multiple of the 64-pixel cell")
    out = tmp_path / "d"
    assert main(["data", "needle", "--size", "64", "--count", "2", "--out", str(out),
                 "--no-progress"]) == 0
    assert main(["data", "needle", "--size", "64", "--count", "2", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "needle", "--size", "64", "--count", "4", "--out", str(out),
                 "--overwrite", "--no-progress"]) == 0
    assert len(load_needle_dataset(out)) == 4
    assert not (tmp_path / "x").exists()


def test_show_from_a_cache_directory(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "n128"
    assert main(["data", "needle", "--size", "128", "--count", "8", "--out", str(out),
                 "--no-progress"]) == 0
    png = tmp_path / "grid.png"
    assert main(["data", "show", str(out), "--out", str(png), "--n", "8"]) == 0
    width, height = _png_size(png)
    assert width == 3 * 160 and height > 3 * 160  # a 3x3 grid of 160-px panels, titles


def test_show_generated_on_the_fly_at_1024(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "big.png"
    assert main(["data", "show", "--size", "1024", "--n", "4", "--out", str(png)]) == 0
    assert "wrote 4 samples" in capsys.readouterr().out
    width, height = _png_size(png)
    assert width == 2 * 512 and height > 2 * 512  # 512-px panels, titles above
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_show_argument_errors(tmp_path, capsys):
    assert main(["data", "show", "--out", str(tmp_path / "g.png")]) == 2
    assert "expected a dataset directory or --size" in capsys.readouterr().err
    assert main(["data", "show", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "g.png")]) == 2
    assert "not a NeedleMNIST cache" in capsys.readouterr().err
    assert main(["data", "show", "--size", "64", "--out", str(tmp_path / "g.jpg")]) == 2
    assert "expected a .png file name" in capsys.readouterr().err


def test_data_requires_a_subcommand():
    with pytest.raises(SystemExit) as info:
        main(["data"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["data", "download", "cifar10"])
