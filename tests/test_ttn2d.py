"""TTN2D: exactness against one brute-force einsum of the whole tree, gradients against
finite differences, the isometric sweep, training on real data, checkpoints, bad input."""
import cotengra as ctg
import numpy as np
import pytest

import fasttn
from fasttn import TTN2D
from fasttn.data.tasks import load_task
from fasttn.ops import feature_map
from fasttn.plan import contract

from conftest import check_gradient


def _fitted(rng, side=4, n_classes=3, epochs=1, n=12, **kw):
    kw.setdefault("dtype", "float64")
    kw.setdefault("early_stopping", False)  # every image trains
    X = rng.random((n, side, side))
    y = np.arange(n) % n_classes
    return TTN2D(n_classes, epochs=epochs, batch_size=4, random_state=0, **kw).fit(X, y), X, y


def _whole_tree(model, X, einsum):
    """The network as one einsum over every pixel vector and every tensor (no
    normalisation): ``(n, trees, d_top)``."""
    side = X.shape[1]
    phi = feature_map(X.astype(np.float64), "cos_sin", model.d)
    batch, label = ctg.get_symbol(0), ctg.get_symbol(1)
    outs = []
    for tree in range(model.n_trees_):
        sym = iter(ctg.get_symbol(i) for i in range(2, 10 ** 4))
        terms, operands = [], []
        legs = np.array([[next(sym) for _ in range(side)] for _ in range(side)])
        for r in range(side):
            for c in range(side):
                terms.append(batch + legs[r, c])
                operands.append(phi[:, r, c])
        for level, w in enumerate(model.weights_):
            half = legs.shape[0] // 2
            up = np.array([[next(sym) for _ in range(half)] for _ in range(half)])
            if level == model.n_levels_ - 1:
                up[0, 0] = label
            for i in range(half):
                for j in range(half):
                    terms.append(legs[2 * i, 2 * j] + legs[2 * i, 2 * j + 1]
                                 + legs[2 * i + 1, 2 * j] + legs[2 * i + 1, 2 * j + 1] + up[i, j])
                    operands.append(w[tree * half + i, j].astype(np.float64))
            legs = up
        outs.append(einsum(",".join(terms) + "->" + batch + label, *operands))
    return np.stack(outs, axis=1)


def _exact_top(model, X):
    """The model's top output times exp(log_scale): the unnormalised network."""
    out, *_ = model._forward(X)
    scale = model.log_scale(X)
    scale = scale[:, None] if scale.ndim == 1 else scale
    return out[:, :, 0, :].astype(np.float64) * np.exp(scale)[:, :, None]


