"""``bloodcell adapt``: adapt the default (or a named) model to a lab's own labelled cells."""

from __future__ import annotations

HELP = ("Adapt the model to your lab's labelled cells (a few per class or more): retrain its last layers, "
        "recalibrate on held-out cells, write a new model folder.")


def add_arguments(parser) -> None:
    parser.add_argument("data", help="your labelled cells: one sub-folder per class, an .npz or a CSV manifest")
    parser.add_argument("--out", "-o", required=True, help="model folder to write (predict, serve, evaluate and "
                                                          "export take it with --model)")
    parser.add_argument("--model", "-m", default=None,
                        help="model folder to start from (default: the bundled model, or $BLOODCELL_MODEL)")
    parser.add_argument("--method", choices=("finetune", "linear", "prototype"), default="finetune",
                        help="finetune (default): retrain the last stages and the classifier; linear: a new "
                             "classifier on frozen features; prototype: class means, nothing trained")
    parser.add_argument("--epochs", type=int, default=None,
                        help="passes over the eight views of the cells and their copies (default 5)")
    parser.add_argument("--copies", type=int, default=None,
                        help="each cell and jittered copies of it (crop, colour) to learn from, in all (default 2; "
                             "1: the cells alone)")
    parser.add_argument("--batch-norm", choices=("keep", "lab"), default="lab",
                        help="lab (default): re-estimate the batch-norm statistics on your cells first; keep: the "
                             "model's own")
    parser.add_argument("--no-match-scale", dest="match_scale", action="store_false",
                        help="keep the model's crop (default: scale it so your cells appear at the size the model "
                             "learnt, measured on your images)")
    parser.add_argument("--no-imagenet-member", dest="imagenet_member", action="store_false",
                        help="adapt the model alone (default: an ImageNet-trained network, its classifier fitted to "
                             "your cells, votes beside it)")
    parser.add_argument("--drop-absent", action="store_true",
                        help="predict only the classes present in DATA (default: keep the model's other classes)")
    parser.add_argument("--held-out", type=float, default=0.25,
                        help="share of each class held out to calibrate (default 0.25; none for a class under 3 cells)")
    parser.add_argument("--target-accuracy", type=float, default=0.995,
                        help="accuracy the abstention threshold must reach on the held-out cells (default 0.995)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out draw and of training (default 0)")
    parser.add_argument("--status-file", default=None,
                        help="JSON file rewritten with the progress as the work goes (for job runners)")
    parser.add_argument("--no-export", dest="export", action="store_false",
                        help="leave out model.onnx (default: export the adapted model to ONNX, about 10 s, so "
                             "predict and serve run it on onnxruntime)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _summary(result) -> str:
    a = result.adaptation
    lines = [f"bloodcell adapt: {result.out} written in {result.seconds:.0f} s (method {a['method']}, "
             f"{sum(a['fitting_cells'].values())} fitting cells, {sum(a['held_out_cells'].values())} held out)"]
    if a.get("original_model"):
        lines.append(f"  started from {a['adapted_from']}, which {a['original_model']} ships for adaptation")
    after, before = a.get("held_out"), a.get("held_out_before")
    if after:
        lines.append(f"  held-out cells ({after['n']}): accuracy {after['accuracy']:.1%}, balanced "
                     f"{after['balanced_accuracy']:.1%}, macro-F1 {after['macro_f1']:.1%}"
                     + (f" (before adaptation: accuracy {before['accuracy']:.1%}, balanced "
                        f"{before['balanced_accuracy']:.1%})" if before else ""))
    scale = a.get("scale") or {}
    if scale.get("applied"):
        crop = scale["crop_fraction"]
        lines.append(f"  your cells fill {scale['lab_cell_share']:.0%} of the crop against {scale['training_cell_share']:.0%} "
                     f"in training: crop {crop['model']:g} -> {crop['adapted']:g} of the shorter side")
    elif scale.get("reason"):
        kept = (scale.get("crop_fraction") or {}).get("model")
        lines.append(f"  crop kept{f' at {kept:g}' if kept else ''}: {scale['reason']}")
    if a["classes_absent_from_data"]:
        lines.append(f"  classes not in the data, {a['absent_classes']}: {', '.join(a['classes_absent_from_data'])}")
    if result.onnx is not None:
        lines.append(f"  ONNX export {result.onnx}")
    lines.append(f"  use it: bloodcell predict --model {result.out} IMAGES")
    return "\n".join(lines)


def run(args) -> int:
    # Deferred: the parser imports every verb's module, and only this verb should load PyTorch.
    from bloodcell.adaptation import adapt

    result = adapt(args.data, args.out, model=args.model, method=args.method, epochs=args.epochs,
                   copies=args.copies,
                   batch_norm=args.batch_norm, match_scale=args.match_scale,
                   drop_absent=args.drop_absent,
                   imagenet_member=args.imagenet_member, held_out=args.held_out, seed=args.seed,
                   target_accuracy=args.target_accuracy, force=args.force, export=args.export,
                   progress=not args.quiet,
                   status_file=args.status_file)
    print(_summary(result))
    return 0
