"""``bloodcell info``: show a model's card."""

from __future__ import annotations

import json
from pathlib import Path

from bloodcell.core.model_choice import resolve_model
from bloodcell.core.model_folder import is_model_folder, read_meta
from bloodcell.packaging.card import card, render
from bloodcell.prediction.onnx_backend import OnnxModel

HELP = "Show a model's card: data, intended use, metrics, limitations, calibration, licence (default: the bundled model)."


def add_arguments(parser) -> None:
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL",
                        help="model folder or exported .onnx file (default: the bundled model, or $BLOODCELL_MODEL)")
    parser.add_argument("--json", action="store_true", help="print the card as JSON")


def model_meta(path):
    """``(metadata, files)`` of a model folder or ``.onnx`` file, without loading weights."""
    path = Path(path)
    if is_model_folder(path):
        files = {p.relative_to(path).as_posix(): p.stat().st_size
                 for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")}
        return read_meta(path), files
    model = OnnxModel(path, threads=1)
    return model.meta, {model.path.name: model.path.stat().st_size}


def run(args) -> int:
    path = resolve_model(args.model)
    meta, files = model_meta(path)
    if args.json:
        print(json.dumps({**card(meta, path), "files": files}, indent=2))
        return 0
    print(render(meta, path))
    print("files:")
    for name, size in files.items():
        print(f"  {name}: {size / 1e6:.2f} MB")
    return 0
