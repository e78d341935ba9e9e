"""``fasttn`` command line: parses arguments and calls the public API, nothing more."""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Sequence


# --------------------------------------------------------------------------- train
def _add_train_commands(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train a model and report its test accuracy")
    models = train.add_subparsers(dest="model", required=True)
    q = models.add_parser("qcnn", help="q-CNN (Anagiannis & Cheng) on a named dataset",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--dataset", default="digits",
                   choices=["digits", "fashion-mnist", "mnist", "needle"],
                   help="digits is embedded (scikit-learn); the IDX sets come from "
                        "--data-dir, $FASTTN_DATA_DIR or /usr/share/datasets")
    q.add_argument("--size", type=int, default=None,
                   help="resize images to SIZE x SIZE (needle: canvas side, default 128)")
    q.add_argument("--n-train", type=int, default=None, help="use the first N training images")
    q.add_argument("--n-test", type=int, default=None, help="use the first N test images")
    q.add_argument("--data-dir", default=None)
    _add_needle_source_options(q)
    # model options default to None: the estimator's own defaults (what a bare QCNN() does)
    q.add_argument("--d", type=int, default=None,
                   help="base width; widths d*(l+1) (default: the model's, 14)")
    q.add_argument("--feature-map", default=None, choices=["fourier", "legendre", "cos_sin"],
                   help="default: the model's, cos_sin (Fourier is periodic on [0, 1], so it "
                        "cannot tell black from white pixels)")
    q.add_argument("--n-features", type=int, default=None)
    q.add_argument("--constant", action="store_true", help="add the constant feature f_0 = 1")
    q.add_argument("--pooling", default=None, choices=["1d", "2d"])
    q.add_argument("--child-weights", default=None, choices=["shared", "separate"],
                   help="shared: one 1x1 convolution per level (the paper), which makes every "
                        "product symmetric in its window's sites (an image and its upper/lower "
                        "halves swapped score the same); separate (the model's default): one "
                        "convolution per window position (a stride-2 kernel)")
    q.add_argument("--order", default=None, choices=["row", "column", "z"])
    q.add_argument("--loss", default=None, choices=["square", "cross_entropy"])
    q.add_argument("--epochs", type=int, default=None,
                   help="most epochs (early stopping on a held-out 10%% usually ends sooner)")
    q.add_argument("--batch-size", type=int, default=None)
    q.add_argument("--lr", type=float, default=None)
    q.add_argument("--weight-decay", type=float, default=None)
    q.add_argument("--lr-step", type=int, default=None)
    q.add_argument("--beta-init", type=float, default=None)
    q.add_argument("--domain", default=None, choices=["auto", "linear", "log"])
    q.add_argument("--paper", action="store_true",
                   help="start from the paper's configuration (QCNN.paper()) instead of the "
                        "defaults; the other options override it")
    q.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    _add_device_option(q)
    q.add_argument("--pad", action=argparse.BooleanOptionalAction, default=None,
                   help="zero-pad sides to powers of two (the model's default: yes)")
    q.add_argument("--augment-shift", type=float, default=0.0,
                   help="shift each training image by a random sub-pixel offset of up to this "
                        "many pixels per axis, fresh every batch (0: no augmentation)")
    _add_val_split_option(q)
    q.add_argument("--restore-best", action="store_true",
                   help="keep the parameters of the epoch of best validation accuracy "
                        "(needs --val-split)")
    q.add_argument("--entropy", action="store_true",
                   help="log the entanglement entropy of the class states every epoch")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", default=None, help="save the trained model here (.npz)")
    q.add_argument("--history", default=None, help="write the per-epoch history here (JSON)")
    q.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    q.set_defaults(func=_train_qcnn)
    _add_train_mera(models)
    _add_train_tnn(models)
    _add_train_ttn(models)
    _add_train_mps(models)
    _add_train_torch(models)


def _int_or_list(text: str):
    """``"4"`` -> 4, ``"4,2"`` -> [4, 2] (per-level values on the command line)."""
    vals = [int(c) for c in text.split(",")]
    return vals[0] if len(vals) == 1 else vals


def _add_device_option(q: argparse.ArgumentParser, note: str = "") -> None:
    q.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where training runs (cuda needs CuPy and an NVIDIA GPU)" + note)


def _add_train_tnn(models: argparse._SubParsersAction) -> None:
    q = models.add_parser("tnn", help="MPO tensor network (TNLayer) on the paper's small tasks",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--task", default="spiral", choices=list(_TNN_TASKS),
                   help="the paper's four tasks, or the 8x8 digits straight into the TNLayer")
    q.add_argument("--solver", default="sweep", choices=["sweep", "adam"])
    q.add_argument("--schedule", default="pal", choices=["pal", "lbl"])
    q.add_argument("--bond", default="4",
                   help="bond dimension D; a comma-separated list trains one model per D")
    q.add_argument("--sweeps", type=int, default=300, help="sweeps (or Adam epochs)")
    q.add_argument("--sweep-lr", type=float, default=None,
                   help="bond-tensor step (default: the task's, see --sweep-step)")
    q.add_argument("--sweep-step", default=None, choices=["plain", "scaled"],
                   help="default: scaled (step 4) for the spiral, plain (0.1) otherwise")
    q.add_argument("--lr", type=float, default=0.02, help="Adam step of the dense layers")
    q.add_argument("--cutoff", type=float, default=0.0)
    _add_device_option(q, "; cuda with --solver adam only")
    q.add_argument("--init", default=None, choices=["product", "random"],
                   help="MPO initialisation (default: random for the sine, product otherwise)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--plot", default=None, help="PNG of loss and entropy against sweeps")
    q.add_argument("--out", default=None, help="save the (last) trained model here (.npz)")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=_train_tnn)


# task -> (generator, n_train, n_test, hidden activations, output layer, sweep step)
_TNN_TASKS = {
    "blobs": ("gaussian_blobs", 500, 100, ("relu",), (2, "softmax"), ("plain", 0.1)),
    "spiral": ("spiral", 600, 600, ("relu",), (3, "softmax"), ("scaled", 4.0)),
    "line": ("noisy_line", 400, 100, ("linear",), (1, None), ("plain", 0.1)),
    "sine": ("noisy_sine", 400, 100, ("linear", "sigmoid", "sigmoid"), (1, None),
             ("plain", 0.1)),
    # the 8x8 pixels are already 64 = 2^6 features: the TNLayer takes them directly
    "digits": ("digits", None, None, ("relu",), (10, "softmax"), ("scaled", 4.0)),
}


