"""Matplotlib figures of an evaluation, styled for people who read them.

Every function returns a :class:`matplotlib.figure.Figure` (or ``None`` when
there is nothing to draw); :func:`to_png` renders one. Colours come from the
Okabe–Ito palette and heatmaps use single-hue sequential colormaps, both
readable with the common colour-vision deficiencies. Class names are shown
through :data:`bloodcell.core.classes.DISPLAY_NAMES`.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter, PercentFormatter  # noqa: E402

from bloodcell.evaluation.metrics import display  # noqa: E402

#: Okabe & Ito (2008) colour-blind-safe palette.
BLUE, ORANGE, GREEN, VERMILLION, PURPLE, SKY, YELLOW, BLACK = (
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
)
PALETTE = (BLUE, ORANGE, GREEN, VERMILLION, PURPLE, SKY, YELLOW, BLACK)
HEATMAP = "Blues"
GRADCAM_CMAP = "inferno"

_STYLE = {
    "font.size": 10.5,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 10.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linestyle": "-",
    "legend.frameon": False,
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "figure.facecolor": "white",
}


def _figure(*args, **kwargs):
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(*args, **kwargs)
    return fig, ax


def to_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes and release it."""
    buf = io.BytesIO()
    with plt.rc_context(_STYLE):
        fig.savefig(buf, format="png", bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return buf.getvalue()


_pct_axis = PercentFormatter(xmax=1.0, decimals=0)


def _pct_axis_fine(lo: float):
    """Percent ticks with as many decimals as the axis range needs (98.5%, not a rounded 98%)."""
    return PercentFormatter(xmax=1.0, decimals=None)


# --------------------------------------------------------------------------- training history


def training_curves(history: list[dict]) -> Figure | None:
    """Loss, accuracy / macro-F1 and learning rate per epoch from ``model.json``'s history."""
    rows = [h for h in history or [] if isinstance(h, dict) and "epoch" in h]
    if not rows:
        return None
    epochs = [h["epoch"] for h in rows]

    def series(key):
        vals = [h.get(key) for h in rows]
        return None if all(v is None for v in vals) else [np.nan if v is None else v for v in vals]

    has_lr = series("lr") is not None
    fig, axes = _figure(1, 3 if has_lr else 2, figsize=(14 if has_lr else 10, 3.8))
    ax = axes[0]
    for key, label, colour, style in (("train_loss", "training", BLUE, "-"), ("val_loss", "validation", ORANGE, "-")):
        s = series(key)
        if s is not None:
            ax.plot(epochs, s, style, color=colour, marker="o", ms=3, label=label)
    ax.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    ax.legend()
    ax = axes[1]
    for key, label, colour, style in (
        ("train_acc", "training accuracy", BLUE, "-"),
        ("val_acc", "validation accuracy", ORANGE, "-"),
        ("val_macro_f1", "validation macro-F1", GREEN, "--"),
    ):
        s = series(key)
        if s is not None:
            ax.plot(epochs, s, style, color=colour, marker="o", ms=3, label=label)
    best_key = "val_macro_f1" if series("val_macro_f1") is not None else "val_acc"
    best = series(best_key)
    if best is not None and np.isfinite(best).any():
        i = int(np.nanargmax(best))
        ax.axvline(epochs[i], color="grey", ls=":", lw=1)
        label = "macro-F1" if best_key == "val_macro_f1" else "accuracy"
        ax.text(epochs[i], 1.0, f"best epoch {epochs[i]}: {label} {100 * best[i]:.2f}% ",
                transform=ax.get_xaxis_transform(), ha="right" if i > len(epochs) / 2 else "left",
                va="bottom", fontsize=8.5, color="dimgrey")
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ax.set_title("Accuracy and macro-F1", pad=16)
    ax.set_xlabel("epoch")
    ax.legend(loc="lower right")
    if has_lr:
        ax = axes[2]
        lr = np.asarray(series("lr"), dtype=float)
        ax.plot(epochs, lr, color=PURPLE, marker="o", ms=3)
        positive = lr[np.isfinite(lr) & (lr > 0)]
        if len(positive) and positive.max() / positive.min() > 20:
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.1e}"))
        ax.set(title="Learning rate", xlabel="epoch")
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- confusion matrix


