"""Cases for review: a lab's images of one sample, the model's pre-classification of each cell,
the reviewer's label, and the signed-out differential (:class:`CaseStore`, :func:`case`)."""

from __future__ import annotations

from pathlib import Path

from bloodcell.cases.export import case_csv, case_json, media, write_dataset_zip
from bloodcell.cases.records import NewCell, allowed_labels
from bloodcell.cases.report import case_report
from bloodcell.cases.store import CaseStore
from bloodcell.core.errors import ConfigError
from bloodcell.core.files import atomic_write_text, atomic_write_with, check_writable_file

FORMATS = ("csv", "json", "report", "dataset")


def export_case(store: CaseStore, case_id: int, fmt: str, out: str | Path) -> Path:
    """Write one case in ``fmt`` (:data:`FORMATS`) to ``out``, atomically."""
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    out = check_writable_file(out, "export file", "--out")
    store.case(case_id)
    if fmt == "dataset":
        atomic_write_with(out, lambda tmp: write_dataset_zip(store, case_id, tmp))
    else:
        text = {"csv": case_csv, "json": case_json, "report": case_report}[fmt](store, case_id)
        atomic_write_text(out, text)
    return out


def case(command: str, data_dir: str | Path, case_id: int | None = None, *, format: str = "report",
         out: str | Path | None = None):
    """List the cases of a store, export one, or check the store (``bloodcell case``).

    Parameters
    ----------
    command : {"list", "export", "check"}
    data_dir : str or Path
        The case store folder (the one given to ``bloodcell serve --cases``).
    case_id : int, optional
        The case to export.
    format : {"csv", "json", "report", "dataset"}
        CSV of the cells, JSON of the whole case, the printable HTML report, or a ZIP of the
        reviewed cells as class folders with ``manifest.csv``.
    out : str or Path, optional
        File to write (default ``case-<id>.<csv|json|html|zip>`` in the working folder).

    Returns
    -------
    list of dict, Path or list of str
        The cases (newest change first) for ``list``; the file written for ``export``; the
        problems found by ``check`` (:meth:`CaseStore.verify`; empty when all is well).

    Raises
    ------
    ConfigError
        An unknown command or format, or an output that cannot be written.
    DataError
        No store in ``data_dir``, or no such case.
    """
    if command not in ("list", "export", "check"):
        raise ConfigError(f"command must be 'list', 'export' or 'check', got {command!r}.")
    store = CaseStore(data_dir, create=False)
    if command == "list":
        return store.cases()
    if command == "check":
        return store.verify()
    if case_id is None:
        raise ConfigError("export needs a case id; `bloodcell case list DATA_DIR` shows them.")
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {format!r}.")
    return export_case(store, int(case_id), format, out or f"case-{case_id}{media(format)[1]}")


__all__ = ["FORMATS", "CaseStore", "NewCell", "allowed_labels", "case", "export_case"]
