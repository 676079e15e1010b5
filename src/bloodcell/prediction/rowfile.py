"""The rows of a long prediction run on disk: appended as batches finish, read back to resume or finish.

:class:`RowFile` keeps the rows classified so far in ``<output>.partial`` (CSV,
one row per image, the columns of ``bloodcell predict -f csv`` with a
``true_label`` column always there) and the run's settings in
``<output>.partial.json``. A run killed at any moment (even ``kill -9``, in the
middle of a row) is continued by opening the file again with ``resume=True``:
an incomplete last row is cut off, the images already there are skipped, and
nothing is classified twice. Finishing writes the output from these rows, one
row at a time, so memory stays flat however long the run was.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

from bloodcell.core.errors import ConfigError
from bloodcell.core.files import atomic_write_text
from bloodcell.prediction.outputs import _csv_header, _csv_row
from bloodcell.prediction.results import Prediction

#: Settings a resumed run must share with the run it continues.
SAME_RUN = ("path", "backend", "precision", "tta", "classes", "image_size", "temperature", "abstain_threshold",
            "ood_threshold", "familiar_threshold")


def check_same_run(written: Path, before: dict, now: dict, keys=SAME_RUN,
                   advice: str = "the same model and options") -> None:
    """Refuse to continue the stopped run in ``written`` when one of the settings ``keys`` differs between
    it (``before``) and this run (``now``)."""
    changed = [k for k in keys if before.get(k) != now.get(k)]
    if changed:
        raise ConfigError(f"{written} was written with other settings ({', '.join(changed)} differ); "
                          f"resume with {advice}, or delete it to start again.")


def prediction_from_row(row: dict, class_names) -> Prediction:
    """A :class:`Prediction` from a row of the partial CSV (numbers as written: 6 and 4 decimals)."""
    return Prediction(
        source=row["source"], label=row["label"], probability=float(row["probability"]),
        probabilities={c: float(row[f"p_{c}"]) for c in class_names}, uncertain=row["uncertain"] == "1",
        not_a_blood_cell=None if row["not_a_blood_cell"] == "" else row["not_a_blood_cell"] == "1",
        ood_score=None if row["ood_score"] == "" else float(row["ood_score"]),
        true_label=row.get("true_label") or None, framing=row.get("framing") or None,
    )


def _complete_rows(path: Path, width: int) -> tuple[int, int]:
    """Byte length of the complete rows at the start of ``path`` (header included) and their count.

    A row counts when it ends in a newline and has ``width`` fields; anything after the
    first row that does not (a row cut off by a killed run) is not part of the file.
    """
    good, rows, offset, last_line_ok = 0, -1, 0, True
    with open(path, "rb") as f:
        def lines():
            nonlocal offset, last_line_ok
            for raw in f:
                offset += len(raw)
                last_line_ok = raw.endswith(b"\n")
                yield raw.decode("utf-8", "surrogateescape")

        reader = csv.reader(lines())
        try:
            for fields in reader:
                if len(fields) != width or not last_line_ok:
                    break
                good, rows = offset, rows + 1
        except csv.Error:
            pass
    return good, max(rows, 0)


class RowFile:
    """Rows of a run in ``<output>.partial``, its settings in ``<output>.partial.json``.

    Parameters
    ----------
    output : str or Path
        The run's final output; the partial files sit beside it.
    model : dict
        :meth:`Classifier.describe` of the model classifying.
    with_framing : bool
        Whether the model frames cells (a ``framing`` column).
    """

    def __init__(self, output: str | Path, model: dict, with_framing: bool = False):
        self.output = Path(output)
        self.path = self.output.with_name(self.output.name + ".partial")
        self.settings_path = self.output.with_name(self.output.name + ".partial.json")
        self.model = model
        self.class_names = tuple(model["classes"])
        self.header = _csv_header(self.class_names, True, with_framing)
        self.with_framing = with_framing
        self.rows = 0
        self.resumed = 0
        self._file = None

    def start(self, resume: bool) -> set[str]:
        """Open the file for appending; with ``resume``, keep its complete rows and return their sources."""
        if self.path.exists() and not resume:
            raise ConfigError(f"{self.path} holds the rows of an unfinished run: pass --resume to continue it, "
                              "or delete it to start again.")
        done: set[str] = set()
        if resume and self.path.exists():
            self._check_settings()
            size, self.resumed = _complete_rows(self.path, len(self.header))
            with open(self.path, "r+b") as f:
                f.truncate(size)
            done = {row["source"] for row in self.read()}
            if size == 0:
                self.resumed = 0
        else:
            atomic_write_text(self.settings_path, json.dumps({"model": self.model}, indent=2) + "\n")
        self.rows = self.resumed
        self._file = open(self.path, "a", encoding="utf-8", newline="")  # kept open across batches
        if self._file.tell() == 0:
            self._write([self.header])
        return done

    def _check_settings(self) -> None:
        try:
            before = json.loads(self.settings_path.read_text(encoding="utf-8"))["model"]
        except (OSError, ValueError, KeyError):
            raise ConfigError(f"{self.settings_path}: missing or unreadable, so {self.path} cannot be resumed safely; "
                              "delete both to start again.") from None
        check_same_run(self.path, before, self.model)

    def _write(self, rows: list[list]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        self._file.write(buf.getvalue())
        self._file.flush()

    def add(self, predictions: list[Prediction]) -> None:
        """Append a batch of rows (written whole, then flushed)."""
        if predictions:
            self._write([_csv_row(p, self.class_names, True, self.with_framing) for p in predictions])
            self.rows += len(predictions)

    def read(self) -> Iterator[dict]:
        """The rows written so far, one dict at a time."""
        with open(self.path, encoding="utf-8", newline="") as f:
            yield from csv.DictReader(f)

    def predictions(self) -> Iterator[Prediction]:
        for row in self.read():
            yield prediction_from_row(row, self.class_names)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove(self) -> None:
        """Delete the partial files (after the output is written)."""
        self.close()
        self.path.unlink(missing_ok=True)
        self.settings_path.unlink(missing_ok=True)
