"""Training: optimizers, losses and the fit loop. Works on parameter buffers, not models."""
from .losses import cross_entropy_loss, loss_fn, n_correct, square_loss
from .optim import AdamW, StepLR
from .sweeps import CompiledMPOSweep, MPOSweep, run_sweep, sweep_schedule

__all__ = ["AdamW", "CompiledMPOSweep", "MPOSweep", "StepLR", "run_sweep", "sweep_schedule", "square_loss", "cross_entropy_loss", "loss_fn",
           "n_correct"]
