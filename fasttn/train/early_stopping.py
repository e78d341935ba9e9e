"""Early stopping: score a held-out set after every epoch, keep the best epoch's state."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional


class BestEpoch:
    """An end-of-epoch hook for :func:`fasttn.train.loop.fit_loop`.

    After every epoch it calls ``score()`` on data held out from training, records its
    first entry (the accuracy) under ``key``, keeps ``snapshot()`` of the best epoch so far
    and, with ``patience``, asks the loop to stop once that many epochs in a row brought no
    better first entry. The best epoch is the highest score compared entry by entry: later
    entries break ties of the accuracy, which a small held-out set makes common (e.g. the
    negative log-loss, so that of two epochs with equal accuracy the more confident one is
    kept).

    Parameters
    ----------
    score : callable
        ``score() -> float or tuple of floats``, higher is better.
    snapshot : callable
        ``snapshot() -> state``: a copy of everything needed to return to this epoch.
    patience : int, optional
        Epochs without improvement before stopping; None never stops early.
    key : str
        The history record's name for the score.
    first_epoch : int
        The number the first epoch of this fit has in the model's history (warm starts
        continue the count).
    """

    def __init__(self, score: Callable[[], float], snapshot: Callable[[], Any],
                 patience: Optional[int] = None, key: str = "val_accuracy",
                 first_epoch: int = 1):
        self.score = score
        self.snapshot = snapshot
        self.patience = patience
        self.key = key
        self.first_epoch = first_epoch
        self.best_score: tuple = (float("-inf"),)
        self.best_epoch: Optional[int] = None
        self.best_state: Any = None
        self._since_best = 0
        self._best_first = float("-inf")

    def __call__(self, epoch: int, record: Dict) -> Dict:
        value = self.score()
        value = tuple(float(v) for v in value) if isinstance(value, tuple) else (float(value),)
        out: Dict[str, Any] = {self.key: value[0]}
        if value[0] > self._best_first:
            self._best_first = value[0]
            self._since_best = 0
        else:
            self._since_best += 1
            if self.patience is not None and self._since_best >= self.patience:
                out["stop"] = True
        if value > self.best_score:
            self.best_score = value
            self.best_epoch = self.first_epoch + epoch
            self.best_state = self.snapshot()
        return out
