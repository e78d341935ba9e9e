"""Analysis of fitted models: entanglement entropies (``entropy``), layer-wise t-SNE and
class separation (``tsne``), and PNG figures (``plots``)."""
from __future__ import annotations

from .plots import save_tsne_grid
from .tsne import LayerTSNE, embed_layers, layer_separation, layer_tsne, reduce_layer

__all__ = ["LayerTSNE", "embed_layers", "layer_separation", "layer_tsne", "reduce_layer",
           "save_tsne_grid"]
