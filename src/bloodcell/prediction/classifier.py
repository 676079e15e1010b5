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

import math
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bloodcell.core.errors import ConfigError, DataError, ModelError
from bloodcell.core.files import check_writable_file
from bloodcell.core.model_choice import resolve_model
from bloodcell.core.model_folder import ONNX, is_model_folder, read_meta, weights_digest
from bloodcell.core.preprocess import prepare
from bloodcell.data import Problem
from bloodcell.prediction import outputs
from bloodcell.prediction.differential import Differential, differential
from bloodcell.prediction.inputs import Item, collect
from bloodcell.prediction.onnx_backend import OnnxModel, softmax
from bloodcell.prediction.results import Prediction, PredictionRun

__all__ = ["BACKENDS", "DEFAULT_ABSTAIN", "Classifier", "Differential", "PredictResult", "Prediction",
           "PredictionRun", "differential", "predict"]

#: Abstention threshold on the top probability for models without a calibrated one.
DEFAULT_ABSTAIN = 0.5
BACKENDS = ("auto", "onnx", "torch")
DIFFERENTIAL_MODES = ("auto", "only", "no")


def _check_options(backend: str, batch_size: int, abstain_threshold: float | None, ood_threshold: float | None) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {list(BACKENDS)}, got {backend!r}.")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
    if abstain_threshold is not None and not 0.0 <= abstain_threshold <= 1.0:
        raise ConfigError(f"abstain_threshold is a probability from 0 to 1, got {abstain_threshold}.")
    if ood_threshold is not None and not (math.isfinite(ood_threshold) and ood_threshold >= 0.0):
        raise ConfigError(
            f"ood_threshold must be a finite score of 0 or more (scores are about 2 for a typical cell), got "
            f"{ood_threshold}; it would turn the not-a-blood-cell check off or flag every image. "
            "Leave it out to use the model's threshold."
        )


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
        _check_options(backend, batch_size, abstain_threshold, ood_threshold)
        self.path = resolve_model(model)
        self.batch_size = batch_size
        self.tta = tta
        self.device = device
        self._lock = threading.Lock()
        self._loaded = None
        self._scored = None
        self._onnx = None
        self.folder = self.path if is_model_folder(self.path) else None
        self.backend = self._choose_backend(backend, threads)
        if self.backend == "onnx":
            self.meta = read_meta(self.folder) if self.folder is not None else self._onnx.meta
            self.preprocess = self._onnx.preprocess
        else:
            self._load_torch()
            self.meta = self._loaded.meta
            self.preprocess = self._loaded.preprocess
        self._set_thresholds(abstain_threshold, ood_threshold)

    # -- model loading ---------------------------------------------------------------------------

    def _onnx_file(self) -> Path | None:
        if self.path.suffix == ".onnx":
            return self.path
        return self.path / ONNX if self.path.is_dir() else None

    def _choose_backend(self, backend: str, threads: int | None) -> str:
        """Resolve ``auto`` and open the onnxruntime session when that backend is used."""
        onnx_file = self._onnx_file()
        has_onnx = onnx_file is not None and onnx_file.is_file()
        if backend == "auto":
            fresh = has_onnx and not self.tta and (self.folder is None or self._onnx_fresh(onnx_file, threads))
            backend = "onnx" if fresh else "torch"
        if backend == "torch":
            if self.folder is None:
                raise ModelError(
                    f"{self.path}: the PyTorch backend needs a model folder (model.json + weights), not an .onnx file."
                )
            return backend
        if not has_onnx:
            raise ModelError(
                f"{self.path}: no model.onnx for the onnxruntime backend. Create it with "
                f"`bloodcell export --format onnx {self.path}` or use --backend torch."
            )
        if self.tta:
            raise ConfigError("Test-time augmentation runs on the PyTorch backend; use --backend torch or auto.")
        if self._onnx is None:
            self._onnx = OnnxModel(onnx_file, threads)
        return backend

    def _onnx_fresh(self, onnx_file: Path, threads: int | None) -> bool:
        """Whether ``model.onnx`` was exported from the folder's current weights (warns when not)."""
        self._onnx = OnnxModel(onnx_file, threads)
        if self._onnx.weights_sha256 is None or self._onnx.weights_sha256 == weights_digest(self.folder):
            return True
        warnings.warn(
            f"{onnx_file} was exported from other weights than {self.folder}; using PyTorch. "
            f"Re-export with `bloodcell export --format onnx {self.folder}`.",
            stacklevel=4,
        )
        self._onnx = None
        return False

    def _set_thresholds(self, abstain_threshold: float | None, ood_threshold: float | None) -> None:
        """Temperature and thresholds: the ones given, else the model's calibration (for TTA when asked)."""
        cal = self.meta.get("calibration") or {}
        ood = self.meta.get("ood") or {}
        tta_cal = (cal.get("tta") or {}) if self.tta else {}
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

    def _load_torch(self):
        if self._loaded is None:
            from bloodcell.networks import load_model  # deferred: the onnxruntime path must not load PyTorch
            from bloodcell.ood import score as ood  # deferred: the onnxruntime path must not load PyTorch
            from bloodcell.prediction.torch_backend import default_device  # deferred: loads PyTorch

            if self.folder is None:
                raise ModelError(f"{self.path}: Grad-CAM and the PyTorch backend need the model folder, not only an .onnx file.")
            self._loaded = load_model(self.folder, self.device or default_device())
            head = ood.load_head(self.folder)
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
            return softmax(logits, self.temperature), ood_scores
        from bloodcell.prediction.torch_backend import probabilities_and_ood  # deferred: loads PyTorch

        with self._lock:
            return probabilities_and_ood(self._loaded, self._scored, images, self.batch_size, self.tta, self.device)

    def predict_prepared(self, images: np.ndarray, sources: list[str] | None = None, true_labels=None) -> list[Prediction]:
        """Predictions for prepared ``uint8`` images ``(N, S, S, 3)``."""
        probs, ood_scores = self.scores(images)
        return self.make_predictions(probs, ood_scores, sources, true_labels)

    def make_predictions(self, probs: np.ndarray, ood_scores: np.ndarray | None, sources=None,
                         true_labels=None) -> list[Prediction]:
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

    def _load(self, item: Item) -> tuple[np.ndarray | None, Problem | None]:
        try:
            return self.prepare(item.read()), None
        except DataError as e:
            return None, Problem(item.source, "unreadable", str(e))

    def iter_predict(self, inputs, progress: bool = False, chunk: int = 256, workers: int = 2):
        """Classify like :meth:`predict`, yielding ``(predictions, problems)`` as each chunk of images is done.

        The first pair holds the problems found while collecting the inputs.
        """
        if isinstance(inputs, (str, Path)):
            inputs = [inputs]
        items, problems = collect(list(inputs))
        yield [], problems
        bar = tqdm(total=len(items), desc="classifying", unit="img", disable=None) if progress else None
        try:
            with ThreadPoolExecutor(max(1, workers)) as pool:
                for start in range(0, len(items), chunk):
                    part = items[start : start + chunk]
                    loaded = list(pool.map(self._load, part))
                    keep = [(item, arr) for item, (arr, _) in zip(part, loaded) if arr is not None]
                    preds = self.predict_prepared(
                        np.stack([arr for _, arr in keep]), [i.source for i, _ in keep], [i.label for i, _ in keep]
                    ) if keep else []
                    yield preds, [q for _, q in loaded if q is not None]
                    if bar is not None:
                        bar.update(len(part))
        finally:
            if bar is not None:
                bar.close()

    def predict(self, inputs, progress: bool = False, chunk: int = 256, workers: int = 2) -> PredictionRun:
        """Classify files, folders, globs and datasets (see :mod:`bloodcell.prediction.inputs`).

        Unreadable files are skipped and listed in :attr:`PredictionRun.problems`.
        """
        run = PredictionRun([], [])
        for predictions, problems in self.iter_predict(inputs, progress, chunk, workers):
            run.predictions += predictions
            run.problems += problems
        return run

    def explain(self, images: np.ndarray, targets=None) -> np.ndarray:
        """Grad-CAM maps ``(N, S, S)`` in ``[0, 1]`` for prepared images (loads the PyTorch model once)."""
        from bloodcell.prediction.explain import gradcam  # deferred: loads PyTorch

        with self._lock:
            loaded = self._load_torch()
            return gradcam(loaded, images, targets)

    def differential(self, predictions: list[Prediction]) -> Differential:
        return differential(predictions, self.class_names)


