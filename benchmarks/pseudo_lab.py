"""Write a simulated other lab from PBC validation cells, to choose adaptation settings on.

The external sets judge generalisation and must not be tuned to; this makes a stand-in lab from
the PBC validation split instead: the five mature white-cell classes (as LISC and Jiangxi have),
every image given one fixed look that PBC lacks (by default: cells 1.6x larger in the frame, a
yellow cast and a paler stain, the kinds of difference the external sets show). Images go to
``runs/pseudo_labs/NAME/<class>/`` (ignored by git; derived from PBC, never committed); point
``benchmarks/adapt.py`` at them with ``BLOODCELL_EXTERNAL=runs/pseudo_labs``.

    python benchmarks/pseudo_lab.py                                    # runs/pseudo_labs/zoom1.6_yellow_pale
    python benchmarks/pseudo_lab.py --zoom 1.0 --name yellow_pale --per-class 80
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bloodcell.core.preprocess import decode_image  # noqa: E402
from domain_shift import cast, read_test_split, stain, zoom  # noqa: E402

MATURE = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--split", type=Path, default=ROOT / "runs" / "pbc_split.csv", help="PBC split manifest")
    p.add_argument("--zoom", type=float, default=1.6, help="magnification against PBC (1.6: cells 1.6x larger)")
    p.add_argument("--blue-gain", type=float, default=0.7, help="blue channel gain (below 1: a yellow cast)")
    p.add_argument("--stain-amount", type=float, default=0.7, help="optical density of both stains times this")
    p.add_argument("--per-class", type=int, default=80, help="validation cells per class")
    p.add_argument("--name", default="zoom1.6_yellow_pale")
    args = p.parse_args(argv)
    if not args.split.is_file():
        sys.exit(f"{args.split}: no split manifest; run `bloodcell split` first (see README).")
    rows = [(path, label) for path, label in read_test_split(args.split, "val") if label in MATURE]
    out = ROOT / "runs" / "pseudo_labs" / args.name
    rng = random.Random(0)
    written = 0
    for cls in MATURE:
        mine = [path for path, label in rows if label == cls]
        (out / cls).mkdir(parents=True, exist_ok=True)
        for path in rng.sample(mine, min(args.per_class, len(mine))):
            img = decode_image(path, str(path))
            img = cast(stain(zoom(img, args.zoom), args.stain_amount, args.stain_amount), (1.0, 0.95, args.blue_gain))
            Image.fromarray(img).save(out / cls / f"{path.stem}.png")
            written += 1
    print(f"{out}: {written} images, {len(MATURE)} classes (zoom x{args.zoom:g}, blue x{args.blue_gain:g}, "
          f"stain x{args.stain_amount:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
