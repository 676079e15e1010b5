"""How a model holds up away from its training data: PBC test cells, PBC test cells under
synthetic shifts of what labs differ in, and every labelled folder of other labs' cells.

    python benchmarks/domain_shift.py                        # the default model
    python benchmarks/domain_shift.py --model runs/mine --baseline benchmarks/results/domain_shift.json
    python benchmarks/domain_shift.py --split-name val --framing cell -o runs/shift_val_cell.json

Per source: accuracy, balanced accuracy (mean per-class recall) and macro-F1 with bootstrap
95% CIs, over the classes that source has (a prediction into any other class is an error),
the share of images flagged "not a blood cell", the share called uncertain (referred to a person)
and the share "sure but wrong" (neither flagged nor uncertain, yet misclassified: what a lab would
take on trust and get wrong). Prints a Markdown table and writes
benchmarks/results/domain_shift.json and .png (per-source bars; with --baseline, before vs after).

Settings: BLOODCELL_DATA (the PBC folder, default ../shared/data/pbc), BLOODCELL_EXTERNAL
(folder of other labs' class folders, default ../shared/data/external), --split (the PBC
split CSV; made with `bloodcell split` when missing), --split-name (which of its splits is measured,
default test). --framing cell first frames every image around the cell the locator finds
(bloodcell.core.locate; the share a cell fills measured on 400 PBC training images, so PBC images
come out close to their own field) and hands that to the model's own preprocessing; images with
no cell found go in unchanged. With a model trained on centred crops this is a diagnostic of
where its errors come from, not the design a cell-framing model would use.
--batch-norm source re-estimates the model's batch-norm statistics on each source's own images
(their eight views, no labels; PyTorch) before classifying them, and restores them afterwards.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from bloodcell import Classifier, canonical_class, decode_image
from bloodcell.core.locate import HED_FROM_RGB, RGB_FROM_HED, crop_box, locate_cell, typical_share
from bloodcell.networks.batch_norm import reestimate_batch_norm

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}

def zoom(img: np.ndarray, factor: float) -> np.ndarray:
    """The field as seen at ``factor`` times the magnification, same pixel size (background fills)."""
    h, w = img.shape[:2]
    if factor >= 1:
        ch, cw = round(h / factor), round(w / factor)
        top, left = (h - ch) // 2, (w - cw) // 2
        crop = Image.fromarray(img[top:top + ch, left:left + cw])
        return np.asarray(crop.resize((w, h), Image.BICUBIC))
    small = np.asarray(Image.fromarray(img).resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.BICUBIC))
    top, left = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    out = np.empty_like(img)
    out[:] = np.median(np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]), axis=0)  # the slide's background
    out[top:top + small.shape[0], left:left + small.shape[1]] = small
    return out


def off_centre(img: np.ndarray, fraction: float) -> np.ndarray:
    """The cell moved right and down by ``fraction`` of the field (the slide mirrored into the gap)."""
    h, w = img.shape[:2]
    dy, dx = round(h * fraction), round(w * fraction)
    return np.pad(img[: h - dy, : w - dx], ((dy, 0), (dx, 0), (0, 0)), mode="symmetric")


def stain(img: np.ndarray, hematoxylin: float, eosin: float) -> np.ndarray:
    """Scale the hematoxylin and eosin amounts by colour deconvolution."""
    od = -np.log((img.astype(np.float64) + 1) / 256)
    hed = od @ HED_FROM_RGB
    hed[..., 0] *= hematoxylin
    hed[..., 1] *= eosin
    rgb = 256 * np.exp(-(hed @ RGB_FROM_HED)) - 1
    return np.clip(rgb, 0, 255).astype(np.uint8)


def hue(img: np.ndarray, turn: float) -> np.ndarray:
    hsv = np.asarray(Image.fromarray(img).convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + round(turn * 256)) % 256
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


def cast(img: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    return np.clip(img * np.asarray(gains), 0, 255).astype(np.uint8)


def blur(img: np.ndarray, radius: float) -> np.ndarray:
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius)))


def noise(img: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def low_resolution(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape[:2]
    small = Image.fromarray(img).resize((max(1, round(w * side / min(h, w))), max(1, round(h * side / min(h, w)))), Image.BOX)
    return np.asarray(small)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def brightness(img: np.ndarray, gain: float) -> np.ndarray:
    return np.clip(img.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def grey(img: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(img).convert("L").convert("RGB"))


# name -> function of one image; each kind at a few strengths.
SHIFTS = {
    "stain H x0.6 E x1.4": lambda x: stain(x, 0.6, 1.4),
    "stain H x1.5 E x0.7": lambda x: stain(x, 1.5, 0.7),
    "stain x0.5 (pale)": lambda x: stain(x, 0.5, 0.5),
    "stain x1.6 (dark)": lambda x: stain(x, 1.6, 1.6),
    "hue +0.05": lambda x: hue(x, 0.05),
    "hue -0.10": lambda x: hue(x, -0.10),
    "yellow cast (B x0.8)": lambda x: cast(x, (1.0, 0.97, 0.8)),
    "yellow cast (B x0.6)": lambda x: cast(x, (1.0, 0.93, 0.6)),
    "blue cast (R x0.8)": lambda x: cast(x, (0.8, 0.93, 1.0)),
    "grey": grey,
    "magnification 0.5x": lambda x: zoom(x, 0.5),
    "magnification 0.75x": lambda x: zoom(x, 0.75),
    "magnification 1.5x": lambda x: zoom(x, 1.5),
    "magnification 2x": lambda x: zoom(x, 2.0),
    "cell off-centre 15%": lambda x: off_centre(x, 0.15),
    "cell off-centre 25%": lambda x: off_centre(x, 0.25),
    "defocus blur r=2": lambda x: blur(x, 2),
    "defocus blur r=4": lambda x: blur(x, 4),
    "noise sigma=8": lambda x: noise(x, 8),
    "noise sigma=20": lambda x: noise(x, 20),
    "low resolution 120 px": lambda x: low_resolution(x, 120),
    "low resolution 64 px": lambda x: low_resolution(x, 64),
    "JPEG quality 30": lambda x: jpeg(x, 30),
    "JPEG quality 10": lambda x: jpeg(x, 10),
    "background x0.8 (darker)": lambda x: brightness(x, 0.8),
    "background x1.15 (brighter)": lambda x: brightness(x, 1.15),
}


FRAMING_SAMPLE_PER_CLASS = 50  # training images per class to measure the share a cell fills


def read_test_split(split_csv: Path, name: str = "test") -> list[tuple[Path, str]]:
    """The (path, label) rows of split ``name`` (``train``, ``val`` or ``test``) of the split CSV."""
    with open(split_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("split") == name]
    return [((split_csv.parent / r["path"]).resolve() if not Path(r["path"]).is_absolute() else Path(r["path"]), r["label"])
            for r in rows]


def read_class_folders(folder: Path) -> list[tuple[Path, str]]:
    items = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        label = canonical_class(sub.name)
        items += [(f, label) for f in sorted(sub.iterdir())
                  if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")]
    return items


def stratified(items: list[tuple[Path, str]], per_class: int, seed: int = 0) -> list[tuple[Path, str]]:
    if per_class <= 0:
        return items
    rng = np.random.default_rng(seed)
    out = []
    for label in sorted({lab for _, lab in items}):
        group = [it for it in items if it[1] == label]
        out += [group[i] for i in sorted(rng.permutation(len(group))[:per_class])]
    return out


def bootstrap(y: np.ndarray, p: np.ndarray, labels: list[int], n: int = 1000, seed: int = 0) -> dict:
    """Accuracy, balanced accuracy and macro-F1 over ``labels``, each with a 95% percentile CI."""
    from sklearn.metrics import f1_score

    def scores(idx):
        yt, yp = y[idx], p[idx]
        recalls = [np.mean(yp[yt == c] == c) for c in labels if np.any(yt == c)]
        return (np.mean(yt == yp), np.mean(recalls), f1_score(yt, yp, labels=labels, average="macro", zero_division=0))

    point = scores(np.arange(len(y)))
    rng = np.random.default_rng(seed)
    draws = np.array([scores(rng.integers(0, len(y), len(y))) for _ in range(n)])
    lo, hi = np.percentile(draws, [2.5, 97.5], axis=0)
    names = ("accuracy", "balanced_accuracy", "macro_f1")
    return {k: {"value": float(point[i]), "ci95": [float(lo[i]), float(hi[i])]} for i, k in enumerate(names)}


class CellFraming:
    """Frames an image around the located cell (the box a cell of the typical share would fill);
    counts how many images had a cell found."""

    def __init__(self, share: float):
        self.share = share
        self.found = self.seen = 0

    def __call__(self, img: np.ndarray) -> np.ndarray:
        located = locate_cell(img, self.share)
        self.seen += 1
        self.found += located.found
        return crop_box(img, located.box) if located.found else img


def cell_framing(split_csv: Path) -> CellFraming:
    """The framing step, its share measured on training-split images (whole field: the model crops after)."""
    train = stratified(read_test_split(split_csv, "train"), FRAMING_SAMPLE_PER_CLASS, seed=2)
    share = typical_share([decode_image(path) for path, _ in train], crop_fraction=1.0)
    print(f"cell framing: a located cell fills {share:.3f} of the field's side ({len(train)} training images)",
          file=sys.stderr)
    return CellFraming(share)


def measure(clf: Classifier, items, shift=None, batch: int = 64, frame: CellFraming | None = None) -> dict:
    """Classify ``items`` (path, label), optionally shifted and then framed, and score them."""
    names = list(clf.class_names)
    truth, predicted, flagged, uncertain = [], [], [], []
    seen, found = (frame.seen, frame.found) if frame is not None else (0, 0)
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        images = [decode_image(path) for path, _ in chunk]
        if shift is not None:
            images = [shift(img) for img in images]
        if frame is not None:
            images = [frame(img) for img in images]
        for pred, (_, label) in zip(clf.predict_arrays(images), chunk):
            truth.append(names.index(label))
            predicted.append(names.index(pred.label))
            flagged.append(bool(pred.not_a_blood_cell))
            uncertain.append(bool(pred.uncertain))
    y, p = np.array(truth), np.array(predicted)
    present = sorted(set(truth))
    row = bootstrap(y, p, present)
    sure = ~np.array(flagged) & ~np.array(uncertain)
    row.update(images=len(items), classes=[names[c] for c in present], flagged_not_a_cell=float(np.mean(flagged)),
               uncertain=float(np.mean(uncertain)), sure_but_wrong=float(np.mean(sure & (y != p))))
    if frame is not None:
        row["cell_found"] = (frame.found - found) / max(1, frame.seen - seen)
    return row


@contextmanager
def source_batch_norm(clf: Classifier, items, shift=None, frame: CellFraming | None = None):
    """While open, the PyTorch model's batch-norm statistics are those of this source's own images
    (test-time re-estimation over their eight views, no labels used); restored on leaving."""
    import torch

    modules = [clf._load_torch().module] + ([clf._scored] if clf._scored is not None else [])  # the scorer holds a copy
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]
    images = [decode_image(path) for path, _ in items]
    images = [shift(img) for img in images] if shift is not None else images
    images = [frame(img) for img in images] if frame is not None else images
    try:
        reestimate_batch_norm(modules[0], np.stack([clf.prepare(img) for img in images]), clf.preprocess)
        for copy in modules[1:]:
            norms = [[m for m in x.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)] for x in (modules[0], copy)]
            for new, old in zip(*norms, strict=True):
                old.running_mean.copy_(new.running_mean)
                old.running_var.copy_(new.running_var)
        yield
    finally:
        for m, state in zip(modules, saved):
            m.load_state_dict(state)


def ensure_split(split: Path, data: Path) -> Path:
    if not split.is_file():
        print(f"{split} missing: making it with `bloodcell split {data}`", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "bloodcell", "split", str(data), "-o", str(split)], check=True)
    return split


def sources(args) -> list[tuple[str, str, list, object]]:
    """(group, name, items, shift) for every source measured."""
    test = read_test_split(ensure_split(Path(args.split), Path(args.data)), args.split_name)
    out = [("PBC", f"PBC {args.split_name} split", stratified(test, args.test_per_class), None)]
    if not args.no_shifts:
        shifted = stratified(test, args.shift_per_class, seed=1)
        out += [(shift_group(args.split_name), name, shifted, fn) for name, fn in SHIFTS.items()]
    external = Path(args.external)
    if external.is_dir():
        out += [("other labs", f"{d.name} (other lab)", read_class_folders(d), None)
                for d in sorted(external.iterdir()) if d.is_dir()]
    return out


def shift_group(split_name: str) -> str:
    return f"synthetic shift of PBC {split_name}"


def markdown(rows: list[dict], baseline: dict | None) -> str:
    def cell(m):
        return f"{100 * m['value']:.1f}% ({100 * m['ci95'][0]:.1f}-{100 * m['ci95'][1]:.1f})"

    def share(r, key):
        return f"{100 * r[key]:.1f}%" if key in r else "-"

    head = ("| source | images | accuracy (95% CI) | balanced accuracy (95% CI) | macro-F1 (95% CI) | flagged not a cell "
            "| uncertain | sure but wrong |")
    if baseline:
        head += " balanced accuracy before |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = (f"| {r['source']} | {r['images']} | {cell(r['accuracy'])} | {cell(r['balanced_accuracy'])} "
                f"| {cell(r['macro_f1'])} | {100 * r['flagged_not_a_cell']:.1f}% | {share(r, 'uncertain')} "
                f"| {share(r, 'sure_but_wrong')} |")
        if baseline:
            old = baseline.get(r["source"])
            line += f" {100 * old['balanced_accuracy']['value']:.1f}% |" if old else " - |"
        lines.append(line)
    return "\n".join(lines)


def plot(rows: list[dict], baseline: dict | None, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["source"] for r in rows]
    now = [100 * r["balanced_accuracy"]["value"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.5))
    ypos = np.arange(len(rows))[::-1]
    if baseline:
        before = [100 * baseline[n]["balanced_accuracy"]["value"] if n in baseline else np.nan for n in names]
        ax.barh(ypos + 0.2, before, height=0.4, color="#bbbbbb", label="before")
        bars = ax.barh(ypos - 0.2, now, height=0.4, color="#2b6cb0", label="after")
    else:
        shifted = next((r["group"] for r in rows if r["group"].startswith(shift_group(""))), shift_group("test"))
        colours = {"PBC": "#2b6cb0", shifted: "#6b9bd1", "other labs": "#c05621"}
        bars = ax.barh(ypos, now, color=[colours[r["group"]] for r in rows])
        for group, colour in colours.items():
            ax.barh([np.nan], [np.nan], color=colour, label=group)
    ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=2)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.5 / (0.32 * len(rows) + 1.5)), ncol=3, fontsize=7, frameon=False)
    ax.set_yticks(ypos, names, fontsize=8)
    ax.set_xlim(0, 105)
    ax.axvline(85, color="#888888", lw=0.8, ls="--")
    ax.text(85, len(rows) - 0.4, " 85%", fontsize=7, color="#666666")
    ax.set_xlabel("balanced accuracy (%) over the classes each source has")
    measured = rows[0]["source"].removeprefix("PBC ").removesuffix(" split") if rows else "test"
    ax.set_title(f"Domain shift: PBC {measured}, synthetic shifts, other labs")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder or .onnx (default: the packaged model)")
    parser.add_argument("--data", default=os.environ.get("BLOODCELL_DATA", str(ROOT.parent / "shared/data/pbc")))
    parser.add_argument("--external", default=os.environ.get("BLOODCELL_EXTERNAL", str(ROOT.parent / "shared/data/external")))
    parser.add_argument("--split", default=str(ROOT / "runs" / "pbc_split.csv"))
    parser.add_argument("--test-per-class", type=int, default=0, help="PBC test images per class (0: all)")
    parser.add_argument("--shift-per-class", type=int, default=50, help="PBC test images per class for each shift")
    parser.add_argument("--no-shifts", action="store_true")
    parser.add_argument("--split-name", default="test", choices=("train", "val", "test"),
                        help="which split of the split CSV is measured and shifted (default test)")
    parser.add_argument("--framing", default="centre", choices=("centre", "cell"),
                        help="cell: frame each image around the located cell before the model's preprocessing")
    parser.add_argument("--batch-norm", default="model", choices=("model", "source"),
                        help="source: re-estimate the batch-norm statistics on each source's own images before "
                             "classifying them (no labels; PyTorch)")
    parser.add_argument("--baseline", help="an earlier run's JSON, drawn as 'before'")
    parser.add_argument("-o", "--out", default=str(RESULTS / "domain_shift.json"))
    args = parser.parse_args(argv)
    clf = Classifier(args.model, backend="torch" if args.batch_norm == "source" else "auto")
    frame = cell_framing(ensure_split(Path(args.split), Path(args.data))) if args.framing == "cell" else None
    rows = []
    for group, name, items, shift in sources(args):
        start = time.perf_counter()
        with source_batch_norm(clf, items, shift, frame) if args.batch_norm == "source" else nullcontext():
            row = {"group": group, "source": name, **measure(clf, items, shift, frame=frame)}
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(f"{name:<32} n={row['images']:>5}  acc {100 * row['accuracy']['value']:5.1f}%  "
              f"bal {100 * row['balanced_accuracy']['value']:5.1f}%  flagged {100 * row['flagged_not_a_cell']:5.1f}%  "
              f"sure but wrong {100 * row['sure_but_wrong']:5.1f}%"
              + (f"  cell found {100 * row['cell_found']:5.1f}%" if "cell_found" in row else ""), flush=True)
    baseline = None
    if args.baseline:
        baseline = {r["source"]: r for r in json.loads(Path(args.baseline).read_text())["rows"]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    run = {"model": clf.describe(), "batch_norm": args.batch_norm, "rows": rows}
    if frame is not None:
        run["framing"] = {"kind": "cell", "share": frame.share, "split": args.split_name}
    out.write_text(json.dumps(run, indent=1, default=str))
    plot(rows, baseline, out.with_suffix(".png"))
    print()
    print(markdown(rows, baseline))
    print(f"\nwrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
