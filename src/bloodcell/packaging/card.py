"""A model's card: what it is, what it was trained on, how well it does, and where it fails.

The card is ``model.json["model_card"]`` (written when a model is packaged)
completed with facts read from the rest of the metadata: architecture,
classes, preprocessing, calibration, validation metrics and the
out-of-distribution check. :func:`card` gives it as a dict (the service's
``GET /v1/model``), :func:`render` as text (``bloodcell info``).
"""

from __future__ import annotations

import json
from pathlib import Path

from bloodcell.core.errors import ConfigError
from bloodcell.core.model_choice import resolve_model
from bloodcell.core.model_folder import is_model_folder, read_meta
from bloodcell.prediction.onnx_backend import OnnxModel

#: Card sections shown first, in this order; any other keys follow.
ORDER = ("name", "version", "summary", "intended_use", "out_of_scope", "data", "training", "metrics",
         "limitations", "ethical_considerations", "citation", "licence", "license", "authors")


def card(meta: dict, path: str | Path | None = None) -> dict:
    """The model card with the facts from the metadata (``model_card`` keys first)."""
    given = dict(meta.get("model_card") or {})
    pre = meta.get("preprocess") or {}
    cal = meta.get("calibration") or {}
    ood = meta.get("ood") or {}
    facts = {
        "architecture": meta.get("architecture"),
        "classes": list(pre.get("class_names") or []),
        "preprocess": {k: v for k, v in pre.items() if k != "class_names"},
        "calibration": {
            "temperature": cal.get("temperature", 1.0),
            "abstain_threshold": cal.get("abstain_threshold"),
            **{k: v for k, v in cal.items() if k not in ("temperature", "abstain_threshold")},
        } if cal else {"temperature": 1.0, "abstain_threshold": None, "note": "never calibrated"},
        "validation_metrics": meta.get("metrics") or {},
        "out_of_distribution": ood or None,
    }
    if meta.get("ensemble"):
        facts["ensemble"] = meta["ensemble"]
    if meta.get("adapt_from"):  # the model `bloodcell adapt` starts from, shipped inside this one
        facts["adapt_from"] = {k: meta["adapt_from"][k] for k in ("folder", "architecture", "members")
                               if k in meta["adapt_from"]}
    if meta.get("soup"):  # the mean of these networks' weights (bloodcell soup)
        facts["soup"] = {k: meta["soup"][k] for k in ("members", "weights", "batch_norm") if k in meta["soup"]}
    if path is not None:
        facts["path"] = str(path)
    ordered = {k: given.pop(k) for k in ORDER if k in given}
    return {**ordered, **given, **facts}


def _lines(value, indent: int) -> list[str]:
    pad = "  " * indent
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v and not _flat_list(v):
                out.append(f"{pad}{k}:")
                out += _lines(v, indent + 1)
            else:
                out.append(f"{pad}{k}: {_scalar(v)}")
        return out
    if isinstance(value, list):
        out = []
        for v in value:
            if isinstance(v, (dict, list)) and not _flat_list(v):
                sub = _lines(v, indent + 1)
                out.append(f"{pad}- {sub[0].strip()}")
                out += sub[1:]
            else:
                out.append(f"{pad}- {_scalar(v)}")
        return out
    return [f"{pad}{_scalar(value)}"]


def _flat_list(v) -> bool:
    """Short lists of scalars and small dicts of scalars print on one line."""
    values = v.values() if isinstance(v, dict) else v
    if isinstance(v, dict) and len(v) > 4:
        return False
    return all(isinstance(x, (int, float, str, bool)) or x is None for x in values) and len(json.dumps(v)) <= 120


