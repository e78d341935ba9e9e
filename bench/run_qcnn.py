#!/usr/bin/env python3
"""Quick q-CNN headline table without asv: images/s of fasttn and PyTorch, speed-ups, GFLOP/s
and % of the sgemm rate, measured the way ``benchmarks/bench_qcnn.py`` measures them.

    python bench/run_qcnn.py                      # 16, 128, 256; 3 repeats
    python bench/run_qcnn.py --sizes 128 --repeats 5 --first-call --json out.json

Each repeat re-measures the ceilings, then every size in a fresh interpreter (fasttn and PyTorch
in turns, best of N calls). The table shows the best over all repeats and, in brackets, the
range of the per-repeat values.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmarks.quiet import busy_fraction, wait_for_quiet  # noqa: E402

from benchmarks import ceilings  # noqa: E402
from benchmarks import qcnn_workloads as W  # noqa: E402

COLUMNS = [  # (key, header)
    ("fasttn_train", "fasttn train img/s"),
    ("torch_train", "torch train img/s"),
    ("train_speedup", "train x"),
    ("fasttn_infer", "fasttn infer img/s (predict)"),
    ("fasttn_infer_linear", "fasttn infer img/s (lin)"),
    ("fasttn_infer_log", "fasttn infer img/s (log)"),
    ("torch_infer", "torch infer img/s"),
    ("infer_speedup", "infer x (predict)"),
    ("infer_linear_speedup", "infer x (lin)"),
    ("train_gflops", "train GFLOP/s"),
    ("train_pct_sgemm", "% of sgemm"),
]


def figures(r: dict, sgemm: float) -> dict:
    """Headline figures from the wall times of one size (``r["times"]``: name -> seconds)."""
    best = {k: min(v) for k, v in r["times"].items()}
    out = {k: r["batch"] / t for k, t in best.items()}
    out["train_gflops"] = r["train_flops"] / best["fasttn_train"] / 1e9
    out["train_pct_sgemm"] = 100 * out["train_gflops"] / sgemm
    if "torch_train" in best:
        out["train_speedup"] = best["torch_train"] / best["fasttn_train"]
        out["infer_speedup"] = best["torch_infer"] / best["fasttn_infer"]
        out["infer_linear_speedup"] = best["torch_infer"] / best["fasttn_infer_linear"]
    return out


def print_table(runs: list) -> None:
    """Best over all repeats (every time pooled; % of sgemm against the best sgemm rate),
    and in brackets the range of the per-repeat values."""
    sgemm = max(run["ceilings"]["sgemm_gflops"] for run in runs)
    sizes = list(runs[0]["sizes"])
    print(f"\nq-CNN d={W.D} float32, {os.cpu_count()} cores ({ceilings.cpu_name()}), "
          f"{runs[0].get('date', datetime.date.today())}; best of {len(runs)} repeats "
          f"[range over repeats]\n")
    head = ["size", "batch", "data"] + [h for _, h in COLUMNS]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for s in sizes:
        per_run = [figures(run["sizes"][s], run["ceilings"]["sgemm_gflops"]) for run in runs]
        pooled = dict(runs[0]["sizes"][s])
        pooled["times"] = {k: [t for run in runs for t in run["sizes"][s]["times"][k]]
                           for k in pooled["times"]}
        best = figures(pooled, sgemm)
        row = [f"{s}^2", str(pooled["batch"]), pooled["source"]]
        for key, _ in COLUMNS:
            if key not in best:
                row.append("-")
                continue
            vals = [f[key] for f in per_run]
            if key == "train_pct_sgemm":  # each repeat against the best ceiling
                vals = [100 * f["train_gflops"] / sgemm for f in per_run]
            cell = fmt(best[key])
            if len(vals) > 1:
                cell += f" [{fmt(min(vals))}-{fmt(max(vals))}]"
            row.append(cell)
        print("| " + " | ".join(row) + " |")
    for key in ("sgemm_gflops", "dgemm_gflops", "copy_gbs"):
        vals = [run["ceilings"][key] for run in runs]
        print(f"{key}: best {max(vals):.1f} [{min(vals):.1f}-{max(vals):.1f}]")
    if not all(r["finite"] for run in runs for r in run["sizes"].values()):
        print("warning: a training loss became non-finite during the measurement")


def fmt(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=list(W.SIZES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--first-call", action="store_true",
                   help="also measure Numba's first-call cost (cold and cached cache; ~1 min)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each repeat, wait up to this long for the cores to be idle "
                        "(under 15%% busy): other processes distort every figure")
    p.add_argument("--json", help="write every measurement to this file")
    p.add_argument("--table-from", metavar="JSON", nargs="+",
                   help="print the table of saved --json files (their repeats pooled)")
    args = p.parse_args(argv)
    if args.table_from:
        runs = []
        for path in args.table_from:
            with open(path) as fh:
                runs += json.load(fh)["runs"]
        for run in runs:
            run["sizes"] = {int(k): v for k, v in run["sizes"].items()}
        print_table(runs)
        return 0

    runs = []
    for i in range(args.repeats):
        busy = wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else busy_fraction()
        ceil = {"sgemm_gflops": ceilings.measure_gemm_gflops(np.float32),
                "dgemm_gflops": ceilings.measure_gemm_gflops(np.float64),
                "copy_gbs": ceilings.measure_copy_gbs()}
        res = W.measure_qcnn_isolated(args.sizes, with_torch=not args.no_torch)
        runs.append({"ceilings": ceil, "sizes": res})
        load = os.getloadavg()[0]
        runs[-1].update(busy_before=busy, load_average_1min=load,
                        date=datetime.date.today().isoformat())
        print(f"repeat {i + 1}/{args.repeats}: sgemm {ceil['sgemm_gflops']:.0f} GFLOP/s, "
              f"dgemm {ceil['dgemm_gflops']:.0f}, copy {ceil['copy_gbs']:.1f} GB/s; cores "
              f"{100 * busy:.0f}% busy before it, 1-min load average after {load:.2f}",
              flush=True)

    print_table(runs)

    first = {}
    if args.first_call:
        from benchmarks.bench_qcnn import FIRST_CALLS, first_call_costs

        print("\nfirst call (fresh interpreter): cold = empty Numba cache, cached = cache filled")
        for what in FIRST_CALLS:
            first[what] = c = first_call_costs(what)
            print(f"  {what}: cold {c['cold']['first_call_s']:.2f} s, cached "
                  f"{c['cached']['first_call_s']:.2f} s, second call "
                  f"{c['cached']['second_call_s']:.3f} s, import {c['cached']['import_s']:.2f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"runs": runs, "first_call": first}, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
