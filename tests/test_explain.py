"""Evidence maps of scanning models: region boxes, localisation rate, overlays and
`fasttn explain`."""
from __future__ import annotations

import json
import re

import numpy as np
from scipy.special import logsumexp
import pytest

import fasttn
from fasttn.analysis import (localisation_rate, positive_evidence, region_boxes,
                             save_evidence_overlays)
from fasttn.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _scanning_model(side: int) -> fasttn.MERA2D:
    """Window 16 in 2x2 patches: one 4x4 level, then a 2x2 end block scanning a 4x4 grid of
    8-pixel sites on the 32x32 network image: 3x3 regions of 16 pixels, every 8."""
    X = np.random.default_rng(0).uniform(0, 1, (8, side, side)).astype(np.float32)
    return fasttn.MERA2D(window=16, patch=2, chi=2, epochs=1, random_state=0).fit(
        X, np.arange(8) % 2)


@pytest.mark.parametrize("side, offset", [(32, 0), (28, 2)])
def test_region_boxes_by_hand_and_as_the_model_reads_them(side, offset, rng):
    model = _scanning_model(side)
    assert (model.window_, model.window_stride_, model.scan_) == (16, 8, 3)
    assert model.network_shape_ == (32, 32)
    boxes = region_boxes(model)
    for i in range(3):
        for j in range(3):
            assert boxes[i, j].tolist() == [8 * i - offset, 8 * j - offset, 16, 16]
    assert np.array_equal(region_boxes(model, (side, side)), boxes)
    with pytest.raises(ValueError, match="input_shape"):
        region_boxes(model, (side + 4, side + 4))
    # the boxes are what the network reads: pixels outside region (1, 2) leave its scores
    # alone, and changing pixels inside it changes them
    X = rng.uniform(0, 1, (1, side, side)).astype(np.float32)
    r, c, h, w = boxes[1, 2]
    inside = np.zeros((side, side), bool)
    inside[max(r, 0):r + h, max(c, 0):c + w] = True
    outside_changed = np.where(inside, X, rng.uniform(0, 1, X.shape).astype(np.float32))
    inside_changed = np.where(inside, rng.uniform(0, 1, X.shape).astype(np.float32), X)
    ev, ev_out, ev_in = (model.evidence_map(a) for a in (X, outside_changed, inside_changed))
    np.testing.assert_allclose(ev_out[0, 1, 2], ev[0, 1, 2], rtol=1e-5, atol=1e-6)
    assert not np.allclose(ev_in[0, 1, 2], ev[0, 1, 2], rtol=1e-5, atol=1e-6)
    assert not np.allclose(ev_out[0, 0, 0], ev[0, 0, 0], rtol=1e-5, atol=1e-6)
    pos = positive_evidence(model, X)
    np.testing.assert_array_equal(pos, ev[..., 1] - ev[..., 0])
    # the predictions localisation_rate derives from the map are the model's
    Xs = rng.uniform(0, 1, (6, side, side)).astype(np.float32)
    res = localisation_rate(model, Xs, model.predict(Xs), np.zeros((6, 4), int) + 4)
    np.testing.assert_array_equal(res["predicted"], model.predict(Xs))


class _Stub:
    """A fitted-model stand-in with a fixed evidence map: a 2x2 grid of 16-pixel regions
    every 8 pixels on unpadded 24x24 images."""

    scan_, window_, window_stride_ = 2, 16, 8
    network_shape_ = input_shape_ = (24, 24)

    def __init__(self, evidence, classes=(0, 1)):
        self.evidence, self.classes_ = np.asarray(evidence, float), np.asarray(classes)

    def evidence_map(self, X, batch_size=64):
        return self.evidence[:len(X)]

    def predict(self, X, batch_size=64):
        """The class of the highest log-mean-exp of the map's scores (a scanning model's
        prediction without shifted copies)."""
        scores = logsumexp(self.evidence[:len(X)], axis=(1, 2))
        return self.classes_[scores.argmax(axis=1)]


