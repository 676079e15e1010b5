"""Turn a trained model folder into the default model that ships inside the package.

``bloodcell export --format default MODEL --data SPLIT.csv --card CARD.yaml``
runs :func:`package_default`:

1. copies the model folder (an ensemble with its members) to a staging folder,
   optionally storing the weights (PyTorch and ONNX) as float16 to halve their size;
2. fits the out-of-distribution score (:mod:`bloodcell.ood.score`) on training
   images of ``data`` (at most ``per_class`` per class) and measures its
   threshold against held-out validation images and generated non-cell images;
   when the model was trained to handle other labs' images (its recorded
   augmentation changes scale, colour, stain or camera), the fitting and held-out
   cells are joined by copies drawn through that augmentation, so a cell from
   another lab counts as a cell and only non-cells are flagged;
3. merges the model card (intended use, data, metrics, limitations, citation,
   licence) into ``model.json`` and checks that every required section is there;
4. exports ``model.onnx`` (with the ``ood_score`` output) and checks that
   onnxruntime agrees with PyTorch on held-out images; beside a float32
   ``model.onnx``, writes its int8 twin ``model.int8.onnx`` (static QDQ,
   calibrated on training images; ``bloodcell predict --precision int8``) and
   records its agreement with float32 on the held-out images;
5. with ``adapt_from`` (the default model: the ensemble its network was distilled from), copies that
   model into ``adapt_from/`` (float16 with ``half_weights``; no exports), recording the share of its
   crop a training cell fills, and names it in ``model.json["adapt_from"]``: ``bloodcell adapt``
   starts from it (:func:`bloodcell.core.model_folder.adapt_start`);
6. checks the size budget, makes the files world-readable and swaps the
   folder into place (``bloodcell/default_model/`` by default).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from safetensors.torch import load_file, save_file

from bloodcell.core.errors import ConfigError, DataError, ModelError
from bloodcell.core.files import check_writable_folder, staged_folder
from bloodcell.core.model_choice import packaged_model_dir
from bloodcell.core.model_folder import ADAPT_FROM, FAMILIAR, ONNX, read_meta, weight_files, weights_digest, write_meta
from bloodcell.data import load_arrays, open_dataset
from bloodcell.networks.loading import copy_model, load_model
from bloodcell.ood.fit import fit_familiarity, fit_ood, save_head
from bloodcell.ood.score import CELL_CHECK, extract_features
from bloodcell.packaging.card import card_metrics, check_evaluation_matches, training_record
from bloodcell.packaging.choices import MAX_MB
from bloodcell.packaging.onnx import export_onnx
from bloodcell.prediction.onnx_backend import INT8_ONNX, OnnxModel
from bloodcell.prediction.torch_backend import predict_proba
from bloodcell.training.augment import augmented_copies, shifts_lab_appearance
from bloodcell.training.config import AugmentConfig, load_config
from bloodcell.training.data import measure_cell_share

#: Sections the default model's card must have.
REQUIRED_CARD = ("intended_use", "data", "metrics", "limitations", "citation", "licence")


def read_card(path: str | Path) -> dict:
    """A model card from a JSON or YAML file (a mapping of section to text, list or mapping)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: model card file not found.")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error is the file's fault
        raise ConfigError(f"{path}: cannot parse the model card ({str(e).splitlines()[0]}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a model card is a mapping of sections (intended_use, data, ...), got {type(data).__name__}.")
    return data


def _stratified(labels: list, per_class: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for label in sorted({x for x in labels if x is not None}):
        idx = [i for i, x in enumerate(labels) if x == label]
        chosen += sorted(rng.permutation(idx)[:per_class].tolist())
    return sorted(chosen)


def fitting_arrays(data, preprocess, class_names, per_class: int = 300, heldout_per_class: int = 150, seed: int = 0):
    """Training images (for fitting) and held-out images (for the threshold) from a dataset.

    Uses the ``train`` and ``val`` splits when the source has them (a
    ``bloodcell split`` manifest), otherwise a seeded stratified half/half
    division of the images.
    """
    ds = open_dataset(data)
    if ds.has_splits:
        train_idx = ds.split_indices("train")
        held_idx = ds.split_indices("val")
        if not held_idx:
            raise DataError(f"{data}: the manifest has no 'val' rows; held-out images are needed for the threshold.")
    else:
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(ds))
        train_idx, held_idx = sorted(perm[: len(ds) // 2].tolist()), sorted(perm[len(ds) // 2 :].tolist())
    labels = [s.label for s in ds.samples]
    pick_train = [train_idx[i] for i in _stratified([labels[i] for i in train_idx], per_class, seed)]
    pick_held = [held_idx[i] for i in _stratified([labels[i] for i in held_idx], heldout_per_class, seed + 1)]
    train = load_arrays(ds.select(pick_train), preprocess, class_names=class_names)
    held = load_arrays(ds.select(pick_held), preprocess, class_names=class_names)
    return train, held


def _half_weights(folder: Path) -> None:
    for path in weight_files(folder):
        state = load_file(str(path))
        save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}, str(path))


