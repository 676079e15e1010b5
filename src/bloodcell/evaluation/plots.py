"""Matplotlib figures of an evaluation, styled for people who read them.

Every function returns a :class:`matplotlib.figure.Figure` (or ``None`` when
there is nothing to draw); :func:`to_png` renders one. The style and palette
live in :mod:`~bloodcell.evaluation.figure_style`, the image grids in
:mod:`~bloodcell.evaluation.image_grids` and the comparison bars in
:mod:`~bloodcell.evaluation.compare_plot`; this module gathers them all. Class
names are shown through :data:`bloodcell.core.classes.DISPLAY_NAMES`.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter, PercentFormatter

from bloodcell.evaluation.compare_plot import compare_bars
from bloodcell.evaluation.figure_style import (
    BLACK,
    BLUE,
    GRADCAM_CMAP,
    GREEN,
    HEATMAP,
    ORANGE,
    PALETTE,
    PURPLE,
    SKY,
    VERMILLION,
    YELLOW,
    new_figure,
    pct_axis,
    pct_axis_fine,
    to_png,
)
from bloodcell.evaluation.image_grids import gradcam_grid, mistakes_grid
from bloodcell.evaluation.metrics import display

__all__ = [
    "BLACK", "BLUE", "GRADCAM_CMAP", "GREEN", "HEATMAP", "ORANGE", "PALETTE", "PURPLE", "SKY", "VERMILLION", "YELLOW",
    "accuracy_coverage", "compare_bars", "confidence_histogram", "confusion_matrix", "gradcam_grid",
    "mistakes_grid", "per_class_bars", "reliability_diagram", "to_png", "training_curves",
]


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
    fig, axes = new_figure(1, 3 if has_lr else 2, figsize=(14 if has_lr else 10, 3.8))
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
    fig, ax = new_figure(figsize=(1.05 * nc + 3.2, 0.8 * nr + 2.6))
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
    fig, ax = new_figure(figsize=(9, 0.62 * len(names) + 1.6))
    h = 0.26
    y = np.arange(len(names))[::-1]
    for j, (k, colour) in enumerate(keys):
        ax.barh(y + (1 - j) * h, values[:, j], height=h, color=colour, label="F1" if k == "f1" else k)
        for yi, v in zip(y + (1 - j) * h, values[:, j]):
            ax.text(v, yi, f" {100 * v:.1f}", va="center", fontsize=7.5, color="dimgrey")
    lo = float(values.min())
    left = 0.0 if lo < 0.5 else max(0.0, np.floor((lo - 0.03) * 20) / 20)
    ax.set_xlim(left, 1.0 + (1 - left) * 0.07)
    ax.xaxis.set_major_formatter(pct_axis_fine(left))
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
    ax.yaxis.set_major_formatter(pct_axis)
    ax.tick_params(labelbottom=False)
    ax.set_title(f"{title}\nECE {100 * ece:.2f}%")
    if legend:
        ax.legend(loc="upper left", fontsize=8)
    ax_n.bar(centre[has], count[has], width=width[has] * 0.92, color="grey")
    ax_n.set_yscale("log")
    ax_n.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_n.yaxis.set_minor_formatter(NullFormatter())
    ax_n.set(xlim=(0, 1), ylim=(0.7, max(2.0, count.max() * 1.6)), xlabel="confidence (top probability)", ylabel="images")
    ax_n.xaxis.set_major_formatter(pct_axis)


def reliability_diagram(panels: list[tuple[str, dict, float]]) -> Figure:
    """Reliability diagrams side by side: ``panels`` is a list of ``(title, bins, ece)``.

    Bars show the accuracy in each equal-width confidence bin, the shaded part
    the gap to the bin's mean confidence; the strip below counts the images
    per bin (log scale).
    """
    fig, axes = new_figure(2, len(panels), figsize=(5.6 * len(panels), 6.2), squeeze=False,
                        gridspec_kw={"height_ratios": [3.2, 1]}, sharex="col")
    for j, (title, bins, ece) in enumerate(panels):
        _reliability_axis(axes[0, j], axes[1, j], bins, title, ece, legend=j == 0)
    fig.tight_layout()
    return fig


def confidence_histogram(confidence: np.ndarray, correct: np.ndarray, threshold: float | None = None) -> Figure:
    """Histograms of the top probability for correct and wrong predictions (log count axis)."""
    confidence = np.asarray(confidence)
    correct = np.asarray(correct, bool)
    fig, ax = new_figure(figsize=(9, 4.2))
    bins = np.linspace(0, 1, 41)
    ax.hist([confidence[correct], confidence[~correct]], bins=bins, color=[BLUE, VERMILLION], rwidth=0.9,
            label=[f"correct ({correct.sum()})", f"wrong ({(~correct).sum()})"])
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if threshold is not None:
        ax.axvline(threshold, color=BLACK, ls="--", lw=1.2)
        ax.text(threshold, ax.get_ylim()[1], f"refer to a hematologist below {100 * threshold:.2f}% ", va="top",
                ha="right" if threshold > 0.7 else "left", fontsize=9)
    ax.xaxis.set_major_formatter(pct_axis)
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
    fig, ax = new_figure(figsize=(9, 5))
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
    ax.xaxis.set_major_formatter(pct_axis)
    ax.yaxis.set_major_formatter(pct_axis_fine(bottom))
    ax.set(xlabel="coverage (share of images the model decides; the rest go to a hematologist)",
           ylabel="accuracy on the accepted images")
    ax.set_title("Accuracy–coverage: refer the least confident images")
    ax.legend(loc="best", framealpha=0.9, frameon=True)
    fig.tight_layout()
    return fig
