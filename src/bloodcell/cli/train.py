"""``bloodcell train``: train a model from a recipe, with overrides, resumable, optionally distributed."""

from __future__ import annotations

import argparse
import difflib
import os
import sys

HELP = "Train a model (recipes in bloodcell/configs; resumable; torchrun for several processes)."

EPILOG = """examples:
  bloodcell train --recipe cpu_fast_cnn --data ../shared/data/pbc --out runs/cnn
  bloodcell train --recipe efficientnet_lite0 --data split.csv --image-size 96 --epochs 5 --out runs/lite0
  bloodcell train --resume runs/lite0                 # continue after a crash or Ctrl-C
  bloodcell train --init default --data my_lab_images --out runs/finetuned
  torchrun --nproc_per_node=2 -m bloodcell train --recipe cpu_fast_cnn --data DATA --out runs/ddp
Any config key can be set with its flag (--lr 3e-4, --augment.hflip) or --set key=value."""


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from bloodcell.training.config import config_keys, key_choices, key_help  # deferred: loads PyTorch

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.allow_abbrev = False  # a mistyped option is an error with a suggestion, not a silent prefix match
    parser.epilog = EPILOG
    g = parser.add_argument_group("run")
    g.add_argument("--recipe", metavar="NAME", help="a shipped recipe (see --list-recipes)")
    g.add_argument("--config", metavar="PATH", help="a YAML recipe file")
    g.add_argument("--out", metavar="DIR", help="run folder (default: runs/<recipe or model>)")
    g.add_argument("--resume", nargs="?", const=True, default=False, metavar="DIR",
                   help="continue the run in DIR (or --out) from its last complete epoch")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    g.add_argument("--list-recipes", action="store_true", help="list the shipped recipes and exit")
    g.add_argument("--show-config", action="store_true", help="print the config (recipe + overrides) and exit")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    c = parser.add_argument_group("config keys (each overrides the recipe)")
    for key in config_keys():
        text, default = key_help(key)
        choices = key_choices(key)
        metavar = "{" + ",".join(choices) + "}" if choices else (
            "N" if isinstance(default, int) and not isinstance(default, bool) else
            "X" if isinstance(default, float) else "VALUE")
        kwargs = dict(dest=f"cfg__{key}", default=argparse.SUPPRESS, metavar=metavar,
                      help=f"{text} [default: {default}]".replace("%", "%%"))
        if isinstance(default, bool):
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        c.add_argument(_flag(key), **kwargs)
    _suggest_unknown_flags(parser)


def _suggest_unknown_flags(parser: argparse.ArgumentParser) -> None:
    """Make unknown options an error with a "did you mean" instead of argparse's bare message."""
    original = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        ns, extras = original(args, namespace)
        flags = [a for a in extras if a.startswith("--")]
        if flags:
            known = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
            name = flags[0].split("=", 1)[0]
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            parser.error(f"unknown option {name}.{hint} (bloodcell train --help lists all; any config key also "
                         "works as --set key=value)")
        return ns, extras

    parser.parse_known_args = parse_known_args


def _overrides(args) -> dict:
    from bloodcell.training.config import parse_scalar, parse_set  # deferred: bloodcell.training loads PyTorch

    out = parse_set(args.set)
    for name, value in vars(args).items():
        if name.startswith("cfg__"):
            out[name[5:]] = parse_scalar(value) if isinstance(value, str) else value
    return out


def run(args) -> int:
    from bloodcell.training import EnsembleResult, TrainingInterrupted, show_config, train  # deferred: loads PyTorch
    from bloodcell.training.config import recipe_description, recipe_names  # deferred: loads PyTorch

    if args.list_recipes:
        for name in recipe_names():
            print(f"{name:<24} {recipe_description(name)}")
        return 0
    options = dict(recipe=args.recipe, config=args.config, out=args.out, resume=args.resume,
                   overrides=_overrides(args))
    if args.show_config:
        print(show_config(**options), end="")
        return 0
    try:
        result = train(progress=not args.no_progress, **options)
    except TrainingInterrupted as e:
        print(f"bloodcell train: {e}", file=sys.stderr)
        return 130
    if not _is_main_process():
        return 0
    if isinstance(result, EnsembleResult):
        _print_ensemble(result)
    else:
        _print_run(result)
    return 0


def _print_run(result) -> None:
    m = result.metrics
    if m:
        print(f"{result.stopped.replace('_', ' ')} after {len(result.history)} epoch(s); best epoch "
              f"{result.best_epoch} (by {m.get('monitor')}): "
              f"val acc {m['val_acc']:.4f}, macro-F1 {m['val_macro_f1']:.4f}, loss {m['val_loss']:.4f}")
    print(f"model: {result.run_dir}  (curves: {result.run_dir / 'curves.png'}, history: "
          f"{result.run_dir / 'history.csv'})")


def _print_ensemble(result) -> None:
    for member, m in result.members.items():
        print(f"member {member:<20} val acc {m.get('val_acc', float('nan')):.4f}  macro-F1 "
              f"{m.get('val_macro_f1', float('nan')):.4f}")
    weights = result.weights
    print(f"ensemble: {result.run_dir}  ({'equal weights' if not weights else f'weights {weights}'})")


def _is_main_process() -> bool:
    """False in the non-zero ranks of a torchrun launch (only rank 0 reports)."""
    return int(os.environ.get("RANK", "0")) == 0
