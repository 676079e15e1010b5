"""Soft-voting ensembles of trained models, stored as one self-contained model folder.

An ensemble folder holds a ``model.json`` whose ``"ensemble"`` entry lists the
member sub-folders and their weights, and a copy of every member's model files
as ``member_0/``, ``member_1/``... Nothing points outside the folder, so it can
be moved or copied like any other model, and every command that takes a model
(evaluate, predict, export, serve) accepts it.

How members with different inputs are combined is :mod:`bloodcell.networks.voting`'s documentation.
"""

from __future__ import annotations

from pathlib import Path

from bloodcell.core.errors import ConfigError, ModelError
from bloodcell.core.files import staged_folder
from bloodcell.core.model_folder import FORMAT, META, folder_of, read_meta, write_meta
from bloodcell.core.preprocess import PreprocessConfig
from bloodcell.networks.loading import copy_model, load_model
from bloodcell.networks.voting import (
    EnsembleModule,
    build_ensemble_module,
    check_compatible,
    ensemble_preprocess,
    normalize_weights,
    resize_matrix,
)

ARCHITECTURE = "ensemble"

__all__ = [
    "ARCHITECTURE",
    "EnsembleModule",
    "build_ensemble_module",
    "check_compatible",
    "check_output",
    "ensemble",
    "ensemble_preprocess",
    "make_ensemble",
    "write_ensemble_meta",
    "normalize_weights",
    "resize_matrix",
]


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def check_output(folders: list[Path], out: Path, overwrite: bool, what: str = "ensemble") -> None:
    """Refuse an output (of an ``ensemble`` or a ``soup``) that overlaps a given model folder, or
    that exists without ``overwrite``."""
    target = out.resolve()
    for f in folders:
        if f.exists() and (_inside(target, f.resolve()) or _inside(f.resolve(), target)):
            raise ConfigError(
                f"The {what} output {out} overlaps member folder {f}: it is one of the given models or holds or "
                "lies inside one; choose an output folder outside every member."
            )
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"{out} already exists; choose another output folder or pass --force to replace it.")


def _member_configs(folders: list[Path], metas: list[dict]) -> list[PreprocessConfig]:
    """Each member's preprocessing, checked against member 0's classes and crop."""
    configs = []
    for f, meta in zip(folders, metas):
        try:
            configs.append(PreprocessConfig.from_dict(meta["preprocess"]))
        except (KeyError, TypeError, ConfigError) as e:
            raise ModelError(f"{f / META}: unreadable preprocessing entry ({e}).") from None
    for i, (f, cfg) in enumerate(zip(folders, configs)):
        check_compatible(f"{i} ({f})", cfg, configs[0], f"member 0 ({folders[0]})")
    return configs


def shared_cell_share(metas: list[dict]) -> dict:
    """``{"training_cell_share": share}`` when every model records one and they agree within 0.02 (their
    mean), else ``{}``: what ``bloodcell adapt`` scales a lab's cells to, kept by ensembles and soups."""
    shares = [m.get("training_cell_share") for m in metas]
    if not shares or any(not isinstance(x, (int, float)) for x in shares) or max(shares) - min(shares) > 0.02:
        return {}
    return {"training_cell_share": round(sum(shares) / len(shares), 4)}


def _ensemble_meta(folders: list[Path], metas: list[dict], configs: list[PreprocessConfig], weights) -> dict:
    """The ensemble's ``model.json``: shared preprocessing, one record per member, the weights."""
    names = [f"member_{i}" for i in range(len(folders))]
    hashes = {m.get("data_manifest_sha256") for m in metas}
    members = [
        {
            "name": name,
            "source": str(f.resolve()),
            "architecture": m.get("architecture"),
            "image_size": cfg.image_size,
            "temperature": float((m.get("calibration") or {}).get("temperature", 1.0)),
            "metrics": m.get("metrics") or {},
        }
        for name, f, m, cfg in zip(names, folders, metas, configs)
    ]
    return {
        "format": FORMAT,
        "architecture": ARCHITECTURE,
        "model_kwargs": {},
        "preprocess": ensemble_preprocess(configs).to_dict(),
        "config": {"members": members, "weights_given": None if weights is None else [float(w) for w in weights]},
        "history": [],
        "metrics": {},
        "data_manifest_sha256": hashes.pop() if len(hashes) == 1 else None,
        "ensemble": {"members": names, "weights": normalize_weights(weights, len(folders))},
        **shared_cell_share(metas),
    }


