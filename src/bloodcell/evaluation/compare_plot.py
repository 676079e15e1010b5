"""The bar plot of ``bloodcell compare``: several models side by side."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from bloodcell.evaluation.figure_style import BLACK, BLUE, GREEN, PURPLE, VERMILLION, new_figure


def compare_bars(rows: list[dict]) -> Figure:
    """Accuracy, macro-F1, ECE and throughput of several models, one horizontal bar each.

    ``rows`` holds ``name``, ``accuracy``, ``macro_f1``, ``ece``, ``images_per_second``,
    optionally ``accuracy_ci`` / ``macro_f1_ci`` (lo, hi), ``parameters`` and ``tta``.
    """
    y = np.arange(len(rows))[::-1]
    fig, axes = new_figure(1, 4, figsize=(17, 0.62 * len(rows) + 2.2), sharey=True)
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