def confusion_matrix(cm: dict, title: str = "Confusion matrix") -> Figure:
    """Heatmap of the row-normalised confusion matrix, each cell showing percent and count.

    Columns for model classes the dataset lacks are labelled "(absent)".
    """
    counts = np.asarray(cm["counts"])
    norm = np.asarray(cm["row_normalized"])
    rows, cols = cm["rows"], cm["columns"]
    absent = [c not in rows for c in cols]
    nr, nc = counts.shape
    fig, ax = _figure(figsize=(1.05 * nc + 3.2, 0.8 * nr + 2.6))
    ax.grid(False)
    im = ax.imshow(norm, cmap=HEATMAP, vmin=0, vmax=1, aspect="auto")
    for j, a in enumerate(absent):
        if a:  # classes the dataset lacks: any prediction here is an error
            ax.axvspan(j - 0.5, j + 0.5, facecolor="none", edgecolor="#bbbbbb", hatch="//", lw=0, zorder=0.5)
    for i in range(nr):
        for j in range(nc):
            if counts[i, j] == 0:
                continue
            v = norm[i, j]
            colour = "white" if v > 0.55 else "black"
            ax.text(j, i, f"{100 * v:.1f}%\n{counts[i, j]}", ha="center", va="center", fontsize=8.5,
                    color=colour, fontweight="bold" if rows[i] == cols[j] else "normal")
    ax.set_xticks(range(nc), [display(c) + ("\n(absent)" if a else "") for c, a in zip(cols, absent)],
                  rotation=35, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(nr), [f"{display(r)}  (n={counts[i].sum()})" for i, r in enumerate(rows)])
    for lab, a in zip(ax.get_xticklabels(), absent):
        if a:
            lab.set_color("grey")
            lab.set_fontstyle("italic")
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(title + " (row-normalised: share of each true class)")
    for s in ax.spines.values():
        s.set_visible(False)
    cbar = fig.colorbar(im, ax=ax, fraction=0.035, pad=0.02, format=PercentFormatter(xmax=1.0, decimals=0))
    cbar.outline.set_visible(False)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- per class


def per_class_bars(metrics: dict) -> Figure:
    """Precision, recall and F1 of each evaluated class as grouped horizontal bars."""
    names = list(metrics["per_class"])
    rows = metrics["per_class"]
    keys = (("precision", BLUE), ("recall", ORANGE), ("f1", GREEN))
    values = np.array([[rows[n][k] for k, _ in keys] for n in names])
    fig, ax = _figure(figsize=(9, 0.62 * len(names) + 1.6))
    h = 0.26
    y = np.arange(len(names))[::-1]
    for j, (k, colour) in enumerate(keys):
        ax.barh(y + (1 - j) * h, values[:, j], height=h, color=colour, label="F1" if k == "f1" else k)
        for yi, v in zip(y + (1 - j) * h, values[:, j]):
            ax.text(v, yi, f" {100 * v:.1f}", va="center", fontsize=7.5, color="dimgrey")
    lo = float(values.min())
    left = 0.0 if lo < 0.5 else max(0.0, np.floor((lo - 0.03) * 20) / 20)
    ax.set_xlim(left, 1.0 + (1 - left) * 0.07)
    ax.xaxis.set_major_formatter(_pct_axis_fine(left))
    ax.set_yticks(y, [f"{display(n)}  (n={rows[n]['support']})" for n in names])
    ax.grid(axis="y", visible=False)
    ax.set_title("Per-class precision, recall and F1")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=3)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- calibration


