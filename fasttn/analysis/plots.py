"""Figures written as PNG files. matplotlib (the ``plot`` extra) is imported inside functions
only, through its object API and the Agg canvas, so no global backend is changed."""
from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .._atomic import atomic_file


def _require_matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("saving figures needs matplotlib: pip install 'fasttn[plot]'") from exc
    return Figure, FigureCanvasAgg, Rectangle


def _add_zoom_inset(ax, image: np.ndarray, box: tuple[int, int, int, int], cmap: str,
                    vmin, vmax, Rectangle) -> None:
    """Magnify ``box`` (with a margin of half its size) in an inset in the farthest corner."""
    r, c, h, w = box
    height, width = image.shape
    m = max(h, w) // 2
    r0, r1 = max(0, r - m), min(height, r + h + m)
    c0, c1 = max(0, c - m), min(width, c + w + m)
    x = 0.02 if c + w / 2 > width / 2 else 0.63
    y = 0.02 if r + h / 2 < height / 2 else 0.63  # inset axes y runs upwards
    inset = ax.inset_axes([x, y, 0.35, 0.35])
    inset.imshow(image[r0:r1, c0:c1], cmap=cmap, vmin=vmin, vmax=vmax,
                 interpolation="nearest", extent=(c0 - 0.5, c1 - 0.5, r1 - 0.5, r0 - 0.5))
    inset.add_patch(Rectangle((c - 1.5, r - 1.5), w + 2, h + 2, fill=False, edgecolor="red",
                              linewidth=1.0))
    inset.set_xticks([])
    inset.set_yticks([])
    for spine in inset.spines.values():
        spine.set_edgecolor("red")
        spine.set_linewidth(1.5)


