"""``bloodcell predict``: classify images with the default or a named model."""

from __future__ import annotations

HELP = "Classify images (files, folders, globs, .npz): class, probabilities, flags and a differential count."


def add_arguments(parser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image files, folders (searched recursively), quoted globs such as 'smear/*.jpg', "
                             ".npz arrays or CSV manifests")
    parser.add_argument("-m", "--model", default=None,
                        help="model folder or exported .onnx file (default: the bundled model, or $BLOODCELL_MODEL)")
    parser.add_argument("-f", "--format", choices=("table", "csv", "json"), default="table",
                        help="output format (default: table)")
    parser.add_argument("-o", "--output", default=None, help="write to this file instead of standard output")
    parser.add_argument("--differential", choices=("auto", "only", "no"), default="auto",
                        help="differential count: auto = after the per-image table, or inside the JSON, when "
                             "there are two or more images; only = just the differential (as a table, CSV or JSON); "
                             "no = never")
    parser.add_argument("--backend", choices=("auto", "onnx", "torch"), default="auto",
                        help="inference engine (default: onnxruntime when the model has an up-to-date model.onnx)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    parser.add_argument("--tta", action="store_true", help="average over the eight flips/rotations (PyTorch backend)")
    parser.add_argument("--abstain-threshold", type=float, default=None,
                        help="flag as uncertain below this top probability (default: the model's calibrated value, "
                             "else 0.5)")
    parser.add_argument("--ood-threshold", type=float, default=None,
                        help="flag as not a blood cell above this out-of-distribution score (default: the model's)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: the usable CPUs)")


def run(args) -> int:
    import sys
    from pathlib import Path

    from bloodcell.core.errors import DataError
    from bloodcell.prediction import outputs
    from bloodcell.prediction.classifier import Classifier

    clf = Classifier(args.model, backend=args.backend, batch_size=args.batch_size, tta=args.tta,
                     threads=args.threads, abstain_threshold=args.abstain_threshold, ood_threshold=args.ood_threshold)
    result = clf.predict(args.paths, progress=True)
    for q in result.problems:
        print(f"bloodcell predict: skipped {q.message}", file=sys.stderr)
    preds = result.predictions
    if not preds:
        raise DataError(
            f"no image could be classified ({len(result.problems)} input(s) skipped, reasons above). "
            "Pass image files, folders of images, globs or .npz files."
        )
    show_diff = args.differential == "only" or (args.differential == "auto" and len(preds) >= 2)
    diff = clf.differential(preds) if show_diff else None
    names = clf.class_names
    if args.format == "json":
        text = outputs.as_json(clf.describe(), [] if args.differential == "only" else preds, result.problems, diff)
    elif args.format == "csv":
        text = outputs.differential_csv(diff) if args.differential == "only" else outputs.predictions_csv(preds, names)
    else:
        parts = [] if args.differential == "only" else [outputs.table(preds, names)]
        if diff is not None:
            parts.append(outputs.differential_table(diff))
        if clf.abstain_source == "default" and args.differential != "only":
            parts.append(f"note: the model has no calibrated abstention threshold; 'uncertain' means top probability < {clf.abstain_threshold}.")
        if not clf.has_ood and args.differential != "only":
            parts.append("note: the model carries no out-of-distribution statistics, so no image is checked for being a blood cell.")
        text = "\n\n".join(parts)
    if not text.endswith("\n"):
        text += "\n"
    if args.output:
        outputs.write_text(Path(args.output), text)
        summary = f"{len(preds)} image(s) classified"
        if result.problems:
            summary += f", {len(result.problems)} skipped"
        print(f"bloodcell predict: {summary} -> {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
