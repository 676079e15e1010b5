"""What each pipeline trains: one spec per pipeline, from which every later step is derived.

A :class:`Spec` lists the members of a pipeline (run folder name, recipe and the training
arguments of a fresh run). The steps after training (which folders to calibrate, the
ensemble's members, the ``compare`` list of the model-zoo table) are read off the same
specs, so a member added here is trained, calibrated and compared without another edit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bloodcell.core.errors import ConfigError
from bloodcell.core.settings import usable_cpus
from bloodcell.training.config import read_yaml, recipe_path

#: Seeds of the default model's EfficientNet-Lite0 members (two members fill the two cores).
DEFAULT_SEEDS = (0, 1)
DEFAULT_RECIPE = "default"
DEFAULT_RUN = "runs/default"
#: The default model's network: distilled from the members' ensemble (with TTA), with its own seed.
DISTILLED = "distilled"
DISTILLED_SEED = 2
ZOO_RUN = "runs/zoo"
#: The study CNNs of the model zoo, each with its number of epochs.
ZOO_STUDY = ("basic_cnn:10", "basic_cnn_augmented:10", "complex_cnn:8", "enhanced_cnn:8")
#: The three-architecture ensemble recipe of the zoo and its epochs (no offline ImageNet weights
#: exist for its members, so they train from scratch).
ZOO_ENSEMBLE = "ensemble_3arch"
ZOO_ENSEMBLE_EPOCHS = 4
ZOO_ENSEMBLE_ARGS = ("--pretrained", "false", "--lr", "0.001")
#: The zoo at a CPU-feasible size.
ZOO_CPU = ("--image-size", "64", "--crop-fraction", "0.7", "--batch-size", "32", "--schedule", "cosine",
           "--warmup-epochs", "0.3")


@dataclass(frozen=True)
class Member:
    """One training run of a pipeline.

    Attributes
    ----------
    name : str
        Its folder name inside the pipeline's run folder (its log is ``<name>.log`` beside it).
    recipe : str
        The training recipe of a fresh run.
    args : tuple of str
        Further ``bloodcell train`` arguments of a fresh run (seed, epochs, ...).
    parts : tuple of str
        For an ensemble recipe, the member runs it trains into sub-folders (its soft-voting
        model is the ``ensemble`` sub-folder); empty for a single model.
    threads : int
        CPU threads of its training process: one when members train side by side (the default),
        every core for a run that trains alone.
    """

    name: str
    recipe: str
    args: tuple[str, ...] = ()
    parts: tuple[str, ...] = ()
    threads: int = 1


@dataclass(frozen=True)
class Spec:
    """A pipeline's members, where they are trained, and on which data; ``distilled``: a network trained
    after them with their ensemble as its teacher (the default model's)."""

    name: str
    run: Path
    data: Path
    members: tuple[Member, ...]
    train_args: tuple[str, ...] = field(default=())
    distilled: Member | None = None

    def folder(self, member: Member) -> Path:
        return self.run / member.name

    def models(self, member: Member) -> list[Path]:
        """The model folders a member produces: itself, or its parts and their ensemble."""
        folder = self.folder(member)
        if not member.parts:
            return [folder]
        return [folder / p for p in member.parts] + [folder / "ensemble"]

    def all_models(self) -> list[Path]:
        return [m for member in self.members for m in self.models(member)]


def recipe_parts(recipe: str) -> tuple[str, ...]:
    """The member recipes of an ensemble recipe (``members:`` in its YAML), or ``()``."""
    members = read_yaml(recipe_path(recipe)).get("members")
    return tuple(members) if isinstance(members, list) else ()


def default_spec(data, run=DEFAULT_RUN, *, seeds=DEFAULT_SEEDS, recipe: str = DEFAULT_RECIPE,
                 distilled_seed: int = DISTILLED_SEED, train_args=()) -> Spec:
    """The packaged default model: one ``lite0_seed<S>`` member per seed, all from ``recipe``, and the
    network distilled from their ensemble (``distilled``, seed ``distilled_seed``, on every core)."""
    seeds = [int(s) for s in seeds]
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"The default model is distilled from an ensemble: give two or more different seeds, "
                          f"got {seeds}.")
    members = tuple(Member(f"lite0_seed{s}", recipe, ("--seed", str(s))) for s in seeds)
    distilled = Member(DISTILLED, recipe, ("--seed", str(int(distilled_seed)), "--teacher", str(Path(run) / "ensemble")),
                       threads=usable_cpus())
    return Spec("default", Path(run), Path(data), members, tuple(train_args), distilled)


def parse_study(study) -> list[tuple[str, int]]:
    """``RECIPE:EPOCHS`` items as ``(recipe, epochs)`` pairs."""
    pairs = []
    for item in study:
        recipe, sep, epochs = str(item).partition(":")
        if not sep or not recipe or not epochs.isdigit() or int(epochs) < 1:
            raise ConfigError(f"Zoo member {item!r}: expected RECIPE:EPOCHS, e.g. basic_cnn:10.")
        pairs.append((recipe, int(epochs)))
    return pairs


def zoo_spec(data, run=ZOO_RUN, *, study=ZOO_STUDY, ensemble_epochs: int = ZOO_ENSEMBLE_EPOCHS,
             cpu_args=ZOO_CPU, train_args=()) -> Spec:
    """The model zoo: the study CNNs and (unless ``ensemble_epochs`` is 0) the three-architecture ensemble."""
    members = [Member(recipe, recipe, ("--epochs", str(n), *cpu_args)) for recipe, n in parse_study(study)]
    if ensemble_epochs:
        members.append(Member(ZOO_ENSEMBLE, ZOO_ENSEMBLE, ("--epochs", str(int(ensemble_epochs)), *ZOO_ENSEMBLE_ARGS,
                                                           *cpu_args), recipe_parts(ZOO_ENSEMBLE)))
    return Spec("zoo", Path(run), Path(data), tuple(members), tuple(train_args))


def compare_list(zoo: Spec, default: Spec) -> list[str]:
    """What the README's model-zoo table compares: every zoo model, each default member alone, their
    ensemble, and the network distilled from it (the default model's)."""
    runs = zoo.all_models() + default.all_models() + [default.run / "ensemble", default.folder(default.distilled)]
    return [str(p) for p in runs]
