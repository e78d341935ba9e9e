"""Early stopping's bookkeeping (the best epoch, its tie-break, patience) and the other
end-of-epoch hooks every image model's fit takes."""
from __future__ import annotations

import numpy as np
import pytest

import fasttn
from fasttn.train.early_stopping import BestEpoch


def _run(scores, patience=None, first_epoch=1):
    it = iter(scores)
    snaps = iter(range(100))
    hook = BestEpoch(lambda: next(it), lambda: next(snaps), patience, first_epoch=first_epoch)
    records = []
    for epoch in range(len(scores)):
        out = hook(epoch, {})
        records.append(out)
        if out.get("stop"):
            break
    return hook, records


def test_best_epoch_and_patience():
    hook, recs = _run([0.5, 0.7, 0.6, 0.7, 0.65, 0.9], patience=3)
    assert [r["val_accuracy"] for r in recs] == [0.5, 0.7, 0.6, 0.7, 0.65]
    assert recs[-1]["stop"] and not any(r.get("stop") for r in recs[:-1])
    assert hook.best_epoch == 2 and hook.best_state == 1 and hook.best_score == (0.7,)


def test_ties_of_the_accuracy_go_to_the_better_second_entry():
    hook, recs = _run([(0.8, -0.5), (0.9, -0.4), (0.9, -0.2), (0.9, -0.3), (0.85, -0.1)],
                      patience=3, first_epoch=11)
    assert hook.best_epoch == 13 and hook.best_score == (0.9, -0.2)
    # patience counts epochs without a better accuracy: the tie at epoch 13 does not reset it
    assert recs[-1].get("stop") and len(recs) == 5


def test_without_patience_it_never_stops():
    hook, recs = _run([0.9, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert len(recs) == 6 and not any(r.get("stop") for r in recs) and hook.best_epoch == 1


@pytest.mark.parametrize("make", [
    lambda: fasttn.QCNN(d=2, epochs=3, early_stopping=False, random_state=0),
    lambda: fasttn.MERA2D(chi=2, epochs=3, early_stopping=False, random_state=0),
    lambda: fasttn.TTN2D(chi=2, epochs=3, early_stopping=False, random_state=0),
], ids=["QCNN", "MERA2D", "TTN2D"])
def test_every_image_model_takes_epoch_callbacks(make):
    rng = np.random.default_rng(0)
    X, y = rng.random((12, 8, 8)), np.arange(12) % 2
    seen = []

    def callback(model, epoch, record):
        seen.append((model, epoch, record["epoch"]))
        return {"callback_epoch": epoch}

    m = make().fit(X, y, callbacks=[callback])
    assert [e for _, e, _ in seen] == [0, 1, 2] and all(model is m for model, _, _ in seen)
    assert [rec["callback_epoch"] for rec in m.history_] == [0, 1, 2]
