"""``bloodcell predict``: classify images with the default or a named model."""

from __future__ import annotations

import sys
from pathlib import Path

from bloodcell.core.errors import DataError
from bloodcell.fields import command as fields
from bloodcell.fields.api import predict
from bloodcell.prediction.archive import FORMATS as STREAMED_FORMATS
from bloodcell.prediction.archive import ArchiveResult
from bloodcell.prediction.outputs import FORMATS as OUTPUT_FORMATS

#: What -f takes: the formats printed whole, then those only streamed into a file.
FORMATS = (*OUTPUT_FORMATS, *(f for f in STREAMED_FORMATS if f not in OUTPUT_FORMATS))
HELP = "Classify images (files, folders, globs, .npz): class, probabilities, flags and a differential count."


def add_arguments(parser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image files, folders (searched recursively), quoted globs such as 'smear/*.jpg', "
                             ".npz arrays or CSV manifests")
    parser.add_argument("-m", "--model", default=None,
                        help="model folder or exported .onnx file (default: the bundled model, or $BLOODCELL_MODEL)")
    parser.add_argument("-f", "--format", choices=FORMATS, default=None,
                        help="output format (default: from the -o file's suffix, .csv .json .jsonl .parquet, else "
                             "table); with -o, csv/json/jsonl/parquet are written row by row and can be resumed; "
                             "jsonl and parquet (a folder of shards) need -o")
    parser.add_argument("-o", "--output", default=None, help="write to this file instead of standard output")
    parser.add_argument("--resume", action="store_true",
                        help="continue the unfinished run whose rows are in OUTPUT.partial (--engine ray: whose finished "
                             "parts are in OUTPUT.ray-partial/) (same command, same model)")
    parser.add_argument("--precision", choices=("fp32", "int8"), default=None,
                        help="model precision on onnxruntime: int8 runs the model folder's model.int8.onnx, about twice "
                             "as fast, slightly less accurate (default: fp32)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local threads, or a Ray cluster (--engine ray: a CSV/Parquet list of image paths in, "
                             "Parquet out; needs bloodcell[ray])")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding threads (local) or model actors (ray) (default: the usable CPUs)")
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


def _warn_unfamiliar(diff, model: dict | None) -> None:
    from bloodcell.prediction.differential import run_warning

    warning = run_warning(diff, model)
    if warning:
        print(f"bloodcell predict: warning: {warning}", file=sys.stderr)


def _summary(result, args) -> str:
    model = result.model
    line = f"{result.images} image(s) classified"
    if result.images != result.new:
        line += f" ({result.images - result.new} from the resumed run)"
    if result.problems:
        line += f", {len(result.problems)} skipped"
    rate = result.new / result.seconds if result.seconds > 0 else 0.0
    line += f"; {model['precision']} on {model['backend']}, {rate:.0f} images/s -> {result.output}"
    return line + (f" (model, differential and skipped inputs in {result.extra})" if result.extra else "")


def _print_archive(result, args) -> int:
    _print_problems(result.problems)
    print(f"bloodcell predict: {_summary(result, args)}", file=sys.stderr)
    _warn_unfamiliar(result.differential, result.model)
    return 0


def _format_of(output) -> str:
    """The format an output file's suffix names (``results.csv`` -> csv), else the table."""
    suffix = Path(output).suffix.lower().lstrip(".") if output else ""
    return suffix if suffix in FORMATS else "table"


def run(args) -> int:
    if args.format is None:
        args.format = _format_of(args.output)
    whole = fields.wants_fields(args)
    try:
        result = predict(args.paths, args.model, fields=whole, overlay=args.overlay, tile_overlap=args.tile_overlap,
                         format=args.format, output=args.output, differential=args.differential,
                         resume=args.resume, engine=args.engine, workers=args.workers, backend=args.backend,
                         batch_size=args.batch_size, tta=args.tta, abstain_threshold=args.abstain_threshold,
                         ood_threshold=args.ood_threshold, threads=args.threads, precision=args.precision,
                         progress=True)
    except DataError as e:
        _print_problems(getattr(e, "problems", ()))
        raise
    if whole:
        return fields.report(result, args)
    if isinstance(result, ArchiveResult):
        return _print_archive(result, args)
    _print_problems(result.problems)
    fields.warn(args.paths)
    _warn_unfamiliar(result.differential, result.model)
    if result.output is None:
        sys.stdout.write(result.text)
        return 0
    summary = f"{len(result.predictions)} image(s) classified"
    if result.problems:
        summary += f", {len(result.problems)} skipped"
    model = result.model or {}
    summary += f"; {model.get('precision', 'fp32')} on {model.get('backend', 'the model')}"
    print(f"bloodcell predict: {summary} -> {args.output}", file=sys.stderr)
    return 0
