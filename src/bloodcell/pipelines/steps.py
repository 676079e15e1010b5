"""The steps after training, each one Python verb (the same code as ``bloodcell calibrate``,
``ensemble``, ``evaluate``, ``export`` and ``compare`` typed by hand)."""

from __future__ import annotations

from pathlib import Path

from bloodcell.core.model_folder import is_model_folder
from bloodcell.evaluation import calibrate, compare, evaluate
from bloodcell.networks.ensemble import ensemble
from bloodcell.packaging import export
from bloodcell.pipelines.members import train_members
from bloodcell.pipelines.spec import Spec


def calibrate_models(models: list[Path], data: Path, say=print) -> list[Path]:
    """Calibrate each model folder on the validation split of ``data`` (folders not yet written are skipped)."""
    done = []
    for model in models:
        if is_model_folder(model):
            say(f"calibrate {model}")
            calibrate(model, data, quiet=True)
            done.append(model)
    return done


def package_default_model(spec: Spec, package: Path | None, card: Path | None, say=print) -> dict:
    """Combine the calibrated members, calibrate the ensemble (plain and TTA), distil it into one network,
    calibrate that, evaluate it once on the test split (plain, as ``predict`` serves it) and package it as the
    default model with the ensemble inside for ``bloodcell adapt``."""
    folder = spec.run / "ensemble"
    say(f"ensemble {' '.join(map(str, spec.all_models()))} -> {folder}")
    ensemble(spec.all_models(), folder, force=True)
    say(f"calibrate {folder} (plain and TTA)")
    calibrate(folder, spec.data, tta=True, quiet=True)
    export(folder, say=say)  # the teacher's probabilities come from onnxruntime, about 2.5x faster than PyTorch
    student = spec.folder(spec.distilled)
    say(f"distil {folder} into one network -> {student}")
    trained = train_members(Spec(spec.name, spec.run, spec.data, (spec.distilled,), spec.train_args), say=say)
    calibrate_models([student], spec.data, say=say)
    metrics = spec.run / "test_metrics.json"
    say(f"evaluate {student} on the test split -> {metrics}")
    result = evaluate(student, spec.data, split="test", output=metrics, quiet=True)
    say(f"  test accuracy {100 * result.summary['metrics']['accuracy']:.2f}%")
    out = export(student, format="default", output=package, data=spec.data, card=card, metrics=metrics,
                 half_weights=True, adapt_from=folder, say=say)
    return {"ensemble": str(folder), "distilled": str(student), "trained_distilled": bool(trained),
            "test_metrics": str(metrics), "package": str(out)}


def compare_models(runs: list[str], data: Path, report: Path, say=print) -> dict:
    """The model-zoo table: ``bloodcell compare`` over ``runs`` on the test split of ``data``."""
    say(f"compare {len(runs)} models on the test split -> {report}")
    table = compare(runs, data=data, output=report, quiet=True)
    say(table.table)
    return {"compared": runs, "report": str(report)}
