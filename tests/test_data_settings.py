"""Environment settings: clear errors, and no development paths inside the library."""

from __future__ import annotations

from pathlib import Path

import pytest

from bloodcell import PreprocessConfig
from bloodcell.core import settings
from bloodcell.core.errors import ConfigError
from bloodcell.data import load_arrays


@pytest.mark.parametrize("value", ["abc", "2.5", "two"])
def test_workers_that_are_not_a_number_name_the_variable(monkeypatch, value):
    monkeypatch.setenv("BLOODCELL_WORKERS", value)
    with pytest.raises(ConfigError, match=rf"BLOODCELL_WORKERS='{value}' is not a whole number"):
        settings.default_workers()


def test_bad_workers_reach_the_user_as_a_config_error(make_folder_dataset, tmp_path, monkeypatch):
    root = make_folder_dataset(per_class=1, size=24)
    monkeypatch.setenv("BLOODCELL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BLOODCELL_WORKERS", "abc")
    with pytest.raises(ConfigError, match="BLOODCELL_WORKERS"):
        load_arrays(root, PreprocessConfig(image_size=16), progress=False)


def test_workers_from_the_environment(monkeypatch):
    monkeypatch.setenv("BLOODCELL_WORKERS", " 3 ")
    assert settings.default_workers() == 3
    monkeypatch.setenv("BLOODCELL_WORKERS", "0")
    assert settings.default_workers() == 1


def test_data_root_has_no_development_default(monkeypatch):
    monkeypatch.delenv("BLOODCELL_DATA", raising=False)
    assert settings.data_root() is None
    monkeypatch.setenv("BLOODCELL_DATA", "/somewhere/pbc")
    assert settings.data_root() == Path("/somewhere/pbc")
    source = Path(settings.__file__).read_text()
    assert "shared/data" not in source
