"""The steps after training, each one Python verb (the same code as ``bloodcell calibrate``,
``ensemble``, ``evaluate``, ``export`` and ``compare`` typed by hand)."""

from __future__ import annotations

from pathlib import Path

from bloodcell.core.model_folder import is_model_folder
from bloodcell.evaluation import calibrate, compare, evaluate
from bloodcell.networks.ensemble import ensemble
from bloodcell.packaging import export
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
    """Combine the calibrated members, calibrate the ensemble (plain and TTA), evaluate it once on
    the test split and package it as the default model."""
    folder = spec.run / "ensemble"
    metrics = spec.run / "test_metrics.json"
    say(f"ensemble {' '.join(map(str, spec.all_models()))} -> {folder}")
    ensemble(spec.all_models(), folder, force=True)
    say(f"calibrate {folder} (plain and TTA)")
    calibrate(folder, spec.data, tta=True, quiet=True)
    say(f"evaluate {folder} on the test split with TTA -> {metrics}")
    result = evaluate(folder, spec.data, split="test", tta=True, output=metrics, quiet=True)
    say(f"  test accuracy {100 * result.summary['metrics']['accuracy']:.2f}%")
    out = export(folder, format="default", output=package, data=spec.data, card=card, metrics=metrics,
                 half_weights=True, say=say)
    return {"ensemble": str(folder), "test_metrics": str(metrics), "package": str(out)}


def compare_models(runs: list[str], data: Path, report: Path, say=print) -> dict:
    """The model-zoo table: ``bloodcell compare`` over ``runs`` on the test split of ``data``."""
    say(f"compare {len(runs)} models on the test split -> {report}")
    table = compare(runs, data=data, output=report, quiet=True)
    say(table.table)
    return {"compared": runs, "report": str(report)}
