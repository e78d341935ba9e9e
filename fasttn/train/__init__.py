"""Training: optimizers, losses and the fit loop. Works on parameter buffers, not models."""
from .losses import cross_entropy_loss, loss_fn, square_loss
from .optim import AdamW, StepLR

__all__ = ["AdamW", "StepLR", "square_loss", "cross_entropy_loss", "loss_fn"]