def _two_class(positive):
    """(n, 2, 2, 2) scores whose positive evidence is ``positive (n, 2, 2)``."""
    positive = np.asarray(positive, float)
    return np.stack([np.zeros_like(positive), positive], axis=-1)


def test_localisation_rate_on_a_known_case():
    # best regions: image 0 -> (1, 1) rows/cols 8..23; image 1 -> (0, 0) rows/cols 0..15;
    # image 2 -> (0, 1) rows 0..15, cols 8..23; image 3: a negative; image 4: a missed
    # positive (its pooled evidence log(mean exp) is below 0)
    ev = np.zeros((5, 2, 2))
    ev[0, 1, 1] = ev[1, 0, 0] = ev[2, 0, 1] = ev[3, 1, 0] = 1.0
    ev[4] = -1.0
    ev[4, 0, 0] = 0.0
    boxes = np.array([[10, 10, 4, 4],     # inside (1, 1): found
                      [17, 17, 6, 6],     # outside (0, 0): missed
                      [0, 0, 5, 5],       # cols 0..4 vs 8..23: missed
                      [-1, -1, -1, -1],   # negative: not read
                      [0, 0, 4, 4]])      # misclassified: not counted
    y = np.array([1, 1, 1, 0, 1])
    stub = _Stub(_two_class(ev))
    res = localisation_rate(stub, np.zeros((5, 24, 24)), y, boxes)
    assert res["predicted"].tolist() == [1, 1, 1, 1, 0]
    assert res["n_correct_positive"] == 3 and res["n_localised"] == 1
    assert res["rate"] == pytest.approx(1 / 3)
    assert res["best_region"].tolist() == [[1, 1], [0, 0], [0, 1], [1, 0], [0, 0]]
    assert res["localised"].tolist() == [True, False, False, False, False]
    # regions touching each box: image 0 all four, image 1 only (1, 1), image 2 only (0, 0)
    assert res["chance"] == pytest.approx((4 + 1 + 1) / 4 / 3)


@pytest.mark.parametrize("row, localised", [(15, True), (16, False)])
def test_overlap_is_exact_at_the_region_edge(row, localised):
    # best region (0, 0) holds rows 0..15: a box starting on row 15 shares one row with it,
    # one starting on row 16 is adjacent; the same for columns
    ev = np.zeros((2, 2, 2))
    ev[:, 0, 0] = 1.0
    stub = _Stub(_two_class(ev))
    boxes = np.array([[row, 0, 4, 4], [0, row, 4, 4]])
    res = localisation_rate(stub, np.zeros((2, 24, 24)), np.array([1, 1]), boxes)
    assert res["localised"].tolist() == [localised, localised]
    # and a box ending just before region (1, 1) (rows 8..23) or on its first row
    ev[:, 0, 0], ev[:, 1, 1] = 0.0, 1.0
    boxes = np.array([[4, 8, 4, 4], [5, 8, 4, 4]])   # rows 4..7 (adjacent), 5..8 (touch)
    res = localisation_rate(_Stub(_two_class(ev)), np.zeros((2, 24, 24)),
                            np.array([1, 1]), boxes)
    assert res["localised"].tolist() == [False, True]


def test_localisation_rate_argument_errors():
    stub = _Stub(_two_class(np.ones((2, 2, 2))))  # both images detected
    X, y, boxes = np.zeros((2, 24, 24)), np.array([1, 1]), np.zeros((2, 4), int) + 4
    with pytest.raises(ValueError, match=r"^y: expected 2 labels"):
        localisation_rate(stub, X, y[:1], boxes)
    with pytest.raises(ValueError, match=r"^boxes: expected integer boxes of shape \(2, 4\)"):
        localisation_rate(stub, X, y, boxes[:, :3])
    with pytest.raises(ValueError, match=r"^boxes: expected integer"):
        localisation_rate(stub, X, y, boxes.astype(float))
    with pytest.raises(ValueError, match=r"^boxes: positive image 1 has no box"):
        localisation_rate(stub, X, y, np.array([[0, 0, 4, 4], [-1, -1, -1, -1]]))
    three = _Stub(np.zeros((2, 2, 2, 3)), classes=(0, 1, 2))
    with pytest.raises(ValueError, match=r"^model: .*two-class detector, got 3 classes"):
        localisation_rate(three, X, y, boxes)