def _train_tnn(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from fasttn.data import toy
    from fasttn.models.tnn import TNN
    from fasttn.models.tnn_layers import Dense, TNLayer

    gen, n_tr, n_te, hidden, (units, head), (step, step_lr) = _TNN_TASKS[args.task]
    step = args.sweep_step or step
    step_lr = args.sweep_lr if args.sweep_lr is not None else (
        step_lr if args.sweep_step in (None, step) else {"plain": 0.1, "scaled": 4.0}[step])
    if gen == "digits":
        from fasttn.data import load_task

        X_tr, y_tr, X_te, y_te = load_task("digits", size=8, seed=args.seed)
        X_tr, X_te = X_tr.reshape(len(X_tr), -1), X_te.reshape(len(X_te), -1)
    else:
        X, y = getattr(toy, gen)(n_tr + n_te, seed=args.seed)
        X_tr, y_tr, X_te, y_te = X[:n_tr], y[:n_tr], X[n_tr:], y[n_tr:]
    try:
        bonds = [int(b) for b in str(args.bond).split(",")]
    except ValueError:
        raise ValueError(f"--bond: expected an integer or a comma-separated list, got "
                         f"{args.bond!r}") from None
    if args.plot:
        if args.solver != "sweep":
            raise ValueError("--plot: the entropy curves come from the sweep solver")
        _require_plot("--plot")
    init = args.init or ("random" if args.task == "sine" else "product")
    histories = {}
    for bond in bonds:
        layers = ([] if gen == "digits" else [Dense(64, trainable=False)]) + (
                  [TNLayer(64, n_sites=6, bond_dim=bond, activation=a, init=init)
                     for a in hidden]
                  + [Dense(units, activation=head)])
        model = TNN(layers, solver=args.solver, schedule=args.schedule, lr=args.lr,
                    sweep_lr=step_lr, sweep_step=step, cutoff=args.cutoff,
                    epochs=args.sweeps, random_state=args.seed, device=args.device,
                    verbose=0 if args.quiet else 1)
        t0 = time.perf_counter()
        model.fit(X_tr, y_tr)
        seconds = time.perf_counter() - t0
        line = f"{args.task} D={bond}: train time {seconds:.1f} s"
        if model.task_ == "classification":
            line += (f"  train accuracy {model.score(X_tr, y_tr):.4f}  test accuracy "
                     f"{model.score(X_te, y_te):.4f}")
        else:
            mse = float(np.mean((model.predict(X_te) - y_te) ** 2))
            line += f"  test MSE {mse:.4g}  R^2 {model.score(X_te, y_te):.4f}"
            if args.task == "line":
                p = model.predict(np.array([[0.0], [1.0]]))
                line += f"  a {p[1] - p[0]:.4f}  b {p[0]:.4f}"
        if args.solver == "sweep":
            line += f"  max bond entropy {model.history_[-1]['entropy_max']:.3f}"
        line += "  Schmidt entropies of W " + " ".join(
            f"{e:.3f}" for e in model.bond_entropies()[0])
        print(line)
        histories[f"D={bond}"] = model.history_
    if args.plot:
        from fasttn.analysis.plots import save_sweep_curves

        save_sweep_curves(histories, args.plot, title=f"TNN on {args.task}")
        print(f"wrote {args.plot}")
    if args.out:
        model.save(args.out)
        print(f"saved {args.out}")
    return 0


def _add_train_ttn(models: argparse._SubParsersAction) -> None:
    q = models.add_parser("ttn", help="2D tree tensor network (Liu et al.) on a named dataset",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_image_data_options(q)
    q.add_argument("--chi", default="8",
                   help="bond dimension of the level outputs: one value, or one per level "
                        "below the top, comma-separated")
    q.add_argument("--d", type=int, default=2, help="degree of the cos/sin feature map")
    q.add_argument("--top", default="multiclass", choices=["multiclass", "ovr"],
                   help="one tree with a class output, or one binary tree per class")
    q.add_argument("--solver", default="adam", choices=["adam", "sweep"],
                   help="backpropagation, or isometric environment-SVD sweeps")
    q.add_argument("--epochs", type=int, default=4, help="epochs (Adam) or sweeps")
    q.add_argument("--batch-size", type=int, default=64)
    q.add_argument("--lr", type=float, default=0.005)
    q.add_argument("--lr-step", type=int, default=2)
    q.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    _add_device_option(q)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", default=None, help="save the trained model here (.npz)")
    q.add_argument("--history", default=None, help="write the per-epoch history here (JSON)")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=_train_ttn)


def _add_train_mps(models: argparse._SubParsersAction) -> None:
    q = models.add_parser("mps", help="matrix product state classifier (Stoudenmire & "
                                      "Schwab) on a named dataset",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_image_data_options(q)
    q.add_argument("--bond", type=int, default=20, help="bond dimension (DMRG: the largest)")
    q.add_argument("--d", type=int, default=2, help="degree of the cos/sin feature map")
    q.add_argument("--order", default="column", choices=["column", "row", "snake", "hilbert"],
                   help="how the pixels are laid out as the chain")
    q.add_argument("--solver", default="adam", choices=["adam", "dmrg"],
                   help="backpropagation, or two-site DMRG sweeps")
    q.add_argument("--cutoff", type=float, default=1e-3,
                   help="DMRG: relative singular-value cutoff of the splits")
    q.add_argument("--epochs", type=int, default=30, help="epochs (Adam) or sweeps (DMRG)")
    q.add_argument("--batch-size", type=int, default=32)
    q.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    _add_device_option(q)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", default=None, help="save the trained model here (.npz)")
    q.add_argument("--history", default=None, help="write the per-epoch history here (JSON)")
    q.add_argument("--bond-plot", default=None,
                   help="DMRG: write the bond dimensions chosen per sweep here (PNG)")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=_train_mps)


def _train_mps(args: argparse.Namespace) -> int:
    import time

    import fasttn

    X_tr, y_tr, X_te, y_te = _image_task(args)
    model = fasttn.MPS(bond_dim=args.bond, d=args.d, order=args.order, solver=args.solver,
                       cutoff=args.cutoff, batch_size=args.batch_size, epochs=args.epochs,
                       dtype=args.dtype, device=args.device, random_state=args.seed,
                       verbose=0 if args.quiet else 1)
    print(f"MPS on {args.dataset}{' classes ' + args.classes if args.classes else ''}: "
          f"{len(y_tr)} train / {len(y_te)} test images of {X_tr.shape[1]}x{X_tr.shape[2]}; "
          f"{model!r}")
    t0 = time.perf_counter()
    model.fit(X_tr, y_tr)
    seconds = time.perf_counter() - t0
    print(f"parameters {model.n_params_}  train time {seconds:.1f} s  train accuracy "
          f"{model.score(X_tr, y_tr):.4f}  test accuracy {model.score(X_te, y_te):.4f}")
    if args.solver == "dmrg" and len(model.bond_history_):
        last = model.bond_history_[-1]
        print(f"bonds after the last sweep: mean {last.mean():.1f}  max {last.max()}  "
              f"min {last.min()}")
        if args.bond_plot:
            from fasttn.analysis.plots import save_bond_history

            save_bond_history(model.bond_history_, args.bond_plot, max_bond=args.bond,
                              title=f"MPS DMRG on {args.dataset}: bond dimensions "
                                    f"(cutoff {args.cutoff:g})")
            print(f"wrote {args.bond_plot}")
    _write_history_and_model(args, model)
    return 0


def _write_history_and_model(args: argparse.Namespace, model) -> None:
    """``--history`` (the per-epoch records as JSON, written atomically) and ``--out``."""
    if args.history:
        import json

        from fasttn._atomic import atomic_file

        with atomic_file(args.history) as tmp:
            with open(tmp, "w") as f:
                json.dump(model.history_, f, indent=1)
    if args.out:
        model.save(args.out)
        print(f"saved {args.out}")


def _add_train_torch(models: argparse._SubParsersAction) -> None:
    q = models.add_parser(
        "torch", help="a PyTorch model built from fasttn's torch layers (needs the torch "
                      "extra); data-parallel under torchrun with --distributed",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--model", default="qcnn", choices=["qcnn", "cnn-tn"],
                   help="qcnn: the q-CNN of QCNNLevel layers; cnn-tn: three convolutions, "
                        "then a TNLayer (MPO) and a linear classifier")
    _add_image_data_options(q)
    # not --d: torchrun parses the whole command line and would take it for its own options
    q.add_argument("--width", type=int, default=8, help="q-CNN base width d (widths d(l+1))")
    q.add_argument("--bond", type=int, default=4, help="TNLayer bond dimension (cnn-tn)")
    q.add_argument("--epochs", type=int, default=3)
    q.add_argument("--batch-size", type=int, default=64, help="the global batch")
    q.add_argument("--lr", type=float, default=None,
                   help="Adam step (default 0.01 for qcnn, 0.002 for cnn-tn)")
    q.add_argument("--max-steps", type=int, default=None, help="stop after N optimiser steps")
    q.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--distributed", action="store_true",
                   help="join the torchrun process group (gloo on CPU, NCCL on GPUs); each "
                        "process takes its share of every global batch")
    q.add_argument("--save-params", default=None,
                   help="write the final parameters and buffers here (.npz, rank 0)")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=_train_torch)