def _reliability_axis(ax, ax_n, bins: dict, title: str, ece: float, legend: bool = True) -> None:
    edges = np.asarray(bins["edges"])
    width = np.diff(edges)
    centre = edges[:-1] + width / 2
    acc = np.array([np.nan if a is None else a for a in bins["accuracy"]])
    conf = np.array([np.nan if c is None else c for c in bins["confidence"]])
    count = np.asarray(bins["count"])
    has = count > 0
    ax.bar(centre[has], acc[has], width=width[has] * 0.92, color=SKY, label="accuracy in the bin")
    ax.vlines(centre[has], np.minimum(acc, conf)[has], np.maximum(acc, conf)[has], color=VERMILLION, lw=2.5,
              label="gap (ECE averages these)")
    ax.plot(centre[has], conf[has], "_", color=BLACK, ms=width[0] * 260, mew=2, label="mean confidence in the bin")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="accuracy")
    ax.yaxis.set_major_formatter(_pct_axis)
    ax.tick_params(labelbottom=False)
    ax.set_title(f"{title}\nECE {100 * ece:.2f}%")
    if legend:
        ax.legend(loc="upper left", fontsize=8)
    ax_n.bar(centre[has], count[has], width=width[has] * 0.92, color="grey")
    ax_n.set_yscale("log")
    ax_n.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_n.yaxis.set_minor_formatter(NullFormatter())
    ax_n.set(xlim=(0, 1), ylim=(0.7, max(2.0, count.max() * 1.6)), xlabel="confidence (top probability)", ylabel="images")
    ax_n.xaxis.set_major_formatter(_pct_axis)


def reliability_diagram(panels: list[tuple[str, dict, float]]) -> Figure:
    """Reliability diagrams side by side: ``panels`` is a list of ``(title, bins, ece)``.

    Bars show the accuracy in each equal-width confidence bin, the shaded part
    the gap to the bin's mean confidence; the strip below counts the images
    per bin (log scale).
    """
    fig, axes = _figure(2, len(panels), figsize=(5.6 * len(panels), 6.2), squeeze=False,
                        gridspec_kw={"height_ratios": [3.2, 1]}, sharex="col")
    for j, (title, bins, ece) in enumerate(panels):
        _reliability_axis(axes[0, j], axes[1, j], bins, title, ece, legend=j == 0)
    fig.tight_layout()
    return fig


