"""``bloodcell models``: list the registered architectures."""

from __future__ import annotations

import json

HELP = "List the model architectures that `bloodcell train` can build."


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    # deferred: the parser imports every verb module, and the onnxruntime predict path must not load PyTorch
    from bloodcell.networks.registry import models

    rows = models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  {'family':<6}  {'size':>4}  {'imagenet':<8}  description")
    for r in rows:
        source = r["pretrained"] or ""
        weights = "offline" if source.startswith("package:") else ("hub" if source else "-")
        print(f"{r['name']:<{width}}  {r['family']:<6}  {r['default_size']:>4}  {weights:<8}  {r['description']}")
    return 0
