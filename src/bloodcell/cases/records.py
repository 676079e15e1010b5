"""What the case store keeps and refuses: the records it returns, the checks of what it is given, and its errors."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime

from bloodcell.cases import images
from bloodcell.core.classes import CLASSES
from bloodcell.core.errors import DataError
from bloodcell.prediction.differential import EXCLUSION_LABELS

MAX_TARGET = 100_000
MAX_TEXT = 10_000


class CaseNotFound(DataError):
    """No case, or no cell in that case, with the given id."""


class OverTarget(DataError):
    """Adding the cells would take the case past its target count."""


class BadLabel(DataError):
    """A review label that is neither a class of the model nor an exclusion label."""


class ChangedSince(DataError):
    """A review that expected the cell's label to be one thing, when someone has since made it another."""


#: ``expected`` of a review that does not check the cell's label first.
UNCHECKED = object()


def changed_since(cell_id: int, row: sqlite3.Row) -> ChangedSince:
    """The refusal of a review made on an out-of-date view of cell ``row``."""
    now_is = (f"reviewed as {row['label']}" + (f" by {row['reviewer']}" if row["reviewer"] else "")
              + (f" at {row['reviewed_at']}" if row["reviewed_at"] else "")) if row["label"] else "no longer reviewed"
    return ChangedSince(f"Cell {cell_id} was changed since this view of it: it is now {now_is}. Reload the case to see "
                        "it, then review it again if need be.")


@dataclass
class NewCell:
    """An image to add to a case, with the model's classification of it."""

    filename: str
    data: bytes
    facts: images.ImageFacts
    predicted: str
    probabilities: dict[str, float]
    confidence: float
    uncertain: bool
    not_a_blood_cell: bool | None
    framing: str | None
    box: tuple[int, int, int, int] | None = None
    at_border: bool | None = None
    unfamiliar: bool | None = None


def now() -> str:
    """The time now, UTC, ISO 8601 to the millisecond."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def allowed_labels(class_names=CLASSES) -> tuple[str, ...]:
    """Labels a reviewer may give: the model's classes and the exclusion labels."""
    return (*class_names, *EXCLUSION_LABELS)


def cell_record(row: sqlite3.Row) -> dict:
    nabc = row["not_a_blood_cell"]
    return {"id": row["id"], "case_id": row["case_id"], "filename": row["filename"], "sha256": row["sha256"],
            "width": row["width"], "height": row["height"], "predicted": row["predicted"],
            "probabilities": json.loads(row["probabilities"]), "confidence": row["confidence"],
            "uncertain": bool(row["uncertain"]), "not_a_blood_cell": None if nabc is None else bool(nabc),
            "framing": row["framing"], "label": row["label"], "final_label": row["label"] or row["predicted"],
            "reviewer": row["reviewer"], "reviewed_at": row["reviewed_at"], "created": row["created"],
            "model": row["model"], "field_id": row["field_id"], "box": json.loads(row["box"]) if row["box"] else None,
            "at_border": None if row["at_border"] is None else bool(row["at_border"]),
            "unfamiliar": None if row["unfamiliar"] is None else bool(row["unfamiliar"])}


def checked_text(value: str | None, what: str, required: bool = False) -> str | None:
    if value is None:
        return None
    value = str(value).strip()
    if required and not value:
        raise DataError(f"The {what} is empty; give the case's {what}.")
    if len(value) > MAX_TEXT:
        raise DataError(f"The {what} is {len(value)} characters long; at most {MAX_TEXT}.")
    return value


def checked_target(value: int | None) -> int | None:
    if value is not None and not (isinstance(value, int) and 1 <= value <= MAX_TARGET):
        raise DataError(f"target must be a whole number of cells from 1 to {MAX_TARGET} (100 or 200 for a "
                        f"manual differential), got {value!r}.")
    return value
