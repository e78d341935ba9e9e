"""Where a scanning classifier found its evidence: per-region class evidence of a model with
``evidence_map`` (:class:`fasttn.MERA2D` with a scanning read-out), the regions' boxes on the
input image, and how often the strongest region of a correctly detected positive lies on the
object (the needle of NeedleMNIST).

The functions are duck-typed: any fitted object with ``evidence_map(X, batch_size)``,
``predict(X, batch_size=...)`` (for :func:`localisation_rate`), ``classes_``, ``scan_``,
``window_``, ``window_stride_`` and ``network_shape_`` (``input_shape_`` where inputs are
padded) works.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np
from scipy.special import logsumexp

from .._validate import check_positive_int


def _input_shape(model: Any) -> tuple:
    """The image shape the model takes (a model without ``input_shape_`` reads its network's
    images as they are)."""
    shape = getattr(model, "input_shape_", None) or model.network_shape_
    return tuple(int(v) for v in shape)


def region_boxes(model: Any, input_shape: Optional[Sequence[int]] = None) -> np.ndarray:
    """The boxes of the regions of :meth:`~fasttn.MERA2D.evidence_map`, on the input image.

    Parameters
    ----------
    model : fitted model with ``scan_``, ``window_``, ``window_stride_``, ``network_shape_``
        (and ``input_shape_``)
    input_shape : (height, width), optional
        The shape of the images given to the model; default (and the only shape accepted)
        its fitted ``input_shape_``. It is the argument of the padding: the network's image
        is the input zero-padded, centred, to ``network_shape_``.

    Returns
    -------
    (scan_, scan_, 4) int64
        ``[i, j]``: ``(row, col, height, width)`` of region ``(i, j)`` in input pixel
        coordinates. Nothing is clipped: where the input was padded, a region may start at a
        negative row or column or reach past the input's last one (it then also covers
        padding zeros). With a whole-image read-out (``scan_ == 1``) the one box is the
        network's image.
    """
    fitted = _input_shape(model)
    if input_shape is not None and tuple(int(v) for v in input_shape) != fitted:
        raise ValueError(f"input_shape: the model reads images of shape {fitted}, got "
                         f"{tuple(input_shape)}")
    (h, w), (net_h, net_w) = fitted, tuple(int(v) for v in model.network_shape_)
    # the same centring as the model's padding: input pixel = network pixel - offset
    top, left = (net_h - h) // 2, (net_w - w) // 2
    scan, window, stride = int(model.scan_), int(model.window_), int(model.window_stride_)
    start = np.arange(scan, dtype=np.int64) * stride
    boxes = np.empty((scan, scan, 4), np.int64)
    boxes[..., 0] = start[:, None] - top
    boxes[..., 1] = start[None, :] - left
    boxes[..., 2:] = window
    return boxes


def positive_evidence(model: Any, X: Any, batch_size: int = 64,
                      cls: Optional[int] = None) -> np.ndarray:
    """Each region's evidence for one class, as log-odds.

    Parameters
    ----------
    model : fitted model with ``evidence_map`` and ``classes_``
    X : images the model takes, (n, height, width) or flat rows
    batch_size : int
        Images per forward pass.
    cls : int, optional
        Index (into ``model.classes_``) of the class whose evidence is returned: its score
        minus the log-sum-exp of the other classes' scores. Default: a two-class model's
        second class (NeedleMNIST: "needle present"), for which this is
        ``ev[..., 1] - ev[..., 0]``; a model of more classes needs ``cls``.

    Returns
    -------
    (n, scan_, scan_) float64
    """
    return _log_odds(_evidence_map(model, X, batch_size), cls)


def _evidence_map(model: Any, X: Any, batch_size: int) -> np.ndarray:
    """``model.evidence_map(X)`` as float64, its shape checked."""
    n_classes = len(model.classes_)
    ev = np.asarray(model.evidence_map(X, batch_size=check_positive_int("batch_size",
                                                                        batch_size)),
                    np.float64)
    if ev.ndim != 4 or ev.shape[-1] != n_classes:
        raise ValueError(f"model: evidence_map returned shape {ev.shape}, expected "
                         f"(n, scan, scan, {n_classes})")
    return ev


def _log_odds(ev: np.ndarray, cls: Optional[int]) -> np.ndarray:
    """Class ``cls``'s score minus the log-sum-exp of the others', per region."""
    n_classes = ev.shape[-1]
    if cls is None:
        if n_classes != 2:
            raise ValueError(f"model: the positive evidence needs a two-class detector, got "
                             f"{n_classes} classes (pass cls to pick one)")
        cls = 1
    if isinstance(cls, bool) or not isinstance(cls, (int, np.integer)) \
            or not 0 <= cls < n_classes:
        raise ValueError(f"cls: expected a class index in [0, {n_classes}), got {cls!r}")
    others = np.delete(ev, cls, axis=-1)
    if others.shape[-1] == 1:  # exact difference for two classes, no log/exp round trip
        return ev[..., cls] - others[..., 0]
    return ev[..., cls] - logsumexp(others, axis=-1)


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether integer boxes ``(row, col, height, width)`` share a pixel (broadcast over the
    leading axes). Box ``(r, c, h, w)`` holds rows ``r .. r+h-1``: two boxes share a row
    when each starts before the other ends."""
    return ((a[..., 0] < b[..., 0] + b[..., 2]) & (b[..., 0] < a[..., 0] + a[..., 2])
            & (a[..., 1] < b[..., 1] + b[..., 3]) & (b[..., 1] < a[..., 1] + a[..., 3]))


