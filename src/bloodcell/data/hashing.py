"""Content hashes of image files, memoized by file identity.

The SHA-256 of a file's bytes keys the preprocessing cache and finds exact
duplicates. Hashing 15,000 files on every run would dominate a warm start, so
hashes are remembered in ``<cache root>/file-sha256.json`` together with the
file's size, modification time, change time and inode: if any of those differs,
the file is hashed again (the rule ``git`` and ``make`` rely on).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tqdm import tqdm

from bloodcell.core import settings
from bloodcell.core.errors import DataError
from bloodcell.core.files import atomic_write_json

MEMO_NAME = "file-sha256.json"


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def sha256_file(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_memo(memo_path: Path) -> dict:
    try:
        data = json.loads(memo_path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def file_sha256(paths, progress: bool = False, cache_root: Path | None = None) -> list[str]:
    """SHA-256 of each file in ``paths`` (same order), reusing remembered hashes.

    Raises
    ------
    bloodcell.core.errors.DataError
        If a file is missing or unreadable.
    """
    root = Path(cache_root) if cache_root is not None else settings.cache_root()
    memo_path = root / MEMO_NAME
    memo = _load_memo(memo_path)
    out: list[str] = []
    changed = 0
    it = tqdm(paths, desc="hashing files", unit="file", disable=not progress, leave=False, mininterval=0.5)
    for p in it:
        key = os.path.abspath(p)
        try:
            ident = _identity(os.stat(key))
        except FileNotFoundError:
            raise DataError(f"{p}: file not found (it may have been moved or deleted). Re-open the dataset.") from None
        except OSError as e:
            raise DataError(f"{p}: cannot read the file ({e.strerror}).") from None
        hit = memo.get(key)
        if hit is not None and hit[:4] == ident:
            out.append(hit[4])
            continue
        try:
            digest = sha256_file(key)
        except OSError as e:
            raise DataError(f"{p}: cannot read the file ({e.strerror}). Check its permissions.") from None
        memo[key] = ident + [digest]
        out.append(digest)
        changed += 1
    if changed:
        try:
            fresh = _load_memo(memo_path)
            fresh.update(memo)
            atomic_write_json(memo_path, fresh, indent=None)
        except OSError:
            pass
    return out
