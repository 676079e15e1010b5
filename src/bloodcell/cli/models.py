"""``bloodcell models``: list the registered architectures."""

from __future__ import annotations

HELP = "List the model architectures that `bloodcell train` can build."


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    import json

    from bloodcell.networks import get_entry, list_models

    rows = [get_entry(n) for n in list_models()]
    if args.json:
        print(json.dumps([{"name": e.name, "family": e.family, "default_size": e.default_size,
                           "pretrained": e.pretrained, "description": e.description} for e in rows], indent=2))
        return 0
    width = max(len(e.name) for e in rows)
    print(f"{'name':<{width}}  {'family':<6}  {'size':>4}  {'imagenet':<8}  description")
    for e in rows:
        weights = "offline" if (e.pretrained or "").startswith("package:") else ("hub" if e.pretrained else "-")
        print(f"{e.name:<{width}}  {e.family:<6}  {e.default_size:>4}  {weights:<8}  {e.description}")
    return 0
