"""``bloodcell soup``: average the weights of networks fine-tuned from one start into one network."""

from __future__ import annotations

from bloodcell.core.model_folder import read_meta

HELP = ("Average the weights of networks fine-tuned from the same pretrained weights into one network "
        "(a model soup: often as accurate as their ensemble, at one network's cost).")


def add_arguments(parser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL",
                        help="two or more model folders of one architecture (an ensemble folder stands for its members)")
    parser.add_argument("-o", "--output", required=True, metavar="FOLDER", help="model folder to write")
    parser.add_argument("--weights", nargs="+", type=float, metavar="W",
                        help="one positive weight per MODEL, in order (scaled to sum 1; default: equal)")
    parser.add_argument("--force", action="store_true", help="replace the output folder if it exists")


def run(args) -> int:
    # deferred: the parser imports every verb module, and the onnxruntime predict path must not load PyTorch
    from bloodcell.networks.soup import soup

    out = soup(args.models, args.output, weights=args.weights, force=args.force)
    meta = read_meta(out)
    for source, w in zip(meta["soup"]["members"], meta["soup"]["weights"]):
        print(f"  {w:.3f}  {source}")
    print(f"Wrote {out}: the mean of {len(meta['soup']['members'])} {meta['architecture']} networks' weights, "
          f"uncalibrated. Next: bloodcell calibrate {out} SPLIT.csv, then bloodcell evaluate {out} SPLIT.csv --split val.")
    return 0
