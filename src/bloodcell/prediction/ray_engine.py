"""``bloodcell predict --engine ray``: classify a list of image paths on a Ray cluster with Ray Data.

The input is one or more CSV manifests (a ``path`` column, optionally
``label``; relative paths resolve against the manifest's folder, as
everywhere in bloodcell) or Parquet files with a ``path`` column. Ray Data
reads them in blocks, actors (one per ``workers``, each holding one
onnxruntime session) decode, prepare and classify batches with
``map_batches``, and the rows are written as Parquet shards with the columns
of the local path (:mod:`bloodcell.prediction.parquet`). Images that cannot be
read are left out of the shards and listed in ``_run.json`` with the model
(and its precision) and the differential.

Ray connects to the cluster named by ``RAY_ADDRESS`` (``auto`` for the one
``ray start`` runs on this machine); without it, a local Ray instance with
``workers`` CPUs is started. Image paths and the model must be readable at
the same path on every node.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bloodcell.core.classes import canonical_class
from bloodcell.core.errors import ConfigError, DataError
from bloodcell.core.files import atomic_write_json, staged_folder
from bloodcell.prediction.archive import ArchiveResult
from bloodcell.prediction.classifier import Classifier
from bloodcell.prediction.differential import differential, run_warning
from bloodcell.prediction.results import Prediction
from bloodcell.prediction.stream import decode_batch

#: Reading the list and writing the shards take no CPU from the cluster's count, so the model actors
#: (one CPU each) can take every CPU without starving the tasks that feed them.
LIGHT = {"num_cpus": 0}


def _tag(df, manifest: int, keep: list[str]):
    """The ``path`` (and ``label``) columns, and which input each row comes from, so relative paths
    resolve against their own manifest's folder."""
    df = df[keep].copy()
    df["_manifest"] = manifest
    return df


class BatchClassifier:
    """A Ray actor's model: classifies a block of rows (``path``, optional ``label``) into prediction rows."""

    def __init__(self, model: str, options: dict, base: dict, named: dict):
        from bloodcell.prediction.inputs import Item  # local: actors import what they use

        self.item = Item
        self.clf = Classifier(model, **options)
        self.with_framing = self.clf.preprocess.framing == "cell"
        self.base, self.named = base, named

    def _items(self, batch: dict) -> list:
        labels = batch.get("label")
        items = []
        for i, raw in enumerate(batch["path"]):
            listed, manifest = Path(str(raw).strip()), str(batch["_manifest"][i])
            path = listed if listed.is_absolute() else Path(self.base[manifest]) / listed
            source = listed if listed.is_absolute() else Path(self.named[manifest]) / listed
            label = labels[i] if labels is not None else None
            label = canonical_class(str(label)) if label is not None and str(label).strip() not in ("", "nan", "None") else None
            items.append(self.item(str(source), path, label=label))
        return items

    def __call__(self, batch: dict):
        from bloodcell.prediction.parquet import table  # deferred: pyarrow, the actors' output format

        got = decode_batch(self._items(batch), self.clf.prepare_framed)
        preds: list[Prediction] = [] if got.images is None else self.clf.predict_prepared(
            got.images, [i.source for i in got.items], [i.label for i in got.items], got.framings)
        return table(preds, self.clf.class_names, self.with_framing)


def _start_ray(workers: int) -> None:
    import ray  # deferred: optional dependency, only this engine needs it

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
        return
    here = str(Path(__file__).resolve().parents[2])  # the folder bloodcell is imported from, for the local workers
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})


def _read(paths: list[Path]):
    """The inputs as one Ray dataset with ``path``, ``_manifest`` (and ``label`` when every input has it)."""
    import ray  # deferred: optional dependency

    sets = []
    for p in paths:
        if p.suffix.lower() not in (".csv", ".parquet"):
            raise ConfigError(f"{p}: --engine ray reads a CSV manifest or a Parquet file with a 'path' column.")
        reader = ray.data.read_parquet if p.suffix.lower() == ".parquet" else ray.data.read_csv
        ds = reader(str(p.resolve()), ray_remote_args=LIGHT)
        if "path" not in ds.columns():
            raise DataError(f"{p}: no 'path' column (columns: {', '.join(ds.columns())}).")
        sets.append(ds)
    keep = ["path", "label"] if all("label" in ds.columns() for ds in sets) else ["path"]
    parts = [ds.map_batches(_tag, fn_kwargs={"manifest": i, "keep": keep}, batch_format="pandas", **LIGHT)
             for i, ds in enumerate(sets)]
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _rows_back(folder: Path, clf: Classifier):
    """Read the written shards back for the differential and the skipped images."""
    import pyarrow.parquet as pq  # deferred: optional dependency

    cols = ["source", "label", "uncertain", "not_a_blood_cell"]
    got = pq.read_table(folder, columns=cols).to_pydict()
    preds = (Prediction(s, lab, 0.0, {}, bool(u), n, None) for s, lab, u, n in zip(*(got[c] for c in cols)))
    return differential(preds, clf.class_names), set(got["source"])


