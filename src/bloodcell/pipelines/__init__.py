"""Pipelines: the default model and the model zoo, from a split manifest to the packaged model
and the README's table, resumable.

``bloodcell pipeline default`` (``make train-default``)
    trains the default model's members side by side, calibrates each on the validation
    split, combines them, calibrates the ensemble (plain and with test-time augmentation),
    evaluates it once on the test split and packages it as the default model.
``bloodcell pipeline zoo`` (``make zoo``)
    trains the study CNNs and the three-architecture ensemble and calibrates every model.
``bloodcell pipeline zoo-table`` (``make zoo-table``)
    compares every zoo model, each default member and the default ensemble on the test split.

What each pipeline trains is one spec (:mod:`bloodcell.pipelines.spec`); a rerun after a stop
skips the finished members and resumes the interrupted ones (:mod:`bloodcell.pipelines.members`).
"""

from __future__ import annotations

from pathlib import Path

from bloodcell.core.errors import ConfigError
from bloodcell.pipelines import spec as specs
from bloodcell.pipelines.members import MemberFailed, train_members
from bloodcell.pipelines.steps import StepFailed, calibrate_models, compare_models, package_default_model

PIPELINES = ("default", "zoo", "zoo-table")

__all__ = ["PIPELINES", "MemberFailed", "StepFailed", "pipeline"]


def _check_data(data: Path) -> Path:
    if not data.exists():
        raise ConfigError(f"{data}: the training data is not there. Make the split manifest first, e.g. "
                          f"`bloodcell split DATA -o {data}` (`make` does it), or pass --data.")
    return data


def pipeline(
    name: str,
    *,
    data: str | Path = "runs/pbc_split.csv",
    default_run: str | Path = specs.DEFAULT_RUN,
    zoo_run: str | Path = specs.ZOO_RUN,
    package: str | Path | None = None,
    card: str | Path | None = "cards/default.yaml",
    report: str | Path = "reports/zoo",
    seeds=specs.DEFAULT_SEEDS,
    recipe: str = specs.DEFAULT_RECIPE,
    study=specs.ZOO_STUDY,
    ensemble_epochs: int = specs.ZOO_ENSEMBLE_EPOCHS,
    zoo_args=specs.ZOO_CPU,
    train_args=(),
    jobs: int | None = None,
    timeout: float | None = None,
    say=print,
) -> dict:
    """Run a pipeline (resumable: rerun it after a stop).

    Parameters
    ----------
    name : {"default", "zoo", "zoo-table"}
        Which pipeline (see the module documentation).
    data : str or Path
        The split manifest (``bloodcell split``) every member trains, calibrates and is tested on.
    default_run, zoo_run : str or Path
        Run folders of the default model and of the zoo (members, logs, ensemble, test metrics).
    package : str or Path, optional
        Where ``default`` packages the model (default: the package's ``bloodcell/default_model``).
    card : str or Path, optional
        The default model's card sections (YAML or JSON).
    report : str or Path
        Output folder of ``zoo-table`` (``compare.md``, ``compare.json``, ``compare.png``).
    seeds : sequence of int
        One default-model member per seed.
    recipe : str
        The default members' training recipe.
    study : sequence of str
        The zoo's study CNNs as ``RECIPE:EPOCHS``.
    ensemble_epochs : int
        Epochs of the zoo's three-architecture ensemble (0 leaves it out).
    zoo_args : sequence of str
        ``bloodcell train`` arguments of every fresh zoo member (the CPU-feasible size).
    train_args : sequence of str
        Further ``bloodcell train`` arguments of every fresh member, e.g.
        ``["--max-train-samples", "64", "--epochs", "1", "--image-size", "32"]``.
    jobs : int, optional
        Members trained at once, one thread each (default: as many as CPU cores allow).
    timeout : float, optional
        Seconds a member may train before it is stopped (default: no limit).
    say : callable
        Receives progress lines.

    Returns
    -------
    dict
        ``pipeline``, ``trained`` (members trained by this call) and the outputs of the
        later steps (``calibrated``, ``ensemble``, ``test_metrics``, ``package``, ``report``...).

    Raises
    ------
    ConfigError
        For an unknown pipeline, missing data or a malformed member list.
    MemberFailed
        When a member's training fails (the end of its log is printed).
    StepFailed
        When a later step fails (its message is printed).
    """
    if name not in PIPELINES:
        raise ConfigError(f"Unknown pipeline {name!r}; choose one of {', '.join(PIPELINES)}.")
    data = _check_data(Path(data))
    default = specs.default_spec(data, default_run, seeds=seeds, recipe=recipe, train_args=train_args)
    zoo = specs.zoo_spec(data, zoo_run, study=study, ensemble_epochs=ensemble_epochs, cpu_args=zoo_args,
                         train_args=train_args)
    if name == "zoo-table":
        return {"pipeline": name, **compare_models(specs.compare_list(zoo, default), data, Path(report), say=say)}
    chosen = default if name == "default" else zoo
    trained = train_members(chosen, jobs=jobs, timeout=timeout, say=say)
    result = {"pipeline": name, "trained": trained,
              "calibrated": [str(p) for p in calibrate_models(chosen.all_models(), data, say=say)]}
    if name == "default":
        result.update(package_default_model(default, None if package is None else Path(package),
                                            None if card is None else Path(card), say=say))
    return result
