"""Models: estimators that hold parameters and orchestrate ops."""
from .base import Estimator, load
from .mera2d import MERA2D
from .qcnn import QCNN

__all__ = ["Estimator", "MERA2D", "QCNN", "load"]
