"""Locations and worker counts bloodcell reads from the environment.

``BLOODCELL_DATA``   a default dataset for tools that need one (no default: unset means none).
``BLOODCELL_CACHE``  where decoded image arrays are cached (default ``.cache/bloodcell``).
``BLOODCELL_WORKERS`` decoding threads (default: the CPU count, at most 8).
"""

from __future__ import annotations

import os
from pathlib import Path

from bloodcell.core.errors import ConfigError

DEFAULT_CACHE = ".cache/bloodcell"


def data_root() -> Path | None:
    """The dataset named by ``BLOODCELL_DATA``, or ``None`` when it is unset."""
    env = os.environ.get("BLOODCELL_DATA", "").strip()
    return Path(env) if env else None


def cache_root() -> Path:
    return Path(os.environ.get("BLOODCELL_CACHE", DEFAULT_CACHE))


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the system says, else the CPU count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """``BLOODCELL_WORKERS`` if set, else the usable CPUs (at most 8).

    Raises
    ------
    ConfigError
        When ``BLOODCELL_WORKERS`` is not a whole number.
    """
    env = os.environ.get("BLOODCELL_WORKERS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ConfigError(
                f"BLOODCELL_WORKERS={env!r} is not a whole number. Set it to a worker count such as 2, or unset it."
            ) from None
    return min(8, usable_cpus())


def check_workers(workers: int | None, option: str = "--workers") -> None:
    """Refuse a thread or worker count below 1 (``None`` leaves the default)."""
    if workers is not None and workers < 1:
        raise ConfigError(f"{option} must be at least 1 (leave it out for the usable CPUs), got {workers}.")
