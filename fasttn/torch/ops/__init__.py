"""fasttn's operations as differentiable torch ops.

Each is a ``torch.library`` custom op in the ``fasttn`` namespace (``torch.ops.fasttn.*``)
with a shape function and an autograd formula, so ``torch.compile`` traces through it. The
forward and backward are fasttn's own pairs; tensors reach them without copies.
"""
from .mera_block import mera_block
from .mpo_apply import mpo_apply
from .mps_contract import mps_contract
from .product_pool import product_pool
from .qcnn_level import qcnn_level, qcnn_level_given_stats, qcnn_level_with_stats
from .tree_node import tree_node

__all__ = ["mera_block", "mpo_apply", "mps_contract", "product_pool", "qcnn_level", "qcnn_level_given_stats",
           "qcnn_level_with_stats", "tree_node"]
