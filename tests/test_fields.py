"""Whole smear fields on generated fields with known boxes: finding, scale, borders, tiles, scoring,
outputs and overlays (no model: a stand-in classifier)."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _fields_helpers import FakeClassifier, make_field
from bloodcell.core.errors import ConfigError, DataError
from bloodcell.evaluation.fields_report import add_fields_section
from bloodcell.fields.analyse import PBC_SIDE_RBC, analyse_image, cell_crop, overall_counts
from bloodcell.fields.api import predict
from bloodcell.fields.detect import detect, quick_white_count
from bloodcell.fields.measure import average_precision, iou, match, read_boxes, score_fields
from bloodcell.fields.output import render
from bloodcell.fields.overlay import COLOURS, NOT_A_CELL, draw, overlay_name, write_overlay
from bloodcell.fields.tiles import ALL_SHARED, Edges, offset, owns, shared_edges


def best_iou(box, truth):
    return max(iou(box, t) for t in truth)


def test_finds_each_white_cell_and_platelet_with_its_box():
    image, truth = make_field()
    field = detect(image)
    assert len(field.white) == 2
    assert sum(c.kind == "platelet" for c in field.cells) == 1
    assert all(best_iou(c.box, truth) >= 0.6 for c in field.white)
    assert all(0 < c.score <= 1 and not c.at_border for c in field.white)
    assert field.rbc == pytest.approx(26, rel=0.15)


def test_sizes_follow_the_red_cells_at_another_magnification():
    small, _ = make_field(seed=3)
    large, truth = make_field(seed=3, size=(640, 480), rbc=52, whites=((160, 160), (440, 300)), platelets=((320, 80),))
    assert detect(large).rbc == pytest.approx(2 * detect(small).rbc, rel=0.15)
    field = detect(large)
    assert len(field.white) == 2 and sum(c.kind == "platelet" for c in field.cells) == 1
    assert all(best_iou(c.box, truth) >= 0.6 for c in field.white)


def test_the_lobes_of_one_nucleus_make_one_cell():
    image, truth = make_field(whites=(), lobed=((150, 120),))
    field = detect(image)
    assert len(field.white) == 1
    assert best_iou(field.white[0].box, truth) >= 0.5


def test_two_touching_round_nuclei_stay_two_cells():
    image, truth = make_field(whites=((140, 120), (174, 120)), platelets=())
    field = detect(image)
    assert len(field.white) == 2
    assert all(best_iou(c.box, truth) >= 0.5 for c in field.white)


def test_no_white_cell_in_red_cells_or_blank_images():
    image, _ = make_field(whites=(), platelets=(), red=60)
    assert detect(image).cells == []
    for flat in (np.full((200, 300, 3), 230, np.uint8), np.zeros((64, 64, 3), np.uint8)):
        assert detect(flat).white == []


def test_a_cell_cut_by_the_border_is_marked():
    image, truth = make_field(whites=((10, 120), (200, 120)), platelets=())
    cells = sorted(detect(image).white, key=lambda c: c.box[0])
    assert [c.at_border for c in cells] == [True, False]
    assert cells[0].box[0] == 0 and best_iou(cells[0].box, truth) >= 0.5


def test_tile_ownership_counts_every_position_exactly_once():
    width, overlap = 200, 60
    left, right = Edges(False, False, True, False), Edges(True, False, False, False)
    for x in np.arange(width - overlap, width, 0.5):  # positions in the shared strip, in the left tile's pixels
        in_left = owns((x, 50), width, 100, overlap, left)
        in_right = owns((x - (width - overlap), 50), width, 100, overlap, right)
        assert in_left != in_right
    assert owns((1, 1), 100, 100, 0) and not owns((1, 1), 100, 100, 10)


def test_tile_offsets_from_names_decide_the_shared_edges():
    assert offset("slide_x1024_y512.png") == (1024, 512) and offset("field-3.png") is None
    edges = shared_edges(["s_x0_y0.png", "s_x400_y0.png", "s_x0_y300.png", "s_x400_y300.png"])
    assert edges["s_x0_y0.png"] == Edges(False, False, True, True)
    assert edges["s_x400_y300.png"] == Edges(True, True, False, False)
    assert shared_edges(["a.png", "s_x0_y0.png"])["s_x0_y0.png"] == ALL_SHARED


def test_tiles_of_one_field_count_each_cell_once():
    whites = ((60, 60), (200, 70), (230, 170), (360, 150), (190, 190))
    image, _ = make_field(seed=5, size=(420, 240), whites=whites, platelets=())
    whole = analyse_image(FakeClassifier(), image, "whole")
    assert overall_counts([whole])["white"] == 5
    overlap = 100  # wider than a white cell: each cell lies whole in the tile that counts it
    cut = 260
    tiles = {"s_x0_y0.png": image[:, :cut], f"s_x{cut - overlap}_y0.png": image[:, cut - overlap:]}
    edges = shared_edges(list(tiles))
    results = [analyse_image(FakeClassifier(), im, name, overlap, edges[name]) for name, im in tiles.items()]
    assert overall_counts(results)["white"] == 5
    assert sum(len(r.elsewhere) for r in results) >= 1
    without = [analyse_image(FakeClassifier(), im, name) for name, im in tiles.items()]
    assert overall_counts(without)["white"] > 5


def test_crops_are_framed_like_pbc_images():
    image, _ = make_field()
    field = detect(image)
    crop = cell_crop(image, field.white[0], field.rbc)
    assert crop.shape[0] == crop.shape[1] == pytest.approx(PBC_SIDE_RBC * field.rbc, abs=2)
    centre = crop[crop.shape[0] // 2 - 2: crop.shape[0] // 2 + 3, crop.shape[1] // 2 - 2: crop.shape[1] // 2 + 3]
    assert centre.mean() < 150  # the nucleus is at the centre


def test_field_cells_are_not_judged_by_the_single_cell_familiarity_check():
    from bloodcell import Classifier

    clf = Classifier()  # the default model carries the check, calibrated on single-cell images
    assert clf.familiar_threshold is not None
    image, _ = make_field()
    result = analyse_image(clf, image, "f.png")
    classified = [c.prediction for c in result.cells if c.prediction is not None]
    assert classified and all(p.unfamiliar is None for p in classified)
    assert all(isinstance(p.unfamiliar, bool) for p in clf.predict_arrays([image]))


def test_groups_and_counts_follow_the_model():
    image, _ = make_field()
    result = analyse_image(FakeClassifier(erythroblast_below=255), image, "f.png")
    counts = result.counts()
    assert counts["nucleated_red"] == 2 and counts["white"] == 0 and counts["platelet"] == 1
    assert overall_counts([result])["nucleated_red_per_100_white"] is None


def test_csv_and_json_carry_boxes_and_border_flags():
    image, _ = make_field(whites=((10, 120), (200, 120)))
    clf = FakeClassifier()
    result = analyse_image(clf, image, "f.png")
    rows = list(csv.DictReader(io.StringIO(render("csv", clf.describe(), [result], [], clf.class_names))))
    assert [r["source"] for r in rows] == ["f.png"] * len(result.cells)
    assert {"x0", "y0", "x1", "y1", "at_border", "label", "p_neutrophil"} <= set(rows[0])
    assert sorted(r["at_border"] for r in rows if r["group"] == "white") == ["0", "1"]
    doc = json.loads(render("json", clf.describe(), [result], [], clf.class_names))
    cell = doc["fields"][0]["cells"][0]
    assert len(cell["box"]) == 4 and isinstance(cell["at_border"], bool)
    assert doc["counts"]["white"] == 2 and doc["differential"]["counted"] == 2
    table = render("table", clf.describe(), [result], [], clf.class_names)
    assert "f.png: 2 white" in table and "at-border" in table


def test_overlay_has_a_box_per_cell_and_a_legend(tmp_path):
    image, _ = make_field()
    result = analyse_image(FakeClassifier(), image, "dir/f.png")
    picture = draw(image, result)
    scale = 3  # 240 px enlarged to at least 512
    assert picture.width == scale * image.shape[1] and picture.height > scale * image.shape[0]  # legend below
    pixels = np.asarray(picture)
    x0, y0, x1, y1 = result.cells[1].box
    assert tuple(pixels[scale * (y0 + y1) // 2, scale * x0 + 1]) == (0, 160, 0)  # neutrophil green, box's left side
    name = overlay_name("dir/f.png", set())
    write_overlay(tmp_path / name, image, result)
    assert Image.open(tmp_path / name).size == picture.size
    assert overlay_name("other/f.png", {"f.png"}) == "f_2.png"


def test_quick_count_tells_fields_from_single_cells():
    field, _ = make_field(whites=((60, 60), (250, 60), (60, 180), (250, 180)), platelets=())
    single, _ = make_field(size=(256, 256), whites=((128, 128),), platelets=())
    assert quick_white_count(field) >= 3
    assert quick_white_count(single) < 3


def test_scores_against_true_boxes():
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert match([((0, 0, 10, 10), 0.9), ((0, 0, 10, 10), 0.8)], [(1, 1, 10, 10)]) == [True, False]
    assert average_precision([0.9, 0.8, 0.7], [True, False, True], 2) == pytest.approx(0.5 + 0.5 * 2 / 3)
    figures = score_fields({"a": [((0, 0, 10, 10), 0.9)], "b": []}, {"a": [(0, 0, 10, 10)], "b": [(5, 5, 9, 9)]})
    assert figures["recall"] == 0.5 and figures["precision"] == 1.0 and figures["count_exact_share"] == 0.5


def test_boxes_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "boxes.csv"
    bad.write_text("image,label,x0\na.png,wbc,1\n")
    with pytest.raises(DataError, match="missing column"):
        read_boxes(bad)
    bad.write_text("image,label,x0,y0,x1,y1\na.png,wbc,1,two,3,4\n")
    with pytest.raises(DataError, match="line 2"):
        read_boxes(bad)


def test_field_options_need_fields():
    with pytest.raises(ConfigError, match="--fields"):
        predict(["x.png"], overlay="out")


def test_report_section_scores_a_folder_of_boxed_fields(tmp_path):
    (tmp_path / "images").mkdir()
    rows = ["image,label,x0,y0,x1,y1"]
    for k, whites in enumerate((((80, 80), (220, 150)), ((100, 120),))):
        image, truth = make_field(seed=k, whites=whites)
        Image.fromarray(image).save(tmp_path / "images" / f"f{k}.png")
        rows += [f"f{k}.png,wbc,{x0:.0f},{y0:.0f},{x1:.0f},{y1:.0f}" for x0, y0, x1, y1 in truth]
    rows.append("gone.png,wbc,1,1,5,5")
    (tmp_path / "boxes.csv").write_text("\n".join(rows) + "\n")
    page = tmp_path / "report" / "report.html"
    page.parent.mkdir()
    page.write_text("<html><main><section>model</section></main></html>")
    figures = add_fields_section(page, FakeClassifier(), tmp_path / "boxes.csv")
    assert figures["detection"]["true"] == 3 and figures["detection"]["recall"] == 1.0
    assert figures["missing_images"] == ["gone.png"] and figures["counts"]["white"] == 3
    text = page.read_text()
    assert text.index("Whole smear fields") < text.index("</main>") and text.count("data:image/png;base64") == 2
    assert json.loads((page.parent / "fields.json").read_text())["detection"]["precision"] == 1.0


def test_a_stopped_run_keeps_the_cells_of_finished_fields(tmp_path):
    from bloodcell.fields.api import predict_fields

    class Stops(FakeClassifier):
        def predict_arrays(self, images, sources=None, familiarity=True):
            if self.crops:
                raise KeyboardInterrupt
            return super().predict_arrays(images, sources)

    for k in range(2):
        Image.fromarray(make_field(seed=k)[0]).save(tmp_path / f"f{k}.png")
    out = tmp_path / "cells.csv"
    with pytest.raises(KeyboardInterrupt):
        predict_fields([tmp_path / "f0.png", tmp_path / "f1.png"], format="csv", output_path=out, classifier=Stops())
    rows = list(csv.DictReader((tmp_path / "cells.csv.partial").open()))
    assert {r["source"] for r in rows} == {str(tmp_path / "f0.png")} and len(rows) == 3 and not out.exists()
    done = predict_fields([tmp_path / "f0.png", tmp_path / "f1.png"], format="csv", output_path=out, classifier=FakeClassifier())
    assert len(done.fields) == 2 and out.exists() and not (tmp_path / "cells.csv.partial").exists()


def test_the_page_draws_field_boxes_in_the_overlay_colours():
    """The review page's field boxes (fields.js) and the overlay images share one class-colour table."""
    script = (Path(__file__).resolve().parents[1] / "src" / "bloodcell" / "server" / "static" / "fields.js").read_text()
    table = script[script.index("const COLOURS = {"):script.index("};", script.index("const COLOURS = {"))]
    page = {name: tuple(map(int, rgb.split(","))) for name, rgb in re.findall(r'(\w+): "rgb\(([\d,]+)\)"', table)}
    assert page == COLOURS
    assert re.search(r'const EXCLUDED = "rgb\(([\d,]+)\)"', script).group(1) == ",".join(map(str, NOT_A_CELL))


