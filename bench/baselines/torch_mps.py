"""A plain PyTorch MPS classifier (Stoudenmire & Schwab), written for reading: the network
of :class:`fasttn.MPS` (cores ``(L, D, d, D)``, class head ``(D, C, D)`` after ``center``
sites, both ends closed by the bond's first basis vector), contracted site by site with
``torch.einsum`` and each environment divided by its norm, so that long chains stay finite;
autograd does the backward.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = ["TorchMPS"]


class TorchMPS(nn.Module):
    """Normalised scores ``(n, n_classes)`` of features ``(n, n_sites, d)``.

    Initialised as :class:`fasttn.MPS`: identity cores and head plus Gaussian noise.
    """

    def __init__(self, n_sites: int, n_classes: int, bond_dim: int = 10, d: int = 2,
                 center: Optional[int] = None, init_noise: float = 0.05):
        super().__init__()
        self.center = n_sites // 2 if center is None else center
        eye = torch.eye(bond_dim)
        self.cores = nn.Parameter(eye[None, :, None, :]
                                  + init_noise * torch.randn(n_sites, bond_dim, d, bond_dim))
        self.head = nn.Parameter(eye[:, None, :]
                                 + init_noise * torch.randn(bond_dim, n_classes, bond_dim))

    def forward(self, phi: torch.Tensor) -> torch.Tensor:
        n, L, _ = phi.shape
        D = self.cores.shape[1]
        left = phi.new_zeros(n, D)
        left[:, 0] = 1
        right = left.clone()
        for k in range(self.center):                      # l <- l A[k](phi_k), normalised
            left = torch.einsum("na,ns,asb->nb", left, phi[:, k], self.cores[k])
            left = left / left.norm(dim=1, keepdim=True)
        for k in range(L - 1, self.center - 1, -1):       # r <- A[k](phi_k) r, normalised
            right = torch.einsum("asb,ns,nb->na", self.cores[k], phi[:, k], right)
            right = right / right.norm(dim=1, keepdim=True)
        return torch.einsum("na,acb,nb->nc", left, self.head, right)
