"""``bloodcell evaluate``: metrics of a model on a labelled dataset."""

from __future__ import annotations

HELP = "Measure a model on a labelled dataset: accuracy with 95% CIs, per-class metrics, calibration, abstention."


def add_common(parser, default_split: str = "test") -> None:
    """Arguments shared by evaluate, report and compare."""
    parser.add_argument("--split", default=default_split,
                        help=f"split of a manifest or MedMNIST file to use (default {default_split}); "
                        "datasets without splits are used whole")
    parser.add_argument("--tta", action="store_true",
                        help="also predict with test-time augmentation (8 flips/rotations) and report its gain "
                        "and cost")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if available)")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples for the 95%% confidence intervals (default 1000; 0 skips)")


def add_arguments(parser) -> None:
    parser.add_argument("model", help="model folder (single model or ensemble) as written by `bloodcell train`")
    parser.add_argument("data", help="labelled dataset: a manifest CSV (e.g. from `bloodcell split`), a class-folder "
                        "tree or an .npz")
    add_common(parser)
    parser.add_argument("-o", "--output", help="write the full results as JSON to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    # Deferred: the parser imports every verb's module, and only this verb should load PyTorch.
    from bloodcell.evaluation import evaluate
    from bloodcell.evaluation.summary_text import summary_text

    ev = evaluate(args.model, args.data, split=args.split, tta=args.tta, batch_size=args.batch_size,
                  device=args.device, bootstrap=args.bootstrap, output=args.output, quiet=args.quiet)
    print(summary_text(ev.summary))
    if args.output:
        print(f"Results written to {args.output}")
    return 0
