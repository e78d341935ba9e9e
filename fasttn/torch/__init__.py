"""fasttn as a PyTorch backend: differentiable ops and ``nn.Module`` layers.

Importing this subpackage imports torch (``import fasttn`` never does). Tensors reach
fasttn's kernels without copies and results come back the same way; every op is a
``torch.library`` custom op (``torch.ops.fasttn.*``), so models using them run under
``torch.compile``.
"""
try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("fasttn.torch needs PyTorch: pip install 'fasttn[torch]'") from exc
if not hasattr(torch.library, "custom_op"):  # pragma: no cover - torch < 2.4
    raise ImportError(f"fasttn.torch needs PyTorch >= 2.4 (torch.library.custom_op), found "
                      f"{torch.__version__}: pip install 'fasttn[torch]'")

from .models import CNNTN, QCNN
from .modules import MERABlockLayer, MPSLayer, QCNNLevel, TNLayer, TreeNodeLayer
from .ops import (mera_block, mpo_apply, mps_contract, product_pool, qcnn_level,
                  qcnn_level_given_stats, qcnn_level_with_stats, tree_node)

__all__ = ["CNNTN", "QCNN", "MERABlockLayer", "MPSLayer", "QCNNLevel", "TNLayer", "TreeNodeLayer", "mera_block",
           "mpo_apply", "mps_contract", "product_pool", "qcnn_level", "qcnn_level_given_stats",
           "qcnn_level_with_stats", "tree_node"]
