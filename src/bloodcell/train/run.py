"""``bloodcell train`` end to end: data, starting point, distributed setup, then :func:`fit`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..classes import CLASSES
from ..errors import ConfigError
from ..preprocess import PreprocessConfig
from . import distributed
from .config import TrainConfig
from .trainer import FitResult, _existing_run, fit, make_preprocess
from .splits import load_training_data, write_split_csv
from .state import latest_meta
from .warmstart import open_init


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
    """
    out = Path(out)
    info = distributed.setup(cfg.device)
    try:
        saved = latest_meta(out) if resume else None
        if not resume and _existing_run(out):
            raise ConfigError(f"{out} already holds a training run. Continue it with --resume, "
                              "or choose a new --out folder.")
        init = None
        if saved is not None:
            pre0 = PreprocessConfig.from_dict(saved["preprocess"])
        else:
            if cfg.init:
                init = open_init(cfg.init)
                if "model" in explicit and cfg.model != init.architecture:
                    raise ConfigError(f"--model {cfg.model} contradicts --init {cfg.init}, a {init.architecture!r} "
                                      "model. Drop --model (the init model's architecture is used).")
                init_spec = cfg.init if cfg.init == "default" else str(Path(cfg.init).resolve())
                cfg = dataclasses.replace(cfg, model=init.architecture, init=init_spec)
            pre0 = make_preprocess(cfg, CLASSES, init, image_size_explicit="image_size" in explicit)
        if not info.is_main:
            distributed.barrier()  # rank 0 fills the decoded-image cache first
        data, ids = load_training_data(cfg, pre0, progress=progress and info.is_main)
        if info.is_main:
            distributed.barrier()
        pre = dataclasses.replace(pre0, class_names=data.class_names)
        if info.is_main and data.info.get("split") == "stratified":
            out.mkdir(parents=True, exist_ok=True)
            write_split_csv(out / "split.csv", ids["train"], data.train_labels, ids["val"], data.val_labels,
                            data.class_names)
        return fit(cfg, data, out, pre=pre, init=init, resume=resume, progress=progress)
    finally:
        distributed.teardown()
