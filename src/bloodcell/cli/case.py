"""``bloodcell case``: list the cases of a review store, export one, or check the store."""

from __future__ import annotations

HELP = "List the cases of a lab review store (bloodcell serve --cases), export one (CSV, JSON, report, dataset) or check it."


def add_arguments(parser) -> None:
    from bloodcell.cases import FORMATS  # deferred: `bloodcell --help` must not load the case store stack

    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("list", help="the cases, most recently changed first", description="List the cases.")
    p.add_argument("data_dir", metavar="DATA_DIR", help="the case store folder (as given to bloodcell serve --cases)")
    p = sub.add_parser("export", help="write one case as CSV, JSON, a printable report or a dataset ZIP",
                       description="Export one case.")
    p.add_argument("data_dir", metavar="DATA_DIR", help="the case store folder")
    p.add_argument("case_id", metavar="CASE_ID", type=int, help="the case's id (see `bloodcell case list`)")
    p.add_argument("-f", "--format", choices=FORMATS, default="report",
                   help="csv: one row per cell; json: case, cells, differential, events; report: printable HTML; "
                        "dataset: ZIP of the reviewed cells as class folders + manifest.csv (default: report)")
    p.add_argument("-o", "--out", default=None, metavar="PATH",
                   help="file to write (default: case-<id>.csv/.json/.html/.zip in the working folder)")
    p = sub.add_parser("check", help="check the database and that every cell's image is there and intact",
                       description="Check the store.")
    p.add_argument("data_dir", metavar="DATA_DIR", help="the case store folder")


def _list(cases: list[dict]) -> None:
    if not cases:
        print("No cases.")
        return
    print(f"{'id':>5}  {'accession':<20} {'cells':>11} {'reviewed':>8}  updated")
    for c in cases:
        print(f"{c['id']:>5}  {c['accession'][:20]:<20} {c['n_cells']:>5}/{c['target']:<5} {c['n_reviewed']:>8}  "
              f"{c['updated']}")


def run(args) -> int:
    from bloodcell.cases import case  # deferred: `bloodcell --help` must not load the case store stack

    if args.command == "list":
        _list(case("list", args.data_dir))
    elif args.command == "check":
        problems = case("check", args.data_dir)
        for p in problems:
            print(f"bloodcell case check: {p}")
        print(f"{args.data_dir}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        return 1 if problems else 0
    else:
        out = case("export", args.data_dir, args.case_id, format=args.format, out=args.out)
        print(f"bloodcell case: wrote case {args.case_id} ({args.format}) -> {out}")
    return 0
