"""Cell framing: the locator finds a stained cell on generated smears, and the framing setting
travels with the preprocessing config without changing centre-framed models."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from bloodcell.core.errors import ConfigError
from bloodcell.core.locate import centre_box, crop_box, locate_cell, typical_share
from bloodcell.core.preprocess import PreprocessConfig, prepare, prepare_with_info
from bloodcell.packaging.onnx import metadata_for
from bloodcell.prediction import outputs
from bloodcell.prediction.onnx_backend import OnnxModel
from bloodcell.prediction.results import Prediction

BACKGROUND = (236, 226, 228)
RED_CELL = (222, 160, 166)
NUCLEUS = (96, 52, 146)
SHARE = 0.45


def smear(side: int = 256, cell: tuple[float, float] | None = (128, 128), radius: float = 40, seed: int = 0,
          width: int | None = None) -> np.ndarray:
    """A pale slide with pink red cells, and a purple stained disc of ``radius`` at ``cell`` (x, y)."""
    rng = np.random.default_rng(seed)
    h, w = side, width or side
    img = np.empty((h, w, 3), np.float32)
    img[:] = BACKGROUND
    yy, xx = np.mgrid[:h, :w]
    for _ in range(h * w // 2500):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(12, 18)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = RED_CELL
    if cell is not None:
        img[(xx - cell[0]) ** 2 + (yy - cell[1]) ** 2 < radius * radius] = NUCLEUS
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def side(box) -> int:
    return box[2] - box[0]


@pytest.mark.parametrize("where, radius", [((128, 128), 40), ((70, 190), 40), ((128, 128), 20), ((200, 60), 20)])
def test_disc_is_found_where_it_is(where, radius):
    found = locate_cell(smear(cell=where, radius=radius), SHARE)
    assert found.found
    assert abs(found.centre[0] - where[0]) <= 4 and abs(found.centre[1] - where[1]) <= 4
    assert abs(found.size - 2 * radius) <= 6
    left, top, right, bottom = found.box
    assert abs((left + right) / 2 - where[0]) <= 4 and abs((top + bottom) / 2 - where[1]) <= 4


def test_box_scales_with_the_disc_and_the_share():
    big = locate_cell(smear(radius=40), SHARE)
    small = locate_cell(smear(radius=20), SHARE)
    assert side(big.box) == pytest.approx(2 * side(small.box), rel=0.15)
    assert side(big.box) == pytest.approx(80 / SHARE, rel=0.1)
    assert side(locate_cell(smear(radius=40), SHARE / 2).box) == pytest.approx(2 * side(big.box), rel=0.05)


def test_cell_in_a_wide_field_is_found_off_centre():
    found = locate_cell(smear(side=300, width=900, cell=(700, 120), radius=30), SHARE)
    assert found.found and abs(found.centre[0] - 700) <= 8 and abs(found.centre[1] - 120) <= 8


@pytest.mark.parametrize("image", [np.full((200, 240, 3), 230, np.uint8),
                                   np.asarray(Image.fromarray(smear()).convert("L").convert("RGB")),
                                   smear(cell=None)], ids=["flat", "grey", "red cells only"])
def test_no_stained_cell_falls_back_to_the_centre(image):
    found = locate_cell(image, SHARE, fallback_fraction=0.7)
    h, w = image.shape[:2]
    assert not found.found
    assert found.box == centre_box(w, h, 0.7) and found.size == 0.0


def test_cell_framing_falls_back_to_the_centre_crop_pixels():
    flat = np.full((200, 240, 3), 230, np.uint8)
    flat[90:110, 100:140] = 200
    cell = PreprocessConfig(image_size=64, crop_fraction=0.7, framing="cell", cell_share=SHARE)
    centre = PreprocessConfig(image_size=64, crop_fraction=0.7)
    array, framing, box = prepare_with_info(flat, cell)
    assert framing == "centre" and box == centre_box(240, 200, 0.7)
    assert np.array_equal(array, prepare(flat, centre))


def test_cell_framing_centres_an_off_centre_cell():
    cfg = PreprocessConfig(image_size=64, crop_fraction=0.7, framing="cell", cell_share=SHARE)
    array, framing, box = prepare_with_info(smear(cell=(60, 190), radius=30), cfg)
    assert framing == "cell"
    assert array.shape == (64, 64, 3)
    assert np.abs(array[32, 32].astype(int) - NUCLEUS).max() < 30
    assert box[0] < 0 or box[3] > 256  # reaches past the image: filled with background, not mirrored


def test_crop_box_fills_outside_with_the_background():
    image = smear(cell=(20, 20), radius=15)
    out = crop_box(image, (-50, -50, 50, 50))
    assert out.shape == (100, 100, 3)
    assert np.abs(out[5, 5].astype(int) - BACKGROUND).max() < 15
    assert np.array_equal(out[50:, 50:], image[:50, :50])


def test_centre_config_round_trips_and_keeps_its_dict_and_cache_key():
    cfg = PreprocessConfig(image_size=112, crop_fraction=0.7)
    d = cfg.to_dict()
    assert set(d) == {"image_size", "crop_fraction", "mean", "std", "class_names"}
    assert PreprocessConfig.from_dict(d) == cfg and cfg.framing == "centre"
    old_key = json.dumps({"image_size": 112, "crop_fraction": 0.7})
    assert cfg.pixel_key() == hashlib.sha256(old_key.encode()).hexdigest()[:16]


def test_centre_config_gives_the_same_pixels_as_before():
    image = smear(side=300, width=340, cell=(90, 200))
    cfg = PreprocessConfig(image_size=112, crop_fraction=0.7)
    before = Image.fromarray(image).crop((65, 45, 275, 255)).resize((112, 112), Image.Resampling.BILINEAR, reducing_gap=2.0)
    array, framing, box = prepare_with_info(image, cfg)
    assert framing == "centre" and box == (65, 45, 275, 255)
    assert np.array_equal(array, np.asarray(before)) and np.array_equal(prepare(image, cfg), array)


def test_cell_config_round_trips_through_dict_and_onnx_metadata(tmp_path):
    cfg = PreprocessConfig(image_size=64, crop_fraction=0.7, framing="cell", cell_share=0.44)
    d = cfg.to_dict()
    assert d["framing"] == "cell" and d["cell_share"] == 0.44
    assert PreprocessConfig.from_dict(json.loads(json.dumps(d))) == cfg
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 8])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    for key, value in metadata_for({"preprocess": d}, tmp_path, "none").items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(tmp_path / "m.onnx"))
    assert OnnxModel(tmp_path / "m.onnx", threads=1).preprocess == cfg


def test_cache_key_differs_by_framing():
    centre = PreprocessConfig(image_size=64, crop_fraction=0.7)
    cell = PreprocessConfig(image_size=64, crop_fraction=0.7, framing="cell", cell_share=0.44)
    other = PreprocessConfig(image_size=64, crop_fraction=0.7, framing="cell", cell_share=0.5)
    assert len({centre.pixel_key(), cell.pixel_key(), other.pixel_key()}) == 3


@pytest.mark.parametrize("kwargs", [{"framing": "cell"}, {"framing": "cell", "cell_share": 2.0},
                                    {"framing": "nucleus", "cell_share": 0.4}, {"cell_share": 0.4}])
def test_bad_framing_settings_are_refused(kwargs):
    with pytest.raises(ConfigError):
        PreprocessConfig(**kwargs)


def test_typical_share_measures_the_disc():
    images = [smear(radius=40, seed=s) for s in range(3)]
    assert typical_share(images, crop_fraction=0.7) == pytest.approx(80 / (256 * 0.7), rel=0.1)
    assert typical_share([np.full((64, 64, 3), 200, np.uint8)], 0.7) == 0.5
    # what a model records as its training cell share: nothing, rather than a default that looks measured
    assert typical_share([np.full((64, 64, 3), 200, np.uint8)], 0.7, default=None) is None


def _prediction(framing):
    return Prediction("a.png", "lymphocyte", 0.9, {"lymphocyte": 0.9, "monocyte": 0.1}, False, None, None,
                      framing=framing)


def test_predictions_say_how_cell_models_framed_each_image(tmp_path):
    names = ("lymphocyte", "monocyte")
    assert "framing" not in _prediction(None).to_dict()
    assert "framing" not in outputs.predictions_csv([_prediction(None)], names).splitlines()[0]
    assert _prediction("cell").to_dict()["framing"] == "cell"
    rows = outputs.predictions_csv([_prediction("cell"), _prediction("centre")], names).splitlines()
    column = rows[0].split(",").index("framing")
    assert [r.split(",")[column] for r in rows[1:]] == ["cell", "centre"]
    assert "no-cell-found" in outputs.table([_prediction("centre")], names)
    partial = outputs.PartialResults(tmp_path / "out.csv", names)
    partial.add([_prediction("cell")])
    partial.close(keep=True)
    assert "framing" in (tmp_path / "out.csv.partial").read_text().splitlines()[0]


def test_the_pixel_cache_stores_cell_framed_pixels(tmp_path):
    from bloodcell.data.pixels import PixelCache

    cfg = PreprocessConfig(image_size=64, crop_fraction=0.7, framing="cell", cell_share=SHARE)
    image = smear(cell=(60, 190), radius=30)
    cache = PixelCache(cfg, root=tmp_path)
    fresh = cache.build([("k", image)], workers=1, progress=False)
    assert np.array_equal(fresh["k"], prepare(image, cfg))
    stored = json.loads((cache.folder / "preprocess.json").read_text())
    assert stored["framing"] == "cell" and stored["cell_share"] == SHARE


def test_a_cell_framed_model_reports_each_images_framing(tmp_path):
    import torch

    from bloodcell.networks import create_model, save_model
    from bloodcell.prediction.classifier import Classifier

    torch.manual_seed(0)
    pre = PreprocessConfig(image_size=32, crop_fraction=0.7, framing="cell", cell_share=SHARE,
                           class_names=("lymphocyte", "monocyte"))
    meta = {"architecture": "basic_cnn", "model_kwargs": {}, "preprocess": pre.to_dict()}
    folder = save_model(tmp_path / "m", create_model("basic_cnn", num_classes=2).eval(), meta)
    flat = np.full((256, 256, 3), 200, np.uint8)
    preds = Classifier(folder, backend="torch").predict_arrays([smear(cell=(60, 190)), flat], ["cell.png", "flat.png"])
    assert [p.framing for p in preds] == ["cell", "centre"]
    centre_folder = save_model(tmp_path / "c", create_model("basic_cnn", num_classes=2).eval(),
                               {**meta, "preprocess": PreprocessConfig(image_size=32, class_names=pre.class_names).to_dict()})
    assert [p.framing for p in Classifier(centre_folder, backend="torch").predict_arrays([flat])] == [None]
