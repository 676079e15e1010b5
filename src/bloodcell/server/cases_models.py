"""The request and response bodies of the case endpoints (:mod:`bloodcell.server.cases_routes`),
as pydantic models so the OpenAPI description shows them."""

from __future__ import annotations

from pydantic import BaseModel, Field

from bloodcell.cases.records import MAX_TARGET, MAX_TEXT
from bloodcell.server.errors import ErrorBody, RequestBody


class ClassRow(BaseModel):
    class_: str = Field(alias="class", description="white-cell class")
    count: int
    percent: float | None = Field(description="% of the white cells counted (null when none)")
    ci95: list[float] | None = Field(description="95% Wilson interval, in %")


class Nrbc(BaseModel):
    count: int = Field(description="erythroblasts (nucleated red blood cells)")
    per_100_wbc: float | None = Field(description="NRBC per 100 white cells (null when no white cell)")
    ci95: list[float | None] | None = Field(description="95% interval of NRBC/100 WBC (upper null: unbounded)")


class Platelets(BaseModel):
    count: int
    by_size: int = Field(0, description="of which found in whole fields by size alone (not cells to review)")


class Excluded(BaseModel):
    reason: str = Field(description="not_a_cell, smudge, artefact, or not_a_blood_cell (the model's flag, unreviewed)")
    count: int


class Agreement(BaseModel):
    reviewed: int
    agreed: int = Field(description="reviewed cells whose review equals the model's class")
    percent: float | None
    ci95: list[float] | None


class LabDifferential(BaseModel):
    """The differential as a lab reports it (see ``bloodcell.prediction.differential.lab_differential``)."""

    white_cells: list[ClassRow]
    nrbc: Nrbc
    platelets: Platelets
    excluded: list[Excluded]
    reviewed: int
    unreviewed: int
    total: int
    wbc_total: int
    agreement: Agreement


class Case(BaseModel):
    """A sample under review."""

    id: int
    accession: str
    note: str
    target: int = Field(description="cells to count (100 or 200 for a manual differential); uploads stop there")
    created: str
    updated: str
    n_cells: int
    n_reviewed: int
    differential: LabDifferential | None = Field(description="lab differential of the case's cells (null in lists)")
    warning: str | None = Field(None, description="said when far more of the cells the serving model classified "
                                "are uncertain than its validation images were: they look unlike its training "
                                "data (null otherwise, and in lists)")


class CaseList(BaseModel):
    cases: list[Case]


class NewCase(RequestBody):
    accession: str = Field(min_length=1, max_length=MAX_TEXT, description="the sample's accession number")
    note: str | None = Field(None, max_length=MAX_TEXT)
    target: int = Field(100, ge=1, le=MAX_TARGET, description="cells to count: 100, 200 or any")


class CaseChange(RequestBody):
    accession: str | None = Field(None, min_length=1, max_length=MAX_TEXT)
    note: str | None = Field(None, max_length=MAX_TEXT)
    target: int | None = Field(None, ge=1, le=MAX_TARGET)


class Cell(BaseModel):
    """One image of a case: the model's pre-classification and the reviewer's label."""

    id: int
    case_id: int
    filename: str
    sha256: str
    width: int
    height: int
    predicted: str = Field(description="the model's class")
    probabilities: dict[str, float]
    confidence: float = Field(description="the model's probability of its class")
    uncertain: bool
    not_a_blood_cell: bool | None
    unfamiliar: bool | None = Field(None, description="the model's familiarity check found it unlike its training "
                                                      "cells, so it is uncertain (null: no such check, or a field's cell)")
    framing: str | None
    label: str | None = Field(description="the reviewer's label; null = unreviewed")
    final_label: str = Field(description="label if reviewed, else predicted")
    reviewer: str | None
    reviewed_at: str | None
    created: str
    model: str = Field("", description="the model that classified it")
    field_id: int | None = Field(None, description="the whole field the cell was found in (null: a single-cell image)")
    box: list[int] | None = Field(None, description="[x0, y0, x1, y1] in the field's pixels (cells of fields)")
    at_border: bool | None = Field(None, description="the cell touches the field's border (cells of fields)")


class CellList(BaseModel):
    cells: list[Cell]


class Review(RequestBody):
    label: str | None = Field(description="a class of the model, or not_a_cell, smudge, artefact; null clears")
    reviewer: str | None = Field(None, max_length=200)
    if_label: str | None = Field(None, description="when given (null: not reviewed), the review is made only if the "
                                                   "cell's label is still this; else 409 and nothing changes")


class SkippedUpload(BaseModel):
    filename: str
    error: str


class CellsAdded(BaseModel):
    cells: list[Cell]
    skipped: list[SkippedUpload]
    case: Case


class FieldCell(BaseModel):
    id: int = Field(description="the cell's id in the case")
    box: list[int] = Field(description="[x0, y0, x1, y1] in the field's pixels")
    at_border: bool
    final_label: str


class CaseField(BaseModel):
    """A whole smear field of a case, with the box of every cell found in it."""

    id: int
    case_id: int
    filename: str
    width: int
    height: int
    rbc_px: float | None = Field(description="red-cell diameter in pixels: the scale the cells were found at")
    platelets_by_size: int = Field(description="platelets recognised by size alone (counted, not added as cells)")
    left_to_neighbour: int = Field(description="cells in a tile overlap that a neighbouring tile counts")
    created: str
    cells: list[FieldCell]


class FieldList(BaseModel):
    fields: list[CaseField]


class FieldsAdded(BaseModel):
    fields: list[CaseField]
    cells: list[Cell]
    skipped: list[SkippedUpload]
    case: Case


class Event(BaseModel):
    id: int
    cell_id: int | None
    case_id: int
    who: str | None
    what: str = Field(description="created, accession, note, target, added, field added or label")
    old: str | None
    new: str | None
    at: str


class EventList(BaseModel):
    events: list[Event]


NOT_FOUND = {404: {"model": ErrorBody, "description": "No such case, or no such cell in the case."}}
BAD_INPUT = {422: {"model": ErrorBody, "description": "A field is missing or out of range, or the label is unknown "
                                                      "(the message lists the allowed labels)."}}
CHANGED_SINCE = {409: {"model": ErrorBody, "description": "if_label was given and the cell's label is no longer "
                                                          "that: someone reviewed it since; the message says how."}}
OVER_TARGET = {409: {"model": ErrorBody, "description": "The upload would take the case past its target; the "
                                                        "message says how many more cells fit."}}