@dataclass
class PredictResult:
    """What :func:`predict` did: the predictions, the skipped inputs, the differential and the output."""

    predictions: list[Prediction]
    problems: list
    differential: Differential | None
    text: str
    output: Path | None


def _notes(clf: Classifier) -> list[str]:
    notes = []
    if clf.abstain_source == "default":
        notes.append("note: the model has no calibrated abstention threshold; "
                     f"'uncertain' means top probability < {clf.abstain_threshold}.")
    if not clf.has_ood:
        notes.append("note: the model carries no out-of-distribution statistics, "
                     "so no image is checked for being a blood cell.")
    return notes


def _classify(clf: Classifier, paths, partial: outputs.PartialResults | None, progress: bool) -> PredictionRun:
    """Classify ``paths``, appending each finished chunk to ``partial``; kept there if the run stops early."""
    run = PredictionRun([], [])
    try:
        for predictions, problems in clf.iter_predict(paths, progress=progress):
            run.predictions += predictions
            run.problems += problems
            if partial is not None:
                partial.add(predictions)
    except BaseException:
        kept = partial.close(keep=True) if partial is not None else None
        if kept is not None:
            print(f"bloodcell predict: stopped; the {partial.rows} image(s) classified so far are in {kept}.", file=sys.stderr)
        raise
    return run


