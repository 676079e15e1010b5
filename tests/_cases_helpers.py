"""Small PNGs and classified cells for the case store tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from bloodcell.cases import NewCell
from bloodcell.cases import images as store_images


def png(seed: int, size: int = 24) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def new_cell(data: bytes, name: str = "x.png", predicted: str = "neutrophil") -> NewCell:
    probs = {"neutrophil": 0.1, "lymphocyte": 0.1, "platelet": 0.1, predicted: 0.7}
    return NewCell(name, data, store_images.facts(data, name), predicted, probs, 0.7, False, False, "cell")
