"""Layer-wise analysis: every model's ``layer_outputs`` contract, t-SNE embeddings, class
separation numbers and the t-SNE grid figure."""
import importlib.util

import numpy as np
import pytest

from conftest import assert_close
from fasttn import MERA2D, QCNN
from fasttn.analysis import (LayerTSNE, embed_layers, layer_separation, layer_tsne,
                             save_tsne_grid)
from fasttn.models.layer_outputs import layer_names
from fasttn.ops.site_norm import unit_sites, unit_sites_log

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N, N_CLASSES = 30, 3


@pytest.fixture(scope="module")
def data():
    # one draw for the module (the fitted models are shared), reproducible from the seed
    seed = np.random.SeedSequence().entropy % (2**32)
    print(f"module seed={seed}")
    rng = np.random.default_rng(seed)
    X8 = rng.uniform(0.0, 1.0, (N, 8, 8))
    X16 = rng.uniform(0.0, 1.0, (N, 16, 16))
    y = rng.permutation(np.arange(N) % N_CLASSES)
    return X8, X16, y, int(rng.integers(2**31))


@pytest.fixture(scope="module")
def qcnn(data):
    X8, _, y, seed = data
    return QCNN(n_classes=N_CLASSES, d=3, feature_map="cos_sin", beta_init=1.0,
                loss="cross_entropy", epochs=2, batch_size=10, dtype="float64",
                random_state=seed).fit(X8, y)


def unit_or_zero(a, width):
    """Norm of every site of a flattened level: 1, or 0 for a zero site."""
    norms = np.linalg.norm(a.reshape(a.shape[0], -1, width), axis=-1)
    return np.all((np.abs(norms - 1) <= 1e-12) | (norms == 0))


# ----------------------------------------------------------------------- layer_outputs
@pytest.mark.parametrize("pooling,domain", [("1d", "auto"), ("1d", "log"), ("1d", "linear"),
                                            ("2d", "auto")])
def test_qcnn_layer_outputs_contract(data, pooling, domain):
    X8, _, y, seed = data
    m = QCNN(n_classes=N_CLASSES, d=3, feature_map="cos_sin", beta_init=1.0, pooling=pooling,
             domain=domain, epochs=2, batch_size=10, dtype="float64",
             random_state=seed).fit(X8, y)
    out = m.layer_outputs(X8, batch_size=7)
    assert list(out) == layer_names(m.n_levels_)
    assert list(out)[:2] == ["input", "level 1"] and list(out)[-1] == "scores"
    assert out["input"].shape == (N, 64 * m.d0_)
    for l in range(1, m.n_levels_ + 1):
        width = m.widths_[l - 1]
        assert out[f"level {l}"].shape == (N, m.sites_per_level_[l] * width)
        assert unit_or_zero(out[f"level {l}"], width), f"level {l} sites are not unit vectors"
    for name, a in out.items():
        assert a.dtype == np.float64 and np.all(np.isfinite(a)), name
    # the scores are decision_function's, whatever the batching
    np.testing.assert_array_equal(out["scores"], m.decision_function(X8, batch_size=7))
    assert_close(m.layer_outputs(X8)["scores"], out["scores"], np.float64, "batching")


def test_qcnn_levels_do_not_depend_on_the_inference_domain(qcnn, data):
    # the same network evaluated in three arithmetics: the site directions agree
    X8 = data[0]
    ref = qcnn.layer_outputs(X8)
    try:
        for domain in ("log", "linear"):
            qcnn.set_params(domain=domain)
            out = qcnn.layer_outputs(X8)
            for name in ref:
                assert_close(out[name], ref[name], np.float64, f"{domain}: {name}")
    finally:
        qcnn.set_params(domain="auto")


def test_unit_sites_finite_at_any_scale(rng):
    logabs = rng.normal(size=(4, 5, 3)) + 1e5  # exp() of these overflows
    sign = rng.choice([-1, 1], size=logabs.shape).astype(np.int8)
    logabs[0, 0] = -np.inf  # an all-zero site
    u = unit_sites_log(logabs, sign)
    assert np.all(np.isfinite(u)) and np.all(u[0, 0] == 0)
    expected = unit_sites(sign * np.exp(logabs - 1e5))
    assert_close(u, expected, np.float64, "log-domain unit sites")
    big = unit_sites(rng.normal(size=(3, 4)) * 1e300)  # squares overflow float64
    assert_close(np.linalg.norm(big, axis=-1), np.ones(3), np.float64, "unit norm")


