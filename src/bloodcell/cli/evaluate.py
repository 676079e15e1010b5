"""``bloodcell evaluate``: metrics of a model on a labelled dataset."""

from __future__ import annotations

HELP = "Measure a model on a labelled dataset: accuracy with 95% CIs, per-class metrics, calibration, abstention."


def add_common(parser, default_split: str = "test") -> None:
    """Arguments shared by evaluate, report and compare."""
    parser.add_argument("--split", default=default_split,
                        help=f"split of a manifest or MedMNIST file to use (default {default_split}); "
                        "datasets without splits are used whole")
    parser.add_argument("--tta", action="store_true",
                        help="also predict with test-time augmentation (8 flips/rotations) and report its gain and cost")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if available)")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples for the 95%% confidence intervals (default 1000; 0 skips)")


def add_arguments(parser) -> None:
    parser.add_argument("model", help="model folder (single model or ensemble) as written by `bloodcell train`")
    parser.add_argument("data", help="labelled dataset: a manifest CSV (e.g. from `bloodcell split`), a class-folder tree or an .npz")
    add_common(parser)
    parser.add_argument("-o", "--output", help="write the full results as JSON to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def device_of(args):
    """The torch device to use, checked; also checks ``--batch-size``."""
    import torch

    from bloodcell.core.errors import ConfigError
    from bloodcell.prediction.torch_backend import default_device

    if getattr(args, "batch_size", 1) < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}.")
    if not args.device:
        return str(default_device())
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ConfigError(f"--device {args.device!r} is not a torch device; use cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device} asked for, but no CUDA GPU is available here; use --device cpu.")
    return str(device)


def print_summary(summary: dict) -> None:
    from bloodcell.evaluation.metrics import format_table

    m = summary["metrics"]
    d = summary["data"]
    print(f"{summary['model']['name']} ({summary['model']['architecture']}) on {d['source']}"
          + (f", split {d['split']}" if d["split"] else "") + (", with test-time augmentation" if summary["tta"] else ""))
    for note in summary["notes"]:
        print(f"note: {note}")
    if d["problems"]:
        print(f"note: {len(d['problems'])} file(s) skipped, e.g. {d['problems'][0]}")
    print()
    print(format_table(m))
    cal = summary["calibration"]
    print()
    print(f"Calibration: temperature {cal['temperature']:.3f}; ECE {100 * cal['ece_uncalibrated']:.2f}% uncalibrated -> "
          f"{100 * cal['ece_calibrated']:.2f}% temperature-scaled; log loss {cal['log_loss_uncalibrated']:.4f} -> "
          f"{cal['log_loss_calibrated']:.4f}.")
    if summary["tta"]:
        print(f"With test-time augmentation: temperature {cal['tta_temperature']:.3f}"
              + ("" if cal["tta_temperature_fitted"] else " (the plain one; fit one with `bloodcell calibrate --tta`)")
              + f"; ECE {100 * cal['ece_tta_uncalibrated']:.2f}% uncalibrated -> {100 * cal['ece_tta_calibrated']:.2f}%.")
    ab = summary["abstention"]
    parts = []
    for c in ab["coverage_at"]:
        parts.append(f"{100 * c['target']:.1f}% accuracy at {100 * c['coverage']:.1f}% coverage"
                     if c["threshold"] is not None else f"{100 * c['target']:.1f}% accuracy not reached")
    print("Abstention (threshold chosen on this data): " + "; ".join(parts) + ".")
    mt = ab["model_threshold"]
    if mt:
        acc = "-" if mt["accuracy"] is None else f"{100 * mt['accuracy']:.2f}%"
        kind = " for augmented predictions" if ab["model_threshold_kind"] == "tta" else ""
        print(f"Model's threshold{kind} {100 * mt['threshold']:.2f}% (fitted on validation): keeps {100 * mt['coverage']:.1f}% "
              f"({mt['referred']} referred to a hematologist) at {acc} accuracy.")
    t = summary["tta_comparison"]
    if t:
        g = t["gain"]
        print(f"Test-time augmentation ({t['views']} views): accuracy {100 * t['plain']['accuracy']:.2f}% -> "
              f"{100 * t['tta']['accuracy']:.2f}% ({100 * g['accuracy']:+.2f} points), macro-F1 "
              f"{100 * g['macro_f1']:+.2f} points, ECE {100 * g['ece']:+.2f} points; {t['plain']['seconds']:.1f} s -> "
              f"{t['tta']['seconds']:.1f} s ({t['slowdown']:.1f}x); {t['fixed']} fixed, {t['broken']} broken.")
    sp = summary["speed"]
    print(f"Speed: {sp['images_per_second']:.0f} images/s on {sp['device']} (prepared images, batch {sp['batch_size']}).")


def run(args) -> int:
    from pathlib import Path

    from bloodcell.core.files import atomic_write_json, check_writable_file
    from bloodcell.evaluation.evaluate import evaluate_dataset
    from bloodcell.networks.loading import load_model

    if args.output:
        check_writable_file(args.output, "results file")
    device = device_of(args)
    loaded = load_model(args.model, device)
    ev = evaluate_dataset(loaded, args.data, args.split, tta=args.tta, batch_size=args.batch_size, device=device,
                          n_boot=args.bootstrap, progress=not args.quiet)
    print_summary(ev.summary)
    if args.output:
        atomic_write_json(Path(args.output), ev.to_json())
        print(f"Results written to {args.output}")
    return 0
