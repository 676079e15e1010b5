"""One evaluation's results, and what identifies the model in them.

:class:`Evaluation` holds a model's predictions on one dataset next to the
JSON-ready summary of every figure computed from them; :func:`model_info` is
the summary's description of the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bloodcell.core.errors import ModelError
from bloodcell.core.model_folder import read_meta, weights_digest
from bloodcell.evaluation.metrics import ClassAlignment
from bloodcell.networks.loading import LoadedModel


@dataclass
class Evaluation:
    """One model on one dataset: inputs, probabilities and every computed figure.

    Attributes
    ----------
    loaded : LoadedModel
        The model evaluated.
    images : ndarray uint8 (N, S, S, 3)
        The prepared images (kept for the report's image grids).
    y_true : ndarray int (N,)
        True classes as indices into ``loaded.class_names``.
    ids : list of str
        Source ids (file paths or ``npz`` positions) of the images.
    probs : ndarray float32 (N, C)
        The probabilities the metrics describe: temperature-scaled, and with
        test-time augmentation when it was asked for.
    probs_uncalibrated : ndarray float32 (N, C)
        Without temperature scaling or test-time augmentation.
    summary : dict
        JSON-ready results (see :meth:`to_json`).
    """

    loaded: LoadedModel
    images: np.ndarray
    y_true: np.ndarray
    ids: list[str]
    probs: np.ndarray
    probs_uncalibrated: np.ndarray
    alignment: ClassAlignment
    summary: dict = field(default_factory=dict)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.loaded.class_names)

    @property
    def metrics(self) -> dict:
        return self.summary["metrics"]

    def to_json(self) -> dict:
        """Everything but the arrays, for ``metrics.json``."""
        return self.summary


def model_info(loaded: LoadedModel) -> dict:
    """What identifies a model in a report: path, architecture, size, calibration."""
    meta = loaded.meta
    ens = meta.get("ensemble")
    params = sum(p.numel() for p in loaded.module.parameters())
    cal = meta.get("calibration") or {}
    return {
        "path": str(loaded.path),
        "name": loaded.path.name,
        "architecture": _ensemble_name(loaded.path, ens) if ens else meta.get("architecture"),
        "ensemble": bool(ens),
        "parameters": int(params),
        "image_size": loaded.preprocess.image_size,
        "class_names": list(loaded.class_names),
        "temperature": loaded.temperature,
        "abstain_threshold": cal.get("abstain_threshold"),
        "tta_temperature": (cal.get("tta") or {}).get("temperature"),
        "tta_abstain_threshold": (cal.get("tta") or {}).get("abstain_threshold"),
        "calibration": cal or None,
        "data_manifest_sha256": meta.get("data_manifest_sha256"),
        "training_metrics": meta.get("metrics"),
        "epochs_trained": len(meta.get("history") or []),
        "weights_sha256": _digest(loaded.path),
    }


def _digest(folder: Path) -> str | None:
    try:
        return weights_digest(folder)
    except OSError:
        return None


def _ensemble_name(folder: Path, ens: dict) -> str:
    archs = []
    for member in ens.get("members", []):
        try:
            archs.append(str(read_meta(Path(folder) / member).get("architecture")))
        except ModelError:
            archs.append(str(member))
    return f"ensemble of {len(archs)}: " + ", ".join(archs)
