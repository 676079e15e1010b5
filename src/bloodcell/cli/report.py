"""``bloodcell report``: an HTML report with figures of a model on a labelled dataset."""

from __future__ import annotations

from bloodcell.cli.evaluate import add_common, device_of, print_summary

HELP = "Write a self-contained HTML report (figures, calibration, abstention, mistakes, Grad-CAM) of a model on a dataset."


def add_arguments(parser) -> None:
    parser.add_argument("model", help="model folder (single model or ensemble)")
    parser.add_argument("data", help="labelled dataset: a manifest CSV, a class-folder tree or an .npz")
    parser.add_argument("-o", "--output", required=True, help="report folder (created): report.html, PNG figures, metrics.json")
    add_common(parser)
    parser.add_argument("--mistakes", type=int, default=24, help="most confident mistakes to show (default 24)")
    parser.add_argument("--gradcam-per-class", type=int, default=3, help="Grad-CAM examples per class (default 3)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from bloodcell.evaluation.evaluate import evaluate_dataset
    from bloodcell.core.files import check_writable_folder
    from bloodcell.evaluation.report import write_report
    from bloodcell.networks.loading import load_model

    folder = check_writable_folder(args.output, "report folder")
    device = device_of(args)
    loaded = load_model(args.model, device)
    ev = evaluate_dataset(loaded, args.data, args.split, tta=args.tta, batch_size=args.batch_size, device=device,
                          n_boot=args.bootstrap, progress=not args.quiet)
    print_summary(ev.summary)
    path = write_report(ev, folder, n_mistakes=args.mistakes, gradcam_per_class=args.gradcam_per_class)
    print(f"Report written to {path} (figures and metrics.json beside it)")
    return 0
