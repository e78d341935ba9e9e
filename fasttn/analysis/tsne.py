"""Layer-wise t-SNE and class separation: how the representation of a hierarchical network
sorts the classes level by level (as the t-SNE panels of every layer in the comparison of
hierarchical tensor networks with CNNs).

``layer_tsne(model, X, y)`` runs the whole analysis; :func:`embed_layers` and
:func:`layer_separation` are its two halves, usable on any ``{name: (n, features)}``
mapping. scikit-learn is imported inside the functions, so importing this module is cheap.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np

from .._validate import check_choice, check_positive_int
from ..backend import num_threads

METHODS = ("sklearn", "opentsne")
_EARLY_EXAGGERATION_ITER = 250  # scikit-learn's fixed count; openTSNE's default too


def _check_layers(name: str, layers: Any, n: Optional[int] = None) -> Dict[str, np.ndarray]:
    """A non-empty mapping of layer name -> finite (n, features) arrays, all with n rows."""
    if not isinstance(layers, Mapping):
        raise TypeError(f"{name}: expected a mapping of layer name -> (n, features) array, "
                        f"got {type(layers).__name__}")
    if not layers:
        raise ValueError(f"{name}: expected at least one layer, got an empty mapping")
    out = {}
    for key, a in layers.items():
        a = np.asarray(a)
        if a.ndim != 2 or a.dtype.kind not in "fiu":
            raise ValueError(f"{name}[{key!r}]: expected a 2-dimensional real array "
                             f"(n, features), got shape {a.shape}, dtype {a.dtype}")
        if n is None:
            n = a.shape[0]
        if a.shape[0] != n:
            raise ValueError(f"{name}[{key!r}]: expected {n} rows (one per image, as the "
                             f"other layers), got {a.shape[0]}")
        bad = int(np.sum(~np.isfinite(a)))
        if bad:
            raise ValueError(f"{name}[{key!r}]: expected finite values, got {bad} NaN/Inf "
                             "entries (a deep model's scores can overflow: leave that layer out)")
        out[str(key)] = a.astype(np.float64, copy=False)
    return out


@contextlib.contextmanager
def _thread_limit(n_jobs: Optional[int]) -> Iterator[int]:
    """Cap the OpenMP and BLAS threads of scikit-learn's t-SNE, neighbour searches and PCA.

    t-SNE's gradient is a short OpenMP region per iteration whose threads spin while they
    wait: on 2 cores kept busy by other processes, two threads took 20 s (all of it CPU)
    where one took 0.1 s (90 points, 500 iterations)."""
    from threadpoolctl import threadpool_limits

    for module in ("sklearn.manifold", "sklearn.neighbors"):
        importlib.import_module(module)  # threadpoolctl sees only loaded runtimes

    n = num_threads() if n_jobs is None else check_positive_int("n_jobs", n_jobs)
    with threadpool_limits(limits=n):
        yield n


def reduce_layer(x: np.ndarray, n_components: int = 50, random_state: int = 0) -> np.ndarray:
    """Centre a layer, scale it to unit root-mean-square norm, and project it on its first
    ``n_components`` principal components when it is wider than that.

    One scale for the whole layer (not per feature) keeps its geometry: a constant feature
    channel, or a site that barely varies, is not blown up to the size of the others.

    Parameters
    ----------
    x : (n, features)

    Returns
    -------
    (n, min(features, n_components, n)) float64
    """
    x = np.asarray(x, np.float64)
    x = x - x.mean(axis=0)
    rms = np.sqrt(np.mean(np.sum(x * x, axis=1)))
    if rms > 0:
        x = x / rms
    k = min(n_components, x.shape[0])
    if x.shape[1] <= k:
        return x
    from sklearn.decomposition import PCA

    return PCA(n_components=k, random_state=random_state).fit_transform(x)


def _tsne_sklearn(x: np.ndarray, perplexity: float, random_state: int, max_iter: int,
                  n_jobs: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    # scikit-learn renamed n_iter to max_iter in 1.5
    iters = ("max_iter" if "max_iter" in inspect.signature(TSNE).parameters else "n_iter")
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=random_state, n_jobs=n_jobs, **{iters: max_iter})
    return tsne.fit_transform(x)


def _tsne_opentsne(x: np.ndarray, perplexity: float, random_state: int, max_iter: int,
                   n_jobs: int) -> np.ndarray:
    try:
        import openTSNE
    except ImportError as exc:
        raise ImportError("method='opentsne' needs openTSNE, which is not installed: "
                          "pip install 'fasttn[opentsne]' (or use method='sklearn')") from exc
    tsne = openTSNE.TSNE(n_components=2, perplexity=perplexity, initialization="pca",
                         early_exaggeration_iter=_EARLY_EXAGGERATION_ITER,
                         n_iter=max(max_iter - _EARLY_EXAGGERATION_ITER, 1),
                         random_state=random_state, n_jobs=n_jobs)
    return np.asarray(tsne.fit(x))


def embed_layers(outputs: Mapping[str, np.ndarray], *, perplexity: float = 30.0,
                 random_state: int = 0, max_iter: int = 1000, n_components: int = 50,
                 method: str = "sklearn", n_jobs: Optional[int] = 1
                 ) -> Dict[str, np.ndarray]:
    """A 2-D t-SNE embedding of every layer (PCA initialisation).

    Parameters
    ----------
    outputs : mapping of name -> (n, features)
        E.g. a model's ``layer_outputs(X)``.
    perplexity : float
        Effective number of neighbours; must be below ``n``.
    random_state : int
        Seed of PCA and t-SNE: the same call gives the same embedding.
    max_iter : int
        t-SNE iterations, the 250 of early exaggeration included (at least 250).
    n_components : int
        Wider layers are projected on this many principal components first
        (:func:`reduce_layer`): t-SNE's neighbour search then costs the same at every layer.
    method : {"sklearn", "opentsne"}
        ``opentsne`` needs the openTSNE package (faster on many thousands of points).
    n_jobs : int or None
        Threads of the t-SNE gradient, the neighbour searches and the PCA; ``None``:
        :func:`fasttn.backend.num_threads` (``FASTTN_NUM_THREADS`` or every core). Default
        1: more threads help only on large sets and idle cores, while on cores that other
        processes keep busy they can make t-SNE over 100x slower (waiting threads spin).

    Returns
    -------
    dict of name -> (n, 2) float64, in the order of ``outputs``.
    """
    layers = _check_layers("outputs", outputs)
    check_choice("method", method, METHODS)
    n = next(iter(layers.values())).shape[0]
    if not 0 < perplexity < n:
        raise ValueError(f"perplexity: expected a value in (0, {n}) (below the number of "
                         f"images), got {perplexity!r}")
    max_iter = check_positive_int("max_iter", max_iter)
    if max_iter < _EARLY_EXAGGERATION_ITER:
        raise ValueError(f"max_iter: expected at least {_EARLY_EXAGGERATION_ITER} (the early "
                         f"exaggeration phase), got {max_iter}")
    n_components = check_positive_int("n_components", n_components)
    tsne = _tsne_opentsne if method == "opentsne" else _tsne_sklearn
    with _thread_limit(n_jobs) as threads:
        return {name: tsne(reduce_layer(x, n_components, random_state), perplexity,
                           random_state, max_iter, threads).astype(np.float64)
                for name, x in layers.items()}


def _check_labels(y: Any, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"y: expected {n} labels (one per image), got shape {y.shape}")
    _, counts = np.unique(y, return_counts=True)
    if len(counts) < 2:
        raise ValueError("y: expected at least two classes to measure separation, got "
                         f"{len(counts)}")
    if counts.min() < 2:
        raise ValueError(f"y: expected at least 2 images of every class (for cross-"
                         f"validation), got a class with {counts.min()}")
    return y


def _knn_accuracy(z: np.ndarray, y: np.ndarray, k: int, n_splits: int,
                  random_state: int) -> float:
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    return float(np.mean(cross_val_score(KNeighborsClassifier(n_neighbors=k), z, y, cv=cv)))


def _silhouette(z: np.ndarray, y: np.ndarray, random_state: int) -> float:
    from sklearn.metrics import silhouette_score

    # O(n^2) distances: a fixed random subset beyond 5,000 images
    size = None if len(y) <= 5000 else 5000
    return float(silhouette_score(z, y, sample_size=size, random_state=random_state))


def layer_separation(outputs: Mapping[str, np.ndarray], y: Any, *,
                     embeddings: Optional[Mapping[str, np.ndarray]] = None, k: int = 5,
                     n_splits: int = 5, n_components: int = 50, random_state: int = 0,
                     n_jobs: Optional[int] = 1) -> Dict[str, Dict[str, float]]:
    """How well each layer separates the classes, as numbers.

    Parameters
    ----------
    outputs : mapping of name -> (n, features)
        Layer representations (``layer_outputs``), or 2-D embeddings.
    y : (n,)
        Class labels; at least two classes, two images of each.
    embeddings : mapping of name -> (n, 2), optional
        t-SNE embeddings of (some of) the same layers (:func:`embed_layers`), measured too.
    k : int
        Neighbours of the k-nearest-neighbour classifier.
    n_splits : int
        Stratified cross-validation folds (at most the size of the smallest class).
    n_components : int
        Layers wider than this are measured on their leading principal components
        (:func:`reduce_layer`); kNN and silhouette do not depend on the global scale.
    random_state : int
        Seed of the folds and the PCA.
    n_jobs : int or None
        Threads, as :func:`embed_layers`.

    Returns
    -------
    dict of name -> {"knn_accuracy", "silhouette"} in the layer's own (reduced) space,
    plus ``"knn_accuracy_2d"``, ``"silhouette_2d"`` for the layers in ``embeddings``.
    kNN accuracy is the mean held-out accuracy over the folds (chance: the largest class
    share); silhouette is in [-1, 1], near 0 for mixed classes.
    """
    layers = _check_layers("outputs", outputs)
    n = next(iter(layers.values())).shape[0]
    y = _check_labels(y, n)
    emb = _check_layers("embeddings", embeddings, n) if embeddings is not None else {}
    for name in emb:
        if name not in layers:
            raise ValueError(f"embeddings[{name!r}]: no layer of that name in outputs "
                             f"(layers: {list(layers)})")
    k = check_positive_int("k", k)
    n_splits = check_positive_int("n_splits", n_splits)
    n_components = check_positive_int("n_components", n_components)
    n_splits = min(n_splits, int(np.unique(y, return_counts=True)[1].min()))
    if n_splits < 2:
        raise ValueError(f"n_splits: expected at least 2, got {n_splits}")
    n_train = n - -(-n // n_splits)  # the smallest training fold
    if k > n_train:
        raise ValueError(f"k: expected at most {n_train} (the images of a training fold), "
                         f"got {k}")
    result: Dict[str, Dict[str, float]] = {}
    with _thread_limit(n_jobs):
        for name, x in layers.items():
            z = reduce_layer(x, n_components, random_state)
            scores = {"knn_accuracy": _knn_accuracy(z, y, k, n_splits, random_state),
                      "silhouette": _silhouette(z, y, random_state)}
            if name in emb:
                scores["knn_accuracy_2d"] = _knn_accuracy(emb[name], y, k, n_splits,
                                                          random_state)
                scores["silhouette_2d"] = _silhouette(emb[name], y, random_state)
            result[name] = scores
    return result


@dataclass
class LayerTSNE:
    """Result of :func:`layer_tsne`.

    Attributes
    ----------
    names : tuple of str
        Layers in network order (``"input"``, ``"level 1"``, ..., ``"scores"``).
    embeddings : dict of name -> (n, 2)
    scores : dict of name -> dict of str -> float
        :func:`layer_separation` of each layer, in its own space and in the embedding.
    labels : (n,)
    """

    names: Tuple[str, ...]
    embeddings: Dict[str, np.ndarray]
    scores: Dict[str, Dict[str, float]]
    labels: np.ndarray

    def save_png(self, path: str | os.PathLike, *,
                 class_names: Optional[Sequence[str] | Mapping[Any, str]] = None,
                 title: Optional[str] = None) -> Path:
        """Write the panels with :func:`fasttn.analysis.plots.save_tsne_grid`."""
        from .plots import save_tsne_grid

        return save_tsne_grid(path, self.embeddings, self.labels, scores=self.scores,
                              class_names=class_names, title=title)


def layer_tsne(model: Any, X: Any, y: Any, *, perplexity: float = 30.0,
               random_state: int = 0, max_iter: int = 1000, k: int = 5,
               n_components: int = 50, batch_size: Optional[int] = None,
               method: str = "sklearn", n_jobs: Optional[int] = 1) -> LayerTSNE:
    """t-SNE of every layer of a fitted model, with its class separation.

    Parameters
    ----------
    model : fitted QCNN, MERA2D, TTN2D, ...
        Anything with ``layer_outputs(X, batch_size=...)``.
    X : (n, height, width)
        Images, validated by the model as its ``predict`` does.
    y : (n,)
        Their labels.
    perplexity, random_state, max_iter, n_components, method, n_jobs
        As :func:`embed_layers`.
    k : int
        Neighbours of the kNN accuracy (:func:`layer_separation`).
    batch_size : int, optional
        Images per forward pass (default: the model's own default).

    Returns
    -------
    LayerTSNE
    """
    if not callable(getattr(model, "layer_outputs", None)):
        raise TypeError(f"model: expected a fasttn model with layer_outputs (QCNN, MERA2D, "
                        f"TTN2D), got {type(model).__name__}")
    if np.ndim(X) >= 1 and np.ndim(y) == 1 and len(y) != len(X):  # before the forward pass
        raise ValueError(f"y: expected {len(X)} labels (one per image), got {len(y)}")
    kw = {} if batch_size is None else {"batch_size": batch_size}
    outputs = model.layer_outputs(X, **kw)
    _check_labels(y, len(next(iter(outputs.values()))))  # before the costly embedding
    embeddings = embed_layers(outputs, perplexity=perplexity, random_state=random_state,
                              max_iter=max_iter, n_components=n_components, method=method,
                              n_jobs=n_jobs)
    scores = layer_separation(outputs, y, embeddings=embeddings, k=k,
                              n_components=n_components, random_state=random_state,
                              n_jobs=n_jobs)
    return LayerTSNE(names=tuple(outputs), embeddings=embeddings, scores=scores,
                     labels=np.asarray(y))
