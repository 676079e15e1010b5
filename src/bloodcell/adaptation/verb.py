"""``bloodcell adapt``: adapt a model to a lab's own labelled cells and write a new model folder."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bloodcell.adaptation.calibrate import calibrate_adapted
from bloodcell.adaptation.holdout import HELD_OUT_SHARE, split_holdout
from bloodcell.adaptation.imagenet import ARCHITECTURE as IMAGENET_ARCHITECTURE
from bloodcell.adaptation.imagenet import write_imagenet_member
from bloodcell.adaptation.scale import matched_crop
from bloodcell.adaptation.tree import adapt_tree, networks_in
from bloodcell.adaptation.tune import TuneSettings
from bloodcell.core.errors import ConfigError, DataError, ModelError
from bloodcell.core.files import atomic_write_json, check_writable_folder, staged_folder
from bloodcell.core.model_choice import resolve_model
from bloodcell.core.model_folder import adapt_start, is_model_folder, read_meta, write_meta
from bloodcell.core.preprocess import PreprocessConfig
from bloodcell.data import open_dataset
from bloodcell.networks.ensemble import write_ensemble_meta


@dataclass
class AdaptResult:
    """What :func:`adapt` wrote and measured."""

    out: Path
    adaptation: dict
    seconds: float
    #: ``model.onnx`` written beside the weights, or why not (``None``: not asked for).
    onnx: str | None = None


def _check_out(out: Path, model: Path, force: bool) -> None:
    if out.resolve() == model.resolve() or model.resolve() in out.resolve().parents:
        raise ConfigError(f"{out}: the output would be inside the model folder {model}; choose another --out.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ConfigError(f"{out} already exists; choose another --out or pass --force to replace it.")
    check_writable_folder(out.parent, "output folder's parent", "--out")


def _model_folders(model) -> tuple[Path, Path]:
    """The model named (or the default model) and the folder adaptation starts from: itself, or the model
    it ships for adaptation (:func:`~bloodcell.core.model_folder.adapt_start`)."""
    path = resolve_model(model)
    if not is_model_folder(path):
        raise ModelError(f"{path}: adaptation needs a model folder (model.json + weights), not an .onnx file.")
    return path, adapt_start(path)


def _read_data(data, class_names: tuple[str, ...]):
    """The dataset and its class indices (in the model's classes); one-line errors for what cannot be adapted on."""
    ds = open_dataset(data)
    labels = [s.label for s in ds.samples]
    if any(x is None for x in labels):
        raise DataError(f"{data}: {sum(x is None for x in labels)} image(s) have no class label; adaptation needs "
                        "labelled cells (a class-folder tree or a manifest with a label column).")
    unknown = sorted(set(labels) - set(class_names))
    if unknown:
        raise DataError(f"{data}: class(es) {unknown} are not among the model's classes {list(class_names)}; "
                        "adaptation keeps the model's classes. Remove those folders or rows.")
    if len(set(labels)) < 2:
        raise DataError(f"{data}: adaptation needs labelled cells of at least two classes; found {sorted(set(labels))}.")
    return ds, np.array([class_names.index(x) for x in labels], dtype=np.int64)


def _counts(labels: np.ndarray, names) -> dict[str, int]:
    return {names[c]: int((labels == c).sum()) for c in sorted(set(labels.tolist()))}


def _record(models: tuple[Path, Path], data, settings: TuneSettings, names, labels, split, held_out: float,
            drop_absent: bool, scale: dict) -> dict:
    """The adaptation's record for ``model.json`` and the card (the networks and figures are added later);
    ``models``: the model named and the one adapted (``original_model`` is recorded when they differ)."""
    named, src = models
    present = {names[i] for i in labels}
    return {
        **({"original_model": str(named)} if named != src else {}),
        "adapted_from": str(src), "data": str(data), "method": settings.method, "settings": settings.to_dict(),
        "classes_absent_from_data": [c for c in names if c not in present],
        "absent_classes": "dropped" if drop_absent else "kept",
        "fitting_cells": _counts(labels[split[0]], names), "held_out_cells": _counts(labels[split[1]], names),
        "held_out_share": held_out, "seed": settings.seed, "scale": scale,
    }


def _reporter(progress: bool, status_file):
    bar = tqdm(total=100, desc="adapting", unit="%", disable=None if progress else True)
    state = {"last": 0}

    def report(fraction: float, message: str) -> None:
        fraction = float(min(max(fraction, 0.0), 1.0))
        if not bar.disable:
            step = int(round(fraction * 100))
            bar.update(max(0, step - state["last"]))
            state["last"] = max(state["last"], step)
            bar.set_postfix_str(message[:60], refresh=False)
        if status_file is not None:
            atomic_write_json(status_file, {"progress": round(fraction, 4), "message": message})

    return report, bar


def adapt(data, out, *, model=None, method: str = "finetune", epochs: int | None = None, copies: int | None = None,
          batch_norm: str = "lab", match_scale: bool = True, drop_absent: bool = False, imagenet_member: bool = True,
          held_out: float = HELD_OUT_SHARE, seed: int = 0, target_accuracy: float = 0.995, force: bool = False,
          export: bool = True, progress: bool = True, status_file=None) -> AdaptResult:
    """Adapt a model to a lab's labelled cells and write the result as a new model folder (``bloodcell adapt``).

    Parameters
    ----------
    data, out : str or Path
        The lab's labelled cells (class folders, ``.npz`` or CSV manifest; a few per class or more); the model
        folder to write (``predict``, ``serve``, ``evaluate``, ``export`` take it).
    model : str or Path, optional
        The model folder to start from (default: the packaged model, or ``$BLOODCELL_MODEL``), or the model
        it ships for adaptation (``model.json["adapt_from"]``: the default model's is its teacher ensemble).
    method, epochs, copies, batch_norm, drop_absent
        How the networks are adapted (:mod:`~bloodcell.adaptation.tune`): finetune, linear or prototype;
        passes over the views; cells in all with jittered copies (:mod:`~bloodcell.adaptation.jitter`;
        ``None``: 5 and 2); keep the batch-norm statistics or re-estimate them on the lab's cells
        (``"lab"``); remove the classes the data lacks instead of keeping them.
    imagenet_member, match_scale : bool
        Add an ImageNet network, its classifier fitted to the same cells, as a voting member (see
        :mod:`bloodcell.adaptation.imagenet`); scale the crop so the lab's cells appear at the size the
        model learnt (:mod:`bloodcell.adaptation.scale`).
    held_out, seed, target_accuracy, force, export, progress
        Share of each class held out to calibrate (:mod:`bloodcell.adaptation.holdout`); seed of that
        draw and of training; accuracy the abstention threshold must reach on the held-out cells;
        replace ``out`` if it exists; write ``model.onnx`` (about 10 s; a failed export is said in
        ``AdaptResult.onnx`` and the model predicts through PyTorch); show a progress bar.
    status_file : str or Path, optional
        A JSON file rewritten with ``{"progress", "message"}`` as the work goes (job runners).

    Returns
    -------
    AdaptResult
        The folder, the record stored in its ``model.json`` (its ``seconds``: the adaptation's), wall time, export.
    """
    start, settings = time.perf_counter(), _settings(method, epochs, copies, batch_norm, seed, held_out)
    (named, src), out = _model_folders(model), Path(out)
    _check_out(out, named, force)
    names = tuple(read_meta(src)["preprocess"]["class_names"])
    ds, labels = _read_data(data, names)
    fit_idx, held_idx = split_holdout(labels, held_out, seed)
    scale = _scale(src, ds.select(fit_idx.tolist()), settings, match_scale)  # sets the crop the record shows
    record = _record((named, src), data, settings, names, labels, (fit_idx, held_idx), held_out, drop_absent, scale)
    keep = [c for i, c in enumerate(names) if i in set(labels.tolist())] if drop_absent else None
    report, bar = _reporter(progress, status_file)
    try:
        with staged_folder(out) as staging:
            report(0.0, f"adapting {named.name} to {len(fit_idx)} cells, {len(held_idx)} held out")
            _write_networks(staging, src, ds.select(fit_idx.tolist()), settings, keep, imagenet_member, record,
                            report, progress)
            report(0.85, "calibrating on the held-out cells and refitting the out-of-distribution check")
            calibrate_adapted(staging, named, ds, fit_idx, held_idx, record, target_accuracy, progress)
            record["seconds"] = round(time.perf_counter() - start, 1)
            _store_seconds(staging, record["seconds"])
        onnx = _export(out, report) if export else None
        report(1.0, f"done: {out}")
    finally:
        bar.close()
    return AdaptResult(out, record, time.perf_counter() - start, onnx)


def _export(out: Path, report) -> str:
    """``model.onnx`` for the adapted model; a failure is said, not raised (the model predicts through PyTorch)."""
    from bloodcell.core.errors import BloodcellError
    from bloodcell.packaging.onnx import export_onnx

    report(0.95, "exporting to ONNX")
    try:
        return f"written: {export_onnx(out)}"
    except (BloodcellError, OSError, RuntimeError) as e:
        return f"failed ({str(e).splitlines()[0][:200]}); it predicts through PyTorch"


def _write_networks(staging: Path, src: Path, fit_data, settings: TuneSettings, keep, imagenet_member: bool,
                    record: dict, report, progress: bool) -> None:
    """Write the adapted copy of ``src`` into ``staging`` (as ``member_0`` beside the ImageNet member, or alone)."""
    adapted = staging / "member_0" if imagenet_member else staging
    share = 0.75 if imagenet_member else 0.85
    record["networks"] = adapt_tree(src, adapted, fit_data, settings, keep, lambda f, m: report(share * f, m), [0],
                                    networks_in(src), progress)
    if imagenet_member:
        report(share, "fitting the ImageNet network's classifier to the same cells")
        _add_imagenet_member(staging, src, fit_data, record, settings.seed, progress)


def _add_imagenet_member(staging: Path, src: Path, fit_data, record: dict, seed: int, progress: bool) -> None:
    """Write the ImageNet member beside the adapted model (``member_1``) and the ensemble that joins them."""
    adapted = PreprocessConfig.from_dict(read_meta(staging / "member_0")["preprocess"])
    record["networks"].append(write_imagenet_member(staging / "member_1", fit_data, adapted, seed, progress))
    weights = [float(networks_in(src)), 1.0]  # each network of the adapted model and the ImageNet network one vote
    write_ensemble_meta(staging, 2, weights,
                        sources=[f"{src}, adapted", f"{IMAGENET_ARCHITECTURE} with ImageNet weights"])
    record["imagenet_member"] = {"architecture": IMAGENET_ARCHITECTURE, "weights": weights}


def _settings(method: str, epochs: int | None, copies: int | None, batch_norm: str, seed: int,
              held_out: float) -> TuneSettings:
    if not 0.0 <= held_out < 1.0:
        raise ConfigError(f"--held-out must be a share in [0, 1), got {held_out!r}.")
    given = {k: v for k, v in {"epochs": epochs, "copies": copies}.items() if v is not None}
    if method == "prototype" and epochs is not None:
        raise ConfigError("--epochs sets the training of --method finetune or linear; --method prototype trains "
                          "nothing (its classifier rows are the cells' class means).")
    settings = TuneSettings(method=method, batch_norm=batch_norm, seed=seed, **given)
    settings.check()
    return settings


def _scale(src: Path, fit_data, settings: TuneSettings, match_scale: bool) -> dict:
    """Measure the lab's cell scale and set ``settings.crop_fraction`` when it differs (see ``scale``)."""
    if not match_scale:
        return {"applied": False, "reason": "not asked for (match_scale off)"}
    scale = matched_crop(read_meta(src), fit_data)
    if scale["applied"]:
        settings.crop_fraction = scale["crop_fraction"]["adapted"]
    return scale


def _store_seconds(folder: Path, seconds: float) -> None:
    meta = read_meta(folder)
    meta["adaptation"]["seconds"] = seconds
    meta["model_card"]["adaptation"]["seconds"] = seconds
    write_meta(folder, meta)

