"""Contraction paths from cotengra, found once per (equation, shapes) and cached.

A path is looked up in memory first, then in a JSON file on disk
(``paths.json`` in :func:`fasttn._cache.user_cache_dir`: ``$FASTTN_CACHE_DIR``, else
``$XDG_CACHE_HOME/fasttn``, else ``~/.cache/fasttn``), and only then searched
for. The search is deterministic (cotengra's greedy and optimal path finders, no random
restarts) so that a cached path and a fresh one agree. ``contract`` runs the path with
``numpy.einsum`` (pairwise BLAS contractions) or with CuPy's einsum for device arrays.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

from ._atomic import atomic_file
from ._cache import user_cache_dir
from .backend import array_module

__all__ = ["ContractionPlan", "contraction_plan", "contract", "cache_path", "clear_memory_cache"]

_LOCK = threading.Lock()
_MEMORY: Dict[str, "ContractionPlan"] = {}
_DISK: Dict[str, Any] | None = None
# Small networks get cotengra's exhaustive optimiser; larger ones its greedy search.
_OPTIMAL_MAX_INPUTS = 8


class ContractionPlan(tuple):
    """``(path, cost)``: a linear einsum path (pairs of operand positions) and its
    multiply-add count as cotengra counts it."""

    __slots__ = ()

    def __new__(cls, path: Sequence[Sequence[int]], cost: float):
        return super().__new__(cls, (tuple(tuple(int(i) for i in p) for p in path), float(cost)))

    @property
    def path(self) -> Tuple[Tuple[int, ...], ...]:
        return self[0]

    @property
    def cost(self) -> float:
        return self[1]


def cache_path() -> Path:
    """The on-disk path cache."""
    return user_cache_dir() / "paths.json"


def _key(eq: str, shapes: Sequence[Sequence[int]]) -> str:
    return eq.replace(" ", "") + "|" + ";".join(",".join(str(int(d)) for d in s) for s in shapes)


def _load_disk() -> Dict[str, Any]:
    global _DISK
    if _DISK is None:
        try:
            with open(cache_path()) as f:
                data = json.load(f)
            _DISK = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            _DISK = {}  # absent or unreadable: start afresh, rewrite on the next save
    return _DISK


def _save_disk(key: str, plan: ContractionPlan) -> None:
    disk = _load_disk()
    disk[key] = [list(map(list, plan.path)), plan.cost]
    target = cache_path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(target) as tmp:
            tmp.write_text(json.dumps(disk))
    except OSError:
        pass  # a read-only home only costs a re-search next time


def _search(eq: str, shapes: Sequence[Sequence[int]]) -> ContractionPlan:
    import cotengra as ctg

    n_inputs = len(shapes)
    if n_inputs == 1:
        return ContractionPlan([(0,)], 0.0)
    optimize = "optimal" if n_inputs <= _OPTIMAL_MAX_INPUTS else "greedy"
    tree = ctg.einsum_tree(eq, *[tuple(int(d) for d in s) for s in shapes], optimize=optimize)
    return ContractionPlan(tree.get_path(), tree.contraction_cost())


def contraction_plan(eq: str, *shapes: Sequence[int]) -> ContractionPlan:
    """The cached contraction path of ``eq`` for operands of ``shapes``.

    Parameters
    ----------
    eq : str
        An explicit einsum equation (``"ab,bc->ac"``).
    *shapes : sequence of int
        One shape per operand.

    Returns
    -------
    ContractionPlan
        ``(path, cost)``; ``cost`` is the multiply-add count, used to choose between
        equivalent ways of applying a network.
    """
    key = _key(eq, shapes)
    plan = _MEMORY.get(key)
    if plan is not None:
        return plan
    with _LOCK:
        plan = _MEMORY.get(key)
        if plan is None:
            stored = _load_disk().get(key)
            if stored is not None:
                plan = ContractionPlan(stored[0], stored[1])
            else:
                plan = _search(eq, shapes)
                _save_disk(key, plan)
            _MEMORY[key] = plan
    return plan


def contract(eq: str, *arrays: Any) -> Any:
    """``einsum(eq, *arrays)`` along the cached cotengra path."""
    plan = contraction_plan(eq, *(a.shape for a in arrays))
    xp = array_module(arrays[0])
    if len(arrays) == 1:
        return xp.einsum(eq, arrays[0])
    return xp.einsum(eq, *arrays, optimize=["einsum_path", *plan.path])


def clear_memory_cache() -> None:
    """Forget the in-memory paths (the disk cache stays); for tests."""
    global _DISK
    with _LOCK:
        _MEMORY.clear()
        _DISK = None
