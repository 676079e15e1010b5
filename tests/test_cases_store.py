"""The case store: migrations, persistence across restarts, images by content, targets, reviews,
orphan clean-up, and a store killed with SIGKILL in the middle of uploads."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from _cases_helpers import new_cell, png
from _serve_helpers import SRC
from bloodcell.cases import CaseStore
from bloodcell.cases import images as store_images
from bloodcell.cases.records import BadLabel, CaseNotFound, ChangedSince, OverTarget
from bloodcell.cases.schema import DATABASE, MIGRATIONS, VERSION, connect, migrate
from bloodcell.core.errors import DataError


def test_migrations_run_once_and_a_newer_store_is_refused(tmp_path):
    store = CaseStore(tmp_path / "s")
    with connect(store.folder) as db:
        assert db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        later = [*MIGRATIONS, ["ALTER TABLE cases ADD COLUMN ward TEXT"]]
        assert migrate(db, "t", later) == VERSION + 1
        assert migrate(db, "t", later) == VERSION + 1  # applied once
        assert "ward" in [r[1] for r in db.execute("PRAGMA table_info(cases)")]
    with pytest.raises(DataError, match="newer than this bloodcell"):
        CaseStore(tmp_path / "s")


def test_a_store_of_the_previous_version_opens_with_its_cells_and_records_unfamiliar_cells(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    with connect(folder) as db:
        assert migrate(db, "t", MIGRATIONS[:VERSION - 1]) == VERSION - 1  # a store written before the column
    old = CaseStore(folder)  # opening it migrates it
    cid = old.create_case("A")["id"]
    plain, odd = new_cell(png(1)), new_cell(png(2), "b.png")
    odd.unfamiliar, odd.uncertain = True, True
    old.add_cells(cid, [plain, odd])
    with connect(folder) as db:
        assert db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == VERSION
    got = CaseStore(folder).cells(cid)
    assert [(c["unfamiliar"], c["uncertain"]) for c in got] == [(None, False), (True, True)]
    assert [c["id"] for c in CaseStore(folder).cells(cid, flag="uncertain")] == [got[1]["id"]]


def test_missing_store_is_not_created_when_reading(tmp_path):
    with pytest.raises(DataError, match="no case store here"):
        CaseStore(tmp_path / "none", create=False)
    assert not (tmp_path / "none").exists()


def test_everything_survives_a_restart(tmp_path):
    store = CaseStore(tmp_path / "s")
    case = store.create_case("ACC-1", note="n", target=200)
    cells = store.add_cells(case["id"], [new_cell(png(1)), new_cell(png(2), "y.png", "lymphocyte")], "m 1")
    store.review(case["id"], cells[1]["id"], "monocyte", "rev")
    again = CaseStore(tmp_path / "s")
    got = again.case(case["id"])
    assert (got["accession"], got["note"], got["target"], got["n_cells"], got["n_reviewed"]) == ("ACC-1", "n", 200, 2, 1)
    assert [c["final_label"] for c in again.cells(case["id"])] == ["neutrophil", "monocyte"]
    assert [e["what"] for e in again.events(case["id"])] == ["created", "added", "added", "label"]
    assert again.models(case["id"]) == ["m 1"]


def test_same_name_and_same_bytes(tmp_path):
    store = CaseStore(tmp_path / "s")
    cid = store.create_case("A")["id"]
    same = png(5)
    cells = store.add_cells(cid, [new_cell(same, "a.png"), new_cell(png(6), "a.png"), new_cell(same, "b.png")])
    assert len(cells) == 3 and len({c["id"] for c in cells}) == 3
    assert cells[0]["sha256"] == cells[2]["sha256"] == hashlib.sha256(same).hexdigest()
    assert len(list((tmp_path / "s" / "images").rglob("*.png"))) == 2
    assert (cells[0]["width"], cells[0]["height"]) == (28, 24)


def test_target_review_and_not_found(tmp_path):
    store = CaseStore(tmp_path / "s")
    cid = store.create_case("A", target=2)["id"]
    store.add_cells(cid, [new_cell(png(1))])
    with pytest.raises(OverTarget, match="1 more fit, 2 were sent"):
        store.add_cells(cid, [new_cell(png(2)), new_cell(png(3))])
    assert store.case(cid)["n_cells"] == 1
    cell = store.cells(cid)[0]["id"]
    with pytest.raises(BadLabel, match="smudge"):
        store.review(cid, cell, "banana")
    with pytest.raises(CaseNotFound):
        store.review(cid, cell + 1, "smudge")
    with pytest.raises(CaseNotFound):
        store.case(cid + 1)
    store.review(cid, cell, "smudge", "a")
    store.review(cid, cell, "smudge", "a")  # no change, no event
    store.review(cid, cell, None, "a")
    labels = [(e["old"], e["new"]) for e in store.events(cid) if e["what"] == "label"]
    assert labels == [(None, "smudge"), ("smudge", None)]
    with pytest.raises(DataError, match="target must be"):
        store.update_case(cid, target=0)


def test_a_review_made_on_an_old_view_is_refused_and_changes_nothing(tmp_path):
    store = CaseStore(tmp_path / "s")
    cid = store.create_case("A")["id"]
    cell = store.add_cells(cid, [new_cell(png(1))])[0]["id"]
    store.review(cid, cell, "monocyte", "ada", expected=None)
    with pytest.raises(ChangedSince, match=r"now reviewed as monocyte by ada at .*Reload the case"):
        store.review(cid, cell, "lymphocyte", "bob", expected=None)  # bob's page still shows it unreviewed
    store.review(cid, cell, "basophil", "ada", expected="monocyte")
    store.review(cid, cell, None, "ada", expected="basophil")
    with pytest.raises(ChangedSince, match="no longer reviewed"):
        store.review(cid, cell, "monocyte", "bob", expected="basophil")
    assert store.cell(cid, cell)["label"] is None
    labels = [(e["old"], e["new"], e["who"]) for e in store.events(cid) if e["what"] == "label"]
    assert labels == [(None, "monocyte", "ada"), ("monocyte", "basophil", "ada"), ("basophil", None, "ada")]


def test_orphans_are_cleaned_at_open_and_verify_finds_damage(tmp_path):
    store = CaseStore(tmp_path / "s")
    cid = store.create_case("A")["id"]
    kept = store.add_cells(cid, [new_cell(png(1))])[0]
    folder = tmp_path / "s" / "images" / "ff"
    folder.mkdir()
    old, young, tmp = folder / ("f" * 64 + ".png"), folder / ("f" * 63 + "e.png"), folder / ".x.png.abc.tmp"
    for f in (old, young, tmp):
        f.write_bytes(b"x")
    for f in (old, tmp):
        os.utime(f, (time.time() - 7200, time.time() - 7200))
    CaseStore(tmp_path / "s")
    assert not old.exists() and not tmp.exists() and young.exists()
    path, _ = store.image(cid, kept["id"])
    assert path.exists() and store.verify() == []
    path.write_bytes(b"changed")
    assert "do not match" in store.verify()[0]
    path.unlink()
    assert "missing" in store.verify()[0]


CHILD = r"""
import hashlib, os, sys
from bloodcell.cases import CaseStore, NewCell
from bloodcell.cases.images import ImageFacts
store = CaseStore(sys.argv[1])
cid = store.create_case("kill")["id"] if not store.cases() else store.cases()[0]["id"]
store.update_case(cid, target=100000)
print("ready", flush=True)
n = 0
while True:
    batch = []
    for _ in range(8):
        data = os.urandom(300_000)
        facts = ImageFacts(hashlib.sha256(data).hexdigest(), ".png", 1, 1)
        batch.append(NewCell(f"f{n}.png", data, facts, "neutrophil", {"neutrophil": 1.0}, 1.0, False, False, None))
        n += 1
    store.add_cells(cid, batch)
