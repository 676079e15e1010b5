"""``bloodcell audit``: open a dataset, audit it, write ``audit.json`` and the plots."""

from __future__ import annotations

from pathlib import Path

from bloodcell.core.files import atomic_write_json, output_folder
from bloodcell.core.settings import check_workers
from bloodcell.data.audit.checks import AuditResult, AuditSettings, audit_dataset
from bloodcell.data.audit.outliers import DEFAULT_NEIGHBORS, DEFAULT_THRESHOLD
from bloodcell.data.audit.plots import write_plots
from bloodcell.data.readers.open import open_dataset

_DEFAULTS = AuditSettings()


def default_out(data) -> Path:
    """Where the audit of ``data`` is written without ``out``: ``reports/audit_<dataset name>``."""
    name = Path(data).resolve().name.replace(".", "_") or "data"
    return Path("reports") / f"audit_{name}"


def audit(data, out=None, near_threshold: int = _DEFAULTS.near_threshold, hash_size: int = _DEFAULTS.hash_size,
          outlier_threshold: float = DEFAULT_THRESHOLD, outlier_neighbors: int = DEFAULT_NEIGHBORS,
          skip_unknown: bool = False, no_plots: bool = False, workers: int | None = None,
          quiet: bool = False) -> AuditResult:
    """Audit a dataset and write ``audit.json`` (and the plots) into ``out`` (``bloodcell audit``).

    Parameters
    ----------
    data : str or Path
        Class-folder dataset, ``.npz`` file or CSV manifest.
    out : str or Path, optional
        Folder for ``audit.json`` and the plots; default ``reports/audit_<dataset name>``.
    near_threshold : int
        Near-duplicate threshold in bits of the perceptual hash.
    hash_size : int
        Side of the perceptual hash; the hash has ``hash_size**2`` bits.
    outlier_threshold : float
        Flag images with an outlier score above this.
    outlier_neighbors : int
        ``k`` of the k-nearest-neighbour outlier score.
    skip_unknown : bool
        Leave out (and report) folders that are not class names.
    no_plots : bool
        Write ``audit.json`` only.
    workers : int, optional
        Decoding threads; default ``BLOODCELL_WORKERS`` or the CPU count.
    quiet : bool
        No progress bars.

    Returns
    -------
    AuditResult
        ``written`` maps ``"audit"`` and each plot name to the file written.

    Raises
    ------
    ConfigError
        For settings out of range or an output folder that cannot be written (checked before the work).
    DataError
        When the dataset cannot be read.
    """
    check_workers(workers)
    settings = AuditSettings(hash_size=hash_size, near_threshold=near_threshold,
                             outlier_threshold=outlier_threshold, outlier_neighbors=outlier_neighbors)
    ds = open_dataset(data, skip_unknown=skip_unknown, skip_unknown_hint=True)
    with output_folder(out if out else default_out(data), what="audit output folder") as folder:
        result = audit_dataset(ds, settings, workers=workers, progress=not quiet)
        report = result.to_dict()
        plots = {} if no_plots else write_plots(result, folder)
        report["plots"] = {k: p.name for k, p in plots.items()}
        atomic_write_json(folder / "audit.json", report)
    result.written = {"audit": folder / "audit.json", **plots}
    return result