def _train_torch(args: argparse.Namespace) -> int:
    import numpy as np

    try:
        import torch

        from fasttn.torch import CNNTN, QCNN
        from fasttn.torch.distributed import (evaluate, fit_data_parallel, init_from_env,
                                              rank_and_world)
    except ImportError as exc:
        raise ValueError(f"fasttn train torch needs PyTorch: pip install 'fasttn[torch]' "
                         f"({exc})") from exc
    if args.distributed:
        init_from_env()
    rank, world = rank_and_world()
    if args.size or args.model == "qcnn":  # the q-CNN needs power-of-two sides
        X_tr, y_tr, X_te, y_te = _image_task(args)
    else:
        X_tr, y_tr, X_te, y_te = _image_task(args, size=None)
    n_classes = max(int(max(y_tr.max(), y_te.max())) + 1, 2)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)  # the same initial parameters on every process
    if args.model == "qcnn":
        model = QCNN(X_tr.shape[1:], n_classes, d=args.width, dtype=dtype)
        lr = args.lr or 0.01
    else:
        model = CNNTN(n_classes, bond_dim=args.bond, dtype=dtype)
        lr = args.lr or 0.002
    if rank == 0:
        print(f"{args.model} on {args.dataset}: {len(y_tr)} train / {len(y_te)} test images of "
              f"{X_tr.shape[1]}x{X_tr.shape[2]}, {sum(p.numel() for p in model.parameters())} "
              f"parameters, {world} process(es), global batch {args.batch_size}")
    fit_data_parallel(model, X_tr, y_tr, epochs=args.epochs, batch_size=args.batch_size,
                      lr=lr, seed=args.seed, max_steps=args.max_steps,
                      verbose=not args.quiet)
    if rank == 0:
        print(f"test accuracy {evaluate(model, X_te, y_te):.4f}")
        if args.save_params:
            from fasttn._atomic import atomic_file

            state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
            with atomic_file(args.save_params) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **state)
            print(f"saved {args.save_params}")
    if args.distributed:
        torch.distributed.destroy_process_group()
    return 0


def _add_image_data_options(q: argparse.ArgumentParser) -> None:
    q.add_argument("--dataset", default="digits",
                   choices=["digits", "fashion-mnist", "mnist", "needle"],
                   help="digits is embedded (scikit-learn); the IDX sets come from "
                        "--data-dir, $FASTTN_DATA_DIR or /usr/share/datasets")
    q.add_argument("--size", type=int, default=None,
                   help="resize to SIZE x SIZE, a power of 2 (default: 8 for digits, 16 for "
                        "the IDX sets, 128 for needle)")
    q.add_argument("--classes", default=None,
                   help="keep only these labels, comma-separated (relabelled 0, 1, ... in "
                        "this order), e.g. 0,6 for T-shirt vs shirt")
    q.add_argument("--n-train", type=int, default=None, help="use the first N training images")
    q.add_argument("--n-test", type=int, default=None, help="use the first N test images")
    q.add_argument("--data-dir", default=None)
    _add_needle_source_options(q)


def _add_needle_source_options(q: argparse.ArgumentParser) -> None:
    q.add_argument("--needle-source", default="digits", choices=["digits", "mnist", "fashion"],
                   help="needle: where its digits come from (digits: the embedded scikit-learn "
                        "set; mnist / fashion: IDX files, a Fashion-MNIST class as the needle)")
    q.add_argument("--needle-target", type=int, default=3,
                   help="needle: the target class (3: the protocol's digit; Fashion: dress)")


def _needle_kwargs(args: argparse.Namespace) -> dict:
    """The needle options for :func:`fasttn.data.load_task`."""
    return {"needle_source": args.needle_source, "needle_target": args.needle_target}


