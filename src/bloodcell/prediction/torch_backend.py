"""Class probabilities from a loaded model: batching, calibration and test-time augmentation.

Every consumer (evaluate, predict, serve) calls :func:`predict_proba`, so a
model gives the same probabilities everywhere for the same prepared images.
"""

from __future__ import annotations

import numpy as np
import torch

from bloodcell.core.errors import DataError
from bloodcell.core.preprocess import TTA_VIEWS
from bloodcell.networks.batches import tensor_batches
from bloodcell.networks.loading import LoadedModel


def _check_images(images: np.ndarray, size: int) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        got = f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}"
        raise DataError(f"Expected prepared images as uint8 (N, H, W, 3), got {got}. Use bloodcell.prepare first.")
    if images.shape[1:3] != (size, size):
        raise DataError(
            f"Images are {images.shape[1]}x{images.shape[2]} but the model expects {size}x{size}. "
            "Prepare them with the model's own PreprocessConfig (loaded.preprocess)."
        )


def _views(x: torch.Tensor, tta: bool):
    if not tta:
        yield x
        return
    for k, flip in TTA_VIEWS:
        v = torch.flip(x, dims=(3,)) if flip else x
        yield torch.rot90(v, k, dims=(2, 3)) if k else v


@torch.inference_mode()
def predict_logits(loaded: LoadedModel, images: np.ndarray, batch_size: int = 64, device=None) -> np.ndarray:
    """Raw logits (N, C) of prepared uint8 images, without calibration or TTA."""
    _check_images(images, loaded.preprocess.image_size)
    device = torch.device(device) if device is not None else next(loaded.module.parameters()).device
    out = []
    for x in tensor_batches(images, loaded.preprocess, batch_size, device):
        out.append(loaded.module(x).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, len(loaded.class_names)), np.float32)


def tta_temperature(loaded: LoadedModel) -> float:
    """Temperature for test-time-augmented predictions: ``calibration.tta.temperature`` if fitted, else the plain one."""
    cal = loaded.meta.get("calibration") or {}
    return float((cal.get("tta") or {}).get("temperature", loaded.temperature))


@torch.inference_mode()
def predict_view_logits(loaded: LoadedModel, images: np.ndarray, batch_size: int = 64, device=None) -> np.ndarray:
    """Raw logits of every test-time-augmentation view, shape (V, N, C), views in :data:`TTA_VIEWS` order.

    ``predict_proba(..., tta=True)`` equals the mean over views of
    ``softmax(logits / T)``; calibration fits ``T`` on these logits.
    """
    _check_images(images, loaded.preprocess.image_size)
    device = torch.device(device) if device is not None else next(loaded.module.parameters()).device
    out = []
    for x in tensor_batches(images, loaded.preprocess, batch_size, device):
        out.append(torch.stack([loaded.module(v).float().cpu() for v in _views(x, True)]))
    if not out:
        return np.zeros((len(TTA_VIEWS), 0, len(loaded.class_names)), np.float32)
    return torch.cat(out, dim=1).numpy()


@torch.inference_mode()
def predict_proba(
    loaded: LoadedModel,
    images: np.ndarray,
    batch_size: int = 64,
    tta: bool = False,
    calibrated: bool = True,
    device=None,
) -> np.ndarray:
    """Class probabilities (N, C), columns in ``loaded.class_names`` order.

    Parameters
    ----------
    loaded : LoadedModel
        From :func:`bloodcell.networks.load_model`.
    images : ndarray of uint8, shape (N, S, S, 3)
        Images prepared with ``loaded.preprocess`` (see :func:`bloodcell.prepare`).
    batch_size : int
        Images per forward pass.
    tta : bool
        Average the probabilities over the eight flips/90° rotations.
    calibrated : bool
        Divide logits by the model's fitted temperature (1.0 if never calibrated);
        with ``tta``, by the temperature fitted on augmented predictions when
        the model has one (see :func:`tta_temperature`).
    """
    _check_images(images, loaded.preprocess.image_size)
    device = torch.device(device) if device is not None else next(loaded.module.parameters()).device
    temperature = (tta_temperature(loaded) if tta else loaded.temperature) if calibrated else 1.0
    out = []
    for x in tensor_batches(images, loaded.preprocess, batch_size, device):
        probs = None
        n_views = 0
        for view in _views(x, tta):
            p = torch.softmax(loaded.module(view).float() / temperature, dim=1)
            probs = p if probs is None else probs + p
            n_views += 1
        out.append((probs / n_views).cpu())
    if not out:
        return np.zeros((0, len(loaded.class_names)), np.float32)
    return torch.cat(out).numpy().astype(np.float32)


def probabilities_and_ood(loaded: LoadedModel, scored, images: np.ndarray, batch_size: int = 64, tta: bool = False,
                          device=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Calibrated probabilities ``(N, C)`` and out-of-distribution scores ``(N,)`` of prepared images.

    ``scored`` is the model with its fitted scoring head
    (:class:`bloodcell.ood.score.ScoredModel`), or ``None`` when the model has
    none (the scores are then ``None``). Without ``tta`` one forward pass gives both.
    """
    if scored is None or tta:
        probs = predict_proba(loaded, images, batch_size, tta=tta, calibrated=True, device=device)
        if scored is None:
            return probs, None
    else:
        _check_images(images, loaded.preprocess.image_size)
    where = next(loaded.module.parameters()).device
    logits, scores = [], []
    with torch.inference_mode():
        for x in tensor_batches(images, loaded.preprocess, batch_size, where):
            out = scored(x)
            logits.append(out[0].float().cpu())
            scores.append(out[1].float().cpu().numpy())
    scores = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    if not tta:
        if not logits:
            return np.zeros((0, len(loaded.class_names)), np.float32), scores
        probs = torch.softmax(torch.cat(logits) / loaded.temperature, dim=1).numpy().astype(np.float32)
    return probs, scores
