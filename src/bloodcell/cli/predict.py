"""``bloodcell predict``: classify images with the default or a named model."""

from __future__ import annotations

import sys

from bloodcell.core.errors import DataError
from bloodcell.fields import command as fields
from bloodcell.prediction.classifier import predict

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
    fields.add_arguments(parser)


def _print_problems(problems) -> None:
    for q in problems:
        print(f"bloodcell predict: skipped {q.message}", file=sys.stderr)


def run(args) -> int:
    if fields.wants_fields(args):
        return fields.run(args)
    try:
        result = predict(args.paths, args.model, format=args.format, output=args.output, differential=args.differential,
                         backend=args.backend, batch_size=args.batch_size, tta=args.tta,
                         abstain_threshold=args.abstain_threshold, ood_threshold=args.ood_threshold,
                         threads=args.threads, progress=True)
    except DataError as e:
        _print_problems(getattr(e, "problems", ()))
        raise
    _print_problems(result.problems)
    fields.warn(args.paths)
    if result.output is None:
        sys.stdout.write(result.text)
        return 0
    summary = f"{len(result.predictions)} image(s) classified"
    if result.problems:
        summary += f", {len(result.problems)} skipped"
    print(f"bloodcell predict: {summary} -> {args.output}", file=sys.stderr)
    return 0
