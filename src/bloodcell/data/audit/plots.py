"""The audit's figures: class distribution, random samples, image sizes, flagged images, near-duplicates."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from bloodcell.core.classes import DISPLAY_NAMES
from bloodcell.data.audit.checks import FLAG_CONFLICT, FLAG_OUTLIER, FLAG_UNREADABLE, AuditResult

_TILE = 128


def _plt():
    import matplotlib  # deferred: only the plots need matplotlib, and it is slow to import

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # deferred with matplotlib, after choosing the file-only backend

    return plt


def _thumb(result: AuditResult, i: int) -> np.ndarray | None:
    if i in result.unreadable:
        return None
    try:
        img = result.dataset.read(i)
    except Exception:  # noqa: BLE001 - a figure must not fail on one file
        return None
    return np.asarray(Image.fromarray(img).resize((_TILE, _TILE), Image.Resampling.BILINEAR))


def _grid(plt, result: AuditResult, indices: list[int], captions: list[str], title: str, path: Path,
          cols: int = 4) -> Path:
    rows = max(1, -(-len(indices) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i, cap in zip(axes.ravel(), indices, captions):
        img = _thumb(result, i)
        if img is None:
            ax.imshow(np.full((_TILE, _TILE, 3), 235, np.uint8))
            ax.text(_TILE / 2, _TILE / 2, "cannot be\ndecoded", ha="center", va="center", color="darkred", fontsize=10)
        else:
            ax.imshow(img)
        ax.set_title(cap, fontsize=7.5)
    if not indices:
        axes[0, 0].text(0.5, 0.5, "nothing to show", ha="center", va="center", transform=axes[0, 0].transAxes)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _short(sid: str, n: int = 28) -> str:
    return sid if len(sid) <= n else "..." + sid[-(n - 3):]


def class_distribution(result: AuditResult, path: Path) -> Path:
    plt = _plt()
    ds = result.dataset
    counts = ds.class_counts()
    flagged = Counter(ds.samples[i].label for i in result.flagged())
    names = list(counts)
    kept = [counts[c] - flagged[c] for c in names]
    flag = [flagged[c] for c in names]
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(names))
    ax.bar(x, kept, color="#6a51a3", label="images")
    ax.bar(x, flag, bottom=kept, color="#e6550d", label="flagged by the audit")
    for xi, c in zip(x, names):
        ax.text(xi, counts[c], f"{counts[c]:,}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [DISPLAY_NAMES.get(c, c) for c in names], rotation=25, ha="right")
    ax.set_ylabel("images")
    ax.set_title(f"Class distribution ({len(ds):,} images)")
    ax.set_ylim(0, max(counts.values()) * 1.18)
    if sum(flag):
        ax.legend(frameon=False, loc="upper left", ncols=2)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def samples(result: AuditResult, path: Path, seed: int = 0) -> Path:
    plt = _plt()
    ok = result.readable()
    pick = sorted(np.random.default_rng(seed).choice(ok, size=min(16, len(ok)), replace=False).tolist()) if ok else []
    caps = [f"{result.dataset.samples[i].label}\n{_short(result.dataset.samples[i].source_id)}" for i in pick]
    return _grid(plt, result, pick, caps, "16 random images with their labels", path)


def image_sizes(result: AuditResult, path: Path) -> Path:
    plt = _plt()
    ws = np.array([f["width"] for f in result.facts if "width" in f])
    hs = np.array([f["height"] for f in result.facts if "height" in f])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, vals, name in ((axes[0], ws, "width"), (axes[1], hs, "height")):
        if len(vals):
            lo, hi = int(vals.min()), int(vals.max())
            bins = np.arange(lo - 0.5, hi + 1.5) if hi - lo <= 60 else 50
            ax.hist(vals, bins=bins, color="#3182bd")
            ax.set_yscale("log")
        ax.set_xlabel(f"{name} (pixels)")
        ax.set_ylabel("images (log scale)")
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle("Stored image sizes")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def flagged(result: AuditResult, path: Path, limit: int = 24) -> Path:
    plt = _plt()
    order = {FLAG_UNREADABLE: 0, FLAG_CONFLICT: 1, FLAG_OUTLIER: 2}
    idx = sorted(result.flagged(), key=lambda i: (min(order[f] for f in result.flags[i]), result.group_ids[i], i))[:limit]
    title = f"Flagged images ({len(result.flagged())}"
    title += f", first {limit})" if len(result.flagged()) > limit else ")"
    if len(idx) < limit and result.scores is not None:
        extra = [i for i in result.most_unusual(limit) if i not in idx][: max(0, min(limit, 16) - len(idx))]
        if extra:
            title += f", then the most unusual unflagged (score <= {result.settings.outlier_threshold:g})"
        idx += extra
    caps = []
    for i in idx:
        s = result.dataset.samples[i]
        why = ", ".join(result.flags[i]) or "unflagged"
        score = "" if result.scores is None or np.isnan(result.scores[i]) else f" (score {result.scores[i]:.1f})"
        caps.append(f"{_short(s.source_id)}\n{s.label}: {why}{score}")
    return _grid(plt, result, idx, caps, title, path)


def near_duplicates(result: AuditResult, path: Path, limit: int = 8) -> Path:
    plt = _plt()
    groups = sorted(result.near_groups, key=lambda g: -len({result.dataset.samples[i].label for i in g}))[:limit]
    idx, caps = [], []
    for g in groups:
        for i in g[:2]:
            s = result.dataset.samples[i]
            idx.append(i)
            caps.append(f"{_short(s.source_id)}\n{s.label} ({result.group_ids[i]})")
    title = f"Near-duplicate groups ({len(result.near_groups)}; first two members of up to {limit})"
    return _grid(plt, result, idx, caps, title, path)


def write_plots(result: AuditResult, out: Path) -> dict[str, Path]:
    """Write every audit figure into ``out``; returns ``{name: path}``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "class_distribution": class_distribution(result, out / "class_distribution.png"),
        "samples": samples(result, out / "samples.png"),
        "image_sizes": image_sizes(result, out / "image_sizes.png"),
        "flagged": flagged(result, out / "flagged.png"),
        "near_duplicates": near_duplicates(result, out / "near_duplicates.png"),
    }
