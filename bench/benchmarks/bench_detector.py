"""The default ``MERA2D`` detector (``window="auto"``: 2x2 patch sites, one level of 4x4
blocks, the top block scanned at every 8-px position, 32x32 regions pooled by log-mean-exp)
on NeedleMNIST canvases of 128^2 (batch 16), 256^2 (4) and 512^2 (1), beside the PyTorch
``GlobalMaxCNN`` and ``fasttn.torch.CNNTN`` on the same canvases; and the peak memory of one
1024^2 training step (batch 16) in a fresh interpreter.

Workloads are in :mod:`benchmarks.detector_workloads`; ``python -m
benchmarks.detector_workloads`` (from ``bench/``) prints the same figures as a table, the
ratios and GEMM shares measured in turns in one process.
"""
from __future__ import annotations

from . import detector_workloads as W


def _workload(model: str, size: int):
    if model == "fasttn":
        return W.Detector(size)
    try:
        return W.TorchDetector(model, size)
    except ImportError as exc:
        raise NotImplementedError(f"PyTorch is not installed (pip install 'fasttn[torch]'): "
                                  f"{exc}") from None


class DetectorStep:
    """One training step (fasttn: as ``fit`` takes it, AdamW and retraction included;
    PyTorch: forward, cross-entropy, backward, Adam) and one inference pass of a batch."""
    params = [list(W.SIZES), ["fasttn"] + list(W.TORCH_MODELS)]
    param_names = ["size", "model"]
    timeout = 900

    def setup(self, size, model):
        self.w = _workload(model, size)
        self.w.train_step()  # compile / allocate outside the timed region
        self.w.infer()

    def time_train_step(self, size, model):
        self.w.train_step()

    def time_inference(self, size, model):
        self.w.infer()


class DetectorThroughput:
    """Images/s of the detector and of both baselines measured in turns, the detector's
    speed-up over each, and its GEMM rate as a share of this process's sgemm rate."""
    params = [list(W.SIZES)]
    param_names = ["size"]
    timeout = 1200

    def setup_cache(self):
        return {size: W.measure(size) for size in W.SIZES}, W.sgemm_gflops()

    def track_train_images_per_s(self, cache, size):
        return cache[0][size]["fasttn_train"]
    track_train_images_per_s.unit = "images/s"

    def track_infer_images_per_s(self, cache, size):
        return cache[0][size]["fasttn_infer"]
    track_infer_images_per_s.unit = "images/s"

    def _speedup(self, cache, size, key):
        row = cache[0][size]
        if key not in row:
            raise NotImplementedError("PyTorch is not installed")
        return row["fasttn" + key[key.index("_"):]] / row[key]

    def track_train_speedup_over_cnn(self, cache, size):
        return self._speedup(cache, size, "cnn_train")
    track_train_speedup_over_cnn.unit = "x"

    def track_train_speedup_over_cnntn(self, cache, size):
        return self._speedup(cache, size, "cnntn_train")
    track_train_speedup_over_cnntn.unit = "x"

    def track_infer_speedup_over_cnn(self, cache, size):
        return self._speedup(cache, size, "cnn_infer")
    track_infer_speedup_over_cnn.unit = "x"

    def track_infer_speedup_over_cnntn(self, cache, size):
        return self._speedup(cache, size, "cnntn_infer")
    track_infer_speedup_over_cnntn.unit = "x"

    def track_train_percent_of_sgemm(self, cache, size):
        return W.figures(cache[0][size], cache[1])["train_pct_sgemm"]
    track_train_percent_of_sgemm.unit = "%"

    def track_infer_percent_of_sgemm(self, cache, size):
        return W.figures(cache[0][size], cache[1])["infer_pct_sgemm"]
    track_infer_percent_of_sgemm.unit = "%"


class DetectorMemory:
    """VmHWM of a fresh interpreter after one 1024^2 training step, batch 16."""
    timeout = 1200

    def track_peak_memory_1024(self):
        r = W.peak_memory_1024()
        if not r["finite"]:
            raise RuntimeError("non-finite loss or gradients at 1024^2")
        return r["peak_mib"]
    track_peak_memory_1024.unit = "MiB"
