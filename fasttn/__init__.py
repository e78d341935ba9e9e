"""fasttn: compiled kernels and models for tensor-network machine learning."""
from __future__ import annotations

from . import ops
from .models import QCNN, load

__version__ = "0.1.0"

__all__ = ["QCNN", "load", "ops", "__version__"]
