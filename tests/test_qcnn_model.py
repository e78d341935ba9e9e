"""QCNN model: whole-model gradients, the PyTorch baseline, 1024x1024 images, the estimator
contract and checkpoints, learning on the 8x8 digits, and input validation."""
import importlib.util
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

import fasttn
from conftest import DTYPES, RTOL, assert_close, finite_difference, rel_err
from fasttn import QCNN

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ helpers
def make_model(rng, shape=(8, 8), **params):
    """A QCNN set up for ``shape`` images without training, every batch-norm parameter drawn
    at random (nonzero, mixed signs), so no test sees the degenerate gamma = 1, beta = 0
    start."""
    params.setdefault("dtype", "float64")
    m = QCNN.paper(**params)
    m._check_config()
    m._setup(shape)
    m._init_params(rng)
    for l in range(m.n_levels_ + 1):
        n = m.gammas_[l].size
        m.gammas_[l][:] = rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 1.5, n)
        m.betas_[l][:] = rng.choice([-1.0, 1.0], n) * rng.uniform(0.3, 1.2, n)
    m.history_ = []
    return m


def set_running_stats(m, rng, chains):
    """Running statistics near those of a batch (perturbed by up to ~20%), as after
    training: arbitrary ones let the eval-mode hierarchy grow without bound, and a loss of
    huge scores is piecewise linear, where finite differences mean nothing."""
    used = m._forward_backward(chains, None, True, "linear")[4]
    for l, (mean, var) in enumerate(used):
        n = len(mean)
        m.running_means_[l] = np.asarray(mean) + 0.2 * np.sqrt(var) * rng.uniform(-1, 1, n)
        m.running_vars_[l] = np.asarray(var) * rng.uniform(0.8, 1.25, n)


def images(rng, n, shape=(8, 8), n_classes=3):
    X = rng.uniform(0.0, 1.0, (n,) + tuple(shape))
    y = rng.permutation(np.arange(n) % n_classes)  # every class present
    return X, y


def flat_params(m):
    return np.concatenate([p.ravel() for p in m._params()]).astype(np.float64)


def set_flat_params(m, theta):
    offset = 0
    for p in m._params():
        p[...] = theta[offset:offset + p.size].reshape(p.shape)
        offset += p.size


def check_directional(f, theta, grad, rng, n_dirs=3, h=1e-5, rtol=1e-6):
    """``<grad, v>`` against central differences of ``f`` along random ``v``.

    Like ``conftest.check_gradient`` with two changes the whole model needs. The loss is a
    polynomial of degree up to 2^L in the parameters, so the step is 1e-5 (at 1e-4 the
    Richardson-extrapolated difference is still off by up to 1e-3 on some draws, and
    converges as h falls). And the error is measured against ``sum |grad_i v_i|``, the size
    of the terms that ``<grad, v>`` adds up, as well as against the result: large gradient
    components can cancel to a small ``<grad, v>`` (seen with the constant channel, whose
    variance is 0 and whose batch norm multiplies by 1/sqrt(eps)). Over 450 draws of each of
    the 32 cases below the worst error on this scale was 1e-8."""
    for _ in range(n_dirs):
        v = rng.standard_normal(theta.shape)
        fd = finite_difference(f, theta, v, h)
        an = float(grad @ v)
        scale = max(1.0, abs(fd), abs(an), float(np.abs(grad * v).sum()))
        assert abs(fd - an) <= rtol * scale, \
            f"finite difference {fd!r} vs analytic {an!r} (scale {scale:.3g})"


def fresh_rng():
    """For module-scoped fixtures (the ``rng`` fixture is per test): fresh, seed printed."""
    seed = int(np.random.SeedSequence().entropy % (2**32))
    print(f"module seed={seed}")
    return np.random.default_rng(seed)


def dtype_name(dtype):
    return np.dtype(dtype).name


# ------------------------------------------------- 1. whole-model gradients, both domains
FD_CASES = {
    "8x8-fourier-1d": dict(shape=(8, 8), d=2, pooling="1d"),
    "8x8-fourier-2d": dict(shape=(8, 8), d=4, pooling="2d"),
    "4x8-legendre-1d-column": dict(shape=(4, 8), d=3, feature_map="legendre", pooling="1d",
                                   order="column"),
    "4x4-cos_sin-const-2d": dict(shape=(4, 4), d=2, feature_map="cos_sin", constant=True,
                                 pooling="2d"),
    "8x8-fourier-1d-separate": dict(shape=(8, 8), d=2, pooling="1d", child_weights="separate"),
    "4x4-cos_sin-2d-separate": dict(shape=(4, 4), d=3, feature_map="cos_sin", n_features=3,
                                    pooling="2d", child_weights="separate"),
}


@pytest.mark.parametrize("training", [True, False], ids=["batch-stats", "running-stats"])
@pytest.mark.parametrize("loss", ["square", "cross_entropy"])
@pytest.mark.parametrize("domain", ["linear", "log"])
@pytest.mark.parametrize("case", list(FD_CASES), ids=list(FD_CASES))
def test_gradients_match_finite_differences(rng, case, domain, loss, training):
    params = dict(FD_CASES[case])
    shape = params.pop("shape")
    m = make_model(rng, shape, n_classes=3, loss=loss, **params)
    X, y = images(rng, 6, shape)
    chains = m._sites(X)
    set_running_stats(m, rng, chains)
    theta = flat_params(m)
    _, _, loss0, grads, _ = m._forward_backward(chains, y, training, domain)
    grad = np.concatenate([g.ravel() for g in grads]).astype(np.float64)
    assert grad.shape == theta.shape and np.all(np.isfinite(grad))
    assert np.abs(grad).max() > 1e-3  # not a degenerate point

    def f(t):
        set_flat_params(m, t)
        return m._forward_backward(chains, y, training, domain)[2]

    check_directional(f, theta, grad, rng)
    set_flat_params(m, theta)
    assert f(theta) == loss0


