"""``TNN``'s sweeps through the compiled PaL kernel (``train/pal_compiled.py``).

:func:`fit_sweeps_compiled` runs ``epochs`` sweeps when the network is one the kernel runs
(:func:`compiled_plan` says why not otherwise), with the same batches, Adam state, history
records and errors as ``TNN._fit_sweeps`` on the Python path.

What does not change between warm-start fits (the plan, the MPO buffers and environments,
the features) is kept on the model in ``_sweep_runner`` and checked against the model on
every fit: the layers by identity and configuration, the cores and frozen weights by value
(so edits made in place between fits are seen). A warm-started fit of a small model costs
about as much as one sweep, so this setup would otherwise dominate it.
"""
from __future__ import annotations

import sys
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from .._numba import compile_watch
from ..backend import kernel_threads, num_threads
from ..train import pal_compiled as pc
from ..train.loop import restart_clock
from .tnn_layers import Dense, TNLayer

_NO_LABELS = np.zeros(0, np.int64)
_NO_AHAT = np.zeros((0, 0))
_NO_BATCHES = np.zeros(0, np.int64)
_NO_PROFILE = np.zeros(0, np.int64)
MAX_BATCH_ROWS = 1 << 22  # mini-batch row indices handed to one kernel call, at most


class CompiledPlan:
    """The model seen by the kernel: layer handles, the folded frozen layer, codes."""

    __slots__ = ("tn", "head", "prefix", "fold", "loss", "act", "wide")

    def __init__(self, tn, head, prefix, fold, loss, act, wide):
        self.tn, self.head, self.prefix, self.fold = tn, head, prefix, fold
        self.loss, self.act, self.wide = loss, act, wide


def compiled_plan(model) -> Tuple[Optional[CompiledPlan], str]:
    """``(plan, "")`` when the kernel runs ``model``'s sweeps, else ``(None, reason)``."""
    layers = model.layers_
    if model.schedule != "pal":
        return None, "it runs the PaL schedule only (schedule='lbl' given)"
    tn_at = [j for j, layer in enumerate(layers) if isinstance(layer, TNLayer)]
    if len(tn_at) != 1:
        return None, f"it runs exactly one TNLayer ({len(tn_at)} in layers)"
    j = tn_at[0]
    tn = layers[j]
    if tn.n_sites < 2:
        return None, "the TNLayer needs at least 2 sites"
    if j != len(layers) - 2 or not isinstance(layers[-1], Dense):
        return None, "it runs one Dense head straight after the TNLayer"
    head = layers[-1]
    if not head.trainable:
        return None, "the Dense head must be trainable"
    prefix = layers[:j]
    for k, layer in enumerate(prefix):
        if not isinstance(layer, Dense) or layer.trainable:
            return None, (f"layers before the TNLayer must be frozen Dense layers "
                          f"(layers[{k}] is not)")
    if tn.activation not in pc.ACTIVATION_CODES:
        return None, f"the TNLayer's activation must be elementwise (got {tn.activation!r})"
    if model.task_ == "classification":
        # TNN._loss: one output is a binary cross-entropy on the logit, more a softmax one
        loss = "sigmoid" if head.units == 1 else "softmax"
    else:
        if head.activation != "linear":
            return None, (f"a regression head must be linear for it (got "
                          f"{head.activation!r})")
        loss = "mse"
    last = prefix[-1] if prefix else None
    # fold the last frozen layer into the weights when linear and narrow at its input:
    # z = [h, 1] [[A W], [a W + b]], as fused_forward does
    fold = last is not None and last.activation == "linear" and \
        last.w.shape[0] + 1 <= pc.P_SMALL
    if fold:
        n_feat = last.w.shape[0]
    else:
        n_feat = last.units if last is not None else int(np.prod(tn.in_dims_))
    return CompiledPlan(tn, head, prefix, fold, loss, pc.ACTIVATION_CODES[tn.activation],
                        n_feat + 1 > pc.P_SMALL), ""


def _layer_key(layer):
    key = (id(layer), type(layer).__name__, layer.activation, layer.trainable, layer.use_bias,
           layer.units)
    if isinstance(layer, TNLayer):
        key += (layer.bond_dim, layer.n_sites)
    return key


