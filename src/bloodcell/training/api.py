"""``bloodcell.train``: the Python verb behind ``bloodcell train`` (recipe, overrides, resume, ensembles)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from bloodcell.core.errors import ConfigError
from bloodcell.core.files import check_writable_folder
from bloodcell.core.model_folder import read_meta
from bloodcell.training.config import (
    TrainConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    read_yaml,
    recipe_path,
)
from bloodcell.training.outputs import CONFIG_FILE, undone_on_failure
from bloodcell.training.run import is_ensemble_recipe, run_ensemble_recipe, run_training
from bloodcell.training.trainer import FitResult, TrainingInterrupted


@dataclass
class EnsembleResult:
    """An ensemble recipe's outcome: the combined model folder and each member's validation metrics."""

    run_dir: Path
    members: dict[str, dict]
    weights: list | None


@dataclass
class _Plan:
    """What a ``train`` call will do, decided from its arguments alone."""

    name: str | None
    out: Path | None
    resume: bool
    overrides: dict
    recipe: dict
    config: TrainConfig | None

    @property
    def explicit(self) -> tuple[str, ...]:
        """Keys set by the recipe or config file, or on the command line."""
        return tuple(dict.fromkeys(str(k).replace("-", "_") for k in [*self.recipe, *self.overrides]))


def _plan(recipe: str | None, config: str | Path | None, out, resume, overrides: dict) -> _Plan:
    if recipe and config:
        raise ConfigError("Give either --recipe NAME or --config PATH, not both.")
    resume_dir = resume if isinstance(resume, (str, Path)) else None
    if resume_dir is not None and out is not None and Path(out) != Path(resume_dir):
        raise ConfigError(f"--resume {resume_dir} and --out {out} name different folders; give one.")
    out = out if out is not None else resume_dir
    if resume and out is None:
        raise ConfigError("--resume needs the run folder: --resume RUN_DIR (or --out RUN_DIR --resume).")
    name = recipe or (Path(config).stem if config else None)
    data = read_yaml(recipe_path(recipe)) if recipe else (read_yaml(config) if config else {})
    plan = _Plan(name, Path(out) if out is not None else None, bool(resume), overrides, data, None)
    if is_ensemble_recipe(data):
        return plan
    saved = plan.out / CONFIG_FILE if plan.out is not None else None
    if resume and not (recipe or config) and saved.is_file():
        # Resuming a run folder alone continues it with the settings it was started with.
        plan.config = apply_overrides(config_from_dict(read_yaml(saved), f"{plan.out}/{CONFIG_FILE}"),
                                      overrides, "command line")
    else:
        plan.config = load_config(recipe, config, overrides)
    return plan


def _overrides(overrides: dict | None, settings: dict) -> dict:
    return {**(overrides or {}), **settings}


def show_config(*, recipe: str | None = None, config: str | Path | None = None, out: str | Path | None = None,
                resume: bool | str | Path = False, overrides: dict | None = None, **settings) -> str:
    """The YAML config ``train`` would run with these arguments (each member's, for an ensemble recipe).

    Takes the same arguments as :func:`train`; nothing is trained or written.
    """
    plan = _plan(recipe, config, out, resume, _overrides(overrides, settings))
    if plan.config is not None:
        return plan.config.to_yaml()
    return "".join(f"# member {member}\n" + load_config(recipe=member, overrides=plan.overrides).to_yaml()
                   for member in plan.recipe["members"])


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM stops training like Ctrl-C (checkpoint kept); forked helper processes just exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    main_pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != main_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _train_ensemble(plan: _Plan, progress: bool) -> EnsembleResult:
    out = plan.out or Path("runs") / plan.name
    try:
        with undone_on_failure(out, names=()):
            check_writable_folder(out, "run folder", "--out")
            target = run_ensemble_recipe(plan.recipe, out, overrides=plan.overrides, resume=plan.resume,
                                         explicit=plan.explicit, progress=progress, source=plan.name)
    except TrainingInterrupted as e:
        raise TrainingInterrupted(f"{e}\nTo continue the whole ensemble: bloodcell train --recipe {plan.name} "
                                  f"--out {out} --resume (with the same options)") from None
    members = {m: read_meta(out / m).get("metrics", {}) for m in plan.recipe["members"]}
    return EnsembleResult(target, members, plan.recipe.get("weights"))


def train(*, recipe: str | None = None, config: str | Path | None = None, data: str | Path | None = None,
          out: str | Path | None = None, resume: bool | str | Path = False, progress: bool = True,
          overrides: dict | None = None, **settings) -> FitResult | EnsembleResult:
    """Train a model from a recipe and overrides, as ``bloodcell train`` does.

    Parameters
    ----------
    recipe : str, optional
        A shipped recipe (``bloodcell train --list-recipes``); an ensemble
        recipe trains each member into ``out/<member>`` and combines them in
        ``out/ensemble``.
    config : path, optional
        A YAML recipe file (not together with ``recipe``).
    data : path, optional
        A dataset folder, ``.npz``, or split manifest CSV (the ``data`` config key).
    out : path, optional
        The run folder; default ``runs/<recipe, config file stem or model>``.
    resume : bool or path
        Continue the run in ``out`` (or in the folder given here) from its
        last complete epoch. Without a recipe or config, the run's saved
        ``config.yaml`` is used, with ``overrides`` on top.
    progress : bool
        Show progress bars and per-epoch lines on stderr.
    overrides : dict, optional
        Config keys to set (``{"lr": 3e-4, "augment.hflip": True}``), as ``--set`` does.
    **settings
        Any config key as a keyword (``epochs=5``, ``image_size=64``,
        ``init="default"``); these win over ``overrides``.

    Returns
    -------
    FitResult or EnsembleResult
        The run folder, history, best epoch's metrics and why training
        stopped; for an ensemble recipe, the ensemble folder and each
        member's metrics.

    Raises
    ------
    ConfigError, DataError, ModelError
        On invalid settings, unusable data, an unwritable ``out``, or a run
        folder that holds another run.
    TrainingInterrupted
        On Ctrl-C or SIGTERM, once the last complete epoch is saved.

    Examples
    --------
    >>> import bloodcell
    >>> bloodcell.train(recipe="cpu_fast_cnn", data="split.csv", out="runs/cnn", epochs=5)  # doctest: +SKIP
    >>> bloodcell.train(resume="runs/cnn", epochs=10)  # doctest: +SKIP
    """
    if data is not None:
        settings["data"] = str(data)
    plan = _plan(recipe, config, out, resume, _overrides(overrides, settings))
    with sigterm_as_interrupt():
        if plan.config is None:
            return _train_ensemble(plan, progress)
        out = plan.out or Path("runs") / (plan.name or plan.config.model)
        return run_training(plan.config, out, resume=plan.resume, explicit=plan.explicit, progress=progress)
