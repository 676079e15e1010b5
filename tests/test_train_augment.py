"""Batch augmentation: exact flips/rotations, per-image randomness, seeding, colour and stain jitter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bloodcell.core.errors import ConfigError
from bloodcell.training.augment import BatchAugment, batch_generator
from bloodcell.training.config import AugmentConfig, TrainConfig, apply_overrides, load_config


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


# ---------------------------------------------------------------- what other labs differ in

NEW_OPTIONS = {"stain_scale": 0.7, "zoom_out": 0.5, "zoom_in": 2.0, "translate": 0.25, "white_balance": 0.4,
               "grey": 0.5, "blur": 2.0, "noise": 0.08, "low_resolution": 0.4, "jpeg": 0.3}


def _disc(n=4, size=64, radius=12, centre=None):
    """Light background (230) with a dark disc (40), like a stained cell on a smear."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cy, cx = centre or ((size - 1) / 2, (size - 1) / 2)
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    img = torch.where(inside, torch.tensor(40), torch.tensor(230)).to(torch.uint8)
    return img.expand(n, 3, size, size).clone()


def _dark(y):
    return (y.mean(1) < 0.5).float()  # (N, H, W) mask of the disc


def _centroid(mask):
    yy, xx = torch.meshgrid(torch.arange(mask.shape[-2]), torch.arange(mask.shape[-1]), indexing="ij")
    area = mask.sum((1, 2))
    return torch.stack([(mask * yy).sum((1, 2)) / area, (mask * xx).sum((1, 2)) / area], 1)


def _high_frequency(y):
    return ((y[..., 1:, :] - y[..., :-1, :]) ** 2).mean((1, 2, 3)) + ((y[..., 1:] - y[..., :-1]) ** 2).mean((1, 2, 3))


def test_new_options_default_to_off():
    defaults = AugmentConfig()
    for key, value in NEW_OPTIONS.items():
        off = getattr(defaults, key)
        assert off in (0.0, 1.0), key
        assert not BatchAugment(AugmentConfig(**{key: off})).active, key
        assert BatchAugment(AugmentConfig(**{key: value})).active, key


def test_zoom_out_halves_the_disc_and_zoom_in_doubles_it():
    x = _disc(radius=12)
    half = BatchAugment(AugmentConfig(zoom_out=0.5, zoom_in=0.5))(x, batch_generator(0, 0, 0, 0))
    # The centre half of the output: the mirrored field around it never reaches there.
    diameter = _dark(half)[:, 16:48, 16:48].sum((1, 2)).div(math.pi).sqrt() * 2
    torch.testing.assert_close(diameter, torch.full((4,), 12.0), atol=1.0, rtol=0)
    # The field around: mirrored background, neither black nor mirrored copies of the cell.
    assert (_dark(half).sum((1, 2)) == _dark(half)[:, 16:48, 16:48].sum((1, 2))).all()
    assert (half > 0.8).float().mean() > 0.9
    double = BatchAugment(AugmentConfig(zoom_in=2.0, zoom_out=1.0))(_disc(radius=8), batch_generator(0, 0, 0, 0))
    grown = _dark(double).sum((1, 2)).div(math.pi).sqrt() * 2
    assert ((grown >= 16 - 1) & (grown <= 32 + 1)).all()
    assert grown.std() > 0.5  # each image its own magnification


def test_translation_moves_the_centroid_by_up_to_its_share_of_the_side():
    x = _disc(n=16, radius=6)
    y = BatchAugment(AugmentConfig(translate=0.25))(x, batch_generator(0, 0, 0, 0))
    shift = (_centroid(_dark(y)) - 31.5).abs()
    assert (shift <= 0.25 * 64 + 0.5).all()
    assert shift.max() > 0.15 * 64  # some cells moved far off the centre...
    assert len({tuple(s.round().tolist()) for s in shift}) > 8  # ...each its own way
    ink = (230 / 255 - y.mean(1)).clamp(min=0).sum((1, 2))
    torch.testing.assert_close(ink, ink.new_full((16,), float(ink.max())), rtol=0.02, atol=0)  # moved, not resized


