"""The per-layer representations every model's ``layer_outputs`` returns, gathered batch
by batch.

Contract: an insertion-ordered dict of ``(n_images, n_features)`` float64 arrays, first
``"input"`` (the feature-mapped pixels), then ``"level 1"``, ``"level 2"``, ... (each
level's output sites, flattened), last ``"scores"`` (as ``decision_function`` gives them).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import numpy as np

from .._validate import check_positive_int


def layer_names(n_levels: int) -> List[str]:
    """``["input", "level 1", ..., "level n_levels", "scores"]``."""
    return ["input"] + [f"level {l}" for l in range(1, n_levels + 1)] + ["scores"]


def gather_layer_outputs(n: int, batch_size: int,
                         forward: Callable[[int, int], Sequence[np.ndarray]]
                         ) -> Dict[str, np.ndarray]:
    """Run ``forward`` over ``[0, n)`` in batches and stack its per-layer arrays.

    Parameters
    ----------
    n : int
        Number of images.
    batch_size : int
        Images per call of ``forward``.
    forward : callable
        ``forward(start, stop)`` returns the layers of images ``start:stop`` in order
        (input, levels, scores), each with ``stop - start`` rows.

    Returns
    -------
    dict of name -> (n, n_features) float64, named by :func:`layer_names`.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    out: Dict[str, np.ndarray] = {}
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        layers = forward(start, stop)
        names = layer_names(len(layers) - 2)
        for name, a in zip(names, layers):
            a = np.asarray(a).reshape(stop - start, -1)
            if name not in out:  # filled in place: the peak is the result plus one batch
                out[name] = np.empty((n, a.shape[1]), np.float64)
            out[name][start:stop] = a
    return out
