"""``bloodcell ensemble``: combine trained models into one soft-voting model folder."""

from __future__ import annotations

from bloodcell.core.model_folder import read_meta

HELP = "Combine trained models into one soft-voting ensemble that every command accepts as a model."


def add_arguments(parser) -> None:
    parser.add_argument("members", nargs="+", metavar="MODEL", help="two or more trained model folders")
    parser.add_argument("-o", "--output", required=True, metavar="FOLDER", help="ensemble folder to write")
    parser.add_argument(
        "--weights",
        nargs="+",
        type=float,
        metavar="W",
        help="one positive weight per member, in member order (scaled to sum 1; default: equal)",
    )
    parser.add_argument("--force", action="store_true", help="replace the output folder if it exists")


def run(args) -> int:
    # deferred: the parser imports every verb module, and the onnxruntime predict path must not load PyTorch
    from bloodcell.networks.ensemble import ensemble

    out = ensemble(args.members, args.output, weights=args.weights, force=args.force)
    meta = read_meta(out)
    pre = meta["preprocess"]
    rows = meta["config"]["members"]
    print(f"{'member':<8}  {'weight':>6}  {'size':>4}  {'T':>5}  {'architecture':<18}  source")
    for r, w in zip(rows, meta["ensemble"]["weights"]):
        print(f"{r['name']:<8}  {w:>6.3f}  {r['image_size']:>4}  {r['temperature']:>5.2f}  "
              f"{str(r['architecture']):<18}  {r['source']}")
    print(
        f"Wrote ensemble {out} ({len(rows)} members, input {pre['image_size']} px, "
        f"{len(pre['class_names'])} classes). Use it wherever a model folder is accepted."
    )
    return 0
