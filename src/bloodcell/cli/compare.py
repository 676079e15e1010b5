"""``bloodcell compare``: one table and one bar plot over several models."""

from __future__ import annotations

from bloodcell.cli.evaluate import add_common

HELP = "Compare models (accuracy, macro-F1, ECE, parameters, images/s) in a Markdown table and a bar plot."


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="model folders (evaluated on --data) or evaluation results (metrics.json or a report folder)")
    parser.add_argument("--data", help="labelled dataset to evaluate model folders on (e.g. the split manifest)")
    parser.add_argument("-o", "--output", help="folder for compare.md, compare.json and compare.png")
    add_common(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    # Deferred: the parser imports every verb's module, and only this verb should load PyTorch.
    from bloodcell.evaluation import compare

    result = compare(args.runs, data=args.data, split=args.split, tta=args.tta, batch_size=args.batch_size,
                     device=args.device, bootstrap=args.bootstrap, output=args.output, quiet=args.quiet)
    print(result.table)
    if result.folder is not None:
        print(f"Written to {result.folder}/compare.md, compare.json and compare.png")
    return 0
