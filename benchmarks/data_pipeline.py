"""Data-pipeline benchmark: audit time on a dataset and preprocessing-cache build rate.

Usage::

    python benchmarks/data_pipeline.py --data ../shared/data/pbc [--size 128] [--workers N] [--limit N]

Runs in a temporary cache folder so every "cold" figure starts from nothing
(file hashes, audit measurements and decoded images), then repeats each step
warm. Prints the figures and writes them to ``benchmarks/results/data_pipeline.json``.
Goals on a 2-core machine: full audit under 60 s, cache build at 800 images/s or more at 128 px.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
#: The development copy of the PBC release, used when BLOODCELL_DATA is unset.
DEV_DATA = REPO.parent / "shared" / "data" / "pbc"


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn):
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, cpu_seconds() - c0


def main(argv=None) -> int:
    from bloodcell.core import settings

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(settings.data_root() or DEV_DATA),
                   help=f"dataset (default BLOODCELL_DATA, else {DEV_DATA})")
    p.add_argument("--size", type=int, default=128, help="cache image size (default 128)")
    p.add_argument("--workers", type=int, default=None, help="processes (default BLOODCELL_WORKERS or CPUs)")
    p.add_argument("--limit", type=int, default=None,
                   help="measure a seeded random slice of this many images (default: the whole dataset)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "data_pipeline.json"))
    args = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bloodcell-bench-"))
    os.environ["BLOODCELL_CACHE"] = str(tmp / "cache")
    try:
        from bloodcell.core.preprocess import PreprocessConfig
        from bloodcell.data import load_arrays, open_dataset
        from bloodcell.data.audit.checks import audit_dataset
        from bloodcell.data.audit.plots import write_plots

        workers = args.workers or settings.default_workers()
        load_before = os.getloadavg()
        def opened():
            d = open_dataset(args.data)
            if args.limit and args.limit < len(d):
                d = d.select(sorted(random.Random(0).sample(range(len(d)), args.limit)))
            return d

        ds, t_open, _ = timed(opened)
        n = len(ds)

        def full_audit():
            r = audit_dataset(opened(), workers=workers, progress=False)
            r.to_dict()
            write_plots(r, tmp / "audit")
            return r

        audit, t_audit_cold, c_audit_cold = timed(full_audit)
        _, t_audit_warm, c_audit_warm = timed(full_audit)
        cfg = PreprocessConfig(image_size=args.size)
        arrays, t_cache_cold, c_cache_cold = timed(lambda: load_arrays(ds, cfg, workers=workers, progress=False))
        _, t_cache_warm, c_cache_warm = timed(lambda: load_arrays(ds, cfg, workers=workers, progress=False))
        _, t_cache_reopen, _ = timed(lambda: load_arrays(opened(), cfg, workers=workers, progress=False))
        load_after = os.getloadavg()
        d = audit.to_dict()
        res = {
            "data": str(Path(args.data).resolve()),
            "images": n,
            "files_on_disk": d["files"]["on_disk"],
            "machine": {"cpus": os.cpu_count(), "workers": workers, "python": platform.python_version(),
                        "load_average_before": [round(x, 2) for x in load_before],
                        "load_average_after": [round(x, 2) for x in load_after]},
            "open_seconds": round(t_open, 2),
            "audit": {
                "cold_seconds": round(t_audit_cold, 2), "cold_cpu_seconds": round(c_audit_cold, 2),
                "cold_cpu_bound_seconds": round(c_audit_cold / workers, 2),
                "warm_seconds": round(t_audit_warm, 2), "warm_cpu_seconds": round(c_audit_warm, 2),
                "goal_seconds": 60, "meets_goal": t_audit_cold < 60,
                "unreadable": d["files"]["unreadable"], "skipped": d["files"]["skipped"],
                "exact_duplicate_groups": len(d["exact_duplicates"]),
                "near_duplicate_groups": len(d["near_duplicates"]["groups"]),
                "label_conflicts": len(d["label_conflicts"]),
                "outliers_flagged": len(d["outliers"]["flagged"]),
                "flagged_images": d["flagged"]["images"],
            },
            "cache": {
                "image_size": args.size,
                "cold_seconds": round(t_cache_cold, 2), "cold_images_per_second": round(len(arrays) / t_cache_cold, 1),
                "cold_cpu_ms_per_image": round(1000 * c_cache_cold / len(arrays), 3),
                "cpu_bound_images_per_second": round(workers * len(arrays) / c_cache_cold, 1),
                "warm_seconds": round(t_cache_warm, 2), "warm_images_per_second": round(len(arrays) / t_cache_warm, 1),
                "warm_reopen_seconds": round(t_cache_reopen, 2),
                "goal_images_per_second": 800, "meets_goal": len(arrays) / t_cache_cold >= 800,
                "bytes": int(arrays.images.nbytes),
            },
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    a, c = res["audit"], res["cache"]
    print(f"dataset: {res['data']} ({n:,} images, {res['files_on_disk']} files), {workers} workers on "
          f"{res['machine']['cpus']} CPUs, load average {load_before[0]:.1f} -> {load_after[0]:.1f}")
    print(f"audit cold: {a['cold_seconds']:.1f} s wall ({a['cold_cpu_seconds']:.1f} CPU s, about "
          f"{a['cold_cpu_bound_seconds']:.0f} s on {workers} idle cores), warm: "
          f"{a['warm_seconds']:.1f} s  [goal < 60 s: {'met' if a['meets_goal'] else 'NOT met'}]")
    print(f"  unreadable {a['unreadable']}, skipped {a['skipped']}, exact-duplicate groups "
          f"{a['exact_duplicate_groups']}, near-duplicate groups {a['near_duplicate_groups']}, label conflicts "
          f"{a['label_conflicts']}, outliers {a['outliers_flagged']}")
    print(f"cache at {c['image_size']} px cold: {c['cold_seconds']:.1f} s = {c['cold_images_per_second']:,.0f} images/s "
          f"({c['cold_cpu_ms_per_image']:.2f} CPU ms/image, about {c['cpu_bound_images_per_second']:,.0f} images/s on "
          f"{workers} idle cores)  [goal >= 800/s: {'met' if c['meets_goal'] else 'NOT met'}]")
    print(f"cache warm: {c['warm_seconds']:.2f} s = {c['warm_images_per_second']:,.0f} images/s "
          f"(re-opening the folder too: {c['warm_reopen_seconds']:.2f} s)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
