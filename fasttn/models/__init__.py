"""Models: estimators that hold parameters and orchestrate ops."""
from .base import CheckpointError, Estimator, load
from .mera2d import MERA2D
from .mps import MPS
from .qcnn import QCNN
from .tnn import TNN
from .tnn_layers import Dense, TNLayer
from .ttn2d import TTN2D

__all__ = ["CheckpointError", "Dense", "Estimator", "MERA2D", "MPS", "QCNN", "TNLayer", "TNN", "TTN2D", "load"]