@pytest.mark.parametrize("side", [8, 16])
def test_mera_layer_outputs_contract(data, side):
    X8, X16, y, seed = data
    X = X8 if side == 8 else X16
    m = MERA2D(n_classes=N_CLASSES, chi=2, epochs=2, batch_size=10,
               random_state=seed).fit(X, y)  # float32: the levels still come back float64
    out = m.layer_outputs(X, batch_size=7)
    # 8x8: a level of 4x4 blocks then the 2x2 end block; 16x16: two block levels
    assert list(out) == ["input", "level 1", "scores"]
    assert out["input"].shape == (N, side * side * m.p0_)
    assert out["level 1"].shape == (N, (side // 4) ** 2 * m.chi)
    assert unit_or_zero(out["level 1"], m.chi)
    assert all(a.dtype == np.float64 and np.all(np.isfinite(a)) for a in out.values())
    np.testing.assert_array_equal(out["scores"], m.decision_function(X, batch_size=7))


# ------------------------------------------------------------------- separation, t-SNE
def test_separation_is_higher_for_clustered_layers(rng):
    n, dim = 90, 20
    y = np.arange(n) % 3
    centres = 6.0 * rng.standard_normal((3, dim))
    layers = {"noise": rng.standard_normal((n, dim)),
              "clusters": centres[y] + rng.standard_normal((n, dim)),
              "wide": np.repeat(centres[y], 4, axis=1)  # 80 > n_components: PCA-reduced
              + rng.standard_normal((n, 4 * dim))}
    emb = embed_layers(layers, perplexity=10, max_iter=500, random_state=1)
    sep = layer_separation(layers, y, embeddings=emb, k=5)
    assert list(sep) == list(layers)
    for name in ("clusters", "wide"):
        assert sep[name]["knn_accuracy"] >= 0.95 and sep[name]["silhouette"] >= 0.5, name
        assert sep[name]["knn_accuracy_2d"] >= 0.95 and sep[name]["silhouette_2d"] >= 0.5
    assert sep["noise"]["knn_accuracy"] <= 0.6 and sep["noise"]["silhouette"] <= 0.1
    assert sep["noise"]["knn_accuracy_2d"] <= 0.6 and sep["noise"]["silhouette_2d"] <= 0.2


def test_embed_layers_shapes_and_determinism(qcnn, data):
    out = qcnn.layer_outputs(data[0])
    emb = embed_layers(out, perplexity=5, max_iter=250, random_state=3)
    assert list(emb) == list(out)
    assert all(e.shape == (N, 2) and np.all(np.isfinite(e)) for e in emb.values())
    again = embed_layers({"level 1": out["level 1"]}, perplexity=5, max_iter=250,
                         random_state=3)
    np.testing.assert_array_equal(again["level 1"], emb["level 1"])


def test_layer_tsne_runs_end_to_end(qcnn, data, tmp_path):
    X8, _, y, _ = data
    res = layer_tsne(qcnn, X8, y, perplexity=5, max_iter=250)
    assert isinstance(res, LayerTSNE)
    assert res.names == tuple(layer_names(qcnn.n_levels_))
    assert list(res.embeddings) == list(res.scores) == list(res.names)
    for s in res.scores.values():
        assert {"knn_accuracy", "silhouette", "knn_accuracy_2d", "silhouette_2d"} <= set(s)
        assert 0 <= s["knn_accuracy"] <= 1 and -1 <= s["silhouette"] <= 1
    path = res.save_png(tmp_path / "layers.png", class_names=["a", "b", "c"], title="t")
    assert path.read_bytes()[:8] == PNG_MAGIC


# ------------------------------------------------------------------------------ figure
def _embeddings(rng, n=24, layers=("input", "level 1", "scores")):
    return {name: rng.standard_normal((n, 2)) for name in layers}, np.arange(n) % 4


def test_save_tsne_grid_writes_a_png(rng, tmp_path):
    emb, y = _embeddings(rng)
    scores = {"input": {"knn_accuracy": 0.5, "silhouette": 0.1, "knn_accuracy_2d": 0.6,
                        "silhouette_2d": 0.2}}
    path = save_tsne_grid(tmp_path / "grid.png", emb, y, scores=scores,
                          class_names={0: "zero"}, title="layers")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_failed_write_leaves_no_file(rng, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def broken_savefig(self, fname, **kw):
        with open(fname, "wb") as f:
            f.write(PNG_MAGIC)  # half a file, then the disk fills
        raise OSError("no space left on device")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    emb, y = _embeddings(rng)
    with pytest.raises(OSError, match="no space"):
        save_tsne_grid(tmp_path / "grid.png", emb, y)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- bad input
def test_bad_input_names_the_argument(qcnn, data, rng, tmp_path):
    X8, X16, y, _ = data
    with pytest.raises(ValueError, match="not fitted"):
        QCNN().layer_outputs(X8)
    with pytest.raises(ValueError, match="not fitted"):
        MERA2D().layer_outputs(X8)
    with pytest.raises(ValueError, match="X: expected images of shape"):
        qcnn.layer_outputs(X16)
    # pixels beyond the training range [0, 1] are clipped, as in predict ...
    clipped = qcnn.layer_outputs(np.clip(X8 * 3, 0, 1))
    for name, a in qcnn.layer_outputs(X8 * 3).items():
        np.testing.assert_array_equal(a, clipped[name], err_msg=name)
    # ... and refused without input scaling
    try:
        qcnn.set_params(input_scaling="none")
        with pytest.raises(ValueError, match=r"X: expected pixel values in \[0, 1\]"):
            qcnn.layer_outputs(X8 * 3)
    finally:
        qcnn.set_params(input_scaling="auto")
    with pytest.raises(ValueError, match="batch_size"):
        qcnn.layer_outputs(X8, batch_size=0)
    with pytest.raises(ValueError, match="y: expected 30 labels"):
        layer_tsne(qcnn, X8, y[:-1])
    with pytest.raises(ValueError, match="not fitted"):
        layer_tsne(QCNN(), X8, y)
    with pytest.raises(TypeError, match="model: expected a fasttn model"):
        layer_tsne(object(), X8, y)
    out = {"a": rng.standard_normal((N, 3)), "b": rng.standard_normal((N, 4))}
    with pytest.raises(ValueError, match="y: expected 30 labels"):
        layer_separation(out, y[:-1])
    with pytest.raises(ValueError, match="y: expected at least two classes"):
        layer_separation(out, np.zeros(N))
    with pytest.raises(ValueError, match=r"outputs\['b'\]: expected 30 rows"):
        embed_layers({"a": out["a"], "b": out["b"][:-1]})
    with pytest.raises(ValueError, match=r"outputs\['a'\]: expected finite"):
        embed_layers({"a": np.full((N, 3), np.inf)})
    with pytest.raises(ValueError, match="perplexity"):
        embed_layers(out, perplexity=N)
    with pytest.raises(ValueError, match="method"):
        embed_layers(out, method="umap")
    with pytest.raises(ValueError, match="n_jobs"):
        layer_separation(out, y, n_jobs=0)
    emb, y24 = _embeddings(rng)
    with pytest.raises(ValueError, match="y: expected 24 labels"):
        save_tsne_grid(tmp_path / "g.png", emb, y24[:-1])
    with pytest.raises(ValueError, match="path: expected a .png"):
        save_tsne_grid(tmp_path / "g.jpg", emb, y24)
    with pytest.raises(ValueError, match=r"embeddings\['level 1'\]: expected finite values "
                                         r"of shape \(24, 2\)"):
        save_tsne_grid(tmp_path / "g.png", {**emb, "level 1": np.zeros((24, 3))}, y24)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(importlib.util.find_spec("openTSNE") is not None,
                    reason="openTSNE is installed")
def test_opentsne_missing_says_how_to_install(rng):
    with pytest.raises(ImportError, match=r"pip install 'fasttn\[opentsne\]'"):
        embed_layers({"a": rng.standard_normal((N, 3))}, perplexity=5, method="opentsne")
