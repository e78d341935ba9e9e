"""Plain PyTorch baselines for NeedleMNIST: a small CNN with global max pooling, and the
training helper that `bench/needle_accuracy.py` uses for it and for ``fasttn.torch.CNNTN``.

The helper trains with Adam and cross-entropy for a fixed number of epochs, scores a
validation split taken from the training canvases after every epoch, and returns the
weights of the best validation epoch (the test set is never looked at here).
"""
from __future__ import annotations

import copy
import time
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn

from fasttn.torch.distributed import evaluate

__all__ = ["GlobalMaxCNN", "validation_split", "train_best_epoch", "evaluate", "n_params"]


class GlobalMaxCNN(nn.Module):
    """Three 3x3 convolutions (32, 64, 64 channels, ReLU, 2x2 max pooling after the first
    two), a global max over positions, and a linear classifier.

    The global max makes the scores depend on the strongest local response wherever it
    is, so a small object anywhere in a large canvas can decide the class.

    Parameters
    ----------
    n_classes : int
    """

    def __init__(self, n_classes: int = 2):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(64, n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores ``(n, n_classes)`` of images ``(n, height, width)`` (the input
        layout of ``fasttn.torch.CNNTN``)."""
        maps = self.features(images[:, None])
        return self.head(maps.amax(dim=(2, 3)))


def n_params(model: nn.Module) -> int:
    """Number of trainable numbers in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def validation_split(X: np.ndarray, y: np.ndarray, fraction: float = 0.1, seed: int = 0
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X_fit, y_fit, X_val, y_val)``: the early-stopping split ``fasttn.MERA2D`` holds
    out of these canvases with ``random_state=seed`` (``ceil(fraction * n)`` images,
    stratified), drawn by the estimators' own rule, so the baselines select their epoch on
    the same canvases as the bare estimator.

    Parameters
    ----------
    X, y : arrays
        The training canvases and their labels (0 .. k-1).
    fraction : float
    seed : int

    Returns
    -------
    X_fit, y_fit, X_val, y_val : arrays, each part in its original order
    """
    import fasttn

    rule = fasttn.MERA2D(random_state=seed, validation_fraction=fraction)
    rule.n_classes_ = int(np.max(y)) + 1  # what fit sets before it holds out
    X_fit, y_fit, X_val, y_val = rule._hold_out(X, y)
    if X_val is None:
        raise ValueError(f"y: too few images per class to hold out {fraction:.0%} "
                         f"({np.bincount(y).tolist()} per class)")
    return X_fit, y_fit, X_val, y_val


@torch.no_grad()
def _val_score(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 500
               ) -> Tuple[float, float]:
    """``(accuracy, -mean cross-entropy)``: the accuracy picks the best epoch, the loss
    breaks ties (the order MERA2D's early stopping uses)."""
    model.eval()
    scores = torch.cat([model(X[i:i + batch_size]) for i in range(0, len(y), batch_size)])
    model.train()
    accuracy = float((scores.argmax(1) == y).float().mean())
    return accuracy, -float(nn.functional.cross_entropy(scores, y))


def train_best_epoch(model: nn.Module, X: np.ndarray, y: np.ndarray, X_val: np.ndarray,
                     y_val: np.ndarray, *, epochs: int = 30, batch_size: int = 32,
                     lr: float = 1e-3, seed: int = 0, patience: Optional[int] = None,
                     verbose: bool = False) -> dict:
    """Train ``model`` with Adam and cross-entropy, then load the best validation epoch.

    Parameters
    ----------
    model : nn.Module
        Maps images ``(n, height, width)`` to class scores.
    X, y : arrays
        Training canvases (float32) and integer labels.
    X_val, y_val : arrays
        The validation canvases, held out from the training set.
    epochs, batch_size : int
    lr : float
        Adam step.
    seed : int
        Seeds the order of the mini-batches.
    patience : int, optional
        Stop after this many epochs without a better validation score; None runs every
        epoch.
    verbose : bool
        Print one line per epoch.

    Returns
    -------
    dict
        ``best_epoch`` (1-based), ``epochs_run``, ``val_accuracy`` (of the best epoch),
        ``seconds`` (training and validation, wall clock), ``history`` (per epoch: loss,
        train accuracy, validation accuracy, seconds).
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    Xt, yt = torch.from_numpy(np.ascontiguousarray(X, np.float32)), torch.from_numpy(
        np.asarray(y, np.int64))
    Xv, yv = torch.from_numpy(np.ascontiguousarray(X_val, np.float32)), torch.from_numpy(
        np.asarray(y_val, np.int64))
    best_score, best_epoch, best_state, history = None, 0, None, []
    model.train()
    t_start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        loss_sum = correct = 0.0
        order = torch.from_numpy(rng.permutation(len(y)))
        for start in range(0, len(y), batch_size):
            idx = order[start:start + batch_size]
            scores = model(Xt[idx])
            loss = nn.functional.cross_entropy(scores, yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += float((scores.argmax(1) == yt[idx]).sum())
        score = _val_score(model, Xv, yv)
        history.append({"epoch": epoch, "loss": loss_sum / len(y), "accuracy": correct / len(y),
                        "val_accuracy": score[0], "seconds": time.perf_counter() - t0})
        if verbose:
            print("  ".join(f"{k} {v:.4g}" for k, v in history[-1].items()), flush=True)
        if best_score is None or score > best_score:
            best_score, best_epoch = score, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif patience is not None and epoch - best_epoch >= patience:
            break
    seconds = time.perf_counter() - t_start
    model.load_state_dict(best_state)
    return {"best_epoch": best_epoch, "epochs_run": len(history),
            "val_accuracy": best_score[0], "seconds": seconds, "history": history}