@pytest.mark.parametrize("top", ["multiclass", "ovr"])
@pytest.mark.parametrize("d", [2, 3])
def test_tree_equals_numpy_einsum_on_4x4(rng, top, d):
    model, X, _ = _fitted(rng, side=4, chi=3, d=d, top=top)
    # numpy.einsum along a cotengra path (numpy's own path search stalls on 21 operands)
    expected = _whole_tree(model, X, contract)
    np.testing.assert_allclose(_exact_top(model, X), expected, rtol=1e-10,
                               atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize("top", ["multiclass", "ovr"])
def test_tree_equals_brute_force_on_8x8(rng, top):
    model, X, _ = _fitted(rng, side=8, chi=[3, 2], top=top, n_classes=2)
    expected = _whole_tree(model, X[:4], ctg.einsum)
    np.testing.assert_allclose(_exact_top(model, X[:4]), expected, rtol=1e-9,
                               atol=1e-12 * np.abs(expected).max())
    if top == "ovr":  # class score: each tree's "yes" minus its "no" (normalised)
        s = model._decision(X[:4])
        out = model._forward(X[:4])[0][:, :, 0, :]
        np.testing.assert_allclose(s, out[..., 1] - out[..., 0], rtol=1e-12)
        # two classes: decision_function is the margin of the second class over the first
        np.testing.assert_allclose(model.decision_function(X[:4]), s[:, 1] - s[:, 0],
                                   rtol=1e-12)


@pytest.mark.parametrize("top", ["multiclass", "ovr"])
def test_gradients_match_finite_differences(rng, top):
    model, X, y = _fitted(rng, side=8, chi=[3, 2], top=top, n_classes=3)
    _, _, grads = model._forward_backward(X, y)
    for level in range(model.n_levels_):
        w = model.weights_[level]
        saved = w.copy()

        def loss(v, level=level):
            model.weights_[level] = v
            out = model._forward(X)[0]
            model.weights_[level] = saved
            return model._loss(out, y)[0]

        check_gradient(loss, saved, grads[level], rng, n_dirs=2)


def test_sweep_keeps_tensors_isometric_and_raises_fidelity(rng):
    X, y, _, _ = load_task("digits", size=8)
    X, y = X[:300], y[:300]
    # every image in the sweeps, the last sweep's tensors kept (no early stopping)
    model = TTN2D(10, chi=4, solver="sweep", epochs=3, dtype="float64", random_state=0,
                  early_stopping=False)
    model.fit(X, y)
    assert max(model.isometry_errors()) <= 1e-8
    fid = [r["fidelity"] for r in model.history_]
    assert fid[-1] > fid[0] > 0
    assert model.history_[-1]["accuracy"] > 0.5
    ent = model.history_[-1]["entropy"]
    assert len(ent) == model.n_levels_ and all(0 <= e <= np.log(10) for e in ent)
    # every level's tensors maximise tr(T^T E) over isometries: the sum of E's singular values
    for level in range(model.n_levels_):
        env = model.environments(X, y, level)
        p4 = env.shape[2] ** 4
        e = env.reshape(-1, p4, env.shape[-1])
        w = model.weights_[level].reshape(e.shape)
        achieved = np.einsum("kij,kij->k", w, e)
        best = np.linalg.svd(e, compute_uv=False).sum(axis=1)
        if level == model.n_levels_ - 1:  # the last level updated: exactly the maximum
            np.testing.assert_allclose(achieved, best, rtol=1e-8)
        assert np.all(achieved <= best * (1 + 1e-8))


def test_top_environment_is_the_fidelity_gradient(rng):
    model, X, y = _fitted(rng, side=8, chi=[3, 2], n_classes=3)
    top = model.n_levels_ - 1
    env = model.environments(X, y, top)
    saved = model.weights_[top].copy()

    def fidelity(v):
        model.weights_[top] = v
        out = model._forward(X)[0]
        model.weights_[top] = saved
        return float(np.sum(out * model._target(y, out.dtype)))

    check_gradient(fidelity, saved, env, rng)


def test_digits_adam_and_save_load(rng, tmp_path):
    X_tr, y_tr, X_te, y_te = load_task("digits", size=8)
    model = TTN2D(10, chi=8, epochs=12, lr=0.02, batch_size=32, random_state=0)
    model.fit(X_tr, y_tr)
    acc = model.score(X_te, y_te)
    assert acc >= 0.9, acc
    # early stopping (on by default) kept the epoch that scored best on the held-out split
    val = [r["val_accuracy"] for r in model.history_]
    assert model.best_epoch_ == 1 + int(np.argmax(val))
    # it stops n_iter_no_change epochs after the best one (or at the last epoch)
    assert len(val) in (model.epochs, model.best_epoch_ + model.n_iter_no_change)
    assert model.best_validation_score_ == max(val)
    images = model._check_X(X_tr, fitted=True)
    _, _, X_val, y_val = model._hold_out(images, model._class_indices(y_tr, len(y_tr)))
    assert len(y_val) == int(np.ceil(0.1 * len(y_tr)))
    assert np.mean(model._predict_index(X_val) == y_val) == model.best_validation_score_
    path = tmp_path / "ttn.npz"
    model.save(path)
    again = fasttn.load(path)
    assert isinstance(again, TTN2D)
    np.testing.assert_array_equal(again.decision_function(X_te), model.decision_function(X_te))
    assert again.history_ == model.history_
    assert again.best_epoch_ == model.best_epoch_


def test_ovr_trees_train(rng):
    X_tr, y_tr, X_te, y_te = load_task("digits", size=8)
    model = TTN2D(10, chi=6, top="ovr", epochs=8, lr=0.02, batch_size=32, random_state=0)
    model.fit(X_tr, y_tr)
    assert model.score(X_te, y_te) >= 0.85


def test_layer_outputs(rng):
    model, X, _ = _fitted(rng, side=8, chi=[3, 2], n_classes=3, top="ovr")
    outs = model.layer_outputs(X, batch_size=5)
    assert list(outs) == ["input", "level 1", "level 2", "scores"]
    n = X.shape[0]
    assert outs["input"].shape == (n, 64 * 2)
    assert outs["level 1"].shape == (n, 3 * 16 * 3)
    assert outs["level 2"].shape == (n, 3 * 4 * 2)
    np.testing.assert_allclose(outs["scores"], model.decision_function(X))
    sites = outs["level 1"].reshape(n, -1, 3)
    np.testing.assert_allclose(np.linalg.norm(sites, axis=-1), 1.0, rtol=1e-12)


def test_finite_at_1024():
    """Depth 10: the exact network's value under/overflows, the tracked form stays finite."""
    rng = np.random.default_rng(1)
    X = rng.random((2, 1024, 1024)).astype(np.float32)
    model = TTN2D(2, chi=2, random_state=0)
    model._check_config()
    model._setup((1024, 1024))
    model._init_params(rng)
    model.history_ = []
    scores = model.decision_function(X)
    scale = model.log_scale(X)
    assert np.all(np.isfinite(scores)) and np.all(np.isfinite(scale))
    assert np.abs(scale).max() > 100  # exp of it would over- or underflow float32
    _, _, grads = model._forward_backward(X, np.array([0, 1]))
    assert all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("kwargs,shape,match", [
    ({"chi": [2, 2, 2]}, (4, 8, 8), "chi: expected one value per level"),
    ({"chi": 0}, (4, 8, 8), "chi"),
    ({"top": "tree"}, (4, 8, 8), "top"),
    ({"solver": "dmrg"}, (4, 8, 8), "solver"),
    ({"d": 1}, (4, 8, 8), "n_features|d"),
])
def test_bad_configuration(rng, kwargs, shape, match):
    with pytest.raises(ValueError, match=match):
        TTN2D(2, epochs=1, **kwargs).fit(rng.random(shape), np.array([0, 1, 0, 1]))


@pytest.mark.parametrize("shape,match", [((6, 6), "power of 2"), ((8, 4), "square")])
def test_images_are_padded_to_a_power_of_2_square(rng, shape, match):
    # the tree itself runs on square images whose side is a power of 2 ...
    with pytest.raises(ValueError, match=match):
        TTN2D(2)._setup(shape)
    # ... and fit pads others with zeros, centred, to the next such square
    h, w = shape
    X = rng.random((4, h, w))
    model = TTN2D(2, chi=2, epochs=1, early_stopping=False, dtype="float64",
                  random_state=0).fit(X, np.array([0, 1, 0, 1]))
    assert model.input_shape_ == shape and model.network_shape_ == model.image_shape_ == (8, 8)
    assert model.n_features_in_ == h * w
    padded = np.zeros((4, 8, 8))
    top, left = (8 - h) // 2, (8 - w) // 2
    padded[:, top:top + h, left:left + w] = X
    np.testing.assert_array_equal(model.log_scale(X), model._forward(padded)[3])
    np.testing.assert_array_equal(model.predict(X.reshape(4, h * w)), model.predict(X))


def test_bad_input(rng):
    model, X, y = _fitted(rng, side=4, chi=2, n_classes=2)
    with pytest.raises(ValueError, match="not fitted"):
        TTN2D(2).predict(X)
    with pytest.raises(ValueError, match=r"X: expected images of shape \(4, 4\)"):
        model.predict(rng.random((3, 8, 8)))
    # beyond the training range [0, 1]: clipped at prediction, refused without scaling
    np.testing.assert_array_equal(model.decision_function(X * 3),
                                  model.decision_function(np.clip(X * 3, 0, 1)))
    with pytest.raises(ValueError, match=r"X: expected pixel values in \[0, 1\]"):
        TTN2D(2, epochs=1, input_scaling="none").fit(X * 3, y)
    bad = X.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="X"):
        model.predict(bad)
    with pytest.raises(ValueError, match="y: n_classes=2, but y holds 12 distinct labels"):
        TTN2D(2, epochs=1).fit(X, np.arange(X.shape[0]))