def _agreement(folder: Path, images: np.ndarray) -> dict:
    loaded = load_model(folder, "cpu")
    p_torch = predict_proba(loaded, images)
    onnx = OnnxModel(folder / ONNX)
    p_onnx = onnx.predict_proba(images)
    return {
        "images": int(len(images)),
        "argmax_agreement": round(float((p_torch.argmax(1) == p_onnx.argmax(1)).mean()), 4),
        "max_abs_prob_diff": float(np.abs(p_torch - p_onnx).max()),
    }


def _card_for(staging: Path, meta: dict, card: dict | None, evaluation: dict | None, digest: str) -> dict:
    """The packaged model's card: the model's own, the given sections, the measured test metrics and
    the training record of every member; refused when a required section is missing."""
    card = {**(meta.get("model_card") or {}), **(card or {})}
    if evaluation is not None:
        check_evaluation_matches(evaluation, meta, "the evaluation", weights_sha256=digest)
        card["metrics"] = card_metrics(evaluation)
    members = (meta.get("ensemble") or {}).get("members") or []
    if members:
        runs = {m: training_record(read_meta(staging / m)) for m in members}
        if any(runs.values()):
            card["training_run"] = runs
    elif meta.get("history"):
        card["training_run"] = training_record(meta)
    missing = [k for k in REQUIRED_CARD if not card.get(k) and not (k == "licence" and card.get("license"))]
    if missing:
        raise ConfigError(
            f"The default model's card lacks {missing}. Pass --card CARD.yaml with sections "
            f"{', '.join(REQUIRED_CARD)} (text, lists or mappings)."
        )
    return card


def training_augment(folder: Path, meta: dict) -> AugmentConfig | None:
    """The augmentation the model (an ensemble: its first member) was trained with, if recorded."""
    members = (meta.get("ensemble") or {}).get("members") or []
    if members:
        meta = read_meta(folder / members[0])
    recorded = (meta.get("config") or {}).get("augment")
    return AugmentConfig(**recorded) if isinstance(recorded, dict) else None


def _with_lab_shifts(images: np.ndarray, labels, augment: AugmentConfig, seed: int):
    shifted = augmented_copies(images, augment, seed)
    return np.concatenate([images, shifted]), None if labels is None else np.concatenate([labels, labels])


#: The recipe whose augmentation draws the other-lab copies of the cells the cell check is fitted on,
#: when neither the caller nor the model's own training augmentation imitates other labs.
CELL_CHECK_AUGMENT = "robust_default"


def _copies_augment(staging: Path, augment: AugmentConfig | None, method: str) -> AugmentConfig | None:
    """The augmentation of the cells' other-lab copies: ``augment``, else the model's own training
    augmentation, else (for the cell check, which needs them) :data:`CELL_CHECK_AUGMENT`'s."""
    augment = augment or training_augment(staging, read_meta(staging))
    if method == CELL_CHECK and not (augment is not None and shifts_lab_appearance(augment)):
        return load_config(recipe=CELL_CHECK_AUGMENT).augment
    return augment


def _fit_ood(staging: Path, loaded, train, held, per_kind: int, max_false_flag: float, seed: int, say,
             augment: AugmentConfig | None = None, method: str = CELL_CHECK, known=None) -> dict:
    """Fit the out-of-distribution score, store its head in ``staging`` and return its record.

    Cells also enter as copies under an augmentation that imitates other labs (:func:`_copies_augment`),
    so the score learns what a cell is rather than what PBC looks like.
    """
    train_images, train_labels, held_images = train.images, train.labels, held.images
    augment = _copies_augment(staging, augment, method)
    shifted = augment is not None and shifts_lab_appearance(augment)
    if shifted:
        train_images, train_labels = _with_lab_shifts(train_images, train_labels, augment, seed)
        held_images, _ = _with_lab_shifts(held_images, None, augment, seed + 1)
    say(f"Fitting the out-of-distribution score on {len(train_images)} training images"
        f"{' (half of them under other-lab augmentation)' if shifted else ''}; threshold from "
        f"{len(held_images)} held-out cells ...")
    head, info = fit_ood(loaded, train_images, train_labels, held_images, per_kind=per_kind, seed=seed,
                         max_false_flag=max_false_flag, method=method, known=known)
    info["cells_under_training_augmentation"] = shifted
    save_head(staging, head)
    return info


