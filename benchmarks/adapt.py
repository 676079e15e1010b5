"""Adapting to another lab with k labelled cells per class: accuracy on that lab's other cells, and the time.

    python benchmarks/adapt.py                               # every source, k = 5, 10, 20, 5 draws each
    python benchmarks/adapt.py --sources lisc --draws 3 --method linear
    python benchmarks/adapt.py --first-seed 100              # other draws (the ones the method was chosen on)
    python benchmarks/adapt.py --merge results/adapt_lisc.json results/adapt_jiangxi.json   # sources run apart

For each class-folder source under BLOODCELL_EXTERNAL (default ../shared/data/external), each k
and each seeded draw: k cells per class are drawn, `bloodcell.adapt` adapts the model (default: the
packaged one, or --model) to them (it holds out its own share of them for calibration), and the
adapted model classifies every remaining cell of that source. Reported per (source, k): balanced
accuracy (mean recall over the scored classes), accuracy and macro-F1 over them (a prediction into
any other class is an error), mean and range over the draws, and the wall time of `adapt` (without
the ONNX export the command adds afterwards; the adapted model is scored through PyTorch).

Scoring rule: a class gives at most (its size - 5) cells to adaptation, so at least 5 remain to
score it; a class of 5 cells or fewer gives all of them to adaptation and is not scored (Jiangxi's
one basophil). Results are saved after every draw (a rerun skips the draws already done) to
benchmarks/results/adapt.json, and a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score, recall_score

from bloodcell import Classifier, adapt
from bloodcell.data import open_dataset

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EXTERNAL = Path(os.environ.get("BLOODCELL_EXTERNAL", ROOT.parent / "shared" / "data" / "external")).resolve()
MIN_SCORED = 5


def draw(labels: list[str], k: int, seed: int) -> tuple[list[int], list[int], list[str]]:
    """``(labelled, scored, scored classes)`` indices of one draw (see the module's scoring rule)."""
    rng = np.random.default_rng(seed)
    labelled, scored, classes = [], [], []
    for c in sorted(set(labels)):
        idx = rng.permutation([i for i, x in enumerate(labels) if x == c]).tolist()
        take = min(k, len(idx) - MIN_SCORED) if len(idx) > MIN_SCORED else len(idx)
        labelled += idx[:take]
        if len(idx) - take >= MIN_SCORED:
            scored += idx[take:]
            classes.append(c)
    return sorted(labelled), sorted(scored), classes


def _manifest(path: Path, ds, indices: list[int]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for i in indices:
            w.writerow([str(ds.samples[i].path), ds.samples[i].label])
    return path


def method_name(args) -> str:
    return (args.method + ("+drop" if args.drop_absent else "") + ("+bn-keep" if args.batch_norm == "keep" else "")
            + ("" if args.match_scale else "+no-scale") + ("+imagenet" if args.imagenet_member else "")
            + (f"+epochs{args.epochs}" if args.epochs is not None else "")
            + (f"+copies{args.copies}" if args.copies is not None else "")
            + (f"+held-out{args.held_out:g}" if args.held_out is not None else ""))


def one_draw(source: Path, k: int, seed: int, args) -> dict:
    ds = open_dataset(source)
    labels = [s.label for s in ds.samples]
    labelled, scored, classes = draw(labels, k, seed)
    work = Path(tempfile.mkdtemp(prefix="bloodcell-adapt-bench-"))
    try:
        data = _manifest(work / "labelled.csv", ds, labelled)
        start = time.perf_counter()
        result = adapt(data, work / "model", model=args.model, method=args.method, epochs=args.epochs,
                       copies=args.copies, seed=seed,
                       batch_norm=args.batch_norm, match_scale=args.match_scale,
                       drop_absent=args.drop_absent, imagenet_member=args.imagenet_member, export=False,
                       progress=False,
                       **({"held_out": args.held_out} if args.held_out is not None else {}))
        seconds = time.perf_counter() - start
        test = _manifest(work / "scored.csv", ds, scored)
        run = Classifier(work / "model").predict([test])
        truth = [p.true_label for p in run.predictions]
        pred = [p.label for p in run.predictions]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "source": source.name, "k": k, "seed": seed, "method": method_name(args),
        "labelled": len(labelled), "into_absent_classes": float(np.mean([p not in set(labels) for p in pred])),
        "scored": len(scored), "scored_classes": classes,
        "balanced_accuracy": float(recall_score(truth, pred, labels=classes, average="macro", zero_division=0)),
        "accuracy": float(np.mean([t == p for t, p in zip(truth, pred)])),
        "macro_f1": float(f1_score(truth, pred, labels=classes, average="macro", zero_division=0)),
        "seconds": round(seconds, 1), "held_out": result.adaptation.get("held_out"),
    }


def summary(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["source"], r["method"], r["k"]), []).append(r)
    out = []
    for (source, method, k), rs in sorted(groups.items()):
        b = [r["balanced_accuracy"] for r in rs]
        out.append({"source": source, "method": method, "k": k, "draws": len(rs),
                    "balanced_accuracy": float(np.mean(b)), "balanced_min": float(np.min(b)),
                    "balanced_max": float(np.max(b)), "accuracy": float(np.mean([r["accuracy"] for r in rs])),
                    "macro_f1": float(np.mean([r["macro_f1"] for r in rs])),
                    "seconds_mean": float(np.mean([r["seconds"] for r in rs])),
                    "seconds_max": float(np.max([r["seconds"] for r in rs]))})
    return out


