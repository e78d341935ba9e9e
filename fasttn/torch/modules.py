"""``nn.Module`` layers over :mod:`fasttn.torch.ops`, initialised as fasttn's models are.

Each layer holds its parameters and calls one op; the arithmetic is fasttn's. Initial values
come from torch's random generator (``torch.manual_seed`` fixes them) with the distributions
of :class:`fasttn.QCNN`, :class:`fasttn.MERA2D`, :class:`fasttn.TNLayer` and
:class:`fasttn.TTN2D`.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .. import ops as fops
from .._validate import check_choice, check_positive_int
from ..models.tnn_layers import TNLayer as _MPOLayerSpec, factor_dims
from .ops import (mera_block, mpo_apply, qcnn_level, qcnn_level_given_stats,
                  qcnn_level_with_stats, tree_node)

__all__ = ["QCNNLevel", "MERABlockLayer", "MPSLayer", "TNLayer", "TreeNodeLayer"]


def _numpy_rng() -> np.random.Generator:
    """A NumPy generator seeded from torch's, for initialisers that fasttn draws in NumPy."""
    return np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,)).item()))


class _AllReduceSum(torch.autograd.Function):
    """Sum over the default group; the gradient of every process's copy of the sum reaches
    every process's summands, so the backward sums the incoming gradients too."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        import torch.distributed as dist

        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        import torch.distributed as dist

        g = g.clone()
        dist.all_reduce(g)
        return g


def _group_stats(x: Tensor) -> Tuple[Tensor, Tensor, int]:
    """Per-channel mean and biased variance of ``x`` over batch and sites on every process
    of the default group (float64, differentiable), and the number of rows they cover."""
    x64 = x.to(torch.float64)
    sums = torch.cat([x64.sum(dim=(0, 1)), (x64 * x64).sum(dim=(0, 1)),
                      x64.new_tensor([x.shape[0] * x.shape[1]])])
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        sums = _AllReduceSum.apply(sums)
    d = x.shape[-1]
    n = sums[-1].detach()
    mean = sums[:d] / n
    var = sums[d:2 * d] / n - mean * mean
    return mean, var, int(n.item())


def _check_scale(name: str, v: float) -> float:
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: expected a positive finite number, got {v!r}")
    return float(v)


class QCNNLevel(nn.Module):
    """One q-CNN level: batch norm, bias-free 1x1 convolution, same-channel product pooling.

    Training normalises with the batch statistics (and back-propagates through them) and
    updates the running statistics like ``nn.BatchNorm1d`` (unbiased variance, ``momentum``);
    evaluation normalises with the running statistics.

    Parameters
    ----------
    in_channels, out_channels : int
    window : {1, 2, 4}
        Consecutive sites multiplied into one output site (4: 2x2 windows of a grid stored
        in Z order; 1: no pooling, the classifier head).
    eps : float
    momentum : float
        Weight of each batch in the running statistics.
    beta_init : float
        Initial batch-norm shift (as :class:`fasttn.QCNN`'s ``beta_init``).
    sync_stats : bool
        In training, take the batch statistics over every process of the default
        ``torch.distributed`` group (as ``nn.SyncBatchNorm``), so that data-parallel
        training equals one process on the whole batch. Without an initialised group the
        statistics are this batch's.
    device, dtype : optional
        Of the parameters and buffers (float32 or float64).

    Notes
    -----
    Input ``(batch, sites, in_channels)``, output ``(batch, sites // window, out_channels)``.
    """

    def __init__(self, in_channels: int, out_channels: int, window: int = 2, eps: float = 1e-5,
                 momentum: float = 0.1, beta_init: float = 0.0, sync_stats: bool = False,
                 device=None, dtype=None):
        super().__init__()
        self.sync_stats = bool(sync_stats)
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.window = check_choice("window", window, (1, 2, 4))
        self.eps = _check_scale("eps", eps)
        if not (isinstance(momentum, (int, float)) and 0.0 <= momentum <= 1.0):
            raise ValueError(f"momentum: expected a number in [0, 1], got {momentum!r}")
        self.momentum = float(momentum)
        self.beta_init = float(beta_init)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, **factory))
        self.gamma = nn.Parameter(torch.empty(in_channels, **factory))
        self.beta = nn.Parameter(torch.empty(in_channels, **factory))
        self.register_buffer("running_mean", torch.zeros(in_channels, **factory))
        self.register_buffer("running_var", torch.ones(in_channels, **factory))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long,
                                                                 device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weight (as the reference conv1d levels), ``gamma = 1``,
        ``beta = beta_init``, running statistics reset."""
        bound = math.sqrt(6.0 / (self.in_channels + self.out_channels))
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            self.gamma.fill_(1.0)
            self.beta.fill_(self.beta_init)
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return qcnn_level(x, self.weight, self.gamma, self.beta, self.window, self.eps,
                              training=False, running_mean=self.running_mean,
                              running_var=self.running_var)
        if self.sync_stats:
            mean, var, n = _group_stats(x)
            out = qcnn_level_given_stats(x, self.weight, self.gamma, self.beta, mean, var,
                                         self.window, self.eps)
            mean, var = mean.detach(), var.detach()
        else:
            out, mean, var = qcnn_level_with_stats(x, self.weight, self.gamma, self.beta,
                                                   self.window, self.eps, training=True)
            n = x.shape[0] * x.shape[1]
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
            unbiased = var * (n / max(n - 1, 1))
            self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
            self.num_batches_tracked.add_(1)
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, window={self.window}, "
                f"eps={self.eps}, momentum={self.momentum}")


class MERABlockLayer(nn.Module):
    """One 2D MERA level: every 4x4 block of sites to one site, weights shared by all blocks.

    Parameters
    ----------
    p : int
        Input site dimension.
    chi : int
        Bond dimension of the isometry outputs.
    d_out : int
        Output site dimension.
    bond : int, optional
        Dimension of the disentangler legs (default ``chi``).
    init_scale : float
        Gaussian initialisation with standard deviation ``init_scale / sqrt(fan_in)`` per
        tensor (as :class:`fasttn.MERA2D`'s ``init="random"``).
    device, dtype : optional

    Notes
    -----
    Input ``(batch, H, W, p)`` with H and W multiples of 4, output
    ``(batch, H / 4, W / 4, d_out)``.
    """

    def __init__(self, p: int, chi: int, d_out: int, bond: Optional[int] = None,
                 init_scale: float = 1.0, device=None, dtype=None):
        super().__init__()
        self.p = check_positive_int("p", p)
        self.chi = check_positive_int("chi", chi)
        self.d_out = check_positive_int("d_out", d_out)
        self.bond = chi if bond is None else check_positive_int("bond", bond)
        self.init_scale = _check_scale("init_scale", init_scale)
        factory = {"device": device, "dtype": dtype}
        for name, (shape, _) in self._shapes().items():
            setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
        self.reset_parameters()

    def _shapes(self):
        """``name: (shape, fan_in)``, as :class:`fasttn.MERA2D` lays out a level."""
        p, b, chi = self.p, self.bond, self.chi
        return {"u1": ((p,) * 4 + (b,) * 4, p ** 4), "w": ((4, p, p, p, b, chi), p ** 3 * b),
                "u2": ((chi,) * 8, chi ** 4), "top": ((chi,) * 4 + (self.d_out,), chi ** 4)}

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for name, (_, fan_in) in self._shapes().items():
                getattr(self, name).normal_(0.0, self.init_scale / math.sqrt(fan_in))

    def forward(self, x: Tensor) -> Tensor:
        return mera_block(x, self.u1, self.w, self.u2, self.top)

    def extra_repr(self) -> str:
        return f"p={self.p}, chi={self.chi}, d_out={self.d_out}, bond={self.bond}"


class TNLayer(nn.Module):
    """A linear layer whose weight is a matrix product operator: ``y = x @ W + bias``.

    ``W (in_features, out_features)`` is held as ``n_sites`` cores
    ``(D_k, in_k, out_k, D_k+1)`` with ``prod(in_k) = in_features`` and
    ``prod(out_k) = out_features``; it is never formed unless that is the cheaper route.

    Parameters
    ----------
    in_features, out_features : int
    n_sites : int
        Number of cores.
    bond_dim : int
        Bond dimension D between cores.
    bias : bool
    in_dims, out_dims : sequence of int, optional
        Per-core sizes; default: the features split into ``n_sites`` near-equal factors (as
        :func:`fasttn.models.tnn_layers.factor_dims`).
    method : {"auto", "dense", "network"}
        See :func:`fasttn.torch.mpo_apply`.
    init : {"product", "random"}
    init_noise : float
        As :class:`fasttn.TNLayer`: entries of ``W`` start with the Glorot variance
        ``2 / (in_features + out_features)``; the bias starts at zero.
    device, dtype : optional

    Notes
    -----
    Input ``(*, in_features)``, output ``(*, out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, n_sites: int = 6,
                 bond_dim: int = 4, bias: bool = True, in_dims: Optional[Sequence[int]] = None,
                 out_dims: Optional[Sequence[int]] = None, method: str = "auto",
                 init: str = "product", init_noise: float = 0.01, device=None, dtype=None):
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        n_sites = check_positive_int("n_sites", n_sites)
        self.n_sites, self.bond_dim, self.method = n_sites, bond_dim, method
        if in_dims is None:
            in_dims = factor_dims(in_features, n_sites, "in_features")
        if out_dims is None:
            out_dims = factor_dims(out_features, n_sites, "out_features")
        self._config = {"n_sites": n_sites, "bond_dim": bond_dim, "in_dims": in_dims,
                        "out_dims": out_dims, "method": method, "use_bias": bias, "init": init,
                        "init_noise": init_noise}
        cores = self._draw_cores()  # also checks the configuration, naming the argument
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        self.cores = nn.ParameterList(
            nn.Parameter(torch.tensor(c, **factory)) for c in cores)
        self.bias = nn.Parameter(torch.zeros(out_features, **factory)) if bias else None

    def _draw_cores(self):
        """Initial cores drawn by fasttn's own layer; sets ``in_dims`` and ``out_dims``."""
        spec = _MPOLayerSpec(self.out_features, **self._config)
        spec.build(self.in_features, _numpy_rng(), np.dtype(np.float64))
        self.in_dims, self.out_dims = spec.in_dims_, spec.out_dims_
        return spec.cores

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for core, value in zip(self.cores, self._draw_cores()):
                core.copy_(torch.from_numpy(value))
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = mpo_apply(x.reshape(-1, x.shape[-1]), self.cores, self.method)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"in_dims={self.in_dims}, out_dims={self.out_dims}, bond_dim={self.bond_dim}, "
                f"bias={self.bias is not None}")