class _Runner:
    """The MPO and Adam buffers of one model's compiled sweeps, kept between fits."""

    def __init__(self, key, plan: CompiledPlan, dtype):
        tn = plan.tn
        n_sites = tn.n_sites
        self.key = key
        self.plan = plan
        self.dtype = np.dtype(dtype)
        self.n_sites = n_sites
        self.ins = np.array([c.shape[1] for c in tn.cores], np.int64)
        self.outs = np.array([c.shape[2] for c in tn.cores], np.int64)
        self.u_in = int(np.prod(self.ins))
        self.io = [int(i * o) for i, o in zip(self.ins, self.outs)]
        bonds = [c.shape[0] for c in tn.cores] + [1]
        cap = [max(b, tn.bond_dim) for b in bonds]
        cap[0] = cap[-1] = 1
        self.cap = cap
        size_core = max(cap[k] * self.io[k] * cap[k + 1] for k in range(n_sites))
        left = [1] * (n_sites + 1)    # prod (in out) of the sites left of bond k
        right = [1] * (n_sites + 1)   # and right of it
        out_left = [1] * (n_sites + 1)
        in_right = [1] * (n_sites + 1)
        for k in range(n_sites):
            left[k + 1] = left[k] * self.io[k]
            out_left[k + 1] = out_left[k] * int(self.outs[k])
            kk = n_sites - 1 - k
            right[kk] = right[kk + 1] * self.io[kk]
            in_right[kk] = in_right[kk + 1] * int(self.ins[kk])
        self.cores = np.zeros((n_sites, size_core))
        self.bonds = np.zeros(n_sites + 1, np.int64)
        self.pre = np.zeros((n_sites + 1, max(left[k] * cap[k] for k in range(n_sites + 1))))
        self.suf = np.zeros((n_sites + 1, max(right[k] * cap[k] for k in range(n_sites + 1))))
        self.ahat = _NO_AHAT
        if plan.fold:
            last = plan.prefix[-1]
            p = last.w.shape[0] + 1
            # left environments carrying the folded layer: (P, O<, D_k, I>=k), k < N
            self.al = np.zeros((n_sites, p * max(out_left[k] * cap[k] * in_right[k]
                                                 for k in range(n_sites))))
        else:
            self.al = _NO_AHAT
        self.frozen = None    # the frozen layers' weights the features were made with (bytes)
        self.x_shape = None   # and the X (shape, bytes)
        self.x_bytes = None
        self.f1 = self.f1t = None
        self.written = None   # the core arrays the last fit left in the layer (views of
        self.written_base = None  # this block)
        self.flat = None      # and their values, to see edits made in place
        self.work = np.zeros(0)
        self.shape_key = self.static = None  # (P, batch) and the kernel's constant tuples
        self._out: tuple = ()  # the kernel's per-sweep outputs (outputs())
        self.ints = np.zeros(pc.N_INTS, np.int64)
        self.floats = np.zeros(pc.N_FLOATS)
        self.theta = self.adam_m = self.adam_v = np.zeros(0)  # Adam's flat parameters
        self.prof = _NO_PROFILE  # set to zeros(len(PROF_PARTS), int64) to time the parts

    def outputs(self, n_sweeps: int) -> tuple:
        """The kernel's per-sweep outputs for ``n_sweeps`` sweeps (``pal_sweep``'s
        ``step_loss .. ticks``), kept for the largest count asked for so far."""
        have = self._out[0].shape[0] if self._out else 0
        if have < n_sweeps:
            b = self.n_sites - 1
            self._out = (np.empty((n_sweeps, 2 * b)), np.zeros((n_sweeps, b)),
                         np.zeros((n_sweeps, b)), np.zeros((n_sweeps, b, max(self.cap))),
                         np.zeros((n_sweeps, b), np.int64), np.zeros((n_sweeps, 2), np.int64),
                         np.zeros(n_sweeps, np.int64))
        return tuple(a[:n_sweeps] for a in self._out)

    def fits(self, cores) -> bool:
        return len(cores) == self.n_sites and \
            all(c.shape[0] <= cap and c.shape[3] <= cap2
                for c, cap, cap2 in zip(cores, self.cap, self.cap[1:]))

    def features(self, X: np.ndarray) -> bool:
        """``[F, 1]`` and its transpose for ``X`` (kept while ``X`` and the frozen layers are
        unchanged, compared bitwise); returns whether the folded weights changed."""
        prefix = self.plan.prefix
        frozen = b"".join(layer.w.tobytes() + layer.b.tobytes() for layer in prefix)
        same = frozen == self.frozen
        if not same:
            self.frozen = frozen
            if self.plan.fold:
                last = prefix[-1]
                a = last.b if last.use_bias else np.zeros(last.units)
                self.ahat = np.ascontiguousarray(np.vstack([last.w, a[None, :]]), np.float64)
        x_bytes = X.tobytes()
        if same and X.shape == self.x_shape and x_bytes == self.x_bytes:
            return False
        h = X
        for layer in (prefix[:-1] if self.plan.fold else prefix):
            h = layer.forward(h)[0]  # frozen: the same values at every step, made once
        f1 = np.empty((h.shape[0], h.shape[1] + 1))
        f1[:, :-1] = h
        f1[:, -1] = 1.0
        self.f1, self.f1t = f1, np.ascontiguousarray(f1.T)
        self.x_shape, self.x_bytes = X.shape, x_bytes
        return not same

    def load(self, cores, refresh: bool) -> None:
        """The layer's cores into the buffers with fresh environments, unless they are the
        ones the last fit wrote back, unchanged (and the folded layer is unchanged)."""
        if not refresh and self.written is not None and \
                all(a is b for a, b in zip(cores, self.written)) and \
                self.written_base.tobytes() == self.flat:
            return
        for k, c in enumerate(cores):
            self.cores[k, :c.size] = c.reshape(-1)
            self.bonds[k] = c.shape[0]
        self.bonds[-1] = 1
        pc.refresh_envs(self.cores, self.bonds, self.ins, self.outs, self.pre, self.suf,
                        self.ahat, self.al)

    def unload(self) -> List[np.ndarray]:
        """The cores as new arrays (views of one block) in the model's dtype."""
        b = self.bonds.tolist()
        sizes = [b[k] * self.io[k] * b[k + 1] for k in range(self.n_sites)]
        base = np.empty(sum(sizes), self.dtype)
        cores, at = [], 0
        for k, size in enumerate(sizes):
            base[at:at + size] = self.cores[k, :size]
            cores.append(base[at:at + size].reshape(b[k], int(self.ins[k]), int(self.outs[k]),
                                                     b[k + 1]))
            at += size
        self.written, self.written_base = cores, base
        self.flat = base.tobytes()  # what was written, to see later edits made in place
        return cores


