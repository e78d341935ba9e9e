"""The layers of a :class:`~fasttn.models.tnn.TNN`: ``Dense`` and the MPO ``TNLayer``.

A layer is a forward/backward pair with explicit saved state, like every op here:
``forward(x) -> (y, saved)``, ``backward(saved, g_y) -> (g_x, [g_param, ...])``, with
parameters in ``params()`` in the same order. Weights act as ``y = act(x @ W + b)``.
Layers are built on the host; the arithmetic follows the array module of the inputs, so
parameters and data on a GPU (CuPy) keep every step there.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from .._validate import check_positive_int
from ..backend import array_module
from ..ops.mpo import check_cores, mpo_apply_forward, mpo_apply_backward, mpo_apply_method

ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "softmax")


def _check_activation(activation: Any) -> str:
    name = "linear" if activation is None else activation
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS} or None, got {activation!r}")
    return name


def activation_forward(name: str, z: np.ndarray) -> np.ndarray:
    if name == "linear":
        return z
    xp = array_module(z)
    if name == "relu":
        return xp.maximum(z, 0)
    if name == "sigmoid":
        # split by sign so exp never overflows
        e = xp.exp(-xp.abs(z))
        return xp.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype)
    if name == "tanh":
        return xp.tanh(z)
    s = z - z.max(axis=-1, keepdims=True)
    e = xp.exp(s)
    return e / e.sum(axis=-1, keepdims=True)


def activation_backward(name: str, z: np.ndarray, y: np.ndarray, g_y: np.ndarray) -> np.ndarray:
    """``dL/dz`` from ``dL/dy`` for ``y = act(z)``."""
    if name == "linear":
        return g_y
    if name == "relu":
        return g_y * (z > 0)
    if name == "sigmoid":
        return g_y * y * (1 - y)
    if name == "tanh":
        return g_y * (1 - y * y)
    return y * (g_y - (g_y * y).sum(axis=-1, keepdims=True))


def factor_dims(n: int, n_sites: int, name: str) -> Tuple[int, ...]:
    """Split ``n`` into ``n_sites`` integer factors as equal as possible (largest first)."""
    primes, m, p = [], n, 2
    while p * p <= m:
        while m % p == 0:
            primes.append(p)
            m //= p
        p += 1
    if m > 1:
        primes.append(m)
    if len(primes) < n_sites:
        raise ValueError(f"{name}: {n} does not split into {n_sites} factors > 1 (prime "
                         f"factors {primes}); use fewer sites, give the dims explicitly, or put "
                         f"a frozen Dense layer in front to change the size")
    dims = [1] * n_sites
    for q in sorted(primes, reverse=True):  # greedy: each factor onto the smallest site
        dims[int(np.argmin(dims))] *= q
    return tuple(sorted(dims, reverse=True))


class Layer:
    """Common parts: configuration as a JSON-able dict, parameters as arrays."""

    kind = "Layer"
    trainable = True

    def get_config(self) -> Dict[str, Any]:
        raise NotImplementedError

    def params(self) -> List[np.ndarray]:
        raise NotImplementedError

    def param_names(self) -> List[str]:
        raise NotImplementedError

    def set_params(self, arrays: Sequence[np.ndarray]) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "type")
        return f"{self.kind}({args})"


class Dense(Layer):
    """A fully connected layer ``y = act(x @ W + b)``.

    Parameters
    ----------
    units : int
        Output size.
    activation : {"linear", "relu", "sigmoid", "tanh", "softmax"} or None
    trainable : bool
        ``False`` freezes it at its (Glorot-uniform) initial value, as the frozen input
        layer that matches sizes in front of a TNLayer.
    use_bias : bool
    """

    kind = "Dense"

    def __init__(self, units: int, activation: str | None = None, trainable: bool = True,
                 use_bias: bool = True):
        self.units = check_positive_int("units", units)
        self.activation = _check_activation(activation)
        self.trainable = bool(trainable)
        self.use_bias = bool(use_bias)

    def get_config(self) -> Dict[str, Any]:
        return {"type": "Dense", "units": self.units, "activation": self.activation,
                "trainable": self.trainable, "use_bias": self.use_bias}

    def build(self, n_in: int, rng: np.random.Generator, dtype: np.dtype) -> None:
        limit = np.sqrt(6.0 / (n_in + self.units))
        self.w = rng.uniform(-limit, limit, (n_in, self.units)).astype(dtype)
        self.b = np.zeros(self.units if self.use_bias else 0, dtype)

    def params(self) -> List[np.ndarray]:
        return [self.w, self.b] if self.use_bias else [self.w]

    def param_names(self) -> List[str]:
        return ["w", "b"] if self.use_bias else ["w"]

    def set_params(self, arrays: Sequence[np.ndarray]) -> None:
        self.w = arrays[0]
        self.b = arrays[1] if self.use_bias else array_module(self.w).zeros(0, self.w.dtype)

    def forward(self, x: np.ndarray, skip_activation: bool = False):
        z = x @ self.w
        if self.use_bias:
            z += self.b
        y = z if skip_activation else activation_forward(self.activation, z)
        return y, (x, z, y, skip_activation)

    def backward(self, saved, g_y: np.ndarray, need_g_x: bool = True):
        x, z, y, skipped = saved
        g_z = g_y if skipped else activation_backward(self.activation, z, y, g_y)
        g_x = g_z @ self.w.T if need_g_x else None
        grads = [x.T @ g_z]
        if self.use_bias:
            grads.append(g_z.sum(axis=0))
        return g_x, grads


class TNLayer(Layer):
    """A dense layer whose weight is a matrix product operator (MPO).

    Parameters
    ----------
    units : int
        Output size; split over the sites as ``out_dims``.
    n_sites : int
        Number of MPO cores (6 for a 64 -> 64 layer of 2 x 2 cores).
    bond_dim : int
        Virtual (bond) dimension D.
    activation : {"linear", "relu", "sigmoid", "tanh", "softmax"} or None
    in_dims, out_dims : tuple of int, optional
        Per-site input and output sizes; default: the input size and ``units`` split into
        ``n_sites`` near-equal factors.
    method : {"auto", "dense", "network"}
        How ``x @ W`` is computed: contract the cores to ``W`` first, or ``x`` through the
        cores; "auto" lets cotengra's cost model decide per batch size.
    use_bias : bool
    init : {"product", "random"}
        ``product``: ``W`` starts as a Kronecker product of per-site Gaussian matrices (a
        product operator, bond entropy 0) plus noise of relative size ``init_noise`` on the
        other bond entries; ``random``: every core entry Gaussian. Both give ``W`` entries
        of the Glorot variance ``2 / (n_in + units)``.
    init_noise : float
    """

    kind = "TNLayer"

    def __init__(self, units: int, n_sites: int = 6, bond_dim: int = 4,
                 activation: str | None = None, in_dims: Sequence[int] | None = None,
                 out_dims: Sequence[int] | None = None, method: str = "auto",
                 use_bias: bool = True, init: str = "product", init_noise: float = 0.01):
        self.units = check_positive_int("units", units)
        self.n_sites = check_positive_int("n_sites", n_sites)
        self.bond_dim = check_positive_int("bond_dim", bond_dim)
        self.activation = _check_activation(activation)
        self.in_dims = None if in_dims is None else tuple(int(d) for d in in_dims)
        self.out_dims = None if out_dims is None else tuple(int(d) for d in out_dims)
        if method not in ("auto", "dense", "network"):
            raise ValueError(f"method: expected 'auto', 'dense' or 'network', got {method!r}")
        self.method = method
        self.use_bias = bool(use_bias)
        if init not in ("product", "random"):
            raise ValueError(f"init: expected 'product' or 'random', got {init!r}")
        self.init = init
        if not (isinstance(init_noise, (int, float)) and 0 <= init_noise < 1e3):
            raise ValueError(f"init_noise: expected a number >= 0, got {init_noise!r}")
        self.init_noise = float(init_noise)
        if self.out_dims is not None and int(np.prod(self.out_dims)) != self.units:
            raise ValueError(f"out_dims: expected factors whose product is units={units}, got "
                             f"{self.out_dims}")
        for name, dims in (("in_dims", self.in_dims), ("out_dims", self.out_dims)):
            if dims is not None and (len(dims) != self.n_sites or min(dims) < 1):
                raise ValueError(f"{name}: expected {self.n_sites} positive sizes (n_sites), got "
                                 f"{dims}")

    def get_config(self) -> Dict[str, Any]:
        return {"type": "TNLayer", "units": self.units, "n_sites": self.n_sites,
                "bond_dim": self.bond_dim, "activation": self.activation,
                "in_dims": None if self.in_dims is None else list(self.in_dims),
                "out_dims": None if self.out_dims is None else list(self.out_dims),
                "method": self.method, "use_bias": self.use_bias, "init": self.init,
                "init_noise": self.init_noise}

    def build(self, n_in: int, rng: np.random.Generator, dtype: np.dtype) -> None:
        in_dims = self.in_dims or factor_dims(n_in, self.n_sites, "TNLayer input size")
        if int(np.prod(in_dims)) != n_in:
            raise ValueError(f"in_dims: expected factors whose product is the layer's input size "
                             f"{n_in}, got {in_dims}")
        out_dims = self.out_dims or factor_dims(self.units, self.n_sites, "units")
        self.in_dims_, self.out_dims_ = tuple(in_dims), tuple(out_dims)
        n = self.n_sites
        bonds = [1] + [self.bond_dim] * (n - 1) + [1]
        # Entries of W are sums over prod(bonds) paths of n factors: scale the cores so that
        # Var(W_ij) is the Glorot variance 2 / (n_in + units).
        target = 2.0 / (n_in + self.units)
        shapes = [(bonds[k], in_dims[k], out_dims[k], bonds[k + 1]) for k in range(n)]
        if self.init == "random":
            sigma = (target / float(np.prod(bonds))) ** (0.5 / n)
            cores = [sigma * rng.standard_normal(s) for s in shapes]
        else:
            sigma = target ** (0.5 / n)
            cores = [self.init_noise * sigma * rng.standard_normal(s) for s in shapes]
            for c in cores:
                c[0, :, :, 0] = sigma * rng.standard_normal(c.shape[1:3])
        self.cores = [c.astype(dtype) for c in cores]
        self.b = np.zeros(self.units if self.use_bias else 0, dtype)

    @classmethod
    def from_dense(cls, w: np.ndarray, bond_dim: int, n_sites: int = 6,
                   bias: np.ndarray | None = None, activation: str | None = None,
                   in_dims: Sequence[int] | None = None, out_dims: Sequence[int] | None = None,
                   cutoff: float = 0.0, method: str = "auto") -> "TNLayer":
        """A built TNLayer whose MPO is ``w (n_in, units)`` compressed by successive truncated
        SVDs (at most ``bond_dim`` singular values per cut, none below ``cutoff * s_max``).

        ``layer.discarded_`` holds the weight dropped at each cut; the Frobenius error of
        the compressed ``W`` is ``sqrt(sum(discarded_**2))``.
        """
        from ..ops.mpo import mpo_from_dense

        w = np.asarray(w)
        if w.ndim != 2:
            raise ValueError(f"w: expected a 2-dimensional weight (n_in, units), got shape "
                             f"{w.shape}")
        layer = cls(w.shape[1], n_sites, bond_dim, activation, in_dims, out_dims, method,
                    use_bias=bias is not None)
        in_dims = layer.in_dims or factor_dims(w.shape[0], n_sites, "w rows")
        out_dims = layer.out_dims or factor_dims(w.shape[1], n_sites, "w columns")
        fac = mpo_from_dense(w, in_dims, out_dims, max_bond=bond_dim, cutoff=cutoff)
        layer.set_params(fac.cores + ([np.asarray(bias, w.dtype)] if bias is not None else []))
        layer.discarded_ = fac.discarded
        layer.entropy_ = fac.entropy
        return layer

    def params(self) -> List[np.ndarray]:
        return list(self.cores) + ([self.b] if self.use_bias else [])

    def param_names(self) -> List[str]:
        return [f"core{k}" for k in range(self.n_sites)] + (["b"] if self.use_bias else [])

    def set_params(self, arrays: Sequence[np.ndarray]) -> None:
        self.cores = check_cores(list(arrays[:self.n_sites]))
        self.b = arrays[self.n_sites] if self.use_bias else \
            array_module(self.cores[0]).zeros(0, self.cores[0].dtype)
        self.in_dims_ = tuple(c.shape[1] for c in self.cores)
        self.out_dims_ = tuple(c.shape[2] for c in self.cores)

    def bond_dims(self) -> List[int]:
        return [c.shape[3] for c in self.cores[:-1]]

    def route(self, batch: int) -> str:
        return self.method if self.method != "auto" else mpo_apply_method(batch, self.cores)[0]

    def forward(self, x: np.ndarray, skip_activation: bool = False, w: np.ndarray | None = None):
        """With ``w`` given (the sweeps' current ``W``), it is used instead of the cores."""
        if w is not None:
            z, mpo_saved = x @ w, ("given", x, w)
        else:
            z, mpo_saved = mpo_apply_forward(x, self.cores, self.route(x.shape[0]))
        if self.use_bias:
            z += self.b
        y = z if skip_activation else activation_forward(self.activation, z)
        return y, (mpo_saved, z, y, skip_activation)

    def backward(self, saved, g_y: np.ndarray, need_g_x: bool = True):
        """``(g_x, grads)``; with a given ``w`` in forward, ``grads[0]`` is ``dL/dW`` in
        place of the cores' gradients."""
        mpo_saved, z, y, skipped = saved
        g_z = g_y if skipped else activation_backward(self.activation, z, y, g_y)
        g_b = [g_z.sum(axis=0)] if self.use_bias else []
        if mpo_saved[0] == "given":
            x, w = mpo_saved[1], mpo_saved[2]
            return (g_z @ w.T if need_g_x else None), [x.T @ g_z] + g_b
        g_x, g_cores = mpo_apply_backward(mpo_saved, g_z, need_g_x)
        return g_x, list(g_cores) + g_b


LAYER_TYPES = {"Dense": Dense, "TNLayer": TNLayer}


def layer_from_config(config: Dict[str, Any]) -> Layer:
    config = dict(config)
    kind = config.pop("type", None)
    if kind not in LAYER_TYPES:
        raise ValueError(f"layers: expected a Dense or TNLayer (or its config dict with "
                         f"'type'), got type {kind!r}")
    return LAYER_TYPES[kind](**config)


def fusable(dense: Layer, tn: Layer, batch: int) -> bool:
    """Whether ``Dense(linear) -> TNLayer`` is cheaper as ``x @ (A @ W)`` than as
    ``(x @ A) @ W``: true when the dense layer widens its input (the frozen size-matching
    layer in front of a TNLayer takes a few features to many)."""
    if not (isinstance(dense, Dense) and isinstance(tn, TNLayer)
            and dense.activation == "linear"):
        return False
    n_in, m = dense.w.shape
    o = tn.units
    return n_in * m * o + batch * n_in * o < batch * n_in * m + batch * m * o


def fused_forward(dense: Dense, tn: TNLayer, x: np.ndarray, w: np.ndarray | None,
                  skip_activation: bool = False):
    """``tn(dense(x))`` with the linear chain contracted first:
    ``z = x @ (A @ W) + (a @ W + b)`` for ``dense: x -> x @ A + a``."""
    if w is None:
        from ..ops.mpo import mpo_to_dense_forward

        w, dense_saved = mpo_to_dense_forward(tn.cores)
    else:
        dense_saved = None
    aw = dense.w @ w
    z = x @ aw
    if dense.use_bias:
        z += dense.b @ w
    if tn.use_bias:
        z += tn.b
    y = z if skip_activation else activation_forward(tn.activation, z)
    return y, (x, w, dense_saved, z, y, skip_activation)


def fused_backward(dense: Dense, tn: TNLayer, saved, g_y: np.ndarray, need_g_x: bool = True):
    """``(g_x, dense grads, tn grads)``; the TNLayer's are its cores' (or ``dL/dW`` first when
    ``W`` was given)."""
    x, w, dense_saved, z, y, skipped = saved
    g_z = g_y if skipped else activation_backward(tn.activation, z, y, g_y)
    xg = x.T @ g_z                       # (n_in, o): the batch is summed out once
    sum_g = g_z.sum(axis=0)
    g_w = dense.w.T @ xg                 # = h^T g_z with h = x A + a
    if dense.use_bias:
        g_w += array_module(g_w).outer(dense.b, sum_g)
    tn_grads = [g_w] if dense_saved is None else None
    if dense_saved is not None:
        from ..ops.mpo import mpo_to_dense_backward

        tn_grads = list(mpo_to_dense_backward(dense_saved, g_w))
    if tn.use_bias:
        tn_grads.append(sum_g)
    dense_grads = [xg @ w.T]             # dL/dA = x^T g_z W^T
    if dense.use_bias:
        dense_grads.append(sum_g @ w.T)
    g_x = (g_z @ (dense.w @ w).T) if need_g_x else None
    return g_x, dense_grads, tn_grads