def save_sample_grid(images: np.ndarray, labels: Sequence[int] | np.ndarray,
                     path: str | os.PathLike, *, ncols: int | None = None,
                     label_names: Mapping[int, str] | None = None,
                     boxes: np.ndarray | None = None, title: str | None = None,
                     panel_px: int | None = None, dpi: int = 100, cmap: str = "gray",
                     zoom: bool = True) -> Path:
    """Write a PNG grid of grey-scale images, each titled with its label.

    Parameters
    ----------
    images : (n, H, W) float (shown on [0, 1] when the values lie there) or uint8.
    labels : (n,) integer labels, printed above each panel.
    path : the ``.png`` file to write; written to a temporary file and renamed into place.
    ncols : panels per row; default ``ceil(sqrt(n))``.
    label_names : text for each label value, e.g. ``{1: "3 present", 0: "no 3"}``.
    boxes : (n, 4) ``(row, col, height, width)`` to outline in red (e.g. the needle of a
        NeedleMNIST image, which is otherwise hard to spot among the noise digits); rows with
        a negative height are skipped.
    title : figure title.
    panel_px : side of each panel in pixels; default the image side, kept within 160..512.
    dpi : resolution of the PNG.
    cmap : matplotlib colour map.
    zoom : on large canvases (side >= 6 boxes), also show each boxed region magnified in an
        inset placed in the corner farthest from it, so the needle can be seen at all.

    Returns
    -------
    The path written.
    """
    Figure, FigureCanvasAgg, Rectangle = _require_matplotlib()
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[0] == 0:
        raise ValueError(f"images: expected a non-empty stack of shape (n, H, W), got "
                         f"{images.shape}")
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"labels: expected shape ({len(images)},), got {labels.shape}")
    if boxes is not None:
        boxes = np.asarray(boxes)
        if boxes.shape != (len(images), 4):
            raise ValueError(f"boxes: expected shape ({len(images)}, 4), got {boxes.shape}")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path: expected a .png file name, got {str(path)!r}")
    n, height, width = images.shape
    ncols = max(1, min(n, ncols or math.ceil(math.sqrt(n))))
    nrows = math.ceil(n / ncols)
    panel = panel_px or int(np.clip(max(height, width), 160, 512))
    title_px = max(14, panel // 10)
    fig_w = ncols * panel / dpi
    fontsize = max(7, title_px * 0.55 * 72 / dpi)
    if title:
        # wrap the figure title to the figure width (about 0.6 em per character)
        chars = max(12, int(ncols * panel / (fontsize * 1.2 * dpi / 72 * 0.6)))
        title = textwrap.fill(title, chars)
    title_lines = title.count("\n") + 1 if title else 0
    fig_h = (nrows * (panel + title_px) + 2 * title_px * title_lines) / dpi
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    FigureCanvasAgg(fig)
    if images.dtype == np.uint8:
        vmin, vmax = 0, 255
    elif images.size and images.min() >= 0 and images.max() <= 1:
        vmin, vmax = 0.0, 1.0
    else:
        vmin, vmax = None, None
    top = 1 - 2 * title_px * title_lines / (fig_h * dpi)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=top - 0.005, wspace=0.04,
                        hspace=title_px / panel + 0.04)
    for k in range(nrows * ncols):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        ax.set_axis_off()
        if k >= n:
            continue
        ax.imshow(images[k], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="antialiased")
        label = int(labels[k])
        text = label_names.get(label, str(label)) if label_names else f"label {label}"
        ax.set_title(text, fontsize=fontsize, pad=2)
        if boxes is not None and boxes[k, 2] > 0:
            r, c, h, w = (int(v) for v in boxes[k])
            ax.add_patch(Rectangle((c - 1.5, r - 1.5), w + 2, h + 2, fill=False,
                                   edgecolor="red", linewidth=max(1.0, panel / 256)))
            if zoom and max(height, width) >= 6 * max(h, w):
                _add_zoom_inset(ax, images[k], (r, c, h, w), cmap, vmin, vmax, Rectangle)
    if title:
        fig.suptitle(title, fontsize=fontsize * 1.2)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def _save_line_figure(fig, path: str | os.PathLike, title: str | None, dpi: int) -> Path:
    """Title, tight layout and an atomic PNG write: the end of every line-plot figure."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


def save_sweep_curves(histories: Mapping[str, Sequence[Mapping]], path: str | os.PathLike, *,
                      title: str | None = None, dpi: int = 100) -> Path:
    """Loss and bond entanglement entropy against sweeps, one curve per run (e.g. per bond
    dimension D), as the MPO-network paper's Figs. 12 and 14.

    Parameters
    ----------
    histories : mapping of a label to a TNN ``history_`` from the sweep solver
    path : the ``.png`` file to write (atomically)
    """
    Figure, FigureCanvasAgg, _ = _require_matplotlib()
    fig = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(fig)
    ax_loss, ax_ent = fig.subplots(1, 2)
    for label, hist in histories.items():
        if not hist or "entropy" not in hist[0]:
            raise ValueError(f"histories[{label!r}]: expected the history of a sweep-trained "
                             "TNN (records with 'entropy')")
        sweeps = [r["epoch"] for r in hist]
        ax_loss.plot(sweeps, [r["loss"] for r in hist], label=label)
        # the entropy of the middle bond of the first TNLayer, as the paper plots one S
        mid = [r["entropy"][0][len(r["entropy"][0]) // 2] for r in hist]
        ax_ent.plot(sweeps, mid, label=label)
    ax_loss.set_xlabel("sweep")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_yscale("log")
    ax_ent.set_xlabel("sweep")
    ax_ent.set_ylabel("entanglement entropy S (middle bond)")
    ax_loss.legend()
    ax_ent.legend()
    return _save_line_figure(fig, path, title, dpi)


def save_bond_history(bond_history, path: str | os.PathLike, *, max_bond: int | None = None,
                      title: str | None = None, dpi: int = 100) -> Path:
    """The bond dimensions DMRG sweeps chose, per bond per sweep (``fasttn.MPS``'s
    ``bond_history_``): a heat map (sweep against bond) beside the profile along the chain
    after the first, middle and last sweep.

    Parameters
    ----------
    bond_history : (n_sweeps, n_bonds) integers, at least one sweep
    path : the ``.png`` file to write (atomically)
    max_bond : int, optional
        The ceiling (``bond_dim``), drawn as a dashed line on the profile.
    """
    h = np.asarray(bond_history)
    if h.ndim != 2 or h.shape[0] == 0 or h.shape[1] == 0:
        raise ValueError(f"bond_history: expected (n_sweeps, n_bonds) with at least one "
                         f"sweep and one bond, got shape {h.shape}")
    Figure, FigureCanvasAgg, _ = _require_matplotlib()
    fig = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(fig)
    ax_map, ax_prof = fig.subplots(1, 2)
    n_sweeps, n_bonds = h.shape
    im = ax_map.imshow(h, aspect="auto", interpolation="nearest", cmap="viridis",
                       origin="lower", extent=(-0.5, n_bonds - 0.5, 0.5, n_sweeps + 0.5))
    fig.colorbar(im, ax=ax_map, label="bond dimension")
    ax_map.set_xlabel("bond (between sites k and k+1)")
    ax_map.set_ylabel("sweep")
    for i in sorted({0, n_sweeps // 2, n_sweeps - 1}):
        ax_prof.step(np.arange(n_bonds), h[i], where="mid", label=f"sweep {i + 1}")
    if max_bond is not None:
        ax_prof.axhline(max_bond, color="grey", linestyle="--", linewidth=1,
                        label="max_bond")
    ax_prof.set_xlabel("bond (between sites k and k+1)")
    ax_prof.set_ylabel("bond dimension")
    ax_prof.legend()
    return _save_line_figure(fig, path, title, dpi)


def _class_colors(n_classes: int):
    """Qualitative colours: tab10, tab20, then evenly spaced hues."""
    from matplotlib import colormaps

    if n_classes <= 10:
        return [colormaps["tab10"](i) for i in range(n_classes)]
    if n_classes <= 20:
        return [colormaps["tab20"](i) for i in range(n_classes)]
    return [colormaps["hsv"](i / n_classes) for i in range(n_classes)]


def _separation_text(scores: Mapping[str, float]) -> str:
    lines = []
    if "knn_accuracy_2d" in scores:
        lines.append(f"2-D: kNN {scores['knn_accuracy_2d']:.2f}, "
                     f"silhouette {scores['silhouette_2d']:.2f}")
    if "knn_accuracy" in scores:
        lines.append(f"layer: kNN {scores['knn_accuracy']:.2f}, "
                     f"silhouette {scores['silhouette']:.2f}")
    return "\n".join(lines)


def _check_embeddings(embeddings, y) -> tuple[dict, np.ndarray]:
    if not isinstance(embeddings, Mapping) or not embeddings:
        raise ValueError(f"embeddings: expected a non-empty mapping of layer name -> (n, 2) "
                         f"array, got {embeddings!r:.60}")
    out: dict = {}
    n = None
    for name, e in embeddings.items():
        e = np.asarray(e, np.float64)
        want = "n" if n is None else str(n)
        if (e.ndim != 2 or e.shape[1] != 2 or (n is not None and e.shape[0] != n)
                or not np.all(np.isfinite(e))):
            raise ValueError(f"embeddings[{name!r}]: expected finite values of shape "
                             f"({want}, 2), got shape {e.shape}")
        n = e.shape[0]
        out[name] = e
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"y: expected {n} labels (one per embedded point), got shape "
                         f"{y.shape}")
    return out, y


def save_tsne_grid(path: str | os.PathLike, embeddings: Mapping[str, np.ndarray],
                   y: Sequence | np.ndarray,
                   scores: Mapping[str, Mapping[str, float]] | None = None,
                   class_names: Sequence[str] | Mapping | None = None,
                   title: str | None = None, *, dpi: int = 100) -> Path:
    """One PNG of layer-wise 2-D embeddings: a panel per layer, points coloured by class.

    Parameters
    ----------
    path : the ``.png`` file to write; written to a temporary file and renamed into place.
    embeddings : mapping of layer name -> (n, 2), panels in its order (e.g.
        :func:`fasttn.analysis.embed_layers`).
    y : (n,) class labels.
    scores : mapping of layer name -> separation numbers
        (:func:`fasttn.analysis.layer_separation`), printed under each panel's name: kNN
        accuracy and silhouette in the 2-D embedding and in the layer's own space.
    class_names : legend text per class: a sequence indexed by the sorted class order, or a
        mapping from label to text. Default: the labels.
    title : figure title.
    dpi : resolution of the PNG.

    Returns
    -------
    The path written.
    """
    Figure, FigureCanvasAgg, _ = _require_matplotlib()
    from matplotlib.lines import Line2D

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path: expected a .png file name, got {str(path)!r}")
    embeddings, y = _check_embeddings(embeddings, y)
    if scores is not None and not isinstance(scores, Mapping):
        raise TypeError(f"scores: expected a mapping of layer name -> numbers, got "
                        f"{type(scores).__name__}")
    classes, codes = np.unique(y, return_inverse=True)
    if class_names is None:
        names = [str(c) for c in classes]
    elif isinstance(class_names, Mapping):
        names = [str(class_names.get(c.item(), c)) for c in classes]
    else:
        if len(class_names) < len(classes):
            raise ValueError(f"class_names: expected a name for each of the {len(classes)} "
                             f"classes, got {len(class_names)}")
        names = [str(class_names[i]) for i in range(len(classes))]
    colors = np.array(_class_colors(len(classes)))
    n_panels = len(embeddings)
    nrows = math.ceil(n_panels / 5)
    ncols = math.ceil(n_panels / nrows)
    panel_in, head_in = 3.0, 0.55
    legend_in = 0.2 + 0.22 * math.ceil(len(classes) / 10)
    title_in = 0.45 if title else 0.0
    fig_h = nrows * (panel_in + head_in) + legend_in + title_in
    fig = Figure(figsize=(ncols * panel_in, fig_h), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=legend_in / fig_h,
                        top=1 - (title_in + head_in) / fig_h, wspace=0.05,
                        hspace=head_in / panel_in)
    n = len(y)
    # one scatter in a fixed random order, so that no class is always drawn on top
    order = np.random.default_rng(0).permutation(n)
    size = float(np.clip(3000 / n, 2, 30))
    for k, (name, e) in enumerate(embeddings.items()):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        ax.scatter(e[order, 0], e[order, 1], s=size, c=colors[codes[order]], linewidths=0)
        ax.set_xticks([])
        ax.set_yticks([])
        text = _separation_text(scores.get(name, {})) if scores is not None else ""
        ax.set_title(f"{name}\n{text}" if text else name, fontsize=8, pad=3)
    handles = [Line2D([], [], linestyle="", marker="o", markersize=6, color=colors[i],
                      label=names[i]) for i in range(len(classes))]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(classes), 10),
               frameon=False, fontsize=8, handletextpad=0.2, columnspacing=1.0)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.1 / fig_h, va="top")
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def _check_overlay_inputs(images, evidence, boxes, region_boxes, titles):
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[0] == 0:
        raise ValueError(f"images: expected a non-empty stack of shape (n, H, W), got "
                         f"{images.shape}")
    n = len(images)
    evidence = np.asarray(evidence, np.float64)
    if evidence.ndim != 3 or evidence.shape[0] != n or evidence.shape[1] != evidence.shape[2]:
        raise ValueError(f"evidence: expected shape ({n}, scan, scan), got {evidence.shape}")
    if not np.all(np.isfinite(evidence)):
        raise ValueError("evidence: expected finite values")
    boxes = np.asarray(boxes)
    if boxes.shape != (n, 4):
        raise ValueError(f"boxes: expected shape ({n}, 4), got {boxes.shape}")
    scan = evidence.shape[1]
    region_boxes = np.asarray(region_boxes)
    if region_boxes.shape != (scan, scan, 4):
        raise ValueError(f"region_boxes: expected shape ({scan}, {scan}, 4) (one box per "
                         f"region of evidence), got {region_boxes.shape}")
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles: expected {n} titles (one per image), got {len(titles)}")
    return images, evidence, boxes, region_boxes


def save_evidence_overlays(path: str | os.PathLike, images: np.ndarray, evidence: np.ndarray,
                           boxes: np.ndarray, region_boxes: np.ndarray,
                           titles: Sequence[str] | None = None, ncols: int = 4, *,
                           title: str | None = None, dpi: int = 100) -> Path:
    """A PNG grid of images overlaid with where a scanning model found its evidence.

    Each panel shows the image in grey and, semi-transparent on it, a heat map of the
    evidence: the regions form a regular grid (stride ``s``), and each is drawn as the
    ``s x s`` cell at its centre, so the map reads as "evidence for an object centred here"
    (a region is larger than the stride; colouring its whole area would smear every peak).
    The object's box is outlined in green where its height is positive, the
    highest-evidence region in a dashed yellow square. One colour bar, symmetric about 0
    (blue: against, red: for), serves all panels.

    Parameters
    ----------
    path : the ``.png`` file to write; written to a temporary file and renamed into place.
    images : (n, H, W) float, shown on [0, 1] when the values lie there.
    evidence : (n, scan, scan) log-odds per region (:func:`fasttn.analysis.positive_evidence`).
    boxes : (n, 4) ``(row, col, height, width)`` of the object; rows with height <= 0 (the
        ``-1`` rows of negatives) draw nothing.
    region_boxes : (scan, scan, 4) the regions' boxes on the image
        (:func:`fasttn.analysis.region_boxes`).
    titles : one text per panel, optional.
    ncols : panels per row (at most n).
    title : figure title.
    dpi : resolution of the PNG.

    Returns
    -------
    The path written.
    """
    Figure, FigureCanvasAgg, Rectangle = _require_matplotlib()
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path: expected a .png file name, got {str(path)!r}")
    images, evidence, boxes, region_boxes = _check_overlay_inputs(
        images, evidence, boxes, region_boxes, titles)
    n, height, width = images.shape
    scan = evidence.shape[1]
    ncols = max(1, min(n, int(ncols)))
    nrows = math.ceil(n / ncols)
    # cell extent: region centres, a stride apart (one region: the region itself)
    r0, c0, rh, rw = (float(v) for v in region_boxes[0, 0])
    step_r = region_boxes[1, 0, 0] - r0 if scan > 1 else rh
    step_c = region_boxes[0, 1, 1] - c0 if scan > 1 else rw
    top, left = r0 + rh / 2 - step_r / 2 - 0.5, c0 + rw / 2 - step_c / 2 - 0.5
    extent = (left, left + scan * step_c, top + scan * step_r, top)
    limit = max(float(np.abs(evidence).max()), 1e-12)
    vmin, vmax = (0.0, 1.0) if images.min() >= 0 and images.max() <= 1 else (None, None)

    panel_in, head_in, bar_in = 2.6, 0.35, 0.9
    title_in = 0.4 if title else 0.0
    foot_in = 0.3
    fig_w, fig_h = ncols * panel_in + bar_in, nrows * (panel_in + head_in) + title_in + foot_in
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.1 / fig_w, right=1 - bar_in / fig_w, bottom=foot_in / fig_h,
                        top=1 - (title_in + head_in) / fig_h, wspace=0.05,
                        hspace=head_in / panel_in)
    line = max(1.0, panel_in * dpi / 200)
    heat = None
    for k in range(n):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.imshow(images[k], cmap="gray", vmin=vmin, vmax=vmax, interpolation="antialiased")
        heat = ax.imshow(evidence[k], cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=0.45,
                         extent=extent, interpolation="nearest")
        if boxes[k, 2] > 0:
            r, c, h, w = (int(v) for v in boxes[k])
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), w, h, fill=False, edgecolor="lime",
                                   linewidth=line))
        i, j = np.unravel_index(int(np.argmax(evidence[k])), (scan, scan))
        r, c, h, w = (int(v) for v in region_boxes[i, j])
        ax.add_patch(Rectangle((c - 0.5, r - 0.5), w, h, fill=False, edgecolor="yellow",
                               linestyle="--", linewidth=line))
        # regions may reach into the padding: keep the view on the image itself
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
        if titles is not None:
            ax.set_title(str(titles[k]), fontsize=8, pad=3)
    bottom, span = foot_in / fig_h, 1 - (title_in + head_in + foot_in) / fig_h
    cax = fig.add_axes([1 - 0.75 * bar_in / fig_w, bottom + 0.1 * span, 0.12 / fig_w,
                        0.8 * span])
    fig.colorbar(heat, cax=cax).set_label("evidence (log-odds)", fontsize=8)
    cax.tick_params(labelsize=7)
    fig.text(0.5, 0.35 * foot_in / fig_h, "green: object; dashed yellow: highest-evidence "
             "region", ha="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.1 / fig_h, va="top")
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path
