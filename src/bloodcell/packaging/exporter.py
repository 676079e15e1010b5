"""``bloodcell export``: an ONNX file of a model (optionally int8), or the packaged default model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bloodcell.core.errors import ConfigError
from bloodcell.core.files import check_writable_file
from bloodcell.core.model_folder import ONNX, read_meta
from bloodcell.core.preprocess import PreprocessConfig
from bloodcell.data.cache import load_arrays, sample_rows
from bloodcell.evaluation.comparison import read_evaluation
from bloodcell.packaging.choices import CALIBRATION_IMAGES, FORMATS, MAX_MB, OPSET, PER_CLASS
from bloodcell.packaging.onnx import export_onnx
from bloodcell.packaging.package import package_default, read_card
from bloodcell.training.config import load_config, recipe_hint, recipe_names


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def calibration_sample(source: str | Path, model: str | Path, n: int = 256, seed: int = 0) -> np.ndarray:
    """Up to ``n`` images of ``source`` prepared for ``model``, for static int8 quantization
    (:func:`bloodcell.data.cache.sample_rows`: the ``train`` rows of a split manifest)."""
    rows = sample_rows(source, n, seed, option="--calibration-images")
    pre = PreprocessConfig.from_dict(read_meta(model)["preprocess"])
    return load_arrays(rows, pre, require_labels=False).images


def _misplaced(format: str, **given) -> None:
    """Refuse the other format's options (given, or away from their defaults), which this one would ignore."""
    names = [f"--{name.replace('_', '-')}" for name, value in given.items() if value]
    if names:
        other = "default" if format == "onnx" else "onnx"
        raise ConfigError(f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} for --format {other}; "
                          f"--format {format} has no use for {'it' if len(names) == 1 else 'them'}. Leave "
                          f"{'it' if len(names) == 1 else 'them'} out, or pass --format {other}.")


def _check_format(format: str, onnx_only: dict, default_only: dict) -> None:
    """A known format, and none of the other format's options (``{option: given}``)."""
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {list(FORMATS)}, got {format!r}.")
    _misplaced(format, **(onnx_only if format == "default" else default_only))


def _check_onnx_options(quantize: str, half_weights: bool, calibration_data, adapt_from=None) -> None:
    if adapt_from is not None:
        raise ConfigError("--adapt-from belongs to --format default (a packaged model ships the model adapt starts "
                          "from); an .onnx file has no room for it.")
    if half_weights and quantize != "none":
        raise ConfigError(f"--half-weights stores float32 weights as float16; an int8 graph (--quantize {quantize}) "
                          "has none to store. Use one or the other.")
    if quantize == "static" and not calibration_data:
        raise ConfigError("--quantize static needs --calibration-data: a folder, .npz or manifest of real cells.")


def _export_default(model, output, data, card, metrics, quantize, half_weights, per_class, max_mb, ood_augment,
                    adapt_from, say) -> Path:
    if not data:
        raise ConfigError("--format default needs --data: the training dataset or its split manifest.")
    card = read_card(card) if card else None
    evaluation = read_evaluation(metrics) if metrics else None
    if ood_augment and ood_augment not in recipe_names():
        raise ConfigError(f"--ood-augment {ood_augment!r} is not a training recipe (its augmentation is what the "
                          f"check is fitted on). {recipe_hint(ood_augment)}.")
    augment = load_config(recipe=ood_augment).augment if ood_augment else None
    return package_default(model, data, output, card=card, evaluation=evaluation, quantize=quantize,
                           half_weights=half_weights, per_class=per_class, max_mb=max_mb, ood_augment=augment,
                           adapt_from=adapt_from, say=say)


def export(model: str | Path, *, format: str = "onnx", output: str | Path | None = None, quantize: str = "none",
           calibration_data: str | Path | None = None, calibration_images: int = CALIBRATION_IMAGES, opset: int = OPSET,
           data: str | Path | None = None, card: str | Path | None = None, metrics: str | Path | None = None,
           half_weights: bool = False, per_class: int = PER_CLASS, max_mb: float = MAX_MB, ood_augment: str | None = None,
           adapt_from: str | Path | None = None, say=_say) -> Path:
    """Export a model to ONNX, or package it as the default model (``bloodcell export``).

    Parameters
    ----------
    model : str or Path
        A trained model folder (single model or ensemble).
    format : {"onnx", "default"}
        ``onnx`` writes one ``.onnx`` file; ``default`` packages the model as the bundled
        default model (copy, out-of-distribution statistics, model card, ``model.onnx``).
    output : str or Path, optional
        onnx: the file (default ``MODEL/model.onnx``); default: the folder (default: the
        package's ``bloodcell/default_model``).
    quantize : {"none", "dynamic", "static"}
        int8 quantization; ``static`` needs ``calibration_data`` for ``format="onnx"``.
    calibration_data, calibration_images : str or Path, int
        Real cells (folder, ``.npz`` or manifest) for static quantization; how many are sampled (seeded).
    opset : int
        ONNX opset (17 or newer).
    data, card, metrics, per_class, max_mb, ood_augment, adapt_from
        ``format="default"``: see :func:`bloodcell.packaging.package.package_default` (``card`` and
        ``metrics`` as files; ``ood_augment`` a training recipe's name, whose augmentation draws the
        other-lab copies of the cells the out-of-distribution check is fitted on; ``adapt_from`` a
        calibrated model folder shipped inside for ``bloodcell adapt`` to start from).
    half_weights : bool
        Store the weights as float16 (not with int8 quantization).
    say : callable
        Receives progress lines (default: standard error).

    Returns
    -------
    Path
        The written ``.onnx`` file or package folder.

    Raises
    ------
    ConfigError
        Contradictory or missing options, or an output that cannot be written (checked first).
    ModelError, DataError
        For an unreadable model or data.
    """
    _check_format(format, {"calibration_data": calibration_data, "opset": opset != OPSET,
                           "calibration_images": calibration_images != CALIBRATION_IMAGES},
                  {"data": data, "card": card, "metrics": metrics, "per_class": per_class != PER_CLASS,
                   "max_mb": max_mb != MAX_MB, "ood_augment": ood_augment})
    if format == "default":
        return _export_default(model, output, data, card, metrics, quantize, half_weights, per_class, max_mb,
                               ood_augment, adapt_from, say)
    _check_onnx_options(quantize, half_weights, calibration_data, adapt_from)
    read_meta(model)
    check_writable_file(Path(output) if output is not None else Path(model) / ONNX, "ONNX file", "-o")
    calibration = calibration_sample(calibration_data, model, calibration_images) if quantize == "static" else None
    out = export_onnx(model, output, quantize=quantize, calibration=calibration, opset=opset,
                      half_storage=half_weights)
    say(f"bloodcell export: wrote {out} ({out.stat().st_size / 1e6:.1f} MB, quantization {quantize})")
    return out