def test_grey_gives_equal_channels_for_its_share_of_images():
    x = _batch(n=32)
    all_grey = BatchAugment(AugmentConfig(grey=1.0))(x, batch_generator(0, 0, 0, 0))
    torch.testing.assert_close(all_grey[:, 0], all_grey[:, 1])
    torch.testing.assert_close(all_grey[:, 1], all_grey[:, 2])
    some = BatchAugment(AugmentConfig(grey=0.5))(x, batch_generator(0, 0, 0, 0))
    is_grey = (some[:, 0] - some[:, 2]).abs().amax((1, 2)) < 1e-6
    assert 0 < is_grey.sum() < len(x)
    torch.testing.assert_close(some[~is_grey] * 255, x[~is_grey].float())  # the others untouched


def test_white_balance_scales_each_channel_mean_by_its_own_gain():
    x = torch.full((16, 3, 8, 8), 128, dtype=torch.uint8)
    y = BatchAugment(AugmentConfig(white_balance=0.4))(x, batch_generator(0, 0, 0, 0))
    gains = y.mean((2, 3)) * 255 / 128
    assert ((gains >= 0.6 - 1e-4) & (gains <= 1.4 + 1e-4)).all()
    assert (gains.std(1) > 0.01).all()  # a colour cast, not a brightness change
    torch.testing.assert_close(y, gains.view(16, 3, 1, 1) * 128 / 255 * torch.ones_like(y))  # uniform per channel


def test_blur_lowers_high_frequency_energy():
    x = _batch(n=16, size=32)
    y = BatchAugment(AugmentConfig(blur=2.0))(x, batch_generator(0, 0, 0, 0))
    before, after = _high_frequency(x.float() / 255), _high_frequency(y)
    assert (after <= before + 1e-6).all() and after.mean() < 0.5 * before.mean()
    flat = torch.full((4, 3, 16, 16), 77, dtype=torch.uint8)  # a flat field stays flat
    torch.testing.assert_close(BatchAugment(AugmentConfig(blur=3.0))(flat, batch_generator(0, 0, 0, 0)) * 255,
                               flat.float(), atol=1e-3, rtol=0)


def test_low_resolution_loses_detail_and_keeps_the_size():
    x = _batch(n=16, size=31)
    y = BatchAugment(AugmentConfig(low_resolution=0.3))(x, batch_generator(0, 0, 0, 0))
    assert y.shape == x.shape
    assert _high_frequency(y).mean() < 0.6 * _high_frequency(x.float() / 255).mean()


def test_noise_has_its_own_strength_per_image():
    x = torch.full((16, 3, 32, 32), 128, dtype=torch.uint8)
    y = BatchAugment(AugmentConfig(noise=0.08))(x, batch_generator(0, 0, 0, 0))
    std = (y - 128 / 255).std((1, 2, 3))
    assert (std <= 0.08 * 1.15).all() and std.max() > 0.03 and std.std() > 0.005
    assert (y - 128 / 255).mean().abs() < 0.005


def test_jpeg_like_quantises_blocks_and_keeps_odd_sizes():
    x = _batch(n=8, size=20)
    y = BatchAugment(AugmentConfig(jpeg=0.3))(x, batch_generator(0, 0, 0, 0))
    assert y.shape == x.shape
    assert (y * 255 - x.float()).abs().mean() > 5
    assert _high_frequency(y).mean() < _high_frequency(x.float() / 255).mean()
    tiny = BatchAugment(AugmentConfig(jpeg=1e-6))(x, batch_generator(0, 0, 0, 0))
    torch.testing.assert_close(tiny * 255, x.float(), atol=0.01, rtol=0)  # the DCT round trip is lossless


