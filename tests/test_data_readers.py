"""The dataset readers: class folders, .npz (plain and MedMNIST) and CSV manifests."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from _data_helpers import cell, save
from bloodcell import CLASSES, DataError
from bloodcell.data import open_dataset
from bloodcell.data.readers.manifest import write_manifest

# ---------------------------------------------------------------- class folders

def test_folder_aliases_subset_and_order(tmp_path):
    root = tmp_path / "d"
    for folder, label in [("NEUTROPHIL", 6), ("immature_granulocytes", 3), ("Thrombocyte", 7), ("IG", 3)]:
        for i in range(2):
            save(Image.fromarray(cell(i + 10 * label, label)), root / folder / f"{folder}_{i}.png")
    ds = open_dataset(root)
    assert ds.kind == "folder"
    assert ds.class_names == ("ig", "neutrophil", "platelet")
    assert ds.class_counts() == {"ig": 4, "neutrophil": 2, "platelet": 2}
    assert [s.label for s in ds.samples] == ["ig"] * 4 + ["neutrophil"] * 2 + ["platelet"] * 2
    assert ds.samples[0].source_id == "IG/IG_0.png"
    img = ds.read(0)
    assert img.dtype == np.uint8 and img.shape == (48, 48, 3)
    assert ds.problems == []


def test_folder_reports_hidden_stray_and_non_image_files(make_folder_dataset):
    root = make_folder_dataset(per_class=2, classes=("basophil", "monocyte"))
    (root / "README.txt").write_text("about")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "basophil" / ".DS_169665.jpg").write_bytes(b"\0\0\0\1Bud1")
    (root / "basophil" / "notes.txt").write_text("x")
    (root / "monocyte" / ".hidden_dir").mkdir()
    (root / "monocyte" / ".hidden_dir" / "m.png").write_bytes(b"")
    ds = open_dataset(root)
    assert len(ds) == 4
    kinds = {p.item: p.kind for p in ds.problems}
    assert kinds == {"README.txt": "stray", ".DS_Store": "hidden", "basophil/.DS_169665.jpg": "hidden",
                     "basophil/notes.txt": "not-image", "monocyte/.hidden_dir": "hidden"}
    msg = {p.item: p.message for p in ds.problems}
    assert "file at the dataset root ignored" in msg["README.txt"]
    assert "not an image file by its extension" in msg["basophil/notes.txt"]
    assert msg["monocyte/.hidden_dir"] == "monocyte/.hidden_dir: hidden or system folder ignored (1 file inside)."
    assert [p.files for p in ds.problems if p.item == "monocyte/.hidden_dir"] == [1]


def test_folder_nested_images_belong_to_their_class(tmp_path):
    save(Image.fromarray(cell(1)), tmp_path / "d" / "Eosinophil" / "patient1" / "a.jpg")
    ds = open_dataset(tmp_path / "d")
    assert [(s.source_id, s.label) for s in ds.samples] == [("Eosinophil/patient1/a.jpg", "eosinophil")]


def test_missing_path():
    with pytest.raises(DataError, match=r"nowhere: no such file or folder\. Pass a class-folder dataset"):
        open_dataset("nowhere")


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match=r"the folder is empty\. Expected one sub-folder per class"):
        open_dataset(tmp_path)


def test_class_folder_without_images_is_reported(make_folder_dataset):
    root = make_folder_dataset(per_class=2, classes=("lymphocyte",))
    (root / "Monocytes").mkdir()
    ds = open_dataset(root)
    assert ds.class_names == ("lymphocyte",)
    (p,) = ds.problems
    assert p.kind == "empty-class"
    assert p.message == ("Monocytes: class folder holds no images; class 'monocyte' is absent from the dataset. "
                         "Add images or remove the folder.")


def test_only_empty_class_folders_is_an_error(tmp_path):
    (tmp_path / "basophil").mkdir()
    (tmp_path / "basophil" / "list.txt").write_text("x")
    with pytest.raises(DataError, match=r"the class folders hold no images"):
        open_dataset(tmp_path)


def test_unknown_class_names_listed_with_known_ones(make_folder_dataset):
    root = make_folder_dataset(per_class=1, classes=("basophil",))
    (root / "neutrofils").mkdir()
    (root / "smudge").mkdir()
    with pytest.raises(DataError, match=r"unknown class folder\(s\) 'neutrofils' \(did you mean 'neutrophil'\?\), "
                                        r"'smudge'\. Known classes: basophil, eosinophil, erythroblast, ig, "
                                        r"lymphocyte, monocyte, neutrophil, platelet.*--skip-unknown"):
        open_dataset(root, skip_unknown_hint=True)
    ds = open_dataset(root, skip_unknown=True)
    assert len(ds) == 1 and {p.item for p in ds.problems if p.kind == "unknown-class"} == {"neutrofils", "smudge"}


def test_no_class_folders_at_all(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(DataError, match=r"no class folders found \(found: a\.png\)"):
        open_dataset(tmp_path)


def test_unsupported_file_type(tmp_path):
    (tmp_path / "data.h5").write_bytes(b"x")
    with pytest.raises(DataError, match=r"data\.h5: unsupported dataset file type '\.h5'"):
        open_dataset(tmp_path / "data.h5")


# ---------------------------------------------------------------- .npz

def _images(n=5, size=12, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def test_npz_int_and_string_labels(tmp_path):
    np.savez(tmp_path / "a.npz", images=_images(), labels=np.array([0, 3, 7, 3, 0]))
    ds = open_dataset(tmp_path / "a.npz")
    assert ds.kind == "npz" and [s.label for s in ds.samples] == ["basophil", "ig", "platelet", "ig", "basophil"]
    assert ds.samples[1].source_id == "a.npz:1" and ds.samples[1].path is None
    np.testing.assert_array_equal(ds.read(2), _images()[2])
    np.savez(tmp_path / "b.npz", images=_images(), labels=np.array(["IG", "Neutrophil", "thrombocyte", "ig", "NRBC"]))
    assert open_dataset(tmp_path / "b.npz").class_names == ("erythroblast", "ig", "neutrophil", "platelet")


def test_npz_class_names_key_maps_integer_labels(tmp_path):
    np.savez(tmp_path / "a.npz", images=_images(3), labels=np.array([0, 1, 1]),
             class_names=np.array(["Platelet", "lymphocyte"]))
    assert [s.label for s in open_dataset(tmp_path / "a.npz").samples] == ["platelet", "lymphocyte", "lymphocyte"]


def test_npz_gray_float_and_rgba_become_rgb_uint8(tmp_path):
    gray = np.linspace(0, 1, 4 * 6 * 6).reshape(4, 6, 6).astype(np.float32)
    np.savez(tmp_path / "g.npz", images=gray, labels=np.zeros((4, 1), np.uint8))
    img = open_dataset(tmp_path / "g.npz").read(3)
    assert img.shape == (6, 6, 3) and img.dtype == np.uint8 and img[-1, -1, 0] == 255
    rgba = np.zeros((1, 4, 4, 4), np.uint8)
    rgba[..., 3] = 0
    np.savez(tmp_path / "r.npz", images=rgba, labels=[1])
    assert (open_dataset(tmp_path / "r.npz").read(0) == 255).all()


def test_medmnist_layout_keeps_splits(tmp_path):
    np.savez(tmp_path / "bloodmnist.npz", train_images=_images(4), train_labels=np.array([[0], [1], [2], [3]]),
             val_images=_images(2, seed=1), val_labels=np.array([[4], [5]]),
             test_images=_images(3, seed=2), test_labels=np.array([[6], [7], [7]]))
    ds = open_dataset(tmp_path / "bloodmnist.npz")
    assert ds.kind == "medmnist" and len(ds) == 9
    assert [s.split for s in ds.samples] == ["train"] * 4 + ["val"] * 2 + ["test"] * 3
    assert ds.samples[5].source_id == "bloodmnist.npz:val/1" and ds.samples[5].label == "monocyte"
    np.testing.assert_array_equal(ds.read(6), _images(3, seed=2)[0])
    assert ds.split_indices("val") == [4, 5]


@pytest.mark.parametrize("arrays,match", [
    (dict(pictures=_images(), labels=[0] * 5),
     r"a\.npz: missing key\(s\) \['images'\]; found \['labels', 'pictures'\]"),
    (dict(x=_images()), r"a\.npz: missing keys; found \['x'\], expected 'images' and 'labels' \(or MedMNIST-style"),
    (dict(train_images=_images(), val_images=_images(), val_labels=[0] * 5),
     r"missing key\(s\) \['train_labels'\]"),
    (dict(images=_images(), labels=[0, 1, 2]),
     r"a\.npz: 'images' has 5 images but 'labels' has 3 labels; they must have equal length"),
    (dict(images=np.zeros((5, 12), np.uint8), labels=[0] * 5),
     r"a\.npz: 'images' has 2 dimensions \(shape \(5, 12\)\); expected \(N, H, W\) or \(N, H, W, C\)"),
    (dict(images=np.zeros((1, 0, 0), np.uint8)),
     r"a\.npz: 'images' has shape \(1, 0, 0\): its images are 0x0 pixels, so there is nothing to read"),
    (dict(images=np.zeros((5, 3, 12, 12), np.uint8), labels=[0] * 5),
     r"last axis must be 1, 3 or 4 channels\. It looks channels-first; use images\.transpose\(0, 2, 3, 1\)"),
    (dict(images=_images().astype(np.int64), labels=[0] * 5),
     r"a\.npz: 'images' has dtype int64; expected uint8 \(0-255\) or float"),
    (dict(images=_images().astype(np.float32) * 2, labels=[0] * 5),
     r"'images' is floating point with values from 0 to 5\d\d; expected \[0, 1\] or \[0, 255\]"),
    (dict(images=_images(), labels=[0, 1, 8, 2, -1]),
     r"a\.npz: 'labels' out of range: label 8 at index 2; integer labels must be 0\.\.7 \(0=basophil"),
    (dict(images=_images(), labels=np.eye(8)[:5]),
     r"'labels' has shape \(5, 8\); expected one label per image, shape \(5,\)\. For one-hot labels save labels\.argmax\(1\)"),
    (dict(images=_images(), labels=np.zeros(5, np.float32)),
     r"'labels' has dtype float32; expected integer class indices or class-name strings"),
    (dict(images=_images(), labels=np.array(["ig", "ig", "blast", "ig", "ig"])),
     r"Unknown class name 'blast' in .*a\.npz \('labels'\)"),
])
def test_npz_bad_input(tmp_path, arrays, match):
    np.savez(tmp_path / "a.npz", **arrays)
    with pytest.raises(DataError, match=match):
        open_dataset(tmp_path / "a.npz")


def test_npz_object_arrays_and_non_zip(tmp_path):
    np.savez(tmp_path / "a.npz", images=_images(2), labels=np.array(["ig", None], dtype=object))
    with pytest.raises(DataError, match=r"'labels' holds Python objects, which are not loaded \(unsafe\)"):
        open_dataset(tmp_path / "a.npz")
    (tmp_path / "b.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"b\.npz: not a readable \.npz file"):
        open_dataset(tmp_path / "b.npz")


# ---------------------------------------------------------------- CSV manifests

def test_manifest_relative_paths_split_and_extra_columns(tmp_path):
    a = save(Image.fromarray(cell(1)), tmp_path / "imgs" / "a.png")
    b = save(Image.fromarray(cell(2)), tmp_path / "imgs" / "b.png")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "m.csv").write_text(
        f"Path,Label,Split,sha256\n../imgs/a.png,IG,Train,x\n{b},thrombocyte,validation,y\n\n")
    ds = open_dataset(tmp_path / "lists" / "m.csv")
    assert ds.kind == "manifest"
    assert [(s.source_id, s.label, s.split) for s in ds.samples] == [
        ("../imgs/a.png", "ig", "train"), (str(b), "platelet", "val")]
    assert ds.samples[0].path.resolve() == a.resolve()
    np.testing.assert_array_equal(ds.read(0), cell(1))


def test_manifest_written_by_write_manifest_round_trips(tmp_path):
    img = save(Image.fromarray(cell(3)), tmp_path / "x" / "c.png")
    write_manifest(tmp_path / "m.csv", [{"path": "x/c.png", "label": "monocyte", "split": "test",
                                         "source_id": "monocyte/c.png"}], ["path", "label", "split", "source_id"])
    (s,) = open_dataset(tmp_path / "m.csv").samples
    assert (s.source_id, s.label, s.split, s.path.resolve()) == ("monocyte/c.png", "monocyte", "test", img.resolve())


def test_manifest_label_may_be_empty_and_repeats_are_reported(tmp_path):
    save(Image.fromarray(cell(1)), tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label\na.png,\na.png,ig\n")
    ds = open_dataset(tmp_path / "m.csv")
    assert [s.label for s in ds.samples] == [None]
    assert ds.problems[0].kind == "duplicate-row" and "a.png is listed again (first on line 2)" in ds.problems[0].message


@pytest.mark.parametrize("text,match", [
    ("", r"m\.csv: the manifest is empty"),
    ("file,label\na.png,ig\n", r"m\.csv: no 'path' column \(header: file,label\)"),
    ("path,label\na.png,blast\n", r"Unknown class name 'blast' in .*m\.csv:2"),
    ("path,label,split\na.png,ig,holdout\n", r"m\.csv:2: unknown split 'holdout'; expected one of train, val, test"),
    ("path,label\na.png,ig\nb.png,ig\nc.png,ig\n",
     r"m\.csv: 2 listed file\(s\) do not exist: b\.png \(line 3\); c\.png \(line 4\)\. Relative paths are resolved"),
    ("path,label\n", r"m\.csv: the manifest lists no images"),
])
def test_manifest_bad_input(tmp_path, text, match):
    save(Image.fromarray(cell(1)), tmp_path / "a.png")
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(DataError, match=match):
        open_dataset(tmp_path / "m.csv")


def test_split_indices_needs_a_split_assignment(make_folder_dataset):
    ds = open_dataset(make_folder_dataset(per_class=1, classes=CLASSES[:2]))
    with pytest.raises(DataError, match=r"has no split assignment.*bloodcell split"):
        ds.split_indices("train")
    with pytest.raises(DataError, match=r"Unknown split \['dev'\]"):
        ds.split_indices("dev")