def test_positive_evidence_of_one_class_among_several():
    scores = np.random.default_rng(0).standard_normal((2, 2, 2, 3))
    stub = _Stub(scores, classes=(0, 1, 2))
    got = positive_evidence(stub, np.zeros((2, 24, 24)), cls=2)
    others = np.log(np.exp(scores[..., 0]) + np.exp(scores[..., 1]))
    np.testing.assert_allclose(got, scores[..., 2] - others, rtol=1e-12)
    with pytest.raises(ValueError, match=r"^cls: expected a class index in \[0, 3\)"):
        positive_evidence(stub, np.zeros((2, 24, 24)), cls=3)


def test_evidence_overlays_write_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    ev = np.random.default_rng(0).standard_normal((3, 2, 2))
    boxes = np.array([[2, 2, 6, 6], [-1, -1, -1, -1], [10, 12, 8, 8]])
    path = save_evidence_overlays(tmp_path / "ev.png", np.zeros((3, 24, 24)), ev, boxes,
                                  region_boxes(_Stub(ev)), titles=["a", "b", "c"],
                                  ncols=2)
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match=r"^region_boxes: expected shape \(2, 2, 4\)"):
        save_evidence_overlays(tmp_path / "x.png", np.zeros((3, 24, 24)), ev, boxes,
                               np.zeros((3, 3, 4), int))
    with pytest.raises(ValueError, match=r"^titles: expected 3"):
        save_evidence_overlays(tmp_path / "x.png", np.zeros((3, 24, 24)), ev, boxes,
                               region_boxes(_Stub(ev)), titles=["a"])
    assert not (tmp_path / "x.png").exists()


def test_explain_command_end_to_end(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from fasttn.data import needle_mnist

    X, y = needle_mnist(size=64, count=16, split="train", seed=0).arrays()
    model = fasttn.MERA2D(chi=2, epochs=1, random_state=0).fit(X, y)
    assert model.scan_ > 1
    ckpt, png, out = tmp_path / "m.npz", tmp_path / "map.png", tmp_path / "rate.json"
    model.save(ckpt)
    assert main(["explain", str(ckpt), "--dataset", "needle", "--size", "64", "--count", "12",
                 "--show", "4", "--out", str(png), "--json", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert re.search(r"^test accuracy \d\.\d{4} on 12 ", stdout, re.M)
    found = re.search(r"^localisation: (\d+) of (\d+) correctly classified positives "
                      r"\((\d\.\d{3}|none to localise)\)$", stdout, re.M)
    assert found, stdout
    assert f"wrote {png}" in stdout
    assert png.read_bytes()[:8] == PNG_MAGIC
    record = json.loads(out.read_text())
    assert record["count"] == 12 and record["n_localised"] == int(found.group(1))
    assert record["n_correct_positive"] == int(found.group(2))

    bad = tmp_path / "bad.png"
    assert main(["explain", str(ckpt), "--size", "128", "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == "fasttn: error: --size: the model reads 64x64 images, got --size 128\n"
    assert not bad.exists()


def test_explain_refuses_a_model_without_evidence_map(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from fasttn.models.tnn_layers import Dense, TNLayer

    X = np.random.default_rng(0).uniform(0, 1, (20, 4))
    model = fasttn.TNN([TNLayer(4, n_sites=2, bond_dim=2), Dense(2, activation="softmax")],
                       solver="adam", epochs=1, random_state=0).fit(X, np.arange(20) % 2)
    ckpt = tmp_path / "tnn.npz"
    model.save(ckpt)
    assert main(["explain", str(ckpt), "--out", str(tmp_path / "e.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fasttn: error: ") and err.count("\n") == 1
    assert "TNN checkpoint" in err and "evidence_map" in err
    assert not (tmp_path / "e.png").exists()
