"""``bloodcell audit DATA``: account for every file and report the dataset's flaws."""

from __future__ import annotations

from pathlib import Path

HELP = "Audit a dataset: counts, sizes, unreadable files, duplicates, label conflicts, outliers, plots."


def add_arguments(parser) -> None:
    from bloodcell.data.audit.checks import AuditSettings

    d = AuditSettings()
    parser.add_argument("data", help="class-folder dataset, .npz file or CSV manifest")
    parser.add_argument("-o", "--out", default=None,
                        help="folder for audit.json and the plots (default: reports/audit_<dataset name>)")
    parser.add_argument("--near-threshold", type=int, default=d.near_threshold,
                        help=f"near-duplicate threshold in bits of the perceptual hash (default {d.near_threshold})")
    parser.add_argument("--hash-size", type=int, default=d.hash_size,
                        help=f"perceptual hash side; the hash has hash_size^2 bits (default {d.hash_size})")
    parser.add_argument("--outlier-threshold", type=float, default=d.outlier_threshold,
                        help=f"flag images with an outlier score above this (default {d.outlier_threshold:g})")
    parser.add_argument("--outlier-neighbors", type=int, default=d.outlier_neighbors,
                        help=f"k of the k-nearest-neighbour outlier score (default {d.outlier_neighbors})")
    parser.add_argument("--skip-unknown", action="store_true", help="leave out folders that are not class names")
    parser.add_argument("--no-plots", action="store_true", help="write audit.json only")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: BLOODCELL_WORKERS or CPUs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def default_out(data) -> Path:
    from pathlib import Path

    name = Path(data).resolve().name.replace(".", "_") or "data"
    return Path("reports") / f"audit_{name}"


def run(args) -> int:
    from pathlib import Path

    from bloodcell.core.files import atomic_write_json
    from bloodcell.data import open_dataset
    from bloodcell.data.audit.checks import AuditSettings, audit_dataset, summary_text

    settings = AuditSettings(hash_size=args.hash_size, near_threshold=args.near_threshold,
                             outlier_threshold=args.outlier_threshold, outlier_neighbors=args.outlier_neighbors)
    ds = open_dataset(args.data, skip_unknown=args.skip_unknown, skip_unknown_hint=True)
    result = audit_dataset(ds, settings, workers=args.workers, progress=not args.quiet)
    out = Path(args.out) if args.out else default_out(args.data)
    out.mkdir(parents=True, exist_ok=True)
    report = result.to_dict()
    plots = {}
    if not args.no_plots:
        from bloodcell.data.audit.plots import write_plots

        plots = write_plots(result, out)
    report["plots"] = {k: p.name for k, p in plots.items()}
    atomic_write_json(out / "audit.json", report)
    print(summary_text(result))
    print(f"Wrote {out / 'audit.json'}" + (f" and {len(plots)} plots ({', '.join(p.name for p in plots.values())})"
                                          if plots else ""))
    return 0
