"""fasttn: compiled kernels and models for tensor-network machine learning."""
from __future__ import annotations

from . import ops
from .models import MERA2D, QCNN, load

__version__ = "0.1.0"

__all__ = ["MERA2D", "QCNN", "load", "ops", "__version__"]
