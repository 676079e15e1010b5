"""Locations bloodcell reads from the environment, each with one default.

``BLOODCELL_DATA``   the PBC dataset folder (default ``../shared/data/pbc``).
``BLOODCELL_CACHE``  where decoded image arrays are cached (default ``.cache/bloodcell``).
``BLOODCELL_WORKERS`` worker processes for decoding (default: the CPU count, at most 8).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATA = "../shared/data/pbc"
DEFAULT_CACHE = ".cache/bloodcell"


def data_root() -> Path:
    return Path(os.environ.get("BLOODCELL_DATA", DEFAULT_DATA))


def cache_root() -> Path:
    return Path(os.environ.get("BLOODCELL_CACHE", DEFAULT_CACHE))


def default_workers() -> int:
    env = os.environ.get("BLOODCELL_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, min(8, os.cpu_count() or 1))