_DEFAULT_SIZE = object()


def _image_task(args: argparse.Namespace, size=_DEFAULT_SIZE):
    """``(X_train, y_train, X_test, y_test)`` from the shared data options; ``size=None``
    keeps the native size."""
    from fasttn.data import load_task, select_classes

    if size is _DEFAULT_SIZE:
        size = args.size or {"digits": None, "needle": 128}.get(args.dataset, 16)
    # a needle set is generated to the counts asked for; the others are cut after loading
    counts = ({"n_train": args.n_train, "n_test": args.n_test} if args.dataset == "needle"
              else {})
    X_tr, y_tr, X_te, y_te = load_task(args.dataset, size=size, data_dir=args.data_dir,
                                       seed=args.seed, **counts, **_needle_kwargs(args))
    if args.classes:
        classes = [int(c) for c in args.classes.split(",")]
        X_tr, y_tr = select_classes(X_tr, y_tr, classes)
        X_te, y_te = select_classes(X_te, y_te, classes)
    return X_tr[:args.n_train], y_tr[:args.n_train], X_te[:args.n_test], y_te[:args.n_test]


def _train_ttn(args: argparse.Namespace) -> int:
    import time

    import fasttn

    X_tr, y_tr, X_te, y_te = _image_task(args)
    n_classes = max(int(max(y_tr.max(), y_te.max())) + 1, 2)
    model = fasttn.TTN2D(n_classes=n_classes, chi=_int_or_list(args.chi), d=args.d,
                         top=args.top, solver=args.solver, lr=args.lr, lr_step=args.lr_step,
                         batch_size=args.batch_size, epochs=args.epochs, dtype=args.dtype,
                         device=args.device, random_state=args.seed,
                         verbose=0 if args.quiet else 1)
    print(f"TTN2D on {args.dataset}{' classes ' + args.classes if args.classes else ''}: "
          f"{len(y_tr)} train / {len(y_te)} test images of {X_tr.shape[1]}x{X_tr.shape[2]}; "
          f"{model!r}")
    t0 = time.perf_counter()
    model.fit(X_tr, y_tr)
    seconds = time.perf_counter() - t0
    print(f"parameters {model.n_params_}  levels {model.n_levels_}  train time {seconds:.1f} s  "
          f"train accuracy {model.score(X_tr, y_tr):.4f}  test accuracy "
          f"{model.score(X_te, y_te):.4f}")
    if args.solver == "sweep":
        print(f"isometry error per level: "
              + " ".join(f"{e:.1e}" for e in model.isometry_errors()))
    _write_history_and_model(args, model)
    return 0


def _shift_augment(max_shift: float):
    """``--augment-shift``: random sub-pixel shifts of every training batch, or None."""
    if max_shift <= 0.0:
        return None
    import functools

    from fasttn.data import random_shift

    return functools.partial(random_shift, max_shift=max_shift)


def _add_val_split_option(q: argparse.ArgumentParser) -> None:
    q.add_argument("--val-split", type=float, default=0.0,
                   help="hold out this fraction of the training images for validation, "
                        "scored every epoch as val_accuracy; without it the test set is "
                        "scored every epoch as test_accuracy (never used to pick a model)")


def _split_validation(args: argparse.Namespace, X_tr, y_tr):
    """``--val-split``: ``(X_train, y_train, validation_data or None)``, the held-out
    images drawn with ``--seed``."""
    if not 0.0 <= args.val_split < 1.0:
        raise ValueError(f"--val-split: expected a fraction in [0, 1), got {args.val_split}")
    if args.val_split == 0.0:
        return X_tr, y_tr, None
    import numpy as np

    order = np.random.default_rng(args.seed).permutation(len(y_tr))
    n_val = max(1, int(round(args.val_split * len(y_tr))))
    if n_val >= len(y_tr):
        raise ValueError(f"--val-split: {args.val_split} of {len(y_tr)} training images "
                         f"leaves none to train on")
    val, keep = np.sort(order[:n_val]), np.sort(order[n_val:])
    print(f"validation: {n_val} images held out of the training set")
    return X_tr[keep], y_tr[keep], (X_tr[val], y_tr[val])


def _epoch_scores(model, validation, X_te, y_te, callbacks=()) -> dict:
    """``fit`` keywords for the per-epoch scores: with a held-out split the model records
    it as ``val_accuracy``; without one the test set is recorded as ``test_accuracy``
    (where the model's ``fit`` takes callbacks), never under the validation name."""
    import inspect

    callbacks = list(callbacks)
    if validation is None:
        callbacks.append(lambda m, epoch, rec: {"test_accuracy": m.score(X_te, y_te)})
    if "callbacks" not in inspect.signature(model.fit).parameters:
        return {}  # no per-epoch hook: the test set is scored once, at the end
    return {"callbacks": callbacks}