class UnsureClassifier(FakeClassifier):
    """Every crop uncertain, against 1% of the validation images."""

    def describe(self) -> dict:
        return {**super().describe(), "validation_uncertain": 0.01}

    def predict_arrays(self, images, sources=None, familiarity=True):
        return [replace(p, uncertain=True) for p in super().predict_arrays(images, sources)]


def test_fields_mostly_uncertain_carry_the_warning():
    image, _ = make_field(whites=((60, 120), (180, 120)))
    for clf, fields, expected in ((UnsureClassifier(), 12, "100% of these 24 cells are uncertain"),
                                  (UnsureClassifier(), 9, None), (FakeClassifier(), 12, None)):
        results = [analyse_image(clf, image, f"f{i}.png") for i in range(fields)]
        warning = json.loads(render("json", clf.describe(), results, [], clf.class_names))["warning"]
        assert (warning or "").startswith(expected or "") and (warning is None) == (expected is None), (fields, warning)


class PlateletClassifier(FakeClassifier):
    """Calls every ``every``-th white-sized crop a platelet (a model misreading another lab's fields)."""

    def __init__(self, every: int = 1):
        super().__init__()
        self.every, self.seen = every, 0

    def predict_arrays(self, images, sources=None, familiarity=True):
        out = []
        for p in super().predict_arrays(images, sources):
            self.seen += 1
            out.append(replace(p, label="platelet") if self.seen % self.every == 0 else p)
        return out


def test_white_sized_cells_taken_for_platelets_carry_the_warning(tmp_path):
    image, _ = make_field(whites=((60, 120), (180, 120)))
    for clf, fields, expected in ((PlateletClassifier(), 12, "24 of the 24 cells found at a white cell's size were "
                                   "classified as platelets (100%; on PBC's own fields about 17%)"),
                                  (PlateletClassifier(), 9, None),  # 18 cells: too few to say
                                  (PlateletClassifier(every=3), 30, None),  # a third: PBC's platelet clumps do that
                                  (PlateletClassifier(every=2), 30, "30 of the 60 cells")):
        results = [analyse_image(clf, image, f"f{i}.png") for i in range(fields)]
        warning = json.loads(render("json", clf.describe(), results, [], clf.class_names))["warning"]
        assert (warning or "").startswith(expected or "") and (warning is None) == (expected is None), (fields, warning)
    # the Python verb and the command say the same
    paths = []
    for i in range(12):
        Image.fromarray(image).save(tmp_path / f"f{i}.png")
        paths.append(tmp_path / f"f{i}.png")
    run = predict(paths, fields=True, classifier=PlateletClassifier(), format="json")
    assert run.warning.startswith("24 of the 24 cells") and "`bloodcell adapt`" in run.warning
