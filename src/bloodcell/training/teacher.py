"""Knowledge distillation: a trained model's probabilities as soft targets for the network being trained.

``bloodcell train --teacher MODEL`` (``default`` = the packaged model) computes the
teacher's probabilities on every training image once, with its calibrated temperature
and, by default, averaged over the eight flips and rotations of test-time augmentation,
and stores them in the run folder (``teacher.npz``, reused on ``--resume``). The loss
then mixes cross-entropy on the labels with the divergence from those probabilities
(:class:`DistillLoss`), so one network can learn what an ensemble with TTA knows and
predict at the speed of one network without TTA.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bloodcell.core.classes import canonical_class
from bloodcell.core.errors import ConfigError, DataError
from bloodcell.core.files import atomic_write_bytes
from bloodcell.core.preprocess import PreprocessConfig, tta_views

#: The run folder's cache of the teacher's probabilities on the training images.
TEACHER_FILE = "teacher.npz"
#: Preprocessing keys that decide which pixels a model sees; the teacher must see the student's images.
GEOMETRY = ("image_size", "crop_fraction", "framing", "cell_share")


class DistillLoss(nn.Module):
    """``(1 - w) * CE(labels) + w * T^2 * KL(teacher_T || student_T)``.

    The teacher's probabilities are sharpened or softened by ``T`` as
    ``softmax(log p / T)``; ``T^2`` keeps the gradient's scale independent of ``T``
    (Hinton et al., 2015).
    """

    def __init__(self, hard: nn.Module, weight: float, temperature: float):
        super().__init__()
        self.hard, self.weight, self.temperature = hard, float(weight), float(temperature)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        target = F.softmax(torch.log(teacher_probs.clamp_min(1e-8)) / t, dim=1)
        soft = F.kl_div(F.log_softmax(logits / t, dim=1), target, reduction="batchmean") * (t * t)
        if self.weight >= 1.0:
            return soft
        return (1.0 - self.weight) * self.hard(logits, labels) + self.weight * soft


def _key(teacher: Path, tta: bool, manifest: str | None, class_names) -> str:
    """What the cached probabilities depend on: the teacher and its weights, TTA, the training images, the classes."""
    from bloodcell.core.model_folder import weights_digest

    text = json.dumps([str(teacher), weights_digest(teacher), bool(tta), manifest, list(class_names)])
    return hashlib.sha256(text.encode()).hexdigest()


def _class_columns(teacher_classes, student_classes, teacher: Path) -> np.ndarray:
    """Column of each student class in the teacher's output; every student class must be a teacher class."""
    index = {canonical_class(c): i for i, c in enumerate(teacher_classes)}
    missing = [c for c in student_classes if canonical_class(c) not in index]
    if missing:
        raise ConfigError(f"--teacher {teacher}: it does not predict {', '.join(missing)}, which the training data "
                          "has; a teacher must know every class it teaches. Choose another teacher or drop those classes.")
    return np.array([index[canonical_class(c)] for c in student_classes])


def same_geometry(a: PreprocessConfig, b: PreprocessConfig) -> bool:
    """Whether two preprocessings crop and size an image alike (normalization may differ)."""
    return all(getattr(a, k) == getattr(b, k) for k in GEOMETRY)


def teacher_probabilities(model, images: np.ndarray, tta: bool, batch_size: int = 64,
                          progress: bool = True) -> np.ndarray:
    """The teacher's calibrated probabilities ``(N, C)`` on prepared ``uint8`` images, TTA-averaged if asked.

    ``model`` is a loaded model folder (PyTorch) or its ONNX export (onnxruntime, about twice
    as fast on the CPU); both give the same probabilities.
    """
    from bloodcell.evaluation.calibration import view_probs
    from bloodcell.evaluation.scoring import in_chunks
    from bloodcell.prediction.onnx_backend import OnnxModel
    from bloodcell.prediction.torch_backend import predict_proba, tta_temperature

    def probabilities(x: np.ndarray) -> np.ndarray:
        if not isinstance(model, OnnxModel):
            return predict_proba(model, x, batch_size, tta=tta)
        if not tta:
            return model.predict_proba(x, batch_size)
        return view_probs(np.stack([model.run(v, batch_size)[0] for v in tta_views(x)]), tta_temperature(model))

    return in_chunks(probabilities, images, progress, "teacher, 8 views" if tta else "teacher")


