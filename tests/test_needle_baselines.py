"""bench/needle_accuracy.py and its PyTorch baselines (bench/baselines/torch_cnn.py): the
script's table and JSON on a tiny case, the CNN's translation invariance, and the
validation split (the same canvases as MERA2D's early-stopping split)."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    """The script as a module (it puts bench/ on sys.path for ``baselines``)."""
    spec = importlib.util.spec_from_file_location("needle_accuracy",
                                                  ROOT / "bench" / "needle_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    path = list(sys.path)
    spec.loader.exec_module(module)
    yield module
    sys.path[:] = path


def test_script_runs_every_model_and_writes_table_and_json(script, tmp_path, capsys):
    out = tmp_path / "needle.json"
    threads = torch.get_num_threads()
    try:
        rc = script.main(["--sizes", "64", "--n-train", "40", "--n-test", "20", "--epochs", "1",
                          "--mera-epochs", "1", "--threads", "1", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    text = capsys.readouterr().out
    assert "threads: torch 1" in text and "load average at start" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| model | size | source/target | n_train | test accuracy")
    for row, name in zip(rows[1:], ("mera2d", "cnn", "cnn-tn")):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[:4] == [name, "64x64", "fashion/3", "40"]
        assert 0.0 <= float(cells[4]) <= 1.0
        assert cells[5] == "1 / 1"
    assert len(rows) == 4
    report = json.loads(out.read_text())
    assert set(report) == {"protocol", "args", "machine", "results"}
    assert report["machine"]["torch_threads"] == 1
    assert [r["model"] for r in report["results"]] == ["mera2d", "cnn", "cnn-tn"]
    for r in report["results"]:
        assert {"size", "source", "target", "n_train", "n_test", "test_accuracy", "best_epoch",
                "epochs_run", "val_accuracy", "train_seconds", "n_params"} <= set(r)
        assert r["n_params"] > 0 and r["train_seconds"] > 0


def test_global_max_cnn_is_invariant_to_moving_an_isolated_blob_by_multiples_of_4(script):
    from baselines.torch_cnn import GlobalMaxCNN

    torch.manual_seed(0)
    model = GlobalMaxCNN(2).eval()
    canvases = torch.zeros(3, 64, 64)
    canvases[0, 20:26, 24:29] = 1.0  # a 6x5 blob well inside the borders
    canvases[1, 24:30, 36:41] = 1.0  # moved by (4, 12) pixels
    canvases[2, 32:38, 20:25] = 1.0  # moved by (12, -4)
    with torch.no_grad():
        logits = model(canvases)
    np.testing.assert_allclose(logits[1].numpy(), logits[0].numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(logits[2].numpy(), logits[0].numpy(), rtol=0, atol=1e-5)
    with torch.no_grad():  # a blank canvas differs: the blob is what the scores see
        blank = model(torch.zeros(1, 64, 64))[0]
    assert np.abs(blank.numpy() - logits[0].numpy()).max() > 1e-4


def test_validation_split_holds_out_mera2ds_validation_canvases(script):
    import fasttn
    from baselines.torch_cnn import validation_split

    rng = np.random.default_rng(1)
    X = rng.random((200, 4, 4), dtype=np.float32)
    y = (rng.random(200) < 0.3).astype(np.int64)
    X_fit, y_fit, X_val, y_val = validation_split(X, y, 0.1, seed=7)
    assert len(y_val) == 20 and len(y_fit) == 180
    assert set(map(bytes, X_fit)).isdisjoint(map(bytes, X_val))
    assert abs(y_val.mean() - y.mean()) <= 0.05  # stratified
    # a fit of that seed holds out the same canvases: early stopping on them reproduces
    # the validation score of its best epoch
    mera = fasttn.MERA2D(chi=2, epochs=2, random_state=7).fit(X, y)
    assert mera.best_validation_score_ == mera.score(X_val, y_val)
