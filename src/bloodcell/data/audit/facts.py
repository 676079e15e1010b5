"""What the audit measures about each image, computed once per file content.

For every image the audit records its stored size, mode and format, whether it
decodes (through :func:`bloodcell.core.preprocess.decode_image`, the decoder every
stage uses), a perceptual hash and the appearance features of
:mod:`bloodcell.data.audit.features`. Results are remembered under
``<cache root>/facts/`` keyed by the file's SHA-256, so auditing again, or
splitting after an audit, takes seconds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from bloodcell.core import settings
from bloodcell.core.errors import DataError
from bloodcell.core.files import atomic_write_json
from bloodcell.core.preprocess import decode_image
from bloodcell.data.audit.features import measure
from bloodcell.data.pixels import _NAME
from bloodcell.data.workers import for_each_result

FACTS_VERSION = 1
CHUNK = 32


def _facts_one(src, hash_size: int) -> dict:
    out: dict = {}
    if isinstance(src, np.ndarray):
        rgb = src
        out.update(width=int(src.shape[1]), height=int(src.shape[0]), mode="RGB", format="array")
    else:
        try:
            with Image.open(src) as im:
                out.update(width=im.size[0], height=im.size[1], mode=im.mode, format=im.format)
        except Exception:  # noqa: BLE001 - decode_image below gives the user-facing message
            pass
        try:
            rgb = decode_image(src, _NAME)
        except DataError as e:
            out["error"] = str(e)
            return out
        except Exception as e:  # noqa: BLE001 - reported per file, never fatal to the audit
            out["error"] = f"{_NAME}: cannot be decoded ({type(e).__name__}: {e}). Re-export or remove it."
            return out
        out.setdefault("width", int(rgb.shape[1]))
        out.setdefault("height", int(rgb.shape[0]))
    phash, features = measure(rgb, hash_size)
    out["phash"] = format(phash, "x")
    out["features"] = [round(float(v), 6) for v in features]
    return out


def _facts_chunk(task):
    hash_size, items = task
    return [(key, _facts_one(src, hash_size)) for key, src in items]


def _store_path(root: Path, hash_size: int) -> Path:
    return root / "facts" / f"v{FACTS_VERSION}-phash{hash_size}.json"


def collect_facts(items: list[tuple[str, object]], hash_size: int = 16, workers: int | None = None,
                  progress: bool = True, cache_root: Path | None = None) -> dict[str, dict]:
    """Facts for each ``(key, path or RGB array)`` item, as ``{key: facts}``.

    Facts are dictionaries with ``width``, ``height``, ``mode``, ``format`` and
    either ``error`` (a message whose file name is :data:`bloodcell.data.pixels._NAME`,
    to be replaced by the caller) or ``phash`` (hex) and ``features``.
    """
    root = Path(cache_root) if cache_root is not None else settings.cache_root()
    store = _store_path(root, hash_size)
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    todo: dict[str, object] = {}
    for key, src in items:
        if key not in known and key not in todo:
            todo[key] = str(src) if isinstance(src, Path) else src
    if todo:
        pairs = list(todo.items())
        tasks = [(hash_size, pairs[i:i + CHUNK]) for i in range(0, len(pairs), CHUNK)]
        workers = settings.default_workers() if workers is None else max(1, int(workers))
        bar = tqdm(total=len(pairs), desc="measuring images", unit="img", disable=not progress, file=sys.stderr,
                   mininterval=0.5)
        def consume(result):
            for key, facts in result:
                known[key] = facts
            bar.update(len(result))

        try:
            for_each_result(_facts_chunk, tasks, workers, consume)
        finally:
            bar.close()
            try:
                atomic_write_json(store, known, indent=None)
            except OSError:
                pass
    return {key: known[key] for key, _ in items}
