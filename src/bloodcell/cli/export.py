"""``bloodcell export``: ONNX export, or packaging a trained model as the bundled default."""

from __future__ import annotations

from bloodcell.packaging.package import MAX_MB

HELP = "Export a model to ONNX (optionally int8), or package it as the default model (--format default)."


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL", help="trained model folder (single model or ensemble)")
    parser.add_argument("--format", choices=("onnx", "default"), default="onnx",
                        help="onnx: write an .onnx file; default: package MODEL as the bundled default model "
                             "(copy, out-of-distribution statistics, model card, model.onnx)")
    parser.add_argument("-o", "--output", default=None,
                        help="onnx: output file (default MODEL/model.onnx); default: output folder "
                             "(default: the package's bloodcell/default_model)")
    parser.add_argument("--quantize", choices=("none", "dynamic", "static"), default="none",
                        help="int8 quantization: dynamic (linear layers, no data), static (every layer, QDQ, "
                             "needs --calibration-data for --format onnx)")
    parser.add_argument("--calibration-data", default=None, metavar="DATA",
                        help="folder, .npz or manifest of real cells for static quantization (up to --calibration-images used)")
    parser.add_argument("--calibration-images", type=int, default=256, help="images used for static calibration (default: 256)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    parser.add_argument("--data", default=None,
                        help="--format default: the training data (best: its `bloodcell split` manifest) for the "
                             "out-of-distribution statistics")
    parser.add_argument("--card", default=None, help="--format default: model card sections as YAML or JSON")
    parser.add_argument("--metrics", default=None,
                        help="--format default: the model's test evaluation (`bloodcell evaluate -o METRICS.json`); "
                             "fills the card's metrics section")
    parser.add_argument("--half-weights", action="store_true", help="store the weights as float16 (PyTorch and ONNX; ONNX still computes in float32)")
    parser.add_argument("--per-class", type=int, default=300,
                        help="--format default: training images per class for the out-of-distribution fit (default: 300)")
    parser.add_argument("--max-mb", type=float, default=MAX_MB, help=f"--format default: size budget in MB (default: {MAX_MB:g})")


def _calibration_images(source, model, n: int, seed: int = 0):
    import numpy as np

    from bloodcell.core.model_folder import read_meta
    from bloodcell.core.preprocess import PreprocessConfig
    from bloodcell.data import load_arrays, open_dataset

    pre = PreprocessConfig.from_dict(read_meta(model)["preprocess"])
    ds = open_dataset(source)
    pick = np.sort(np.random.default_rng(seed).permutation(len(ds))[:n])
    return load_arrays(ds.select(pick.tolist()), pre, require_labels=False).images


def run(args) -> int:
    import sys

    from bloodcell.core.errors import ConfigError

    if args.format == "default":
        from bloodcell.packaging.package import package_default, read_card

        if not args.data:
            raise ConfigError("--format default needs --data: the training dataset or its split manifest.")
        card = read_card(args.card) if args.card else None
        evaluation = None
        if args.metrics:
            from bloodcell.evaluation.comparison import read_evaluation

            evaluation = read_evaluation(args.metrics)
        package_default(args.model, args.data, args.output, card=card, evaluation=evaluation, quantize=args.quantize,
                        half_weights=args.half_weights, per_class=args.per_class, max_mb=args.max_mb,
                        say=lambda m: print(m, file=sys.stderr))
        return 0
    from bloodcell.packaging.onnx import export_onnx

    if args.half_weights and args.quantize != "none":
        raise ConfigError(f"--half-weights stores float32 weights as float16; an int8 graph (--quantize {args.quantize}) "
                          "has none to store. Use one or the other.")
    calibration = None
    if args.quantize == "static":
        if not args.calibration_data:
            raise ConfigError("--quantize static needs --calibration-data: a folder, .npz or manifest of real cells.")
        calibration = _calibration_images(args.calibration_data, args.model, args.calibration_images)
    out = export_onnx(args.model, args.output, quantize=args.quantize, calibration=calibration, opset=args.opset,
                      half_storage=args.half_weights)
    print(f"bloodcell export: wrote {out} ({out.stat().st_size / 1e6:.1f} MB, quantization {args.quantize})", file=sys.stderr)
    return 0