def predict_ray(paths, output, *, model=None, workers: int | None = None, progress: bool = False, **options) -> ArchiveResult:
    """Classify the images listed in ``paths`` on Ray and write Parquet shards to the folder ``output``.

    Parameters
    ----------
    paths : str, Path or list of them
        CSV manifests or Parquet files with a ``path`` column (and optionally ``label``).
    output : str or Path
        Folder for the shards and ``_run.json`` (replaced when the run ends).
    workers : int, optional
        Model actors (default: the CPUs of the cluster, at least 1).
    **options
        ``batch_size``, ``threads`` (per actor, default 1), ``precision``, ``abstain_threshold``,
        ``ood_threshold``: as for :class:`~bloodcell.prediction.classifier.Classifier`.
    """
    try:
        import ray  # deferred: optional dependency
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'bloodcell[ray]'.") from None
    from bloodcell.prediction.parquet import require_pyarrow

    require_pyarrow()
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"{output}: the Parquet output is a folder of shards, and this is a file. Pass another -o.")
    clf = Classifier(model, backend="onnx", **{k: v for k, v in options.items() if k != "threads"})
    describe = clf.describe()
    _start_ray(max(1, workers or os.cpu_count() or 1))
    ray.data.DataContext.get_current().enable_progress_bars = progress
    actors = max(1, workers or int(ray.cluster_resources().get("CPU", 1)))
    actor_options = {**options, "backend": "onnx", "threads": options.get("threads") or 1}
    base = {str(i): str(p.resolve().parent) for i, p in enumerate(paths)}  # where the actors read
    named = {str(i): str(p.parent) for i, p in enumerate(paths)}  # how sources are named, as on the local path
    start = time.perf_counter()
    ds = _read(paths).map_batches(BatchClassifier, fn_constructor_kwargs={"model": str(clf.path), "options": actor_options,
                                                                          "base": base, "named": named},
                                  batch_size=options.get("batch_size") or 64, batch_format="numpy", concurrency=actors,
                                  num_cpus=1)
    with staged_folder(output) as staging:
        ds.write_parquet(str(staging), ray_remote_args=LIGHT)
        diff, written = _rows_back(staging, clf)
        skipped = _skipped(paths, named, written)
        atomic_write_json(staging / "_run.json", {"model": describe, "engine": "ray", "images": diff.total,
                                                  "skipped": skipped, "differential": diff.to_dict(),
                                                  "warning": run_warning(diff, describe)}, indent=2)
    seconds = time.perf_counter() - start
    problems = [_Skip(s["source"], s["reason"]) for s in skipped]
    return ArchiveResult(output, diff.total, diff.total, problems, diff, describe, seconds, output / "_run.json")


class _Skip:
    def __init__(self, item: str, message: str):
        self.item, self.message = item, message


def _skipped(paths: list[Path], base: dict, written: set) -> list[dict]:
    """Listed images that have no row (missing or unreadable), read from the inputs one row at a time."""
    import pyarrow.parquet as pq  # deferred: optional dependency

    out = []
    for i, p in enumerate(paths):
        if p.suffix.lower() == ".parquet":
            listed = (str(x) for x in pq.read_table(p, columns=["path"]).column("path").to_pylist())
        else:
            import csv

            with open(p, newline="", encoding="utf-8-sig") as f:
                listed = [r.get("path", "") for r in csv.DictReader(f)]
        for raw in listed:
            path = Path(raw.strip())
            source = str(path if path.is_absolute() else Path(base[str(i)]) / path)
            if source not in written:
                out.append({"source": source, "reason": f"{source}: skipped, missing or not a readable image."})
    return out