def load_teacher(folder: Path):
    """The teacher's float32 ONNX export of its present weights when it has one (faster), else the PyTorch model."""
    from bloodcell.core.errors import ModelError
    from bloodcell.networks.loading import load_model
    from bloodcell.prediction.onnx_backend import ONNX_FILE, OnnxModel

    if (folder / ONNX_FILE).is_file():
        try:
            onnx = OnnxModel(folder)
        except ModelError:
            onnx = None
        if onnx is not None and onnx.precision == "fp32" and onnx.exported_from(folder):
            return onnx
    return load_model(folder)


def teacher_folder(teacher: str) -> Path:
    """The model folder ``--teacher`` names: ``default`` (the packaged model) or a trained model folder."""
    from bloodcell.core.model_choice import default_model_dir, resolve_model
    from bloodcell.core.model_folder import is_model_folder

    if teacher == "default":
        return default_model_dir()
    folder = resolve_model(teacher)
    if not is_model_folder(folder):
        raise ConfigError(f"--teacher {teacher}: a teacher is a model folder (model.json and weights, as "
                          "`bloodcell train` writes), not an exported .onnx file.")
    return folder


def _read_cached(path: Path, key: str, n: int) -> np.ndarray | None:
    try:
        with np.load(path) as z:
            if str(z["key"]) == key and len(z["probs"]) == n:
                return z["probs"].astype(np.float32)
    except (OSError, KeyError, ValueError):
        return None
    return None


def soft_targets(teacher: str, tta: bool, images: np.ndarray, pre: PreprocessConfig, run_dir: str | Path,
                 manifest: str | None, load_images=None, progress: bool = True, say=print) -> np.ndarray:
    """The teacher's probabilities on the training images, in the student's class order (cached in ``run_dir``).

    ``images`` are the training images prepared for the student (``pre``). A
    teacher that crops or sizes differently needs them prepared its way:
    ``load_images(teacher_pre)`` returns them, in the same order.
    """
    folder = teacher_folder(teacher)
    key = _key(folder.resolve(), tta, manifest, pre.class_names)
    cache = Path(run_dir) / TEACHER_FILE
    cached = _read_cached(cache, key, len(images))
    if cached is not None:
        say(f"Teacher probabilities of {folder} read from {cache}.")
        return cached
    loaded = load_teacher(folder)
    columns = _class_columns(loaded.class_names, pre.class_names, folder)
    tpre = loaded.preprocess
    if not same_geometry(tpre, pre):
        if load_images is None:
            raise ConfigError(f"--teacher {folder} crops or sizes images differently from this run "
                              f"({tpre.image_size} px, crop {tpre.crop_fraction}, {tpre.framing} framing).")
        images = load_images(dataclasses.replace(tpre, class_names=pre.class_names))
    engine = "PyTorch" if hasattr(loaded, "module") else "onnxruntime"
    say(f"Teacher: {folder} ({engine}, {'with TTA, ' if tta else ''}{len(images)} training images, computed once).")
    probs = teacher_probabilities(loaded, images, tta, progress=progress)[:, columns]
    probs = probs / probs.sum(axis=1, keepdims=True)
    if not np.isfinite(probs).all():
        raise DataError(f"--teacher {folder}: its probabilities on the training images are not finite.")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, probs=probs.astype(np.float32), key=np.array(key), teacher=np.array(str(folder)))
    atomic_write_bytes(cache, buf.getvalue())
    return probs.astype(np.float32)


def with_teacher(cfg, criterion: nn.Module, data, pre: PreprocessConfig, run_dir, is_main: bool, teacher_images,
                 progress: bool, say) -> tuple[nn.Module, torch.Tensor | None]:
    """The run's loss and soft targets: ``criterion`` and ``None`` without ``cfg.teacher``.

    Rank 0 computes and caches the teacher's probabilities; the other processes
    of a distributed run wait for it and read them.
    """
    if not cfg.teacher:
        return criterion, None
    from bloodcell.training import distributed

    if not is_main:
        distributed.barrier()
    probs = soft_targets(cfg.teacher, cfg.teacher_tta, data.train_images, pre, run_dir, data.manifest_sha256,
                         teacher_images, progress, say)
    if is_main:
        distributed.barrier()
    return DistillLoss(criterion, cfg.distill_weight, cfg.distill_temperature), torch.from_numpy(probs)
