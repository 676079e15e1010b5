"""``bloodcell report``: an HTML report with figures of a model on a labelled dataset."""

from __future__ import annotations

from bloodcell.cli.evaluate import add_common

HELP = "Write a self-contained HTML report (figures, calibration, abstention, mistakes, Grad-CAM) of a model on a dataset."


def add_arguments(parser) -> None:
    parser.add_argument("model", help="model folder (single model or ensemble)")
    parser.add_argument("data", help="labelled dataset: a manifest CSV, a class-folder tree or an .npz")
    parser.add_argument("-o", "--output", required=True, help="report folder (created): report.html, PNG figures, metrics.json")
    add_common(parser)
    parser.add_argument("--mistakes", type=int, default=24, help="most confident mistakes to show (default 24)")
    parser.add_argument("--gradcam-per-class", type=int, default=3, help="Grad-CAM examples per class (default 3)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--fields", metavar="BOXES.csv", default=None,
                        help="also report finding and counting cells in whole smear fields against this boxes file")


def run(args) -> int:
    # Deferred: the parser imports every verb's module, and only this verb should load PyTorch.
    from bloodcell.evaluation import report
    from bloodcell.evaluation.summary_text import summary_text

    result = report(args.model, args.data, output=args.output, split=args.split, tta=args.tta,
                    batch_size=args.batch_size, device=args.device, bootstrap=args.bootstrap,
                    mistakes=args.mistakes, gradcam_per_class=args.gradcam_per_class, quiet=args.quiet,
                    fields=args.fields)
    print(summary_text(result.evaluation.summary))
    print(f"Report written to {result.html} (figures and metrics.json beside it)")
    return 0
