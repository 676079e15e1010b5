"""``bloodcell soup``: average the weights of networks fine-tuned from one start into one network."""

from __future__ import annotations

from bloodcell.core.errors import ConfigError
from bloodcell.core.model_folder import read_meta

HELP = ("Average the weights of networks fine-tuned from the same pretrained weights into one network "
        "(a model soup: often as accurate as their ensemble, at one network's cost).")


def add_arguments(parser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL",
                        help="two or more model folders of one architecture (an ensemble folder stands for its members)")
    parser.add_argument("-o", "--output", required=True, metavar="FOLDER", help="model folder to write")
    parser.add_argument("--weights", nargs="+", type=float, metavar="W",
                        help="one positive weight per MODEL, in order (scaled to sum 1; default: equal)")
    parser.add_argument("--batch-norm-data", metavar="DATA", default=None,
                        help="re-estimate the soup's batch-norm statistics on images of DATA (a dataset, or the train "
                             "rows of a split manifest) instead of averaging them; needed when the networks' statistics "
                             "differ, e.g. a network and its fine-tune on other labs' looks")
    parser.add_argument("--batch-norm-images", type=int, default=None, metavar="N",
                        help="with --batch-norm-data: how many of its images, chosen at random (default: 3000)")
    parser.add_argument("--force", action="store_true", help="replace the output folder if it exists")


def run(args) -> int:
    # deferred: the parser imports every verb module, and the onnxruntime predict path must not load PyTorch
    from bloodcell.training.soup import BATCH_NORM_IMAGES, soup

    if args.batch_norm_images is not None and args.batch_norm_data is None:
        raise ConfigError("--batch-norm-images goes with --batch-norm-data (the images to re-estimate on).")
    out = soup(args.models, args.output, weights=args.weights, batch_norm_data=args.batch_norm_data,
               batch_norm_images=BATCH_NORM_IMAGES if args.batch_norm_images is None else args.batch_norm_images,
               force=args.force, progress=True)
    meta = read_meta(out)
    for source, w in zip(meta["soup"]["members"], meta["soup"]["weights"]):
        print(f"  {w:.3f}  {source}")
    if "batch_norm" in meta["soup"]:
        bn = meta["soup"]["batch_norm"]
        print(f"  batch-norm statistics of {bn['layers']} layers re-estimated on {bn['reestimated_on_images']} "
              f"images of {args.batch_norm_data}")
    print(f"Wrote {out}: the mean of {len(meta['soup']['members'])} {meta['architecture']} networks' weights, "
          f"uncalibrated. Next: bloodcell calibrate {out} SPLIT.csv, then bloodcell evaluate {out} SPLIT.csv --split val.")
    return 0
