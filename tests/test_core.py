"""Class names, preprocessing, decoding and the CLI shell."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bloodcell import CLASSES, ConfigError, DataError, PreprocessConfig, canonical_class, decode_image, prepare
from bloodcell.cli.main import main


@pytest.mark.parametrize(
    "alias,expected",
    [("IG", "ig"), ("immature_granulocyte", "ig"), ("Immature Granulocytes", "ig"), ("NEUTROPHIL", "neutrophil"),
     ("thrombocyte", "platelet"), ("Platelets", "platelet"), ("erythroblast", "erythroblast")],
)
def test_class_aliases(alias, expected):
    assert canonical_class(alias) == expected


def test_unknown_class_lists_known_and_suggests():
    with pytest.raises(DataError, match=r"Unknown class name 'neutrofil'.*Known classes: basophil.*Did you mean 'neutrophil'"):
        canonical_class("neutrofil")


def _png(img: Image.Image, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "F", "1"])
def test_decode_converts_every_mode_to_rgb(mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)
    else:
        img = rgb.convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I", "F", "I;16") else "PNG"
    arr = decode_image(_png(img, fmt), "x.img")
    assert arr.shape == (20, 30, 3) and arr.dtype == np.uint8
    if mode == "I;16":
        assert arr.min() == 0 and arr.max() == 255


def test_decode_rejects_non_image_with_name(tmp_path):
    bad = tmp_path / "cell.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match=r"cell\.jpg: not a readable image"):
        decode_image(bad)


def test_decode_rejects_truncated_jpeg(tmp_path):
    data = _png(Image.new("RGB", (200, 200), (200, 10, 10)), "JPEG")
    bad = tmp_path / "half.jpg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"half\.jpg: The file is truncated or corrupt"):
        decode_image(bad)


@pytest.mark.parametrize("cut", [20, 30])
def test_decode_names_a_bmp_with_a_damaged_header(tmp_path, cut):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(buf, "BMP")
    path = tmp_path / "cell.bmp"
    path.write_bytes(buf.getvalue()[:cut])
    with pytest.raises(DataError, match=r"cell\.bmp: not a readable image"):
        decode_image(path)


def test_decode_rejects_decompression_bomb(monkeypatch):
    monkeypatch.setattr("bloodcell.core.preprocess.MAX_PIXELS", 1000)
    with pytest.raises(DataError, match=r"big\.png: image is 40x40 = 1,600 pixels, over the 1,000-pixel"):
        decode_image(_png(Image.new("RGB", (40, 40))), "big.png")


def test_decode_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        decode_image(tmp_path / "nope.png")


def test_prepare_centre_crops_then_resizes():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 50:150] = 255  # the centred 100x100 square is white, the sides black
    out = prepare(img, PreprocessConfig(image_size=32, crop_fraction=1.0))
    assert out.shape == (32, 32, 3)
    assert out.min() == 255
    half = prepare(img, PreprocessConfig(image_size=10, crop_fraction=0.5))
    assert half.shape == (10, 10, 3) and half.min() == 255


def test_preprocess_config_validates_and_round_trips():
    cfg = PreprocessConfig(image_size=64, crop_fraction=0.8)
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.pixel_key() != PreprocessConfig(image_size=64, crop_fraction=0.9).pixel_key()
    with pytest.raises(ConfigError, match="image_size must be an integer from 8 to 2048, got 4"):
        PreprocessConfig(image_size=4)
    with pytest.raises(ConfigError, match="Unknown preprocessing keys"):
        PreprocessConfig.from_dict({"size": 3})


def test_normalize_numpy_and_torch_agree():
    import torch

    from bloodcell.core.preprocess import normalize

    cfg = PreprocessConfig(image_size=8)
    batch = np.random.default_rng(1).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    a = normalize(batch, cfg)
    b = normalize(torch.from_numpy(batch), cfg).numpy()
    assert a.shape == (2, 3, 8, 8)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert len(CLASSES) == 8


def test_cli_suggests_close_verb(capsys):
    assert main(["modls"]) == 2
    assert "Did you mean 'models'" in capsys.readouterr().err


def test_cli_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "bloodcell", "models"], capture_output=True, text=True, check=True)
    assert "efficientnet_lite0" in out.stdout and "enhanced_cnn" in out.stdout


def test_image_normalization_undoes_a_colour_cast_and_agrees_across_backends():
    import torch

    from bloodcell.core.preprocess import normalize

    cfg = PreprocessConfig(image_size=8, normalization="image")
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    assert "normalization" not in PreprocessConfig(image_size=8).to_dict()  # dataset models are written as before
    batch = np.random.default_rng(2).integers(40, 200, (1, 8, 8, 3), dtype=np.uint8)
    cast = np.clip(batch * np.array([1.1, 1.0, 0.6]) + np.array([10, 0, 0]), 0, 255).round().astype(np.uint8)
    a, b = normalize(batch, cfg), normalize(cast, cfg)
    np.testing.assert_allclose(a, b, atol=0.05)  # a per-channel gain and offset is undone (up to rounding)
    assert np.abs(normalize(batch, PreprocessConfig(image_size=8)) - normalize(cast, PreprocessConfig(image_size=8))).max() > 0.3
    np.testing.assert_allclose(a, normalize(torch.from_numpy(batch), cfg).numpy(), atol=1e-5)
    flat = np.full((1, 8, 8, 3), 128, np.uint8)
    assert np.isfinite(normalize(flat, cfg)).all() and np.abs(normalize(flat, cfg)).max() == 0
    with pytest.raises(ConfigError, match="normalization must be one of dataset, image"):
        PreprocessConfig(normalization="lab")


def test_crop_fraction_above_one_zooms_out_onto_the_slide_colour():
    from bloodcell.core.preprocess import PreprocessConfig, prepare_with_info

    image = np.full((40, 60, 3), (230, 220, 200), np.uint8)  # slide
    image[10:30, 20:40] = (90, 40, 140)  # a dark cell filling the centre
    out, framing, box = prepare_with_info(image, PreprocessConfig(image_size=40, crop_fraction=2.0))
    assert framing == "centre" and box == (-10, -20, 70, 60)
    assert (out[:5] == (230, 220, 200)).all() and (out[:, :5] == (230, 220, 200)).all()
    dark = (out.mean(2) < 120).sum()
    assert 80 <= dark <= 120  # the 20x20 cell at half scale: 10x10 pixels
    with pytest.raises(ConfigError, match="between 0.1 and 4"):
        PreprocessConfig(crop_fraction=4.5)
