"""Decode images in threads while the model runs: the path every ``bloodcell predict`` takes.

Decoding threads take the images in groups of one batch, decode and prepare
them (Pillow releases the GIL while it decodes and resizes) and hand full
batches to the model through a bounded queue: at most ``depth`` batches wait,
so memory stays flat however many images there are, and batches come out in
input order, so a run's rows are in the same order every time. The inputs are
expanded lazily (:func:`bloodcell.prediction.inputs.iter_items`): a folder of
a million images is walked while the first batches are classified.

onnxruntime's intra-op threads are told not to spin while they wait
(:class:`~bloodcell.prediction.onnx_backend.OnnxModel` ``spin=False``), so on
a small machine the decoding threads get the cores between batches.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from bloodcell.core.errors import DataError
from bloodcell.core.preprocess import input_need
from bloodcell.core.settings import check_workers
from bloodcell.data import Problem
from bloodcell.prediction.inputs import Item, iter_items
from bloodcell.prediction.onnx_backend import default_threads


@dataclass
class Batch:
    """Prepared images of one batch, the items they came from, and the items that could not be read."""

    items: list[Item]
    images: np.ndarray | None
    framings: list = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def decode_batch(items: list[Item], prepare_framed: Callable, need: int | None = None) -> Batch:
    """Decode and prepare ``items``; unreadable ones become problems instead of stopping the batch."""
    kept, arrays, framings, problems = [], [], [], []
    for item in items:
        try:
            array, framing = prepare_framed(item.read(need))
        except DataError as e:
            problems.append(Problem(item.source, "unreadable", str(e)))
            continue
        kept.append(item)
        arrays.append(array)
        framings.append(framing)
    return Batch(kept, np.stack(arrays) if arrays else None, framings, problems)


def decoded_batches(items: Iterable[Item], prepare_framed: Callable, batch_size: int, workers: int | None = None,
                    depth: int | None = None, need: int | None = None) -> Iterator[Batch]:
    """Batches of prepared images, decoded by ``workers`` threads at most ``depth`` batches ahead, in order.

    Parameters
    ----------
    items : iterable of Item
        Taken lazily, one batch at a time.
    prepare_framed : callable
        Turns a decoded RGB image into ``(prepared, framing)``
        (:meth:`bloodcell.Classifier.prepare_framed`).
    batch_size : int
        Images per batch (a batch is short only by its unreadable images, and at the end).
    workers : int, optional
        Decoding threads (default: the usable CPUs).
    depth : int, optional
        Batches decoded ahead of the model (default ``workers + 2``).
    need : int, optional
        Shortest image side the model can use, so large JPEGs decode at reduced scale.
    """
    check_workers(workers, "workers (decoding threads)")
    workers = workers or default_threads()
    depth = max(1, depth or workers + 2)
    source = iter(items)
    groups = iter(lambda: list(itertools.islice(source, batch_size)), [])
    pool = ThreadPoolExecutor(workers, thread_name_prefix="bloodcell-decode")
    pending: deque = deque()
    try:
        for group in groups:
            pending.append(pool.submit(decode_batch, group, prepare_framed, need))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def classify_stream(clf, inputs, *, progress: bool = False, chunk: int | None = None, workers: int | None = None,
                    skip: Callable[[Item], bool] | None = None) -> Iterator[tuple[list, list]]:
    """Classify ``inputs`` with ``clf`` (a :class:`~bloodcell.prediction.classifier.Classifier`), yielding
    ``(predictions, problems)`` batch by batch in input order (see :meth:`Classifier.iter_predict`).

    ``skip`` leaves out items already done (``bloodcell predict --resume``).
    """
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Iterable):
        inputs = [inputs]
    problems: list[Problem] = []
    items = iter_items(list(inputs), problems)
    if skip is not None:
        items = (item for item in items if not skip(item))
    batches = decoded_batches(items, clf.prepare_framed, chunk or clf.batch_size, workers,
                              need=input_need(clf.preprocess))
    reported = 0
    yield [], problems[:0]
    bar = tqdm(desc="classifying", unit="img", disable=None, smoothing=0.05) if progress else None
    try:
        for batch in batches:
            preds = [] if batch.images is None else clf.predict_prepared(
                batch.images, [i.source for i in batch.items], [i.label for i in batch.items], batch.framings)
            found, reported = problems[reported:], len(problems)
            yield preds, found + batch.problems
            if bar is not None:
                bar.update(len(batch.items) + len(batch.problems))
        if len(problems) > reported:
            yield [], problems[reported:]
    finally:
        batches.close()
        if bar is not None:
            bar.close()
