"""``bloodcell export``: ONNX export, or packaging a trained model as the bundled default."""

from __future__ import annotations

HELP = "Export a model to ONNX (optionally int8), or package it as the default model (--format default)."


def add_arguments(parser) -> None:
    from bloodcell.packaging.choices import CALIBRATION_IMAGES, FORMATS, MAX_MB, OPSET, PER_CLASS, QUANTIZATIONS

    parser.add_argument("model", metavar="MODEL", help="trained model folder (single model or ensemble)")
    parser.add_argument("--format", choices=FORMATS, default="onnx",
                        help="onnx: write an .onnx file; default: package MODEL as the bundled default model "
                             "(copy, out-of-distribution statistics, model card, model.onnx)")
    parser.add_argument("-o", "--output", default=None,
                        help="onnx: output file (default MODEL/model.onnx); default: output folder "
                             "(default: the package's bloodcell/default_model)")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default="none",
                        help="int8 quantization: dynamic (linear layers, no data), static (every layer, QDQ, "
                             "needs --calibration-data for --format onnx)")
    parser.add_argument("--calibration-data", default=None, metavar="DATA",
                        help="folder, .npz or manifest of real cells for static quantization "
                             "(up to --calibration-images used)")
    parser.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES,
                        help=f"images used for static calibration (default: {CALIBRATION_IMAGES})")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default: {OPSET})")
    parser.add_argument("--data", default=None,
                        help="--format default: the training data (best: its `bloodcell split` manifest) for the "
                             "out-of-distribution statistics")
    parser.add_argument("--card", default=None, help="--format default: model card sections as YAML or JSON")
    parser.add_argument("--metrics", default=None,
                        help="--format default: the model's test evaluation (`bloodcell evaluate -o METRICS.json`); "
                             "fills the card's metrics section")
    parser.add_argument("--half-weights", action="store_true",
                        help="store the weights as float16 (PyTorch and ONNX; ONNX still computes in float32)")
    parser.add_argument("--per-class", type=int, default=PER_CLASS,
                        help=f"--format default: training images per class for the out-of-distribution fit "
                             f"(default: {PER_CLASS})")
    parser.add_argument("--ood-augment", default=None, metavar="RECIPE",
                        help="--format default: the recipe whose augmentation draws the copies of the cells (other "
                             "labs' colour, stain, scale and optics) that the cell-vs-non-cell check is fitted on, so "
                             "other labs' cells are not flagged (default: the model's own training augmentation when it "
                             "imitates other labs, else robust_default)")
    parser.add_argument("--adapt-from", default=None, metavar="MODEL",
                        help="--format default: a calibrated model folder shipped inside the package for `bloodcell "
                             "adapt` to start from (the default model ships the ensemble its network was distilled "
                             "from); default: adapt starts from the packaged model itself")
    parser.add_argument("--max-mb", type=float, default=MAX_MB, help=f"--format default: size budget in MB (default: {MAX_MB:g})")


def run(args) -> int:
    from bloodcell.packaging.exporter import export  # deferred: it loads PyTorch, which --help must not

    export(args.model, format=args.format, output=args.output, quantize=args.quantize,
           calibration_data=args.calibration_data, calibration_images=args.calibration_images, opset=args.opset,
           data=args.data, card=args.card, metrics=args.metrics, half_weights=args.half_weights,
           per_class=args.per_class, max_mb=args.max_mb, ood_augment=args.ood_augment,
           adapt_from=args.adapt_from)
    return 0
