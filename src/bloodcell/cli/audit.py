"""``bloodcell audit DATA``: account for every file and report the dataset's flaws."""

from __future__ import annotations

from bloodcell.data.audit import audit
from bloodcell.data.audit.checks import AuditSettings
from bloodcell.data.audit.summary import summary_text

HELP = "Audit a dataset: counts, sizes, unreadable files, duplicates, label conflicts, outliers, plots."


def add_arguments(parser) -> None:
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
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: BLOODCELL_WORKERS or CPUs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    result = audit(args.data, out=args.out, near_threshold=args.near_threshold, hash_size=args.hash_size,
                   outlier_threshold=args.outlier_threshold, outlier_neighbors=args.outlier_neighbors,
                   skip_unknown=args.skip_unknown, no_plots=args.no_plots, workers=args.workers, quiet=args.quiet)
    print(summary_text(result))
    plots = [p.name for k, p in result.written.items() if k != "audit"]
    print(f"Wrote {result.written['audit']}" + (f" and {len(plots)} plots ({', '.join(plots)})" if plots else ""))
    return 0
