"""Write the adapted copy of a model folder, member by member for an ensemble.

Every network of the model (each member of an ensemble, members of nested
ensembles included) is adapted on the fitting cells, prepared with its own
preprocessing, and written with :func:`bloodcell.networks.loading.save_model`.
Members lose their own calibration temperature (it was fitted on the old
data); the adapted model as a whole is calibrated afterwards on the held-out
cells. With ``drop_absent`` the classifier rows of classes the data lacks are
removed and the model predicts only the data's classes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from bloodcell.adaptation.tune import TuneSettings, tune_network
from bloodcell.core.model_folder import read_meta, write_meta
from bloodcell.data import load_arrays
from bloodcell.networks.loading import load_model, save_model
from bloodcell.networks.voting import member_dir
from bloodcell.training.warmstart import classifier_name

#: Entries of ``model.json`` that describe the old model's fit to its old data, left out of the adapted copy.
STALE = ("calibration", "ood", "familiarity", "onnx", "model_card", "adaptation")


def networks_in(folder: Path) -> int:
    """How many networks a model folder holds (an ensemble's members, recursively)."""
    meta = read_meta(folder)
    members = (meta.get("ensemble") or {}).get("members") or []
    return sum(networks_in(member_dir(folder, m)) for m in members) if members else 1


def _drop_rows(net: nn.Module, names: tuple[str, ...], keep: list[str]) -> None:
    """Keep only the classifier rows of ``keep`` (in that order)."""
    path = classifier_name(net, len(names))
    old = net.get_submodule(path)
    new = nn.Linear(old.in_features, len(keep), bias=old.bias is not None)
    rows = torch.tensor([names.index(c) for c in keep])
    with torch.no_grad():
        new.weight.copy_(old.weight[rows])
        if old.bias is not None:
            new.bias.copy_(old.bias[rows])
    parent, _, attr = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, attr, new)


def _fresh_meta(meta: dict, keep: list[str] | None, crop_fraction: float | None = None) -> dict:
    out = {k: v for k, v in meta.items() if k not in STALE}
    if keep is not None:
        out["preprocess"] = {**out["preprocess"], "class_names": list(keep)}
    if crop_fraction is not None:
        out["preprocess"] = {**out["preprocess"], "crop_fraction": crop_fraction}
    return out


def adapt_tree(src: Path, dst: Path, fit_data, settings: TuneSettings, keep: list[str] | None, report,
               done: list[int], total: int, progress: bool, name: str = "model") -> list[dict]:
    """Write the adapted copy of model folder ``src`` into ``dst``; returns one record per network.

    ``fit_data`` is the :class:`~bloodcell.data.Dataset` of fitting cells, ``keep`` the classes to keep
    (``None``: all), ``report(fraction, message)`` sees progress over all ``total`` networks
    (``done[0]`` counts those finished).
    """
    meta = read_meta(src)
    members = (meta.get("ensemble") or {}).get("members") or []
    if members:
        records = []
        for member in members:
            records += adapt_tree(member_dir(src, member), member_dir(dst, member), fit_data, settings, keep, report,
                                  done, total, progress, f"{name}/{member}" if name != "model" else member)
        new = _fresh_meta(meta, keep, settings.crop_fraction)
        config = dict(new.get("config") or {})
        config["members"] = [{**m, "temperature": 1.0} for m in config.get("members") or []]
        new["config"] = config
        dst.mkdir(parents=True, exist_ok=True)
        write_meta(dst, new)
        return records
    loaded = load_model(src, "cpu")
    names = loaded.class_names
    pre = loaded.preprocess
    if settings.crop_fraction is not None:
        pre = dataclasses.replace(pre, crop_fraction=settings.crop_fraction)
    arrays = load_arrays(fit_data, pre, class_names=names, progress=progress)

    def member_report(fraction: float, message: str) -> None:
        report((done[0] + fraction) / total, f"network {done[0] + 1}/{total}: {message}")

    record = tune_network(loaded.module, pre, arrays.images, arrays.labels, settings, member_report)
    if keep is not None and list(keep) != list(names):
        _drop_rows(loaded.module, names, keep)
    save_model(dst, loaded.module, _fresh_meta(meta, keep, settings.crop_fraction))
    done[0] += 1
    return [{"network": name, "architecture": meta.get("architecture"), **record}]
