"""Atomic file writes and folder swaps: a reader sees the old file (or folder) or the new one,
never half of one. Every file bloodcell writes goes through here."""

from __future__ import annotations

import functools
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bloodcell.core.errors import ConfigError


def fsync_path(path: str | Path) -> None:
    """Flush a written file, or a folder's entries, to disk (best effort where the system refuses)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@functools.cache
def process_umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux), else once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _file_mode(path: Path) -> int:
    """The mode a written file gets: the one it replaces keeps its own, a new one what ``open`` gives."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~process_umask()


@contextmanager
def _temporary_beside(path: Path) -> Iterator[tuple[int, str]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _file_mode(path))
        yield fd, tmp
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file beside it."""
    with _temporary_beside(Path(path)) as (fd, _):
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj, indent: int | None = 1) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode())


def atomic_save_npy(path: str | Path, parts: list[np.ndarray]) -> None:
    """Save the concatenation of ``parts`` (same dtype and trailing shape) as one ``.npy``, without
    building the concatenated array in memory."""
    first = parts[0]
    shape = (sum(len(p) for p in parts), *first.shape[1:])
    header = {"descr": np.lib.format.dtype_to_descr(first.dtype), "fortran_order": False, "shape": shape}
    with _temporary_beside(Path(path)) as (fd, _):
        with os.fdopen(fd, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            for p in parts:
                f.write(np.ascontiguousarray(p).data)


def atomic_write_with(path: str | Path, write) -> None:
    """Atomically write ``path`` with ``write(tmp_path)`` (a library call that writes a file by name)."""
    with _temporary_beside(Path(path)) as (fd, tmp):
        os.close(fd)
        write(tmp)
        fsync_path(tmp)


def swap_folder(staging: Path, out: Path) -> None:
    """Put the finished folder ``staging`` at ``out``, replacing what was there: readers of ``out``
    see the old folder or the new one. Both must be on one file system (``staging`` beside ``out``)."""
    staging, out = Path(staging), Path(out)
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
        os.replace(out, old / out.name)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)
    fsync_path(out.parent)


@contextmanager
def staged_folder(out: str | Path) -> Iterator[Path]:
    """A new empty folder beside ``out``; when the block ends without an error it replaces ``out``
    (:func:`swap_folder`), otherwise it is removed and ``out`` is left as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        os.chmod(staging, 0o777 & ~process_umask())
        yield staging
        swap_folder(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _probe(folder: Path) -> None:
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
    os.close(fd)
    os.unlink(probe)


def check_writable_folder(folder: str | Path, what: str = "output folder", flag: str = "-o") -> Path:
    """Create ``folder`` if needed and prove a file can be written there, before any work starts.

    Raises
    ------
    ConfigError
        Naming the folder, the reason and the option to change, when it cannot be created or written.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"The {what} {folder} is an existing file, not a folder. Pass another {flag} path.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _probe(folder)
    except OSError as e:
        raise ConfigError(
            f"Cannot write the {what} {folder} ({e.strerror or e}). Pass a folder you can write to with {flag}."
        ) from None
    return folder


@contextmanager
def output_folder(folder: str | Path, what: str = "output folder", flag: str = "-o") -> Iterator[Path]:
    """:func:`check_writable_folder` around the work that fills the folder: when the work fails and
    the folder, made here, is still empty, it is removed again, so a failed run leaves no empty output."""
    made = not Path(folder).exists()
    checked = check_writable_folder(folder, what, flag)
    try:
        yield checked
    except BaseException:
        if made and checked.is_dir() and not any(checked.iterdir()):
            checked.rmdir()
        raise


def check_writable_file(path: str | Path, what: str = "output file", flag: str = "-o") -> Path:
    """Prove ``path`` can be written (its folder is created if needed), before any work starts.

    Raises
    ------
    ConfigError
        When ``path`` is a folder, its parent is a file, or the folder cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"The {what} {path} is a folder. Pass a file name with {flag}, e.g. {path / 'out'}.")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"Cannot write the {what} {path}: {parent} is a file, not a folder. Pass another {flag} path.")
        if parent.exists():
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _probe(path.parent)
    except OSError as e:
        raise ConfigError(
            f"Cannot write the {what} {path} ({e.strerror or e}). Pass a path you can write to with {flag}."
        ) from None
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"Cannot write the {what} {path} (permission denied). Pass a path you can write to with {flag}.")
    return path
