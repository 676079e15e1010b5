"""Compare several evaluated models: one table (Markdown for the README) and one bar plot."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from bloodcell.core.errors import ConfigError, DataError, ModelError
from bloodcell.core.model_folder import is_model_folder, read_meta
from bloodcell.evaluation.scoring import evaluate_dataset
from bloodcell.networks.loading import LoadedModel, load_model
from bloodcell.prediction.torch_backend import predict_proba


def measure_throughput(loaded: LoadedModel, batch_size: int = 32, batches: int = 3, device=None,
                       tta: bool = False) -> float:
    """Images per second of :func:`~bloodcell.prediction.torch_backend.predict_proba` on random prepared images.

    One warm-up batch, then ``batches`` timed ones; decoding and resizing are
    not included. With ``tta`` each image costs eight forward passes.
    """
    size = loaded.preprocess.image_size
    x = np.random.default_rng(0).integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
    predict_proba(loaded, x, batch_size=batch_size, device=device, tta=tta)
    t0 = time.perf_counter()
    for _ in range(batches):
        predict_proba(loaded, x, batch_size=batch_size, device=device, tta=tta)
    return batches * batch_size / (time.perf_counter() - t0)


def read_evaluation(path: str | Path) -> dict:
    """An evaluation summary written by ``bloodcell evaluate -o`` or ``bloodcell report``."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no evaluation results here.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable JSON file ({str(e)[:80]}). Compare takes model folders, evaluation "
                        "results (`bloodcell evaluate -o metrics.json`) and report folders.") from None
    if not isinstance(summary, dict) or "metrics" not in summary or "model" not in summary:
        raise DataError(f"{path}: not an evaluation written by `bloodcell evaluate -o` or `bloodcell report`.")
    return summary


def training_cost(folder: str | Path) -> dict | None:
    """How long a model trained: ``seconds`` (wall time of its epochs), ``epochs`` and ``threads``.

    Read from each model's training history; an ensemble sums its members'
    seconds and lists their epochs (``"4+4+4"``). ``None`` for a model without
    a history (such as a packaged copy) or with a member without one.
    """
    try:
        meta = read_meta(folder)
    except ModelError:
        return None
    spec = meta.get("ensemble")
    if spec:
        costs = [training_cost(Path(folder) / name) for name in spec.get("members", [])]
        if not costs or any(c is None for c in costs):
            return None
        threads = {c["threads"] for c in costs}
        return {"seconds": sum(c["seconds"] for c in costs), "epochs": "+".join(c["epochs"] for c in costs),
                "threads": threads.pop() if len(threads) == 1 else None}
    history = meta.get("history") or []
    if not history or any("seconds" not in h for h in history):
        return None
    return {"seconds": float(sum(h["seconds"] for h in history)), "epochs": str(len(history)),
            "threads": (meta.get("training") or {}).get("threads")}


def row_from_summary(summary: dict, images_per_second: float | None, training: dict | None = None) -> dict:
    """One comparison row from an evaluation summary."""
    m = summary["metrics"]
    ci = m.get("ci95") or {}
    model = summary["model"]
    return {
        "name": model["name"],
        "path": model["path"],
        "architecture": model["architecture"],
        "image_size": model["image_size"],
        "parameters": model["parameters"],
        "data": summary["data"]["source"],
        "split": summary["data"]["split"],
        "n_images": summary["data"]["n_images"],
        "tta": summary["tta"],
        "accuracy": m["accuracy"],
        "accuracy_ci": ci.get("accuracy"),
        "macro_f1": m["macro_avg"]["f1"],
        "macro_f1_ci": ci.get("macro_f1"),
        "ece": m["ece"],
        "ece_uncalibrated": summary["calibration"]["ece_uncalibrated"],
        "coverage_at_99_5": next((c["coverage"] for c in summary["abstention"]["coverage_at"] if c["target"] == 0.995), None),
        "threshold_target": ((summary["model"].get("calibration") or {}).get("target_accuracy")),
        "threshold_coverage": (summary["abstention"]["model_threshold"] or {}).get("coverage"),
        "threshold_accuracy": (summary["abstention"]["model_threshold"] or {}).get("accuracy"),
        "images_per_second": images_per_second,
        "training_seconds": (training or {}).get("seconds"),
        "training_epochs": (training or {}).get("epochs"),
        "training_threads": (training or {}).get("threads"),
    }


def _unique_names(rows: list[dict]) -> None:
    """Name rows by model folder; where different folders share a name, prefix the parent folder
    (the plain and TTA rows of one folder keep one name)."""
    folders: dict[str, set] = {}
    for r in rows:
        folders.setdefault(Path(r["path"]).name, set()).add(str(Path(r["path"])))
    for r in rows:
        name = Path(r["path"]).name
        r["name"] = name if len(folders[name]) == 1 else "/".join(Path(r["path"]).parts[-2:])


