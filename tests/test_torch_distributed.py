"""Data-parallel training through torch.distributed: two processes under torchrun (gloo,
loopback) end with the parameters of one process on the same global batches."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fasttn.torch import QCNNLevel  # noqa: E402

COMMON = ["train", "torch", "--model", "qcnn", "--width", "4", "--n-train", "305",
          "--epochs", "1", "--batch-size", "32", "--dtype", "float64", "--quiet", "--seed", "3"]


def _run(cmd, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", FASTTN_NUM_THREADS="1")
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_processes_equal_one(tmp_path):
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    _run([sys.executable, "-m", "fasttn.cli", *COMMON, "--save-params", str(one)], tmp_path)
    out = _run(["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "fasttn.cli",
                *COMMON, "--distributed", "--save-params", str(two)], tmp_path)
    assert "2 process(es)" in out
    a, b = np.load(one), np.load(two)
    assert sorted(a.files) == sorted(b.files) and len(a.files) > 10
    start = _initial_parameters()
    moved = 0
    for k in a.files:
        scale = max(np.abs(a[k]).max(), 1e-30)
        assert np.abs(a[k] - b[k]).max() <= 1e-10 * scale, k
        if k in start and not np.array_equal(start[k], a[k]):
            moved += 1
    assert moved >= 10  # training changed the parameters: the comparison is not vacuous


def _initial_parameters():
    from fasttn.torch import QCNN

    torch.manual_seed(3)
    model = QCNN((8, 8), 10, d=4, dtype=torch.float64)
    return {k: v.numpy() for k, v in model.state_dict().items()}


def test_distributed_needs_torchrun(capsys):
    from fasttn.cli import main

    env = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
           if k in os.environ}
    try:
        assert main([*COMMON, "--distributed"]) == 2
    finally:
        os.environ.update(env)
    assert "expected to run under torchrun" in capsys.readouterr().err


@pytest.mark.parametrize("window", [1, 2])
def test_synchronised_statistics_on_one_process_equal_batch_statistics(window):
    torch.manual_seed(0)
    x = torch.rand(6, 8, 3, dtype=torch.float64, requires_grad=True)
    plain = QCNNLevel(3, 5, window=window, dtype=torch.float64)
    synced = QCNNLevel(3, 5, window=window, sync_stats=True, dtype=torch.float64)
    synced.load_state_dict(plain.state_dict())
    g = torch.randn(6, 8 // window, 5, dtype=torch.float64)
    grads = []
    for layer in (plain, synced):
        out = layer(x)
        grads.append(torch.autograd.grad(out, [x, *layer.parameters()], g))
        grads[-1] = (out,) + grads[-1]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(plain.running_var, synced.running_var, rtol=1e-12, atol=0)
