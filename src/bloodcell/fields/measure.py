"""How well cells are found: recall, precision and AP at an IoU threshold, and count errors,
against a ``boxes.csv`` (``image,label,x0,y0,x1,y1``) of hand-drawn boxes."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from bloodcell.core.errors import DataError

#: Labels in a boxes file that mean a white cell (what the detector's ``white`` cells are matched to).
WHITE_LABELS = ("wbc", "white", "leukocyte", "leucocyte")
BOX_COLUMNS = ("image", "label", "x0", "y0", "x1", "y1")


def read_boxes(path: str | Path) -> dict[str, list[tuple[str, tuple[float, float, float, float]]]]:
    """The boxes of a ``boxes.csv``, by image name: ``[(label, (x0, y0, x1, y1)), ...]``."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = set(BOX_COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))}; expected {','.join(BOX_COLUMNS)}.")
            out = defaultdict(list)
            for line, row in enumerate(reader, start=2):
                try:
                    box = tuple(float(row[k]) for k in ("x0", "y0", "x1", "y1"))
                except (TypeError, ValueError):
                    raise DataError(f"{path}, line {line}: box coordinates must be numbers.") from None
                out[row["image"]].append((row["label"].strip().lower(), box))
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e}).") from None
    return dict(out)


def iou(a, b) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def match(found: list[tuple], truth: list[tuple], threshold: float = 0.5) -> list[bool]:
    """Greedy matching by descending score: for each found ``(box, score)``, whether it matched a
    true box not matched before with IoU ≥ ``threshold``."""
    order = sorted(range(len(found)), key=lambda i: -found[i][1])
    used = set()
    hit = [False] * len(found)
    for i in order:
        best, best_j = threshold, None
        for j, t in enumerate(truth):
            if j not in used:
                v = iou(found[i][0], t)
                if v >= best:
                    best, best_j = v, j
        if best_j is not None:
            used.add(best_j)
            hit[i] = True
    return hit


def average_precision(scores: list[float], hits: list[bool], n_true: int) -> float:
    """Area under the precision-recall curve (all-point interpolation, as in VOC 2010+)."""
    if n_true == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    hit = np.asarray(hits, dtype=float)[order]
    tp = np.cumsum(hit)
    precision = tp / np.arange(1, len(hit) + 1)
    recall = tp / n_true
    precision = np.concatenate([[1.0], precision, [0.0]])
    recall = np.concatenate([[0.0], recall, [recall[-1] if len(recall) else 0.0]])
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    return float(np.sum((recall[1:] - recall[:-1]) * precision[1:]))


def score_fields(found: dict[str, list[tuple]], truth: dict[str, list[tuple]], threshold: float = 0.5) -> dict:
    """Recall, precision, AP and count errors of found boxes against true ones.

    Parameters
    ----------
    found : dict
        Image name -> ``[(box, score), ...]`` of found white cells.
    truth : dict
        Image name -> ``[box, ...]`` of true white cells (images with none may be missing).
    threshold : float
        IoU a found box needs with a true one to count.
    """
    scores, hits, per_field, missed = [], [], [], []
    n_true = 0
    for name in sorted(found):
        boxes = found[name]
        true = truth.get(name, [])
        hit = match(boxes, true, threshold)
        scores += [s for _, s in boxes]
        hits += hit
        n_true += len(true)
        per_field.append(len(boxes) - len(true))
        if sum(hit) < len(true) or not all(hit):
            missed.append({"image": name, "true": len(true), "found": len(boxes), "matched": int(sum(hit))})
    tp = int(sum(hits))
    errors = np.abs(per_field) if per_field else np.zeros(1)
    return {
        "fields": len(found), "true": n_true, "found": len(hits), "matched": tp,
        "recall": tp / n_true if n_true else float("nan"),
        "precision": tp / len(hits) if hits else float("nan"),
        "ap50" if threshold == 0.5 else f"ap{int(round(threshold * 100))}": average_precision(scores, hits, n_true),
        "count_error_mean_abs": float(np.mean(errors)),
        "count_exact_share": float(np.mean(errors == 0)),
        "failures": missed,
    }


def image_paths(boxes_path: str | Path, names) -> tuple[dict[str, Path], list[str]]:
    """Where the images named in a boxes file are: beside it, or in an ``images/`` folder beside
    it. Returns the paths found and the names not found."""
    folder = Path(boxes_path).parent
    found, missing = {}, []
    for name in names:
        for candidate in (folder / name, folder / "images" / name):
            if candidate.is_file():
                found[name] = candidate
                break
        else:
            missing.append(name)
    return found, missing


def white_truth(boxes: dict) -> dict[str, list[tuple]]:
    """The white-cell boxes of each image of :func:`read_boxes`' result."""
    return {name: [b for label, b in rows if label in WHITE_LABELS] for name, rows in boxes.items()}
