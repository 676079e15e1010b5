"""The whole-field options of ``bloodcell predict`` (``--fields``, ``--overlay``, ``--tile-overlap``)
and the note printed when an image classified as one cell looks like a whole field."""

from __future__ import annotations

import sys

from bloodcell.core.errors import ConfigError
from bloodcell.fields.api import field_warnings
from bloodcell.prediction.outputs import FORMATS


def add_arguments(parser) -> None:
    """Add the whole-field options to ``bloodcell predict``'s parser."""
    group = parser.add_argument_group("whole smear fields")
    group.add_argument("--fields", action="store_true",
                       help="each image is a whole field: find every white cell (and platelet), classify and count "
                            "them; CSV rows and JSON cells carry the box in original pixels and at_border")
    group.add_argument("--overlay", metavar="DIR", default=None,
                       help="with --fields: write a PNG per field with the boxes coloured by class and a legend")
    group.add_argument("--tile-overlap", metavar="PX", type=float, default=0.0,
                       help="with --fields: the images are tiles of one slide overlapping by PX pixels; a cell in an "
                            "overlap is counted by one tile only (tile offsets are read from names like *_x1024_y512.png)")


def wants_fields(args) -> bool:
    """Whether the command line asks for a whole-field run (an error when a field option comes without --fields)."""
    if not getattr(args, "fields", False):
        if getattr(args, "overlay", None) is not None or getattr(args, "tile_overlap", 0):
            raise ConfigError("--overlay and --tile-overlap apply to whole fields; add --fields.")
        return False
    if args.differential == "only":
        raise ConfigError("--differential only is for single-cell images; a --fields run prints the counts "
                          "and differential after the cells.")
    if args.format not in FORMATS:
        named = f" (-f, or the suffix of {args.output})" if args.output else ""
        raise ConfigError(f"A --fields run writes {', '.join(FORMATS)}, not {args.format}{named}; pass -f csv or -f json.")
    return True


def report(result, args) -> int:
    """Print what a ``bloodcell predict --fields`` run found (the result of :func:`bloodcell.predict`)."""
    for q in result.problems:
        print(f"bloodcell predict: skipped {q.message}", file=sys.stderr)
    if result.overlays:
        print(f"bloodcell predict: {len(result.overlays)} overlay(s) -> {args.overlay}", file=sys.stderr)
    if result.output is None:
        sys.stdout.write(result.text)
    else:
        cells = sum(len(r.cells) for r in result.fields)
        print(f"bloodcell predict: {len(result.fields)} field(s), {cells} cell(s) -> {args.output}", file=sys.stderr)
    if result.warning:
        print(f"bloodcell predict: warning: {result.warning}", file=sys.stderr)
    return 0


def warn(paths) -> None:
    """Print a warning line for each image that looks like a whole field with several white cells."""
    for line in field_warnings(paths):
        print(f"bloodcell predict: warning: {line}", file=sys.stderr)
