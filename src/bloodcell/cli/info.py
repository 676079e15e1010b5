"""``bloodcell info``: show a model's card."""

from __future__ import annotations

import json

from bloodcell.packaging.card import info

HELP = "Show a model's card: data, intended use, metrics, limitations, calibration, licence (default: the bundled model)."


def add_arguments(parser) -> None:
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL",
                        help="model folder or exported .onnx file (default: the bundled model, or $BLOODCELL_MODEL)")
    parser.add_argument("--json", action="store_true", help="print the card as JSON")


def run(args) -> int:
    print(json.dumps(info(args.model), indent=2) if args.json else info(args.model, text=True))
    return 0
