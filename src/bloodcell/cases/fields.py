"""Whole smear fields in a case: the field image, and the cells found in it, each with its box.

A field's cells are ordinary cells of the case (reviewed, counted and exported like any other),
stored as the crop the model classified; the field keeps the original image, so the page can
draw every box on it. Platelets recognised by size alone are counted on the field
(``platelets_by_size``) rather than added as cells to review.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from bloodcell.cases import images
from bloodcell.cases.records import CaseNotFound, NewCell, now
from bloodcell.cases.store import CaseStore


@dataclass
class NewField:
    """A field image to add to a case, with what the field analysis found besides its cells."""

    filename: str
    data: bytes
    facts: images.ImageFacts
    rbc_px: float | None = None
    platelets_by_size: int = 0
    left_to_neighbour: int = 0


def _field(row: sqlite3.Row, cells: list[sqlite3.Row]) -> dict:
    return {"id": row["id"], "case_id": row["case_id"], "filename": row["filename"], "width": row["width"],
            "height": row["height"], "rbc_px": row["rbc_px"], "platelets_by_size": row["platelets_by_size"],
            "left_to_neighbour": row["left_to_neighbour"], "created": row["created"],
            "cells": [{"id": c["id"], "box": json.loads(c["box"]), "at_border": bool(c["at_border"]),
                       "final_label": c["label"] or c["predicted"]} for c in cells]}


def add_field(cases: CaseStore, case_id: int, field: NewField, cells: list[NewCell], model: str = "") -> tuple[dict, list[dict]]:
    """Add a field and its classified cells (each with ``box`` set) to a case in one transaction.

    Raises
    ------
    CaseNotFound
        When the case does not exist.
    OverTarget
        When the field's cells would take the case past its target; nothing is added.
    """
    cases._check_room(case_id, len(cells))
    images.put(cases.folder, field.data, field.facts)
    for c in cells:
        images.put(cases.folder, c.data, c.facts)
    stamp = now()
    with cases._write() as db:
        field_id = db.execute(
            "INSERT INTO fields (case_id, sha256, ext, filename, width, height, rbc_px, platelets_by_size, "
            "left_to_neighbour, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (case_id, field.facts.sha256, field.facts.ext, field.filename, field.facts.width, field.facts.height,
             field.rbc_px, field.platelets_by_size, field.left_to_neighbour, stamp)).lastrowid
        db.execute("INSERT INTO events (case_id, what, new, at) VALUES (?, 'field added', ?, ?)",
                   (case_id, f"{field.filename}: {len(cells)} cell(s)", stamp))
        ids = cases._insert_cells(db, case_id, cells, model, stamp, field_id)
    return field_of(cases, case_id, field_id), cases._cells_by_id(ids)


def _field_row(db: sqlite3.Connection, cases: CaseStore, case_id: int, field_id: int) -> sqlite3.Row:
    row = db.execute("SELECT * FROM fields WHERE id = ? AND case_id = ?", (field_id, case_id)).fetchone()
    if row is None:
        cases._case_row(db, case_id)
        raise CaseNotFound(f"No field {field_id} in case {case_id}.")
    return row


def _field_cells(db: sqlite3.Connection, field_id: int) -> list[sqlite3.Row]:
    return db.execute("SELECT id, box, at_border, label, predicted FROM cells WHERE field_id = ? ORDER BY id",
                      (field_id,)).fetchall()


def field_of(cases: CaseStore, case_id: int, field_id: int) -> dict:
    """One field of a case with its cells' ids, boxes and final labels."""
    with cases._db() as db:
        return _field(_field_row(db, cases, case_id, field_id), _field_cells(db, field_id))


def fields_of(cases: CaseStore, case_id: int) -> list[dict]:
    """The fields of a case in the order they were added, each with its cells' boxes (two queries, both on
    the case's index, however many fields)."""
    with cases._db() as db:
        cases._case_row(db, case_id)
        rows = db.execute("SELECT * FROM fields WHERE case_id = ? ORDER BY id", (case_id,)).fetchall()
        by_field: dict[int, list[sqlite3.Row]] = {r["id"]: [] for r in rows}
        for c in db.execute("SELECT id, field_id, box, at_border, label, predicted FROM cells "
                            "WHERE case_id = ? AND field_id IS NOT NULL ORDER BY id", (case_id,)):
            by_field.setdefault(c["field_id"], []).append(c)
        return [_field(r, by_field[r["id"]]) for r in rows]


def field_platelet_share(cases: CaseStore, case_id: int, model: str) -> tuple[int, int]:
    """``(called platelets, classified)`` of the case's cells found in fields that ``model`` classified, those
    flagged not a blood cell left out (what :func:`bloodcell.fields.analyse.platelet_share_warning` weighs)."""
    with cases._db() as db:
        return tuple(db.execute("SELECT COALESCE(SUM(predicted = 'platelet'), 0), COUNT(*) FROM cells WHERE case_id = ? "
                                "AND field_id IS NOT NULL AND model = ? AND COALESCE(not_a_blood_cell, 0) = 0",
                                (case_id, model)).fetchone())


def field_image(cases: CaseStore, case_id: int, field_id: int) -> tuple[Path, str]:
    """The stored image file of a field and its media type."""
    with cases._db() as db:
        row = _field_row(db, cases, case_id, field_id)
    return images.image_path(cases.folder, row["sha256"], row["ext"]), images.media_type(row["ext"])