def confidence_histogram(confidence: np.ndarray, correct: np.ndarray, threshold: float | None = None) -> Figure:
    """Histograms of the top probability for correct and wrong predictions (log count axis)."""
    confidence = np.asarray(confidence)
    correct = np.asarray(correct, bool)
    fig, ax = _figure(figsize=(9, 4.2))
    bins = np.linspace(0, 1, 41)
    ax.hist([confidence[correct], confidence[~correct]], bins=bins, color=[BLUE, VERMILLION], rwidth=0.9,
            label=[f"correct ({correct.sum()})", f"wrong ({(~correct).sum()})"])
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if threshold is not None:
        ax.axvline(threshold, color=BLACK, ls="--", lw=1.2)
        ax.text(threshold, ax.get_ylim()[1], f"refer to a hematologist below {100 * threshold:.2f}% ", va="top",
                ha="right" if threshold > 0.7 else "left", fontsize=9)
    ax.xaxis.set_major_formatter(_pct_axis)
    ax.set(xlim=(0, 1.0), xlabel="confidence (top probability)", ylabel="images (log scale)")
    ax.set_title("Confidence of correct and wrong predictions")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def accuracy_coverage(curve: dict, targets: list[dict], stored: dict | None = None) -> Figure:
    """Accuracy of the accepted images against the share accepted, with target accuracies marked.

    Parameters
    ----------
    curve : dict
        ``coverage`` and ``accuracy`` lists (see ``CoverageCurve.to_dict``).
    targets : list of dict
        :func:`~bloodcell.evaluation.calibration.coverage_at_accuracy` results.
    stored : dict, optional
        The model's stored threshold applied to this data
        (:func:`~bloodcell.evaluation.calibration.apply_threshold`).
    """
    cov = np.asarray(curve["coverage"])
    acc = np.asarray(curve["accuracy"])
    fig, ax = _figure(figsize=(9, 5))
    ax.plot(cov, acc, color=BLUE, lw=2, label="accepted images")
    overall = acc[-1]
    lowest = min([overall] + [t["target"] for t in targets])
    bottom = max(0.0, lowest - max(0.01, (1 - lowest) * 0.6))
    colours = (ORANGE, GREEN, PURPLE, SKY)
    for t, colour in zip(targets, colours):
        ax.axhline(t["target"], color=colour, ls=":", lw=1.2)
        if t["threshold"] is not None:
            ax.plot([t["coverage"], t["coverage"]], [bottom, t["target"]], ":", color=colour, lw=1.2)
            ax.plot([t["coverage"]], [t["target"]], "o", color=colour, ms=8, zorder=5,
                    label=f"{100 * t['target']:.1f}% accuracy: {100 * t['coverage']:.1f}% of images kept "
                    f"(threshold {100 * t['threshold']:.1f}%)")
        else:
            ax.plot([], [], "o", color=colour, label=f"{100 * t['target']:.1f}% accuracy: not reached")
    if stored and stored.get("threshold") is not None and stored.get("accuracy") is not None:
        ax.plot([stored["coverage"]], [stored["accuracy"]], "*", color=VERMILLION, ms=14, zorder=6,
                label=f"model's threshold {100 * stored['threshold']:.1f}%: {100 * stored['coverage']:.1f}% kept, "
                f"{100 * stored['accuracy']:.2f}% accurate")
    ax.plot([1.0], [overall], "s", color=BLUE, ms=7, label=f"no abstention: {100 * overall:.2f}%")
    ax.set(xlim=(0, 1.02), ylim=(bottom, 1.0 + (1 - bottom) * 0.04))
    ax.xaxis.set_major_formatter(_pct_axis)
    ax.yaxis.set_major_formatter(_pct_axis_fine(bottom))
    ax.set(xlabel="coverage (share of images the model decides; the rest go to a hematologist)",
           ylabel="accuracy on the accepted images")
    ax.set_title("Accuracy–coverage: refer the least confident images")
    ax.legend(loc="best", framealpha=0.9, frameon=True)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- image grids


def _image_grid(n: int, ncols: int, cell: float = 2.1, title_lines: int = 3):
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, (cell + 0.17 * title_lines) * nrows + 0.4),
                                 squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    return fig, axes


def mistakes_grid(images: np.ndarray, true: list[str], pred: list[str], confidence: list[float],
                  ids: list[str] | None = None, ncols: int = 6) -> Figure | None:
    """The given mistakes as a grid titled with true class, predicted class and confidence."""
    n = len(images)
    if n == 0:
        return None
    fig, axes = _image_grid(n, ncols, title_lines=4 if ids is not None else 3)
    for k, ax in enumerate(axes.ravel()[:n]):
        ax.imshow(images[k])
        ax.set_title(f"true: {display(true[k])}\npred: {display(pred[k])}\n{100 * confidence[k]:.1f}% sure",
                     fontsize=8.5, color=BLACK, loc="center")
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
        if ids is not None:
            name = str(ids[k]).replace("\\", "/").rsplit("/", 1)[-1]
            ax.set_xlabel(name if len(name) <= 26 else "…" + name[-25:], fontsize=7, color="dimgrey")
        for s in ax.spines.values():
            s.set_visible(True)
            s.set_color(VERMILLION)
            s.set_linewidth(2)
    fig.suptitle("Most confident mistakes", fontweight="bold", fontsize=12)
    fig.tight_layout()
    return fig


