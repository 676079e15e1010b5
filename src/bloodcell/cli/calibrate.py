"""``bloodcell calibrate``: fit temperature scaling and an abstention threshold on validation data."""

from __future__ import annotations

from bloodcell.core.model_folder import META

HELP = ("Fit temperature scaling and a 'refer to a hematologist' threshold on the validation split; "
        f"store them in {META}.")


def add_arguments(parser) -> None:
    parser.add_argument("model", help=f"model folder (single model or ensemble); its {META} is updated in place")
    parser.add_argument("data", help="labelled dataset with a validation split (e.g. the manifest from `bloodcell split`)")
    parser.add_argument("--split", default="val", help="split to fit on (default val); never the test split you report")
    parser.add_argument("--target-accuracy", type=float, default=0.995,
                        help="accuracy the accepted images must reach on that split (default 0.995)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--tta", action="store_true",
                        help="also fit a temperature and threshold for test-time-augmented predictions (8x the time)")
    parser.add_argument("--dry-run", action="store_true", help=f"print the fit without writing {META}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    # Deferred: the parser imports every verb's module, and only this verb should load PyTorch.
    from bloodcell.evaluation import calibrate
    from bloodcell.evaluation.summary_text import calibration_text

    result = calibrate(args.model, args.data, split=args.split, target_accuracy=args.target_accuracy,
                       batch_size=args.batch_size, device=args.device, tta=args.tta, dry_run=args.dry_run,
                       quiet=args.quiet)
    print(calibration_text(result, dry_run=args.dry_run))
    return 0
