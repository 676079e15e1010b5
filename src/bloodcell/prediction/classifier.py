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

Two backends give the same probabilities: onnxruntime (``model.onnx``, or its int8 twin ``model.int8.onnx``;
the default when the file matches the weights) and PyTorch (test-time augmentation and Grad-CAM).
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np

from bloodcell.core.errors import ConfigError, ModelError
from bloodcell.core.files import check_writable_file
from bloodcell.core.model_choice import resolve_model
from bloodcell.core.model_folder import META, ONNX, is_model_folder, read_meta
from bloodcell.core.preprocess import prepare, prepare_with_info
from bloodcell.prediction import outputs
from bloodcell.prediction.differential import Differential, differential
from bloodcell.prediction.onnx_backend import INT8_ONNX, PRECISIONS, OnnxModel, softmax
from bloodcell.prediction.results import Prediction, PredictionRun, PredictResult
from bloodcell.prediction.stream import classify_stream
from bloodcell.prediction.thresholds import (
    BACKENDS,
    DEFAULT_ABSTAIN,
    check_options,
    resolve_thresholds,
    split_scores,
    validation_uncertain,
)

__all__ = ["BACKENDS", "DEFAULT_ABSTAIN", "Classifier", "Differential", "PredictResult", "Prediction",
           "PredictionRun", "differential", "predict"]


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
    precision : {"fp32", "int8"}, optional
        ``int8`` runs the folder's ``model.int8.onnx`` (onnxruntime only); default: the precision
        of the given ``.onnx`` file, ``fp32`` for a model folder.
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
        precision: str | None = None,
        abstain_threshold: float | None = None,
        ood_threshold: float | None = None,
    ):
        check_options(backend, batch_size, abstain_threshold, ood_threshold, threads)
        if precision not in (None, *PRECISIONS):
            raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}.")
        self.path = resolve_model(model)
        self.precision = precision
        self.batch_size = batch_size
        self.tta = tta
        self.device = device
        self._lock = threading.Lock()
        self._loaded = None
        self._scored = None
        self._onnx = None
        self.folder = self.path if is_model_folder(self.path) else None
        self.backend = self._choose_backend(backend, threads)
        self._check_precision()
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
        if not self.path.is_dir():
            return None
        return self.path / (INT8_ONNX if self.precision == "int8" else ONNX)

    def _check_precision(self) -> None:
        """Refuse an int8 request the model cannot serve, and settle the precision used."""
        if self.backend == "torch":
            if self.precision == "int8":
                raise ConfigError("int8 runs on onnxruntime; use --backend onnx (or auto) with --precision int8.")
            self.precision = "fp32"
            return
        found = self._onnx.precision
        if self.precision == "int8" and found != "int8":
            raise ModelError(f"{self._onnx.path}: a float32 model; --precision int8 needs an int8 export "
                             f"(`bloodcell export --format onnx --quantize static ...`).")
        if self.precision == "fp32" and found != "fp32":
            raise ModelError(f"{self._onnx.path}: an int8 model; pass the float32 .onnx or its folder for fp32.")
        self.precision = found

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
                    f"{self.path}: the PyTorch backend needs a model folder ({META} + weights), not an .onnx file."
                )
            return backend
        if not has_onnx:
            raise ModelError(
                f"{self.path}: no {ONNX} for the onnxruntime backend. Create it with "
                f"`bloodcell export --format onnx {self.path}` or use --backend torch."
            )
        if self.tta:
            raise ConfigError("Test-time augmentation runs on the PyTorch backend; use --backend torch or auto.")
        if self._onnx is None:
            self._onnx = OnnxModel(onnx_file, threads, spin=False)
        return backend

    def _onnx_fresh(self, onnx_file: Path, threads: int | None) -> bool:
        """Whether ``model.onnx`` was exported from the folder's current weights (warns when not)."""
        self._onnx = OnnxModel(onnx_file, threads, spin=False)
        if self._onnx.exported_from(self.folder):
            return True
        warnings.warn(
            f"{onnx_file} was exported from other weights than {self.folder}; using PyTorch. "
            f"Re-export with `bloodcell export --format onnx {self.folder}`.",
            stacklevel=4,
        )
        self._onnx = None
        return False

    def _set_thresholds(self, abstain_threshold: float | None, ood_threshold: float | None) -> None:
        found = resolve_thresholds(self.meta, self.tta, abstain_threshold, ood_threshold)
        self.temperature, self.ood_threshold = found.temperature, found.ood_threshold
        self.familiar_threshold = found.familiar_threshold
        self.abstain_threshold, self.abstain_source = found.abstain_threshold, found.abstain_source

    def _load_torch(self):
        if self._loaded is None:
            from bloodcell.networks import load_model  # deferred: the onnxruntime path must not load PyTorch
            from bloodcell.networks.devices import resolve_device  # deferred: loads PyTorch
            from bloodcell.ood import score as ood  # deferred: the onnxruntime path must not load PyTorch

            if self.folder is None:
                raise ModelError(f"{self.path}: Grad-CAM and the PyTorch backend need the model folder, not only an .onnx file.")
            self._loaded = load_model(self.folder, resolve_device(self.device))
            head = ood.load_head(self.folder)
            if head is not None:
                self._scored = ood.ScoredModel(self._loaded.module, len(self._loaded.class_names), head,
                                               ood.load_familiar(self.folder))
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
            "precision": self.precision,
            "tta": self.tta,
            "quantization": self._onnx.quantization if self._onnx is not None and self.backend == "onnx" else "none",
            "classes": list(self.class_names),
            "image_size": self.preprocess.image_size,
            "temperature": self.temperature,
            "abstain_threshold": self.abstain_threshold,
            "abstain_threshold_source": self.abstain_source,
            "ood_threshold": self.ood_threshold,
            "familiar_threshold": self.familiar_threshold,
            "validation_uncertain": validation_uncertain(self.meta, self.abstain_source),
        }

    # -- inference -------------------------------------------------------------------------------

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Crop and resize an RGB ``uint8`` image to the model's input."""
        return prepare(image, self.preprocess)

    def prepare_framed(self, image: np.ndarray) -> tuple[np.ndarray, str | None]:
        """:meth:`prepare`, and for a model that frames the located cell, how this image was framed
        (``"cell"``, or ``"centre"`` when no cell was found); ``None`` for a centre-crop model."""
        if self.preprocess.framing == "centre":
            return prepare(image, self.preprocess), None
        array, framing, _ = prepare_with_info(image, self.preprocess)
        return array, framing

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities ``(N, C)`` and out-of-distribution scores ``(N,)`` (or ``None``) of prepared images."""
        if self.backend == "onnx":
            logits, ood_scores = self._onnx.run(images, self.batch_size)
            return softmax(logits, self.temperature), ood_scores
        from bloodcell.prediction.torch_backend import probabilities_and_ood  # deferred: loads PyTorch

        with self._lock:
            return probabilities_and_ood(self._loaded, self._scored, images, self.batch_size, self.tta, self.device)

    def predict_prepared(self, images: np.ndarray, sources: list[str] | None = None, true_labels=None,
                         framings=None, familiarity: bool = True) -> list[Prediction]:
        """Predictions for prepared ``uint8`` images ``(N, S, S, 3)``."""
        probs, ood_scores = self.scores(images)
        return self.make_predictions(probs, ood_scores, sources, true_labels, framings, familiarity)

    def make_predictions(self, probs: np.ndarray, ood_scores: np.ndarray | None, sources=None,
                         true_labels=None, framings=None, familiarity: bool = True) -> list[Prediction]:
        """Turn the output of :meth:`scores` into :class:`Prediction` records with their flags; without
        ``familiarity`` the familiarity check is not applied (cells cut from whole fields, which it was
        not calibrated on)."""
        sources = sources or [f"image {i}" for i in range(len(probs))]
        true_labels = true_labels or [None] * len(probs)
        framings = framings or [None] * len(probs)
        names = self.class_names
        familiar = self.familiar_threshold if familiarity else None
        scores, flagged, unfamiliar = split_scores(ood_scores, self.ood_threshold, familiar)
        out = []
        for i in range(len(probs)):
            k = int(probs[i].argmax())
            odd = None if unfamiliar is None else bool(unfamiliar[i])
            out.append(Prediction(
                source=sources[i],
                label=names[k],
                probability=float(probs[i, k]),
                probabilities={n: float(p) for n, p in zip(names, probs[i])},
                uncertain=bool(probs[i, k] < self.abstain_threshold) or bool(odd),
                not_a_blood_cell=None if flagged is None else bool(flagged[i]),
                ood_score=None if scores is None else float(scores[i]),
                true_label=true_labels[i],
                framing=framings[i],
                unfamiliar=odd,
            ))
        return out

    def predict_arrays(self, images: list[np.ndarray], sources: list[str] | None = None,
                       familiarity: bool = True) -> list[Prediction]:
        """Predictions for RGB ``uint8`` images of any size (cropped and resized here); ``familiarity``
        as for :meth:`make_predictions`."""
        if not len(images):
            return []
        framed = [self.prepare_framed(im) for im in images]
        return self.predict_prepared(np.stack([a for a, _ in framed]), sources, framings=[f for _, f in framed],
                                     familiarity=familiarity)

    def iter_predict(self, inputs, progress: bool = False, chunk: int | None = None, workers: int | None = None,
                     skip=None):
        """Classify like :meth:`predict`, yielding ``(predictions, problems)`` batch by batch, in input order.

        Images are decoded by ``workers`` threads while the model runs (:mod:`bloodcell.prediction.stream`),
        ``chunk`` images at a time (default: the batch size). The first pair holds no predictions; problems
        come with the batch during which they were found. ``skip(item)`` leaves out items already done.
        """
        return classify_stream(self, inputs, progress=progress, chunk=chunk, workers=workers, skip=skip)

    def predict(self, inputs, progress: bool = False, chunk: int | None = None, workers: int | None = None) -> PredictionRun:
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

    def differential(self, predictions) -> Differential:
        return differential(predictions, self.class_names)


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
    precision: str | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> PredictResult:
    """Classify images and write the per-image results and the differential count (``bloodcell predict``).

    Parameters
    ----------
    paths : str, Path or list of them
        Image files, folders (searched recursively), globs, ``.npz`` arrays or CSV manifests.
    model : str or Path, optional
        Model folder or ``.onnx`` file (default: the bundled model, or ``$BLOODCELL_MODEL``).
    format : {"table", "csv", "json"}
    output : str or Path, optional
        File to write, checked before any work starts; finished rows wait in ``<output>.partial`` until it is written.
    differential : {"auto", "only", "no"}
        ``auto``: after the table (inside the JSON) for two or more images; ``only``: just the differential.
    backend, batch_size, tta, abstain_threshold, ood_threshold, threads, precision
        As for :class:`Classifier`; ``workers``: decoding threads (default: the usable CPUs).
    progress : bool
        Show a progress bar on standard error.

    Returns
    -------
    PredictResult
        Predictions, skipped inputs, differential, output text, the file written and the model.

    Raises
    ------
    ConfigError, DataError
        A bad option or an unwritable output; or no image could be classified (``problems`` says why).
    """
    outputs.check_choices(format, differential)
    output = check_writable_file(output) if output is not None else None
    clf = Classifier(model, backend=backend, batch_size=batch_size, tta=tta, threads=threads, precision=precision,
                     abstain_threshold=abstain_threshold, ood_threshold=ood_threshold)
    partial = outputs.PartialResults(output, clf.class_names) if output is not None else None
    run = outputs.gather(clf.iter_predict(paths, progress=progress, workers=workers), partial)
    if not run.predictions:
        raise run.nothing_classified()
    only, many = differential == "only", differential == "auto" and len(run.predictions) >= 2
    diff = clf.differential(run.predictions) if only or many else None
    text = outputs.render(format, clf.describe(), run.predictions, run.problems, diff, clf.class_names, only,
                          outputs.notes(clf.abstain_source, clf.abstain_threshold, clf.has_ood))
    if partial is not None:
        partial.finish(text)
    return PredictResult(run.predictions, run.problems, diff, text, output, clf.describe())
