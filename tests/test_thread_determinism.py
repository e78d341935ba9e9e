"""The same seed gives the same model, to the bit, whatever the number of threads.

The CPU kernels cut their work by problem size (``fasttn.backend.PARTITION_THREADS``), never
by the threads running it, so every partial sum is added in the same order. Each fit runs in
a fresh interpreter: Numba's thread pool is sized once per process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_FITS = """
import hashlib, json
import numpy as np
import fasttn
from fasttn.models.tnn_layers import Dense, TNLayer


def digest(model, X):
    h = hashlib.sha256(np.ascontiguousarray(model.decision_function(X)).tobytes())
    h.update(json.dumps([rec["loss"] for rec in model.history_]).encode())
    return h.hexdigest()


rng = np.random.default_rng(0)
X = rng.uniform(0, 1, (96, 16, 16)).astype(np.float32)
y = np.arange(96) % 3
kw = dict(n_classes=3, epochs=2, batch_size=48, random_state=0, verbose=0)
out = {
    "QCNN": digest(fasttn.QCNN(d=4, **kw).fit(X, y), X),
    "MERA2D": digest(fasttn.MERA2D(chi=2, **kw).fit(X, y), X),
    "TTN2D": digest(fasttn.TTN2D(chi=4, **kw).fit(X, y), X),
}
Xf = rng.uniform(0, 1, (600, 2))
yf = (Xf[:, 0] > Xf[:, 1]).astype(int)
tnn = fasttn.TNN([Dense(64, trainable=False), TNLayer(64, n_sites=6, bond_dim=4,
                                                     activation="relu"),
                  Dense(2, activation="softmax")], solver="sweep", epochs=3, random_state=0)
out["TNN sweep"] = digest(tnn.fit(Xf, yf), Xf)
print(json.dumps(out))
"""


def _fit_digests(threads: int) -> dict:
    env = dict(os.environ, FASTTN_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    env.pop("FASTTN_DISABLE_JIT", None)
    out = subprocess.run([sys.executable, "-c", _FITS], env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.skipif(os.environ.get("FASTTN_DISABLE_JIT", "") not in ("", "0"),
                    reason="the threads are Numba's")
def test_fits_are_bit_identical_on_one_and_three_threads():
    one, three = _fit_digests(1), _fit_digests(3)  # three: chunks that do not split evenly
    differ = [name for name in one if one[name] != three[name]]
    assert not differ, f"results depend on the thread count: {differ}"