def _records(out, n_sweeps: int, before: int, seconds: float,
             classification: bool) -> List[Dict]:
    """History records of the ``n_sweeps`` sweeps of one kernel call (``_Runner.outputs``);
    each sweep's ``seconds`` is its share of the call's wall time by cycle-counter ticks."""
    step_loss, entropy, discarded, sv, sv_count, counts, ticks = out
    tick = ticks[:n_sweeps].tolist()
    unit = seconds / max(sum(tick), 1)
    # whole arrays to lists once (a tolist per bond and sweep costs more than the sweep)
    losses = np.add.reduce(step_loss[:n_sweeps], axis=1).tolist()
    ents = entropy[:n_sweeps].tolist()
    discs = discarded[:n_sweeps].tolist()
    svs = sv[:n_sweeps].tolist()
    kept = sv_count[:n_sweeps].tolist()
    hits = counts[:n_sweeps].tolist()
    n_steps = step_loss.shape[1]
    recs = []
    for i in range(n_sweeps):
        ent = ents[i]
        rec = {"epoch": before + i + 1,
               "loss": losses[i] / n_steps,  # np.mean's
               "seconds": tick[i] * unit,
               "entropy": [ent], "entropy_max": max(ent),
               "singular_values": [[row[:c] for row, c in zip(svs[i], kept[i])]],
               "discarded": [discs[i]]}
        if classification:
            rec["accuracy"] = hits[i][0] / max(hits[i][1], 1)
        recs.append(rec)
    return recs


def _ints_layout(*values):
    """The integer parameters of ``pal_sweep`` in its ``I_*`` order."""
    assert len(values) == pc.N_INTS
    return values


def _runner(model) -> Tuple[Optional[_Runner], str]:
    key = (tuple(_layer_key(layer) for layer in model.layers_), model.schedule, model.task_,
           np.dtype(model.dtype))
    run = getattr(model, "_sweep_runner", None)
    if run is not None and run.key == key and run.fits(run.plan.tn.cores):
        return run, ""
    plan, why = compiled_plan(model)
    if plan is None:
        model._sweep_runner = None
        return None, why
    run = model._sweep_runner = _Runner(key, plan, model.dtype)
    return run, ""


