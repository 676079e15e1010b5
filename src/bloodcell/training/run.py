"""``bloodcell train`` end to end: data, starting point, distributed setup, then :func:`fit`."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from bloodcell.core.classes import CLASSES
from bloodcell.core.errors import ConfigError
from bloodcell.core.files import check_writable_folder
from bloodcell.core.model_folder import is_trained, read_meta
from bloodcell.core.preprocess import PreprocessConfig
from bloodcell.networks import make_ensemble
from bloodcell.training import distributed
from bloodcell.training.config import TrainConfig, load_config
from bloodcell.training.data import load_training_data, measure_cell_share
from bloodcell.training.outputs import undone_on_failure
from bloodcell.training.prepare import check_image_size, existing_run, make_preprocess
from bloodcell.training.state import latest_meta
from bloodcell.training.teacher import teacher_folder
from bloodcell.training.trainer import FitResult, fit
from bloodcell.training.warmstart import InitSource, open_init

ENSEMBLE_KEYS = ("members", "weights")


def _with_init(cfg: TrainConfig, explicit: tuple[str, ...]) -> tuple[TrainConfig, InitSource | None]:
    """The config with the init model's architecture (and its resolved folder), and the init model."""
    if not cfg.init:
        return cfg, None
    init = open_init(cfg.init)
    model = cfg.model if "model" in explicit else init.architecture
    init.check_fits(model)
    init_spec = cfg.init if cfg.init == "default" else str(Path(cfg.init).resolve())
    return dataclasses.replace(cfg, model=model, init=init_spec), init


def with_framing(pre: PreprocessConfig, cfg: TrainConfig, explicit) -> PreprocessConfig:
    """``pre`` framed as the config says: ``cell`` measures the cell's share on the training images.

    Starting from a model, its framing is kept unless the config sets ``framing`` explicitly.
    """
    if cfg.framing == pre.framing or ("framing" not in explicit and cfg.framing == "centre"):
        return pre
    if cfg.framing == "centre":
        return dataclasses.replace(pre, framing="centre", cell_share=None)
    return dataclasses.replace(pre, framing="cell", cell_share=measure_cell_share(cfg.data, pre.crop_fraction))


def _train_into(cfg: TrainConfig, out: Path, resume: bool, explicit: tuple[str, ...], progress: bool,
                info: distributed.DistInfo) -> FitResult:
    check_writable_folder(out, "run folder", "--out")
    saved = latest_meta(out) if resume else None
    if not resume and existing_run(out):
        raise ConfigError(f"{out} already holds a training run. Continue it with --resume, "
                          "or choose a new --out folder.")
    init = None
    if saved is not None:
        pre0 = PreprocessConfig.from_dict(saved["preprocess"])
    else:
        cfg, init = _with_init(cfg, explicit)
        pre0 = with_framing(make_preprocess(cfg, CLASSES, init, explicit=set(explicit)), cfg, explicit)
    check_image_size(cfg.model, pre0.image_size)
    if cfg.teacher:  # a missing teacher is said before the data loads; a path is stored resolved for --resume
        folder = teacher_folder(cfg.teacher)
        if cfg.teacher != "default":
            cfg = dataclasses.replace(cfg, teacher=str(folder.resolve()))
    if not info.is_main:
        distributed.barrier()  # rank 0 fills the decoded-image cache first
    data, ids = load_training_data(cfg, pre0, progress=progress and info.is_main)
    if info.is_main:
        distributed.barrier()
    pre = dataclasses.replace(pre0, class_names=data.class_names)
    if info.is_main and progress:
        _report_data(data.info)
    split_ids = ids if data.info.get("split") == "stratified" else None

    def teacher_images(teacher_pre: PreprocessConfig) -> np.ndarray:
        other, other_ids = load_training_data(cfg, teacher_pre, progress=progress and info.is_main)
        if list(other_ids["train"]) != list(ids["train"]):
            raise ConfigError(f"{cfg.data}: the teacher's copy of the training images came out in another order; "
                              "give the data as a split manifest (bloodcell split) so both read the same rows.")
        return other.train_images

    return fit(cfg, data, out, pre=pre, init=init, resume=resume, progress=progress, split_ids=split_ids,
               teacher_images=teacher_images)


