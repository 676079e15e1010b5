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

The list is classified in parts of :data:`PART_IMAGES` images; each finished
part's shards are kept in ``<output>.ray-partial/`` until the run ends, so a
run stopped at any moment continues with ``resume=True`` (``--resume``) from
the first unfinished part.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from bloodcell.core.classes import canonical_class
from bloodcell.core.errors import ConfigError, DataError
from bloodcell.core.files import atomic_write_json, check_writable_folder, staged_folder
from bloodcell.core.settings import usable_cpus
from bloodcell.prediction.archive import ArchiveResult
from bloodcell.prediction.classifier import Classifier
from bloodcell.prediction.differential import differential, run_warning
from bloodcell.prediction.results import Prediction
from bloodcell.prediction.rowfile import SAME_RUN, check_same_run
from bloodcell.prediction.stream import decode_batch

#: Reading the list and writing the shards take no CPU from the cluster's count, so the model actors
#: (one CPU each) can take every CPU without starving the tasks that feed them.
LIGHT = {"num_cpus": 0}
#: The only columns read from an input list (a list may carry many more).
LISTED = ("path", "label")
#: Images per part of a run: a stopped run repeats at most the part it was in.
PART_IMAGES = 20_000


def _resolve(raw, base: str, named: str) -> tuple[Path, str]:
    """Where a listed path is read (relative ones against their manifest's folder) and how it is named."""
    listed = Path(str(raw).strip())
    return (listed, str(listed)) if listed.is_absolute() else (Path(base) / listed, str(Path(named) / listed))


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
            manifest = str(batch["_manifest"][i])
            path, source = _resolve(raw, self.base[manifest], self.named[manifest])
            label = labels[i] if labels is not None else None
            label = canonical_class(str(label)) if label is not None and str(label).strip() not in ("", "nan", "None") else None
            items.append(self.item(source, path, label=label))
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


def _listing(paths: list[Path]):
    """Every listed image, in order: a DataFrame with ``path``, ``_manifest`` (and ``label`` when every input has one)."""
    import pandas as pd  # deferred: comes with Ray Data

    frames = []
    for i, p in enumerate(paths):
        df = _read_list(p)
        df["_manifest"] = str(i)
        frames.append(df)
    keep = ["path", "label", "_manifest"] if all("label" in df.columns for df in frames) else ["path", "_manifest"]
    listing = pd.concat([df[keep] for df in frames], ignore_index=True)
    listing["path"] = listing["path"].astype(str)
    return listing


def _read_list(p: Path):
    """The :data:`LISTED` columns of one input list (CSV or Parquet); a one-line error naming the file otherwise."""
    import pandas as pd  # deferred: comes with Ray Data
    import pyarrow.parquet as pq  # deferred: optional dependency

    if p.suffix.lower() not in (".csv", ".parquet"):
        raise ConfigError(f"{p}: --engine ray reads a CSV manifest or a Parquet file with a 'path' column.")
    parquet = p.suffix.lower() == ".parquet"
    try:
        columns = pq.read_schema(p).names if parquet else list(pd.read_csv(p, nrows=0, encoding="utf-8-sig").columns)
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: cannot be read as a manifest ({e}).") from None
    if "path" not in columns:
        raise DataError(f"{p}: no 'path' column (columns: {', '.join(map(str, columns))}).")
    try:
        if parquet:
            return pq.read_table(p, columns=[c for c in columns if c in LISTED]).to_pandas()
        return pd.read_csv(p, dtype=str, keep_default_na=False, encoding="utf-8-sig", usecols=lambda c: c in LISTED)
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: cannot be read as a manifest ({e}).") from None


def _rows_back(folder: Path, clf: Classifier):
    """Read the written shards back for the differential and the skipped images."""
    import pyarrow.parquet as pq  # deferred: optional dependency

    cols = ["source", "label", "uncertain", "not_a_blood_cell"]
    got = pq.read_table(folder, columns=cols).to_pydict()
    preds = (Prediction(s, lab, 0.0, {}, bool(u), n, None) for s, lab, u, n in zip(*(got[c] for c in cols)))
    return differential(preds, clf.class_names), set(got["source"])


