"""Plain PyTorch 2D MERA block level: the same network as ``fasttn.ops.mera_block`` written
as batched ``torch.einsum`` steps (images x blocks folded into the batch dimension), the way
a PyTorch user would write it; autograd supplies the backward.
"""
from __future__ import annotations

import torch

# sites of each corner isometry, as in fasttn.ops.mera_block.reference
QUADRANTS = (((0, 0), (0, 1), (1, 0)), ((0, 2), (0, 3), (1, 3)),
             ((2, 0), (3, 0), (3, 1)), ((2, 3), (3, 2), (3, 3)))


def mera_block_torch(x, u1, w, u2, top):
    """``x : (batch, H, W, p) -> (batch, H/4, W/4, d_out)``."""
    n, h, wd, p = x.shape
    blocks = x.reshape(n, h // 4, 4, wd // 4, 4, p).permute(0, 1, 3, 2, 4, 5)
    blocks = blocks.reshape(-1, 4, 4, p)

    def site(r, c):
        return blocks[:, r, c]

    z = torch.einsum("na,nb,nc,nd,abcdQRST->nQRST", site(1, 1), site(1, 2), site(2, 1),
                     site(2, 2), u1)
    v = [torch.einsum("na,nb,nc,abcQA->nQA", *(site(r, c) for r, c in QUADRANTS[q]), w[q])
         for q in range(4)]
    t = torch.einsum("nQRST,nQA->nARST", z, v[0])
    t = torch.einsum("nARST,nRB->nABST", t, v[1])
    t = torch.einsum("nABST,nSC->nABCT", t, v[2])
    t = torch.einsum("nABCT,nTD->nABCD", t, v[3])
    out = torch.einsum("nABCD,ABCDEFGH,EFGHZ->nZ", t, u2, top)
    return out.reshape(n, h // 4, wd // 4, -1)


def mera_end_torch(x, u, top):
    """``x : (batch, 2, 2, p) -> (batch, 1, 1, d_out)``: the 2x2 end block."""
    out = torch.einsum("na,nb,nc,nd,abcdQRST,QRSTZ->nZ", x[:, 0, 0], x[:, 0, 1], x[:, 1, 0],
                       x[:, 1, 1], u, top)
    return out[:, None, None, :]


class TorchMERA2D(torch.nn.Module):
    """The whole ``fasttn.MERA2D`` forward in PyTorch: the same tensors, levels of blocks,
    per-site normalisation between levels, the end block where the side needs it."""

    def __init__(self, model):
        super().__init__()
        self.levels = torch.nn.ModuleList()
        for prm in model.params_:
            level = torch.nn.ParameterDict({k: torch.nn.Parameter(torch.from_numpy(v.copy()))
                                            for k, v in prm.items()})
            self.levels.append(level)

    def forward(self, x):  # x: (batch, H, W, p) features
        for i, prm in enumerate(self.levels):
            if "u" in prm:
                x = mera_end_torch(x, prm["u"], prm["top"])
            else:
                x = mera_block_torch(x, prm["u1"], prm["w"], prm["u2"], prm["top"])
            if i < len(self.levels) - 1:
                x = x / x.norm(dim=-1, keepdim=True)
        return x.reshape(x.shape[0], -1)
