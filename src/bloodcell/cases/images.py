"""Image files of the case store, named by content: ``images/ab/abcdef....ext``.

A file is written whole through a synced temporary file and renamed into place before the row
naming it is committed, so a row never points at a missing or half-written image. A crash can
leave a file no row names, or a temporary file; :func:`clean` removes those when the store opens.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from bloodcell.core.errors import DataError
from bloodcell.core.files import atomic_write_bytes
from bloodcell.core.preprocess import decode_image

IMAGES = "images"
#: File extension of each image format the store keeps (others keep PIL's format name).
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp"}
MEDIA_TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".tif": "image/tiff", ".bmp": "image/bmp",
               ".gif": "image/gif", ".webp": "image/webp"}
#: Formats a browser shows as they are; the others (TIFF, from many microscope cameras) are sent to the
#: page as PNG, or as JPEG above :data:`DISPLAY_PNG_PIXELS`, while the stored file stays as uploaded.
BROWSER_SHOWS = {".jpg", ".png", ".gif", ".webp", ".bmp"}
DISPLAY_PNG_PIXELS = 1_000_000
#: Files no row names are removed at open only when older than this (seconds): another process
#: sharing the store may have written an image whose row it has not committed yet.
ORPHAN_AGE = 3600.0


@dataclass(frozen=True)
class ImageFacts:
    """What the store records about an image file: content hash, extension and upright size."""

    sha256: str
    ext: str
    width: int
    height: int


def facts(data: bytes, name: str) -> ImageFacts:
    """Hash, format and size (after the EXIF orientation) of an image file's bytes, from its header.

    Raises
    ------
    DataError
        Naming the file when it is not an image PIL can identify.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format or "IMG"
            width, height = img.size
            if img.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientations turned a quarter
                width, height = height, width
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{name}: not a readable image ({e}).") from None
    ext = EXTENSIONS.get(fmt, "." + fmt.lower())
    return ImageFacts(hashlib.sha256(data).hexdigest(), ext, width, height)


def media_type(ext: str) -> str:
    return MEDIA_TYPES.get(ext, "application/octet-stream")


def for_display(path: Path) -> tuple[bytes | None, str]:
    """``(None, media type)`` when a browser shows the stored file as it is, else ``(bytes, media type)``
    of a PNG (JPEG for large images) of it, decoded as the model decodes it (upright, RGB, 8 bits)."""
    ext = path.suffix.lower()
    if ext in BROWSER_SHOWS:
        return None, media_type(ext)
    rgb = decode_image(path)
    out = io.BytesIO()
    if rgb.shape[0] * rgb.shape[1] <= DISPLAY_PNG_PIXELS:
        Image.fromarray(rgb).save(out, format="PNG")
        return out.getvalue(), "image/png"
    Image.fromarray(rgb).save(out, format="JPEG", quality=90)
    return out.getvalue(), "image/jpeg"


def image_path(folder: Path, sha256: str, ext: str) -> Path:
    """Where the image with this hash lives in the store ``folder``."""
    return folder / IMAGES / sha256[:2] / f"{sha256}{ext}"


def put(folder: Path, data: bytes, found: ImageFacts) -> Path:
    """Store ``data`` under its hash (atomically; kept as is when the same bytes are already there)."""
    path = image_path(folder, found.sha256, found.ext)
    if not path.exists():
        atomic_write_bytes(path, data)
    return path


def clean(folder: Path, named: set[str], min_age: float = ORPHAN_AGE, now: float | None = None) -> int:
    """Remove temporary files and images no row names (file names in ``named``) older than ``min_age``
    seconds; return how many were removed."""
    root = folder / IMAGES
    if not root.is_dir():
        return 0
    now = time.time() if now is None else now
    removed = 0
    for sub in root.iterdir():
        if not sub.is_dir():
            continue
        for path in sub.iterdir():
            if path.name in named:
                continue
            try:
                if now - path.stat().st_mtime >= min_age:
                    os.unlink(path)
                    removed += 1
            except FileNotFoundError:
                pass
    return removed


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
