"""Whole models built from fasttn's torch layers: the q-CNN, and a CNN whose classifier is a
TNLayer (the "Tensor-NN" of the MERA paper's tables)."""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .. import ops as fops
from .._validate import check_positive_int
from ..ops.feature_maps import n_channels
from .modules import QCNNLevel, TNLayer

__all__ = ["QCNN", "CNNTN"]


class QCNN(nn.Module):
    """The q-CNN of :class:`fasttn.QCNN` (1D pooling of the row-major chain of pixels) as
    a torch module: the feature map, ``log2(sites)`` :class:`QCNNLevel` levels of widths
    ``d (l + 1)``, then a level without pooling to the class scores.

    Parameters
    ----------
    image_shape : (height, width)
        Both powers of two.
    n_classes, d : int
    feature_map : {"fourier", "legendre", "cos_sin"}
    n_features : int
        Channels of the map.
    beta_init : float
    sync_stats : bool
        Batch statistics over all processes (data-parallel training); see
        :class:`QCNNLevel`.
    dtype : torch dtype
    """

    def __init__(self, image_shape: Tuple[int, int], n_classes: int = 10, d: int = 8,
                 feature_map: str = "cos_sin", n_features: int = 2, beta_init: float = 1.0,
                 sync_stats: bool = True, dtype=torch.float32):
        super().__init__()
        h, w = (check_positive_int("image_shape", v) for v in image_shape)
        if h & (h - 1) or w & (w - 1):
            raise ValueError(f"image_shape: expected powers of two, got {h}x{w}")
        self.image_shape = (h, w)
        self.feature_map, self.n_features = feature_map, n_features
        d0 = n_channels(feature_map, n_features, False)
        levels = (h * w).bit_length() - 1
        widths = [d0] + [d * (l + 1) for l in range(1, levels + 1)] + [n_classes]
        self.levels = nn.ModuleList(
            QCNNLevel(widths[l], widths[l + 1], window=2 if l < levels else 1,
                      beta_init=beta_init, sync_stats=sync_stats, dtype=dtype)
            for l in range(levels + 1))
        self.dtype = dtype

    def features(self, images: Tensor) -> Tensor:
        """``(n, sites, channels)``: the local map of every pixel (not differentiated)."""
        flat = images.detach().reshape(images.shape[0], -1).cpu().numpy()
        phi = fops.feature_map(np.ascontiguousarray(flat, dtype=np.dtype(str(self.dtype)[6:])),
                               self.feature_map, self.n_features)
        return torch.from_numpy(np.array(phi)).to(images.device)

    def forward(self, images: Tensor) -> Tensor:
        x = self.features(images)
        for level in self.levels:
            x = level(x)
        return x[:, 0, :]


class CNNTN(nn.Module):
    """Convolutions, then a TNLayer (an MPO weight) and a linear classifier.

    Three 3x3 convolution + ReLU + 2x2 max-pool blocks, adaptive pooling to 4x4, then
    ``TNLayer(channels[-1] * 16 -> tn_units, bond_dim)`` with ReLU and ``Linear(tn_units,
    n_classes)``.
    """

    def __init__(self, n_classes: int = 10, channels: Sequence[int] = (32, 64, 64),
                 tn_units: int = 64, n_sites: int = 4, bond_dim: int = 4,
                 dtype=torch.float32):
        super().__init__()
        blocks, c_in = [], 1
        for c in channels:
            blocks += [nn.Conv2d(c_in, c, 3, padding=1, dtype=dtype), nn.ReLU(),
                       nn.MaxPool2d(2, ceil_mode=True)]
            c_in = c
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.tn = TNLayer(c_in * 16, tn_units, n_sites=n_sites, bond_dim=bond_dim, dtype=dtype)
        self.head = nn.Linear(tn_units, n_classes, dtype=dtype)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(torch.relu(self.tn(self.features(images[:, None]))))
