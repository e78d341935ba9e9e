#!/usr/bin/env python3
"""NeedleMNIST accuracy in one run: fasttn's default ``MERA2D`` against two PyTorch baselines.

Protocol:

* every model of a size sees the same canvases: ``fasttn.data.load_task("needle", ...)``
  with ``seed``, the training and the test split generated once;
* model selection uses only the training canvases: ``MERA2D`` is called bare
  (``fasttn.MERA2D(random_state=seed).fit(X, y)``: it holds out 10 % of them, stratified,
  and keeps its best validation epoch); the baselines hold out the same 10 %
  (``baselines.torch_cnn.validation_split`` draws it by the estimators' rule), train for
  ``--epochs`` epochs (stopping after ``--patience`` epochs without a better validation
  score) and keep the weights of their best validation epoch;
* the test set is scored once per model, after training.

Baselines: ``cnn``, three 3x3 convolutions with a global max pool
(``baselines.torch_cnn.GlobalMaxCNN``; Adam 1e-3, batch 32) and ``cnn-tn``,
``fasttn.torch.CNNTN`` built and trained with the settings of ``fasttn train torch --model
cnn-tn`` (bond 4, Adam 0.002, batch 64). Training seconds are wall clock, validation
included; torch runs on ``--threads`` threads (default: every core), fasttn on Numba's.

The README figures (bench/README.md, "NeedleMNIST accuracy"):

    python bench/needle_accuracy.py --sizes 64 128 --source fashion --target 3 \\
        --n-train 3000 --n-test 1000 --epochs 30 --models mera2d cnn cnn-tn --seed 0 \\
        --json needle_accuracy.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODELS = ("mera2d", "cnn", "cnn-tn")
# Adam step and batch of each torch baseline; cnn-tn's are the defaults of
# `fasttn train torch --model cnn-tn` (fasttn/cli.py), so its figure is that command's model
TORCH_SETTINGS = {"cnn": {"lr": 1e-3, "batch_size": 32},
                  "cnn-tn": {"lr": 0.002, "batch_size": 64}}
COLUMNS = ("model", "size", "source/target", "n_train", "test accuracy",
           "best epoch / run", "train s", "parameters")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="canvas sides")
    p.add_argument("--source", default="fashion", choices=["fashion", "digits", "mnist"],
                   help="where the needles come from (digits: embedded scikit-learn set)")
    p.add_argument("--target", type=int, default=3,
                   help="the needle's class (fashion: 3 dress, 1 trouser)")
    p.add_argument("--n-train", type=int, default=3000,
                   help="training canvases, the validation tenth included")
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=30, help="epochs of the torch baselines")
    p.add_argument("--patience", type=int, default=8,
                   help="torch baselines: stop after this many epochs without a better "
                        "validation score (MERA2D's n_iter_no_change default); 0: run every "
                        "epoch")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--seed", type=int, default=0, help="data, splits, initialisation, order")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    p.add_argument("--data-dir", default=None, help="IDX files of the needle source")
    p.add_argument("--json", default=None, help="write the results here (after each model)")
    p.add_argument("--verbose", action="store_true", help="torch baselines: one line per epoch")
    p.add_argument("--mera-epochs", type=int, default=None,
                   help="for tests only: MERA2D epochs (the README figures use its default)")
    return p.parse_args(argv)


def seed_everything(seed: int) -> None:
    """The same seed for Python, NumPy's global generator and torch, before each model (so a
    model's result does not depend on which models ran before it)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_mera2d(data, seed: int, epochs=None) -> dict:
    """``fasttn.MERA2D`` with its defaults (its own 10 % validation split and best epoch)."""
    import fasttn

    X_tr, y_tr, X_te, y_te = data
    model = fasttn.MERA2D(random_state=seed, **({} if epochs is None else {"epochs": epochs}))
    t0 = time.perf_counter()
    model.fit(X_tr, y_tr)
    seconds = time.perf_counter() - t0
    return {"test_accuracy": model.score(X_te, y_te), "best_epoch": model.best_epoch_,
            "epochs_run": len(model.history_),
            "val_accuracy": getattr(model, "best_validation_score_", None),
            "train_seconds": seconds, "n_params": model.n_params_, "settings": repr(model)}