def run_training(cfg: TrainConfig, out: str | Path, *, resume: bool = False, explicit: tuple[str, ...] = (),
                 progress: bool = True) -> FitResult:
    """Train as ``cfg`` says into the run folder ``out``.

    Parameters
    ----------
    cfg : TrainConfig
        The configuration (recipe plus overrides).
    out : path
        Run folder; it becomes the model folder (best epoch) and holds the checkpoint.
    resume : bool
        Continue the run in ``out`` from its last complete epoch.
    explicit : tuple of str
        Keys the user set on the command line; with ``init``, an explicit
        ``model`` must match the init model and an explicit ``image_size``
        replaces the init model's.
    progress : bool
        Show progress bars.

    Raises
    ------
    ConfigError
        When ``out`` cannot be written, already holds a run (without ``resume``), or the settings are invalid.
    """
    out = Path(out)
    owns_group = not distributed.current().active
    info = distributed.setup(cfg.device)
    try:
        with undone_on_failure(out, active=info.is_main):
            return _train_into(cfg, out, resume, explicit, progress, info)
    finally:
        if owns_group:
            distributed.teardown()


def is_ensemble_recipe(recipe: dict) -> bool:
    return "members" in recipe


def _member_configs(recipe: dict, overrides: dict | None, source: str) -> tuple[list[str], list[TrainConfig]]:
    unknown = set(recipe) - set(ENSEMBLE_KEYS)
    if unknown:
        raise ConfigError(f"Ensemble recipe ({source}) has unknown keys {sorted(unknown)}; it takes "
                          f"{', '.join(ENSEMBLE_KEYS)} (member settings belong in the member recipes).")
    members = recipe.get("members")
    if not isinstance(members, list) or len(members) < 2 or not all(isinstance(m, str) for m in members):
        raise ConfigError(f"Ensemble recipe ({source}): members must list two or more recipe names, got {members!r}.")
    return members, [load_config(recipe=m, overrides=overrides) for m in members]


def run_ensemble_recipe(recipe: dict, out: str | Path, *, overrides: dict | None = None, resume: bool = False,
                        explicit: tuple[str, ...] = (), progress: bool = True, source: str = "recipe") -> Path:
    """Train every member recipe of an ensemble recipe into ``out/<member>``, then combine them.

    Parameters
    ----------
    recipe : dict
        ``{"members": [recipe names], "weights": [floats] or null}``.
    out : path
        Parent folder: members go to ``out/<member>``, the ensemble to ``out/ensemble``.
    overrides : dict
        Config overrides applied to every member (e.g. a smaller image size).

    Returns
    -------
    Path
        The ensemble folder.
    """
    members, configs = _member_configs(recipe, overrides, source)  # every member checked before training
    out = Path(out)
    owns_group = not distributed.current().active
    info = distributed.setup(configs[0].device)
    try:
        folders = [out / name for name in members]
        for number, (name, cfg, folder) in enumerate(zip(members, configs, folders), start=1):
            if resume and is_trained(folder):
                done = read_meta(folder)["training"]["stopped"]
                if info.is_main:
                    print(f"Member {name}: already trained ({done.replace('_', ' ')}), kept.", file=sys.stderr)
                continue
            if info.is_main:
                print(f"Member {name} ({number}/{len(members)}) -> {folder}", file=sys.stderr)
            run_training(cfg, folder, resume=resume, explicit=explicit, progress=progress)
        target = out / "ensemble"
        if info.is_main:
            make_ensemble(folders, target, weights=recipe.get("weights"), overwrite=True)
        distributed.barrier()
        return target
    finally:
        if owns_group:
            distributed.teardown()


def _report_data(info: dict) -> None:
    notes = []
    if info.get("exact_duplicates_dropped"):
        notes.append(f"{info['exact_duplicates_dropped']} exact duplicate file(s) kept once")
    if info.get("near_duplicate_groups"):
        notes.append(f"{info['near_duplicate_groups']} near-duplicate group(s) kept on one side of the split")
    if info.get("problems"):
        notes.append(f"{info['problems']} item(s) skipped while reading, e.g. {info['problem_examples'][0]}")
    if info.get("excluded_test_images"):
        notes.append(f"{info['excluded_test_images']} test image(s) left out")
    split = ("the data's own train/val split" if info.get("split") == "given"
             else f"a stratified {info.get('val_fraction', 0):.0%} validation split (seed {info.get('seed')}, split.csv)")
    print(f"Data {info.get('source')}: {info.get('train_images')} training / {info.get('val_images')} validation "
          f"images from {split}" + (f"; {'; '.join(notes)}" if notes else "") + ".", file=sys.stderr)
