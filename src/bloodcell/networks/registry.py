"""A decorator registry of model architectures and one :func:`create_model`.

Each architecture is a small function decorated with :func:`register_model`;
its name is the key. The built-in architectures (:mod:`~bloodcell.networks.custom_cnn`,
:mod:`~bloodcell.networks.timm_zoo`) register themselves when :mod:`bloodcell.networks`
is imported, which happens before any module of the package, this one included, is used.
The entry also declares the preprocessing the architecture expects (input size and normalization), which becomes the
default :class:`~bloodcell.core.preprocess.PreprocessConfig` of a new model.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from bloodcell.core.errors import ModelError
from bloodcell.core.preprocess import IMAGENET_MEAN, IMAGENET_STD
from bloodcell.networks.pretrained import load_pretrained


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    family: str
    description: str
    default_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pretrained: str | None = None
    weights_of: str | None = None


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    *,
    family: str,
    description: str,
    default_size: int,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    pretrained: str | None = None,
    weights_of: str | None = None,
):
    """Register ``fn(num_classes, **kwargs) -> nn.Module`` under its function name.

    ``weights_of`` names the architecture whose trained weights this one takes (the same
    layers with other normalisation), so ``train --init`` can start it from such a model.
    """

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__name__ in _REGISTRY:
            raise RuntimeError(f"model {fn.__name__!r} is registered twice")
        _REGISTRY[fn.__name__] = ModelEntry(
            fn.__name__, fn, family, description, default_size, mean, std, pretrained, weights_of
        )
        return fn

    return wrap


def list_models() -> list[str]:
    """Names of every registered architecture, sorted."""
    return sorted(_REGISTRY)


def variants_of(name: str) -> list[str]:
    """Architectures that take ``name``'s trained weights (``weights_of``), sorted."""
    return sorted(n for n, e in _REGISTRY.items() if e.weights_of == name)


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; unknown names get a "did you mean"."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ModelError(
            f"Unknown model {name!r}.{hint} Known models: {', '.join(sorted(_REGISTRY))} "
            "(run `bloodcell models` to list them)."
        )
    return _REGISTRY[name]


def create_model(name: str, num_classes: int = 8, pretrained: bool | str = False, **kwargs) -> nn.Module:
    """Build a registered architecture.

    Parameters
    ----------
    name : str
        A name from :func:`list_models`.
    num_classes : int
        Size of the output layer.
    pretrained : bool or str
        ``True`` loads the architecture's ImageNet weights (from the local
        package that ships them, or the hub when online); a path loads that
        weight file. The classifier is zero-initialised (uniform first predictions).
    """
    entry = get_entry(name)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ModelError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    model = entry.builder(num_classes=num_classes, **kwargs)
    if pretrained:
        load_pretrained(model, entry, None if pretrained is True else str(pretrained))
    return model


def models() -> list[dict]:
    """The architectures ``bloodcell train`` can build, as ``bloodcell models`` lists them.

    Returns
    -------
    list of dict
        One row per architecture, sorted by name: ``name``, ``family`` (``custom`` or
        ``timm``), ``default_size`` (input pixels), ``pretrained`` (where its ImageNet weights
        come from: ``package:...``, ``hub:...`` or ``None``) and ``description``.
    """
    return [{"name": e.name, "family": e.family, "default_size": e.default_size, "pretrained": e.pretrained,
             "description": e.description} for e in (get_entry(n) for n in list_models())]
