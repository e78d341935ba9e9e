"""``device=`` of QCNN, MERA2D, TTN2D and TNN: the whole fit on the device, results on the
host.

Three kinds of test:

* plumbing, on any machine: ``fasttn.backend`` is patched so that "cuda" is a recording
  stand-in whose arrays are NumPy arrays tagged as device memory. Training on it must give
  exactly the CPU's parameters and history, move each batch up once (plus the parameters
  once), bring no array back during the fit, keep the learned state on the "device", and
  return plain NumPy arrays from every public result;
* errors: an unknown device, a missing CuPy or GPU (at fit, with the backend's message), the
  CPU-only sweep solvers of TNN;
* GPU, with CuPy and a GPU (skipped elsewhere, as ``test_cuda_generic``): training on the
  device agrees with the CPU to the per-dtype tolerance, parameters and optimizer moments
  are CuPy arrays, checkpoints round-trip, and a 1024x1024 q-CNN step has a finite loss.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Callable, List

import numpy as np
import pytest

import fasttn
from conftest import DTYPES, RTOL, gpu_skip_reason, rel_err
from fasttn import MERA2D, QCNN, TNN, TTN2D, Dense, TNLayer, backend
from fasttn._cuda import CUDAUnavailableError
from fasttn.analysis.entropy import qcnn_model_entropy
from fasttn.models import mera2d as mera2d_module
from fasttn.models import qcnn as qcnn_module
from fasttn.models import tnn as tnn_module
from fasttn.models import ttn2d as ttn2d_module
from fasttn.train import AdamW

TIMING = ("seconds", "images_per_s")  # history entries that differ between any two runs


# ------------------------------------------------------------------------- the cases
@dataclasses.dataclass
class Case:
    make: Callable[..., object]  # make(device=..., dtype=..., **overrides) -> estimator
    X: np.ndarray
    y: np.ndarray
    sample_bytes: Callable[[object], int]  # bytes of one sample as the model moves it up


def _images(n: int, side: int, n_classes: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 1.0, (n, side, side)), rng.integers(0, n_classes, n)


def _tnn_data(seed: int):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(20, 4))
    return X, (X[:, 0] + 0.3 * rng.normal(size=20) > 0).astype(np.int64) + (X[:, 1] > 1)


def _tnn(device="cpu", dtype="float64", **kw):
    layers = [Dense(8, trainable=False),  # widening: fused with the TNLayer after it
              TNLayer(8, n_sites=3, bond_dim=2, activation="relu"),
              TNLayer(8, n_sites=3, bond_dim=2, activation="tanh", method="network"),
              Dense(3, activation="softmax")]
    params = dict(solver="adam", epochs=2, batch_size=7, random_state=3)
    params.update(kw)
    return TNN(layers, dtype=dtype, device=device, **params)


# The image models train on every image (no early-stopping split): the transfer counts
# below are per training image and batch.
_IMAGE_FIT = dict(early_stopping=False)

# The q-CNN configuration these tests were written for, spelled out (the defaults have
# moved to cos_sin features, separate child weights, Z order, cross-entropy); the cases
# below vary it, and "qcnn_defaults" runs the current defaults.
_QCNN_BASE = dict(feature_map="fourier", child_weights="shared", order="row", loss="square",
                  beta_init=0.0, pad=False)


def _qcnn(device="cpu", dtype="float64", **kw):
    params = dict(n_classes=3, d=2, epochs=2, batch_size=6, random_state=1, **_QCNN_BASE,
                  **_IMAGE_FIT)
    params.update(kw)
    return QCNN(dtype=dtype, device=device, **params)


def _ttn(device="cpu", dtype="float64", **kw):
    params = dict(n_classes=3, chi=2, epochs=2, batch_size=5, random_state=2, **_IMAGE_FIT)
    params.update(kw)
    return TTN2D(dtype=dtype, device=device, **params)


def _mera(device="cpu", dtype="float64", **kw):
    params = dict(n_classes=3, chi=2, epochs=2, batch_size=5, random_state=4, **_IMAGE_FIT)
    params.update(kw)
    return MERA2D(dtype=dtype, device=device, **params)


def _pixels_bytes(m) -> int:
    return int(np.prod(m.image_shape_)) * np.dtype(m.dtype).itemsize


def _chain_bytes(m) -> int:
    return int(np.prod(m.padded_shape_)) * np.dtype(m.dtype).itemsize


CASES = {
    "qcnn": Case(_qcnn, *_images(12, 4, 3, 0), _chain_bytes),
    # the log-domain CPU kernels cost the most here: one epoch of two batches
    "qcnn_log_separate": Case(functools.partial(_qcnn, domain="log", child_weights="separate",
                                                loss="cross_entropy", epochs=1),
                              *_images(12, 4, 3, 0), _chain_bytes),
    "qcnn_2d": Case(functools.partial(_qcnn, pooling="2d", child_weights="separate"),
                    *_images(12, 4, 3, 0), _chain_bytes),
    "qcnn_defaults": Case(functools.partial(_qcnn, **{k: QCNN().get_params()[k]
                                                      for k in _QCNN_BASE}),
                          *_images(12, 4, 3, 0), _chain_bytes),
    "ttn": Case(_ttn, *_images(12, 4, 3, 1), _pixels_bytes),
    # 8x8: one level of 4x4 blocks and the 2x2 end block
    "mera": Case(_mera, *_images(12, 8, 3, 3), _pixels_bytes),
    # 2x2 patches on 16x16, the norm constraint; the isometric one (polar retractions)
    "mera_patch_norm": Case(functools.partial(_mera, patch=2, constraint="norm"),
                            *_images(12, 16, 3, 4), _pixels_bytes),
    "mera_isometric": Case(functools.partial(_mera, constraint="isometric"),
                           *_images(12, 8, 3, 5), _pixels_bytes),
    # a scanning read-out: 16x16 regions every 8 pixels of 32x32 images, scores pooled
    "mera_window": Case(functools.partial(_mera, window=16, patch=2, level_map="relu"),
                        *_images(12, 32, 3, 6), _pixels_bytes),
    "ttn_ovr": Case(functools.partial(_ttn, top="ovr"), *_images(12, 4, 3, 1), _pixels_bytes),
    "tnn": Case(_tnn, *_tnn_data(2),
                lambda m: m.n_features_in_ * np.dtype(m.dtype).itemsize),
}


def _n_batches(case: Case, m) -> int:
    n = len(case.y)
    return m.epochs * -(-n // (m.batch_size or n))


def _state(m) -> dict:
    return m._state_arrays()


def _history(m) -> str:
    """The history without timings, as JSON text (so that NaN equals NaN)."""
    return json.dumps([{k: v for k, v in rec.items() if k not in TIMING}
                       for rec in m.history_], sort_keys=True)


def _outputs(m, X, y) -> dict:
    """Every public array result of a fitted model, by name."""
    out = {"predict": m.predict(X), "decision_function": m.decision_function(X)}
    if isinstance(m, QCNN):
        out["decision_function_log"] = m.decision_function(X, log=True)
        out.update({f"layer {k}": v for k, v in m.layer_outputs(X).items()})
        ent = qcnn_model_entropy(m)
        out["entropy"] = ent["per_class"]
    elif isinstance(m, MERA2D):
        out["log_scale"] = m.log_scale(X)
        out.update({f"layer {k}": v for k, v in m.layer_outputs(X).items()})
    elif isinstance(m, TTN2D):
        out["log_scale"] = m.log_scale(X)
        out.update({f"layer {k}": v for k, v in m.layer_outputs(X).items()})
        out["environments"] = m.environments(X, y, 0)
    else:
        out["predict_proba"] = m.predict_proba(X)
        out["bond_entropies"] = m.bond_entropies()
    return out


def _flat(outputs: dict):
    for name, value in outputs.items():
        items = value if isinstance(value, (tuple, list)) else [value]
        for k, a in enumerate(items):
            yield f"{name}[{k}]", a


# ------------------------------------------------------------ the recording stand-in
class OnDevice(np.ndarray):
    """A NumPy array standing for one in GPU memory. NumPy arithmetic keeps the tag, so what
    is derived from device arrays stays tagged; a host copy (``to_numpy``) is untagged."""


# Under NumPy's name: fasttn's validators pass NumPy (and CuPy) arrays through unchanged and
# convert anything else, which would drop the tag.
OnDevice.__module__ = "numpy.fasttn_test_device"


@dataclasses.dataclass
class Transfers:
    up: List[int] = dataclasses.field(default_factory=list)    # bytes per host -> device copy
    down: List[int] = dataclasses.field(default_factory=list)  # bytes per copy to the host

    def clear(self) -> None:
        self.up.clear()
        self.down.clear()


@pytest.fixture
def fake_cuda(monkeypatch):
    """``device="cuda"`` as NumPy: ``get_module`` gives NumPy, ``to_device`` copies into an
    :class:`OnDevice` array (none for one already there, as ``cupy.asarray``) and every
    copy is recorded, as is every array asked back for the host."""
    real_to_device, real_get_module = backend.to_device, backend.get_module
    rec = Transfers()

    def to_device(x, device):
        if device == "cuda":
            if isinstance(x, OnDevice):
                return x
            a = np.array(x, copy=True).view(OnDevice)
            rec.up.append(a.nbytes)
            return a
        rec.down.append(np.asarray(x).nbytes)
        if isinstance(x, OnDevice):
            return np.array(x, copy=True)  # a plain host array
        return real_to_device(x, device)

    def get_module(device):
        return np if device == "cuda" else real_get_module(device)

    monkeypatch.setattr(backend, "to_device", to_device)
    monkeypatch.setattr(backend, "get_module", get_module)
    return rec


def _assert_on_host(outputs: dict) -> None:
    for name, a in _flat(outputs):
        assert type(a) is np.ndarray, f"{name}: a {type(a).__name__}, not a NumPy array"


# ------------------------------------------------------------------- plumbing tests
@pytest.mark.parametrize("name", sorted(CASES))
def test_device_fit_equals_cpu_and_moves_each_batch_once(fake_cuda, name):
    case = CASES[name]
    cpu = case.make(device="cpu").fit(case.X, case.y)
    assert fake_cuda.up == [], "device='cpu' copied arrays to the device"
    assert not any(isinstance(a, OnDevice) for a in _state(cpu).values())

    fake_cuda.clear()
    dev = case.make(device="cuda").fit(case.X, case.y)
    # the learned state lives on the device (running statistics included) ...
    state = _state(dev)
    off = [k for k, a in state.items() if not isinstance(a, OnDevice)]
    assert not off, f"not on the device after fit: {off}"
    # ... and training there is the same arithmetic
    assert _state(cpu).keys() == state.keys()
    for k, a in _state(cpu).items():
        np.testing.assert_array_equal(a, state[k], err_msg=k)
        assert a.dtype == state[k].dtype, k
    assert _history(dev) == _history(cpu)

    # the parameters once, then each batch once: its images (in the model dtype) and labels
    batches = _n_batches(case, dev)
    state_bytes = sum(a.nbytes for a in state.values())
    data_bytes = dev.epochs * len(case.y) * (case.sample_bytes(dev) + 8)
    assert len(fake_cuda.up) == len(state) + 2 * batches, fake_cuda.up
    assert sum(fake_cuda.up) == state_bytes + data_bytes, (sum(fake_cuda.up), state_bytes,
                                                         data_bytes)
    assert fake_cuda.down == [], f"arrays came back to the host during fit: {fake_cuda.down}"

    # results: NumPy, equal to the CPU model's
    got, want = _outputs(dev, case.X, case.y), _outputs(cpu, case.X, case.y)
    _assert_on_host(got)
    for (name_, a), (_, b) in zip(_flat(got), _flat(want)):
        np.testing.assert_array_equal(a, b, err_msg=name_)
    assert dev.score(case.X, case.y) == cpu.score(case.X, case.y)


def test_ttn_sweeps_on_the_device_equal_cpu(fake_cuda):
    case = CASES["ttn"]
    cpu = case.make(solver="sweep").fit(case.X, case.y)
    fake_cuda.clear()
    dev = case.make(solver="sweep", device="cuda").fit(case.X, case.y)
    for k, a in _state(cpu).items():
        np.testing.assert_array_equal(a, _state(dev)[k], err_msg=k)
        assert isinstance(_state(dev)[k], OnDevice), k
    assert _history(dev) == _history(cpu)
    # each pass over the data (one per level, one for the fidelity) moves each chunk (here
    # the whole set) once, images and labels
    passes = dev.epochs * (dev.n_levels_ + 1)
    assert len(fake_cuda.up) == dev.n_levels_ + 2 * passes, fake_cuda.up
    assert fake_cuda.down == []
    assert dev.isometry_errors() == cpu.isometry_errors()


def test_warm_start_keeps_the_state_on_the_device(fake_cuda):
    case = CASES["qcnn"]
    m = case.make(device="cuda", epochs=1).fit(case.X, case.y)
    fake_cuda.clear()
    m.fit(case.X, case.y, warm_start=True)
    assert len(fake_cuda.up) == 2 * _n_batches(case, m), "warm start re-sent the parameters"
    assert all(isinstance(a, OnDevice) for a in _state(m).values())
    cpu = case.make(epochs=1).fit(case.X, case.y)
    cpu.fit(case.X, case.y, warm_start=True)
    for k, a in _state(cpu).items():
        np.testing.assert_array_equal(a, _state(m)[k], err_msg=k)


@pytest.mark.parametrize("name", ["qcnn", "mera", "ttn", "tnn"])
def test_checkpoints_hold_host_arrays_and_load_onto_the_saved_device(fake_cuda, tmp_path,
                                                                     name):
    case = CASES[name]
    m = case.make(device="cuda").fit(case.X, case.y)
    path = tmp_path / "model.npz"
    fake_cuda.clear()
    m.save(path)
    assert len(fake_cuda.down) == len(_state(m)), "save did not copy the arrays to the host"
    # the format of a CPU model's checkpoint: the same arrays, the device a parameter
    cpu_path = tmp_path / "cpu.npz"
    case.make().fit(case.X, case.y).save(cpu_path)
    with np.load(path, allow_pickle=False) as data, \
            np.load(cpu_path, allow_pickle=False) as cpu_data:
        assert sorted(data.files) == sorted(cpu_data.files)
        header = json.loads(data["__header__"].tobytes().decode())
        cpu_header = json.loads(cpu_data["__header__"].tobytes().decode())
        for k, a in _state(m).items():
            np.testing.assert_array_equal(data[k], a, err_msg=k)
            assert data[k].dtype == cpu_data[k].dtype, k
    assert header["params"] == {**cpu_header["params"], "device": "cuda"}
    assert header["meta"].keys() == cpu_header["meta"].keys()
    want = _outputs(m, case.X, case.y)

    fake_cuda.clear()
    loaded = fasttn.load(path)
    assert loaded.device == "cuda"
    assert all(isinstance(a, OnDevice) for a in _state(loaded).values())
    assert len(fake_cuda.up) == len(_state(m))  # the parameters, once
    on_cpu = fasttn.load(path, device="cpu")
    assert on_cpu.device == "cpu"
    assert not any(isinstance(a, OnDevice) for a in _state(on_cpu).values())
    for model in (loaded, on_cpu):
        got = _outputs(model, case.X, case.y)
        _assert_on_host(got)
        for (k, a), (_, b) in zip(_flat(got), _flat(want)):
            np.testing.assert_array_equal(a, b, err_msg=k)


def test_a_checkpoint_without_device_loads_on_the_cpu(tmp_path):
    case = CASES["tnn"]
    m = case.make().fit(case.X, case.y)
    path = tmp_path / "model.npz"
    m.save(path)
    # a checkpoint written before models had a device parameter
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(arrays["__header__"].tobytes().decode())
    del header["params"]["device"]
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    old = tmp_path / "old.npz"
    np.savez(old, **arrays)
    loaded = fasttn.load(old)
    assert loaded.device == "cpu"
    np.testing.assert_array_equal(loaded.predict(case.X), m.predict(case.X))


# ----------------------------------------------------------------------- errors
@pytest.mark.parametrize("name", ["qcnn", "mera", "ttn", "tnn"])
def test_unknown_device_is_refused_at_fit(name):
    case = CASES[name]
    m = case.make(device="gpu")  # the constructor only stores it
    assert m.get_params()["device"] == "gpu"
    with pytest.raises(ValueError, match=r"device: expected one of \['cpu', 'cuda'\], got 'gpu'"):
        m.fit(case.X, case.y)


def test_load_refuses_an_unknown_device(tmp_path):
    case = CASES["tnn"]
    path = tmp_path / "m.npz"
    case.make().fit(case.X, case.y).save(path)
    with pytest.raises(ValueError, match=r"device: expected one of \['cpu', 'cuda'\]"):
        fasttn.load(path, device="tpu")


@pytest.mark.parametrize("name", ["qcnn", "mera", "ttn", "tnn"])
def test_cuda_without_cupy_fails_at_fit_with_the_backend_message(name):
    if gpu_skip_reason() is None:
        pytest.skip("CuPy sees a GPU here")
    with pytest.raises(CUDAUnavailableError) as expected:
        backend.get_module("cuda")
    case = CASES[name]
    m = case.make(device="cuda")  # no error before fit
    with pytest.raises(CUDAUnavailableError) as got:
        m.fit(case.X, case.y)
    assert str(got.value) == str(expected.value)
    assert "CuPy" in str(got.value) and "device='cpu'" in str(got.value)
    assert not hasattr(m, "history_")  # failed before any work


def test_tnn_sweep_solvers_refuse_cuda():
    case = CASES["tnn"]
    m = case.make(device="cuda", solver="sweep")
    with pytest.raises(ValueError, match=r"solver: the sweep solvers .*run on the CPU only; "
                                         r"use solver='adam'"):
        m.fit(case.X, case.y)


def test_cli_device_flag(capsys):
    from fasttn.cli import build_parser, main

    parser = build_parser()
    for model in ("qcnn", "mera", "ttn", "tnn"):
        assert parser.parse_args(["train", model]).device == "cpu"
        assert parser.parse_args(["train", model, "--device", "cuda"]).device == "cuda"
        with pytest.raises(SystemExit):
            parser.parse_args(["train", model, "--device", "gpu"])
    capsys.readouterr()
    argv = ["train", "tnn", "--task", "blobs", "--sweeps", "1", "--quiet", "--device", "cuda"]
    assert main(argv) == 2
    assert "the sweep solvers ('sweep') run on the CPU only" in capsys.readouterr().err
    if gpu_skip_reason() is not None:
        assert main(argv + ["--solver", "adam"]) == 2
        assert "fasttn: CUDA needs CuPy" in capsys.readouterr().err


# -------------------------------------------------------------------------- GPU tests
@pytest.fixture
def optimizers(monkeypatch):
    """Every AdamW the models make, kept for inspection."""
    made = []

    class Recording(AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    for module in (qcnn_module, mera2d_module, ttn2d_module, tnn_module):
        monkeypatch.setattr(module, "AdamW", Recording)
    return made


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", sorted(CASES))
def test_gpu_training_agrees_with_cpu(cupy_gpu, optimizers, name, dtype):
    case = CASES[name]
    # one Adam step in float32, two in float64 (a whole-set batch per epoch)
    kw = dict(dtype=np.dtype(dtype).name, batch_size=len(case.y),
              epochs=1 if dtype == np.float32 else 2)
    cpu = case.make(device="cpu", **kw).fit(case.X, case.y)
    dev = case.make(device="cuda", **kw).fit(case.X, case.y)
    tol = RTOL[dtype]
    for k, a in _state(dev).items():
        assert isinstance(a, cupy_gpu.ndarray), k
    opt = optimizers[-1]
    assert opt.m and all(isinstance(a, cupy_gpu.ndarray) for a in opt.state_arrays())
    assert all(isinstance(p, cupy_gpu.ndarray) for p in opt.params)
    for rec_cpu, rec_dev in zip(cpu.history_, dev.history_):
        assert abs(rec_dev["loss"] - rec_cpu["loss"]) <= tol * max(1.0, abs(rec_cpu["loss"]))
    got, want = _outputs(dev, case.X, case.y), _outputs(cpu, case.X, case.y)
    _assert_on_host(got)
    for (k, a), (_, b) in zip(_flat(got), _flat(want)):
        if k.startswith(("predict[", "decision_function_log", "entropy", "bond_entropies")):
            continue  # labels and log forms follow the scores; entropies of tiny spectra vary
        # per-layer values and sums over the images round more than the scores
        limit = tol * (10 if k.startswith(("layer", "environments", "log_scale")) else 1)
        assert rel_err(a, b) <= limit, f"{k}: relative error {rel_err(a, b):.2e}"


def test_gpu_ttn_sweeps_agree_with_cpu(cupy_gpu):
    case = CASES["ttn"]
    cpu = case.make(solver="sweep", epochs=1).fit(case.X, case.y)
    dev = case.make(solver="sweep", epochs=1, device="cuda").fit(case.X, case.y)
    assert all(isinstance(w, cupy_gpu.ndarray) for w in dev.weights_)
    assert rel_err(dev.decision_function(case.X), cpu.decision_function(case.X)) <= 1e-8
    assert max(dev.isometry_errors()) <= 1e-10


def test_gpu_checkpoints_round_trip(cupy_gpu, tmp_path):
    for name in ("qcnn", "ttn", "tnn"):
        case = CASES[name]
        m = case.make(device="cuda").fit(case.X, case.y)
        path = tmp_path / f"{name}.npz"
        m.save(path)
        loaded = fasttn.load(path)
        assert all(isinstance(a, cupy_gpu.ndarray) for a in _state(loaded).values())
        on_cpu = fasttn.load(path, device="cpu")
        for k, a in _state(on_cpu).items():
            assert type(a) is np.ndarray
            np.testing.assert_array_equal(a, cupy_gpu.asnumpy(_state(m)[k]), err_msg=k)
        want = m.decision_function(case.X)
        assert rel_err(loaded.decision_function(case.X), want) <= RTOL[np.float64]
        assert rel_err(on_cpu.decision_function(case.X), want) <= RTOL[np.float64]


@pytest.mark.parametrize("domain", ["auto", "log"])
def test_gpu_qcnn_1024_step_has_a_finite_loss(cupy_gpu, domain):
    """One training step on two 1024x1024 images (20 levels of 1d pooling) on the device,
    its loss equal to the CPU's for the same parameters (as ``test_qcnn_model`` -k 1024)."""
    rng = np.random.default_rng(5)
    X = rng.uniform(0.0, 1.0, (2, 1024, 1024))
    y = np.array([0, 2])
    params = dict(n_classes=3, d=2, widths=[4] * 20, pooling="1d", dtype="float64",
                  domain=domain, epochs=1, batch_size=2, random_state=0, **_QCNN_BASE,
                  **_IMAGE_FIT)
    m = QCNN(device="cuda", **params).fit(X, y)
    loss = m.history_[0]["loss"]
    assert np.isfinite(loss) and loss > 0
    for p in m._params():
        assert bool(cupy_gpu.all(cupy_gpu.isfinite(p)))
    la, sg = m.decision_function(X, log=True)
    assert np.all(np.isfinite(la)) and set(np.unique(sg)) <= {-1, 1}

    ref = QCNN(**params)  # the same initial parameters, one step's loss on the CPU
    ref._check_config()
    ref._setup(X.shape[1:])
    ref._init_params(np.random.default_rng(0))
    cpu_loss = ref._forward_backward(ref._sites(X), y, True, ref._train_domain())[2]
    # a product over 2^20 sites: rounding grows like 2^20 eps (see test_qcnn_model)
    assert abs(loss - cpu_loss) <= 1e-8 * cpu_loss
