"""Tiles of one slide that overlap: each cell in an overlap is counted by one tile only.

Neighbouring tiles share a strip ``overlap`` pixels wide. A tile owns the part of each shared
strip on its own side of the strip's middle line, and counts a cell only when the cell's centre
lies in what it owns; the neighbour counts the others. With an overlap at least one white cell
wide, every cell lies whole in the tile that counts it.

Which edges are shared: when the file names carry the tiles' offsets on the slide
(``..._x1024_y512.png``, as most tiling tools write them), an edge is shared unless the tile lies
on that side of the slide (smallest or largest offset); otherwise every edge is taken as shared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_OFFSET = re.compile(r"(?:^|[_\-.])x(\d+)[_\-.]?y(\d+)(?:$|[_\-.])", re.IGNORECASE)


@dataclass(frozen=True)
class Edges:
    """Which edges of a tile a neighbour shares (left, top, right, bottom)."""

    left: bool = True
    top: bool = True
    right: bool = True
    bottom: bool = True


ALL_SHARED = Edges()


def offset(source: str) -> tuple[int, int] | None:
    """The tile's ``(x, y)`` offset on the slide read from its file name, or ``None``."""
    found = _OFFSET.search(Path(source).stem)
    return (int(found.group(1)), int(found.group(2))) if found else None


def shared_edges(sources: list[str]) -> dict[str, Edges]:
    """The shared edges of each tile: from the offsets in the names when every name carries one,
    else every edge (see the module's description)."""
    offsets = {s: offset(s) for s in sources}
    if not sources or any(v is None for v in offsets.values()):
        return {s: ALL_SHARED for s in sources}
    xs = [v[0] for v in offsets.values()]
    ys = [v[1] for v in offsets.values()]
    return {s: Edges(x > min(xs), y > min(ys), x < max(xs), y < max(ys)) for s, (x, y) in offsets.items()}


def owns(centre: tuple[float, float], width: int, height: int, overlap: float, edges: Edges = ALL_SHARED) -> bool:
    """Whether a tile of ``width`` x ``height`` counts the cell whose centre is ``centre``.

    The middle of each shared strip splits it: the half nearer the tile's inside is the tile's
    own, and a centre exactly on the middle line belongs to the tile on its right or below, so a
    cell is never counted by both tiles nor by neither.
    """
    if overlap <= 0:
        return True
    x, y = centre
    half = overlap / 2
    if edges.left and x < half:
        return False
    if edges.top and y < half:
        return False
    if edges.right and x >= width - half:
        return False
    if edges.bottom and y >= height - half:
        return False
    return True