def run_torch(name: str, data, args: argparse.Namespace) -> dict:
    """A torch baseline trained on the training canvases less the validation tenth."""
    from baselines.torch_cnn import (GlobalMaxCNN, evaluate, n_params, train_best_epoch,
                                     validation_split)
    from fasttn.torch import CNNTN

    X_tr, y_tr, X_te, y_te = data
    X_fit, y_fit, X_val, y_val = validation_split(X_tr, y_tr, 0.1, args.seed)
    seed_everything(args.seed)
    model = GlobalMaxCNN(2) if name == "cnn" else CNNTN(2, bond_dim=4)
    settings = TORCH_SETTINGS[name]
    fit = train_best_epoch(model, X_fit, y_fit, X_val, y_val, epochs=args.epochs,
                           seed=args.seed, patience=args.patience or None,
                           verbose=args.verbose, **settings)
    return {"test_accuracy": evaluate(model, X_te, y_te), "best_epoch": fit["best_epoch"],
            "epochs_run": fit["epochs_run"], "val_accuracy": fit["val_accuracy"],
            "train_seconds": fit["seconds"], "n_params": n_params(model),
            "settings": dict(settings, epochs=args.epochs, patience=args.patience),
            "history": fit["history"]}


def table(results: list) -> str:
    """The results as a Markdown table, one row per model and size."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in results:
        cells = [r["model"], f"{r['size']}x{r['size']}", f"{r['source']}/{r['target']}",
                 str(r["n_train"]), f"{r['test_accuracy']:.4f}",
                 f"{r['best_epoch']} / {r['epochs_run']}", f"{r['train_seconds']:.1f}",
                 f"{r['n_params']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(path: str, report: dict) -> None:
    from fasttn._atomic import atomic_file

    with atomic_file(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)


def main(argv=None) -> int:
    args = parse_args(argv)
    import numba
    import torch

    from fasttn.data import load_task

    torch.set_num_threads(args.threads)
    cores = os.cpu_count()
    load = os.getloadavg()
    # our process has done nothing yet, so the 1-minute load is other processes' work
    busy = load[0] >= 0.5
    machine = {"cores": cores, "torch_threads": torch.get_num_threads(),
               "numba_threads": numba.get_num_threads(), "torch": torch.__version__,
               "loadavg_start": list(load), "busy_at_start": busy,
               "date": datetime.datetime.now().isoformat(timespec="seconds")}
    print(f"NeedleMNIST accuracy: {args.source} target {args.target}, {args.n_train} training "
          f"canvases (10 % held out for validation), {args.n_test} test, seed {args.seed}")
    print(f"threads: torch {machine['torch_threads']}, numba {machine['numba_threads']}, of "
          f"{cores} cores; load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
          f"(1 / 5 / 15 min): "
          + ("other processes were busy, training seconds are inflated" if busy
             else "the machine was quiet"), flush=True)
    report = {"protocol": __doc__, "args": vars(args), "machine": machine,
              "results": []}
    for size in args.sizes:
        data = load_task("needle", size=size, n_train=args.n_train, n_test=args.n_test,
                         needle_source=args.source, needle_target=args.target,
                         data_dir=args.data_dir, seed=args.seed)
        for name in args.models:
            seed_everything(args.seed)
            r = (run_mera2d(data, args.seed, args.mera_epochs) if name == "mera2d"
                 else run_torch(name, data, args))
            r = dict(model=name, size=size, source=args.source, target=args.target,
                     n_train=args.n_train, n_test=args.n_test, **r)
            report["results"].append(r)
            print(f"{name} {size}x{size}: test accuracy {r['test_accuracy']:.4f}, best epoch "
                  f"{r['best_epoch']} of {r['epochs_run']}, {r['train_seconds']:.1f} s, "
                  f"{r['n_params']:,} parameters", flush=True)
            if args.json:
                write_json(args.json, report)  # an interrupted run keeps its finished rows
    machine["loadavg_end"] = list(os.getloadavg())
    print()
    print(table(report["results"]))
    if args.json:
        write_json(args.json, report)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
