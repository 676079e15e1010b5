"""Batch augmentation: exact flips/rotations, per-image randomness, seeding, colour and stain jitter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bloodcell.training.augment import BatchAugment, batch_generator
from bloodcell.training.config import AugmentConfig


def _batch(n=12, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_nothing_on_means_identity():
    x = _batch()
    aug = BatchAugment(AugmentConfig())
    assert not aug.active
    torch.testing.assert_close(aug(x, batch_generator(0, 0, 0, 0)) * 255, x.float())


def test_flips_and_rot90_are_exact_and_vary_per_image():
    x = _batch(n=32)
    y = BatchAugment(AugmentConfig(hflip=True, vflip=True, rot90=True))(x, batch_generator(0, 1, 0, 0)) * 255
    for i in range(len(x)):
        matches = [(k, f) for k in range(4) for f in range(4)
                   if torch.allclose(y[i], torch.rot90(_flip(x[i].float(), f), k, (-2, -1)), atol=1e-3)]
        assert matches, f"image {i} is not a flip/rotation of its input"
    # Per-image randomness: not all images got the same transform.
    assert sum(torch.allclose(y[i], x[i].float(), atol=1e-3) for i in range(len(x))) < len(x) // 2


def _flip(img, f):
    if f & 1:
        img = img.flip(-1)
    if f & 2:
        img = img.flip(-2)
    return img


def test_same_seed_same_output_other_batch_index_differs():
    cfg = AugmentConfig(hflip=True, rotate=20, resized_crop=0.6, brightness=0.2, contrast=0.2, saturation=0.2,
                        hue=0.05, stain=0.05)
    x = _batch()
    aug = BatchAugment(cfg)
    a = aug(x, batch_generator(3, 2, 0, 5))
    b = aug(x, batch_generator(3, 2, 0, 5))
    c = aug(x, batch_generator(3, 2, 0, 6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.dtype == torch.float32 and a.shape == x.shape and a.min() >= 0 and a.max() <= 1


def test_rotation_fills_corners_with_background_not_black():
    x = torch.full((4, 3, 32, 32), 230, dtype=torch.uint8)
    x[:, :, 12:20, 12:20] = 40
    y = BatchAugment(AugmentConfig(rotate=45))(x, batch_generator(0, 0, 0, 0))
    corners = y[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners > 0.8).all()


def test_colour_jitter_changes_colour_but_not_geometry():
    x = _batch(n=8, size=8)
    y = BatchAugment(AugmentConfig(brightness=0.3, hue=0.1))(x, batch_generator(0, 0, 0, 0))
    assert not torch.allclose(y * 255, x.float(), atol=1.0)
    # A uniform grey image stays grey under hue rotation and scales under brightness.
    grey = torch.full((4, 3, 4, 4), 100, dtype=torch.uint8)
    g = BatchAugment(AugmentConfig(hue=0.2))(grey, batch_generator(0, 0, 0, 1))
    torch.testing.assert_close(g * 255, grey.float(), atol=1e-3, rtol=0)


def test_stain_jitter_works_in_hed_space():
    x = torch.randint(1, 256, (6, 3, 8, 8), dtype=torch.uint8)
    tiny = BatchAugment(AugmentConfig(stain=1e-7))(x, batch_generator(0, 0, 0, 0))
    torch.testing.assert_close(tiny * 255, x.float(), atol=1e-2, rtol=0)  # HED round trip is lossless
    strong = BatchAugment(AugmentConfig(stain=0.2))(x, batch_generator(0, 0, 0, 0))
    diff = (strong * 255 - x.float()).abs().mean((1, 2, 3))
    assert (diff > 1).all()  # every image changed...
    assert diff.std() > 0.1  # ...by its own amount


@pytest.mark.parametrize("size", [16, 31])
def test_resized_crop_keeps_size(size):
    x = _batch(size=size)
    y = BatchAugment(AugmentConfig(resized_crop=0.3))(x, batch_generator(0, 0, 0, 0))
    assert y.shape == x.shape
    assert not np.allclose(y.numpy() * 255, x.float().numpy(), atol=1)
