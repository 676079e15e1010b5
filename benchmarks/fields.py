"""Finding, classifying and counting cells in whole smear fields: quality and speed.

Quality, on each folder of fields with a ``boxes.csv`` (``image,label,x0,y0,x1,y1``; images
beside it or in ``images/``): white-cell recall and precision at IoU ≥ 0.5, AP50 (score: the
detector's confidence), the share of fields whose white-cell count is exact and the mean absolute
count error. The detector's thresholds were tuned on the development fields with an even index
(sorted by name); the odd ones were held out, and are reported apart (``--split-half``).

On PBC images (one cell of interest at the centre): the share of a seeded sample where a found
box contains the image centre, and the PBC image side in red-cell diameters (the crop size
:data:`bloodcell.fields.analyse.PBC_SIDE_RBC` reproduces).

Mosaics of PBC images (3 x 2 images cut to 640 x 480, one known cell near each image's centre)
give fields whose cells have labels: the share of those cells found, and the share classified as
their image's class, against classifying each PBC image alone. PBC images come from the test
split of ``runs/pbc_split.csv`` when it is there (``--split-csv``), so the model never saw them.

Speed, per field on this machine (onnxruntime with ``--threads``, default 1): wall time and CPU
time of detection alone, and of detection + classification + counting, on the development fields
and on 640 x 480 mosaics (draaslan fields, red cells about 52 px, several white cells each). The
load average is recorded: on a shared machine, compare CPU times.

    python benchmarks/fields.py                       # writes benchmarks/results/fields.json
    python benchmarks/fields.py --boxes DIR/boxes.csv --pbc-per-class 50

Boxes listed in ``benchmarks/fields_box_review.csv`` were looked at and hold no white cell (a
red cell boxed as white, a strip at the edge with nothing in it): each quality table also has a
row without them (``all, boxes reviewed``), beside the scores against the boxes as given.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bloodcell.core.preprocess import decode_image  # noqa: E402
from bloodcell.fields.analyse import PBC_SIDE_RBC, analyse_image  # noqa: E402
from bloodcell.fields.detect import detect  # noqa: E402
from bloodcell.fields.measure import image_paths, read_boxes, score_fields, white_truth  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
DEFAULT_BOXES = SHARED / "fields" / "draaslan" / "boxes.csv"
DEFAULT_PBC = SHARED / "pbc"
RESULTS = ROOT / "benchmarks" / "results" / "fields.json"
BOX_REVIEW = ROOT / "benchmarks" / "fields_box_review.csv"
WIDTH, HEIGHT = 640, 480


def white_found(image: np.ndarray) -> list[tuple]:
    return [(c.box, c.score) for c in detect(image).white]


def set_aside(review_csv: Path | None) -> dict[tuple[str, tuple], str]:
    """Boxes looked at and judged to hold no white cell: ``{(image, box): reason}`` (empty without a file)."""
    if review_csv is None or not review_csv.is_file():
        return {}
    with open(review_csv, newline="", encoding="utf-8") as f:
        return {(r["image"], tuple(float(r[k]) for k in ("x0", "y0", "x1", "y1"))): r["reason"] for r in csv.DictReader(f)}


def quality(boxes_csv: Path, split_half: bool, review: dict | None = None) -> dict:
    """Detection figures on every field of a boxes file, and on each half when ``split_half``;
    with ``review`` (:func:`set_aside`), also on all fields without the boxes it sets aside."""
    boxes = read_boxes(boxes_csv)
    paths, missing = image_paths(boxes_csv, sorted(boxes))
    images = {n: decode_image(p, str(p)) for n, p in paths.items()}
    truth = white_truth(boxes)
    names = sorted(images)
    parts = {"all": (names, truth)}
    if split_half:
        parts.update({"tuned (even index)": (names[0::2], truth), "held out (odd index)": (names[1::2], truth)})
    kept = {n: [b for b in bs if (n, tuple(b)) not in (review or {})] for n, bs in truth.items()}
    dropped = sum(map(len, truth.values())) - sum(map(len, kept.values()))
    if dropped:
        parts["all, boxes reviewed"] = (names, kept)
    found = {n: white_found(images[n]) for n in names}
    out = {"boxes": str(boxes_csv), "missing_images": len(missing), "boxes_set_aside": dropped,
           "set_aside_reasons": sorted({f"{n}: {why}" for (n, b), why in (review or {}).items() if n in truth
                                        and any(tuple(t) == b for t in truth[n])})}
    for part, (chosen, part_truth) in parts.items():
        figures = score_fields({n: found[n] for n in chosen}, part_truth)
        failures = figures.pop("failures")
        out[part] = {**figures, "failures": failures if part == "all" else len(failures)}
    return out


def test_split(split_csv: Path) -> set[str] | None:
    """The ``class/file`` names of the test split of a split manifest, or ``None`` without one."""
    if not split_csv.is_file():
        return None
    with open(split_csv, newline="") as f:
        return {row["source_id"] for row in csv.DictReader(f) if row["split"] == "test"}


def pbc_files(folder: Path, per_class: int, only: set[str] | None = None, seed: int = 0) -> list[tuple[str, Path]]:
    """A seeded sample of ``per_class`` images from each class folder (from ``only`` when given)."""
    rng = random.Random(seed)
    out = []
    for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(p for p in cls.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png") and not p.name.startswith(".")
                       and (only is None or f"{cls.name}/{p.name}" in only))
        out += [(cls.name, p) for p in rng.sample(files, min(per_class, len(files)))]
    return out


def pbc_centres(sample: list[tuple[str, Path]]) -> dict:
    """Share of PBC images where a found box contains the centre, by class; the PBC side in red cells."""
    hits, total, sides, misses = {}, {}, [], []
    for cls, path in sample:
        try:
            image = decode_image(path, str(path))
        except Exception:  # files of the release that are not images
            continue
        field = detect(image)
        h, w = image.shape[:2]
        ok = any(c.box[0] <= w / 2 <= c.box[2] and c.box[1] <= h / 2 <= c.box[3] for c in field.cells)
        hits[cls] = hits.get(cls, 0) + ok
        total[cls] = total.get(cls, 0) + 1
        sides.append(min(h, w) / field.rbc)
        if not ok:
            misses.append(f"{cls}/{path.name}")
    n = sum(total.values())
    return {"images": n, "centre_in_a_box": sum(hits.values()) / n,
            "by_class": {c: round(hits[c] / total[c], 4) for c in total}, "misses": misses,
            "pbc_side_in_rbc_median": round(statistics.median(sides), 2), "pbc_side_rbc_used": PBC_SIDE_RBC}


def mosaic(images: list[np.ndarray]) -> np.ndarray:
    """Six images (3 x 2) side by side, cut to 640 x 480 from the top left."""
    side = min(min(im.shape[:2]) for im in images)
    tiles = [im[:side, :side] for im in images]
    rows = [np.concatenate(tiles[i:i + 3], axis=1) for i in (0, 3)]
    whole = np.concatenate(rows, axis=0)
    return whole[:HEIGHT, :WIDTH] if whole.shape[0] >= HEIGHT and whole.shape[1] >= WIDTH else whole


def pbc_mosaics(clf, sample: list[tuple[str, Path]], count: int) -> dict:
    """Cells of PBC mosaics: found (a white box holds the tile's centre) and classified as the tile's class."""
    readable = []
    for cls, path in sample:
        try:
            readable.append((cls, decode_image(path, str(path))))
        except Exception:
            continue
    rng = random.Random(1)
    found = right = alone = cells = 0
    for _ in range(count):
        picked = rng.sample(readable, 6)
        image = mosaic([im for _, im in picked])
        side = min(min(im.shape[:2]) for _, im in picked)
        result = analyse_image(clf, image, "mosaic")
        singles = clf.predict_arrays([im for _, im in picked])
        for k, (cls, _) in enumerate(picked):
            cx, cy = (k % 3) * side + side / 2, (k // 3) * side + side / 2
            if cx >= image.shape[1] or cy >= image.shape[0]:
                continue
            cells += 1
            alone += singles[k].label == cls
            inside = [c for c in result.cells if c.box[0] <= cx <= c.box[2] and c.box[1] <= cy <= c.box[3]]
            found += bool(inside)
            right += any(c.label == cls for c in inside)
    return {"mosaics": count, "cells": cells, "found": found / cells, "classified_right": right / cells,
            "classified_right_alone": alone / cells}


def timed(fn, items: list) -> tuple[float, float]:
    """Median wall seconds and mean CPU seconds (all threads) of ``fn(item)`` over the items,
    after one untimed call. On a machine shared with other work the wall time grows with the
    load while the CPU time does not: on an idle machine a single-threaded call takes about its
    CPU time."""
    fn(items[0])
    times = []
    cpu = time.process_time()
    for item in items:
        start = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - start)
    return statistics.median(times), (time.process_time() - cpu) / len(items)


def speed(clf, fields: list[np.ndarray], big: list[np.ndarray]) -> dict:
    """Fields per second: detection alone and detection + classification, small and 640 x 480 fields."""
    out = {"load_average_1min": round(os.getloadavg()[0], 2)}
    for name, items in (("development_fields", fields), ("640x480", big)):
        det, det_cpu = timed(detect, items)
        full, full_cpu = timed(lambda im: analyse_image(clf, im, "field"), items)
        whites = statistics.mean(len(detect(im).white) for im in items)
        out[name] = {"fields": len(items), "size": f"{items[0].shape[1]}x{items[0].shape[0]}",
                     "white_cells_per_field": round(whites, 2),
                     "detect_ms": round(1000 * det, 1), "detect_cpu_ms": round(1000 * det_cpu, 1),
                     "detect_fields_per_s": round(1 / det, 1),
                     "detect_classify_ms": round(1000 * full, 1), "detect_classify_cpu_ms": round(1000 * full_cpu, 1),
                     "detect_classify_fields_per_s": round(1 / full, 1)}
    return out


def big_fields(boxes_csv: Path, count: int) -> list[np.ndarray]:
    """640 x 480 fields cut from 3 x 2 development fields."""
    boxes = read_boxes(boxes_csv)
    paths, _ = image_paths(boxes_csv, sorted(boxes))
    images = [decode_image(p, str(p)) for p in list(paths.values())[: 6 * count]]
    return [mosaic(images[i:i + 6]) for i in range(0, len(images) - 5, 6)][:count]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boxes", nargs="+", type=Path, default=[DEFAULT_BOXES], help="boxes.csv files of field folders")
    parser.add_argument("--split-half", action=argparse.BooleanOptionalAction, default=True,
                        help="also report the tuned (even) and held-out (odd) halves (default: on)")
    parser.add_argument("--box-review", type=Path, default=BOX_REVIEW,
                        help="CSV of boxes (image,label,x0,y0,x1,y1,reason) looked at and found to hold no white cell: "
                             "also scored without them")
    parser.add_argument("--pbc", type=Path, default=DEFAULT_PBC, help="PBC class folders")
    parser.add_argument("--pbc-per-class", type=int, default=100)
    parser.add_argument("--split-csv", type=Path, default=ROOT / "runs" / "pbc_split.csv",
                        help="split manifest: PBC images are drawn from its test split (the model never trained on "
                             "them); without the file, from all images")
    parser.add_argument("--mosaics", type=int, default=20, help="PBC mosaics to classify")
    parser.add_argument("--speed-fields", type=int, default=12, help="fields timed per size")
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime threads (default 1: the least CPU per field; two fields at once fill 2 cores)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from bloodcell.prediction.classifier import Classifier  # deferred: loads onnxruntime after argument checks

    clf = Classifier(args.model, threads=args.threads)
    review = set_aside(args.box_review)
    report = {"threads": args.threads, "cpus": os.cpu_count(),
              "quality": [quality(b, args.split_half, review) for b in args.boxes]}
    if args.pbc.is_dir():
        only = test_split(args.split_csv)
        sample = pbc_files(args.pbc, args.pbc_per_class, only)
        report["pbc_test_split_only"] = only is not None
        report["pbc"] = pbc_centres(sample)
        report["pbc_mosaics"] = pbc_mosaics(clf, sample, args.mosaics)
    first = args.boxes[0]
    small_paths, _ = image_paths(first, sorted(read_boxes(first)))
    small = [decode_image(p, str(p)) for p in list(small_paths.values())[: args.speed_fields]]
    report["speed"] = speed(clf, small, big_fields(first, args.speed_fields))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print_report(report)
    print(f"written {args.output}")
    return 0


def print_report(report: dict) -> None:
    for q in report["quality"]:
        print(f"\n{q['boxes']}")
        for reason in q["set_aside_reasons"]:
            print(f"  set aside: {reason}")
        for part, f in q.items():
            if isinstance(f, dict):
                print(f"  {part:<22} fields {f['fields']:>3}  white {f['true']:>3}  found {f['found']:>3}  "
                      f"recall {100 * f['recall']:.1f}%  precision {100 * f['precision']:.1f}%  AP50 {100 * f['ap50']:.1f}%  "
                      f"exact count {100 * f['count_exact_share']:.0f}%  |count error| {f['count_error_mean_abs']:.2f}")
    if "pbc" in report:
        p = report["pbc"]
        print(f"\nPBC sample: {p['images']} images, centre inside a found box {100 * p['centre_in_a_box']:.1f}%; "
              f"PBC side = {p['pbc_side_in_rbc_median']} red cells (crop uses {p['pbc_side_rbc_used']})")
        m = report["pbc_mosaics"]
        print(f"PBC mosaics: {m['cells']} cells, found {100 * m['found']:.1f}%, "
              f"classified right {100 * m['classified_right']:.1f}% (each image alone: {100 * m['classified_right_alone']:.1f}%)")
    speeds = dict(report["speed"])
    print(f"\nspeed ({report['threads']} onnxruntime thread(s), load average {speeds.pop('load_average_1min')}):")
    for name, s in speeds.items():
        print(f"  {name} ({s['size']}, {s['white_cells_per_field']} white/field): detect {s['detect_ms']} ms wall, "
              f"{s['detect_cpu_ms']} ms CPU ({s['detect_fields_per_s']}/s); detect+classify+count {s['detect_classify_ms']} ms "
              f"wall, {s['detect_classify_cpu_ms']} ms CPU ({s['detect_classify_fields_per_s']}/s)")


if __name__ == "__main__":
    raise SystemExit(main())
