"""Prediction rows as Arrow tables and Parquet shards: the same columns from ``bloodcell predict -f parquet``
and from ``--engine ray``.

Columns (typed): ``source``, ``label`` (strings), ``probability`` (float64),
``uncertain`` (bool), ``not_a_blood_cell`` (bool, null without
out-of-distribution statistics), ``ood_score`` (float64, null likewise),
``framing`` (string; cell-framing models only), ``true_label`` (string, null
when unknown) and one ``p_<class>`` float64 per class. The model description
(:meth:`Classifier.describe`, with its precision) is stored in each file's
schema metadata under ``bloodcell.model``. pyarrow is imported here only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from bloodcell.core.errors import ConfigError
from bloodcell.prediction.results import Prediction

#: Rows per Parquet shard written by the local path.
SHARD_ROWS = 100_000


def require_pyarrow():
    """pyarrow, or a one-line error saying how to install it."""
    try:
        import pyarrow  # deferred: optional dependency, needed only for Parquet output
    except ImportError:
        raise ConfigError("Parquet output needs pyarrow: pip install pyarrow (or bloodcell[ray]).") from None
    return pyarrow


def schema(class_names, with_framing: bool, model: dict | None = None):
    """The Arrow schema of prediction rows, with ``model`` in its metadata."""
    pa = require_pyarrow()
    fields = [("source", pa.string()), ("label", pa.string()), ("probability", pa.float64()),
              ("uncertain", pa.bool_()), ("not_a_blood_cell", pa.bool_()), ("ood_score", pa.float64())]
    fields += [("framing", pa.string())] if with_framing else []
    fields += [("true_label", pa.string())] + [(f"p_{c}", pa.float64()) for c in class_names]
    meta = {"bloodcell.model": json.dumps(model)} if model is not None else None
    return pa.schema(fields, metadata=meta)


def columns(predictions: Iterable[Prediction], class_names, with_framing: bool) -> dict[str, list]:
    """Column lists of ``predictions``, numbers rounded as in the CSV output (6 decimals, 4 for ``ood_score``)."""
    names = ["source", "label", "probability", "uncertain", "not_a_blood_cell", "ood_score"]
    names += (["framing"] if with_framing else []) + ["true_label"] + [f"p_{c}" for c in class_names]
    out: dict[str, list] = {n: [] for n in names}
    for p in predictions:
        out["source"].append(p.source)
        out["label"].append(p.label)
        out["probability"].append(round(p.probability, 6))
        out["uncertain"].append(bool(p.uncertain))
        out["not_a_blood_cell"].append(p.not_a_blood_cell)
        out["ood_score"].append(None if p.ood_score is None else round(p.ood_score, 4))
        if with_framing:
            out["framing"].append(p.framing)
        out["true_label"].append(p.true_label)
        for c in class_names:
            out[f"p_{c}"].append(round(p.probabilities[c], 6))
    return out


def table(predictions: Iterable[Prediction], class_names, with_framing: bool, model: dict | None = None):
    """An Arrow table of ``predictions`` with :func:`schema`."""
    pa = require_pyarrow()
    return pa.table(columns(predictions, class_names, with_framing), schema=schema(class_names, with_framing, model))


def write_shards(folder: Path, predictions: Iterable[Prediction], class_names, with_framing: bool, model: dict,
                 rows: int = SHARD_ROWS) -> int:
    """Write ``predictions`` as ``part-00000.parquet``, ... of at most ``rows`` rows each; returns the shard count."""
    import pyarrow.parquet as pq  # deferred: optional dependency

    shards, chunk = 0, []

    def flush() -> None:
        nonlocal shards, chunk
        pq.write_table(table(chunk, class_names, with_framing, model), folder / f"part-{shards:05d}.parquet")
        shards, chunk = shards + 1, []

    for p in predictions:
        chunk.append(p)
        if len(chunk) >= rows:
            flush()
    if chunk or not shards:
        flush()
    return shards
