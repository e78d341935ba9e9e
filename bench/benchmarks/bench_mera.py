"""2D MERA benchmarks: one level of exact MERA blocks (forward + backward) against the plain
PyTorch batched-einsum version in the same process, and MERA2D's cost per pixel as the image
grows (it must stay flat: the contraction is linear in the number of pixels).

Workloads are in :mod:`benchmarks.mera_workloads`; ``python -m benchmarks.mera_workloads``
(from ``bench/``) prints the same figures without asv.
"""
from __future__ import annotations

from . import mera_workloads as W


def _speedup_over_torch(level) -> float:
    """PyTorch's time for the same level of blocks over fasttn's, in the same process."""
    try:
        t = W.TorchMeraLevel(level)
    except ImportError:
        raise NotImplementedError("PyTorch is not installed")
    return W.best_time(t.step) / W.best_time(level.step)


class MeraBlockLevel:
    params = [128, 512]
    param_names = ["size"]
    timeout = 600

    def setup(self, size):
        self.f = W.MeraLevel(size)
        self.f.step()  # compile outside the timed region

    def time_level_forward_backward(self, size):
        self.f.step()

    def track_gflops(self, size):
        return self.f.flops / W.best_time(self.f.step) / 1e9
    track_gflops.unit = "GFLOP/s"

    def track_speedup_over_torch(self, size):
        return _speedup_over_torch(self.f)
    track_speedup_over_torch.unit = "x"


class WideSiteLevel:
    """One level of blocks on raw 4x4-patch sites (p = 17): the wide-site route against the
    chunked kernel's centre outer product and against PyTorch's batched einsum."""
    params = ["wide", "chunked"]
    param_names = ["route"]
    timeout = 600

    def setup(self, route):
        self.f = W.WideMeraLevel(route)
        self.f.step()

    def time_level_forward_backward(self, route):
        self.f.step()

    def track_speedup_over_torch(self, route):
        return _speedup_over_torch(self.f)
    track_speedup_over_torch.unit = "x"


class Mera2DScaling:
    timeout = 900

    def setup(self):
        self.ns = W.mera2d_step_ns_per_pixel()

    def track_ns_per_pixel_1024_over_64(self):
        return self.ns[1024] / self.ns[64]
    track_ns_per_pixel_1024_over_64.unit = "ratio"

    def track_ns_per_pixel_64(self):
        return self.ns[64]
    track_ns_per_pixel_64.unit = "ns"

    def track_ns_per_pixel_1024(self):
        return self.ns[1024]
    track_ns_per_pixel_1024.unit = "ns"


class Mera2DTrainStep:
    """A whole MERA2D training step (features, forward, cross-entropy, backward, AdamW) on
    NeedleMNIST, fasttn and the PyTorch model of ``baselines/torch_mera.py`` in turns."""
    params = [128, 512]
    param_names = ["size"]
    timeout = 900

    def setup(self, size):
        self.f = W.Mera2DTrain(size)
        self.f.train_step()

    def time_train_step(self, size):
        self.f.train_step()

    def track_train_images_per_s(self, size):
        return self.f.batch / W.best_time(self.f.train_step)
    track_train_images_per_s.unit = "images/s"

    def track_train_speedup_over_torch(self, size):
        try:
            t = W.TorchMera2DTrain(self.f)
        except ImportError:
            raise NotImplementedError("PyTorch is not installed")
        return W.best_time(t.train_step) / W.best_time(self.f.train_step)
    track_train_speedup_over_torch.unit = "x"
