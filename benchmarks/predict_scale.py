"""Archive-scale prediction: end-to-end images/s and peak memory of ``bloodcell predict`` at 1k-100k images.

    python benchmarks/predict_scale.py                          # everything below, in one run
    python benchmarks/predict_scale.py --sizes 1000 --engines local --precisions int8   # a quick look
    python benchmarks/predict_scale.py --parts accuracy         # int8 vs fp32 on the PBC test split only

Parts (``--parts``):

``accuracy``  fp32 and int8 on the test split of ``--split`` (a ``bloodcell split`` manifest):
              accuracy, macro-F1 and argmax agreement, through ``bloodcell predict`` itself.
``ceiling``   the model alone: onnxruntime on ready-made batches of 64 prepared PBC cells
              (no decoding, no output), fp32 and int8, the session's default threads.
``scale``     ``bloodcell predict`` end to end (a fresh process: start-up, model load, decoding,
              inference, writing CSV or Parquet) on 1k, 10k and 100k images. The larger archives
              repeat the PBC files under new names: one copy of PBC in a temporary folder, hard
              links to it in folders of 1,000 (the local engine walks the folder) and a manifest
              listing them (the Ray engine reads it). Peak memory: the process's own peak RSS
              (local), the sampled peak of the summed RSS of the process and everything it
              started (Ray: driver, raylet, workers).

Figures on a shared machine are noisy: compare the ratios of one run, measured one after the other.
Results go to ``benchmarks/results/predict_scale.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from inference import images_for, rate  # noqa: E402

MODEL = ROOT / "src" / "bloodcell" / "default_model"
FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}


def pbc_files() -> list[Path]:
    from bloodcell.core.settings import data_root

    root = data_root() or Path("../shared/data/pbc")
    root = root if root.is_absolute() else ROOT / root
    return sorted(p for p in root.glob("*/*.jpg") if not p.name.startswith("."))


def make_archive(n: int, work: Path, pool: list[Path]) -> tuple[Path, Path]:
    """A folder of ``n`` images (hard links to ``pool``, 1,000 per sub-folder) and a manifest listing them."""
    folder, manifest = work / f"archive_{n}", work / f"archive_{n}.csv"
    if not folder.exists():
        for i in range(n):
            sub = folder / f"part_{i // 1000:04d}"
            if i % 1000 == 0:
                sub.mkdir(parents=True)
            os.link(pool[i % len(pool)], sub / f"img_{i:07d}.jpg")
        with open(manifest, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path"])
            for sub in sorted(folder.iterdir()):
                w.writerows([str(p)] for p in sorted(sub.iterdir()))
    return folder, manifest


def copy_pool(files: list[Path], work: Path) -> list[Path]:
    """One private copy of the dataset, so hard links never touch the shared files."""
    pool = work / "pool"
    if not pool.exists():
        pool.mkdir(parents=True)
        for i, f in enumerate(files):
            shutil.copyfile(f, pool / f"{i:05d}.jpg")
    return sorted(pool.iterdir())


def tree_rss_mb(pid: int) -> float:
    """Summed RSS of ``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            status = Path(f"/proc/{d}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        ppid = int(fields.get("PPid", "0").strip() or 0)
        children.setdefault(ppid, []).append(int(d))
        rss[int(d)] = int(fields.get("VmRSS", "0 kB").split()[0]) if "VmRSS" in fields else 0
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total / 1024


#: Runs the command in a child of this small process and prints that child's peak RSS: a child forked
#: straight from the benchmark would inherit the benchmark's own (larger) RSS as its starting peak.
LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(f"peak_rss_kb {usage.ru_maxrss}", file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_predict(args: list[str], env: dict) -> dict:
    """Run ``python -m bloodcell predict ARGS``: wall time, its peak RSS (from the kernel when it exits) and
    the sampled peak (every 0.5 s) of the summed RSS of it and every process it started."""
    cmd = [sys.executable, "-c", LAUNCHER, sys.executable, "-m", "bloodcell", "predict", *args]
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        tree_peak = 0.0
        while proc.poll() is None:
            tree_peak = max(tree_peak, tree_rss_mb(proc.pid))
            time.sleep(0.5)
        seconds = time.perf_counter() - t0
        err.seek(0)
        text = err.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[3:])} failed ({proc.returncode}):\n{text[-2000:]}")
    summary = [line for line in text.splitlines() if line.startswith("bloodcell predict:")][-1:]
    peak = [int(line.split()[1]) for line in text.splitlines() if line.startswith("peak_rss_kb ")]
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(peak[-1] / 1024, 1) if peak else None,
            "tree_peak_rss_mb": round(tree_peak, 1), "summary": summary[0] if summary else ""}


def ceiling(seconds: float, n: int = 256) -> dict:
    """onnxruntime alone on ready-made batches of 64 prepared cells."""
    from bloodcell.core.preprocess import PreprocessConfig
    from bloodcell.prediction.onnx_backend import OnnxModel

    pre = PreprocessConfig.from_dict(json.loads((MODEL / "model.json").read_text())["preprocess"])
    x, _ = images_for(pre, n)
    out = {}
    for precision, name in FILES.items():
        model = OnnxModel(MODEL / name)
        out[precision] = round(rate(lambda b, m=model: m.run(b, 64), x, 64, seconds), 1)
        del model
    return out