def localisation_rate(model: Any, X: Any, y: Any, boxes: Any,
                      batch_size: int = 64) -> Dict[str, Any]:
    """How often the strongest region of a correctly detected positive lies on the object.

    Parameters
    ----------
    model : fitted two-class model with ``evidence_map``, ``predict`` and ``classes_``;
        ``classes_[1]`` is the positive class (NeedleMNIST: 1, needle present)
    X : (n, height, width) or (n, height * width)
        Images of the model's input shape.
    y : (n,)
        Their labels.
    boxes : (n, 4) int
        ``(row, col, height, width)`` of the object in input pixels (e.g.
        ``NeedleMNIST.needle_boxes``); rows of negatives are not read (``-1`` there is fine).
    batch_size : int
        Images per forward pass.

    Returns
    -------
    dict
        ``rate``: ``n_localised / n_correct_positive`` (NaN when there is no correctly
        classified positive); ``n_correct_positive``: positives (``y == classes_[1]``)
        predicted positive; ``n_localised``: those whose highest-evidence region shares at
        least one pixel with the object's box (exact integer intersection); ``chance``: the
        rate a region drawn uniformly at random would score (the mean over those images of
        the fraction of regions touching the box; regions overlap, so it is far from 0 on
        small canvases: about 0.9 for 32-pixel regions every 8 pixels on 64x64 canvases);
        ``best_region`` (n, 2) int64: ``(i, j)`` of every image's highest-evidence region
        (first in row-major order on ties); ``localised`` (n,) bool: which images count in
        ``n_localised``; ``predicted`` (n,): the model's predictions (``model.predict``);
        ``evidence`` (n, scan_, scan_): :func:`positive_evidence`.
    """
    n = len(X)
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"y: expected {n} labels (one per image of X), got shape {y.shape}")
    boxes = np.asarray(boxes)
    if boxes.shape != (n, 4) or boxes.dtype.kind not in "iu":
        raise ValueError(f"boxes: expected integer boxes of shape ({n}, 4) (one per image of "
                         f"X), got shape {boxes.shape}, dtype {boxes.dtype}")
    ev = _evidence_map(model, X, batch_size)
    if ev.shape[0] != n:
        raise ValueError(f"model: evidence_map returned {ev.shape[0]} images for {n}")
    evidence = _log_odds(ev, None)
    # the model's own predictions (they may read shifted copies too: `predict_shift`)
    predicted = np.asarray(model.predict(X, batch_size=batch_size))
    positive = y == model.classes_[1]
    correct = positive & (predicted == y)
    if np.any(boxes[correct, 2:] <= 0):
        i = int(np.flatnonzero(correct & np.any(boxes[:, 2:] <= 0, axis=1))[0])
        raise ValueError(f"boxes: positive image {i} has no box ({boxes[i].tolist()})")
    scan = evidence.shape[1]
    best = np.stack(np.unravel_index(evidence.reshape(n, -1).argmax(axis=1), (scan, scan)),
                    axis=1).astype(np.int64)
    regions = region_boxes(model)
    boxes = boxes.astype(np.int64)
    localised = correct & _overlap(regions[best[:, 0], best[:, 1]], boxes)
    n_correct, n_localised = int(correct.sum()), int(localised.sum())
    # regions are large and overlap, so many of them touch the object: the rate a region
    # picked at random would score is the baseline to read `rate` against
    on_object = _overlap(regions[None], boxes[correct, None, None]).mean(axis=(1, 2))
    nan = float("nan")
    return {"rate": n_localised / n_correct if n_correct else nan,
            "chance": float(on_object.mean()) if n_correct else nan,
            "n_correct_positive": n_correct, "n_localised": n_localised,
            "best_region": best, "localised": localised, "predicted": predicted,
            "evidence": evidence}