def make_ensemble(
    members: list[str | Path],
    out: str | Path,
    weights: list[float] | None = None,
    overwrite: bool = False,
) -> Path:
    """Build a soft-voting ensemble folder from trained model folders.

    Parameters
    ----------
    members : list of str or Path
        Two or more model folders (single models or ensembles) predicting the
        same classes with the same crop fraction.
    out : str or Path
        The ensemble folder to write. It receives ``model.json`` and a copy of
        each member's model files as ``member_0/``, ``member_1/``...
    weights : list of float, optional
        One positive weight per member; scaled to sum 1. Default: equal.
    overwrite : bool
        Replace ``out`` if it already holds files.

    Returns
    -------
    Path
        ``out``, loadable with :func:`bloodcell.networks.load_model`.

    Raises
    ------
    ConfigError
        Too few members, bad weights, or ``out`` exists (without
        ``overwrite``) or overlaps a member folder.
    ModelError
        A member is not a readable model, or members disagree on classes or crop.
    """
    folders = [folder_of(m) for m in members]
    if len(folders) < 2:
        raise ConfigError(
            f"An ensemble needs at least two member models, got {len(folders)}. "
            "Example: bloodcell ensemble runs/a runs/b -o runs/ensemble"
        )
    normalize_weights(weights, len(folders))
    out = Path(out)
    check_output(folders, out, overwrite)
    metas = [read_meta(f) for f in folders]
    meta = _ensemble_meta(folders, metas, _member_configs(folders, metas), weights)
    with staged_folder(out) as staging:
        for name, f in zip(meta["ensemble"]["members"], folders):
            copy_model(f, staging / name)
        write_meta(staging, meta)
        load_model(staging)  # every member loads and fits the ensemble, before anything is replaced
    return out


def write_ensemble_meta(folder: str | Path, count: int, weights: list[float] | None = None,
                        sources: list[str] | None = None) -> dict:
    """Write ``folder/model.json`` for the ``count`` members already written in it as ``member_0/``...;
    ``sources`` replaces the members' recorded origins (default: their paths). Returns the metadata.

    Raises
    ------
    ModelError
        A member is not a readable model, or members disagree on classes or crop.
    """
    folder = Path(folder)
    folders = [folder / f"member_{i}" for i in range(count)]
    normalize_weights(weights, count)
    metas = [read_meta(f) for f in folders]
    meta = _ensemble_meta(folders, metas, _member_configs(folders, metas), weights)
    for member, source in zip(meta["config"]["members"], sources or []):
        member["source"] = source
    write_meta(folder, meta)
    return meta


def ensemble(members: list[str | Path], output: str | Path, *, weights: list[float] | None = None,
             force: bool = False) -> Path:
    """Combine trained models into one soft-voting ensemble folder (``bloodcell ensemble``).

    Parameters
    ----------
    members : list of str or Path
        Two or more trained model folders (single models or ensembles).
    output : str or Path
        The ensemble folder to write.
    weights : list of float, optional
        One positive weight per member, in member order (scaled to sum 1; default: equal).
    force : bool
        Replace ``output`` if it exists.

    Returns
    -------
    Path
        The ensemble folder; every command that takes a model accepts it.

    Raises
    ------
    ConfigError, ModelError
        As :func:`make_ensemble`.
    """
    return make_ensemble(members, output, weights=weights, overwrite=force)
