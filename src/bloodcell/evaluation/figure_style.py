"""The look shared by every evaluation figure: palette, Matplotlib style, PNG rendering.

Colours come from the Okabe–Ito palette and heatmaps use single-hue
sequential colormaps, both readable with the common colour-vision
deficiencies.
"""

from __future__ import annotations

import io

import matplotlib

# The figures are rendered to PNG files, never shown: a non-interactive backend works headless.
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402

#: Okabe & Ito (2008) colour-blind-safe palette.
BLUE, ORANGE, GREEN, VERMILLION, PURPLE, SKY, YELLOW, BLACK = (
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
)
PALETTE = (BLUE, ORANGE, GREEN, VERMILLION, PURPLE, SKY, YELLOW, BLACK)
HEATMAP = "Blues"
GRADCAM_CMAP = "inferno"

STYLE = {
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


def new_figure(*args, **kwargs):
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(*args, **kwargs)
    return fig, ax


def to_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes and release it."""
    buf = io.BytesIO()
    with plt.rc_context(STYLE):
        fig.savefig(buf, format="png", bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return buf.getvalue()


pct_axis = PercentFormatter(xmax=1.0, decimals=0)


def pct_axis_fine(lo: float):
    """Percent ticks with as many decimals as the axis range needs (98.5%, not a rounded 98%)."""
    return PercentFormatter(xmax=1.0, decimals=None)