def table(groups: list[dict]) -> str:
    lines = ["| source | method | k per class | draws | balanced accuracy (min-max) | accuracy | macro-F1 "
             "| adapt time mean (max) |",
             "| --- | --- | ---: | ---: | --- | ---: | ---: | --- |"]
    for g in groups:
        lines.append(f"| {g['source']} | {g['method']} | {g['k']} | {g['draws']} | {g['balanced_accuracy']:.1%} "
                     f"({g['balanced_min']:.1%}-{g['balanced_max']:.1%}) | {g['accuracy']:.1%} | {g['macro_f1']:.1%} | "
                     f"{g['seconds_mean']:.0f} s ({g['seconds_max']:.0f} s) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sources", nargs="*", default=None, help="sub-folders of BLOODCELL_EXTERNAL (default: all)")
    p.add_argument("--k", type=int, nargs="+", default=[5, 10, 20], help="labelled cells per class")
    p.add_argument("--draws", type=int, default=5, help="seeded draws per source and k")
    p.add_argument("--first-seed", type=int, default=0, help="seed of the first draw")
    p.add_argument("--method", default="finetune", choices=("finetune", "linear", "prototype"))
    p.add_argument("--epochs", type=int, default=None, help="adapt with --epochs (default: adapt's own)")
    p.add_argument("--copies", type=int, default=None, help="adapt with --copies (default: adapt's own)")
    p.add_argument("--held-out", type=float, default=None, help="adapt with --held-out (default: adapt's own)")
    p.add_argument("--batch-norm", default="lab", choices=("keep", "lab"), help="adapt with --batch-norm")
    p.add_argument("--no-match-scale", dest="match_scale", action="store_false", help="adapt with --no-match-scale")
    p.add_argument("--no-imagenet-member", dest="imagenet_member", action="store_false",
                   help="adapt with --no-imagenet-member")
    p.add_argument("--drop-absent", action="store_true", help="adapt with --drop-absent (only the source's classes)")
    p.add_argument("--model", default=None, help="model folder to adapt (default: the packaged model)")
    p.add_argument("-o", "--output", default=str(RESULTS / "adapt.json"))
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="only combine the draws of these result files (e.g. sources run in parallel) into --output")
    args = p.parse_args(argv)
    if args.merge:
        rows = [r for f in args.merge for r in json.loads(Path(f).read_text())["draws"]]
        Path(args.output).write_text(json.dumps({"draws": rows, "summary": summary(rows)}, indent=1))
        print(table(summary(rows)))
        return 0
    sources = [EXTERNAL / s for s in args.sources] if args.sources else sorted(d for d in EXTERNAL.iterdir() if d.is_dir())
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = json.loads(out.read_text())["draws"] if out.is_file() else []
    key = lambda r: (r["source"], r["method"], r["k"], r["seed"], r.get("model"))  # noqa: E731
    for source in sources:
        for k in args.k:
            for seed in range(args.first_seed, args.first_seed + args.draws):
                method = method_name(args)
                if (source.name, method, k, seed, args.model) in {key(r) for r in done}:
                    continue
                row = {**one_draw(source, k, seed, args), "model": args.model}
                print(f"{source.name} k={k} seed={seed}: balanced {row['balanced_accuracy']:.1%}, "
                      f"{row['seconds']:.0f} s", file=sys.stderr, flush=True)
                latest = json.loads(out.read_text())["draws"] if out.is_file() else []
                done = [r for r in latest if key(r) != key(row)] + [row]
                out.write_text(json.dumps({"draws": done, "summary": summary(done)}, indent=1))
    print(table(summary(done)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
