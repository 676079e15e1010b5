"""The case store: cases, their cells with the model's pre-classification and the reviewer's label,
and every change as an event, in SQLite (write-ahead log, foreign keys) beside the cell images.

Layout of the store folder::

    cases.sqlite            the database (schema: :mod:`bloodcell.cases.schema`)
    images/ab/abcdef....jpg the images, by SHA-256 of their bytes (:mod:`bloodcell.cases.images`)

Each call opens its own connection, so one store serves many threads and processes (``bloodcell
serve --workers N``, an export while the service runs).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bloodcell.cases import images
from bloodcell.cases.records import (
    UNCHECKED,
    BadLabel,
    CaseNotFound,
    NewCell,
    OverTarget,
    allowed_labels,
    cell_record,
    changed_since,
    checked_target,
    checked_text,
    now,
)
from bloodcell.cases.schema import DATABASE, connect, migrate
from bloodcell.core.errors import DataError
from bloodcell.core.files import check_writable_folder
from bloodcell.prediction.differential import lab_differential

#: The store folder when none is given: ``bloodcell-cases`` in the working folder, or ``$BLOODCELL_CASES``.
DEFAULT_FOLDER = "bloodcell-cases"
ENV = "BLOODCELL_CASES"
#: Filters of :meth:`CaseStore.cells`.
FLAGS = {"uncertain": "uncertain = 1", "not_a_blood_cell": "not_a_blood_cell = 1", "unreviewed": "label IS NULL",
         "reviewed": "label IS NOT NULL"}
def default_folder() -> Path:
    env = os.environ.get(ENV, "").strip()
    return Path(env or DEFAULT_FOLDER)


class CaseStore:
    """Cases and reviewed cells in a folder (created when missing, unless ``create`` is false).

    Opening applies the schema migrations the database lacks and removes image files no row
    names that are older than ``orphan_age`` seconds (left by a crash mid-upload).

    Raises
    ------
    DataError
        When ``create`` is false and the folder holds no store, or the store is newer than this code.
    ConfigError
        When the folder cannot be created or written.
    """

    def __init__(self, folder: str | Path | None = None, *, create: bool = True,
                 orphan_age: float = images.ORPHAN_AGE):
        self.folder = Path(folder) if folder is not None else default_folder()
        if not (self.folder / DATABASE).is_file():
            if not create:
                raise DataError(f"{self.folder}: no case store here ({DATABASE} is missing). Pass the folder "
                                "given to `bloodcell serve --cases`.")
            check_writable_folder(self.folder, "case store folder", "--cases")
        with self._db() as db:
            migrate(db, now())
            named = {f"{r[0]}{r[1]}" for r in db.execute("SELECT DISTINCT sha256, ext FROM cells "
                                                           "UNION SELECT sha256, ext FROM fields")}
        images.clean(self.folder, named, orphan_age)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = connect(self.folder)
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    # -- cases ---------------------------------------------------------------------------------------

    def _case_row(self, db: sqlite3.Connection, case_id: int) -> sqlite3.Row:
        row = db.execute(
            "SELECT c.*, COUNT(x.id) AS n_cells, COUNT(x.label) AS n_reviewed FROM cases c "
            "LEFT JOIN cells x ON x.case_id = c.id WHERE c.id = ? GROUP BY c.id", (case_id,)).fetchone()
        if row is None:
            raise CaseNotFound(f"No case {case_id} in {self.folder}.")
        return row

    @staticmethod
    def _case(row: sqlite3.Row, differential: dict | None) -> dict:
        return {"id": row["id"], "accession": row["accession"], "note": row["note"], "target": row["target"],
                "created": row["created"], "updated": row["updated"], "n_cells": row["n_cells"],
                "n_reviewed": row["n_reviewed"], "differential": differential}

    def _differential(self, db: sqlite3.Connection, case_id: int) -> dict:
        rows = db.execute("SELECT label, predicted, not_a_blood_cell FROM cells WHERE case_id = ? ORDER BY id",
                          (case_id,)).fetchall()
        d = lab_differential([r["label"] or r["predicted"] for r in rows],
                             reviewed=[r["label"] is not None for r in rows],
                             predicted=[r["predicted"] for r in rows],
                             not_a_blood_cell=[bool(r["not_a_blood_cell"]) for r in rows])
        # Platelets that whole fields showed too small to classify are counted, not added as cells.
        by_size = db.execute("SELECT COALESCE(SUM(platelets_by_size), 0) FROM fields WHERE case_id = ?",
                             (case_id,)).fetchone()[0]
        d["platelets"] = {"count": d["platelets"]["count"] + by_size, "by_size": by_size}
        return d

    def case(self, case_id: int) -> dict:
        """One case with its counts and lab differential (:func:`~bloodcell.prediction.differential.lab_differential`)."""
        with self._db() as db:
            return self._case(self._case_row(db, case_id), self._differential(db, case_id))

    def cases(self) -> list[dict]:
        """Every case, the most recently updated first (``differential`` is ``None`` here: see :meth:`case`)."""
        with self._db() as db:
            rows = db.execute(
                "SELECT c.*, COUNT(x.id) AS n_cells, COUNT(x.label) AS n_reviewed FROM cases c "
                "LEFT JOIN cells x ON x.case_id = c.id GROUP BY c.id ORDER BY c.updated DESC, c.id DESC").fetchall()
        return [self._case(r, None) for r in rows]

    def create_case(self, accession: str, note: str | None = None, target: int | None = 100) -> dict:
        """A new case for the sample ``accession``, to be counted to ``target`` cells (100 or 200, or any)."""
        accession = checked_text(accession, "accession", required=True)
        note = checked_text(note, "note") or ""
        target = checked_target(100 if target is None else target)
        stamp = now()
        with self._write() as db:
            case_id = db.execute("INSERT INTO cases (accession, note, target, created, updated) VALUES (?, ?, ?, ?, ?)",
                                 (accession, note, target, stamp, stamp)).lastrowid
            db.execute("INSERT INTO events (case_id, what, new, at) VALUES (?, 'created', ?, ?)",
                       (case_id, accession, stamp))
        return self.case(case_id)

    def update_case(self, case_id: int, *, accession: str | None = None, note: str | None = None,
                    target: int | None = None, who: str | None = None) -> dict:
        """Change a case's accession, note or target (each change is an event)."""
        new = {"accession": checked_text(accession, "accession", required=True), "note": checked_text(note, "note"),
               "target": checked_target(target)}
        stamp = now()
        with self._write() as db:
            row = self._case_row(db, case_id)
            changed = {k: v for k, v in new.items() if v is not None and v != row[k]}
            for key, value in changed.items():
                db.execute(f"UPDATE cases SET {key} = ? WHERE id = ?", (value, case_id))
                db.execute("INSERT INTO events (case_id, who, what, old, new, at) VALUES (?, ?, ?, ?, ?, ?)",
                           (case_id, who, key, str(row[key]), str(value), stamp))
            if changed:
                db.execute("UPDATE cases SET updated = ? WHERE id = ?", (stamp, case_id))
        return self.case(case_id)

    def room(self, case_id: int) -> tuple[int, int]:
        """``(cells held, target)`` of a case."""
        with self._db() as db:
            row = self._case_row(db, case_id)
        return row["n_cells"], row["target"]

    @staticmethod
    def over_target(case_id: int, held: int, target: int, adding: int) -> OverTarget:
        fit = max(0, target - held)
        return OverTarget(f"Case {case_id} holds {held} of its target {target} cells: {fit} more fit, {adding} "
                          f"were sent. Send at most {fit}, or raise the case's target.")

    # -- cells ---------------------------------------------------------------------------------------

    def add_cells(self, case_id: int, cells: list[NewCell], model: str = "") -> list[dict]:
        """Add classified images to a case; their image files are on disk before their rows commit.

        The same bytes twice are two cells sharing one image file. ``model`` names the model that
        classified them (shown in the report).

        Raises
        ------
        CaseNotFound
            When the case does not exist.
        OverTarget
            When the case would hold more cells than its target; nothing is added.
        """
        self._check_room(case_id, len(cells))
        for c in cells:
            images.put(self.folder, c.data, c.facts)
        stamp = now()
        with self._write() as db:
            ids = self._insert_cells(db, case_id, cells, model, stamp)
        return self._cells_by_id(ids)

    def _check_room(self, case_id: int, adding: int, db: sqlite3.Connection | None = None) -> None:
        if db is None:
            held, target = self.room(case_id)
        else:
            row = self._case_row(db, case_id)
            held, target = row["n_cells"], row["target"]
        if held + adding > target:
            raise self.over_target(case_id, held, target, adding)

    def _insert_cells(self, db: sqlite3.Connection, case_id: int, cells: list[NewCell], model: str, stamp: str,
                      field_id: int | None = None) -> list[int]:
        """Insert cell rows and their 'added' events inside the caller's transaction (room checked again)."""
        self._check_room(case_id, len(cells), db)
        ids = []
        for c in cells:
            ids.append(db.execute(
                "INSERT INTO cells (case_id, sha256, ext, filename, width, height, predicted, probabilities, "
                "confidence, uncertain, not_a_blood_cell, framing, model, created, field_id, box, at_border, unfamiliar) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (case_id, c.facts.sha256, c.facts.ext, c.filename, c.facts.width, c.facts.height, c.predicted,
                 json.dumps(c.probabilities), c.confidence, int(c.uncertain),
                 None if c.not_a_blood_cell is None else int(c.not_a_blood_cell), c.framing, model, stamp,
                 field_id, json.dumps(list(c.box)) if c.box else None,
                 None if c.at_border is None else int(c.at_border), None if c.unfamiliar is None else int(c.unfamiliar)),
            ).lastrowid)
            db.execute("INSERT INTO events (cell_id, case_id, what, new, at) VALUES (?, ?, 'added', ?, ?)",
                       (ids[-1], case_id, c.filename, stamp))
        db.execute("UPDATE cases SET updated = ? WHERE id = ?", (stamp, case_id))
        return ids

    def _cells_by_id(self, ids: list[int]) -> list[dict]:
        if not ids:
            return []
        with self._db() as db:
            marks = ",".join("?" * len(ids))
            rows = db.execute(f"SELECT * FROM cells WHERE id IN ({marks}) ORDER BY id", ids).fetchall()
        return [cell_record(r) for r in rows]

    def cells(self, case_id: int, label: str | None = None, flag: str | None = None) -> list[dict]:
        """The cells of a case in the order they were added; ``label`` keeps those whose final label
        (the review, else the model's class) it is, ``flag`` one of :data:`FLAGS`."""
        if flag is not None and flag not in FLAGS:
            raise DataError(f"Unknown flag {flag!r}; one of {', '.join(FLAGS)}.")
        sql, args = "SELECT * FROM cells WHERE case_id = ?", [case_id]
        if label:
            sql += " AND COALESCE(label, predicted) = ?"
            args.append(label)
        if flag:
            sql += f" AND {FLAGS[flag]}"
        with self._db() as db:
            self._case_row(db, case_id)
            return [cell_record(r) for r in db.execute(sql + " ORDER BY id", args)]

    def _cell_row(self, db: sqlite3.Connection, case_id: int, cell_id: int) -> sqlite3.Row:
        row = db.execute("SELECT * FROM cells WHERE id = ? AND case_id = ?", (cell_id, case_id)).fetchone()
        if row is None:
            self._case_row(db, case_id)
            raise CaseNotFound(f"No cell {cell_id} in case {case_id}.")
        return row

    def cell(self, case_id: int, cell_id: int) -> dict:
        with self._db() as db:
            return cell_record(self._cell_row(db, case_id, cell_id))

    def review(self, case_id: int, cell_id: int, label: str | None, reviewer: str | None = None,
               allowed: tuple[str, ...] | None = None, expected=UNCHECKED) -> dict:
        """Give a cell the reviewer's ``label`` (``None`` clears the review); the change is an event.
        With ``expected`` (a label, or ``None`` for no review), only if the cell's label is that now.

        Raises
        ------
        BadLabel
            When ``label`` is not in ``allowed`` (default: :func:`allowed_labels`).
        CaseNotFound
            When the case or the cell does not exist.
        ChangedSince
            When the cell's label is no longer ``expected`` (someone else reviewed it since).
        """
        allowed = allowed or allowed_labels()
        if label is not None and label not in allowed:
            raise BadLabel(f"Unknown label {label!r}. Allowed labels: {', '.join(allowed)}; or null to clear "
                           "the review.")
        reviewer = checked_text(reviewer, "reviewer") or None
        stamp = now()
        with self._write() as db:
            row = self._cell_row(db, case_id, cell_id)
            if expected is not UNCHECKED and row["label"] != expected:
                raise changed_since(cell_id, row)
            if row["label"] != label or (label is not None and row["reviewer"] != reviewer):
                db.execute("UPDATE cells SET label = ?, reviewer = ?, reviewed_at = ? WHERE id = ?",
                           (label, reviewer if label is not None else None, stamp if label is not None else None,
                            cell_id))
                db.execute("INSERT INTO events (cell_id, case_id, who, what, old, new, at) "
                           "VALUES (?, ?, ?, 'label', ?, ?, ?)", (cell_id, case_id, reviewer, row["label"], label, stamp))
                db.execute("UPDATE cases SET updated = ? WHERE id = ?", (stamp, case_id))
            return cell_record(self._cell_row(db, case_id, cell_id))

    def image(self, case_id: int, cell_id: int) -> tuple[Path, str]:
        """The stored image file of a cell and its media type."""
        with self._db() as db:
            row = self._cell_row(db, case_id, cell_id)
        return images.image_path(self.folder, row["sha256"], row["ext"]), images.media_type(row["ext"])

    def events(self, case_id: int) -> list[dict]:
        """Every change to a case and its cells, oldest first."""
        with self._db() as db:
            self._case_row(db, case_id)
            rows = db.execute("SELECT * FROM events WHERE case_id = ? ORDER BY id", (case_id,)).fetchall()
        return [dict(r) for r in rows]

    def models(self, case_id: int) -> list[str]:
        """The models that classified the case's cells."""
        with self._db() as db:
            return [r[0] for r in db.execute("SELECT DISTINCT model FROM cells WHERE case_id = ? AND model != '' "
                                             "ORDER BY model", (case_id,))]

    def uncertain_share(self, case_id: int, model: str) -> tuple[int, int]:
        """``(uncertain, counted)`` of the case's cells ``model`` classified, those flagged not a blood cell left out."""
        with self._db() as db:
            return tuple(db.execute("SELECT COALESCE(SUM(uncertain), 0), COUNT(*) FROM cells WHERE case_id = ? AND "
                                    "model = ? AND COALESCE(not_a_blood_cell, 0) = 0", (case_id, model)).fetchone())

    def verify(self) -> list[str]:
        """Problems with the store: SQLite's integrity check, and rows whose image is missing or whose
        bytes no longer match their hash (empty when all is well)."""
        with self._db() as db:
            problems = [r[0] for r in db.execute("PRAGMA integrity_check") if r[0] != "ok"]
            problems += [f"foreign key: {tuple(r)}" for r in db.execute("PRAGMA foreign_key_check")]
            rows = db.execute("SELECT sha256, ext FROM cells UNION SELECT sha256, ext FROM fields").fetchall()
        for r in rows:
            path = images.image_path(self.folder, r["sha256"], r["ext"])
            if not path.is_file():
                problems.append(f"{path}: missing")
            elif images.sha256_of(path) != r["sha256"]:
                problems.append(f"{path}: its bytes do not match its name")
        return problems
