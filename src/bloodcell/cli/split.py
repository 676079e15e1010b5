"""``bloodcell split DATA -o split.csv``: stratified, duplicate-aware train/val/test manifest."""

from __future__ import annotations

from bloodcell.data.audit.checks import AuditSettings
from bloodcell.data.split import counts_table, split

HELP = "Split a dataset into train/val/test (stratified, duplicate groups kept together) and write a CSV manifest."


def add_arguments(parser) -> None:
    d = AuditSettings()
    parser.add_argument("data", help="class-folder dataset or CSV manifest")
    parser.add_argument("-o", "--out", default="split.csv", help="manifest to write (default split.csv)")
    parser.add_argument("--val", type=float, default=0.1, help="validation fraction of each class (default 0.1)")
    parser.add_argument("--test", type=float, default=0.2, help="test fraction of each class (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the assignment (default 0)")
    parser.add_argument("--keep-flagged", action="store_true",
                        help="keep images the audit flags (label conflicts, outliers); unreadable ones are always left out")
    parser.add_argument("--near-threshold", type=int, default=d.near_threshold,
                        help=f"near-duplicate threshold in hash bits (default {d.near_threshold})")
    parser.add_argument("--outlier-threshold", type=float, default=d.outlier_threshold,
                        help=f"outlier score above which images are left out (default {d.outlier_threshold:g})")
    parser.add_argument("--skip-unknown", action="store_true", help="leave out folders that are not class names")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    result = split(args.data, out=args.out, val=args.val, test=args.test, seed=args.seed,
                   keep_flagged=args.keep_flagged, near_threshold=args.near_threshold,
                   outlier_threshold=args.outlier_threshold, skip_unknown=args.skip_unknown, workers=args.workers,
                   quiet=args.quiet)
    a, written, ds = result.audit, result.written, result.audit.dataset
    tr, va, te = result.fractions
    print(f"Split of {ds.source}: train/val/test = {tr:.0%}/{va:.0%}/{te:.0%} per class, seed {args.seed}; "
          f"{len(set(a.group_ids))} groups ({len(a.exact_groups)} exact-duplicate, {len(a.near_groups)} "
          "near-duplicate), none split across train/val/test")
    print(counts_table(result))
    reasons = result.excluded_reasons()
    if reasons:
        print("Excluded: " + ", ".join(f"{reasons[r]} {r}" for r in ("unreadable", "label-conflict", "outlier")
                                       if reasons[r])
              + f" (listed in {written['excluded']}; --keep-flagged keeps label conflicts and outliers)")
    if ds.problems:
        print(f"Skipped by the reader: {len(ds.problems)} item(s), e.g. {ds.problems[0].message}")
    print(f"Wrote {written['manifest']} and {written['info']}")
    return 0