def test_cli_train_ttn_and_tsne(tmp_path, capsys):
    import json

    from fasttn.cli import main

    ckpt, png, js = tmp_path / "ttn.npz", tmp_path / "tsne.png", tmp_path / "sep.json"
    assert main(["train", "ttn", "--quiet", "--epochs", "3", "--chi", "8", "--out",
                 str(ckpt)]) == 0
    out = capsys.readouterr().out
    acc = float(out.split("test accuracy")[1].split()[0])
    assert acc >= 0.9, out
    assert main(["tsne", str(ckpt), "--n", "200", "--max-iter", "300", "--out", str(png),
                 "--json", str(js)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sep = json.loads(js.read_text())
    assert list(sep) == ["input", "level 1", "level 2", "scores"]
    # a trained tree separates the classes better at the top than at the pixels
    assert sep["scores"]["silhouette"] > sep["input"]["silhouette"] + 0.2


def test_cli_class_subset(tmp_path, capsys):
    from fasttn.cli import main

    assert main(["train", "ttn", "--quiet", "--epochs", "8", "--chi", "8", "--classes",
                 "3,8", "--top", "ovr"]) == 0
    out = capsys.readouterr().out
    assert "classes 3,8" in out and float(out.split("test accuracy")[1].split()[0]) >= 0.85
    assert main(["train", "ttn", "--quiet", "--classes", "3,3"]) == 2
    assert "classes: expected at least two distinct labels" in capsys.readouterr().err
    assert main(["train", "ttn", "--quiet", "--classes", "3,12"]) == 2
    assert "no images with label(s) [12]" in capsys.readouterr().err
