"""Generated smear fields with known boxes, and a stand-in classifier, for the field tests."""

from __future__ import annotations

import numpy as np

from bloodcell.core.classes import CLASSES
from bloodcell.prediction.results import Prediction

SLIDE = (236, 226, 214)
RED = (214, 140, 152)
CYTOPLASM = (205, 185, 215)
NUCLEUS = (105, 55, 150)


def disc(image: np.ndarray, cx: float, cy: float, r: float, colour, rng) -> None:
    yy, xx = np.ogrid[: image.shape[0], : image.shape[1]]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    image[mask] = np.asarray(colour, np.float32) + rng.normal(0, 4, (int(mask.sum()), 3))


def white_box(x: float, y: float, rbc: float, width: int, height: int) -> tuple[float, float, float, float]:
    """The true box of a generated white cell (its cytoplasm disc), cut to the image."""
    r = 0.8 * rbc
    return max(0.0, x - r), max(0.0, y - r), min(float(width), x + r + 1), min(float(height), y + r + 1)


def make_field(seed: int = 0, size=(320, 240), rbc: float = 26, whites=((80, 80), (220, 150)),
               platelets=((160, 40),), lobed=(), red: int = 40) -> tuple[np.ndarray, list[tuple]]:
    """A field: pale slide, pink red cells of diameter ``rbc``, white cells (a purple nucleus in a
    pale cytoplasm, 1.6 ``rbc`` across; ``lobed`` ones have three nucleus lobes) and small purple
    platelets. Returns the RGB image and the white cells' true boxes."""
    rng = np.random.default_rng(seed)
    w, h = size
    image = np.full((h, w, 3), SLIDE, np.float32) + rng.normal(0, 3, (h, w, 3))
    cells = [*whites, *lobed]
    taken = [(x, y, 1.6 * rbc) for x, y in cells] + [(x, y, 0.5 * rbc) for x, y in platelets]
    for _ in range(600):
        if red == 0:
            break
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        if all(np.hypot(x - a, y - b) > r / 2 + 0.55 * rbc for a, b, r in taken):
            disc(image, x, y, rbc / 2, RED, rng)
            taken.append((x, y, rbc))
            red -= 1
    for x, y in cells:
        disc(image, x, y, 0.8 * rbc, CYTOPLASM, rng)
    for x, y in whites:
        disc(image, x, y, 0.55 * rbc, NUCLEUS, rng)
    for x, y in lobed:
        for dx, dy in ((-0.3, -0.25), (0.3, -0.2), (0.0, 0.3)):
            disc(image, x + dx * rbc, y + dy * rbc, 0.22 * rbc, NUCLEUS, rng)
    for x, y in platelets:
        disc(image, x, y, 0.15 * rbc, NUCLEUS, rng)
    return np.clip(image, 0, 255).astype(np.uint8), [white_box(x, y, rbc, w, h) for x, y in cells]


class FakeClassifier:
    """Stands in for :class:`~bloodcell.prediction.classifier.Classifier`: every crop is a
    neutrophil (0.9), except crops darker on average than ``erythroblast_below`` (erythroblasts)."""

    class_names = CLASSES
    batch_size = 8

    def __init__(self, erythroblast_below: float = 0.0):
        self.erythroblast_below = erythroblast_below
        self.crops = []

    def describe(self) -> dict:
        return {"name": "fake", "backend": "none", "classes": list(CLASSES)}

    def predict_arrays(self, images, sources=None, familiarity=True):
        self.crops += list(images)
        out = []
        for i, image in enumerate(images):
            label = "erythroblast" if float(np.mean(image)) < self.erythroblast_below else "neutrophil"
            probs = {c: (0.9 if c == label else 0.1 / 7) for c in CLASSES}
            out.append(Prediction((sources or ["x"] * len(images))[i], label, 0.9, probs, False, False, 0.5))
        return out
