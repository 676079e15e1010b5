"""The Python verbs of evaluation: ``bloodcell.evaluate``, ``calibrate``, ``compare`` and ``report``.

Each is the code its command-line verb runs, with keywords named like the
verb's flags: output paths are checked before any work starts, the device is
chosen and checked here, and results are written here. The command line only
parses arguments and prints what these return.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from bloodcell.core.errors import ConfigError
from bloodcell.core.files import atomic_write_bytes, atomic_write_json, check_writable_file, output_folder
from bloodcell.evaluation.comparison import compare as compare_runs
from bloodcell.evaluation.comparison import markdown_table
from bloodcell.evaluation.fit_calibration import calibrate_model
from bloodcell.evaluation.results import Evaluation
from bloodcell.evaluation.scoring import evaluate_dataset
from bloodcell.networks.devices import resolve_device
from bloodcell.networks.loading import load_model


@dataclass
class Report:
    """A written report: the evaluation it shows and the path of its ``report.html``."""

    evaluation: Evaluation
    html: Path


@dataclass
class Comparison:
    """Several models compared: one row each, the Markdown table, and the folder written (if any)."""

    rows: list[dict]
    table: str
    folder: Path | None = None


def choose_device(device: str | None = None, batch_size: int = 1) -> str:
    """The torch device to run on: ``device`` checked, or CUDA when available, else the CPU.

    Raises
    ------
    ConfigError
        When ``device`` is not a torch device, asks for CUDA where there is none, or
        ``batch_size`` is below 1.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}.")
    return str(resolve_device(device))


def check_counts(**counts: int) -> None:
    """Refuse negative counts (``bootstrap=-1`` -> ``--bootstrap must be 0 or more``) before any work."""
    for name, value in counts.items():
        if value < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more, got {value}.")


def evaluate(model, data, *, split: str | None = "test", tta: bool = False, batch_size: int = 64, device=None,
             bootstrap: int = 1000, output=None, quiet: bool = False) -> Evaluation:
    """Measure a model on a labelled dataset: accuracy with 95% CIs, per-class metrics, calibration, abstention.

    Parameters
    ----------
    model : str or Path
        A model folder (single model or ensemble) as written by ``bloodcell train``.
    data : str or Path
        A labelled dataset: a manifest CSV (e.g. from ``bloodcell split``), a class-folder tree or an ``.npz``.
    split : str or None
        The split of a manifest or MedMNIST file to use; datasets without splits are used whole.
    tta : bool
        Also predict with test-time augmentation (8 flips/rotations) and report its gain and cost.
    batch_size : int
        Images per forward pass.
    device : str, optional
        Torch device, e.g. ``"cpu"`` or ``"cuda"`` (default: CUDA if available).
    bootstrap : int
        Bootstrap resamples for the 95% confidence intervals (0 skips them).
    output : str or Path, optional
        Write the full results as JSON to this file (checked before any work).
    quiet : bool
        No progress bars.

    Returns
    -------
    Evaluation
        The predictions and every figure; ``summary`` is what ``output`` holds.
    """
    out = check_writable_file(output, "results file") if output else None
    check_counts(bootstrap=bootstrap)
    device = choose_device(device, batch_size)
    ev = evaluate_dataset(load_model(model, device), data, split, tta=tta, batch_size=batch_size, device=device,
                          n_boot=bootstrap, progress=not quiet)
    if out is not None:
        atomic_write_json(out, ev.to_json())
    return ev


