#!/usr/bin/env python3
"""GPU figures of fasttn in one run, as Markdown tables and optionally JSON.

Device ceilings, product pooling, q-CNN and MERA2D training throughput with device="cuda",
1024^2 training steps, first-call costs:

    python bench/run_gpu.py --json gpu.json              # everything (a few minutes)
    python bench/run_gpu.py --sections ceilings pool     # a part
    python bench/run_gpu.py --table-from gpu.json        # the tables of a saved run

Prints Markdown tables, each section's as soon as it is measured; ``--json`` writes every
measurement (raw timings included) after each section, so an interrupted run keeps what it
measured. Workloads and conventions: ``benchmarks/gpu_workloads.py`` and ``bench/README.md``.

Without CuPy or a GPU it prints one line saying which is missing and exits 0 (with
``--require-gpu``: exit status 3). Exit status 1: a workload failed other than by running
out of device memory (its traceback is on stderr, its error in the table and the JSON).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmarks import gpu_workloads as G  # noqa: E402

NO_GPU_STATUS = 3  # exit status with --require-gpu where CuPy or a GPU is missing
SECTIONS = ("ceilings", "pool", "qcnn", "mera2d", "needle", "first_call")


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def table(head, rows) -> list:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _error_cell(row) -> str:
    return "out of memory" if row.get("out_of_memory") else f"error: {row['error'][:120]}"


def header_lines(res: dict) -> list:
    h = res["header"]
    d = h["device"]
    spec = d.get("spec_bandwidth_gbs")
    tf32 = h["env"].get("CUPY_TF32") or "0"
    lines = [f"fasttn {h['fasttn']} GPU benchmarks, {h['date']}",
             f"device: {d['name']} ({d['memory_gib']:.1f} GiB, {d['multiprocessors']} SMs, "
             f"compute capability {d['compute_capability']}"
             + (f", data-sheet bandwidth {spec:,.0f} GB/s" if spec else "") + ")",
             f"CuPy {h['cupy']}, CUDA runtime {h['cuda_runtime']}, driver {h['cuda_driver']}; "
             f"NumPy {h['numpy']}, Numba {h.get('numba', '-')}, Python {h['python']}; "
             f"CUPY_TF32={tf32}; host {h['host_cpu']} ({h['host_cores']} cores); "
             f"{h['kernel_cache_files_at_start']} files in the CuPy kernel cache at start"]
    return lines


def section_lines(name: str, res: dict) -> list:
    """The Markdown table of one measured section of ``res`` (a run's results)."""
    data = res.get(name)
    if data is None:
        return []
    c = res.get("ceilings")
    cf = G.ceiling_figures(c) if c and "error" not in c else None  # None: no percentages
    if name == "ceilings":
        if "error" in data:
            return ["### Ceilings", "", _error_cell(data)]
        mib = data["copy_bytes"] // 2 / 2**20
        rows = [[f"copy, cudaMemcpyAsync device to device, {mib:,.0f} MiB (read + write)",
                 f"{fmt(cf['memcpy_gbs'])} GB/s"],
                [f"copy, elementwise kernel, {mib:,.0f} MiB (read + write)",
                 f"{fmt(cf['copy_kernel_gbs'])} GB/s"],
                ["copy rate (the larger; denominator of % of copy)",
                 f"{fmt(cf['copy_gbs'])} GB/s"],
                [f"float32 GEMM {data['gemm_n']}^2 (cupy.matmul)",
                 f"{fmt(cf['sgemm_tflops'])} TFLOP/s"]]
        return ["### Ceilings", ""] + table(["figure", "value"], rows)
    if name == "pool":
        rows = []
        for r in data:
            shape = "x".join(str(n) for n in r["shape"])
            lead = [r["layout"], r["direction"], shape]
            if "error" in r:
                rows.append(lead + [_error_cell(r)] + ["-"] * 5)
                continue
            f = G.pool_figures(r, cf["copy_gbs"] if cf else math.nan)
            rows.append(lead + [fmt(r["bytes"] / 1e6), fmt(r["best_s"] * 1e3), fmt(f["gbs"]),
                                _pct(f["percent_of_copy"]),
                                fmt(f["meets_target"]) if cf else "-", fmt(r["first_call_s"])])
        head = ["layout", "pass", "shape (float32)", "MB moved", "ms", "GB/s", "% of copy",
                f">= {G.POOL_TARGET_PERCENT:.0f}%", "first call s"]
        return ["### Product pooling", ""] + table(head, rows)
    if name == "qcnn":
        rows = []
        for r in data:
            lead = [f"{r['size']}^2", str(r["batch"])]
            if "error" in r:
                rows.append(lead + [_error_cell(r)] + ["-"] * 6)
                continue
            f = G.qcnn_figures(r, cf["sgemm_tflops"] if cf else math.nan)
            rows.append(lead + [fmt(f["images_per_s"]), fmt(f["step_ms"]), fmt(f["gflops"]),
                                _pct(f["percent_of_gemm"]), fmt(r["first_call_s"]),
                                _loss_cell(r), fmt(r["device_pool_gib"])])
        head = ["size", "batch", "images/s", "step ms", "GFLOP/s", "% of GEMM", "first step s",
                "loss first / last", "pool GiB"]
        return [f"### q-CNN training (d = {G.W.D}, float32, device=\"cuda\")", ""] + table(
            head, rows)
    if name == "mera2d":
        rows = []
        for r in data:
            lead = [f"{r['size']}^2", str(r["batch"])]
            if "error" in r:
                rows.append(lead + [_error_cell(r)] + ["-"] * 5)
                continue
            f = G.mera_figures(r)
            rows.append(lead + [fmt(f["images_per_s"]), fmt(f["step_ms"]),
                                fmt(f["ns_per_pixel"]), fmt(r["first_call_s"]), _loss_cell(r),
                                fmt(r["device_pool_gib"])])
        head = ["size", "batch", "images/s", "step ms", "ns / pixel", "first step s",
                "loss first / last", "pool GiB"]
        return [f"### MERA2D training (chi = {G.M.CHI}, float32, device=\"cuda\")", ""] + table(
            head, rows)
    if name == "needle":
        rows = []
        for r in data:
            lead = [r["model"], r["domain"], f"{r['size']}^2", str(r["batch"])]
            if "error" in r:
                rows.append(lead + [_error_cell(r)] + ["-"] * 3)
                continue
            rows.append(lead + [f"{r['first_loss']:.6g}", fmt(r["losses_finite"]),
                                fmt(r["best_s"]), fmt(r["first_call_s"])])
        head = ["model", "domain", "size", "batch", "first-step loss", "all finite",
                "step s", "first step s"]
        sizes = sorted({r["size"] for r in data})
        title = ", ".join(f"{n}^2" for n in sizes)
        return [f"### {title} NeedleMNIST: training steps from the same initial parameters",
                ""] + table(head, rows)
    if name == "first_call":
        rows = []
        for r in data:
            if "error" in r:
                rows.append([r["call"], _error_cell(r), "-", "-", "-"])
                continue
            rows.append([r["call"], fmt(r["cold"]["first_call_s"]),
                         fmt(r["cached"]["first_call_s"]), fmt(r["cached"]["second_call_s"]),
                         fmt(r["cached"]["import_s"])])
        head = ["call", "cold s (empty kernel cache)", "cached s", "second call s", "import s"]
        return ["### First call in a fresh interpreter", ""] + table(head, rows)
    raise ValueError(f"section: expected one of {SECTIONS}, got {name!r}")


def _pct(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.1f}%"


def _loss_cell(r) -> str:
    cell = f"{r['first_loss']:.4g} / {r['last_loss']:.4g}"
    return cell if r["losses_finite"] else cell + " (non-finite)"


def print_results(res: dict, sections=SECTIONS) -> None:
    print("\n".join(header_lines(res)))
    for name in sections:
        lines = section_lines(name, res)
        if lines:
            print("\n" + "\n".join(lines))


def _measure(name: str, scale: float):
    """One section's records, the timing budgets multiplied by ``scale``."""
    def t(base):
        return dict(base, budget_s=base["budget_s"] * scale)

    if name == "ceilings":
        return G.guarded({}, lambda: G.measure_ceilings(t(G.CEILING_TIMING)))
    if name == "pool":
        return G.measure_pool(timing=t(G.OP_TIMING))
    if name == "qcnn":
        return G.measure_qcnn(timing=t(G.MODEL_TIMING))
    if name == "mera2d":
        return G.measure_mera(timing=t(G.MODEL_TIMING))
    if name == "needle":
        return G.measure_needle(timing=t(G.NEEDLE_TIMING))
    if name == "first_call":
        return G.measure_first_calls()
    raise ValueError(name)


def _write(path, res) -> None:
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(res, fh, indent=1, default=str)
        os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                   help="what to measure (the ceilings are always measured first)")
    p.add_argument("--budget-scale", type=float, default=1.0, metavar="X",
                   help="multiply every timing budget (seconds of best-of sampling)")
    p.add_argument("--json", help="write every measurement to this file (after each section)")
    p.add_argument("--table-from", metavar="JSON", help="print the tables of a saved --json file")
    p.add_argument("--require-gpu", action="store_true",
                   help=f"exit with status {NO_GPU_STATUS} (not 0) without CuPy or a GPU")
    args = p.parse_args(argv)
    if args.table_from:
        with open(args.table_from) as fh:
            res = json.load(fh)
        if "unavailable" in res:
            print(f"run_gpu: {args.table_from} holds no figures: {res['unavailable']}")
            return 0
        print_results(res)
        return 0

    reason = G.unavailable()
    if reason:
        print(f"run_gpu: no GPU figures measured: {reason}")
        _write(args.json, {"unavailable": reason})
        return NO_GPU_STATUS if args.require_gpu else 0

    res = {"header": G.environment(), "argv": sys.argv[1:]}
    print("\n".join(header_lines(res)), flush=True)
    todo = ["ceilings"] + [s for s in SECTIONS if s in args.sections and s != "ceilings"]
    for name in todo:
        t = time.perf_counter()
        print(f"\n[{name} ...]", file=sys.stderr, flush=True)
        res[name] = _measure(name, args.budget_scale)
        res.setdefault("section_seconds", {})[name] = time.perf_counter() - t
        _write(args.json, res)
        print("\n" + "\n".join(section_lines(name, res)), flush=True)
    total = sum(res["section_seconds"].values())
    print(f"\n({total:.0f} s in all: " + ", ".join(
        f"{k} {v:.0f} s" for k, v in res["section_seconds"].items()) + ")")
    failed = failures(res)
    if failed:
        print("run_gpu: failed (tracebacks above): " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


def failures(res: dict) -> list:
    """Workloads that raised, other than running out of device memory (a batch too large
    for the device is a figure, not a failure)."""
    out = []
    for name in SECTIONS:
        data = res.get(name)
        rows = [data] if isinstance(data, dict) else (data or [])
        out += [f"{name}: {r['error']}" for r in rows
                if "error" in r and not r.get("out_of_memory")]
    return out


if __name__ == "__main__":
    sys.exit(main())
