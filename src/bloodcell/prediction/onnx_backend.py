"""Inference with onnxruntime, without PyTorch.

:class:`OnnxModel` opens a file written by ``bloodcell export`` and reads its
preprocessing, class names, calibration and out-of-distribution threshold from
the file's metadata, so the ``.onnx`` file alone is a complete model. This
module imports NumPy, Pillow and onnxruntime only.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from bloodcell.core.errors import DataError, ModelError
from bloodcell.core.model_folder import ONNX as ONNX_FILE
from bloodcell.core.model_folder import ONNX_FORMAT as FORMAT
from bloodcell.core.model_folder import weights_digest
from bloodcell.core.preprocess import PreprocessConfig, normalize
from bloodcell.core.settings import usable_cpus

#: The int8 twin of ``model.onnx`` in a model folder (static QDQ, calibrated on training images when
#: the model is packaged): ``bloodcell predict --precision int8`` runs it.
INT8_ONNX = "model.int8.onnx"
PRECISIONS = ("fp32", "int8")


def default_threads() -> int:
    """onnxruntime intra-op threads: the CPUs this process may use (at most 8)."""
    return min(8, usable_cpus())


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float32."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


@lru_cache(maxsize=1)
def no_telemetry() -> None:
    """Switch off onnxruntime's telemetry event store, once, before any session is created."""
    import onnxruntime  # deferred: heavy; every command's start-up imports this module

    if hasattr(onnxruntime, "disable_telemetry_events"):
        onnxruntime.disable_telemetry_events()


class OnnxModel:
    """An exported bloodcell model running on onnxruntime's CPU provider.

    Parameters
    ----------
    path : str or Path
        An ``.onnx`` file, or a model folder holding ``model.onnx``.
    threads : int, optional
        Intra-op threads (default :func:`default_threads`); one inter-op
        thread, sequential execution.
    spin : bool
        Let idle intra-op threads spin while they wait for work (onnxruntime's
        default). Switch it off when other threads of the process decode images
        on the same cores: spinning threads take the CPU time they need.
    """

    def __init__(self, path: str | Path, threads: int | None = None, spin: bool = True):
        import onnxruntime as ort  # deferred: heavy; every command's start-up imports this module

        no_telemetry()

        path = Path(path)
        file = path / ONNX_FILE if path.is_dir() else path
        if not file.is_file():
            raise ModelError(
                f"{file}: no exported model here. Create it with `bloodcell export --format onnx {path}`."
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ModelError(f"{file}: not a loadable ONNX model ({str(e)[:300]}).") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if props.get("bloodcell.format") != FORMAT:
            raise ModelError(
                f"{file}: not a bloodcell export (metadata bloodcell.format={props.get('bloodcell.format')!r}, "
                f"expected {FORMAT!r}). Export it with `bloodcell export --format onnx MODEL`."
            )
        self.path = file
        self.properties = dict(props)
        self.preprocess = PreprocessConfig.from_dict(json.loads(props["bloodcell.preprocess"]))
        self.calibration: dict = json.loads(props.get("bloodcell.calibration") or "{}")
        self.ood: dict = json.loads(props.get("bloodcell.ood") or "{}")
        self.meta: dict = json.loads(props.get("bloodcell.model") or "{}")
        self.meta.update(preprocess=self.preprocess.to_dict(), calibration=self.calibration or None, ood=self.ood or None)
        self.quantization = props.get("bloodcell.quantization", "none")
        self.precision = "fp32" if self.quantization == "none" else "int8"
        self.weights_sha256 = props.get("bloodcell.weights_sha256")
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.has_ood = "ood_score" in self.output_names
        self.has_familiarity = self.has_ood and "familiarity" in self.output_names

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.preprocess.class_names

    @property
    def temperature(self) -> float:
        return float(self.calibration.get("temperature", 1.0))

    def run(self, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits ``(N, C)`` and out-of-distribution scores ``(N,)`` (``None`` if the model has none;
        ``(N, 2)`` with the familiarity score beside it when the export has one).

        ``images`` are prepared ``uint8`` ``(N, S, S, 3)`` (see :func:`bloodcell.prepare`).
        """
        size = self.preprocess.image_size
        if (not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4
                or images.shape[1:] != (size, size, 3)):
            got = f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}"
            raise DataError(f"Expected prepared images as uint8 (N, {size}, {size}, 3), got {got}. Use bloodcell.prepare first.")
        logits, scores = [], []
        for start in range(0, len(images), batch_size):
            out = self.session.run(None, {self.input_name: normalize(images[start : start + batch_size], self.preprocess)})
            named = dict(zip(self.output_names, out))
            logits.append(named["logits"])
            if self.has_familiarity:
                scores.append(np.stack([named["ood_score"], named["familiarity"]], 1))
            elif self.has_ood:
                scores.append(named["ood_score"])
        n_classes = len(self.class_names)
        if not logits:
            return np.zeros((0, n_classes), np.float32), (np.zeros(0, np.float32) if self.has_ood else None)
        return np.concatenate(logits), (np.concatenate(scores) if self.has_ood else None)

    def exported_from(self, folder: str | Path) -> bool:
        """Whether this export was made from the present weights of the model ``folder`` (exports older
        than the recorded digest are taken as such)."""
        return self.weights_sha256 is None or self.weights_sha256 == weights_digest(folder)

    def predict_proba(self, images: np.ndarray, batch_size: int = 64, calibrated: bool = True) -> np.ndarray:
        """Class probabilities ``(N, C)``, the model's temperature applied when ``calibrated``."""
        logits, _ = self.run(images, batch_size)
        return softmax(logits, self.temperature if calibrated else 1.0)
