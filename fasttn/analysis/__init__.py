"""Analysis of fitted models: entanglement entropies (``entropy``), layer-wise t-SNE and
class separation (``tsne``), where a scanning model found its evidence (``evidence``), and
PNG figures (``plots``)."""
from __future__ import annotations

from .evidence import localisation_rate, positive_evidence, region_boxes
from .plots import save_evidence_overlays, save_tsne_grid
from .tsne import LayerTSNE, embed_layers, layer_separation, layer_tsne, reduce_layer

__all__ = ["LayerTSNE", "embed_layers", "layer_separation", "layer_tsne",
           "localisation_rate", "positive_evidence", "reduce_layer", "region_boxes",
           "save_evidence_overlays", "save_tsne_grid"]