def gradcam_grid(rows: list[dict], cmap: str = GRADCAM_CMAP) -> Figure | None:
    """Image and Grad-CAM overlay pairs, one row per class.

    ``rows`` holds per class ``{"class": name, "images": uint8 (k,S,S,3),
    "overlays": uint8 (k,S,S,3), "pred": [names], "confidence": [floats]}``.
    """
    rows = [r for r in rows if len(r["images"])]
    if not rows:
        return None
    k = max(len(r["images"]) for r in rows)
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(len(rows), 2 * k, figsize=(1.55 * 2 * k + 1.2, 1.75 * len(rows) + 0.5), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, r in enumerate(rows):
        for j in range(len(r["images"])):
            a, b = axes[i, 2 * j], axes[i, 2 * j + 1]
            a.imshow(r["images"][j])
            b.imshow(r["overlays"][j])
            ok = r["pred"][j] == r["class"]
            b.set_title(f"{'' if ok else 'pred: ' + display(r['pred'][j]) + ' '}{100 * r['confidence'][j]:.0f}%",
                        fontsize=7.5, color=BLACK if ok else VERMILLION)
        axes[i, 0].text(-0.08, 0.5, display(r["class"]), transform=axes[i, 0].transAxes, ha="right", va="center",
                        fontsize=10, fontweight="bold")
    fig.suptitle("Grad-CAM: image and the regions that drove the predicted class (bright = more)",
                 fontweight="bold", fontsize=12)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- comparison


def compare_bars(rows: list[dict]) -> Figure:
    """Accuracy, macro-F1, ECE and throughput of several models, one horizontal bar each.

    ``rows`` holds ``name``, ``accuracy``, ``macro_f1``, ``ece``, ``images_per_second``,
    optionally ``accuracy_ci`` / ``macro_f1_ci`` (lo, hi), ``parameters`` and ``tta``.
    """
    from matplotlib.ticker import MaxNLocator

    y = np.arange(len(rows))[::-1]
    fig, axes = _figure(1, 4, figsize=(17, 0.62 * len(rows) + 2.2), sharey=True)
    panels = (
        ("accuracy", "Accuracy (95% CI)", BLUE, True),
        ("macro_f1", "Macro-F1 (95% CI)", GREEN, True),
        ("ece", "ECE (lower is better)", VERMILLION, True),
        ("images_per_second", "Images per second (CPU)", PURPLE, False),
    )
    for ax, (key, title, colour, pct) in zip(axes, panels):
        vals = np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=float)
        ax.barh(y, np.nan_to_num(vals), color=colour, height=0.6)
        finite = vals[np.isfinite(vals)]
        inside = pct and key != "ece"
        if inside and len(finite):
            lows = [min(v, (r.get(f"{key}_ci") or [v])[0]) for v, r in zip(vals, rows) if np.isfinite(v)]
            left = max(0.0, np.floor((min(lows) - 0.25 * (1.0 - finite.min()) - 0.01) * 100) / 100)
            ax.set_xlim(left, 1.0)
            ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=None))
        elif len(finite):
            ax.set_xlim(0, finite.max() * 1.3 or 1)
            if pct:
                ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=None))
        for yi, v, r in zip(y, vals, rows):
            if not np.isfinite(v):
                ax.text(ax.get_xlim()[0], yi, "  not measured", va="center", fontsize=8.5, color="dimgrey")
                continue
            ci = r.get(f"{key}_ci")
            if ci:
                ax.errorbar([v], [yi], xerr=[[v - ci[0]], [ci[1] - v]], color=BLACK, capsize=3, lw=1)
            if inside:
                ax.text(min(v, ci[0] if ci else v), yi, f"{100 * v:.2f}%  ", va="center", ha="right", fontsize=9,
                        color="white", fontweight="bold")
            else:
                ax.text(v, yi, f"  {100 * v:.2f}%" if pct else f"  {v:,.0f}", va="center", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_title(title)
        ax.grid(axis="y", visible=False)
    labels = []
    for r in rows:
        label = r["name"] + (" (TTA)" if r.get("tta") else "")
        if r.get("parameters"):
            label += f"\n{r['parameters'] / 1e6:.2f}M params" + (f", {r['image_size']} px" if r.get("image_size") else "")
        labels.append(label)
    axes[0].set_yticks(y, labels)
    fig.tight_layout()
    return fig
