"""The Python verbs audit, split and cache, and outputs that cannot be written (checked before the work)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bloodcell
from bloodcell.core.errors import ConfigError
from bloodcell.data import audit as audit_package
from bloodcell.data import pixels

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOODCELL_CACHE", str(tmp_path / "cache"))


def _cli(*args, env_extra=None):
    env = {**os.environ, "PYTHONPATH": SRC, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "bloodcell", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def _refuse_decoding(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("decoding started before the output was checked")

    monkeypatch.setattr(pixels, "_prepare_chunk", refuse)
    monkeypatch.setattr(audit_package.checks, "collect_facts", refuse)


def test_audit_verb_writes_and_returns_the_result(make_folder_dataset, tmp_path):
    root = make_folder_dataset(per_class=2, size=24)
    result = bloodcell.audit(root, out=tmp_path / "a", no_plots=True, workers=1, quiet=True)
    assert len(result.dataset) == 16 and result.written == {"audit": tmp_path / "a" / "audit.json"}
    assert json.loads((tmp_path / "a" / "audit.json").read_text())["files"]["images"] == 16


def test_split_verb_writes_the_manifest(make_folder_dataset, tmp_path):
    root = make_folder_dataset(per_class=4, size=24)
    result = bloodcell.split(root, out=tmp_path / "s.csv", val=0.25, test=0.25, workers=1, quiet=True)
    assert result.written["manifest"] == tmp_path / "s.csv"
    assert sum(sp is not None for sp in result.splits) == len(bloodcell.data.open_dataset(tmp_path / "s.csv"))


def test_cache_verb_decodes_lists_and_clears(make_folder_dataset, tmp_path):
    root = make_folder_dataset(per_class=1, size=24)
    built = bloodcell.cache(root, size=16, workers=1, quiet=True)
    assert len(built.arrays) == 8 and built.root == tmp_path / "cache"
    (folder,) = bloodcell.cache(info=True).folders
    assert (folder["images"], folder["image_size"]) == (8, 16)
    assert bloodcell.cache(clear=True).cleared == tmp_path / "cache" / "pixels"
    assert bloodcell.cache(info=True).folders == []
    with pytest.raises(ConfigError, match="needs DATA"):
        bloodcell.cache()


def test_split_to_a_path_under_a_file_fails_before_the_work(make_folder_dataset, tmp_path, monkeypatch):
    root = make_folder_dataset(per_class=2, size=24)
    (tmp_path / "afile").write_text("x")
    _refuse_decoding(monkeypatch)
    with pytest.raises(ConfigError, match=r"Cannot write the split manifest .*afile/s\.csv: .*afile is a file"):
        bloodcell.split(root, out=tmp_path / "afile" / "s.csv", quiet=True)


def test_audit_to_a_path_under_a_file_fails_before_the_work(make_folder_dataset, tmp_path, monkeypatch):
    root = make_folder_dataset(per_class=2, size=24)
    (tmp_path / "afile").write_text("x")
    _refuse_decoding(monkeypatch)
    with pytest.raises(ConfigError, match=r"audit output folder .*afile/out"):
        bloodcell.audit(root, out=tmp_path / "afile" / "out", quiet=True)
    with pytest.raises(ConfigError, match=r"audit output folder .*afile is an existing file"):
        bloodcell.audit(root, out=tmp_path / "afile", quiet=True)


def test_cache_root_under_a_file_fails_before_the_work(make_folder_dataset, tmp_path, monkeypatch):
    root = make_folder_dataset(per_class=2, size=24)
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("BLOODCELL_CACHE", str(tmp_path / "afile" / "cache"))
    _refuse_decoding(monkeypatch)
    with pytest.raises(ConfigError, match=r"cache folder .*afile/cache.*BLOODCELL_CACHE"):
        bloodcell.cache(root, quiet=True)
    with pytest.raises(ConfigError, match=r"cache folder .*afile/cache"):
        bloodcell.data.load_arrays(root, bloodcell.PreprocessConfig(image_size=16), progress=False)


@pytest.mark.parametrize("verb,extra", [("split", ["-o", "{bad}/s.csv"]), ("audit", ["-o", "{bad}/out"]),
                                        ("cache", [])])
def test_cli_unwritable_output_is_one_line_exit_2(make_folder_dataset, tmp_path, verb, extra):
    root = make_folder_dataset(per_class=1, size=24)
    bad = tmp_path / "afile"
    bad.write_text("x")
    args = [a.format(bad=bad) for a in extra]
    proc = _cli(verb, str(root), *args, "--quiet", env_extra={"BLOODCELL_CACHE": str(bad / "cache")})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "afile" in proc.stderr
