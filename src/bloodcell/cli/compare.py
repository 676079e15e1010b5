"""``bloodcell compare``: one table and one bar plot over several models."""

from __future__ import annotations

HELP = "Compare models (accuracy, macro-F1, ECE, parameters, images/s) in a Markdown table and a bar plot."


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="model folders (evaluated on --data) or evaluation results (metrics.json or a report folder)")
    parser.add_argument("--data", help="labelled dataset to evaluate model folders on (e.g. the split manifest)")
    parser.add_argument("-o", "--output", help="folder for compare.md, compare.json and compare.png")
    from bloodcell.cli.evaluate import add_common

    add_common(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from pathlib import Path

    from bloodcell.cli.evaluate import device_of
    from bloodcell.core.files import atomic_write_bytes, atomic_write_json, check_writable_folder
    from bloodcell.evaluation import plots
    from bloodcell.evaluation.compare import compare, markdown_table

    folder = check_writable_folder(args.output) if args.output else None
    rows = compare(args.runs, args.data, args.split, tta=args.tta, batch_size=args.batch_size,
                   device=device_of(args), n_boot=args.bootstrap, progress=not args.quiet)
    table = markdown_table(rows)
    print(table)
    if folder is not None:
        atomic_write_bytes(Path(folder) / "compare.md", (table + "\n").encode())
        atomic_write_json(Path(folder) / "compare.json", rows)
        atomic_write_bytes(Path(folder) / "compare.png", plots.to_png(plots.compare_bars(rows)))
        print(f"Written to {folder}/compare.md, compare.json and compare.png")
    return 0
