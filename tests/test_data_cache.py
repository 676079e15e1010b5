"""load_arrays and the preprocessing cache."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from _data_helpers import cell, jpeg_bytes, odd_mode_images, save
from bloodcell import DataError, PreprocessConfig
from bloodcell.core.preprocess import load_prepared, normalize
from bloodcell.data import PixelCache, load_arrays, open_dataset
from bloodcell.data import pixels as cache_mod


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOODCELL_CACHE", str(tmp_path / "cache"))


def _shards(tmp_path):
    return sorted((tmp_path / "cache" / "pixels").rglob("shard-*.json"))


def test_arrays_equal_load_prepared_and_labels_index_present_classes(make_folder_dataset, tmp_path):
    root = make_folder_dataset(per_class=3, classes=("eosinophil", "monocyte", "platelet"), size=40)
    cfg = PreprocessConfig(image_size=24, crop_fraction=0.8)
    a = load_arrays(root, cfg, progress=False, workers=1)
    assert a.images.shape == (9, 24, 24, 3) and a.images.dtype == np.uint8
    assert a.class_names == ("eosinophil", "monocyte", "platelet")
    assert a.labels.dtype == np.int64 and a.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert a.ids[4] == "monocyte/monocyte_001.png"
    for i, sid in enumerate(a.ids):
        np.testing.assert_array_equal(a.images[i], load_prepared(root / sid, cfg))
    assert a.preprocess.class_names == a.class_names and a.preprocess.image_size == 24
    np.testing.assert_allclose(a.normalized(slice(0, 2)), normalize(a.images[:2], cfg))
    assert a.skipped == []


def test_parallel_build_equals_serial(make_folder_dataset, tmp_path, monkeypatch):
    root = make_folder_dataset(per_class=10, size=40)
    monkeypatch.setattr(cache_mod, "CHUNK", 4)
    cfg = PreprocessConfig(image_size=16)
    par = load_arrays(root, cfg, progress=False, workers=2)
    monkeypatch.setenv("BLOODCELL_CACHE", str(tmp_path / "cache2"))
    ser = load_arrays(root, cfg, progress=False, workers=1)
    assert par.ids == ser.ids
    np.testing.assert_array_equal(par.images, ser.images)


def test_warm_load_decodes_nothing(make_folder_dataset, tmp_path, monkeypatch):
    root = make_folder_dataset(per_class=2, size=32)
    cfg = PreprocessConfig(image_size=16)
    first = load_arrays(root, cfg, progress=False, workers=1)
    n = len(_shards(tmp_path))

    def refuse(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache_mod, "_prepare_chunk", refuse)
    again = load_arrays(root, cfg, progress=False, workers=1)
    np.testing.assert_array_equal(first.images, again.images)
    assert len(_shards(tmp_path)) == n


def test_changed_file_and_changed_crop_are_decoded_again(make_folder_dataset, tmp_path):
    root = make_folder_dataset(per_class=2, classes=("basophil",), size=32)
    cfg = PreprocessConfig(image_size=16)
    before = load_arrays(root, cfg, progress=False, workers=1)
    target = root / "basophil" / "basophil_001.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(target)
    after = load_arrays(root, cfg, progress=False, workers=1)
    assert (after.images[1] == 0).all() and not (before.images[1] == 0).all()
    np.testing.assert_array_equal(after.images[0], before.images[0])
    cropped = load_arrays(root, PreprocessConfig(image_size=16, crop_fraction=0.5), progress=False, workers=1)
    assert not np.array_equal(cropped.images[0], after.images[0])
    assert len({p.parent for p in _shards(tmp_path)}) == 2


def test_mean_std_do_not_change_the_cache_key(make_folder_dataset, tmp_path):
    root = make_folder_dataset(per_class=1, classes=("ig",), size=32)
    load_arrays(root, PreprocessConfig(image_size=16), progress=False, workers=1)
    a = load_arrays(root, PreprocessConfig(image_size=16, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2)),
                    progress=False, workers=1)
    assert len(_shards(tmp_path)) == 1
    assert a.preprocess.mean == (0.5, 0.5, 0.5)
    np.testing.assert_allclose(a.normalized(0)[0, 0, 0, 0], (a.images[0, 0, 0, 0] / 255 - 0.5) / 0.2, rtol=1e-5)


def test_unreadable_files_are_skipped_and_reported_by_name(make_folder_dataset, tmp_path, caplog):
    root = make_folder_dataset(per_class=2, classes=("lymphocyte",), size=32)
    (root / "lymphocyte" / "fake.jpg").write_bytes(b"this is not a jpeg")
    full = jpeg_bytes(cell(3, size=64))
    (root / "lymphocyte" / "half.jpg").write_bytes(full[: len(full) // 2])
    a = load_arrays(root, PreprocessConfig(image_size=16), progress=False, workers=1)
    assert len(a) == 2
    msgs = {p.item: p.message for p in a.skipped}
    assert set(msgs) == {"lymphocyte/fake.jpg", "lymphocyte/half.jpg"}
    assert msgs["lymphocyte/fake.jpg"] == (f"{root}/lymphocyte/fake.jpg: not a readable image (unknown or corrupt "
                                           "format). Remove the file or replace it with a PNG/JPEG/TIFF/BMP image.")
    assert msgs["lymphocyte/half.jpg"].startswith(f"{root}/lymphocyte/half.jpg: The file is truncated or corrupt")
    assert "2 image(s) could not be decoded and were left out" in caplog.text
    again = load_arrays(root, PreprocessConfig(image_size=16), progress=False, workers=1)
    assert [p.message for p in again.skipped] == [p.message for p in a.skipped]


def test_odd_image_modes_are_converted_not_rejected(tmp_path):
    paths = odd_mode_images(tmp_path / "d" / "neutrophil")
    a = load_arrays(tmp_path / "d", PreprocessConfig(image_size=16), progress=False, workers=1)
    assert len(a) == len(paths) and a.skipped == []
    assert a.images.shape == (5, 16, 16, 3)


def test_decompression_bomb_is_skipped_with_message(tmp_path, monkeypatch):
    monkeypatch.setattr("bloodcell.core.preprocess.MAX_PIXELS", 5000)
    save(Image.fromarray(cell(1, size=48)), tmp_path / "d" / "ig" / "ok.png")
    save(Image.new("RGB", (100, 100)), tmp_path / "d" / "ig" / "huge.png")
    a = load_arrays(tmp_path / "d", PreprocessConfig(image_size=16), progress=False, workers=1)
    assert a.ids == ["ig/ok.png"]
    assert "huge.png: image is 100x100 = 10,000 pixels, over the 5,000-pixel decompression-bomb limit" in a.skipped[0].message


def test_all_unreadable_is_an_error(tmp_path):
    (tmp_path / "d" / "ig").mkdir(parents=True)
    (tmp_path / "d" / "ig" / "a.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"none of the 1 selected images could be decoded; first: .*a\.jpg: not a readable"):
        load_arrays(tmp_path / "d", PreprocessConfig(image_size=16), progress=False, workers=1)


def test_exact_duplicates_are_decoded_once(tmp_path):
    data = jpeg_bytes(cell(5))
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "d" / "ig").mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / "ig" / name).write_bytes(data)
    a = load_arrays(tmp_path / "d", PreprocessConfig(image_size=16), progress=False, workers=1)
    assert len(a) == 2
    import json

    (shard,) = _shards(tmp_path)
    assert len(json.loads(shard.read_text())["keys"]) == 1


def test_manifest_split_selection_and_forced_class_names(tmp_path):
    for i, _ in enumerate([("ig", "train"), ("ig", "test"), ("platelet", "train"), ("basophil", "val")]):
        save(Image.fromarray(cell(i, 2 * i)), tmp_path / f"{i}.png")
    (tmp_path / "m.csv").write_text("path,label,split\n0.png,ig,train\n1.png,ig,test\n2.png,platelet,train\n"
                                    "3.png,basophil,val\n")
    cfg = PreprocessConfig(image_size=16)
    train = load_arrays(tmp_path / "m.csv", cfg, split="train", progress=False, workers=1)
    assert train.ids == ["0.png", "2.png"]
    assert train.class_names == ("basophil", "ig", "platelet") and train.labels.tolist() == [1, 2]
    forced = load_arrays(tmp_path / "m.csv", cfg, split=["train", "test"], class_names=list(__import__("bloodcell").CLASSES),
                         progress=False, workers=1)
    assert forced.labels.tolist() == [3, 3, 7]
    with pytest.raises(DataError, match=r"samples with classes outside class_names \['ig', 'platelet'\]: "
                                        r"1 labelled 'basophil' \(e\.g\. 3\.png\)"):
        load_arrays(tmp_path / "m.csv", cfg, class_names=["ig", "platelet"], progress=False, workers=1)


def test_unlabelled_samples_need_require_labels_false(tmp_path):
    save(Image.fromarray(cell(1)), tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label\na.png,\n")
    with pytest.raises(DataError, match=r"1 sample\(s\) have no label \(e\.g\. a\.png\)"):
        load_arrays(tmp_path / "m.csv", PreprocessConfig(image_size=16), progress=False, workers=1)
    a = load_arrays(tmp_path / "m.csv", PreprocessConfig(image_size=16), progress=False, workers=1, require_labels=False)
    assert a.labels.tolist() == [-1]


def test_npz_source_goes_through_the_cache(tmp_path):
    imgs = np.stack([cell(i, size=20) for i in range(4)])
    np.savez(tmp_path / "a.npz", images=imgs, labels=[0, 1, 0, 1])
    cfg = PreprocessConfig(image_size=8)
    ds = open_dataset(tmp_path / "a.npz")
    a = load_arrays(ds, cfg, progress=False, workers=1)
    from bloodcell.core.preprocess import prepare

    np.testing.assert_array_equal(a.images[2], prepare(imgs[2], cfg))
    assert a.ids == ["a.npz:0", "a.npz:1", "a.npz:2", "a.npz:3"]


class _Interrupted(Exception):
    """Stands in for Ctrl-C or a killed process in the middle of a build."""


def test_interrupted_build_resumes(make_folder_dataset, tmp_path, monkeypatch):
    root = make_folder_dataset(per_class=3, classes=("basophil", "ig"), size=24)
    monkeypatch.setattr(cache_mod, "CHUNK", 2)
    monkeypatch.setattr(cache_mod, "SHARD_SIZE", 2)
    real = cache_mod._prepare_chunk
    calls = []
    interrupt = [True]

    def flaky(task):
        calls.append(len(task[1]))
        if len(calls) == 2 and interrupt[0]:
            raise _Interrupted
        return real(task)

    monkeypatch.setattr(cache_mod, "_prepare_chunk", flaky)
    with pytest.raises(_Interrupted):
        load_arrays(root, PreprocessConfig(image_size=8), progress=False, workers=1)
    where, _ = PixelCache(PreprocessConfig(image_size=8)).index()
    assert len(where) == 2
    calls.clear()
    interrupt[0] = False
    a = load_arrays(root, PreprocessConfig(image_size=8), progress=False, workers=1)
    assert len(a) == 6 and sum(calls) == 4
