"""The package's layout holds: few top-level modules, short files and functions, no import
cycles, stages importing only what the layering allows (measured by benchmarks/layout.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "layout.py"


@pytest.fixture(scope="module")
def layout():
    spec = importlib.util.spec_from_file_location("layout", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def figures(layout):
    return layout.measure()


@pytest.mark.parametrize("key", ["top_level_modules", "files_over_400_lines", "functions_over_60_lines",
                                 "import_cycles", "layering_breaks"])
def test_layout_figure_within_its_limit(layout, figures, key):
    detail = {"files_over_400_lines": "long_files", "functions_over_60_lines": "long_functions",
              "import_cycles": "cycles", "layering_breaks": "breaks", "top_level_modules": "top_level"}[key]
    assert figures[key] <= layout.LIMITS[key], figures[detail]


def test_cycle_finder_finds_a_cycle(layout):
    assert layout.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layout.cycles({"a": {"b"}, "b": set()}) == []


def test_layering_check_reports_an_upward_import(layout):
    assert layout.layering_breaks({"core": ["data"], "data": ["core"]}) == ["core -> data"]


def test_every_stage_is_measured(layout, figures):
    assert set(layout.STAGES) <= set(figures["stage_imports"])
