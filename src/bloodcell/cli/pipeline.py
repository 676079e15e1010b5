"""``bloodcell pipeline default|zoo|zoo-table``: the default model and the model zoo, end to end."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

HELP = "Package the default model (default), train the model zoo (zoo) or tabulate it (zoo-table), resumably."

EPILOG = """examples:
  bloodcell pipeline default --data runs/pbc_split.csv          # what `make train-default` runs
  bloodcell pipeline zoo --data runs/pbc_split.csv              # what `make zoo` runs
  bloodcell pipeline default --data split.csv --default-run /tmp/d --package /tmp/pkg \\
      --train-args "--max-train-samples 64 --epochs 1 --image-size 32"   # a tiny trial run
Rerun after a stop: finished members are kept and interrupted ones resume (logs: RUN/MEMBER.log)."""


def add_arguments(parser) -> None:
    # deferred (here and in run): the parser imports every verb module, and the onnxruntime predict
    # path must not load PyTorch, which the pipelines' training recipes need
    from bloodcell.pipelines import PIPELINES
    from bloodcell.pipelines import spec as specs

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("name", choices=PIPELINES, help="which pipeline")
    parser.add_argument("--data", default="runs/pbc_split.csv", help="the split manifest (default runs/pbc_split.csv)")
    parser.add_argument("--default-run", default=specs.DEFAULT_RUN, metavar="DIR",
                        help=f"run folder of the default model (default {specs.DEFAULT_RUN})")
    parser.add_argument("--zoo-run", default=specs.ZOO_RUN, metavar="DIR",
                        help=f"run folder of the zoo (default {specs.ZOO_RUN})")
    parser.add_argument("--package", default=None, metavar="DIR",
                        help="default: where to package the model (default: the package's bloodcell/default_model)")
    parser.add_argument("--card", default="cards/default.yaml", help="default: model card sections (default cards/default.yaml)")
    parser.add_argument("--report", default="reports/zoo", metavar="DIR", help="zoo-table: output folder (default reports/zoo)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(specs.DEFAULT_SEEDS),
                        help="default: one member per seed (default: 0 1)")
    parser.add_argument("--distilled-seed", type=int, default=specs.DISTILLED_SEED,
                        help=f"default: seed of the network distilled from the members' ensemble, which the default "
                             f"model predicts with (default: {specs.DISTILLED_SEED})")
    parser.add_argument("--recipe", default=specs.DEFAULT_RECIPE, help="default: the members' recipe (default: default)")
    parser.add_argument("--study", nargs="+", default=list(specs.ZOO_STUDY), metavar="RECIPE:EPOCHS",
                        help=f"zoo: the study CNNs (default: {' '.join(specs.ZOO_STUDY)})")
    parser.add_argument("--ensemble-epochs", type=int, default=specs.ZOO_ENSEMBLE_EPOCHS,
                        help=f"zoo: epochs of the {specs.ZOO_ENSEMBLE} ensemble, 0 leaves it out "
                             f"(default {specs.ZOO_ENSEMBLE_EPOCHS})")
    parser.add_argument("--zoo-args", default=shlex.join(specs.ZOO_CPU), metavar="ARGS",
                        help=f"zoo: train arguments of every zoo member (default: {shlex.join(specs.ZOO_CPU)})")
    parser.add_argument("--train-args", default="", metavar="ARGS",
                        help='further train arguments of every fresh member, e.g. "--epochs 1 --image-size 32"')
    parser.add_argument("--jobs", type=int, default=None, help="members trained at once, one thread each (default: CPU cores)")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="stop a member that trains longer than this (default: no limit)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON at the end")


def run(args) -> int:
    from bloodcell.pipelines import pipeline  # deferred: see add_arguments

    result = pipeline(args.name, data=args.data, default_run=args.default_run, zoo_run=args.zoo_run,
                      package=args.package, card=args.card or None, report=args.report, seeds=args.seeds,
                      recipe=args.recipe, distilled_seed=args.distilled_seed, study=args.study,
                      ensemble_epochs=args.ensemble_epochs,
                      zoo_args=shlex.split(args.zoo_args), train_args=shlex.split(args.train_args),
                      jobs=args.jobs, timeout=args.timeout, say=lambda m: print(m, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"bloodcell pipeline {args.name}: done.")
    return 0