def _add_train_mera(models: argparse._SubParsersAction) -> None:
    q = models.add_parser("mera", help="2D MERA classifier (exact 4x4 MERA blocks)",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                          description="Options left unset take MERA2D's defaults (or "
                                      "MERA2D.paper()'s with --paper).")
    q.add_argument("--dataset", default="digits",
                   choices=["digits", "fashion-mnist", "mnist", "needle"])
    q.add_argument("--size", type=int, default=None,
                   help="resize to SIZE x SIZE, a power of 2: levels of 4x4 blocks, then a 2x2 "
                        "end block when SIZE is not a power of 4 (other sizes are zero-padded; "
                        "default 16; needle: canvas 64)")
    q.add_argument("--n-train", type=int, default=None)
    q.add_argument("--n-test", type=int, default=None)
    q.add_argument("--data-dir", default=None)
    _add_needle_source_options(q)
    q.add_argument("--paper", action="store_true",
                   help="start from the 2D MERA reference's configuration (MERA2D.paper())")
    q.add_argument("--chi", default=None,
                   help="bond dimension of the level outputs: one for all 4x4 levels, or a "
                        "comma-separated list of one per level (model default 4)")
    q.add_argument("--bond", default=None,
                   help="disentangler legs: one for all levels or one per level "
                        "(default: each level's chi, 2 on 4x4 patch sites)")
    q.add_argument("--unshared", action="store_true",
                   help="one set of tensors per block instead of one per level")
    q.add_argument("--patch", type=int, default=None,
                   help="sites are PATCH x PATCH squares of raw pixel values (1: every pixel "
                        "a site, embedded by --feature-map; model default: 1 up to 32x32, "
                        "a sixteenth of the window with scanned regions (2), 4 with "
                        "--window image)")
    q.add_argument("--window", default=None, type=_window_arg,
                   help="side in pixels of the regions read out: the top block scans every "
                        "position and the class scores are pooled over them; 'image': one "
                        "read-out of the whole image (model default: 32 on images larger "
                        "than 32x32)")
    q.add_argument("--feature-map", default=None, choices=["fourier", "legendre", "cos_sin"])
    q.add_argument("--no-constant", action="store_true", help="no constant feature channel")
    q.add_argument("--level-map", default=None, choices=["none", "relu"],
                   help="relu (model default): each normalised site y enters the next level "
                        "as [1, relu(y)]; none: the exact multilinear network")
    q.add_argument("--init", default=None, choices=["random", "identity"])
    q.add_argument("--init-scale", type=float, default=None,
                   help="standard deviation of the initial noise relative to 1/sqrt(fan-in)")
    q.add_argument("--weight-decay", type=float, default=None)
    q.add_argument("--augment-shift", type=float, default=None,
                   help="shift each training image by a random sub-pixel offset of up to this "
                        "many pixels per axis, fresh every batch (0: none; model default: 4 "
                        "with scanned regions or patch sites, else 0)")
    q.add_argument("--constraint", default=None, choices=["none", "isometric", "norm"],
                   help="isometric: keep every tensor but the class map an isometry (polar "
                        "retraction); norm: keep the norm of every tensor below the last level "
                        "fixed (the scores do not depend on it)")
    q.add_argument("--predict-shift", type=int, default=None,
                   help="predictions average four copies of each image moved by (+-N, +-N) "
                        "pixels (0: one pass; model default: a quarter of the region stride, "
                        "2, with scanned regions, else 0)")
    q.add_argument("--stream", action="store_true",
                   help="needle only: every epoch trains on --n-train (default 3000) fresh "
                        "canvases (the generator's next layouts of the training split), and "
                        "the epoch that scores best on a tenth as many held-out canvases is "
                        "kept")
    q.add_argument("--warm-start", default=None, metavar="MODEL",
                   help="continue training this saved MERA2D (.npz) instead of a new one, "
                        "e.g. a detector fitted on smaller canvases (its tensors read any "
                        "canvas size); only the training options above and below apply")
    _add_val_split_option(q)
    q.add_argument("--epochs", type=int, default=None)
    q.add_argument("--batch-size", type=int, default=None)
    q.add_argument("--lr", type=float, default=None)
    q.add_argument("--lr-step", type=int, default=None)
    q.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    _add_device_option(q)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", default=None, help="save the trained model here (.npz)")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=_train_mera)


#: Canvases per streamed epoch when ``--stream`` has no ``--n-train``.
_STREAM_EPOCH = 3000

#: ``fasttn train mera`` options that shape the network (not allowed with --warm-start).
_MERA_SHAPE_OPTIONS = ("paper", "chi", "bond", "unshared", "patch", "window", "feature_map",
                       "no_constant", "level_map", "init", "init_scale", "constraint")


def _window_arg(text: str):
    """``--window``: a positive number of pixels, or ``image``."""
    if text == "image":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of pixels or 'image', "
                                         f"got {text!r}")
    return value


def _train_mera(args: argparse.Namespace) -> int:
    import time

    import fasttn
    from fasttn.data import load_task

    size = args.size or (64 if args.dataset == "needle" else 16)
    if args.stream and args.dataset != "needle":
        raise ValueError(f"--stream: fresh canvases come from the needle generator; got "
                         f"--dataset {args.dataset}")
    # streamed epochs draw their own canvases: no training split is built
    X_tr, y_tr, X_te, y_te = load_task(args.dataset, size=size,
                                       n_train=1 if args.stream else args.n_train,
                                       n_test=args.n_test, data_dir=args.data_dir,
                                       seed=args.seed, **_needle_kwargs(args))
    given = {name: getattr(args, name) for name in (
        "patch", "feature_map", "level_map", "init", "init_scale", "constraint", "lr",
        "weight_decay", "lr_step", "batch_size", "epochs", "augment_shift", "predict_shift")}
    params = {k: v for k, v in given.items() if v is not None}
    if args.chi is not None:
        params["chi"] = _int_or_list(args.chi)
    if args.bond is not None:
        params["bond"] = _int_or_list(args.bond)
    if args.window is not None:
        params["window"] = None if args.window == "image" else args.window
    if args.unshared:
        params["shared"] = False
    if args.no_constant:
        params["constant"] = False
    if args.warm_start:
        shaping = [name for name in _MERA_SHAPE_OPTIONS if getattr(args, name) not in
                   (None, False)]
        if shaping:
            raise ValueError(f"--warm-start continues a saved network; "
                             f"--{shaping[0].replace('_', '-')} would change it (drop it)")
        model = fasttn.load(args.warm_start)
        if not isinstance(model, fasttn.MERA2D):
            raise ValueError(f"--warm-start: expected a saved MERA2D, got "
                             f"a {type(model).__name__} in {args.warm_start}")
        model.set_params(**params, device=args.device, random_state=args.seed,
                         verbose=0 if args.quiet else 1)
    else:
        make = fasttn.MERA2D.paper if args.paper else fasttn.MERA2D
        model = make(**params, dtype=args.dtype, device=args.device, random_state=args.seed,
                     verbose=0 if args.quiet else 1)
    n_train = (args.n_train or _STREAM_EPOCH) if args.stream else len(y_tr)
    print(f"2D MERA on {args.dataset}: {n_train} train{' per epoch' * args.stream} / "
          f"{len(y_te)} test images of {X_tr.shape[1]}x{X_tr.shape[2]}; {model!r}")
    t0 = time.perf_counter()
    if args.stream:
        model = _fit_streamed(model, args, size, n_train)
    else:
        X_tr, y_tr, validation = _split_validation(args, X_tr, y_tr)
        model.fit(X_tr, y_tr, validation_data=validation, warm_start=bool(args.warm_start),
                  **_epoch_scores(model, validation, X_te, y_te))
    seconds = time.perf_counter() - t0
    print(f"parameters {model.n_params_}  levels {model.n_levels_}  train time {seconds:.1f} s  "
          f"test accuracy {model.score(X_te, y_te):.4f}")
    if args.out:
        model.save(args.out)
        print(f"saved {args.out}")
    return 0