def _scalar(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(_scalar(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k} {_scalar(x)}" for k, x in v.items())
    return str(v)


def render(meta: dict, path: str | Path | None = None) -> str:
    """The card as indented text, one section per top-level key."""
    c = card(meta, path)
    title = c.get("name") or c.get("architecture") or "bloodcell model"
    lines = [str(title), "=" * len(str(title))]
    for key, value in c.items():
        if key == "name":
            continue
        label = key.replace("_", " ")
        if isinstance(value, (dict, list)) and value and not _flat_list(value):
            lines.append(f"{label}:")
            lines += _lines(value, 1)
        else:
            lines.append(f"{label}: {_scalar(value)}")
    return "\n".join(lines)


def model_meta(path: str | Path) -> tuple[dict, dict[str, int]]:
    """``(metadata, {file: bytes})`` of a model folder or ``.onnx`` file, without loading weights."""
    path = Path(path)
    if is_model_folder(path):
        files = {p.relative_to(path).as_posix(): p.stat().st_size for p in sorted(path.rglob("*"))
                 if p.is_file() and not p.name.startswith(".")}
        return read_meta(path), files
    model = OnnxModel(path, threads=1)
    return model.meta, {model.path.name: model.path.stat().st_size}


def info(model: str | Path | None = None, *, text: bool = False) -> dict | str:
    """A model's card: data, intended use, metrics, limitations, calibration, licence (``bloodcell info``).

    Parameters
    ----------
    model : str or Path, optional
        A model folder or exported ``.onnx`` file (default: ``$BLOODCELL_MODEL``, else the
        bundled default model).
    text : bool
        Return the card as indented text (what ``bloodcell info`` prints) instead of a dict.

    Returns
    -------
    dict or str
        The card (:func:`card`) with ``files`` (name to size in bytes), or its text.

    Raises
    ------
    ModelError
        When ``model`` is not there or not a readable bloodcell model.
    """
    path = resolve_model(model)
    meta, files = model_meta(path)
    if not text:
        return {**card(meta, path), "files": files}
    listing = [f"  {name}: {size / 1e6:.2f} MB" for name, size in files.items()]
    return "\n".join([render(meta, path), "files:", *listing])


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _with_ci(x: float, ci) -> str:
    return f"{_pct(x)} (95% CI {100 * ci[0]:.2f}-{100 * ci[1]:.2f})" if ci else _pct(x)


def check_evaluation_matches(summary: dict, meta: dict, source: str, weights_sha256: str | None = None) -> None:
    """Refuse an evaluation of another model.

    When both sides know the digest of the weights (:func:`bloodcell.packaging.onnx.weights_digest`), it
    decides; otherwise architecture, input size, training data and validation accuracy must agree.
    """
    model = summary.get("model") or {}
    pre = meta.get("preprocess") or {}
    members = (meta.get("ensemble") or {}).get("members")
    architecture = f"ensemble of {len(members)}" if members else meta.get("architecture")
    evaluated = str(model.get("architecture"))
    if members:
        evaluated = evaluated.split(":")[0]
    if weights_sha256 and model.get("weights_sha256"):
        pairs = {"weights": (model["weights_sha256"], weights_sha256)}
    else:
        pairs = {
            "architecture": (evaluated, architecture),
            "image_size": (model.get("image_size"), pre.get("image_size")),
            "data_manifest_sha256": (model.get("data_manifest_sha256"), meta.get("data_manifest_sha256")),
            "training_metrics": ((model.get("training_metrics") or {}).get("val_acc"),
                                 (meta.get("metrics") or {}).get("val_acc")),
        }
    wrong = [k for k, (a, b) in pairs.items() if a != b]
    if wrong:
        raise ConfigError(
            f"{source}: this evaluation is of another model ({', '.join(wrong)} differ from the model's). "
            "Evaluate the model you package: `bloodcell evaluate MODEL DATA --split test -o METRICS.json`."
        )


def card_metrics(summary: dict) -> dict:
    """The card's ``metrics`` section from an evaluation summary (``bloodcell evaluate -o``)."""
    m = summary["metrics"]
    ci = m.get("ci95") or {}
    cal = summary.get("calibration") or {}
    data = summary.get("data") or {}
    names = {"ig": "immature granulocyte"}
    out = {
        "evaluated_on": f"{data.get('source')}" + (f", {data['split']} split" if data.get("split") else "")
                        + f", {m['n']} images, evaluated once"
                        + (", test-time augmentation (8 views)" if summary.get("tta") else ""),
        "accuracy": _with_ci(m["accuracy"], ci.get("accuracy")),
        "macro_f1": _with_ci(m["macro_avg"]["f1"], ci.get("macro_f1")),
        "balanced_accuracy": _pct(m["balanced_accuracy"]),
    }
    if m.get("roc_auc_ovr_macro") is not None:
        out["roc_auc_macro"] = round(float(m["roc_auc_ovr_macro"]), 4)
    if cal:
        out["ece"] = (f"{_pct(cal['ece_uncalibrated'])} uncalibrated, {_pct(cal['ece_calibrated'])} after temperature "
                      f"scaling (T = {cal['temperature']:.3f}, fitted on validation)")
    held = (summary.get("abstention") or {}).get("model_threshold")
    target = ((summary.get("model") or {}).get("calibration") or {}).get("target_accuracy")
    if held:
        out["abstention"] = (f"threshold {_pct(held['threshold'])}" + (f" (fitted on validation for {_pct(target)} accuracy)"
                             if target else "") + f": on this split keeps {_pct(held['coverage'])} of images at "
                             f"{_pct(held['accuracy'])} accuracy; the rest are referred")
        both = (summary.get("abstention") or {}).get("with_familiarity")
        if both:
            out["abstention"] += (f"; with the familiarity check as well (cells unlike the training cells are "
                                  f"referred too) it keeps {_pct(both['coverage'])} at {_pct(both['accuracy'])}")
    compare = summary.get("tta_comparison")
    if summary.get("tta") and compare:
        plain = compare["plain"]
        out["without_tta"] = (f"accuracy {_pct(plain['accuracy'])}, macro-F1 {_pct(plain['macro_f1'])}, ECE "
                              f"{_pct(plain['ece'])}: what `bloodcell predict` gives without --tta, "
                              f"{compare['slowdown']:.1f}x faster")
    out["per_class"] = {
        names.get(c, c): f"precision {_pct(v['precision'])}, recall {_pct(v['recall'])}, F1 {_pct(v['f1'])} "
                         f"({v['support']} images)"
        for c, v in m["per_class"].items()
    }
    return out


def training_record(meta: dict) -> dict:
    """How the model was trained, from its history: epochs, best epoch, wall time, threads, device."""
    history = meta.get("history") or []
    training = meta.get("training") or {}
    seconds = sum(h.get("seconds", 0.0) for h in history)
    record = {
        "epochs_run": training.get("epochs_run", len(history)),
        "best_epoch": training.get("best_epoch"),
        "stopped": training.get("stopped"),
        "wall_time_minutes": round(seconds / 60, 1) if history else None,
        "device": training.get("device"),
        "threads": training.get("threads"),
        "precision": training.get("precision"),
    }
    return {k: v for k, v in record.items() if v is not None}
