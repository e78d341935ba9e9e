"""``fasttn train mps``: trains on the digits with Adam or DMRG sweeps, saves the model, the
history and the bond plot; a bad solver is a one-line error."""
import json

import pytest

import fasttn
from fasttn.cli import main


@pytest.mark.parametrize("solver", ["adam", "dmrg"])
def test_train_mps_on_digits(tmp_path, capsys, solver):
    out, hist, png = tmp_path / "m.npz", tmp_path / "h.json", tmp_path / "b.png"
    args = ["train", "mps", "--dataset", "digits", "--n-train", "300", "--n-test", "100",
            "--bond", "4", "--epochs", "2", "--solver", solver, "--quiet", "--out", str(out),
            "--history", str(hist), "--bond-plot", str(png)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "MPS on digits" in text and "test accuracy" in text
    m = fasttn.load(out)
    assert isinstance(m, fasttn.MPS) and m.solver == solver and m.bond_dim == 4
    assert len(json.loads(hist.read_text())) == len(m.history_) >= 1
    if solver == "dmrg":
        assert "bonds after the last sweep" in text
        assert png.read_bytes()[:4] == b"\x89PNG"
        assert m.bond_history_.shape[1] == 63
    else:
        assert not png.exists()


def test_bad_solver_is_an_error(capsys):
    with pytest.raises(SystemExit):
        main(["train", "mps", "--solver", "svd"])
    assert "invalid choice" in capsys.readouterr().err