def _fit_streamed(model, args: argparse.Namespace, size: int, n: int):
    """``--stream``: epoch ``k`` is one pass over canvases ``k n .. (k + 1) n - 1`` of the
    training split's generator (fresh layouts; the needles cycle through the split's
    images), each a warm-started ``fit`` of one epoch; the held-out canvases are another
    seed's layouts of the same split (a tenth as many), and the model of the epoch that
    scores best on them is returned."""
    import copy

    from fasttn.data import needle_mnist

    if args.val_split:
        raise ValueError("--stream: holds out its own canvases; drop --val-split")
    kw = dict(size=size, source=args.needle_source, target=args.needle_target,
              data_dir=args.data_dir)
    epochs = model.epochs
    held = needle_mnist(split="train", count=max(n // 10, 2), seed=args.seed + 1,
                        **kw).arrays()
    stream = needle_mnist(split="train", count=n * epochs, seed=args.seed, **kw)
    model.set_params(early_stopping=False)
    best, best_score = None, -1.0
    for k, (X, y) in enumerate(stream.batches(n)):
        model.fit(X, y, warm_start=k > 0 or bool(args.warm_start), epochs=1,
                  validation_data=held)
        score = model.history_[-1]["val_accuracy"]
        if score > best_score:
            best, best_score = copy.deepcopy(model), score
    print(f"streamed {epochs} x {n} canvases; best held-out accuracy {best_score:.4f} "
          f"(epoch {best.history_[-1]['epoch']})")
    return best


def _train_qcnn(args: argparse.Namespace) -> int:
    import json
    import time

    import fasttn
    from fasttn.data import load_task

    X_tr, y_tr, X_te, y_te = load_task(args.dataset, size=args.size, n_train=args.n_train,
                                       n_test=args.n_test, data_dir=args.data_dir,
                                       seed=args.seed, **_needle_kwargs(args))
    given = {name: getattr(args, name) for name in (
        "d", "feature_map", "n_features", "pooling", "child_weights", "order", "loss", "lr",
        "weight_decay", "lr_step", "batch_size", "epochs", "beta_init", "domain", "pad")}
    params = {k: v for k, v in given.items() if v is not None}
    if args.constant:
        params["constant"] = True
    make = fasttn.QCNN.paper if args.paper else fasttn.QCNN
    model = make(**params, dtype=args.dtype, device=args.device, random_state=args.seed,
                 verbose=0 if args.quiet else 1)
    print(f"q-CNN on {args.dataset}: {len(y_tr)} train / {len(y_te)} test images of "
          f"{X_tr.shape[1]}x{X_tr.shape[2]}; {model!r}")
    callbacks = []
    if args.entropy:
        from fasttn.analysis.entropy import entropy_callback

        callbacks.append(entropy_callback)
    if args.restore_best and args.val_split == 0.0:
        raise ValueError("--restore-best: needs --val-split (a held-out part of the training "
                         "set; the test set must not pick the model)")
    X_tr, y_tr, validation = _split_validation(args, X_tr, y_tr)
    augment = _shift_augment(args.augment_shift)
    t0 = time.perf_counter()
    model.fit(X_tr, y_tr, validation_data=validation, augment=augment,
              restore_best=args.restore_best,
              **_epoch_scores(model, validation, X_te, y_te, callbacks))
    seconds = time.perf_counter() - t0
    acc = model.score(X_te, y_te)
    best = f"  best epoch {model.best_epoch_}" if model.best_epoch_ is not None else ""
    print(f"parameters {model.n_params_}  levels {model.n_levels_}  train time {seconds:.1f} s  "
          f"test accuracy {acc:.4f}{best}")
    if args.out:
        model.save(args.out)
        print(f"saved {args.out}")
    if args.history:
        from fasttn._atomic import atomic_file

        with atomic_file(args.history) as tmp:
            with open(tmp, "w") as f:
                json.dump({"test_accuracy": acc, "history": model.history_}, f, indent=1)
    return 0


# --------------------------------------------------------------------------- data
def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="datasets: NeedleMNIST generation, sample grids, downloads",
                          description="Datasets: generate NeedleMNIST, draw samples, download IDX.")
    data_sub = data.add_subparsers(dest="data_command", required=True)

    needle = data_sub.add_parser(
        "needle", help="write a NeedleMNIST dataset (memory-mappable cache)",
        description="Generate NeedleMNIST images (Needles-in-Haystacks protocol) and write them "
                    "as uint8 .npy + labels + metadata.json into a new directory, atomically.")
    _add_needle_options(needle, size_required=True)
    needle.add_argument("--out", required=True, help="directory to create")
    needle.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    needle.add_argument("--batch-size", type=int, default=32, help="images per generated batch")
    needle.add_argument("--no-progress", action="store_true", help="no progress bar")
    needle.set_defaults(func=_cmd_data_needle)

    show = data_sub.add_parser(
        "show", help="write a PNG grid of samples with their labels",
        description="Draw the first --n images of a cache directory, or of a dataset generated "
                    "on the fly from --size and the other generator options, into a PNG. "
                    "Needles are outlined in red; on large canvases a magnified inset shows them.")
    show.add_argument("dir", nargs="?", help="a directory written by `fasttn data needle`")
    _add_needle_options(show, size_required=False)
    show.add_argument("--out", required=True, help="PNG file to write")
    show.add_argument("--n", type=int, default=16, help="number of samples (default 16)")
    show.add_argument("--start", type=int, default=0, help="index of the first sample")
    show.add_argument("--ncols", type=int, default=None, help="panels per row")
    show.add_argument("--no-boxes", action="store_true", help="do not outline the needles")
    show.set_defaults(func=_cmd_data_show)

    download = data_sub.add_parser(
        "download", help="download MNIST or Fashion-MNIST IDX files (MD5-checked)",
        description="Download the four IDX files and check them against their published MD5 "
                    "sums. The loaders search the default target directory.")
    download.add_argument("name", choices=["mnist", "fashion-mnist"])
    download.add_argument("--data-dir", default=None,
                          help="target directory (default ~/.cache/fasttn/NAME)")
    download.set_defaults(func=_cmd_data_download)


