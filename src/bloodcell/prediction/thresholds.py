"""The options of a :class:`~bloodcell.prediction.classifier.Classifier` and the temperature and
thresholds it applies: the ones given, else the model's calibration."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bloodcell.core.errors import ConfigError
from bloodcell.core.settings import check_workers

#: Abstention threshold on the top probability for models without a calibrated one.
DEFAULT_ABSTAIN = 0.5
BACKENDS = ("auto", "onnx", "torch")


def check_options(backend: str, batch_size: int, abstain_threshold: float | None, ood_threshold: float | None,
                  threads: int | None = None) -> None:
    """Refuse option values that cannot work, before any model is loaded.

    Raises
    ------
    ConfigError
        Naming the option, the value and what it accepts.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {list(BACKENDS)}, got {backend!r}.")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
    check_workers(threads, "threads")
    if abstain_threshold is not None and not 0.0 <= abstain_threshold <= 1.0:
        raise ConfigError(f"abstain_threshold is a probability from 0 to 1, got {abstain_threshold}.")
    if ood_threshold is not None and not (math.isfinite(ood_threshold) and ood_threshold >= 0.0):
        raise ConfigError(
            f"ood_threshold must be a finite score of 0 or more (scores are about 2 for a typical cell), got "
            f"{ood_threshold}; it would turn the not-a-blood-cell check off or flag every image. "
            "Leave it out to use the model's threshold."
        )


@dataclass(frozen=True)
class Thresholds:
    temperature: float
    abstain_threshold: float
    abstain_source: str
    ood_threshold: float | None
    familiar_threshold: float | None = None


def resolve_thresholds(meta: dict, tta: bool, abstain_threshold: float | None, ood_threshold: float | None) -> Thresholds:
    """Temperature and thresholds from ``model.json`` metadata, the calibration for TTA when ``tta``;
    a threshold given overrides the model's."""
    cal = meta.get("calibration") or {}
    ood = meta.get("ood") or {}
    tta_cal = (cal.get("tta") or {}) if tta else {}
    temperature = float(tta_cal.get("temperature", cal.get("temperature", 1.0)))
    if abstain_threshold is not None:
        abstain, source = float(abstain_threshold), "given"
    elif tta_cal.get("abstain_threshold") is not None:
        abstain, source = float(tta_cal["abstain_threshold"]), "calibrated for TTA"
    elif cal.get("abstain_threshold") is not None:
        abstain, source = float(cal["abstain_threshold"]), "calibrated"
    else:
        abstain, source = DEFAULT_ABSTAIN, "default"
    if ood_threshold is None and ood.get("threshold") is not None:
        ood_threshold = ood["threshold"]
    familiar = (meta.get("familiarity") or {}).get("threshold")
    return Thresholds(temperature, abstain, source, None if ood_threshold is None else float(ood_threshold),
                      None if familiar is None else float(familiar))


def split_scores(scores, ood_threshold: float | None, familiar_threshold: float | None):
    """Per image: the out-of-distribution score, whether it is flagged not a blood cell and whether it is
    unfamiliar (``None`` where the model has no such check), from the scores of
    :meth:`~bloodcell.prediction.classifier.Classifier.scores` (``(N,)``, or ``(N, 2)`` with familiarity)."""
    if scores is None:
        return None, None, None
    scores = np.asarray(scores)
    ood = scores[:, 0] if scores.ndim == 2 else scores
    flagged = None if ood_threshold is None else ood > ood_threshold
    unfamiliar = scores[:, 1] > familiar_threshold if scores.ndim == 2 and familiar_threshold is not None else None
    return ood, flagged, unfamiliar


def validation_uncertain(meta: dict, abstain_source: str) -> float | None:
    """The share of the model's validation images its calibrated abstention threshold calls uncertain,
    plus the share its familiarity check refers by construction, if it has one (``None`` when not recorded,
    or when the threshold in use is not the calibrated one)."""
    calibration = meta.get("calibration") or {}
    if abstain_source == "calibrated for TTA":
        calibration = calibration.get("tta") or {}
    elif abstain_source != "calibrated":
        return None
    coverage = (calibration.get("validation") or {}).get("coverage")
    if coverage is None:
        return None
    familiar = (meta.get("familiarity") or {}).get("quantile")  # the share the familiarity check refers besides
    return round(1.0 - float(coverage) + (1.0 - float(familiar) if familiar is not None else 0.0), 4)
