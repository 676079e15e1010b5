"""Draw what was found on a field: a box per cell coloured by class, labelled, with a legend.

Small fields are enlarged by a whole factor (so labels stay readable) and the legend is a strip
under the image with each class's colour and count. Labels end with ``*`` for cells cut by the
image border, ``?`` when the model is uncertain and ``!`` when it flags the crop as not a blood
cell; boxes left to a neighbouring tile are drawn thin and grey.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bloodcell.core.files import atomic_write_with
from bloodcell.fields.analyse import FieldResult

#: Colours by class: distinct on the pink and pale-blue tones of a stained smear.
COLOURS = {
    "basophil": (110, 40, 170),
    "eosinophil": (230, 120, 0),
    "erythroblast": (200, 0, 60),
    "ig": (0, 150, 150),
    "lymphocyte": (0, 90, 230),
    "monocyte": (120, 80, 30),
    "neutrophil": (0, 160, 0),
    "platelet": (240, 0, 200),
}
OTHER = (40, 40, 40)
NOT_A_CELL = (128, 128, 128)
#: Overlays of fields smaller than this (shorter side, pixels) are enlarged by a whole factor.
MIN_SIDE = 512


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType's scalable default font
        return ImageFont.load_default()


def _colour(cell) -> tuple[int, int, int]:
    return COLOURS.get(cell.label, OTHER)


def _label(draw: ImageDraw.ImageDraw, box, text: str, colour, font, limit: tuple[int, int], placed: list) -> None:
    """Text on a filled tag in ``colour`` by the box: above its top-left corner, else below its
    bottom-left, else inside its top-left, whichever first overlaps no tag drawn before."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 6, bottom - top + 4
    x = min(max(0, box[0]), limit[0] - w)
    spots = [(x, box[1] - h), (x, box[3]), (x, box[1])]
    spots = [(sx, min(max(0, sy), limit[1] - h)) for sx, sy in spots]
    free = [spot for spot in spots if not any(_hits(spot, (w, h), other) for other in placed)]
    sx, sy = (free or spots)[0]
    placed.append((sx, sy, sx + w, sy + h))
    draw.rectangle([sx, sy, sx + w, sy + h], fill=colour)
    draw.text((sx + 3 - left, sy + 2 - top), text, fill=(255, 255, 255), font=font)


def _hits(spot, size, other) -> bool:
    return spot[0] < other[2] and other[0] < spot[0] + size[0] and spot[1] < other[3] and other[1] < spot[1] + size[1]


def draw(image: np.ndarray, result: FieldResult) -> Image.Image:
    """The overlay of one field as a PIL image."""
    scale = max(1, -(-MIN_SIDE // max(1, min(image.shape[:2]))))
    base = Image.fromarray(image)
    if scale > 1:
        base = base.resize((base.width * scale, base.height * scale), Image.Resampling.LANCZOS)
    font = _font(max(12, min(base.size) // 40))
    pen = ImageDraw.Draw(base)
    width = max(2, min(base.size) // 250)
    for box in result.elsewhere:
        pen.rectangle([v * scale for v in box], outline=NOT_A_CELL, width=1)
    for c in result.cells:
        pen.rectangle([c.box[0] * scale, c.box[1] * scale, c.box[2] * scale - 1, c.box[3] * scale - 1],
                      outline=_colour(c), width=width)
    placed: list = []
    for i, c in enumerate(result.cells, start=1):
        text = f"{i} {c.label}" + ("*" if c.at_border else "")
        if c.prediction is not None and c.prediction.uncertain:
            text += " ?"
        if c.prediction is not None and c.prediction.not_a_blood_cell:
            text += " !"
        _label(pen, [v * scale for v in c.box], text, _colour(c), font, base.size, placed)
    return _with_legend(base, result, font)


def _with_legend(base: Image.Image, result: FieldResult, font) -> Image.Image:
    counts: dict[str, int] = {}
    for c in result.cells:
        counts[c.label] = counts.get(c.label, 0) + 1
    entries = [(f"{name} {n}", COLOURS.get(name, OTHER)) for name, n in sorted(counts.items())] or [("no cell found", OTHER)]
    notes = [note for note, shown in (
        ("* cut by the border", any(c.at_border for c in result.cells)),
        ("? uncertain", any(c.prediction is not None and c.prediction.uncertain for c in result.cells)),
        ("! flagged not a blood cell", any(c.prediction is not None and c.prediction.not_a_blood_cell for c in result.cells)),
    ) if shown]
    if result.elsewhere:
        notes.append("grey: counted by a neighbouring tile")
    probe = ImageDraw.Draw(base)
    line = probe.textbbox((0, 0), "Ag", font=font)[3] + 8
    items = [(text, colour) for text, colour in entries] + [(n, None) for n in notes]
    rows, x, row = [], 8, 0
    for text, colour in items:
        w = probe.textlength(text, font=font) + (line + 14 if colour else 14)
        if x + w > base.width and x > 8:
            row, x = row + 1, 8
        rows.append((row, x, text, colour))
        x += w
    out = Image.new("RGB", (base.width, base.height + (row + 1) * line + 8), (255, 255, 255))
    out.paste(base, (0, 0))
    pen = ImageDraw.Draw(out)
    for r, x, text, colour in rows:
        y = base.height + 4 + r * line
        if colour:
            pen.rectangle([x, y + 2, x + line - 6, y + line - 4], fill=colour)
            x += line
        pen.text((x, y + 2), text, fill=(0, 0, 0), font=font)
    return out


def overlay_name(source: str, taken: set[str]) -> str:
    """A file name for a field's overlay: the source's name as PNG, made unique among ``taken``."""
    stem = re.sub(r"[^\w.\-]+", "_", Path(source.split("#")[0]).stem) or "field"
    name, k = f"{stem}.png", 2
    while name in taken:
        name, k = f"{stem}_{k}.png", k + 1
    taken.add(name)
    return name


def write_overlay(path: str | Path, image: np.ndarray, result: FieldResult) -> None:
    """Draw the overlay of a field and write it as a PNG (atomically)."""
    picture = draw(image, result)
    atomic_write_with(Path(path), lambda tmp: picture.save(tmp, format="PNG"))