def _add_needle_options(parser: argparse.ArgumentParser, size_required: bool) -> None:
    parser.add_argument("--size", type=int, required=size_required, default=None,
                        help="canvas side, a multiple of 64 (64, 128, ..., 1024, ...)")
    parser.add_argument("--count", type=int, default=None,
                        help="number of images (default: the protocol's 2 x duplicates x "
                             "targets in the split)")
    parser.add_argument("--split", default="train", choices=["train", "validation", "test"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", default="digits", choices=["digits", "mnist", "fashion"],
                        help="digit source (default: scikit-learn digits, always available)")
    parser.add_argument("--target", type=int, default=3, help="class of the needle (default 3)")
    parser.add_argument("--noise-digits", type=int, default=None,
                        help="noise digits per positive image (default: the protocol's count)")
    parser.add_argument("--data-dir", default=None,
                        help="directory of the MNIST / Fashion-MNIST IDX files "
                             "(else $FASTTN_DATA_DIR and the system locations)")


def _needle_from_args(args: argparse.Namespace):
    from fasttn.data import needle_mnist

    return needle_mnist(size=args.size, count=args.count, split=args.split, seed=args.seed,
                        source=args.source, target=args.target, noise_digits=args.noise_digits,
                        data_dir=args.data_dir)


def _cmd_data_needle(args: argparse.Namespace) -> int:
    from fasttn.data import write_needle_dataset

    ds = _needle_from_args(args)
    try:
        out = write_needle_dataset(args.out, ds, overwrite=args.overwrite,
                                   batch_size=args.batch_size,
                                   progress=False if args.no_progress else None)
    except FileExistsError as exc:
        raise ValueError(str(exc)) from exc
    meta = ds.metadata()
    print(f"wrote {len(ds)} images of {ds.size}x{ds.size} ({meta['n_positive']} with the needle "
          f"'{meta['target_name']}', {meta['n_negative']} without) to {out}; "
          f"{ds.noise_digits} noise digits per positive, O2I = {ds.o2i:.4%}")
    return 0


def _cmd_data_show(args: argparse.Namespace) -> int:
    import numpy as np

    from fasttn.analysis.plots import save_sample_grid
    from fasttn.data import load_needle_dataset

    _require_plot("fasttn data show")
    if args.dir is not None:
        if args.size is not None:
            raise ValueError("give either a dataset directory or --size, not both")
        ds = load_needle_dataset(args.dir)
        boxes_all = ds.needle_boxes
        meta = ds.metadata
    elif args.size is not None:
        ds = _needle_from_args(args)
        boxes_all = None
        meta = ds.metadata()
    else:
        raise ValueError("show: expected a dataset directory or --size N")
    if args.n < 1 or not 0 <= args.start < len(ds):
        raise ValueError(f"--n / --start: expected n >= 1 and 0 <= start < {len(ds)}, got "
                         f"n={args.n}, start={args.start}")
    stop = min(len(ds), args.start + args.n)
    indices = list(range(args.start, stop))
    samples = [ds[i] for i in indices]
    images = np.stack([image for image, _ in samples])
    labels = np.array([label for _, label in samples])
    boxes = None
    if not args.no_boxes:
        boxes = boxes_all[indices] if boxes_all is not None else ds.needle_boxes(indices)
    name = meta["target_name"]
    title = (f"NeedleMNIST {meta['size']}x{meta['size']} ({meta['source']}, {meta['split']}): "
             f"needle '{name}', {meta['noise_digits']} noise digits, O2I {meta['o2i']:.4%}")
    path = save_sample_grid(images, labels, args.out, ncols=args.ncols,
                            label_names={1: f"1: {name} present", 0: f"0: no {name}"},
                            boxes=boxes, title=title)
    print(f"wrote {len(indices)} samples to {path}")
    return 0


def _cmd_data_download(args: argparse.Namespace) -> int:
    from fasttn.data import download_dataset

    path = download_dataset(args.name, args.data_dir)
    print(f"{args.name}: IDX files checked and ready in {path}")
    return 0


# ---------------------------------------------------------------------------- tsne
def _add_tsne_command(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("tsne", help="t-SNE of every layer of a saved model, with per-layer "
                                    "class separation, as one PNG grid",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("model", help="a checkpoint written by fit/--out (.npz)")
    _add_image_data_options(q)
    q.add_argument("--split", default="test", choices=["train", "test"])
    q.add_argument("--n", type=int, default=1000, help="images embedded (the first N)")
    q.add_argument("--perplexity", type=float, default=30.0)
    q.add_argument("--max-iter", type=int, default=1000,
                   help="t-SNE iterations; the first 250 are early exaggeration, so fewer than "
                        "~500 leave the embedding unconverged")
    q.add_argument("--k", type=int, default=5, help="neighbours of the kNN accuracy")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", default="tsne.png", help="the PNG grid")
    q.add_argument("--json", default=None, help="write the per-layer separation here")
    q.set_defaults(func=_cmd_tsne)


def _cmd_tsne(args: argparse.Namespace) -> int:
    import json

    import fasttn
    from fasttn.analysis import layer_tsne

    _require_plot("fasttn tsne")
    model = fasttn.load(args.model)
    if not callable(getattr(model, "layer_outputs", None)) or \
            getattr(model, "image_shape_", None) is None:
        raise ValueError(f"{args.model}: a {type(model).__name__} checkpoint; fasttn tsne "
                         f"embeds the layers of the image models (QCNN, MERA2D, TTN2D) on "
                         f"their image datasets")
    X_tr, y_tr, X_te, y_te = _image_task(args, size=model.image_shape_[0])
    X, y = (X_te, y_te) if args.split == "test" else (X_tr, y_tr)
    X, y = X[:args.n], y[:args.n]
    result = layer_tsne(model, X, y, perplexity=args.perplexity, random_state=args.seed,
                        max_iter=args.max_iter, k=args.k)
    title = (f"{type(model).__name__} on {args.dataset}"
             f"{' classes ' + args.classes if args.classes else ''}: {len(y)} {args.split} "
             f"images")
    from fasttn.data import DATASETS

    names = DATASETS[args.dataset].class_names if args.dataset in DATASETS else None
    if names is not None and args.classes:
        names = [names[int(c)] for c in args.classes.split(",")]
    result.save_png(args.out, title=title, class_names=names)
    print(f"{'layer':<10} {'kNN acc':>8} {'silhouette':>10} "
          f"{'kNN 2-D':>8} {'silh. 2-D':>9}")
    for name in result.names:
        sc = result.scores[name]
        print(f"{name:<10} {sc['knn_accuracy']:>8.3f} "
              f"{sc['silhouette']:>10.3f} {sc['knn_accuracy_2d']:>8.3f} "
              f"{sc['silhouette_2d']:>9.3f}")
    print(f"wrote {args.out}")
    if args.json:
        from fasttn._atomic import atomic_file

        with atomic_file(args.json) as tmp:
            with open(tmp, "w") as f:
                json.dump(result.scores, f, indent=1)
    return 0


# ------------------------------------------------------------------------- explain
def _add_explain_command(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("explain", help="where a scanning MERA2D found its evidence on "
                                       "NeedleMNIST test canvases: localisation rate and a PNG "
                                       "of evidence maps",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("model", help="a checkpoint written by fit/--out (.npz) of a model with "
                                 "evidence_map (MERA2D)")
    q.add_argument("--dataset", default="needle", choices=["needle"])
    q.add_argument("--size", type=int, default=None,
                   help="canvas side; must be the model's (default: the model's)")
    q.add_argument("--count", type=int, default=200, help="test canvases scored")
    q.add_argument("--show", type=int, default=8, help="panels drawn, positives first")
    q.add_argument("--batch-size", type=int, default=64)
    q.add_argument("--data-dir", default=None)
    _add_needle_source_options(q)
    q.add_argument("--seed", type=int, default=0, help="dataset seed (as in fasttn train)")
    q.add_argument("--out", default="evidence.png", help="the PNG of evidence maps")
    q.add_argument("--json", default=None,
                   help="write the accuracy and the localisation rate here")
    q.set_defaults(func=_cmd_explain)


def _cmd_explain(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    import fasttn
    from fasttn.analysis import localisation_rate, region_boxes
    from fasttn.analysis.plots import save_evidence_overlays
    from fasttn.data import needle_mnist

    _require_plot("fasttn explain")
    for flag, value in (("--count", args.count), ("--show", args.show)):
        if value < 1:
            raise ValueError(f"{flag}: expected a positive number, got {value}")
    model = fasttn.load(args.model)
    if not callable(getattr(model, "evidence_map", None)):
        raise ValueError(f"{args.model}: a {type(model).__name__} checkpoint; fasttn explain "
                         f"maps the per-region evidence of models with evidence_map (MERA2D)")
    h, w = model.input_shape_
    if args.size is not None and (args.size, args.size) != (h, w):
        raise ValueError(f"--size: the model reads {h}x{w} images, got --size {args.size}")
    if len(model.classes_) != 2:
        raise ValueError(f"{args.model}: fasttn explain needs a two-class (needle present or "
                         f"not) model, got {len(model.classes_)} classes")
    ds = needle_mnist(size=h, count=args.count, split="test", seed=args.seed,
                      source=args.needle_source, target=args.needle_target,
                      data_dir=args.data_dir)
    X, y = ds.arrays()
    boxes = ds.needle_boxes()
    res = localisation_rate(model, X, y, boxes, batch_size=args.batch_size)
    accuracy = float(np.mean(res["predicted"] == y))
    k, m, rate = res["n_localised"], res["n_correct_positive"], res["rate"]
    print(f"test accuracy {accuracy:.4f} on {len(y)} NeedleMNIST {h}x{w} test canvases")
    share = f"{rate:.3f}" if m else "none to localise"
    print(f"localisation: {k} of {m} correctly classified positives ({share})")
    if m:
        print(f"chance: a region drawn at random touches the needle {res['chance']:.3f} of "
              f"the time")
    if model.scan_ == 1:
        print("note: the model reads the whole image at once (one region), so every "
              "positive is localised")
    positive = y == model.classes_[1]
    shown = np.concatenate([np.flatnonzero(positive), np.flatnonzero(~positive)])[:args.show]
    name = ds.metadata()["target_name"]

    def caption(i: int) -> str:
        said = "present" if res["predicted"][i] == model.classes_[1] else "absent"
        text = f"#{i}: {name if positive[i] else 'no ' + name}, said {said}"
        if positive[i] and res["predicted"][i] == y[i]:
            text += ", found" if res["localised"][i] else ", missed"
        return text

    save_evidence_overlays(
        args.out, X[shown], res["evidence"][shown], boxes[shown], region_boxes(model),
        titles=[caption(int(i)) for i in shown],
        title=f"{type(model).__name__} evidence, NeedleMNIST {h}x{w} test: localised {k} of "
              f"{m} detected needles")
    print(f"wrote {args.out}")
    if args.json:
        from fasttn._atomic import atomic_file

        record = {"count": len(y), "size": h, "accuracy": accuracy,
                  "rate": rate if m else None, "chance": res["chance"] if m else None,
                  "n_correct_positive": m, "n_localised": k}
        with atomic_file(args.json) as tmp:
            with open(tmp, "w") as f:
                json.dump(record, f, indent=1)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from fasttn import __version__

    parser = argparse.ArgumentParser(prog="fasttn", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_commands(sub)
    _add_data_commands(sub)
    _add_tsne_command(sub)
    _add_explain_command(sub)
    return parser


def _require_plot(what: str) -> None:
    """Fail before any work when a command's figure cannot be drawn."""
    from fasttn.analysis.plots import _require_matplotlib

    try:
        _require_matplotlib()
    except ImportError:
        raise ValueError(f"{what} needs matplotlib: pip install 'fasttn[plot]'") from None


# Argument names in the models' messages that the command line spells as flags.
_FLAG_NAMES = [(re.compile(r"\bpad=True(?: \((?:command line|CLI): --pad\))?"), "--pad")]


def _error_line(exc: BaseException) -> str:
    """An exception as one line, in the command line's terms."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    for pattern, flag in _FLAG_NAMES:
        text = pattern.sub(flag, text)
    return text


# Options naming a file (or, for `data needle --out`, a directory) that a command writes.
_OUTPUT_OPTIONS = ("out", "history", "save_params", "json")


def _check_outputs(args: argparse.Namespace) -> None:
    """Check every output path before the command runs: a training of hours must not end
    in an error about a missing directory, with the model lost."""
    for name in _OUTPUT_OPTIONS:
        value = getattr(args, name, None)
        if not value:
            continue
        flag = "--" + name.replace("_", "-")
        parent = os.path.dirname(os.path.abspath(value))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"{flag}: the directory {parent} does not exist (create "
                                    f"it first)")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"{flag}: the directory {parent} is not writable")
        if args.func is not _cmd_data_needle and os.path.isdir(value):
            raise ValueError(f"{flag}: {value} is a directory; expected a file name")


def main(argv: Sequence[str] | None = None) -> int:
    from fasttn._cuda import CUDAUnavailableError  # imports no CuPy
    from fasttn._numba import compile_watch

    args = build_parser().parse_args(argv)
    try:
        _check_outputs(args)
        # one line on standard error when a kernel compiles (its first use: tens of seconds)
        with compile_watch(notice=not getattr(args, "quiet", False)):
            return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError,
            CUDAUnavailableError) as exc:
        print(f"fasttn: error: {_error_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