def _fit_checks(staging: Path, loaded, train, held, per_kind: int, max_false_flag: float, seed: int, say,
                augment: AugmentConfig | None, method: str) -> tuple[dict, dict]:
    """Fit the out-of-distribution score (:func:`_fit_ood`) and the familiarity check (on the plain training
    cells) from one extraction of the plain cells' features, store both heads in ``staging`` and return
    their records."""
    plain = (extract_features(loaded, train.images, progress=True), extract_features(loaded, held.images, progress=True))
    ood = _fit_ood(staging, loaded, train, held, per_kind, max_false_flag, seed, say, augment, method, known=plain)
    say(f"Fitting the familiarity check on {len(train.images)} training cells; threshold from {len(held.images)} "
        "held-out cells ...")
    head, familiar = fit_familiarity(plain[0], train.labels, plain[1])
    save_head(staging, head, FAMILIAR)
    return ood, familiar


def _export_checked(staging: Path, meta: dict, quantize: str, half_weights: bool, train, held, say) -> dict:
    """Write ``model.onnx`` and check onnxruntime agrees with PyTorch on the held-out images; a float32
    export also gets its int8 companion (:func:`_export_int8`)."""
    say(f"Exporting {ONNX} ({'float32' if quantize == 'none' else quantize + ' int8'}) ...")
    export_onnx(staging, staging / ONNX, quantize=quantize, calibration=train.images if quantize == "static" else None,
                half_storage=half_weights)
    check = _agreement(staging, held.images)
    meta["onnx"] = {"quantization": quantize, **check}
    write_meta(staging, meta)
    if quantize == "none" and (check["argmax_agreement"] < 1.0 or check["max_abs_prob_diff"] > 1e-3):
        raise ModelError(f"onnxruntime and PyTorch disagree on held-out images ({check}); the export is wrong.")
    if quantize == "none":
        _export_int8(staging, meta, train, held, say)
    return check


def _export_int8(staging: Path, meta: dict, train, held, say, calibration_images: int = 512) -> dict:
    """Write ``model.int8.onnx`` calibrated on training images; record its agreement with float32 on held-out ones."""
    say(f"Exporting {INT8_ONNX} (static int8, calibrated on {min(calibration_images, len(train))} training images) ...")
    step = max(1, len(train.images) // calibration_images)  # spread over the classes (the images come class by class)
    export_onnx(staging, staging / INT8_ONNX, quantize="static", calibration=train.images[::step][:calibration_images])
    p32 = OnnxModel(staging / ONNX).predict_proba(held.images)
    p8 = OnnxModel(staging / INT8_ONNX).predict_proba(held.images)
    meta["onnx_int8"] = {"images": int(len(held.images)),
                         "argmax_agreement": round(float((p32.argmax(1) == p8.argmax(1)).mean()), 4),
                         "max_abs_prob_diff": round(float(np.abs(p32 - p8).max()), 4)}
    write_meta(staging, meta)
    return meta["onnx_int8"]


def training_cell_share(meta: dict, data) -> float:
    """The share of its crop a training cell fills that the model records (``bloodcell train`` does), or
    measured on ``data`` for a model trained before training recorded it."""
    recorded = meta.get("training_cell_share")
    crop = float(meta["preprocess"].get("crop_fraction", 1.0))
    return recorded if recorded else round(measure_cell_share(str(data), crop), 4)


def _check_adapt_from(model: Path, classes) -> None:
    """Refuse, before any work, a model for ``adapt_from`` that is uncalibrated or knows other classes."""
    meta = read_meta(model)
    if "calibration" not in meta:
        raise ConfigError(f"{model}: the model adaptation starts from must be calibrated first "
                          f"(`bloodcell calibrate {model} SPLIT.csv`).")
    if list(meta["preprocess"]["class_names"]) != list(classes):
        raise ConfigError(f"{model}: the model adaptation starts from must know the packaged model's classes "
                          f"{list(classes)}, in that order; it has {list(meta['preprocess']['class_names'])}.")


def _add_adapt_from(staging: Path, packaged: dict, model: Path, data, half_weights: bool, say) -> None:
    """Copy ``model`` into ``staging/adapt_from`` for ``bloodcell adapt`` and name it in the packaged model's
    metadata ``packaged`` (written), with the share of its crop a training cell fills."""
    meta = read_meta(model)
    say(f"Adding the model adaptation starts from: {model} -> {ADAPT_FROM}/ ...")
    folder = copy_model(model, staging / ADAPT_FROM)
    if half_weights:
        _half_weights(folder)
    meta["training_cell_share"] = training_cell_share(meta, data)
    for stale in ("onnx", "onnx_int8", "ood"):  # its exports and cell check are not copied
        meta.pop(stale, None)
    write_meta(folder, meta)
    packaged["adapt_from"] = {"folder": ADAPT_FROM, "from": str(model), "architecture": meta.get("architecture"),
                              "members": (meta.get("ensemble") or {}).get("members") or [],
                              "weights_sha256": weights_digest(model)}
    write_meta(staging, packaged)


def _staged_copy(src: Path, staging: Path, half_weights: bool):
    """Copy the model into ``staging`` (float16 with ``half_weights``) and load it: ``(loaded, meta)``."""
    copy_model(src, staging)
    if half_weights:
        _half_weights(staging)
    return load_model(staging, "cpu"), read_meta(staging)


def _check_size(folder: Path, max_mb: float) -> float:
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
    if size > max_mb:
        raise ModelError(
            f"The packaged model is {size:.1f} MB, over the {max_mb:g} MB budget. Use --half-weights "
            "and/or --quantize static, or a smaller architecture."
        )
    return size


def _destination(src: Path, out) -> Path:
    out = Path(out) if out is not None else packaged_model_dir()
    if out.resolve() == src.resolve():
        raise ConfigError(f"{out}: the destination is the model folder itself; choose another --output.")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"The output folder {out} is an existing file, not a folder. Pass another -o path.")
    check_writable_folder(out.parent, "output folder's parent", "-o")
    return out


