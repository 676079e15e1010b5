"""Small PNGs, classified cells and a case service for the case store tests."""

from __future__ import annotations

import io
from contextlib import contextmanager

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from _serve_helpers import tiny_model
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


def png_of(image: np.ndarray) -> bytes:
    """An RGB ``uint8`` image as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


@contextmanager
def case_client(folder):
    """The service with the tiny model and its case store in ``folder`` (2 MB, 6 files per request)."""
    from bloodcell.server import create_app

    app = create_app(tiny_model(), max_upload_mb=2, max_files=6, allowed_hosts=["testserver"], cases_dir=folder)
    with TestClient(app) as c:
        c.folder = folder
        yield c
