"""Shared fixtures: small generated images and a slice of the real dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bloodcell.core.classes import CLASSES

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("BLOODCELL_DATA", REPO.parent / "shared" / "data" / "pbc"))


def synthetic_cell(rng: np.random.Generator, label: int, size: int = 48) -> np.ndarray:
    """An RGB image of a blob whose colour and radius depend on the class, on a pale background."""
    yy, xx = np.mgrid[:size, :size]
    r = size * (0.15 + 0.03 * label) * rng.uniform(0.9, 1.1)
    cy, cx = size / 2 + rng.normal(0, 1.5, 2)
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    img = np.full((size, size, 3), 225, np.float32) + rng.normal(0, 6, (size, size, 3))
    hue = np.array([120 + 15 * label, 60 + 10 * (7 - label), 160], np.float32)
    img[mask] = hue + rng.normal(0, 6, (int(mask.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def make_folder_dataset(tmp_path):
    """Factory: write a class-folder dataset of synthetic PNGs and return its root."""

    def make(per_class: int = 6, classes=CLASSES, size: int = 48, seed: int = 0, ext: str = ".png") -> Path:
        rng = np.random.default_rng(seed)
        root = tmp_path / f"cells_{seed}"
        for name in classes:
            label = CLASSES.index(name) if name in CLASSES else 0
            (root / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(synthetic_cell(rng, label, size)).save(root / name / f"{name}_{i:03d}{ext}")
        return root

    return make


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real dataset not found at {REAL_DATA} (set BLOODCELL_DATA)")
    return REAL_DATA
