"""Pick the reader for a path: class folders, ``.npz`` or CSV manifest."""

from __future__ import annotations

from pathlib import Path

from bloodcell.core.errors import DataError
from bloodcell.data.readers.dataset import Dataset
from bloodcell.data.readers.folder import UnknownClassError, read_folder
from bloodcell.data.readers.manifest import read_manifest
from bloodcell.data.readers.npz import read_npz

#: Appended to an unknown-class error by verbs that have the ``--skip-unknown`` flag.
SKIP_UNKNOWN_HINT = " Or pass --skip-unknown (skip_unknown=True) to leave them out."


def open_dataset(path: str | Path, *, skip_unknown: bool = False, skip_unknown_hint: bool = False) -> Dataset:
    """Open a dataset from a class-folder tree, an ``.npz`` file or a CSV manifest.

    Parameters
    ----------
    path : str or Path
        A folder with one sub-folder per class (names matched case-insensitively,
        aliases such as ``IG`` or ``thrombocyte`` accepted); an ``.npz`` with
        ``images`` and ``labels`` or MedMNIST-style ``train_images``,
        ``train_labels``, ``val_*``, ``test_*``; or a CSV with columns
        ``path,label[,split]`` (relative paths resolve against the CSV's folder).
    skip_unknown : bool
        For folders: leave out (and report) sub-folders whose names are not a
        class, instead of raising.
    skip_unknown_hint : bool
        Advise ``--skip-unknown`` when sub-folders are not classes; set only by
        verbs that have that flag, so no error advises a flag its verb lacks.

    Returns
    -------
    Dataset

    Raises
    ------
    DataError
        When the path is missing, empty, or not a readable dataset; the message
        names the file and the fix.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"{path}: no such file or folder. Pass a class-folder dataset, an .npz file or a CSV manifest."
        )
    if path.is_dir():
        try:
            return read_folder(path, skip_unknown=skip_unknown)
        except UnknownClassError as e:
            if not skip_unknown_hint:
                raise
            raise UnknownClassError(f"{e}{SKIP_UNKNOWN_HINT}") from None
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return read_npz(path)
    if suffix in (".csv", ".tsv"):
        return read_manifest(path)
    raise DataError(
        f"{path}: unsupported dataset file type {path.suffix or '(no extension)'!r}. "
        "Pass a folder with one sub-folder per class, an .npz file or a .csv manifest."
    )
