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
        "sixteen": save(Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257), folder / "sixteen.png"),
    }
    return out


def smear(seed: int, label: int = 0, size: int = 64) -> np.ndarray:
    """A synthetic smear image: pale red cells scattered on a cream background, one violet cell in the centre.

    Unlike a lone blob, every seed gives a different field, as real smear images are.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.empty((size, size, 3), np.float32)
    img[:] = (245, 228, 215)
    for _ in range(int(rng.integers(6, 11))):
        cy, cx = rng.uniform(0, size, 2)
        r = size * rng.uniform(0.08, 0.13)
        ring = np.abs(np.hypot(yy - cy, xx - cx) - r * 0.7) < r * 0.35
        img[ring] = (215, 175, 180)
    cy, cx = size / 2 + rng.normal(0, 1.0, 2)
    r = size * (0.14 + 0.02 * label)
    body = np.hypot(yy - cy, xx - cx) < r
    img[body] = (200, 170, 215)
    for _ in range(1 + label % 4):
        ny, nx = cy + rng.normal(0, r / 3), cx + rng.normal(0, r / 3)
        img[np.hypot(yy - ny, xx - nx) < r * rng.uniform(0.3, 0.5)] = (90, 50, 140)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


FLAWED_CLASSES = ("basophil", "eosinophil", "lymphocyte", "platelet")


def flawed_dataset(root: Path, per_class: int = 10) -> Path:
    """A class-folder dataset with one of each flaw the audit looks for.

    * ``basophil/copy_of_000.jpg``: exact copy of ``basophil/basophil_000.jpg`` (same class);
    * ``lymphocyte/eo_003_again.jpg``: exact copy of ``eosinophil/eosinophil_003.jpg`` (label conflict);
    * ``platelet/platelet_005_reencoded.jpg``: re-encoded, slightly brighter ``platelet_005`` (near-duplicate);
    * ``lymphocyte/broken.jpg`` (not an image) and ``eosinophil/truncated.jpg`` (cut in half): unreadable;
    * ``basophil/odd.png``: a green square with a yellow disc (outlier);
    * ``.DS_Store``, ``basophil/.DS_123.jpg`` (hidden) and ``notes.txt`` at the root (stray).
    """
    for c in FLAWED_CLASSES:
        label = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil",
                 "platelet"].index(c)
        for i in range(per_class):
            (root / c).mkdir(parents=True, exist_ok=True)
            (root / c / f"{c}_{i:03d}.jpg").write_bytes(jpeg_bytes(smear(1000 * label + i, label), quality=95))
    (root / "basophil" / "copy_of_000.jpg").write_bytes((root / "basophil" / "basophil_000.jpg").read_bytes())
    (root / "lymphocyte" / "eo_003_again.jpg").write_bytes((root / "eosinophil" / "eosinophil_003.jpg").read_bytes())
    brighter = np.clip(smear(7005, 7).astype(int) + 4, 0, 255).astype(np.uint8)
    (root / "platelet" / "platelet_005_reencoded.jpg").write_bytes(jpeg_bytes(brighter, quality=75))
    (root / "lymphocyte" / "broken.jpg").write_bytes(b"<html>not an image</html>")
    full = jpeg_bytes(smear(5, 1, size=96))
    (root / "eosinophil" / "truncated.jpg").write_bytes(full[: len(full) // 2])
    odd = Image.new("RGB", (64, 64), (30, 140, 40))
    from PIL import ImageDraw

    ImageDraw.Draw(odd).ellipse((12, 12, 52, 52), fill=(230, 210, 40))
    odd.save(root / "basophil" / "odd.png")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + b"\0" * 32)
    (root / "basophil" / ".DS_123.jpg").write_bytes(b"\0\0\0\1Bud1" + b"\0" * 32)
    (root / "notes.txt").write_text("collected 2024\n")
    return root
