"""bench/mps_throughput.py: one tiny run writes its table and JSON, the models' outputs are
finite, and a missing tensorkrowch is skipped with a note, not an error."""
import json
import os
import sys

import pytest

pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))

import mps_throughput  # noqa: E402


def test_tiny_run_writes_rows(tmp_path, capsys):
    out = tmp_path / "mps.json"
    models = ["fasttn", "fasttn-torch", "torch"]
    assert mps_throughput.main(["--sizes", "4", "--bonds", "3", "--steps", "1", "--batch", "8",
                                "--models", *models, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == models
    assert all(r["finite"] and r["train_images_per_s"] > 0 for r in rows)
    assert "train img/s" in capsys.readouterr().out


def test_missing_tensorkrowch_is_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorkrowch", None)  # import fails
    out = tmp_path / "mps.json"
    assert mps_throughput.main(["--sizes", "4", "--bonds", "2", "--steps", "1", "--batch", "4",
                                "--models", "fasttn", "tensorkrowch", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["settings"]["skipped"] == ["tensorkrowch"]
    assert [r["model"] for r in data["rows"]] == ["fasttn"]
    assert "skipping tensorkrowch" in capsys.readouterr().err
