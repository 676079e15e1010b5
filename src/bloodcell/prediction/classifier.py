"""Classify images with a trained model: the one API behind ``bloodcell predict`` and ``bloodcell serve``.

>>> from bloodcell import Classifier
>>> clf = Classifier()                        # the default model, on onnxruntime
>>> run = clf.predict(["smear/", "cell.jpg"])  # files, folders, globs, .npz
>>> run.predictions[0].label, run.problems     # doctest: +SKIP

Each :class:`Prediction` carries the class, all class probabilities and two
flags:

``uncertain``
    the top probability is below the model's abstention threshold
    (``model.json["calibration"]["abstain_threshold"]``, or the one in
    ``calibration.tta`` for test-time-augmented predictions; when the model was
    never calibrated, :data:`DEFAULT_ABSTAIN`), so a person should review it;
``not_a_blood_cell``
    the out-of-distribution score (:mod:`bloodcell.ood.score`) is above the
    threshold measured on non-cell images (``None`` when the model carries no
    out-of-distribution statistics).

Two backends give the same probabilities: onnxruntime (``model.onnx``, no
PyTorch needed, the default when the file exists and matches the weights) and
PyTorch (:func:`bloodcell.prediction.torch_backend.predict_proba`, needed for test-time
augmentation and Grad-CAM).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bloodcell.core.errors import ConfigError, DataError, ModelError
from bloodcell.core.model_choice import resolve_model
from bloodcell.core.preprocess import prepare
from bloodcell.core.stats import wilson_interval

#: Abstention threshold on the top probability for models without a calibrated one.
DEFAULT_ABSTAIN = 0.5
BACKENDS = ("auto", "onnx", "torch")


@dataclass
class Prediction:
    """The result for one image."""

    source: str
    label: str
    probability: float
    probabilities: dict[str, float]
    uncertain: bool
    not_a_blood_cell: bool | None
    ood_score: float | None
    true_label: str | None = None

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
        if self.true_label is not None:
            d["true_label"] = self.true_label
        return d


@dataclass
class PredictionRun:
    """Predictions for the images that could be read, and what was skipped."""

    predictions: list[Prediction]
    problems: list = field(default_factory=list)


@dataclass
class Differential:
    """A white-cell differential: count and share of each class among the images classified as cells.

    Images flagged ``not_a_blood_cell`` are left out of the count (``excluded``);
    uncertain images are counted in their predicted class and also tallied in
    each row's ``uncertain`` column for review. Percentages carry 95% Wilson
    intervals.
    """

    rows: list[dict]
    total: int
    counted: int
    excluded: int
    uncertain: int

    def to_dict(self) -> dict:
        return {"total": self.total, "counted": self.counted, "excluded_not_a_blood_cell": self.excluded,
                "uncertain": self.uncertain, "classes": self.rows}




def differential(predictions: list[Prediction], class_names) -> Differential:
    """Count predictions per class (see :class:`Differential`)."""
    cells = [p for p in predictions if not p.not_a_blood_cell]
    n = len(cells)
    rows = []
    for name in class_names:
        mine = [p for p in cells if p.label == name]
        lo, hi = wilson_interval(len(mine), n)
        rows.append({
            "class": name,
            "count": len(mine),
            "percent": round(100.0 * len(mine) / n, 2) if n else 0.0,
            "ci95": [round(100 * lo, 2), round(100 * hi, 2)],
            "uncertain": sum(p.uncertain for p in mine),
        })
    return Differential(rows, len(predictions), n, len(predictions) - n, sum(p.uncertain for p in cells))


class Classifier:
    """A model ready to classify images.

    Parameters
    ----------
    model : str or Path, optional
        A model folder or an exported ``.onnx`` file; default: the bundled
        model (see :func:`bloodcell.core.model_choice.resolve_model`).
    backend : {"auto", "onnx", "torch"}
        ``auto`` uses onnxruntime when the model has an up-to-date
        ``model.onnx`` and no test-time augmentation is asked for.
    batch_size : int
        Images per forward pass.
    tta : bool
        Average over the eight flips/rotations (PyTorch backend).
    device : str, optional
        PyTorch device (default: CUDA if available, else CPU).
    threads : int, optional
        onnxruntime intra-op threads.
    abstain_threshold : float, optional
        Override the model's abstention threshold (top probability below it -> ``uncertain``).
    ood_threshold : float, optional
        Override the model's out-of-distribution threshold.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        backend: str = "auto",
        batch_size: int = 64,
        tta: bool = False,
        device: str | None = None,
        threads: int | None = None,
        abstain_threshold: float | None = None,
        ood_threshold: float | None = None,
    ):
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {list(BACKENDS)}, got {backend!r}.")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
        if abstain_threshold is not None and not 0.0 <= abstain_threshold <= 1.0:
            raise ConfigError(f"abstain_threshold is a probability from 0 to 1, got {abstain_threshold}.")
        self.path = resolve_model(model)
        self.batch_size = batch_size
        self.tta = tta
        self.device = device
        self._lock = threading.Lock()
        self._loaded = None
        self._scored = None
        self._onnx = None
        folder = self.path if self.path.is_dir() and (self.path / "model.json").is_file() else None
        onnx_file = self.path if self.path.suffix == ".onnx" else (self.path / "model.onnx" if self.path.is_dir() else None)
        has_onnx = onnx_file is not None and onnx_file.is_file()
        self.folder = folder
        if backend == "auto":
            backend = "onnx" if has_onnx and not tta and (folder is None or self._onnx_fresh(onnx_file, folder, threads)) else "torch"
        if backend == "onnx":
            if not has_onnx:
                raise ModelError(
                    f"{self.path}: no model.onnx for the onnxruntime backend. Create it with "
                    f"`bloodcell export --format onnx {self.path}` or use --backend torch."
                )
            if tta:
                raise ConfigError("Test-time augmentation runs on the PyTorch backend; use --backend torch or auto.")
            if self._onnx is None:
                from bloodcell.prediction.onnx_backend import OnnxModel

                self._onnx = OnnxModel(onnx_file, threads)
            self.meta = self._folder_meta(folder) or self._onnx.meta
            self.preprocess = self._onnx.preprocess
        else:
            if folder is None:
                raise ModelError(f"{self.path}: the PyTorch backend needs a model folder (model.json + weights), not an .onnx file.")
            self._load_torch()
            self.meta = self._loaded.meta
            self.preprocess = self._loaded.preprocess
        self.backend = backend
        cal = self.meta.get("calibration") or {}
        ood = self.meta.get("ood") or {}
        tta_cal = (cal.get("tta") or {}) if tta else {}
        self.temperature = float(tta_cal.get("temperature", cal.get("temperature", 1.0)))
        if abstain_threshold is not None:
            self.abstain_threshold, self.abstain_source = float(abstain_threshold), "given"
        elif tta_cal.get("abstain_threshold") is not None:
            self.abstain_threshold, self.abstain_source = float(tta_cal["abstain_threshold"]), "calibrated for TTA"
        elif cal.get("abstain_threshold") is not None:
            self.abstain_threshold, self.abstain_source = float(cal["abstain_threshold"]), "calibrated"
        else:
            self.abstain_threshold, self.abstain_source = DEFAULT_ABSTAIN, "default"
        self.ood_threshold = float(ood_threshold) if ood_threshold is not None else (
            float(ood["threshold"]) if ood.get("threshold") is not None else None)

    # -- model loading ---------------------------------------------------------------------------

    @staticmethod
    def _folder_meta(folder: Path | None) -> dict | None:
        if folder is None:
            return None
        import json

        try:
            return json.loads((folder / "model.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelError(f"{folder / 'model.json'}: corrupt model metadata ({e}).") from None

    def _onnx_fresh(self, onnx_file: Path, folder: Path, threads: int | None) -> bool:
        from bloodcell.prediction.onnx_backend import OnnxModel

        self._onnx = OnnxModel(onnx_file, threads)
        if self._onnx.weights_sha256 is None:
            return True
        from bloodcell.core.model_folder import weights_digest

        if self._onnx.weights_sha256 == weights_digest(folder):
            return True
        import warnings

        warnings.warn(
            f"{onnx_file} was exported from other weights than {folder}; using PyTorch. "
            f"Re-export with `bloodcell export --format onnx {folder}`.",
            stacklevel=3,
        )
        self._onnx = None
        return False

    def _load_torch(self):
        if self._loaded is None:
            from bloodcell.networks import load_model
            from bloodcell.ood import score as ood
            from bloodcell.prediction.torch_backend import default_device

            folder = self.folder
            if folder is None:
                raise ModelError(f"{self.path}: Grad-CAM and the PyTorch backend need the model folder, not only an .onnx file.")
            self._loaded = load_model(folder, self.device or default_device())
            head = ood.load_head(folder)
            if head is not None:
                self._scored = ood.ScoredModel(self._loaded.module, len(self._loaded.class_names), head)
                self._scored.to(next(self._loaded.module.parameters()).device).eval()
        return self._loaded

    # -- properties ------------------------------------------------------------------------------

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.preprocess.class_names

    @property
    def has_ood(self) -> bool:
        return self.ood_threshold is not None and (self._onnx.has_ood if self.backend == "onnx" else self._scored is not None)

    def describe(self) -> dict:
        """Model name, path, backend and thresholds, for reports and the service."""
        card = self.meta.get("model_card") or {}
        return {
            "name": card.get("name") or self.meta.get("architecture"),
            "path": str(self.path),
            "architecture": self.meta.get("architecture"),
            "backend": self.backend,
            "quantization": self._onnx.quantization if self._onnx is not None and self.backend == "onnx" else "none",
            "classes": list(self.class_names),
            "image_size": self.preprocess.image_size,
            "temperature": self.temperature,
            "abstain_threshold": self.abstain_threshold,
            "abstain_threshold_source": self.abstain_source,
            "ood_threshold": self.ood_threshold,
        }

    # -- inference -------------------------------------------------------------------------------

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Crop and resize an RGB ``uint8`` image to the model's input."""
        return prepare(image, self.preprocess)

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities ``(N, C)`` and out-of-distribution scores ``(N,)`` (or ``None``) of prepared images."""
        if self.backend == "onnx":
            logits, ood_scores = self._onnx.run(images, self.batch_size)
            from bloodcell.prediction.onnx_backend import softmax

            return softmax(logits, self.temperature), ood_scores
        import torch

        from bloodcell.prediction.torch_backend import predict_proba

        with self._lock:
            probs = predict_proba(self._loaded, images, self.batch_size, tta=self.tta, calibrated=True, device=self.device)
            if self._scored is None:
                return probs, None
            from bloodcell.prediction.torch_backend import tensor_batches

            device = next(self._loaded.module.parameters()).device
            out = []
            with torch.inference_mode():
                for x in tensor_batches(images, self.preprocess, self.batch_size, device):
                    out.append(self._scored(x)[1].float().cpu().numpy())
            return probs, (np.concatenate(out) if out else np.zeros(0, np.float32))

    def predict_prepared(self, images: np.ndarray, sources: list[str] | None = None, true_labels=None) -> list[Prediction]:
        """Predictions for prepared ``uint8`` images ``(N, S, S, 3)``."""
        probs, ood_scores = self.scores(images)
        return self.make_predictions(probs, ood_scores, sources, true_labels)

    def make_predictions(self, probs: np.ndarray, ood_scores: np.ndarray | None, sources=None, true_labels=None) -> list[Prediction]:
        """Turn the output of :meth:`scores` into :class:`Prediction` records with their flags."""
        sources = sources or [f"image {i}" for i in range(len(probs))]
        true_labels = true_labels or [None] * len(probs)
        names = self.class_names
        out = []
        for i in range(len(probs)):
            k = int(probs[i].argmax())
            score = None if ood_scores is None else float(ood_scores[i])
            flag = None if (score is None or self.ood_threshold is None) else bool(score > self.ood_threshold)
            out.append(Prediction(
                source=sources[i],
                label=names[k],
                probability=float(probs[i, k]),
                probabilities={n: float(p) for n, p in zip(names, probs[i])},
                uncertain=bool(probs[i, k] < self.abstain_threshold),
                not_a_blood_cell=flag,
                ood_score=score,
                true_label=true_labels[i],
            ))
        return out

    def predict_arrays(self, images: list[np.ndarray], sources: list[str] | None = None) -> list[Prediction]:
        """Predictions for RGB ``uint8`` images of any size (cropped and resized here)."""
        if not len(images):
            return []
        return self.predict_prepared(np.stack([self.prepare(im) for im in images]), sources)

    def predict(self, inputs, progress: bool = False, chunk: int = 256, workers: int = 2) -> PredictionRun:
        """Classify files, folders, globs and datasets (see :mod:`bloodcell.prediction.inputs`).

        Unreadable files are skipped and listed in :attr:`PredictionRun.problems`.
        """
        from bloodcell.data import Problem
        from bloodcell.prediction.inputs import collect

        if isinstance(inputs, (str, Path)):
            inputs = [inputs]
        items, problems = collect(list(inputs))
        predictions: list[Prediction] = []

        def load(item):
            try:
                return self.prepare(item.read()), None
            except DataError as e:
                return None, Problem(item.source, "unreadable", str(e))

        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(items), desc="classifying", unit="img", disable=None)
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for start in range(0, len(items), chunk):
                part = items[start : start + chunk]
                arrays, keep = [], []
                for item, (arr, problem) in zip(part, pool.map(load, part)):
                    if problem is not None:
                        problems.append(problem)
                    else:
                        arrays.append(arr)
                        keep.append(item)
                if arrays:
                    predictions += self.predict_prepared(
                        np.stack(arrays), [i.source for i in keep], [i.label for i in keep]
                    )
                if bar is not None:
                    bar.update(len(part))
        if bar is not None:
            bar.close()
        return PredictionRun(predictions, problems)

    def explain(self, images: np.ndarray, targets=None) -> np.ndarray:
        """Grad-CAM maps ``(N, S, S)`` in ``[0, 1]`` for prepared images (loads the PyTorch model once)."""
        from bloodcell.prediction.explain import gradcam

        with self._lock:
            loaded = self._load_torch()
            return gradcam(loaded, images, targets)

    def differential(self, predictions: list[Prediction]) -> Differential:
        return differential(predictions, self.class_names)
