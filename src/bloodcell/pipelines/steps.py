"""The steps after training, each one ``bloodcell VERB`` run in this process.

The steps call the command-line verbs (the same code as ``bloodcell calibrate``, ``ensemble``,
``evaluate``, ``export`` and ``compare`` typed by hand), so a pipeline prints what those verbs
print and accepts what they accept.
"""

from __future__ import annotations

from pathlib import Path

from bloodcell.cli.main import main as run_cli
from bloodcell.core.errors import BloodcellError
from bloodcell.core.model_folder import is_model_folder
from bloodcell.pipelines.spec import Spec


class StepFailed(BloodcellError):
    """A pipeline step's verb reported an error (printed just above)."""


def verb(*argv, say=print) -> None:
    """Run ``bloodcell ARGV...``; raise :class:`StepFailed` when it does not succeed."""
    argv = [str(a) for a in argv]
    say("bloodcell " + " ".join(argv))
    code = run_cli(argv)
    if code:
        raise StepFailed(f"`bloodcell {' '.join(argv)}` failed (exit status {code}); see its message above. "
                         "Fix the cause and run the pipeline again: trained members are kept.")


def calibrate_models(models: list[Path], data: Path, say=print) -> list[Path]:
    """Calibrate each model folder on the validation split of ``data`` (folders not yet written are skipped)."""
    done = []
    for model in models:
        if is_model_folder(model):
            verb("calibrate", model, data, "--quiet", say=say)
            done.append(model)
    return done


def package_default_model(spec: Spec, package: Path | None, card: Path | None, say=print) -> dict:
    """Combine the calibrated members, calibrate the ensemble (plain and TTA), evaluate it once on
    the test split and package it as the default model."""
    ensemble = spec.run / "ensemble"
    metrics = spec.run / "test_metrics.json"
    verb("ensemble", *spec.all_models(), "-o", ensemble, "--force", say=say)
    verb("calibrate", ensemble, spec.data, "--tta", say=say)
    verb("evaluate", ensemble, spec.data, "--split", "test", "--tta", "-o", metrics, say=say)
    export = ["export", ensemble, "--format", "default", "--data", spec.data, "--metrics", metrics, "--half-weights"]
    if package is not None:
        export += ["-o", package]
    if card is not None:
        export += ["--card", card]
    verb(*export, say=say)
    return {"ensemble": str(ensemble), "test_metrics": str(metrics), "package": None if package is None else str(package)}


def compare_models(runs: list[str], data: Path, report: Path, say=print) -> dict:
    """The model-zoo table: ``bloodcell compare`` over ``runs`` on the test split of ``data``."""
    verb("compare", *runs, "--data", data, "--quiet", "-o", report, say=say)
    return {"compared": runs, "report": str(report)}
