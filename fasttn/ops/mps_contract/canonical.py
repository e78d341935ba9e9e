"""Gauge changes of an MPS classifier and the entanglement entropy of its bonds.

The chain ``A[0] ... A[center-1] H A[center] ... A[L-1]`` (see ``reference.py``) is viewed
as one list of three-leg tensors ``(left bond, physical, right bond)``, the head's physical
leg being the class. QR decompositions move the non-orthogonal part along the list:

* ``"left"``: every tensor but the last left-orthogonal (``sum_{a,s} T[a,s,b] T[a,s,b'] =
  delta``), the whole norm in the last core;
* ``"right"``: every tensor but the first right-orthogonal;
* ``"mixed"``: left-orthogonal left of the head, right-orthogonal right of it, the norm in
  the head (the form whose head alone carries the class scores' scale).

Every form gives the same scores for every input (up to rounding). Bonds keep the storage
shape ``(L, D, d, D)``: a bond that needs fewer than ``D`` dimensions (near the ends) is
padded with zeros, which changes nothing.

Host (NumPy) arrays, computed in float64 and returned in the input's dtype.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

FORMS = ("left", "right", "mixed")


def _chain(cores: np.ndarray, head: np.ndarray, center: int) -> List[np.ndarray]:
    """The tensors of the chain in order, the open ends cut to their first bond index."""
    ts = [np.array(c, np.float64) for c in cores]
    ts.insert(center, np.array(head, np.float64))
    ts[0] = ts[0][:1]
    ts[-1] = ts[-1][:, :, :1]
    return ts


def _unchain(ts: List[np.ndarray], center: int, shape_cores, shape_head, dtype):
    """Back to the padded storage arrays."""
    cores = np.zeros(shape_cores, dtype)
    head = np.zeros(shape_head, dtype)
    for i, t in enumerate(ts):
        dst = head if i == center else cores[i if i < center else i - 1]
        dst[:t.shape[0], :, :t.shape[2]] = t
    return cores, head


def chain_tensors(cores: np.ndarray, head: np.ndarray, center: int) -> List[np.ndarray]:
    """The chain as a list of float64 tensors ``(left bond, physical, right bond)``, the
    head at position ``center``, the open ends cut to their first bond index (a sweep's
    working form)."""
    return _chain(cores, head, center)


def storage_from_chain(ts: List[np.ndarray], center: int, shape_cores, shape_head,
                       dtype) -> Tuple[np.ndarray, np.ndarray]:
    """``(cores, head)`` padded with zeros to the storage shapes from a list of
    :func:`chain_tensors` (every bond at most the storage bond)."""
    return _unchain(ts, center, shape_cores, shape_head, dtype)


def left_orthogonalize(ts: List[np.ndarray], start: int, stop: int) -> None:
    """QR sweep in place: ``ts[start:stop]`` left-orthogonal, the rest pushed right."""
    _sweep_left(ts, start, stop)


def right_orthogonalize(ts: List[np.ndarray], start: int, stop: int) -> None:
    """QR sweep in place: ``ts[stop:start+1]`` right-orthogonal, the rest pushed left."""
    _sweep_right(ts, start, stop)


def _sweep_left(ts: List[np.ndarray], start: int, stop: int) -> None:
    """Make ``ts[start:stop]`` left-orthogonal, pushing each R factor to the right."""
    for i in range(start, stop):
        a, p, b = ts[i].shape
        q, r = np.linalg.qr(ts[i].reshape(a * p, b))
        ts[i] = q.reshape(a, p, q.shape[1])
        ts[i + 1] = np.einsum("xb,bpc->xpc", r, ts[i + 1])


def _sweep_right(ts: List[np.ndarray], start: int, stop: int) -> None:
    """Make ``ts[stop:start+1]`` right-orthogonal (from ``start`` down), pushing each L
    factor to the left."""
    for i in range(start, stop - 1, -1):
        a, p, b = ts[i].shape
        q, r = np.linalg.qr(ts[i].reshape(a, p * b).T)  # T^T = Q R, so T = R^T Q^T
        ts[i] = q.T.reshape(q.shape[1], p, b)
        ts[i - 1] = np.einsum("apb,xb->apx", ts[i - 1], r)


def canonicalize(cores: np.ndarray, head: np.ndarray, center: int, form: str = "mixed"
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """``(cores, head)`` of the same classifier in a canonical ``form`` (see the module
    notes), in the storage shapes and dtype of the inputs."""
    if form not in FORMS:
        raise ValueError(f"form: expected one of {FORMS}, got {form!r}")
    ts = _chain(cores, head, center)
    last = len(ts) - 1
    if form == "left":
        _sweep_left(ts, 0, last)
    elif form == "right":
        _sweep_right(ts, last, 1)
    else:
        _sweep_left(ts, 0, center)
        _sweep_right(ts, last, center + 1)
    return _unchain(ts, center, cores.shape, head.shape, cores.dtype)


def _entropy(s: np.ndarray) -> float:
    p = s.astype(np.float64) ** 2
    total = p.sum()
    if total <= 0:
        return 0.0
    p = p[p > 0] / total
    return float(-(p * np.log(p)).sum())


def bond_entropies(cores: np.ndarray, head: np.ndarray, center: int) -> np.ndarray:
    """Von Neumann entropy (natural log) of every bond of the normalised chain.

    Returns
    -------
    (L,) float64
        Entry ``i`` is the bond between the ``i``-th and ``(i+1)``-th tensor of the chain
        ``A[0], ..., A[center-1], H, A[center], ..., A[L-1]``: the entropy of the squared
        Schmidt coefficients, normalised, of a cut there (the class leg counting as a site).
    """
    ts = _chain(cores, head, center)
    last = len(ts) - 1
    _sweep_left(ts, 0, center)
    _sweep_right(ts, last, center + 1)
    out = np.zeros(last)
    right = list(ts)  # the orthogonality centre walks right from the head ...
    for i in range(center, last):
        a, p, b = right[i].shape
        u, s, vt = np.linalg.svd(right[i].reshape(a * p, b), full_matrices=False)
        out[i] = _entropy(s)
        right[i] = u.reshape(a, p, -1)
        right[i + 1] = np.einsum("xb,bpc->xpc", s[:, None] * vt, right[i + 1])
    for i in range(center, 0, -1):  # ... and left from it
        a, p, b = ts[i].shape
        u, s, vt = np.linalg.svd(ts[i].reshape(a, p * b), full_matrices=False)
        out[i - 1] = _entropy(s)
        ts[i] = vt.reshape(-1, p, b)
        ts[i - 1] = np.einsum("apb,bx->apx", ts[i - 1], u * s[None, :])
    return out