class TreeNodeLayer(nn.Module):
    """One 2D tree-tensor-network level: every 2x2 block of sites to one site, each block
    with its own tensor.

    Parameters
    ----------
    side : int
        Height and width of the input grid (even).
    p : int
        Input site dimension.
    chi : int
        Output site dimension.
    init_scale : float
        Each tensor starts as the polar factor (an isometry from its four input legs to its
        output leg) of a Gaussian tensor times ``init_scale``, as :class:`fasttn.TTN2D`.
    device, dtype : optional

    Notes
    -----
    Input ``(batch, side, side, p)``, output ``(batch, side / 2, side / 2, chi)``.
    """

    def __init__(self, side: int, p: int, chi: int, init_scale: float = 1.0, device=None,
                 dtype=None):
        super().__init__()
        self.side = check_positive_int("side", side)
        if side % 2:
            raise ValueError(f"side: expected an even grid side (2x2 blocks), got {side}")
        self.p = check_positive_int("p", p)
        self.chi = check_positive_int("chi", chi)
        self.init_scale = _check_scale("init_scale", init_scale)
        shape = (side // 2, side // 2) + (p,) * 4 + (chi,)
        self.weight = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        t = torch.randn(self.weight.shape, dtype=torch.float64).numpy()
        with torch.no_grad():
            self.weight.copy_(torch.from_numpy(self.init_scale * _polar(t)))

    def forward(self, x: Tensor) -> Tensor:
        return tree_node(x, self.weight)

    def extra_repr(self) -> str:
        return f"side={self.side}, p={self.p}, chi={self.chi}"


def _polar(t: np.ndarray) -> np.ndarray:
    """``U V^T`` of every block tensor viewed as a (p^4, chi) matrix, one stacked SVD."""
    mats = t.reshape(-1, t.shape[2] ** 4, t.shape[-1])
    split = fops.svd_truncate(mats, absorb="none")
    return np.matmul(split.left, split.right).reshape(t.shape)


class MPSLayer(nn.Module):
    """Matrix product state classifier layer (:class:`fasttn.MPS`'s network) over
    :func:`fasttn.torch.ops.mps_contract`.

    ``n_sites`` cores ``(D, d, D)`` and a head ``(D, n_classes, D)`` after the first
    ``center`` sites, initialised as :class:`fasttn.MPS` does (identity on the bond for
    every feature channel plus Gaussian noise of ``init_noise``; the head an identity per
    class plus noise).

    Parameters
    ----------
    n_sites, n_classes, bond_dim : int
    d : int
        Feature channels per site.
    center : int, optional
        Sites left of the head; None: ``n_sites // 2``.
    init_noise : float
    device, dtype : optional

    Notes
    -----
    Input: ``(batch, n_sites, d)`` feature vectors, or ``(batch, n_sites)`` values in
    [0, 1] mapped by the degree-``d`` cos/sin map of :func:`fasttn.ops.feature_map`
    (``d = 2``: ``[cos(pi x / 2), sin(pi x / 2)]``). Output: ``(batch, n_classes)``
    normalised scores (:meth:`forward_with_scale` also returns the per-sample log-scale).
    """

    def __init__(self, n_sites: int, n_classes: int, bond_dim: int = 10, d: int = 2,
                 center: Optional[int] = None, init_noise: float = 0.05, device=None,
                 dtype=None):
        super().__init__()
        self.n_sites = check_positive_int("n_sites", n_sites)
        self.n_classes = check_positive_int("n_classes", n_classes)
        self.bond_dim = check_positive_int("bond_dim", bond_dim)
        self.d = check_positive_int("d", d)
        if center is None:
            center = n_sites // 2
        if isinstance(center, bool) or not isinstance(center, int) or not 0 <= center <= n_sites:
            raise ValueError(f"center: expected None or an integer from 0 to {n_sites}, got "
                             f"{center!r}")
        self.center = center
        if not (isinstance(init_noise, (int, float)) and math.isfinite(init_noise)
                and init_noise >= 0):
            raise ValueError(f"init_noise: expected a finite number >= 0, got {init_noise!r}")
        self.init_noise = float(init_noise)
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        D = bond_dim
        self.cores = nn.Parameter(torch.empty((n_sites, D, d, D), **factory))
        self.head = nn.Parameter(torch.empty((D, n_classes, D), **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        D = self.bond_dim
        with torch.no_grad():
            eye = torch.eye(D, dtype=self.cores.dtype, device=self.cores.device)
            self.cores.normal_(0.0, self.init_noise).add_(eye[None, :, None, :])
            self.head.normal_(0.0, self.init_noise).add_(eye[:, None, :])

    def features(self, x: Tensor) -> Tensor:
        """``(batch, n_sites, d)``: ``x`` itself, or the cos/sin map of values in [0, 1]."""
        if x.dim() == 3:
            if tuple(x.shape[1:]) != (self.n_sites, self.d):
                raise ValueError(f"x: expected (batch, {self.n_sites}, {self.d}) features or "
                                 f"(batch, {self.n_sites}) values, got {tuple(x.shape)}")
            return x
        if x.dim() != 2 or x.shape[1] != self.n_sites:
            raise ValueError(f"x: expected (batch, {self.n_sites}, {self.d}) features or "
                             f"(batch, {self.n_sites}) values, got {tuple(x.shape)}")
        t = x * (math.pi / 2)
        c, s = torch.cos(t), torch.sin(t)
        k = self.d - 1
        return torch.stack([math.sqrt(math.comb(k, j)) * c ** (k - j) * s ** j
                            for j in range(self.d)], dim=-1)

    def forward_with_scale(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``(out, log_scale)``: the chain's exact scores are ``out * exp(log_scale)``."""
        from .ops import mps_contract

        return mps_contract(self.features(x).contiguous(), self.cores, self.head, self.center)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_scale(x)[0]

    def extra_repr(self) -> str:
        return (f"n_sites={self.n_sites}, n_classes={self.n_classes}, "
                f"bond_dim={self.bond_dim}, d={self.d}, center={self.center}")