def package_default(model: str | Path, data: str | Path, out: str | Path | None = None, *, card: dict | None = None,
                    evaluation: dict | None = None, quantize: str = "none", half_weights: bool = False,
                    per_class: int = 300, heldout_per_class: int = 150, max_false_flag: float = 0.01,
                    non_cells_per_kind: int = 60, max_mb: float = MAX_MB, seed: int = 0,
                    ood_augment: AugmentConfig | None = None, ood_method: str = CELL_CHECK,
                    adapt_from: str | Path | None = None, say=print) -> Path:
    """Package ``model`` as a self-contained default model folder at ``out``.

    Parameters
    ----------
    model : str or Path
        A trained model folder (single or ensemble).
    data : str or Path
        The dataset it was trained on (best: its ``bloodcell split`` manifest).
    out : str or Path, optional
        Destination folder (default: ``bloodcell/default_model`` in the package).
    card, evaluation : dict, optional
        Model-card sections merged over ``model.json["model_card"]``; the model's test evaluation
        (``bloodcell evaluate -o``), which fills the card's ``metrics``.
    quantize : {"none", "dynamic", "static"}
        Quantization of ``model.onnx`` (static uses the fitting images for calibration).
    half_weights : bool
        Store the weights as float16 (ONNX is exported from the rounded weights, so both backends agree).
    per_class, heldout_per_class, non_cells_per_kind : int
        Training and held-out images per class, and generated non-cell images per kind, for the
        out-of-distribution statistics and threshold.
    max_false_flag : float
        Largest share of held-out real cells the out-of-distribution check may flag.
    max_mb : float
        Size budget of the whole folder (MB).
    ood_augment : AugmentConfig, optional
        Augmentation of the cells' copies in the out-of-distribution fit (see :func:`_copies_augment`);
        ``ood_method``: :mod:`bloodcell.ood.score`'s ``CELL_CHECK`` (default) or ``METHOD``.
        ``model.json["training_cell_share"]`` records the share of the crop a training cell fills.
    adapt_from : str or Path, optional
        A calibrated model shipped inside the package for ``bloodcell adapt`` to start from (step 5 above).
    """
    src = Path(model)
    if adapt_from is not None:
        _check_adapt_from(Path(adapt_from), read_meta(src)["preprocess"]["class_names"])
    digest, out = weights_digest(src), _destination(src, out)
    with staged_folder(out) as staging:
        loaded, meta = _staged_copy(src, staging, half_weights)
        meta["model_card"] = _card_for(staging, meta, card, evaluation, digest)
        say(f"Reading fitting images from {data} ...")
        train, held = fitting_arrays(data, loaded.preprocess, loaded.class_names, per_class, heldout_per_class, seed)
        meta["ood"], meta["familiarity"] = _fit_checks(staging, loaded, train, held, non_cells_per_kind,
                                                       max_false_flag, seed, say, ood_augment, ood_method)
        info = meta["ood"]
        meta["training_cell_share"] = training_cell_share(meta, data)
        write_meta(staging, meta)
        check = _export_checked(staging, meta, quantize, half_weights, train, held, say)
        if adapt_from is not None:
            _add_adapt_from(staging, meta, Path(adapt_from), data, half_weights, say)
        size = _check_size(staging, max_mb)
    ev = info["evaluation"]
    say(f"Default model written to {out} ({size:.1f} MB): OOD threshold {info['threshold']:.3g}, false flags on held-out "
        f"cells {ev['false_flag_rate']}, non-cells detected {ev['detection_rate']}; ONNX = PyTorch {check['argmax_agreement']}.")
    return out
