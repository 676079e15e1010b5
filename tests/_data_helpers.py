"""Small generated datasets with the kinds of flaws real data has."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import synthetic_cell


def save(img: Image.Image, path: Path, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)
    return path


def jpeg_bytes(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def cell(seed: int, label: int = 0, size: int = 48) -> np.ndarray:
    return synthetic_cell(np.random.default_rng(seed), label, size)


def odd_mode_images(folder: Path) -> dict[str, Path]:
    """Grayscale, RGBA, palette, CMYK and 16-bit images of one cell."""
    rgb = Image.fromarray(cell(7))
    out = {
        "gray": save(rgb.convert("L"), folder / "gray.png"),
        "rgba": save(rgb.convert("RGBA"), folder / "rgba.png"),
        "palette": save(rgb.convert("P"), folder / "palette.png"),
        "cmyk": save(rgb.convert("CMYK"), folder / "cmyk.jpg", "JPEG"),
        "sixteen": save(Image.fromarray((np.asarray(rgb.convert("L")).astype(np.uint16) * 257)), folder / "sixteen.png"),
    }
    return out