"""


def test_kill_9_mid_upload_leaves_a_sound_store(tmp_path):
    folder = tmp_path / "s"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    rng = np.random.default_rng(0)
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(folder)], stdout=subprocess.PIPE, env=env)
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.4, 1.2))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        with sqlite3.connect(folder / DATABASE) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        store = CaseStore(folder, orphan_age=0)
        assert store.verify() == []
        assert not list(folder.rglob("*.tmp"))
    rows = store.cells(store.cases()[0]["id"])
    assert len(rows) >= 8  # the child was uploading when it was killed
    files = {p.name for p in (folder / "images").rglob("*.png")}
    assert files == {f"{r['sha256']}.png" for r in rows}


def test_the_image_is_on_disk_before_its_row(tmp_path, monkeypatch):
    store = CaseStore(tmp_path / "s")
    cid = store.create_case("A")["id"]

    def crash(self):
        raise RuntimeError("crash before the commit")

    monkeypatch.setattr(CaseStore, "_write", crash)
    data = png(9)
    with pytest.raises(RuntimeError):
        store.add_cells(cid, [new_cell(data)])
    monkeypatch.undo()
    written = store_images.image_path(store.folder, hashlib.sha256(data).hexdigest(), ".png")
    assert written.read_bytes() == data and store.cells(cid) == []
    CaseStore(tmp_path / "s", orphan_age=0)
    assert not written.exists() and store.verify() == []


def test_uncertain_share_counts_the_cells_one_model_classified(tmp_path):
    from dataclasses import replace

    store = CaseStore(tmp_path)
    cid = store.create_case("S-U")["id"]
    cells = [replace(new_cell(png(i), f"{i}.png"), uncertain=i % 2 == 0, not_a_blood_cell=i == 4) for i in range(6)]
    store.add_cells(cid, cells[:5], "model A")
    store.add_cells(cid, cells[5:], "model B")
    assert store.uncertain_share(cid, "model A") == (2, 4)  # cell 4 is flagged not a blood cell: left out
    assert store.uncertain_share(cid, "model B") == (0, 1)
    assert store.uncertain_share(cid, "model C") == (0, 0)


def test_fields_of_gives_each_field_its_own_cells_and_leaves_single_uploads_out(tmp_path):
    from dataclasses import replace

    from bloodcell.cases.fields import NewField, add_field, fields_of

    store = CaseStore(tmp_path / "s")
    cid = store.create_case("A")["id"]
    store.add_cells(cid, [new_cell(png(1), "single.png")])  # a single-cell upload: no field
    made = []
    for f in range(3):
        data = png(10 + f, 64)
        field = NewField(f"field-{f}.png", data, store_images.facts(data, f"field-{f}.png"), 7.5)
        cells = [replace(new_cell(png(20 + 3 * f + i), f"c{i}.png"), box=(i, i, i + 5, i + 5), at_border=i == 0)
                 for i in range(f + 1)]
        made.append(add_field(store, cid, field, cells)[1])
    got = fields_of(store, cid)
    assert [g["filename"] for g in got] == ["field-0.png", "field-1.png", "field-2.png"]
    assert [[c["id"] for c in g["cells"]] for g in got] == [[c["id"] for c in cells] for cells in made]
    assert [c["box"] for c in got[2]["cells"]] == [[0, 0, 5, 5], [1, 1, 6, 6], [2, 2, 7, 7]]
    assert [c["at_border"] for c in got[1]["cells"]] == [True, False]
    assert fields_of(store, store.create_case("B")["id"]) == []
