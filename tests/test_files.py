"""Atomic writes: whole files or none, with the permissions a plain write gives."""

import os
import stat

import numpy as np
import pytest

from bloodcell.core.files import (
    atomic_save_npy,
    atomic_write_json,
    atomic_write_text,
    atomic_write_with,
    output_folder,
    process_umask,
    staged_folder,
)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    process_umask.cache_clear()
    yield
    os.umask(old)
    process_umask.cache_clear()


def test_process_umask_reads_the_umask_without_changing_it(umask_027):
    assert process_umask() == 0o027
    assert os.umask(0o027) == 0o027


def test_new_files_get_what_open_would_give(tmp_path, umask_027):
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_json(tmp_path / "a.json", {"a": 1})
    atomic_save_npy(tmp_path / "a.npy", [np.zeros((2, 3), np.float32)])
    atomic_write_with(tmp_path / "b.txt", lambda p: open(p, "w").write("y"))
    with open(tmp_path / "plain.txt", "w") as f:
        f.write("z")
    expected = _mode(tmp_path / "plain.txt")
    assert expected == 0o640
    for name in ("a.txt", "a.json", "a.npy", "b.txt"):
        assert _mode(tmp_path / name) == expected, name
    assert np.load(tmp_path / "a.npy").shape == (2, 3)


def test_a_replaced_file_keeps_its_mode(tmp_path, umask_027):
    path = tmp_path / "shared.csv"
    path.write_text("old")
    path.chmod(0o664)
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert _mode(path) == 0o664


def test_a_staged_folder_gets_a_plain_folders_mode(tmp_path, umask_027):
    out = tmp_path / "model"
    with staged_folder(out) as staging:
        (staging / "w.bin").write_bytes(b"1")
    (tmp_path / "plain").mkdir()
    assert _mode(out) == _mode(tmp_path / "plain") == 0o750
    assert (out / "w.bin").read_bytes() == b"1"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def fail(p):
        open(p, "w").write("half")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        atomic_write_with(path, fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_failed_run_leaves_no_empty_output_folder_it_made(tmp_path, capsys):
    """report, compare and audit left an empty -o folder behind when the work failed."""
    from bloodcell.cli.main import main

    with pytest.raises(KeyError), output_folder(tmp_path / "new" / "out"):
        raise KeyError("work failed")
    assert not (tmp_path / "new" / "out").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(KeyError), output_folder(tmp_path / "kept"):
        raise KeyError("work failed")
    assert (tmp_path / "kept").is_dir()  # there before: stays
    with pytest.raises(KeyError), output_folder(tmp_path / "partly") as folder:
        (folder / "written.txt").write_text("x")
        raise KeyError("work failed")
    assert (tmp_path / "partly" / "written.txt").is_file()  # never deletes what was written
    assert main(["report", str(tmp_path / "no-model"), str(tmp_path), "-o", str(tmp_path / "report")]) == 2
    assert main(["audit", str(tmp_path / "no-data"), "-o", str(tmp_path / "audit")]) == 2
    assert not (tmp_path / "report").exists() and not (tmp_path / "audit").exists()