def fit_sweeps_compiled(model, X: np.ndarray, y: np.ndarray, epochs: int,
                        rng: Optional[np.random.Generator]) -> Tuple[Optional[List[Dict]], str]:
    """``epochs`` PaL sweeps of ``model`` (updated in place): ``(history records, "")``, or
    ``(None, reason)`` when the kernel does not run this network (nothing changed then).
    ``rng`` is the fit's generator, or None for a fresh one from ``random_state`` (made
    only when batches are drawn)."""
    run, why = _runner(model)
    if run is None:
        return None, why
    plan = run.plan
    tn, head = plan.tn, plan.head
    n = X.shape[0]
    batch = model.batch_size or n
    folded_changed = run.features(X)
    run.load(tn.cores, folded_changed)
    f1, f1t = run.f1, run.f1t
    C = head.units
    u = tn.units
    if plan.loss == "mse":
        yi = _NO_LABELS
        yf = np.ascontiguousarray(y.reshape(n, -1), np.float64)
    else:
        yi = y if y.dtype == np.int64 else y.astype(np.int64)
        yf = np.zeros((0, C))
    # parameters under Adam, flat: [TN bias, head weights (C, u), head bias]
    n_b = u if tn.use_bias else 0
    n_hb = C if head.use_bias else 0
    n_theta = n_b + C * u + n_hb
    if run.theta.shape[0] != n_theta:
        run.theta, run.adam_m, run.adam_v = np.empty((3, n_theta))
    theta, adam_m, adam_v = run.theta, run.adam_m, run.adam_v
    theta[:n_b] = tn.b
    theta[n_b:n_b + C * u].reshape(C, u)[...] = head.w.T
    theta[n_b + C * u:] = head.b if head.use_bias else 0.0
    adam_m.fill(0.0)  # a fresh optimiser per fit, as the Python path's AdamW
    adam_v.fill(0.0)
    ints = run.ints
    ints[:] = _ints_layout(tn.bond_dim, pc.LOSS_CODES[plan.loss],
                           model.sweep_step == "scaled", run.dtype == np.float32, 0,
                           run.u_in, 0, n_b, n_b + C * u, theta.size, plan.fold)
    floats = run.floats
    floats[:] = (model.lr, model.sweep_lr, 0.9, 0.999, 1e-8, model.cutoff)
    shape_key = (f1.shape[1], min(batch, n))
    if run.shape_key != shape_key:
        run.shape_key = shape_key
        run.static = pc.compile_time_args(f1.shape[1], C, plan.act, plan.wide)
        need = pc.work_size(u, C, len(run.static[0]), min(batch, n), plan.wide)
        if run.work.shape[0] < need:
            run.work = np.zeros(need)
    kp, kc, kv, ka = run.static
    n_sites = run.n_sites
    n_steps = 2 * (n_sites - 1)
    if batch < n:  # the Python path's batches: one per bond step from a running permutation
        if rng is None:
            rng = np.random.default_rng(model.random_state)
        order, pos = rng.permutation(n), 0

    def write_back():
        tn.cores = run.unload()
        if n_b:
            tn.b[...] = theta[:n_b]
        head.w[...] = theta[n_b:n_b + C * u].reshape(C, u).T
        if n_hb:
            head.b[...] = theta[n_b + C * u:]

    hist: List[Dict] = []
    bar = None
    if model.verbose > 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc="sweeps", file=sys.stderr, unit="sweep")
    # sweeps per kernel call: all of them (no Python between sweeps), one at a time under a
    # progress bar, and with mini-batches few enough that their rows stay under
    # MAX_BATCH_ROWS indices
    per_call = 1 if bar is not None else \
        epochs if batch >= n else max(1, min(epochs, MAX_BATCH_ROWS // (n_steps * batch)))
    done = 0
    watch = compile_watch(notice=model.verbose > 0)  # the kernel compiles on its first call
    while done < epochs:
        s_n = min(per_call, epochs - done)
        out = run.outputs(s_n)
        if batch < n:
            parts = []
            for _ in range(s_n * n_steps):
                if pos >= n:
                    order, pos = rng.permutation(n), 0
                parts.append(order[pos:pos + batch])
                pos += batch
            batch_ptr = np.zeros(s_n * n_steps + 1, np.int64)
            np.cumsum([len(p) for p in parts], out=batch_ptr[1:])
            batch_idx = np.concatenate(parts).astype(np.int64)
        else:
            batch_idx = batch_ptr = _NO_BATCHES
        t0 = time.perf_counter()
        compiled = watch.count
        with watch, kernel_threads():  # BLAS under the kernel on one thread
            status, s_done, bad = pc.pal_sweep(
                kp, kc, kv, ka, f1, f1t, yi, yf, batch_idx, batch_ptr, run.ahat, run.cores,
                run.bonds, run.ins, run.outs, run.pre, run.suf, run.al, theta, adam_m, adam_v,
                floats, ints, run.work, *out, run.prof, num_threads(), pc.MIN_PART)
        seconds = time.perf_counter() - t0
        if status == pc.OK:
            hist.extend(_records(out, s_done, done, seconds, model.task_ == "classification"))
            done += s_done
            if bar is not None:
                if watch.count != compiled:
                    restart_clock(bar, advance=s_done)  # compile time is not sweep time
                else:
                    bar.update(s_done)
                bar.set_postfix(loss=f"{hist[-1]['loss']:.4f}")
            continue
        write_back()  # as the Python path leaves it: every update before the failing one
        if bar is not None:
            bar.close()
        sweep = done + s_done + 1
        if status == pc.BAD_LOSS:
            raise FloatingPointError(f"loss became {bad} during sweep {sweep}; "
                                     "lower sweep_lr or lr")
        raise FloatingPointError(f"the weights became non-finite during sweep {sweep}; "
                                 "lower sweep_lr or lr")
    if bar is not None:
        bar.close()
    write_back()
    return hist, ""