def test_stain_amount_pales_and_darkens_but_keeps_white_white():
    x = torch.randint(1, 256, (16, 3, 8, 8), dtype=torch.uint8)
    x[:, :, 0, 0] = 255
    y = BatchAugment(AugmentConfig(stain_scale=0.7))(x, batch_generator(0, 0, 0, 0))
    assert (y[:, :, 0, 0] == 1).all()  # no stain stays no stain
    od = -torch.log(x.float().clamp(min=1) / 255).mean((1, 2, 3))
    ratio = -torch.log(y.clamp(min=1 / 255)).mean((1, 2, 3)) / od
    assert ratio.min() < 0.85 and ratio.max() > 1.15  # paler and darker smears


def test_everything_on_is_seeded_bounded_and_per_image():
    cfg = AugmentConfig(hflip=True, rotate=10, resized_crop=0.85, hue=0.1, stain=0.05, **NEW_OPTIONS)
    x = _batch(n=8, size=24)
    aug = BatchAugment(cfg)
    a, b = aug(x, batch_generator(5, 1, 0, 2)), aug(x, batch_generator(5, 1, 0, 2))
    assert torch.equal(a, b)
    assert not torch.equal(a, aug(x, batch_generator(5, 1, 0, 3)))
    assert a.dtype == torch.float32 and a.shape == x.shape and a.min() >= 0 and a.max() <= 1


def test_shipped_recipes_get_the_same_images_as_before_the_new_options():
    # Pinned from the augmentation before the new options existed: their draws come after the old ones.
    cfg = AugmentConfig(hflip=True, vflip=True, rot90=True, rotate=10, resized_crop=0.85, brightness=0.1,
                        contrast=0.1, saturation=0.1, hue=0.05, stain=0.03)
    a = BatchAugment(cfg)(_batch(), batch_generator(0, 1, 0, 3))
    assert a.sum(dtype=torch.float64).item() == pytest.approx(4603.4567, abs=0.05)
    np.testing.assert_allclose((a * 255)[3, :, 2, 5].numpy(), [125.9377, 150.7075, 102.3973], atol=0.01)


@pytest.mark.parametrize("key, value", [("zoom_out", 0.1), ("zoom_out", 1.5), ("zoom_in", 0.5), ("translate", 0.6),
                                        ("white_balance", 1.0), ("grey", 1.5), ("blur", -1), ("noise", 0.9),
                                        ("low_resolution", 0.0), ("jpeg", 2), ("stain_scale", 2)])
def test_new_options_refuse_values_out_of_range(key, value):
    with pytest.raises(ConfigError, match=f"augment.{key}"):
        apply_overrides(TrainConfig(), {f"augment.{key}": value}, "test")


def test_robust_recipe_loads_and_turns_the_new_options_on():
    cfg = load_config("robust_lite0")
    default = load_config("default")
    assert cfg.model == default.model and cfg.augment.zoom_out < 1 < cfg.augment.zoom_in
    assert all(getattr(cfg.augment, k) != getattr(AugmentConfig(), k) for k in NEW_OPTIONS)


def test_lab_shift_p_zero_leaves_every_image_as_it_was():
    x = _disc(n=8)
    y = BatchAugment(AugmentConfig(**NEW_OPTIONS, hue=0.2, saturation=0.5, lab_shift_p=0.0))(x, batch_generator(0, 0, 0, 0))
    assert torch.allclose(y, x.float() / 255, atol=1.5 / 255)


def test_lab_shift_p_shifts_about_that_share_of_images():
    x = _disc(n=400, size=32, radius=6)
    cfg = AugmentConfig(white_balance=0.5, lab_shift_p=0.3)
    y = BatchAugment(cfg)(x, batch_generator(1, 0, 0, 0))
    changed = (y - x.float() / 255).abs().amax((1, 2, 3)) > 2 / 255
    assert 0.22 < changed.float().mean().item() < 0.38