class _Parts:
    """The finished parts of a run in ``<output>.ray-partial/`` (``part-00000/``, ... each a folder of shards,
    there only once whole) and the run's settings (``run.json``), checked before a run is resumed."""

    def __init__(self, output: Path, settings: dict):
        self.folder = output.with_name(output.name + ".ray-partial")
        self.settings = settings

    def start(self, resume: bool) -> None:
        record = self.folder / "run.json"
        if self.folder.exists() and not resume:
            raise ConfigError(f"{self.folder} holds the finished parts of an unfinished run: pass --resume to continue "
                              "it, or delete it to start again.")
        if resume and record.is_file():
            try:
                before = json.loads(record.read_text(encoding="utf-8"))
            except ValueError:
                raise ConfigError(f"{record} is unreadable, so the run cannot be resumed safely; delete "
                                  f"{self.folder} to start again.") from None
            check_same_run(self.folder, before, self.settings, self.settings, "the same inputs, model and options")
            return
        check_writable_folder(self.folder, "folder for the run's finished parts")
        atomic_write_json(record, self.settings, indent=2)

    def part(self, i: int) -> Path:
        return self.folder / f"part-{i:05d}"

    def write(self, i: int, ds) -> None:
        """Write part ``i`` beside its place, then put it there whole."""
        with staged_folder(self.part(i)) as staging:
            ds.write_parquet(str(staging), ray_remote_args=LIGHT)

    def gather(self, staging: Path) -> None:
        """Link (or copy) every part's shards into ``staging``, named by part; the parts stay until the run ends."""
        for part in sorted(self.folder.glob("part-*")):
            for shard in sorted(part.glob("*.parquet")):
                try:
                    os.link(shard, staging / f"{part.name}-{shard.name}")
                except OSError:
                    shutil.copyfile(shard, staging / f"{part.name}-{shard.name}")


def predict_ray(paths, output, *, model=None, workers: int | None = None, progress: bool = False, resume: bool = False,
                **options) -> ArchiveResult:
    """Classify the images listed in ``paths`` on Ray and write Parquet shards to the folder ``output``.

    Parameters
    ----------
    paths : str, Path or list of them
        CSV manifests or Parquet files with a ``path`` column (and optionally ``label``).
    output : str or Path
        Folder for the shards and ``_run.json`` (replaced when the run ends).
    workers : int, optional
        Model actors (default: the CPUs of the cluster, at least 1).
    progress : bool
        Ray Data's progress bars (a line per finished part is printed either way).
    resume : bool
        Continue the unfinished run whose finished parts are in ``<output>.ray-partial/``.
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
    listing = _listing(paths)
    parts = _Parts(output, {**{k: describe.get(k) for k in SAME_RUN}, "inputs": [str(p.resolve()) for p in paths],
                            "images": len(listing), "part_images": PART_IMAGES})
    parts.start(resume)
    _start_ray(max(1, workers or usable_cpus()))
    ray.data.DataContext.get_current().enable_progress_bars = progress
    actors = max(1, workers or int(ray.cluster_resources().get("CPU", 1)))
    base = {str(i): str(p.resolve().parent) for i, p in enumerate(paths)}  # where the actors read
    named = {str(i): str(p.parent) for i, p in enumerate(paths)}  # how sources are named, as on the local path
    classify = {"fn_constructor_kwargs": {"model": str(clf.path), "base": base, "named": named,
                                          "options": {**options, "backend": "onnx", "threads": options.get("threads") or 1}},
                "batch_size": options.get("batch_size") or 64, "batch_format": "numpy", "concurrency": actors, "num_cpus": 1}
    start = time.perf_counter()
    _classify_parts(ray, listing, parts, classify)
    with staged_folder(output) as staging:
        parts.gather(staging)
        diff, written = _rows_back(staging, clf)
        skipped = _skipped(listing, named, written)
        atomic_write_json(staging / "_run.json", {"model": describe, "engine": "ray", "images": diff.total,
                                                  "skipped": skipped, "differential": diff.to_dict(),
                                                  "warning": run_warning(diff, describe)}, indent=2)
    shutil.rmtree(parts.folder, ignore_errors=True)
    seconds = time.perf_counter() - start
    problems = [_Skip(s["source"], s["reason"]) for s in skipped]
    return ArchiveResult(output, diff.total, diff.total, problems, diff, describe, seconds, output / "_run.json")


def _classify_parts(ray, listing, parts: _Parts, classify: dict) -> None:
    """Classify every part not yet finished, saying when each is done; a stop says how to continue."""
    count = max(1, -(-len(listing) // PART_IMAGES))
    done = 0
    try:
        for i in range(count):
            if parts.part(i).is_dir():
                done += 1
                continue
            chunk = listing.iloc[i * PART_IMAGES:(i + 1) * PART_IMAGES]
            parts.write(i, ray.data.from_pandas(chunk).map_batches(BatchClassifier, **classify))
            done += 1
            if count > 1:
                print(f"bloodcell predict: part {i + 1} of {count} done ({min(len(listing), (i + 1) * PART_IMAGES):,} "
                      f"of {len(listing):,} listed images)", file=sys.stderr)
    except BaseException:
        if done:
            print(f"bloodcell predict: stopped; {done} of {count} parts are finished in {parts.folder}; "
                  "run the same command with --resume to continue.", file=sys.stderr)
        raise


class _Skip:
    def __init__(self, item: str, message: str):
        self.item, self.message = item, message


def _skipped(listing, named: dict, written: set) -> list[dict]:
    """Listed images that have no row (missing or unreadable)."""
    out = []
    for raw, manifest in zip(listing["path"], listing["_manifest"]):
        _, source = _resolve(raw, named[manifest], named[manifest])
        if source not in written:
            out.append({"source": source, "reason": f"{source}: skipped, missing or not a readable image."})
    return out
