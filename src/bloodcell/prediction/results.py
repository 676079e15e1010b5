"""What a classification returns: one :class:`Prediction` per image, and a :class:`PredictionRun`
with the images that were skipped."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bloodcell.core.errors import DataError


@dataclass
class Prediction:
    """The result for one image.

    ``framing`` is how the image was cropped, for models with cell framing (``"cell"``: around
    the located cell; ``"centre"``: no cell found, the centred square); ``None`` for models
    that always crop the centre. ``unfamiliar``: the model's familiarity check found the image
    unlike its training cells, so it is ``uncertain`` whatever its probability (``None`` for
    models without the check).
    """

    source: str
    label: str
    probability: float
    probabilities: dict[str, float]
    uncertain: bool
    not_a_blood_cell: bool | None
    ood_score: float | None
    true_label: str | None = None
    framing: str | None = None
    unfamiliar: bool | None = None

    def to_dict(self) -> dict:
        d = {
            "source": self.source,
            "label": self.label,
            "probability": round(self.probability, 6),
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "uncertain": self.uncertain,
            "not_a_blood_cell": self.not_a_blood_cell,
            "ood_score": None if self.ood_score is None else round(self.ood_score, 4),
        }
        if self.unfamiliar is not None:
            d["unfamiliar"] = self.unfamiliar
        if self.framing is not None:
            d["framing"] = self.framing
        if self.true_label is not None:
            d["true_label"] = self.true_label
        return d


@dataclass
class PredictionRun:
    """Predictions for the images that could be read, and what was skipped."""

    predictions: list[Prediction]
    problems: list = field(default_factory=list)

    def nothing_classified(self) -> DataError:
        """The error of a run that classified no image (the skipped inputs ride along as ``problems``)."""
        error = DataError(f"no image could be classified ({len(self.problems)} input(s) skipped, reasons above). "
                          "Pass image files, folders of images, globs or .npz files.")
        error.problems = self.problems
        return error


@dataclass
class PredictResult:
    """What :func:`bloodcell.predict` did: the predictions, the skipped inputs, the differential
    (a :class:`~bloodcell.prediction.differential.Differential` or ``None``), the output text and
    the file written (``None`` when the text was only returned) and the model
    (:meth:`~bloodcell.prediction.classifier.Classifier.describe`: name, backend, precision...)."""

    predictions: list[Prediction]
    problems: list
    differential: object
    text: str
    output: Path | None
    model: dict | None = None
