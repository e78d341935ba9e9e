"""fasttn: compiled kernels and models for tensor-network machine learning."""
from __future__ import annotations

from . import ops
from .models import MERA2D, MPS, QCNN, TNN, TTN2D, Dense, TNLayer, load

__version__ = "0.1.0"

__all__ = ["Dense", "MERA2D", "MPS", "QCNN", "TNLayer", "TNN", "TTN2D", "load", "ops", "__version__"]
