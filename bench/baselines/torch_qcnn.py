"""Plain PyTorch q-CNN: the same model as ``fasttn.QCNN`` written the usual way
(BatchNorm1d -> bias-free Conv1d(kernel 1) -> pairwise product, as the reference code does).

Used as the baseline that fasttn is measured against in the same benchmark run, and as an
independent check of the model's outputs.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TorchQCNN(nn.Module):
    def __init__(self, dims, n_classes, window=2, eps=1e-5, momentum=0.1):
        super().__init__()
        self.window = window
        self.bns = nn.ModuleList(nn.BatchNorm1d(d, eps=eps, momentum=momentum) for d in dims)
        self.convs = nn.ModuleList(nn.Conv1d(dims[l], dims[l + 1], 1, bias=False)
                                   for l in range(len(dims) - 1))
        self.head = nn.Linear(dims[-1], n_classes, bias=False)

    def forward(self, x):  # x: (batch, channels, sites)
        for bn, conv in zip(self.bns, self.convs):
            x = conv(bn(x))
            b, c, s = x.shape
            x = x.reshape(b, c, s // self.window, self.window).prod(dim=3)
        return self.head(self.bns[-1](x)[:, :, 0])

    @torch.no_grad()
    def load_from(self, model):
        """Copy the parameters of a fitted ``fasttn.QCNN``."""
        for l, (bn, conv) in enumerate(zip(self.bns, self.convs)):
            conv.weight.copy_(torch.from_numpy(model.weights_[l][:, :, None]))
        self.head.weight.copy_(torch.from_numpy(model.weights_[-1]))
        for l, bn in enumerate(self.bns):
            bn.weight.copy_(torch.from_numpy(model.gammas_[l]))
            bn.bias.copy_(torch.from_numpy(model.betas_[l]))
            bn.running_mean.copy_(torch.from_numpy(model.running_means_[l]))
            bn.running_var.copy_(torch.from_numpy(model.running_vars_[l]))


def square_loss(scores, y):
    onehot = torch.nn.functional.one_hot(y, scores.shape[1]).to(scores.dtype)
    return ((scores - onehot) ** 2).sum(dim=1).mean()


def features(chains: np.ndarray, n_features: int) -> torch.Tensor:
    """Fourier map, channels first: (batch, sites) -> (batch, n_features, sites)."""
    x = torch.from_numpy(chains)
    k = torch.arange(1, n_features // 2 + 1, dtype=x.dtype)
    ang = 2 * np.pi * x[:, None, :] * k[None, :, None]
    out = torch.empty(x.shape[0], n_features, x.shape[1], dtype=x.dtype)
    out[:, 0::2] = np.sqrt(2) * torch.cos(ang)
    out[:, 1::2] = np.sqrt(2) * torch.sin(ang)
    return out
