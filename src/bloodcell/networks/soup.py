"""Model soups: one network whose weights are the (weighted) mean of several networks' weights.

Networks fine-tuned from the same pretrained weights (the default model's members: the same
ImageNet start, different seeds) usually stay in one basin of the loss, so the mean of their
weights is itself a good network (Wortsman et al., "Model soups", ICML 2022): often as
accurate as their soft-voting ensemble, at one network's prediction cost. Networks trained
from different random starts do not average into anything useful; calibrate and evaluate a
soup on validation data before using it (``bloodcell calibrate``, ``bloodcell evaluate``).

Batch-norm statistics are averaged with the weights, or re-estimated on training images. For the
default model's two members, averaging was better (PBC validation 99.04% against 98.90%); for a
network and its fine-tune on other labs' looks, whose statistics differ, only re-estimating gave a
working network (98.2% averaged, 99.0% re-estimated; see the README). The soup's temperature and
abstention threshold are not the members': it is written uncalibrated.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from bloodcell.core.errors import ConfigError, ModelError
from bloodcell.core.files import staged_folder
from bloodcell.core.model_folder import WEIGHTS, folder_of, read_meta
from bloodcell.core.preprocess import PreprocessConfig
from bloodcell.networks.batch_norm import reestimate_batch_norm
from bloodcell.networks.ensemble import check_output, shared_cell_share
from bloodcell.networks.loading import build_module, load_model, save_model
from bloodcell.networks.voting import member_dir, normalize_weights

#: preprocessing entries the members must share exactly (their networks see the same input)
SAME_INPUT = ("image_size", "crop_fraction", "mean", "std", "class_names", "normalization", "framing", "cell_share")


def _ingredients(models: list[str | Path], weights) -> tuple[list[Path], list[float]]:
    """Single-model folders and their weights; an ensemble folder stands for its members (with its weights)."""
    folders: list[Path] = []
    given: list[float] = []
    for i, m in enumerate(models):
        folder = folder_of(m)
        meta = read_meta(folder)
        w = 1.0 if weights is None else float(weights[i])
        ens = meta.get("ensemble")
        if ens:
            members = [member_dir(folder, name) for name in ens["members"]]
            folders += members
            given += [w * v for v in normalize_weights(ens.get("weights"), len(members))]
        else:
            folders.append(folder)
            given.append(w)
    if len(folders) < 2:
        raise ConfigError(f"A soup needs at least two networks, got {len(folders)}. "
                          "Example: bloodcell soup runs/a runs/b -o runs/soup")
    return folders, normalize_weights(given, len(folders))


def _check_alike(folders: list[Path], metas: list[dict]) -> None:
    first, base = folders[0], metas[0]
    for f, m in zip(folders[1:], metas[1:]):
        for key in ("architecture", "model_kwargs"):
            if m.get(key) != base.get(key):
                raise ModelError(f"{f}: {key} {m.get(key)!r} differs from {first}'s {base.get(key)!r}; "
                                 "a soup averages networks of one architecture.")
        for key in SAME_INPUT:
            if m["preprocess"].get(key) != base["preprocess"].get(key):
                raise ModelError(f"{f}: preprocessing {key} {m['preprocess'].get(key)!r} differs from {first}'s "
                                 f"{base['preprocess'].get(key)!r}; a soup's networks must see the same input.")


def _mean_state(folders: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    total: dict[str, torch.Tensor] = {}
    shapes: dict[str, tuple] = {}
    for f, w in zip(folders, weights):
        try:
            state = load_file(str(f / WEIGHTS))
        except Exception as e:  # noqa: BLE001 - safetensors raises several types
            raise ModelError(f"{f / WEIGHTS}: unreadable weight file ({e}).") from None
        if total and set(state) != set(total):
            raise ModelError(f"{f}: its tensors differ from {folders[0]}'s; not the same network.")
        for key, value in state.items():
            if key in shapes and tuple(value.shape) != shapes[key]:
                raise ModelError(f"{f}: tensor {key!r} is {tuple(value.shape)}, {shapes[key]} in {folders[0]}.")
            shapes[key] = tuple(value.shape)
            if not value.is_floating_point():  # counters (batch-norm num_batches_tracked): the first's
                total.setdefault(key, value.clone())
                continue
            total[key] = total.get(key, torch.zeros(value.shape, dtype=torch.float64)) + w * value.double()
    return {k: v.float() if v.is_floating_point() else v for k, v in total.items()}


def average_weights(models: list[str | Path], output: str | Path, *, weights: list[float] | None = None,
                    force: bool = False, batch_norm_images: Callable[[PreprocessConfig], np.ndarray] | None = None,
                    progress: bool = False) -> Path:
    """Average networks' weights into one model folder: the work of :func:`bloodcell.training.soup.soup`
    (``bloodcell soup``), whose documentation gives ``models``, ``output``, ``weights``, ``force``,
    what it returns and raises. ``batch_norm_images``, given the soup's preprocessing, returns prepared
    ``uint8`` images (NHWC) on which the batch-norm statistics are re-estimated
    (:func:`~bloodcell.networks.batch_norm.reestimate_batch_norm`, with a progress bar when
    ``progress``) instead of averaged.
    """
    if weights is not None and len(weights) != len(models):
        raise ConfigError(f"--weights gives {len(weights)} weight(s) for {len(models)} model(s); give one per model.")
    if weights is not None:
        normalize_weights(weights, len(models), what="Soup weights")  # the user's numbers, before ensembles expand
    folders, w = _ingredients(models, weights)
    out = Path(output)
    check_output(folders, out, force, what="soup")
    metas = [read_meta(f) for f in folders]
    _check_alike(folders, metas)
    state = _mean_state(folders, w)
    hashes = {m.get("data_manifest_sha256") for m in metas}
    meta = {key: metas[0][key] for key in ("format", "architecture", "model_kwargs", "preprocess") if key in metas[0]}
    meta.update(shared_cell_share(metas), history=[], metrics={},
                data_manifest_sha256=hashes.pop() if len(hashes) == 1 else None,
                soup={"members": [str(f.resolve()) for f in folders], "weights": w,
                      "member_metrics": [m.get("metrics") or {} for m in metas]})
    module = build_module(meta)
    module.load_state_dict(state)
    if batch_norm_images is not None:
        pre = PreprocessConfig.from_dict(meta["preprocess"])
        images = batch_norm_images(pre)
        module.to(memory_format=torch.channels_last)  # as load_model runs it on the CPU: about twice as fast
        layers = reestimate_batch_norm(module, images, pre, progress=progress)
        meta["soup"]["batch_norm"] = {"reestimated_on_images": len(images), "layers": layers}
    with staged_folder(out) as staging:
        save_model(staging, module, meta)
        load_model(staging)
    return out