def report(model, data, *, output, split: str | None = "test", tta: bool = False, batch_size: int = 64, device=None,
           bootstrap: int = 1000, mistakes: int = 24, gradcam_per_class: int = 3, quiet: bool = False,
           fields=None) -> Report:
    """Write a self-contained HTML report of a model on a labelled dataset.

    The report folder holds ``report.html`` (figures, calibration, abstention, mistakes,
    Grad-CAM, every figure inlined), the figures as PNG files and ``metrics.json``.

    Parameters
    ----------
    model, data, split, tta, batch_size, device, bootstrap, quiet
        As for :func:`evaluate`.
    output : str or Path
        The report folder (created; checked before any work).
    mistakes : int
        Most confident mistakes to show.
    gradcam_per_class : int
        Grad-CAM examples per class.
    fields : str or Path, optional
        A ``boxes.csv`` of whole smear fields (``image,label,x0,y0,x1,y1``, images beside it or in
        ``images/``): adds a section on finding and counting their white cells, and ``fields.json``.

    Returns
    -------
    Report
        The evaluation and the path of ``report.html``.
    """
    # Deferred: only the report draws figures, so evaluate and calibrate never load Matplotlib.
    from bloodcell.evaluation.html_report import write_report

    check_counts(bootstrap=bootstrap, mistakes=mistakes, gradcam_per_class=gradcam_per_class)
    with output_folder(output, "report folder") as folder:
        if fields is not None:
            from bloodcell.fields.measure import read_boxes  # deferred: only --fields needs it

            read_boxes(fields)  # a bad boxes file is one line before the evaluation runs
        ev = evaluate(model, data, split=split, tta=tta, batch_size=batch_size, device=device, bootstrap=bootstrap,
                      quiet=quiet)
        page = write_report(ev, folder, n_mistakes=mistakes, gradcam_per_class=gradcam_per_class)
        if fields is not None:
            from bloodcell.evaluation.fields_report import add_fields_section  # deferred: only --fields needs it
            from bloodcell.prediction.classifier import Classifier  # deferred: as above

            add_fields_section(page, Classifier(model, batch_size=batch_size), fields)
    return Report(ev, page)


def calibrate(model, data, *, split: str | None = "val", target_accuracy: float = 0.995, batch_size: int = 64,
              device=None, tta: bool = False, dry_run: bool = False, quiet: bool = False) -> dict:
    """Fit temperature scaling and a "refer to a hematologist" threshold; store them in the model's metadata.

    Parameters
    ----------
    model : str or Path
        A model folder (single model or ensemble); its metadata is updated in place.
    data : str or Path
        A labelled dataset with a validation split (e.g. the manifest from ``bloodcell split``).
    split : str or None
        The split to fit on; never the test split you report.
    target_accuracy : float
        Accuracy the accepted images must reach on that split.
    batch_size, device, quiet
        As for :func:`evaluate`.
    tta : bool
        Also fit a temperature and threshold for test-time-augmented predictions (8x the time).
    dry_run : bool
        Fit without writing the model's metadata.

    Returns
    -------
    dict
        The ``calibration`` block (see :func:`~bloodcell.evaluation.fit_calibration.calibrate_model`)
        and ``model_json``, the metadata file's path.
    """
    return calibrate_model(model, data, split=split, target_accuracy=target_accuracy, batch_size=batch_size,
                           device=choose_device(device, batch_size), write=not dry_run, progress=not quiet, tta=tta)


def compare(runs, *, data=None, split: str | None = "test", tta: bool = False, batch_size: int = 64, device=None,
            bootstrap: int = 1000, output=None, quiet: bool = False) -> Comparison:
    """Compare models (accuracy, macro-F1, ECE, parameters, images/s) in a Markdown table and a bar plot.

    Parameters
    ----------
    runs : sequence of str or Path
        Model folders (evaluated on ``data``) or evaluation results (``metrics.json`` or a report folder).
    data : str or Path, optional
        The labelled dataset model folders are evaluated on.
    split, tta, batch_size, device, bootstrap, quiet
        As for :func:`evaluate`.
    output : str or Path, optional
        A folder (created; checked before any work) for ``compare.md``, ``compare.json`` and ``compare.png``.

    Returns
    -------
    Comparison
        One row per run, the Markdown table, and the folder written.
    """
    check_counts(bootstrap=bootstrap)
    with output_folder(output) if output else nullcontext() as folder:
        rows = compare_runs(runs, data, split, tta=tta, batch_size=batch_size, device=choose_device(device, batch_size),
                            n_boot=bootstrap, progress=not quiet)
        table = markdown_table(rows)
        if folder is not None:
            # Deferred: only a written comparison draws its bar plot, so a table alone never loads Matplotlib.
            from bloodcell.evaluation.compare_plot import compare_bars
            from bloodcell.evaluation.figure_style import to_png

            atomic_write_bytes(folder / "compare.md", (table + "\n").encode())
            atomic_write_json(folder / "compare.json", rows)
            atomic_write_bytes(folder / "compare.png", to_png(compare_bars(rows)))
    return Comparison(rows, table, folder)
