"""The command line's first contact: --version, help texts, one-line errors, the compile
notice and what the per-epoch scores are called."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from numba.core import event

import fasttn
from fasttn import cli
from fasttn._numba import COMPILE_NOTICE
from fasttn.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"fasttn {fasttn.__version__}"


def test_mera_help_states_the_sides_the_model_takes(capsys):
    with pytest.raises(SystemExit):
        main(["train", "mera", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "SIZE x SIZE, a power of 2: levels of 4x4 blocks, then a 2x2 end block when SIZE " \
           "is not a power of 4" in text


@pytest.mark.parametrize("message, line", [
    ("X: expected image height and width that are powers of two, got 12x12; pass pad=True "
     "to zero-pad to 16x16",
     "X: expected image height and width that are powers of two, got 12x12; pass --pad to "
     "zero-pad to 16x16"),
    ("X: got 12x12; pass pad=True (command line: --pad) to zero-pad", "X: got 12x12; pass "
     "--pad to zero-pad"),
    ("X: got 12x12; pass pad=True (CLI: --pad) to zero-pad", "X: got 12x12; pass --pad to "
     "zero-pad"),
    ("a message\nover two lines", "a message over two lines"),
])
def test_errors_read_as_one_line_in_the_command_line_terms(monkeypatch, capsys, message,
                                                           line):
    def fail(args):
        raise ValueError(message)

    monkeypatch.setattr(cli, "_train_qcnn", fail)
    assert main(["train", "qcnn"]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"fasttn: error: {line}\n"


def test_loss_blowing_up_is_a_one_line_error(monkeypatch, capsys):
    def fail(args):
        raise FloatingPointError("loss became nan in epoch 2; lower the learning rate")

    monkeypatch.setattr(cli, "_train_qcnn", fail)
    assert main(["train", "qcnn"]) == 2
    assert capsys.readouterr().err == ("fasttn: error: loss became nan in epoch 2; lower the "
                                       "learning rate\n")


def _compiling_command(args):
    with event.trigger_event("numba:compile"):
        pass
    with event.trigger_event("numba:compile"):
        pass
    return 0


def test_the_command_line_says_when_kernels_compile(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_train_qcnn", _compiling_command)
    assert main(["train", "qcnn"]) == 0
    assert capsys.readouterr().err == COMPILE_NOTICE + "\n"  # once, however many kernels
    assert main(["train", "qcnn", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def _hide_matplotlib(monkeypatch):
    """Make every ``import matplotlib...`` fail, as in an environment without it."""
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_data_show_without_matplotlib_is_one_line(monkeypatch, capsys, tmp_path):
    _hide_matplotlib(monkeypatch)
    rc = main(["data", "show", "--size", "64", "--count", "2", "--out",
               str(tmp_path / "grid.png")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err == ("fasttn: error: fasttn data show needs matplotlib: pip install "
                   "'fasttn[plot]'\n")
    assert not (tmp_path / "grid.png").exists()


def test_tsne_without_matplotlib_fails_before_any_work(monkeypatch, capsys, tmp_path):
    _hide_matplotlib(monkeypatch)
    assert main(["tsne", str(tmp_path / "absent.npz")]) == 2
    assert "fasttn tsne needs matplotlib: pip install 'fasttn[plot]'" in capsys.readouterr().err


def test_tsne_of_a_tnn_checkpoint_says_what_tsne_takes(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from fasttn.models.tnn_layers import Dense, TNLayer

    X = np.random.default_rng(0).uniform(0, 1, (20, 4))
    y = np.arange(20) % 2
    model = fasttn.TNN([TNLayer(4, n_sites=2, bond_dim=2), Dense(2, activation="softmax")],
                       solver="adam", epochs=1, random_state=0).fit(X, y)
    ckpt = tmp_path / "tnn.npz"
    model.save(ckpt)
    assert main(["tsne", str(ckpt), "--out", str(tmp_path / "t.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fasttn: error: ") and err.count("\n") == 1
    assert "TNN checkpoint" in err and "image models (QCNN, MERA2D, TTN2D)" in err
    assert not (tmp_path / "t.png").exists()


def test_qcnn_epoch_scores_are_named_after_the_data_they_come_from(tmp_path, capsys):
    common = ["train", "qcnn", "--n-train", "60", "--n-test", "20", "--epochs", "2",
              "--size", "8", "--d", "2"]
    hist = tmp_path / "h.json"
    assert main(common + ["--history", str(hist)]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("epoch")]
    assert len(lines) == 2 and all("test_accuracy" in l for l in lines)
    record = json.loads(hist.read_text())
    assert all("test_accuracy" in rec for rec in record["history"])
    assert all(0 <= rec["test_accuracy"] <= 1 for rec in record["history"])

    assert main(common + ["--val-split", "0.25", "--history", str(hist)]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("epoch")]
    assert len(lines) == 2 and all("val_accuracy" in l and "test_accuracy" not in l
                                   for l in lines)
    assert all("val_accuracy" in rec and "test_accuracy" not in rec
               for rec in json.loads(hist.read_text())["history"])


def test_mera_validation_split(capsys):
    assert main(["train", "mera", "--n-train", "60", "--n-test", "20", "--epochs", "1",
                 "--size", "4", "--chi", "2", "--val-split", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "validation: 15 images held out" in out
    epoch = [l for l in out.splitlines() if l.startswith("epoch")]
    assert len(epoch) == 1 and "val_accuracy" in epoch[0] and "test_accuracy" not in epoch[0]
    assert main(["train", "mera", "--epochs", "1", "--val-split", "1", "--quiet"]) == 2


@pytest.mark.parametrize("option", ["--out", "--history"])
def test_an_unwritable_output_path_fails_before_training(tmp_path, capsys, monkeypatch,
                                                         option):
    """The output path is checked first: a missing directory must not cost a training."""
    import fasttn.models.qcnn as qcnn

    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking the output path")

    monkeypatch.setattr(qcnn.QCNN, "fit", no_training)
    missing = tmp_path / "nonexistent" / "m.npz"
    rc = main(["train", "qcnn", "--epochs", "1", "--quiet", option, str(missing)])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{option}: the directory {missing.parent} does not exist" in err
