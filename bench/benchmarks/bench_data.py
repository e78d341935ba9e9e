"""Benchmarks of the data layer (asv style: a class per workload, sizes as ``params``).

Generation throughput of NeedleMNIST (images/s, batches of 32, two prefetch threads) is the
``track_images_per_second`` figure. The resident-memory check of the issue (10,000 images at
1024x1024 in batches of 32 under 1.5 GB) runs as a script, in a fresh process so that its peak
RSS is its own::

    python bench/benchmarks/bench_data.py rss --size 1024 --count 10000 --batch-size 32

Measured on the 2-core development VM (numpy 2.4, numba 0.68, scikit-learn digit source):

* 10,000 x 1024^2 in batches of 32, prefetch 2: peak RSS 629-747 MiB (limit 1,536), 9.1-9.4 s.
* Generation throughput (``speed``, median of 5): 128^2 ~40,000 images/s, 512^2 ~4,200,
  1024^2 ~1,050 (bound by writing 4 MiB of fresh memory per image; runs vary +-30 %).
"""
from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np

import fasttn  # noqa: F401  (the suite runs against the installed package)
from fasttn.data import (DatasetNotFoundError, find_dataset_files, load_idx, needle_mnist,
                         resize_images)

BATCH = 32


def _images_per_second(ds, batch_size: int = BATCH, prefetch: int = 2) -> float:
    start = time.perf_counter()
    n = 0
    for X, _ in ds.batches(batch_size, prefetch=prefetch):
        n += len(X)
    return n / (time.perf_counter() - start)


class NeedleGeneration:
    """On-demand NeedleMNIST generation (scikit-learn digit source, protocol noise counts)."""

    params = [128, 512, 1024]
    param_names = ["size"]
    timeout = 300
    _COUNTS = {128: 4096, 512: 512, 1024: 256}

    def setup(self, size: int) -> None:
        self.ds = needle_mnist(size=size, count=self._COUNTS[size], source="digits")
        self.ds.arrays(2)  # compiles (or loads) the render kernel outside the timed region

    def time_iterate_batches(self, size: int) -> None:
        for _ in self.ds.batches(BATCH, prefetch=2):
            pass

    def time_single_image(self, size: int) -> None:
        self.ds[7]

    def track_images_per_second(self, size: int) -> float:
        return _images_per_second(self.ds)

    track_images_per_second.unit = "images/s"  # type: ignore[attr-defined]


class NeedleStreamMemory:
    """Peak memory while streaming 1024^2 images: bounded by the prefetch depth, not the count."""

    params = [1024]
    param_names = ["size"]
    timeout = 300

    def setup(self, size: int) -> None:
        self.ds = needle_mnist(size=size, count=320, source="digits")
        self.ds.arrays(2)

    def peakmem_iterate_batches(self, size: int) -> None:
        for _ in self.ds.batches(BATCH, prefetch=2):
            pass


class IdxLoad:
    """Reading and resizing Fashion-MNIST (skipped where the IDX files are not installed)."""

    timeout = 120

    def setup(self) -> None:
        try:
            self.images_path, _ = find_dataset_files("fashion-mnist", "train")
        except DatasetNotFoundError:
            raise NotImplementedError("Fashion-MNIST IDX files not installed")
        self.images = load_idx(self.images_path)

    def time_load_idx_train_images(self) -> None:
        load_idx(self.images_path)

    def time_resize_train_to_16(self) -> None:
        resize_images(self.images, 16)


def _measure_rss(size: int, count: int, batch_size: int, prefetch: int, source: str) -> int:
    ds = needle_mnist(size=size, count=count, source=source)
    ds.arrays(1)
    start = time.perf_counter()
    n = 0
    checksum = 0.0
    for X, y in ds.batches(batch_size, prefetch=prefetch):
        n += len(X)
        checksum += float(X[:, ::97, ::97].sum())  # touch the data like a consumer would
    elapsed = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"size={size} count={n} batch={batch_size} prefetch={prefetch} source={source}: "
          f"{elapsed:.1f} s, {n / elapsed:.0f} images/s, peak RSS {peak_mb:.0f} MiB "
          f"(checksum {checksum:.1f})")
    return 0 if peak_mb < 1536 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rss = sub.add_parser("rss", help="stream a NeedleMNIST set and report peak RSS")
    rss.add_argument("--size", type=int, default=1024)
    rss.add_argument("--count", type=int, default=10000)
    rss.add_argument("--batch-size", type=int, default=BATCH)
    rss.add_argument("--prefetch", type=int, default=2)
    rss.add_argument("--source", default="digits")
    speed = sub.add_parser("speed", help="images/s at 128, 512 and 1024")
    speed.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if args.command == "rss":
        return _measure_rss(args.size, args.count, args.batch_size, args.prefetch, args.source)
    for size in NeedleGeneration.params:
        bench = NeedleGeneration()
        bench.setup(size)
        rates = [bench.track_images_per_second(size) for _ in range(args.repeat)]
        print(f"size={size}: {np.median(rates):.0f} images/s (median of {args.repeat}; "
              f"{', '.join(f'{r:.0f}' for r in rates)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