def predict(
    paths,
    model: str | Path | None = None,
    *,
    format: str = "table",
    output: str | Path | None = None,
    differential: str = "auto",
    backend: str = "auto",
    batch_size: int = 64,
    tta: bool = False,
    abstain_threshold: float | None = None,
    ood_threshold: float | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> PredictResult:
    """Classify images and write the per-image results and the differential count (``bloodcell predict``).

    Parameters
    ----------
    paths : str, Path or list of them
        Image files, folders (searched recursively), globs, ``.npz`` arrays or CSV manifests.
    model : str or Path, optional
        Model folder or exported ``.onnx`` file (default: the bundled model, or ``$BLOODCELL_MODEL``).
    format : {"table", "csv", "json"}
        Output format.
    output : str or Path, optional
        File to write; checked for being writable before any work starts. While
        the run goes on, finished rows are kept in ``<output>.partial``, removed
        once the output is written. Without it the text is only returned.
    differential : {"auto", "only", "no"}
        ``auto``: the differential after the table (or inside the JSON) for two
        or more images; ``only``: just the differential; ``no``: never.
    backend, batch_size, tta, abstain_threshold, ood_threshold, threads
        As for :class:`Classifier`.
    progress : bool
        Show a progress bar on standard error.

    Returns
    -------
    PredictResult
        The predictions, the skipped inputs, the differential (or ``None``),
        the output text and the file written (or ``None``).

    Raises
    ------
    ConfigError
        A bad option, or an output path that cannot be written.
    DataError
        When no image could be classified; its ``problems`` attribute lists why each input was skipped.
    """
    if format not in outputs.FORMATS:
        raise ConfigError(f"format must be one of {list(outputs.FORMATS)}, got {format!r}.")
    if differential not in DIFFERENTIAL_MODES:
        raise ConfigError(f"differential must be one of {list(DIFFERENTIAL_MODES)}, got {differential!r}.")
    output = check_writable_file(output) if output is not None else None
    clf = Classifier(model, backend=backend, batch_size=batch_size, tta=tta, threads=threads,
                     abstain_threshold=abstain_threshold, ood_threshold=ood_threshold)
    partial = outputs.PartialResults(output, clf.class_names) if output is not None else None
    run = _classify(clf, paths, partial, progress)
    preds = run.predictions
    if not preds:
        error = DataError(
            f"no image could be classified ({len(run.problems)} input(s) skipped, reasons above). "
            "Pass image files, folders of images, globs or .npz files."
        )
        error.problems = run.problems
        raise error
    only = differential == "only"
    diff = clf.differential(preds) if only or (differential == "auto" and len(preds) >= 2) else None
    text = outputs.render(format, clf.describe(), preds, run.problems, diff, clf.class_names, only, _notes(clf))
    if output is not None:
        try:
            outputs.write_text(output, text)
        except BaseException:
            partial.close(keep=True)
            raise
        partial.close(keep=False)
    return PredictResult(preds, run.problems, diff, text, output)
