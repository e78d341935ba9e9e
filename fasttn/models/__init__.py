"""Models: estimators that hold parameters and orchestrate ops."""
from .base import Estimator, load
from .qcnn import QCNN

__all__ = ["Estimator", "QCNN", "load"]
