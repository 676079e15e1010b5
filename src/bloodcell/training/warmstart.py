"""Start training from an existing bloodcell model (``--init FOLDER`` or ``--init default``).

The new model takes the old one's architecture, preprocessing (input size,
crop, mean/std) and weights. When the class sets differ, the classifier's
rows are matched by class name: classes both models know keep their trained
row, new classes get freshly initialised rows, and classes the new data lacks
are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from bloodcell.core.errors import ConfigError, ModelError
from bloodcell.core.model_choice import default_model_dir
from bloodcell.core.model_folder import META, WEIGHTS, folder_of, is_model_folder, read_meta
from bloodcell.core.preprocess import PreprocessConfig
from bloodcell.networks.loading import load_model
from bloodcell.networks.registry import get_entry, variants_of
from bloodcell.training.norm_transfer import match_norm_statistics


@dataclass
class InitSource:
    folder: Path
    meta: dict

    @property
    def architecture(self) -> str:
        return self.meta["architecture"]

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.meta["preprocess"]["class_names"])

    def fits(self, architecture: str) -> bool:
        """Whether ``architecture`` can start from this model's weights: the same one, or the same
        layers with other normalisation (a registered ``weights_of`` this model's architecture)."""
        return architecture == self.architecture or get_entry(architecture).weights_of == self.architecture

    def check_fits(self, architecture: str) -> None:
        """Refuse an ``architecture`` this model's weights do not fit, naming those they do fit."""
        if self.fits(architecture):
            return
        variants = " or ".join(variants_of(self.architecture))
        also = f", or give --model {variants} (the same layers with other normalisation)" if variants else ""
        raise ConfigError(f"--model {architecture} contradicts --init {self.folder}, a {self.architecture!r} model: "
                          "training from an init model keeps its architecture. Drop --model (the init model's "
                          f"architecture is used){also}.")


#: The ``--init`` value that stands for the model shipped in the package.
DEFAULT_MODEL = "default"


def resolve_init_dir(spec: str | Path) -> Path:
    """The model folder ``--init`` names: ``default`` (the packaged model) or a model folder (or its metadata file)."""
    if str(spec) == DEFAULT_MODEL:
        return default_model_dir()
    folder = folder_of(Path(spec).expanduser())
    if not is_model_folder(folder):
        raise ModelError(
            f"{folder}: no model here (expected a folder with {META} and {WEIGHTS}, as written by "
            f"`bloodcell train`, or {DEFAULT_MODEL!r} for the packaged model; exported .onnx files cannot be trained)."
        )
    return folder


def _best_member(folder: Path, members: list[str]) -> Path:
    """The member with the best validation accuracy (the first on a tie or when none is recorded)."""
    def val_acc(member: str) -> float:
        value = (read_meta(folder / member).get("metrics") or {}).get("val_acc")
        return float(value) if isinstance(value, (int, float)) else float("-inf")

    return folder / max(members, key=lambda m: (val_acc(m), -members.index(m)))


def open_init(spec: str) -> InitSource:
    """Find and check the model to start from.

    An ensemble is refused (pick one member), except the packaged default
    model: ``--init default`` starts from its member with the best
    validation accuracy, so the documented command works whatever the
    default model is.
    """
    folder = resolve_init_dir(spec)
    meta = read_meta(folder)
    if meta.get("ensemble") and str(spec) == DEFAULT_MODEL and meta["ensemble"].get("members"):
        folder = _best_member(folder, list(meta["ensemble"]["members"]))
        meta = read_meta(folder)
    if meta.get("ensemble"):
        members = meta["ensemble"].get("members", [])
        hint = f" Use one member folder, e.g. --init {folder / members[0]}." if members else ""
        raise ModelError(f"{folder} is an ensemble; training starts from a single model.{hint}")
    for key in ("architecture", "preprocess"):
        if key not in meta:
            raise ModelError(f"{folder / META}: missing {key!r}; not a model written by `bloodcell train`.")
    return InitSource(folder, meta)


def classifier_name(model: nn.Module, num_classes: int) -> str:
    """Dotted name of the final layer producing ``num_classes`` logits."""
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        for name, module in model.named_modules():
            if module is head and isinstance(head, nn.Linear):
                return name
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes:
            found = name
    if found is None:
        raise ModelError(f"Cannot find the classifier layer of {type(model).__name__} ({num_classes} outputs).")
    return found


def apply_init(model: nn.Module, source: InitSource, class_names: tuple[str, ...],
               pre: PreprocessConfig | None = None, images=None) -> dict:
    """Copy ``source``'s weights into ``model`` (built for ``class_names``); returns a summary.

    A group-norm variant of the source's architecture also gets its norm layers' scale and
    shift matched to the source's batch-norm outputs on a sample of ``images`` (the training
    images, prepared with ``pre``), see :mod:`~bloodcell.training.norm_transfer`.

    Raises
    ------
    ModelError
        When the weights are damaged or do not fit the architecture.
    """
    reference = load_model(source.folder)
    old = reference.module.state_dict()
    old_names = source.class_names
    head = classifier_name(model, len(class_names))
    new_state = model.state_dict()
    mapped = {}
    for key, value in new_state.items():
        if key.startswith(head + "."):
            continue
        if key not in old or old[key].shape != value.shape:
            raise ModelError(
                f"{source.folder}: weight {key!r} does not fit {source.architecture!r} as built now "
                f"({tuple(old[key].shape) if key in old else 'missing'} vs {tuple(value.shape)})."
            )
        mapped[key] = old[key]
    kept = [c for c in class_names if c in old_names]
    for suffix in ("weight", "bias"):
        key = f"{head}.{suffix}"
        if key not in new_state:
            continue
        fresh = new_state[key].clone()
        src = old[key]
        for i, c in enumerate(class_names):
            if c in old_names:
                fresh[i] = src[old_names.index(c)]
        mapped[key] = fresh
    model.load_state_dict(mapped)
    matched = 0
    if images is not None and pre is not None:
        matched = match_norm_statistics(model, pre, reference.module, reference.preprocess, images)
    return {
        "matched_norm_layers": matched,
        "from": str(source.folder),
        "architecture": source.architecture,
        "kept_classes": kept,
        "new_classes": [c for c in class_names if c not in old_names],
        "dropped_classes": [c for c in old_names if c not in class_names],
    }


def init_message(summary: dict) -> str:
    """The line that says where training starts from (:func:`apply_init`'s summary)."""
    new = f"; new classes {', '.join(summary['new_classes'])}" if summary["new_classes"] else ""
    if summary.get("matched_norm_layers"):
        new += f"; {summary['matched_norm_layers']} group-norm layers matched to its batch norm"
    return f"Starting from {summary['from']} ({summary['architecture']}){new}."