def _labels(path: Path) -> tuple[list[str], list[str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["true_label"] for r in rows], [r["label"] for r in rows]


def _macro_f1(truth: list[str], pred: list[str]) -> float:
    f1 = []
    for c in sorted(set(truth)):
        tp = sum(t == c and p == c for t, p in zip(truth, pred))
        n_true, n_pred = truth.count(c), pred.count(c)
        f1.append(2 * tp / (n_true + n_pred) if n_true + n_pred else 0.0)
    return float(np.mean(f1))


def accuracy(split: Path, work: Path, env: dict) -> dict:
    """fp32 vs int8 on the test rows of ``split``, through ``bloodcell predict``."""
    test = work / "test_split.csv"
    with open(split, newline="") as f, open(test, "w", newline="") as g:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
        w = csv.writer(g)
        w.writerow(["path", "label"])
        w.writerows([str((split.parent / r["path"]).resolve()), r["label"]] for r in rows)
    out, preds = {"images": len(rows)}, {}
    for precision in FILES:
        result = work / f"test_{precision}.csv"
        out[f"run_{precision}"] = run_predict([str(test), "-f", "csv", "-o", str(result), "--precision", precision], env)
        truth, preds[precision] = _labels(result)
        out[precision] = {"accuracy": round(100 * float(np.mean([t == p for t, p in zip(truth, preds[precision])])), 3),
                          "macro_f1": round(100 * _macro_f1(truth, preds[precision]), 3)}
    out["agreement"] = round(100 * float(np.mean([a == b for a, b in zip(preds["fp32"], preds["int8"])])), 3)
    out["accuracy_change_points"] = round(out["int8"]["accuracy"] - out["fp32"]["accuracy"], 3)
    out["macro_f1_change_points"] = round(out["int8"]["macro_f1"] - out["fp32"]["macro_f1"], 3)
    out["int8_default_ok"] = bool(abs(out["accuracy_change_points"]) < 0.05 and abs(out["macro_f1_change_points"]) < 0.05
                                  and out["agreement"] >= 99.9)
    return out


def scale(sizes, engines, precisions, work: Path, env: dict, ray_workers: int, big: list[str] | None = None,
          done=print) -> None:
    """End-to-end runs; sizes over 10,000 only for the ``engine-precision`` pairs in ``big`` (default: all)."""
    pool = copy_pool(pbc_files(), work)
    for n in sizes:
        folder, manifest = make_archive(n, work, pool)
        for engine in engines:
            for precision in precisions:
                if n > 10_000 and big is not None and f"{engine}-{precision}" not in big:
                    continue
                out = work / f"out_{engine}_{precision}_{n}"
                if engine == "local":
                    args = [str(folder), "-f", "csv", "-o", str(out) + ".csv"]
                else:
                    args = [str(manifest), "--engine", "ray", "-f", "parquet", "-o", str(out), "--workers", str(ray_workers)]
                r = run_predict(args + ["--precision", precision], env)
                r.update(images=n, engine=engine, precision=precision, images_per_s=round(n / r["seconds"], 1))
                print(json.dumps(r), flush=True)
                done(r)
                shutil.rmtree(out, ignore_errors=True)
                for leftover in work.glob(out.name + ".*"):
                    leftover.unlink()
        shutil.rmtree(folder, ignore_errors=True)


def _ratios(report: dict) -> dict:
    """Goals: end to end / model-only fp32 ceiling, and peak RSS at the largest size / the smallest."""
    ceil = (report.get("ceiling") or {}).get("fp32")
    out = {}
    for r in report.get("scale", []):
        key = f"{r['engine']}-{r['precision']}"
        if ceil:
            out.setdefault(key, {})[f"speed_vs_fp32_ceiling_{r['images']}"] = round(r["images_per_s"] / ceil, 2)
    for key in out:
        runs = sorted((r for r in report["scale"] if f"{r['engine']}-{r['precision']}" == key), key=lambda r: r["images"])
        mem = "peak_rss_mb" if key.startswith("local") else "tree_peak_rss_mb"
        if len(runs) > 1:
            out[key]["rss_growth_largest_vs_smallest"] = round(runs[-1][mem] / runs[0][mem], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["accuracy", "ceiling", "scale"], choices=["accuracy", "ceiling", "scale"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[1000, 10_000, 100_000])
    ap.add_argument("--engines", nargs="+", default=["local", "ray"], choices=["local", "ray"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "int8"], choices=list(FILES))
    ap.add_argument("--split", type=Path, default=ROOT / "runs" / "pbc_split.csv")
    ap.add_argument("--seconds", type=float, default=20.0, help="measuring time per model-only figure")
    ap.add_argument("--ray-workers", type=int, default=2)
    ap.add_argument("--big-configs", nargs="+", default=None, metavar="ENGINE-PRECISION",
                    help="run sizes over 10,000 only for these (e.g. local-int8), when time is short")
    ap.add_argument("--work", type=Path, default=None, help="folder for the archives (default: a temporary one)")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    work = args.work or Path(tempfile.mkdtemp(prefix="bloodcell-scale-"))
    report = {"machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                          "load_average_at_start": os.getloadavg()},
              "model": str(MODEL)}
    out = ROOT / "benchmarks" / "results" / "predict_scale.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        report["ratios"] = _ratios(report)
        report["machine"]["load_average_at_end"] = os.getloadavg()
        out.write_text(json.dumps(report, indent=2) + "\n")

    try:
        if "accuracy" in args.parts:
            report["accuracy"] = accuracy(args.split, work, env)
            print(json.dumps(report["accuracy"]), flush=True)
            save()
        if "ceiling" in args.parts:
            report["ceiling"] = ceiling(args.seconds)
            print(json.dumps({"ceiling_images_per_s": report["ceiling"]}), flush=True)
            save()
        if "scale" in args.parts:
            report["scale"] = []
            scale(args.sizes, args.engines, args.precisions, work, env, args.ray_workers, args.big_configs,
                  lambda r: (report["scale"].append(r), save()))
            report["ceiling_after"] = ceiling(args.seconds) if "ceiling" in args.parts else None
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    save()
    print(json.dumps(report["ratios"], indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
