"""Image grids of an evaluation: the most confident mistakes and Grad-CAM overlays."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from bloodcell.evaluation.figure_style import BLACK, GRADCAM_CMAP, STYLE, VERMILLION
from bloodcell.evaluation.metrics import display


def _image_grid(n: int, ncols: int, cell: float = 2.1, title_lines: int = 3):
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    with plt.rc_context(STYLE):
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
    with plt.rc_context(STYLE):
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
