"""``bloodcell pipeline``: run the default-model or zoo pipeline (see :mod:`bloodcell.pipelines`)."""

from __future__ import annotations

from pathlib import Path

from bloodcell.core.errors import ConfigError
from bloodcell.core.settings import check_workers
from bloodcell.pipelines import PIPELINES
from bloodcell.pipelines import spec as specs
from bloodcell.pipelines.members import train_members
from bloodcell.pipelines.steps import calibrate_models, compare_models, package_default_model


def _check_request(name: str, data: Path, jobs: int | None, timeout: float | None) -> Path:
    """The split manifest, once the pipeline's name, the manifest and the limits are known good."""
    _check_limits(jobs, timeout)
    if name not in PIPELINES:
        raise ConfigError(f"Unknown pipeline {name!r}; choose one of {', '.join(PIPELINES)}.")
    if not data.exists():
        raise ConfigError(f"{data}: the training data is not there. Make the split manifest first, e.g. "
                          f"`bloodcell split DATA -o {data}` (`make` does it), or pass --data.")
    return data


def _check_limits(jobs: int | None, timeout: float | None) -> None:
    check_workers(jobs, "--jobs")
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"--timeout is the seconds a member may train: more than 0, got {timeout:g}.")


def pipeline(name: str, *, data: str | Path = "runs/pbc_split.csv", default_run: str | Path = specs.DEFAULT_RUN,
             zoo_run: str | Path = specs.ZOO_RUN, package: str | Path | None = None,
             card: str | Path | None = "cards/default.yaml", report: str | Path = "reports/zoo",
             seeds=specs.DEFAULT_SEEDS, recipe: str = specs.DEFAULT_RECIPE,
             distilled_seed: int = specs.DISTILLED_SEED, study=specs.ZOO_STUDY,
             ensemble_epochs: int = specs.ZOO_ENSEMBLE_EPOCHS, zoo_args=specs.ZOO_CPU, train_args=(),
             jobs: int | None = None, timeout: float | None = None, say=print) -> dict:
    """Run a pipeline (resumable: rerun it after a stop); ``bloodcell pipeline NAME``.

    Parameters
    ----------
    name : {"default", "zoo", "zoo-table"}
        Which pipeline (see the module documentation).
    data : str or Path
        The split manifest (``bloodcell split``) members train, calibrate and are tested on.
    default_run, zoo_run : str or Path
        Run folders of the default model and of the zoo (members, logs, ensembles, test metrics).
    package, card, report : str or Path
        Where ``default`` packages the model (default: the installed ``default_model``), its card; ``zoo-table``'s output.
    seeds, recipe, distilled_seed : sequence of int, str, int
        The default model: one member per seed, each trained from ``recipe``; the seed of the network
        distilled from their ensemble (the default model predicts with it, ``adapt`` starts from the ensemble).
    study, ensemble_epochs, zoo_args
        The zoo: study CNNs as ``RECIPE:EPOCHS``; epochs of the three-architecture ensemble
        (0 leaves it out); ``bloodcell train`` arguments of every zoo member.
    train_args : sequence of str
        Further ``bloodcell train`` arguments of every fresh member, e.g. ``["--epochs", "1"]``.
    jobs, timeout : int, float, optional
        Members trained at once, one thread each (default: CPU cores); seconds a member may
        train before it is stopped (default: no limit).
    say : callable
        Receives progress lines.

    Returns
    -------
    dict
        ``pipeline``, ``trained`` (members trained by this call), ``calibrated`` and the later steps' outputs
        (``ensemble``, ``distilled``, ``trained_distilled``, ``test_metrics``, ``package``; ``compared``, ``report``).

    Raises
    ------
    ConfigError
        Unknown pipeline, missing data or a malformed member list.
    MemberFailed, BloodcellError
        A member's training failed (the end of its log is printed), or a later step refused its input.
    """
    data = _check_request(name, Path(data), jobs, timeout)
    default = specs.default_spec(data, default_run, seeds=seeds, recipe=recipe, distilled_seed=distilled_seed,
                                 train_args=train_args)
    zoo = specs.zoo_spec(data, zoo_run, study=study, ensemble_epochs=ensemble_epochs, cpu_args=zoo_args,
                         train_args=train_args)
    if name == "zoo-table":
        return {"pipeline": name, **compare_models(specs.compare_list(zoo, default), data, Path(report), say=say)}
    chosen = default if name == "default" else zoo
    result = {"pipeline": name, "trained": train_members(chosen, jobs=jobs, timeout=timeout, say=say)}
    result["calibrated"] = [str(p) for p in calibrate_models(chosen.all_models(), data, say=say)]
    if name == "default":
        result.update(package_default_model(default, Path(package) if package else None, Path(card) if card else None,
                                            say=say))
    return result
