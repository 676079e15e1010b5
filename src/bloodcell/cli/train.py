"""``bloodcell train``: train a model from a recipe, with overrides, resumable, optionally distributed."""

from __future__ import annotations

import argparse
import difflib
import signal
import sys
from pathlib import Path

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
    from bloodcell.training.config import config_keys, key_choices, key_help

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
    from bloodcell.training.config import parse_scalar, parse_set

    out = parse_set(args.set)
    for name, value in vars(args).items():
        if name.startswith("cfg__"):
            out[name[5:]] = parse_scalar(value) if isinstance(value, str) else value
    return out


def run(args) -> int:
    from bloodcell.training.config import config_from_dict, load_config, read_yaml, recipe_names, recipe_path
    from bloodcell.training.run import is_ensemble_recipe, run_training
    from bloodcell.training.trainer import TrainingInterrupted

    if args.list_recipes:
        for name in recipe_names():
            text = read_description(recipe_path(name))
            print(f"{name:<24} {text}")
        return 0
    if args.recipe and args.config:
        from bloodcell.core.errors import ConfigError

        raise ConfigError("Give either --recipe NAME or --config PATH, not both.")
    overrides = _overrides(args)
    resume = bool(args.resume)
    out = args.out or (args.resume if isinstance(args.resume, str) else None)
    if isinstance(args.resume, str) and args.out and Path(args.out) != Path(args.resume):
        from bloodcell.core.errors import ConfigError

        raise ConfigError(f"--resume {args.resume} and --out {args.out} name different folders; give one.")
    if resume and out is None:
        from bloodcell.core.errors import ConfigError

        raise ConfigError("--resume needs the run folder: --resume RUN_DIR (or --out RUN_DIR --resume).")
    recipe_data = read_yaml(recipe_path(args.recipe)) if args.recipe else (read_yaml(args.config) if args.config else {})
    if is_ensemble_recipe(recipe_data):
        return _run_ensemble(args, recipe_data, overrides, out, resume)
    if resume and not (args.recipe or args.config) and (Path(out) / "config.yaml").is_file():
        cfg = config_from_dict(read_yaml(Path(out) / "config.yaml"), f"{out}/config.yaml")
        from bloodcell.training.config import apply_overrides

        cfg = apply_overrides(cfg, overrides, "command line")
    else:
        cfg = load_config(args.recipe, args.config, overrides)
    if args.show_config:
        print(cfg.to_yaml(), end="")
        return 0
    if out is None:
        out = str(Path("runs") / (args.recipe or Path(args.config).stem if (args.recipe or args.config) else cfg.model))
    previous = _sigterm_as_interrupt()
    try:
        result = run_training(cfg, out, resume=resume, explicit=tuple(k.replace("-", "_") for k in overrides),
                              progress=not args.no_progress)
    except TrainingInterrupted as e:
        print(f"bloodcell train: {e}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not _is_main_process():
        return 0
    m = result.metrics
    if m:
        print(f"{result.stopped.replace('_', ' ')} after {len(result.history)} epoch(s); best epoch "
              f"{result.best_epoch} (by {m.get('monitor')}): "
              f"val acc {m['val_acc']:.4f}, macro-F1 {m['val_macro_f1']:.4f}, loss {m['val_loss']:.4f}")
    print(f"model: {result.run_dir}  (curves: {result.run_dir / 'curves.png'}, history: "
          f"{result.run_dir / 'history.csv'})")
    return 0


def _run_ensemble(args, recipe: dict, overrides: dict, out, resume: bool) -> int:
    from bloodcell.core.model_folder import read_meta
    from bloodcell.training.config import load_config
    from bloodcell.training.run import run_ensemble_recipe
    from bloodcell.training.trainer import TrainingInterrupted

    name = args.recipe or Path(args.config).stem
    if args.show_config:
        for member in recipe["members"]:
            print(f"# member {member}")
            print(load_config(recipe=member, overrides=overrides).to_yaml(), end="")
        return 0
    out = Path(out or Path("runs") / name)
    previous = _sigterm_as_interrupt()
    try:
        target = run_ensemble_recipe(recipe, out, overrides=overrides, resume=resume,
                                     explicit=tuple(k.replace("-", "_") for k in overrides),
                                     progress=not args.no_progress, source=name)
    except TrainingInterrupted as e:
        print(f"bloodcell train: {e}\nTo continue the whole ensemble: bloodcell train --recipe {name} --out {out} "
              "--resume (with the same options)", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not _is_main_process():
        return 0
    for member in recipe["members"]:
        m = read_meta(out / member).get("metrics", {})
        print(f"member {member:<20} val acc {m.get('val_acc', float('nan')):.4f}  macro-F1 "
              f"{m.get('val_macro_f1', float('nan')):.4f}")
    weights = recipe.get("weights")
    print(f"ensemble: {target}  ({'equal weights' if not weights else f'weights {weights}'})")
    return 0


def read_description(path) -> str:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return ""
    return str(data.get("description", "")).strip().splitlines()[0] if data.get("description") else ""


def _sigterm_as_interrupt():
    """SIGTERM stops training like Ctrl-C (checkpoint kept); forked helper processes just exit."""
    import os

    main_pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != main_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def _is_main_process() -> bool:
    """False in the non-zero ranks of a torchrun launch (only rank 0 reports)."""
    import os

    return int(os.environ.get("RANK", "0")) == 0