def compare(
    runs,
    data=None,
    split: str | None = "test",
    *,
    tta: bool = False,
    batch_size: int = 64,
    device=None,
    n_boot: int = 1000,
    progress: bool = True,
) -> list[dict]:
    """Evaluate (or read the evaluations of) several models and time each.

    Parameters
    ----------
    runs : sequence of path
        Model folders (evaluated on ``data``) or evaluation results
        (``metrics.json`` or a report folder holding one).
    data : path, optional
        The dataset model folders are evaluated on.

    Returns
    -------
    list of dict
        One row per run, see :func:`row_from_summary`.
    """
    runs = [Path(r) for r in runs]
    if not runs:
        raise ConfigError("Name at least one model folder or evaluation (metrics.json) to compare.")
    rows = []
    for run in runs:
        if is_model_folder(run):
            if data is None:
                raise ConfigError(
                    f"{run} is a model folder: pass --data DATASET to evaluate it (or pass the metrics.json "
                    "that `bloodcell evaluate -o` wrote)."
                )
            loaded = load_model(run, device or "cpu")
            summary = evaluate_dataset(loaded, data, split, tta=tta, batch_size=batch_size, device=device,
                                       n_boot=n_boot, progress=progress).to_json()
        elif run.exists():
            summary = read_evaluation(run)
            try:
                loaded = load_model(summary["model"]["path"], device or "cpu")
            except ModelError:
                loaded = None
        else:
            raise DataError(f"{run}: no such model folder or evaluation file.")
        ips = measure_throughput(loaded, device=device, tta=summary["tta"]) if loaded is not None else None
        rows.append(row_from_summary(summary, ips, training_cost(summary["model"]["path"])))
    _unique_names(rows)
    return rows


def _ci(v, ci) -> str:
    s = f"{100 * v:.2f}%"
    return f"{s} ({100 * ci[0]:.1f}–{100 * ci[1]:.1f})" if ci else s


def _duration(row: dict) -> str:
    seconds, threads, epochs = row.get("training_seconds"), row.get("training_threads"), row.get("training_epochs")
    if seconds is None:
        return "–"
    minutes = round(seconds / 60)
    text = f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"
    details = [f"{epochs} epoch{'s' if epochs != '1' else ''}"] if epochs else []
    details += [f"{threads} thread{'s' if threads != 1 else ''}"] if threads else []
    return text + (f" ({', '.join(details)})" if details else "")


def markdown_table(rows: list[dict]) -> str:
    """The comparison as a Markdown table (the README's model-zoo table)."""
    head = ("| Model | Architecture | Input | Parameters | Accuracy (95% CI) | Macro-F1 (95% CI) | ECE | "
            "Kept at the validation threshold (accuracy) | Training time | Images/s (CPU) |")
    lines = [head, "|" + "|".join(["---"] * 3 + ["---:"] * 7) + "|"]
    for r in rows:
        kept = "–"
        if r.get("threshold_coverage") is not None and r.get("threshold_accuracy") is not None:
            kept = f"{100 * r['threshold_coverage']:.1f}% ({100 * r['threshold_accuracy']:.2f}%)"
        ips = "–" if r["images_per_second"] is None else f"{r['images_per_second']:,.0f}"
        lines.append(
            f"| {r['name']}{' (TTA)' if r['tta'] else ''} | {r['architecture']} | {r['image_size']} px | "
            f"{r['parameters'] / 1e6:.2f}M | {_ci(r['accuracy'], r['accuracy_ci'])} | "
            f"{_ci(r['macro_f1'], r['macro_f1_ci'])} | {100 * r['ece']:.2f}% | {kept} | "
            f"{_duration(r)} | {ips} |"
        )
    sources = sorted({f"{r['data']}" + (f" ({r['split']} split, {r['n_images']} images)" if r["split"] else
                                         f" ({r['n_images']} images)") for r in rows})
    lines.append("")
    targets = sorted({r["threshold_target"] for r in rows if r.get("threshold_target")})
    target = " / ".join(f"{100 * t:.1f}%" for t in targets) or "a target"
    lines.append("Evaluated on " + "; ".join(sources) + ". ECE with each model's fitted temperature. Kept: share of "
                 "test images the model decides itself when images below its abstention threshold (chosen on the "
                 f"validation split for {target} accuracy) are referred to a hematologist, and the accuracy on "
                 "them. Training time: wall time of all epochs run (an ensemble: its members together, epochs per "
                 "member), with the threads each training process used. Images/s: prepared images in batches of "
                 "32 (with TTA: eight passes each) on the comparing machine.")
    return "\n".join(lines)
