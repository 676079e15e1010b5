"""``bloodcell calibrate``: fit temperature scaling and an abstention threshold on validation data."""

from __future__ import annotations

HELP = "Fit temperature scaling and a 'refer to a hematologist' threshold on the validation split; store them in model.json."


def add_arguments(parser) -> None:
    parser.add_argument("model", help="model folder (single model or ensemble); its model.json is updated in place")
    parser.add_argument("data", help="labelled dataset with a validation split (e.g. the manifest from `bloodcell split`)")
    parser.add_argument("--split", default="val", help="split to fit on (default val); never the test split you report")
    parser.add_argument("--target-accuracy", type=float, default=0.995,
                        help="accuracy the accepted images must reach on that split (default 0.995)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--tta", action="store_true",
                        help="also fit a temperature and threshold for test-time-augmented predictions (8x the time)")
    parser.add_argument("--dry-run", action="store_true", help="print the fit without writing model.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from bloodcell.cli.evaluate import device_of
    from bloodcell.evaluation.fit_calibration import calibrate_model

    result = calibrate_model(args.model, args.data, split=args.split, target_accuracy=args.target_accuracy,
                             batch_size=args.batch_size, device=device_of(args), write=not args.dry_run,
                             progress=not args.quiet, tta=args.tta)
    v = result["validation"]
    print(f"Fitted on {v['source']}" + (f", split {v['split']}" if v["split"] else "") + f": {v['n_images']} images.")
    _print_fit("", result, result["target_accuracy"])
    if "tta" in result:
        _print_fit("With test-time augmentation: ", result["tta"], result["target_accuracy"])
    print("Dry run: model.json left unchanged." if args.dry_run else f"Stored in {result['model_json']}.")
    return 0


def _print_fit(prefix: str, fit: dict, target: float) -> None:
    v = fit["validation"]
    print(f"{prefix}Temperature {fit['temperature']:.4f}: ECE {100 * v['ece_before']:.2f}% -> {100 * v['ece_after']:.2f}%, "
          f"log loss {v['nll_before']:.4f} -> {v['nll_after']:.4f}.")
    if fit["abstain_threshold"] is None:
        print(f"{prefix}No threshold reaches {100 * target:.2f}% accuracy on this split "
              f"(overall {100 * v['accuracy']:.2f}%); abstention is off (abstain_threshold null).")
    else:
        print(f"{prefix}Abstention: refer an image when its top probability is below {100 * fit['abstain_threshold']:.2f}%; "
              f"on this split that keeps {100 * v['coverage']:.1f}% of images at {100 * v['accuracy_accepted']:.2f}% "
              f"accuracy (target {100 * target:.2f}%; all images: {100 * v['accuracy']:.2f}%).")
    for c in v["coverage_at"]:
        if c["threshold"] is not None:
            print(f"  {100 * c['target']:.1f}% accuracy: {100 * c['coverage']:.1f}% coverage (threshold {100 * c['threshold']:.2f}%)")
        else:
            print(f"  {100 * c['target']:.1f}% accuracy: not reached")
