"""Silent misreads and wrong advice in the data readers (issue 12), each with the fix's message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _data_helpers import cell, save
from bloodcell import CLASSES, DataError
from bloodcell.data import open_dataset
from bloodcell.data.readers.folder import count_files

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _cli(*args, cwd=None, env_extra=None):
    env = {**os.environ, "PYTHONPATH": SRC, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "bloodcell", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


# ---------------------------------------------------------------- .npz without the image axis

@pytest.mark.parametrize("shape", [(64, 64, 3), (40, 30, 4), (32, 32, 1)])
def test_npz_single_image_without_n_axis_is_refused_and_explained(tmp_path, shape):
    np.savez(tmp_path / "one.npz", images=np.zeros(shape, np.uint8))
    h, w, c = shape
    with pytest.raises(DataError, match=rf"one\.npz: 'images' has shape \({h}, {w}, {c}\), which is one {h}x{w} "
                                        rf"image .* no image axis.*images\[None\]"):
        open_dataset(tmp_path / "one.npz")


def test_npz_single_image_with_a_label_does_not_blame_the_labels(tmp_path):
    np.savez(tmp_path / "one.npz", images=cell(1, size=64), labels=np.array([2]))
    with pytest.raises(DataError) as info:
        open_dataset(tmp_path / "one.npz")
    assert "no image axis" in str(info.value) and "labels" not in str(info.value)


def test_npz_grayscale_stack_is_still_read(tmp_path):
    np.savez(tmp_path / "g.npz", images=np.zeros((5, 28, 28), np.uint8), labels=np.arange(5))
    assert len(open_dataset(tmp_path / "g.npz")) == 5


# ---------------------------------------------------------------- symlink loops in class folders

def _looped(tmp_path) -> Path:
    root = tmp_path / "d"
    save(Image.fromarray(cell(1)), root / "basophil" / "a.png")
    (root / "basophil" / "up").symlink_to("..")
    return root


def test_folder_link_loop_counts_each_file_once_and_reports_the_link(tmp_path):
    root = _looped(tmp_path)
    ds = open_dataset(root)
    assert [s.source_id for s in ds.samples] == ["basophil/a.png"]
    (p,) = ds.problems
    assert p.kind == "repeated-link" and p.item == "basophil/up" and p.files == 0
    assert "links to a folder already read" in p.message
    assert count_files(root) == 1


def test_folder_second_link_to_one_file_is_read_once(tmp_path):
    root = tmp_path / "d"
    save(Image.fromarray(cell(1)), root / "ig" / "a.png")
    (root / "ig" / "b.png").symlink_to("a.png")
    (root / "ig" / "self.png").symlink_to("self.png")
    ds = open_dataset(root)
    assert [s.source_id for s in ds.samples] == ["ig/a.png", "ig/self.png"]
    assert [(p.item, p.kind) for p in ds.problems] == [("ig/b.png", "repeated-link")]


def test_audit_of_a_looped_folder_is_accounted_for(tmp_path):
    root = _looped(tmp_path)
    proc = _cli("audit", str(root), "-o", str(tmp_path / "out"), "--no-plots", "--quiet",
                env_extra={"BLOODCELL_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    files = json.loads((tmp_path / "out" / "audit.json").read_text())["files"]
    assert (files["on_disk"], files["images"], files["accounted"]) == (1, 1, True)


# ---------------------------------------------------------------- advice names only flags the verb has

def test_unknown_class_error_advises_skip_unknown_only_when_asked(make_folder_dataset):
    root = make_folder_dataset(per_class=1, classes=("basophil",))
    (root / "smudge").mkdir()
    with pytest.raises(DataError) as info:
        open_dataset(root)
    assert "'smudge'" in str(info.value) and "--skip-unknown" not in str(info.value)
    with pytest.raises(DataError, match="--skip-unknown"):
        open_dataset(root, skip_unknown_hint=True)


def test_cache_verb_does_not_advise_a_flag_it_lacks_and_audit_does(make_folder_dataset, tmp_path):
    root = make_folder_dataset(per_class=1, classes=("basophil",), size=24)
    (root / "smudge").mkdir()
    env = {"BLOODCELL_CACHE": str(tmp_path / "cache")}
    cache = _cli("cache", str(root), "--quiet", env_extra=env)
    assert cache.returncode == 2 and "'smudge'" in cache.stderr and "--skip-unknown" not in cache.stderr
    audit = _cli("audit", str(root), "-o", str(tmp_path / "a"), "--quiet", env_extra=env)
    assert audit.returncode == 2 and "--skip-unknown" in audit.stderr


# ---------------------------------------------------------------- audit accounting, manifest problems

def test_audit_accounts_for_files_inside_unknown_class_folders(make_folder_dataset, tmp_path):
    root = make_folder_dataset(per_class=1, classes=CLASSES[:2], size=24)
    for i in range(3):
        save(Image.fromarray(cell(i)), root / "smudge" / f"s{i}.png")
    proc = _cli("audit", str(root), "-o", str(tmp_path / "out"), "--no-plots", "--quiet", "--skip-unknown",
                env_extra={"BLOODCELL_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    files = json.loads((tmp_path / "out" / "audit.json").read_text())["files"]
    assert (files["on_disk"], files["images"], files["skipped_files"], files["accounted"]) == (5, 2, 3, True)
    assert "Files: 5 on disk, all accounted for" in proc.stdout
    assert "smudge: not a known class name; folder left out (3 files inside)" in proc.stdout


def test_manifest_with_several_bad_rows_reports_all_of_them(tmp_path):
    save(Image.fromarray(cell(1)), tmp_path / "a.png")
    rows = ["a.png,ig,train", ",ig,train", "a.png,blast,train", "a.png,ig,holdout", "gone.png,ig,test"]
    (tmp_path / "m.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"m\.csv: 4 rows cannot be used: line 3: empty path; line 4: unknown class "
                                        r"name 'blast'; line 5: unknown split 'holdout'; line 6: gone\.png does not "
                                        r"exist\. Relative paths are resolved against"):
        open_dataset(tmp_path / "m.csv")


def test_manifest_lists_at_most_ten_bad_rows_and_counts_the_rest(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(f"x{i}.png,blast\n" for i in range(25)) + ",ig\n")
    with pytest.raises(DataError) as info:
        open_dataset(tmp_path / "m.csv")
    msg = str(info.value)
    assert "26 rows cannot be used" in msg and msg.count("does not exist") == 10 and "and 16 more" in msg