@pytest.mark.parametrize("training", [True, False], ids=["batch-stats", "running-stats"])
@pytest.mark.parametrize("loss", ["square", "cross_entropy"])
@pytest.mark.parametrize("pooling", ["1d", "2d"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_and_log_domains_agree(rng, dtype, pooling, loss, training):
    m = make_model(rng, (8, 8), d=4, n_classes=4, pooling=pooling, loss=loss,
                   dtype=dtype_name(dtype))
    X, y = images(rng, 8, (8, 8), 4)
    chains = m._sites(X)
    set_running_stats(m, rng, chains)
    s_lin, ls_lin, l_lin, g_lin, used_lin = m._forward_backward(chains, y, training, "linear")
    s_log, (la, sg), l_log, g_log, used_log = m._forward_backward(chains, y, training, "log")
    assert ls_lin is None
    assert_close(sg * np.exp(la.astype(np.float64)), s_log, np.float64, "log scores vs pair")
    assert_close(s_lin, s_log, dtype, "scores")
    assert abs(l_lin - l_log) <= RTOL[dtype] * max(1.0, abs(l_log)), (l_lin, l_log)
    names = ([f"weight{l}" for l in range(m.n_levels_ + 1)]
             + [f"gamma{l}" for l in range(m.n_levels_ + 1)]
             + [f"beta{l}" for l in range(m.n_levels_ + 1)])
    # float32 gradients pass through 7 levels of products and batch norms, rounded
    # differently in the two domains: up to 1.3e-4 apart for some draws, so 5e-4 here (a
    # wrong gradient is off by order one)
    g_rtol = RTOL[dtype] if dtype == np.float64 else 5e-4
    for name, a, b in zip(names, g_lin, g_log):
        assert a.dtype == dtype and b.dtype == dtype, name
        err = rel_err(a, b)
        assert err <= g_rtol, f"{name}: relative error {err:.3e} > {g_rtol}"
    for (m1, v1), (m2, v2) in zip(used_lin, used_log):  # the normalisation statistics
        assert_close(m1, m2, dtype, "mean used")
        assert_close(v1, v2, dtype, "var used")


def test_linear_gradients_with_megabyte_buffers(rng):
    # Same check as above with level buffers of 1 MiB and more (64 images of 32x32, 8
    # channels, float64): a pool that recycled such buffers while reshaped views of them were
    # alive once let the next level's xi overwrite the input saved for the backward here.
    m = make_model(rng, (32, 32), d=4, widths=[8] * 10, n_classes=3)
    X, y = images(rng, 64, (32, 32))
    chains = m._sites(X)
    theta = flat_params(m)
    grad = np.concatenate([g.ravel() for g in m._forward_backward(chains, y, True,
                                                                  "linear")[3]])

    def f(t):
        set_flat_params(m, t)
        return m._forward_backward(chains, y, True, "linear")[2]

    check_directional(f, theta, grad, rng, n_dirs=2)


# --------------------------------------------------------------- 2. the PyTorch baseline
def torch_baseline():
    torch = pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location(
        "torch_qcnn", ROOT / "bench" / "baselines" / "torch_qcnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return torch, module


@pytest.mark.parametrize("loss", ["square", "cross_entropy"])
@pytest.mark.parametrize("pooling", ["1d", "2d"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_pytorch_baseline(rng, dtype, pooling, loss):
    torch, tq = torch_baseline()
    # PyTorch runs in float64 on the model's parameters: the float32 comparison then measures
    # fasttn's rounding alone, not the sum of two float32 runs' (which exceeds 1e-4 on a
    # few draws in a thousand, where a batch-norm gradient is a cancelling sum)
    tdt = torch.float64
    m = make_model(rng, (8, 8), d=4, n_classes=4, pooling=pooling, loss=loss,
                   dtype=dtype_name(dtype))
    X, y = images(rng, 10, (8, 8), 4)
    chains = m._sites(X)
    set_running_stats(m, rng, chains)
    net = tq.TorchQCNN([m.d0_] + m.widths_, m.n_classes, window=m.window_, eps=m.eps,
                       momentum=m.momentum).to(tdt)
    net.load_from(m)
    x = tq.features(chains.astype(np.float64), m.d0_)
    assert_close(x.numpy().transpose(0, 2, 1), m._features(chains), dtype, "features")

    # training mode: batch statistics, scores and autograd gradients
    net.train()
    scores_t = net(x)
    yt = torch.from_numpy(y)
    if loss == "square":
        loss_t = tq.square_loss(scores_t, yt)
    else:
        loss_t = torch.nn.functional.cross_entropy(scores_t, yt)
    loss_t.backward()
    grads_t = ([c.weight.grad[:, :, 0] for c in net.convs] + [net.head.weight.grad]
               + [bn.weight.grad for bn in net.bns] + [bn.bias.grad for bn in net.bns])
    used = None
    for domain in ("linear", "log"):
        scores, _, loss_v, grads, used_d = m._forward_backward(chains, y, True, domain)
        used = used if used is not None else used_d
        assert_close(scores, scores_t.detach().numpy(), dtype, f"{domain} scores")
        assert abs(loss_v - loss_t.item()) <= RTOL[dtype] * max(1.0, abs(loss_v))
        assert len(grads) == len(grads_t)
        for l, (g, gt) in enumerate(zip(grads, grads_t)):
            assert_close(g, gt.numpy(), dtype, f"{domain} gradient {l}")

    # torch's forward updated its running statistics; so does the model's update
    m._update_running(used, len(y))
    for l, bn in enumerate(net.bns):
        assert_close(m.running_means_[l], bn.running_mean.numpy(), dtype, f"running mean {l}")
        assert_close(m.running_vars_[l], bn.running_var.numpy(), dtype, f"running var {l}")

    # eval mode: running statistics, against decision_function in both domains
    net.eval()
    with torch.no_grad():
        scores_eval = net(x).numpy()
    for domain in ("auto", "linear", "log"):
        m.set_params(domain=domain)
        assert_close(m.decision_function(X), scores_eval, dtype, f"eval scores ({domain})")


# ------------------------------------------------------------------ 3. 1024x1024 images
@pytest.fixture(scope="module")
def big():
    """One training step on two 1024x1024 images (20 levels of 1d pooling), both domains."""
    rng = fresh_rng()
    m = QCNN.paper(n_classes=3, d=2, widths=[4] * 20, pooling="1d", dtype="float64", momentum=1.0)
    m._check_config()
    m._setup((1024, 1024))
    m._init_params(rng)
    m.history_ = []
    X = rng.uniform(0.0, 1.0, (2, 1024, 1024))
    y = rng.permutation(3)[:2]
    chains = m._sites(X)
    lin = m._forward_backward(chains, y, True, "linear")
    log = m._forward_backward(chains, y, True, "log")
    m._update_running(lin[4], len(y))  # momentum 1: running stats = this batch's
    return m, X, y, lin, log


def test_1024_trains_a_step_with_finite_loss_and_gradients(big):
    m, X, y, lin, log = big
    assert m.n_levels_ == 20 and m.sites_per_level_[-1] == 1
    for name, (scores, _, loss, grads, used) in (("linear", lin), ("log", log)):
        assert np.all(np.isfinite(scores)), name
        assert np.isfinite(loss) and loss > 0, name
        assert len(grads) == 3 * 21
        for l, g in enumerate(grads):
            assert np.all(np.isfinite(g)), f"{name} gradient {l}"
        assert any(np.abs(g).max() > 0 for g in grads[:20]), name
    # A score is a product over all 2^20 sites: relative rounding grows like 2^20 * eps
    # (2e-10), so the per-op float64 tolerance (1e-10) does not apply; measured up to 6e-10.
    assert rel_err(lin[0], log[0]) <= 1e-8, rel_err(lin[0], log[0])
    assert abs(lin[2] - log[2]) <= 1e-8 * log[2]


def test_1024_linear_and_log_gradients_agree(big):
    m, X, y, lin, log = big
    # Typically 1e-11..1e-10, with a heavy tail over seeds (3.6e-9 in 12, above 1e-8 now and
    # then): where a site's xi nears zero the log domain divides by it, and 2^20 sites give
    # such sites. A wrong gradient is O(1) (the recycled-buffer bug was).
    for l, (a, b) in enumerate(zip(lin[3], log[3])):
        assert rel_err(a, b) <= 1e-7, f"gradient {l}: relative error {rel_err(a, b):.2e}"


def test_1024_default_widths_linear_step_is_finite(rng):
    # The paper's widths d(l+1) with d=2, where recycled level buffers once gave NaN.
    m = QCNN.paper(n_classes=3, d=2, pooling="1d", dtype="float64")
    m._check_config()
    m._setup((1024, 1024))
    m._init_params(rng)
    X = rng.uniform(0.0, 1.0, (2, 1024, 1024))
    with np.errstate(all="ignore"):
        scores, _, loss, grads, _ = m._forward_backward(m._sites(X), rng.permutation(3)[:2],
                                                        True, "linear")
    assert np.isfinite(loss) and np.all(np.isfinite(scores))
    for l, g in enumerate(grads):
        assert np.all(np.isfinite(g)), f"gradient {l}"


def test_1024_linear_eval_overflows_where_log_domain_stays_finite(big):
    m, X, y, lin, log = big
    # Blank and flat-grey images: every site equal, so each level squares the same numbers
    # and running statistics (unlike batch statistics) do not pull them back to order one.
    Xe = np.stack([np.zeros((1024, 1024)), np.full((1024, 1024), 0.25), X[0]])
    m.set_params(domain="linear")
    try:
        # the linear domain's overflow is an error, not inf or NaN scores ranked as class 0
        with np.errstate(all="ignore"), pytest.raises(FloatingPointError,
                                                      match="domain='linear'"):
            m.decision_function(Xe)
        with np.errstate(all="ignore"):  # the raw linear scores, for the checks below
            s_lin = m._forward_backward(m._sites(m._check_X(Xe, fitted=True)), None, False,
                                        "linear")[0]
    finally:
        m.set_params(domain="auto")
    la, sg = m.decision_function(Xe, log=True)  # auto: one log-scale per site
    assert np.all(np.isfinite(la)) and set(np.unique(sg)) <= {-1, 1}
    m.set_params(domain="log")
    try:
        la_log, sg_log = m.decision_function(Xe, log=True)  # log|x| and sign per element
    finally:
        m.set_params(domain="auto")
    np.testing.assert_array_equal(sg, sg_log)
    np.testing.assert_allclose(la, la_log, rtol=1e-6, atol=1e-4)
    broken = ~np.all(np.isfinite(s_lin) & (s_lin != 0), axis=1)
    assert broken[:2].any(), f"linear scores stayed finite: {s_lin}"
    # ... because alpha itself is beyond float64 there, not because the linear path is wrong
    assert np.all(la[broken].max(axis=1) > np.log(np.finfo(np.float64).max)), la
    # on the training image both domains are finite and agree
    assert np.all(np.isfinite(s_lin[2]))
    assert rel_err(sg[2] * np.exp(la[2]), s_lin[2]) <= 1e-6


# ------------------------------------------------- 4. fit / predict / score / checkpoints
@pytest.mark.parametrize("loss", ["square", "cross_entropy"])
def test_fit_predict_score(rng, loss):
    X, y = images(rng, 60, (8, 8), 3)
    m = QCNN.paper(n_classes=3, d=2, loss=loss, epochs=3, batch_size=16, dtype="float64",
             random_state=int(rng.integers(2**31)))
    assert m.fit(X, y) is m
    assert [rec["epoch"] for rec in m.history_] == [1, 2, 3]
    for rec in m.history_:
        assert np.isfinite(rec["loss"]) and rec["loss"] >= 0
        assert 0 <= rec["accuracy"] <= 1
        assert np.isfinite(rec["images_per_s"]) and rec["images_per_s"] > 0
    pred = m.predict(X)
    assert pred.shape == (60,) and pred.dtype.kind == "i"
    assert np.all((0 <= pred) & (pred < 3))
    scores = m.decision_function(X)
    assert scores.shape == (60, 3) and scores.dtype == np.float64
    la, sg = m.decision_function(X, log=True)
    assert la.shape == sg.shape == (60, 3)
    assert_close(sg * np.exp(la.astype(np.float64)), scores, np.float64, "log pair")
    # eq. 35: argmax |alpha| for the square loss, argmax alpha for cross-entropy
    ranked = np.abs(scores) if loss == "square" else scores
    np.testing.assert_array_equal(pred, np.argmax(ranked, axis=1))
    assert m.score(X, y) == np.mean(pred == y)
    # batching does not change the answer
    assert_close(m.decision_function(X, batch_size=7), scores, np.float64, "batched")
    # eval mode is per-sample: one image alone scores as in the batch
    assert_close(m.decision_function(X[5:6]), scores[5:6], np.float64, "single image")


def test_fit_is_reproducible_and_records_validation_and_callbacks(rng):
    X, y = images(rng, 40, (8, 8), 3)
    Xv, yv = images(rng, 12, (8, 8), 3)
    seed = int(rng.integers(2**31))
    kw = dict(n_classes=3, d=2, epochs=2, batch_size=8, dtype="float64", random_state=seed)
    calls = []

    def callback(model, epoch, record):
        calls.append(epoch)
        return {"n_params": model.n_params_}

    a = QCNN.paper(**kw).fit(X, y, validation_data=(Xv, yv), callbacks=[callback])
    b = QCNN.paper(**kw).fit(X, y)
    assert calls == [0, 1]
    for rec in a.history_:
        assert 0 <= rec["val_accuracy"] <= 1 and rec["n_params"] == a.n_params_
    assert a.history_[-1]["val_accuracy"] == a.score(Xv, yv)
    assert [r["loss"] for r in a.history_] == [r["loss"] for r in b.history_]
    np.testing.assert_array_equal(a.decision_function(Xv), b.decision_function(Xv))


def test_warm_start_continues_training(rng):
    X, y = images(rng, 40, (8, 8), 3)
    m = QCNN.paper(n_classes=3, d=2, epochs=2, batch_size=10, lr=0.02, lr_step=2, lr_gamma=0.5,
             dtype="float64", random_state=int(rng.integers(2**31))).fit(X, y)
    before = [p.copy() for p in m._params()]
    m.fit(X, y, epochs=3, warm_start=True)
    assert [rec["epoch"] for rec in m.history_] == [1, 2, 3, 4, 5]
    # the learning-rate schedule goes on counting epochs
    np.testing.assert_allclose([rec["lr"] for rec in m.history_],
                               [0.02, 0.02, 0.01, 0.01, 0.005])
    assert any(not np.array_equal(p, q) for p, q in zip(m._params(), before))
    # no re-initialisation: with a zero learning rate a warm start leaves the parameters alone
    m.set_params(lr=0.0)
    kept = [p.copy() for p in m._params()]
    m.fit(X, y, epochs=1, warm_start=True)
    assert len(m.history_) == 6
    assert all(np.array_equal(p, q) for p, q in zip(m._params(), kept))
    # ...whereas a cold fit starts again from the initialisation
    m.fit(X, y, epochs=1)
    assert len(m.history_) == 1
    assert any(not np.array_equal(p, q) for p, q in zip(m._params(), kept))


def test_restore_best_keeps_the_best_validation_epoch(rng):
    X, y = images(rng, 40, (8, 8), 3)
    Xv, yv = images(rng, 16, (8, 8), 3)
    kw = dict(n_classes=3, d=2, epochs=4, batch_size=8, lr=0.05, dtype="float64",
              random_state=int(rng.integers(2**31)))
    m = QCNN.paper(**kw).fit(X, y, validation_data=(Xv, yv), restore_best=True)
    accs = [rec["val_accuracy"] for rec in m.history_]
    # the best accuracy; among equal ones, the epoch of the lowest held-out log-loss
    assert accs[m.best_epoch_ - 1] == max(accs)
    assert m.score(Xv, yv) == max(accs)
    # the restored state is that of the best epoch: retraining to it reproduces the scores
    ref = QCNN.paper(**kw).fit(X, y, epochs=m.best_epoch_)
    np.testing.assert_array_equal(m.decision_function(Xv), ref.decision_function(Xv))
    with pytest.raises(ValueError, match="restore_best"):
        QCNN.paper(**kw).fit(X, y, restore_best=True)


def test_augment_is_applied_to_every_batch(rng):
    X, y = images(rng, 24, (8, 8), 3)
    seen = []

    def augment(batch, gen):
        seen.append(batch.shape[0])
        return np.clip(batch + gen.normal(0, 0.05, batch.shape), 0, 1)

    kw = dict(n_classes=3, d=2, epochs=2, batch_size=10, dtype="float64",
              random_state=int(rng.integers(2**31)))
    a = QCNN.paper(**kw).fit(X, y, augment=augment)
    assert seen == [10, 10, 4] * 2
    b = QCNN.paper(**kw).fit(X, y)
    assert a.history_[0]["loss"] != b.history_[0]["loss"]
    # an identity augmentation changes nothing
    c = QCNN.paper(**kw).fit(X, y, augment=lambda batch, gen: batch)
    assert [r["loss"] for r in c.history_] == [r["loss"] for r in b.history_]
    with pytest.raises(ValueError, match="augment"):
        QCNN.paper(**kw).fit(X, y, augment=lambda batch, gen: batch[:, :4])
    with pytest.raises(ValueError, match=r"augment: expected it to return pixel values in \[0, 1\]"):
        QCNN.paper(**kw).fit(X, y, augment=lambda batch, gen: batch + 2)
    with pytest.raises(TypeError, match="augment"):
        QCNN.paper(**kw).fit(X, y, augment="shift")


def test_warm_start_on_unfitted_model_is_a_fresh_fit(rng):
    X, y = images(rng, 20, (8, 8), 3)
    m = QCNN.paper(n_classes=3, d=2, epochs=1, dtype="float64").fit(X, y, warm_start=True)
    assert len(m.history_) == 1


@pytest.fixture
def fitted(rng):
    X, y = images(rng, 30, (8, 8), 3)
    m = QCNN.paper(n_classes=3, d=2, epochs=2, batch_size=10, loss="cross_entropy",
             random_state=int(rng.integers(2**31))).fit(X, y)
    return m, X, y


def test_save_load_roundtrip(fitted, tmp_path):
    m, X, y = fitted
    path = tmp_path / "qcnn.npz"
    m.save(path)
    m2 = fasttn.load(path)
    assert type(m2) is QCNN
    assert m2.get_params() == m.get_params()
    assert m2.history_ == m.history_
    assert m2.n_params_ == m.n_params_
    np.testing.assert_array_equal(m2.predict(X), m.predict(X))
    np.testing.assert_array_equal(m2.decision_function(X), m.decision_function(X))
    la, sg = m.decision_function(X, log=True)
    la2, sg2 = m2.decision_function(X, log=True)
    np.testing.assert_array_equal(la2, la)
    np.testing.assert_array_equal(sg2, sg)
    # a loaded model can go on training
    m2.fit(X, y, epochs=1, warm_start=True)
    assert len(m2.history_) == len(m.history_) + 1
    # str paths work too; saving again replaces the file
    m.save(str(path))
    assert [p.name for p in tmp_path.iterdir()] == ["qcnn.npz"]  # no temporary left behind


def test_checkpoint_is_a_plain_npz(fitted, tmp_path):
    m, X, y = fitted
    path = tmp_path / "qcnn.npz"
    m.save(path)
    assert zipfile.is_zipfile(path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    assert all(a.dtype != object for a in arrays.values())
    header = json.loads(arrays.pop("__header__").tobytes().decode())
    assert header["class"] == "QCNN" and header["params"]["n_classes"] == 3
    np.testing.assert_array_equal(arrays["weights_0"], m.weights_[0])
    np.testing.assert_array_equal(arrays[f"running_vars_{m.n_levels_}"],
                                  m.running_vars_[m.n_levels_])


def _truncated(path, good):
    data = good.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _tail_cut(path, good):
    path.write_bytes(good.read_bytes()[:-16])


def _garbage(path, good):
    path.write_bytes(np.random.default_rng().bytes(2000))


def _empty(path, good):
    path.write_bytes(b"")


def _foreign_npz(path, good):
    with open(path, "wb") as f:
        np.savez(f, a=np.arange(3))


def _bad_header(path, good):
    with np.load(good) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["__header__"] = np.frombuffer(b"{not json", np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _npy_file(path, good):
    with open(path, "wb") as f:
        np.save(f, np.arange(3))


def _missing_array(path, good):
    with np.load(good) as data:
        arrays = {k: data[k] for k in data.files if k != "weights_1"}
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("corrupt", [
    _truncated, _tail_cut, _garbage, _empty, _foreign_npz, _bad_header,
    _npy_file, _missing_array,
], ids=lambda f: f.__name__.strip("_"))
def test_bad_checkpoint_raises_value_error_naming_the_path(fitted, tmp_path, corrupt):
    m, X, y = fitted
    good = tmp_path / "good.npz"
    m.save(good)
    bad = tmp_path / "bad.npz"
    corrupt(bad, good)
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        fasttn.load(bad)


def test_load_missing_file_and_save_unfitted(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        fasttn.load(tmp_path / "absent.npz")
    with pytest.raises(ValueError, match="not fitted"):
        QCNN.paper().save(tmp_path / "unfitted.npz")
    assert not (tmp_path / "unfitted.npz").exists()


# ----------------------------------------------------------------- 5. learning happens
def test_learns_digits(rng):
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_digits(return_X_y=True)
    X = (X / 16.0).reshape(-1, 8, 8)
    perm = rng.permutation(len(y))
    train, test = perm[:1200], perm[1200:]
    m = QCNN.paper(d=8, feature_map="cos_sin", beta_init=1.0, loss="cross_entropy", epochs=10,
             batch_size=25, random_state=int(rng.integers(2**31)))
    m.fit(X[train], y[train])
    acc = m.score(X[test], y[test])
    print(f"digits held-out accuracy {acc:.3f} ({len(test)} images), "
          f"train accuracy {m.history_[-1]['accuracy']:.3f}")
    assert acc > 0.5  # chance is 0.1; seen 0.70-0.81
    assert m.history_[-1]["loss"] < 0.8 * m.history_[0]["loss"]


# ------------------------------------------------------------------------ 6. bad input
def _X(rng, shape=(30, 8, 8)):
    return rng.uniform(0.0, 1.0, shape)


def _y(rng, n=30):
    return np.arange(n) % 3


def _with(X, index, value):
    X = X.copy()
    X[index] = value
    return X


FIT_ERRORS = {
    # name: (constructor kwargs, X -> X, y -> y, exception, message regex)
    "X-rank-1": ({}, lambda X: X[:, 0, 0], None, ValueError,
                 r"^X: expected images \(n, height, width\) or flat rows \(n, height \* width\), "
                 r"got an array of shape \(30,\)"),
    "X-rank-4": ({}, lambda X: X[None], None, ValueError, r"^X: expected images \(n, height"),
    "X-bool": ({}, lambda X: X > 0.5, None, TypeError, r"^X: expected real numbers, got dtype bool"),
    "X-complex": ({}, lambda X: X + 0j, None, ValueError, r"^X: Complex data not supported"),
    "X-strings": ({}, lambda X: X.astype(str), None, TypeError, r"^X: expected real numbers"),
    "X-nan": ({}, lambda X: _with(X, (3, 2, 1), np.nan), None, ValueError,
              r"^X: expected finite values, got 1 NaN/Inf entries \(first at index "
              r"\(3, 2, 1\)\)"),
    "X-inf": ({}, lambda X: _with(X, (0, 0, 5), -np.inf), None, ValueError,
              r"^X: expected finite values"),
    "X-above-1": ({"input_scaling": "none"}, lambda X: 2 * X, None, ValueError,
                  r"^X: expected pixel values in \[0, 1\]"),
    "X-below-0": ({"input_scaling": "none"}, lambda X: X - 0.5, None, ValueError,
                  r"^X: expected pixel values in \[0, 1\]"),
    "X-uint8-range": ({"input_scaling": "none"}, lambda X: 255.0 * X, None, ValueError,
                      r"scale uint8 images by 1/255"),
    "input_scaling": ({"input_scaling": "minmax"}, None, None, ValueError,
                      r"^input_scaling: expected one of \['auto', 'none'\], got 'minmax'"),
    "image_shape-pixels": ({"image_shape": (4, 4)}, lambda X: X.reshape(len(X), -1), None,
                           ValueError, r"^X: rows of 64 features do not make images of "
                           r"image_shape=\(4, 4\)"),
    "image_shape-images": ({"image_shape": (4, 16)}, None, None, ValueError,
                           r"^X: expected images of image_shape=\(4, 16\), got 8x8"),
    "image_shape-bad": ({"image_shape": 8}, None, None, ValueError,
                        r"^image_shape: expected \(height, width\), got 8"),
    "X-empty": ({}, lambda X: X[:0], lambda y: y[:0], ValueError,
                r"^X: expected at least one image, got 0"),
    "X-not-power-of-two": ({}, lambda X: X[:, :6, :], None, ValueError,
                           r"^X: expected image height and width that are powers of two, got "
                           r"6x8; pass pad=True \(command line: --pad\) to zero-pad to 8x8"),
    "X-2d-not-square": ({"pooling": "2d"}, lambda X: X[:, :4, :], None, ValueError,
                        r"^X: 2d pooling expects square images with a power-of-two side, got "
                        r"4x8; pass pad=True"),
    "y-more-classes": ({}, None, lambda y: np.where(y == 0, 7, y) + (np.arange(30) == 0),
                       ValueError, r"^y: n_classes=3, but y holds 4 distinct labels"),
    "y-one-class": ({"n_classes": None}, None, lambda y: np.zeros_like(y), ValueError,
                    r"^y: expected at least 2 classes to classify, got 1 class \(\[0\]\)"),
    "y-too-short": ({}, None, lambda y: y[:-1], ValueError,
                    r"^y: expected 30 labels \(one per image\), got 29"),
    "y-too-long": ({}, None, lambda y: np.append(y, 0), ValueError, r"^y: expected 30 labels"),
    "y-float-non-integer": ({}, None, lambda y: y + 0.5, ValueError, r"^Unknown label type"),
    "y-float-nan": ({}, None, lambda y: np.where(y == 0, np.nan, y), ValueError,
                    r"Input y contains NaN"),
    "y-rank-2": ({}, None, lambda y: np.stack([y, y], 1), ValueError,
                 r"^y: expected a 1-dimensional array of labels"),
    "pooling": ({"pooling": "3d"}, None, None, ValueError,
                r"^pooling: expected one of \['1d', '2d'\], got '3d'"),
    "loss": ({"loss": "hinge"}, None, None, ValueError, r"^loss: expected one of .*'hinge'"),
    "domain": ({"domain": "complex"}, None, None, ValueError,
               r"^domain: expected one of \['auto', 'linear', 'log'\], got 'complex'"),
    "dtype-float16": ({"dtype": "float16"}, None, None, TypeError,
                      r"^dtype: expected float32 or float64, got float16"),
    "dtype-int": ({"dtype": "int32"}, None, None, TypeError, r"^dtype: expected float32 or "),
    "dtype-nonsense": ({"dtype": "fast"}, None, None, TypeError, r"^dtype: expected float32"),
    "feature_map": ({"feature_map": "wavelet"}, None, None, ValueError,
                    r"^feature_map: expected one of .*'wavelet'"),
    "order": ({"order": "diagonal"}, None, None, ValueError, r"^order: expected one of"),
    "widths-too-few": ({"widths": [4, 4]}, None, None, ValueError,
                       r"^widths: expected 6 level widths for this image size, got 2"),
    "widths-too-many-2d": ({"widths": [4] * 6, "pooling": "2d"}, None, None, ValueError,
                           r"^widths: expected 3 level widths for this image size, got 6"),
    "n_classes-1": ({"n_classes": 1}, None, None, ValueError, r"^n_classes: expected at least 2"),
    "d-0": ({"d": 0}, None, None, ValueError, r"^d: expected a positive integer, got 0"),
    "n_features-odd": ({"n_features": 3}, None, None, ValueError,
                       r"^n_features: the fourier map needs an even count"),
    "n_features-cos_sin": ({"feature_map": "cos_sin", "n_features": 1}, None, None, ValueError,
                           r"^n_features: the cos_sin map needs at least 2 channels"),
    "batch_size-0": ({"batch_size": 0}, None, None, ValueError, r"^batch_size: expected a "),
    "epochs-0": ({"epochs": 0}, None, None, ValueError, r"^epochs: expected a positive"),
    "widths-zero": ({"widths": [4, 0, 4, 4, 4, 4]}, None, None, ValueError,
                    r"^widths: expected positive"),
    "widths-negative": ({"widths": [4, 4, -1, 4, 4, 4]}, None, None, ValueError,
                        r"^widths: expected positive"),
}


@pytest.mark.parametrize("kwargs,fx,fy,exc,match", list(FIT_ERRORS.values()),
                         ids=list(FIT_ERRORS))
def test_fit_rejects_bad_input(rng, kwargs, fx, fy, exc, match):
    X, y = _X(rng), _y(rng)
    X = fx(X) if fx else X
    y = fy(y) if fy else y
    m = QCNN.paper(**{"n_classes": 3, "d": 2, "epochs": 1, **kwargs})
    params = m.get_params()
    with pytest.raises(exc, match=match):
        m.fit(X, y)
    assert m.get_params() == params  # hyper-parameters are stored unchanged
    assert not hasattr(m, "weights_")


def test_fit_accepts_integer_valued_float_labels_and_lists(rng):
    X, y = _X(rng), _y(rng)
    m = QCNN.paper(n_classes=3, d=2, epochs=1, random_state=0).fit(X, y.astype(np.float64))
    m2 = QCNN.paper(n_classes=3, d=2, epochs=1, random_state=0).fit(X.tolist(), y.tolist())
    np.testing.assert_array_equal(m.decision_function(X), m2.decision_function(X))


def test_fit_accepts_other_dtypes_layouts_and_ranges(rng):
    """uint8 pixels, flat rows, integers, float16 and out-of-range values: the same model
    as the equivalent float images in [0, 1] (uint8 by 1/255, others by the training
    range), and predictions clip values past that range."""
    X, y = _X(rng), _y(rng)
    kw = dict(n_classes=3, d=2, epochs=1, random_state=0, dtype="float64")
    Xq = np.round(X * 255) / 255
    ref = QCNN.paper(**kw).fit(Xq, y)
    want = ref.decision_function(Xq)
    u8 = QCNN.paper(**kw).fit((Xq * 255).astype(np.uint8), y)
    assert u8.input_scale_ == 1 / 255 and u8.input_offset_ == 0
    np.testing.assert_allclose(u8.decision_function((Xq * 255).astype(np.uint8)), want,
                               rtol=1e-9)
    flat = QCNN.paper(**kw).fit(Xq.reshape(30, 64), y)
    assert flat.input_shape_ == (8, 8) and flat.n_features_in_ == 64
    np.testing.assert_allclose(flat.decision_function(Xq.reshape(30, 64)), want, rtol=1e-9)
    np.testing.assert_allclose(flat.decision_function(Xq), want, rtol=1e-9)  # images too
    shifted = QCNN.paper(**kw).fit(4 * Xq - 2, y)  # standardised-looking values
    assert shifted.input_offset_ == pytest.approx(4 * Xq.min() - 2)
    lo, hi = Xq.min(), Xq.max()
    np.testing.assert_allclose(shifted.decision_function(4 * Xq - 2),
                               ref.decision_function((Xq - lo) / (hi - lo)), rtol=1e-6)
    # values beyond the training range are clipped to it
    np.testing.assert_array_equal(shifted.predict(4 * Xq - 2 + 100),
                                  shifted.predict(np.full_like(Xq, 4 * hi - 2)))
    rows = QCNN.paper(**kw, pad=True).fit(rng.integers(0, 2, (30, 6)), y)  # one row of 6
    assert rows.input_shape_ == (1, 6) and rows.network_shape_ == (1, 8)
    assert QCNN.paper(**kw).fit(X.astype(np.float16), y).predict(X).shape == (30,)


@pytest.mark.parametrize("pooling,shape,padded", [("1d", (6, 8), (8, 8)),
                                                  ("1d", (5, 3), (8, 4)),
                                                  ("2d", (4, 8), (8, 8)),
                                                  ("2d", (7, 7), (8, 8))])
def test_pad_makes_any_size_work(rng, pooling, shape, padded):
    X, y = _X(rng, (30,) + shape), _y(rng)
    m = QCNN.paper(n_classes=3, d=2, epochs=1, pooling=pooling, pad=True).fit(X, y)
    assert m.padded_shape_ == m.image_shape_ == m.network_shape_ == padded
    assert m.input_shape_ == shape and m.n_features_in_ == shape[0] * shape[1]
    levels = (padded[0] * padded[1]).bit_length() - 1
    assert m.n_levels_ == (levels if pooling == "1d" else levels // 2)
    pred = m.predict(X)
    assert pred.shape == (30,) and np.all((0 <= pred) & (pred < 3))
    with pytest.raises(ValueError, match=re.escape(f"X: expected images of shape {shape}")):
        m.predict(_X(rng, (2,) + padded))


PREDICT_ERRORS = {
    "shape": (lambda X: X[:, :4, :4], ValueError,
              r"^X: expected images of shape \(8, 8\) \(as in fit\), got \(4, 4\)"),
    "rank": (lambda X: X[0], ValueError,
             r"^X has 8 features, but QCNN is expecting 64 features as input"),
    "flat-width": (lambda X: X.reshape(len(X), -1)[:, :60], ValueError,
                   r"^X has 60 features, but QCNN is expecting 64 features as input"),
    "nan": (lambda X: _with(X, (1, 1, 1), np.nan), ValueError, r"^X: expected finite values"),
    "bool": (lambda X: X > 0.5, TypeError, r"^X: expected real numbers, got dtype bool"),
}


@pytest.mark.parametrize("method", ["predict", "decision_function", "score"])
@pytest.mark.parametrize("fx,exc,match", list(PREDICT_ERRORS.values()), ids=list(PREDICT_ERRORS))
def test_predict_rejects_bad_input(fitted, method, fx, exc, match):
    m, X, y = fitted
    args = (fx(X), y) if method == "score" else (fx(X),)
    with pytest.raises(exc, match=match):
        getattr(m, method)(*args)


def test_score_rejects_labels_of_wrong_length(fitted):
    m, X, y = fitted
    with pytest.raises(ValueError, match=r"^y: expected 30 labels \(one per image\), got 25"):
        m.score(X, y[:-5])


@pytest.mark.parametrize("method", ["predict", "decision_function", "score"])
def test_predict_before_fit_raises(rng, method):
    X, y = _X(rng), _y(rng)
    args = (X, y) if method == "score" else (X,)
    with pytest.raises(ValueError, match=r"^QCNN is not fitted yet; call fit first"):
        getattr(QCNN.paper(), method)(*args)


# --------------------------------------------------------------- 7. parameter count
@pytest.mark.parametrize("d", [2, 4, 18])
def test_parameter_count_matches_paper(rng, d):
    m = QCNN.paper(n_classes=10, d=d, pooling="1d")
    m._check_config()
    m._setup((16, 16))
    m._init_params(rng)
    assert m.n_levels_ == 8 and m.widths_ == [d * (l + 1) for l in range(1, 9)]
    assert m.n_params_ == 240 * d**2 + 180 * d  # q-CNN eq. 47
    if d == 18:
        assert m.n_params_ == 81_000
    # 2x2 pooling: 4 levels of widths 2d..5d, the same counting gives 40 d^2 + 80 d
    m2 = QCNN.paper(n_classes=10, d=d, pooling="2d")
    m2._check_config()
    m2._setup((16, 16))
    m2._init_params(rng)
    assert m2.n_params_ == 40 * d**2 + 80 * d


def test_parameter_count_after_fit(rng):
    X, y = _X(rng, (12, 16, 16)), np.arange(12) % 10
    m = QCNN.paper(d=2, epochs=1, batch_size=6).fit(X, y)
    assert m.n_params_ == 240 * 4 + 180 * 2
    assert m.n_params_ == sum(p.size for p in m.weights_ + m.gammas_ + m.betas_)


def test_cli_train_qcnn_with_validation_split_and_augmentation(tmp_path, capsys):
    from fasttn.cli import main

    hist = tmp_path / "h.json"
    assert main(["train", "qcnn", "--n-train", "200", "--n-test", "50", "--epochs", "2",
                 "--size", "8", "--augment-shift", "1", "--val-split", "0.2", "--restore-best",
                 "--quiet", "--history", str(hist)]) == 0
    out = capsys.readouterr().out
    assert "validation: 40 images held out" in out and "best epoch" in out
    record = json.loads(hist.read_text())
    assert len(record["history"]) == 2 and 0 <= record["test_accuracy"] <= 1
    assert main(["train", "qcnn", "--epochs", "1", "--restore-best", "--quiet"]) == 2
    assert main(["train", "qcnn", "--epochs", "1", "--val-split", "1.5", "--quiet"]) == 2


# ------------------------------------------------- 8. separate weights per window position
def _swap_halves(X):
    """Upper and lower halves exchanged: the two subtrees of the top of row-major pooling."""
    h = X.shape[1] // 2
    return np.concatenate([X[:, h:], X[:, :h]], axis=1)


def _swap_in_blocks(X):
    """The two upper pixels of every 2x2 block exchanged (siblings under 2x2 pooling)."""
    Y = X.copy()
    Y[:, 0::2, 0::2], Y[:, 0::2, 1::2] = X[:, 0::2, 1::2], X[:, 0::2, 0::2]
    return Y


@pytest.mark.parametrize("pooling,swap", [("1d", _swap_halves), ("2d", _swap_in_blocks)])
def test_separate_child_weights_break_the_sibling_swap_symmetry(rng, pooling, swap):
    X, _ = images(rng, 6, (8, 8))
    Xs = swap(X)
    assert not np.allclose(X, Xs)
    for domain in ("linear", "log", "scaled"):
        shared = make_model(rng, (8, 8), d=4, n_classes=3, pooling=pooling)
        set_running_stats(shared, rng, shared._sites(X))
        a = shared._forward_backward(shared._sites(X), None, False, domain)[0]
        b = shared._forward_backward(shared._sites(Xs), None, False, domain)[0]
        np.testing.assert_allclose(a, b, rtol=1e-9)  # the paper's model cannot tell them apart
        sep = make_model(rng, (8, 8), d=4, n_classes=3, pooling=pooling,
                         child_weights="separate")
        set_running_stats(sep, rng, sep._sites(X))
        a = sep._forward_backward(sep._sites(X), None, False, domain)[0]
        b = sep._forward_backward(sep._sites(Xs), None, False, domain)[0]
        assert np.min(np.abs(a - b) / (np.abs(a) + np.abs(b))) > 1e-6


@pytest.mark.parametrize("training", [True, False], ids=["batch-stats", "running-stats"])
@pytest.mark.parametrize("pooling", ["1d", "2d"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_separate_child_weights_agree_across_domains(rng, dtype, pooling, training):
    m = make_model(rng, (8, 8), d=4, n_classes=4, pooling=pooling, loss="cross_entropy",
                   child_weights="separate", dtype=dtype_name(dtype))
    X, y = images(rng, 8, (8, 8), 4)
    chains = m._sites(X)
    set_running_stats(m, rng, chains)
    s_lin, _, l_lin, g_lin, _ = m._forward_backward(chains, y, training, "linear")
    s_log, _, l_log, g_log, _ = m._forward_backward(chains, y, training, "log")
    assert_close(s_lin, s_log, dtype, "scores")
    assert abs(l_lin - l_log) <= RTOL[dtype] * max(1.0, abs(l_log)), (l_lin, l_log)
    g_rtol = RTOL[dtype] if dtype == np.float64 else 5e-4
    for l, (a, b) in enumerate(zip(g_lin, g_log)):
        assert a.dtype == dtype and b.dtype == dtype
        assert rel_err(a, b) <= g_rtol, (l, rel_err(a, b))
    if not training:  # prediction runs in the scaled domain
        s_sc = m._forward_backward(chains, None, False, "scaled")[0]
        assert_close(s_sc, s_lin, dtype, "scaled scores")


def test_separate_child_weights_parameters_fit_and_checkpoint(rng, tmp_path):
    for pooling, window in (("1d", 2), ("2d", 4)):
        shared, sep = (QCNN.paper(n_classes=10, d=4, pooling=pooling),
                       QCNN.paper(n_classes=10, d=4, pooling=pooling, child_weights="separate"))
        for m in (shared, sep):
            m._check_config()
            m._setup((8, 8))
            m._init_params(rng)
        conv = sum(w.size for w in shared.weights_[:-1])
        assert sep.n_params_ == shared.n_params_ + (window - 1) * conv
        assert all(w.shape[0] == window * d for w, d in zip(sep.weights_, sep.widths_))
        assert sep.weights_[-1].shape == shared.weights_[-1].shape
    X, y = images(rng, 30, (8, 8), 3)
    m = QCNN.paper(n_classes=3, d=2, epochs=2, batch_size=10, loss="cross_entropy",
             child_weights="separate", random_state=0).fit(X, y)
    path = tmp_path / "sep.npz"
    m.save(path)
    m2 = fasttn.load(path)
    assert m2.child_weights == "separate"
    np.testing.assert_array_equal(m2.decision_function(X), m.decision_function(X))
    with pytest.raises(ValueError, match="child_weights"):
        QCNN.paper(child_weights="unshared").fit(X, y)


def test_separate_child_weights_learn_digits():
    """The acceptance setting in small: 8x8 digits, where the shared model reaches ~0.8."""
    from fasttn.data import load_task

    X_tr, y_tr, X_te, y_te = load_task("digits", seed=0)
    m = QCNN.paper(d=8, feature_map="cos_sin", loss="cross_entropy", beta_init=1.0, epochs=10,
             child_weights="separate", random_state=0).fit(X_tr, y_tr)
    assert m.score(X_te, y_te) >= 0.95


def test_cli_train_qcnn_child_weights(capsys):
    from fasttn.cli import main

    assert main(["train", "qcnn", "--n-train", "100", "--n-test", "50", "--epochs", "1",
                 "--child-weights", "shared", "--quiet"]) == 0
    assert "child_weights='shared'" in capsys.readouterr().out


def test_entropy_of_separate_child_weights(rng):
    """The model's stacked weights reach the Gram recursion per window position (the
    recursion itself is checked against brute force in test_entropy.py)."""
    from fasttn.analysis.entropy import qcnn_model_entropy

    X, y = images(rng, 20, (8, 8), 3)
    m = QCNN.paper(n_classes=3, d=2, epochs=1, child_weights="separate", random_state=0).fit(X, y)
    ent = qcnn_model_entropy(m)
    assert np.all(np.isfinite(ent["per_class"]))
    assert np.all((ent["per_class"] >= 0) & (ent["per_class"] <= ent["max_entropy"] + 1e-12))
    # the same weights read as one shared convolution do not fit the widths
    m.child_weights = "shared"
    with pytest.raises(ValueError, match="weights"):
        qcnn_model_entropy(m)
