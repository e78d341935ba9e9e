"""Operations: each a NumPy reference, a CPU kernel and (where built) a CUDA kernel."""
from .feature_maps import feature_map
from .layout import site_order
from .mera_block import (mera_block, mera_block_backward, mera_block_forward,
                         mera_end_backward, mera_end_forward)
from .mpo import (mpo_apply, mpo_apply_backward, mpo_apply_forward, mpo_apply_method,
                  mpo_from_dense, mpo_to_dense, mpo_to_dense_backward, mpo_to_dense_forward)
from .mps_contract import mps_contract, mps_contract_backward, mps_contract_forward
from .product_pool import (product_pool, product_pool_backward, product_pool_forward,
                           product_pool_log, product_pool_log_backward)
from .qcnn_level import (batch_stats, qcnn_level, qcnn_level_backward, qcnn_level_forward,
                         qcnn_level_log_backward, qcnn_level_log_forward,
                         qcnn_level_scaled_forward)
from .tree_node import tree_node, tree_node_backward, tree_node_forward
from .svd_truncate import (SVDTruncation, svd_truncate, svd_truncate_backward,
                           svd_truncate_forward)

__all__ = ["feature_map", "site_order", "mera_block", "mera_block_forward", "mera_block_backward",
           "mera_end_forward", "mera_end_backward", "mps_contract", "mps_contract_forward",
           "mps_contract_backward", "product_pool", "product_pool_forward",
           "product_pool_backward", "product_pool_log", "product_pool_log_backward",
           "batch_stats", "qcnn_level", "qcnn_level_forward", "qcnn_level_backward", "qcnn_level_log_forward",
           "qcnn_level_log_backward", "qcnn_level_scaled_forward", "mpo_apply",
           "mpo_apply_forward", "mpo_apply_backward", "mpo_apply_method", "mpo_from_dense",
           "mpo_to_dense", "mpo_to_dense_forward", "mpo_to_dense_backward", "SVDTruncation",
           "svd_truncate", "svd_truncate_forward", "svd_truncate_backward", "tree_node",
           "tree_node_forward", "tree_node_backward"]
