"""Uploaded files to model inputs, one file at a time so a request never holds more than one decoded image."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from fastapi import UploadFile
from PIL import Image

from bloodcell.core.errors import DataError
from bloodcell.core.preprocess import decode_image, input_need
from bloodcell.prediction.classifier import Classifier

#: Default cap on the pixels of one uploaded image: a real cell image is about 0.13 megapixels.
DEFAULT_MAX_MEGAPIXELS = 4.0


@dataclass
class Upload:
    """The prepared images of a request, their file names, and the files skipped."""

    images: np.ndarray | None
    names: list[str]
    skipped: list[dict]
    framings: list[str | None] | None = None


def _read(upload: UploadFile) -> bytes:
    upload.file.seek(0)
    return upload.file.read()


def decode_uploads(clf: Classifier, files: list[UploadFile], max_pixels: int) -> Upload:
    """Decode and prepare each file (blocking: run it in a worker thread).

    Images over ``max_pixels`` are refused from their header, before their pixels
    are decoded; large JPEGs decode at the reduced scale the model still allows.
    """
    need = input_need(clf.preprocess)
    images, names, skipped, framings = [], [], [], []
    for i, upload in enumerate(files):
        name = upload.filename or f"file {i + 1}"
        data = _read(upload)
        if not data:
            skipped.append({"filename": name, "detail": f"{name}: empty file (0 bytes)."})
            continue
        try:
            image, framing = clf.prepare_framed(decode_image(data, name, max_pixels=max_pixels, need=need))
            images.append(image)
            framings.append(framing)
            names.append(name)
        except DataError as e:
            skipped.append({"filename": name, "detail": str(e)})
        del data
    return Upload(np.stack(images) if images else None, names, skipped, framings)


def png_bytes(image: np.ndarray) -> bytes:
    """An RGB ``uint8`` image encoded as PNG."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def png_base64(image: np.ndarray) -> str:
    """A ``data:`` URL of an RGB image as PNG."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()
