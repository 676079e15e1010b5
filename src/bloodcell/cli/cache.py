"""``bloodcell cache DATA``: decode a dataset into the preprocessing cache ahead of training."""

from __future__ import annotations

HELP = "Decode a dataset once into the preprocessing cache (size, crop), or show / clear the cache."


def add_arguments(parser) -> None:
    parser.add_argument("data", nargs="?", help="class-folder dataset, .npz file or CSV manifest")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--crop", type=float, default=1.0,
                        help="centred square crop as a fraction of the shorter side, before resizing (default 1.0)")
    parser.add_argument("--split", choices=("train", "val", "test"), default=None, help="only this split of a manifest")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: BLOODCELL_WORKERS or CPUs)")
    parser.add_argument("--info", action="store_true", help="list what the cache holds")
    parser.add_argument("--clear", action="store_true", help="delete the cache folder's decoded images")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _info(root) -> None:
    import json

    base = root / "pixels"
    folders = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    if not folders:
        print(f"{root}: no cached images.")
        return
    for folder in folders:
        shards = list(folder.glob("shard-*.json"))
        n = sum(len(json.loads(p.read_text()).get("keys", [])) for p in shards)
        size = sum(p.stat().st_size for p in folder.glob("shard-*.npy"))
        try:
            pix = json.loads((folder / "preprocess.json").read_text())
        except (OSError, ValueError):
            pix = {}
        print(f"{folder}: {n:,} images at {pix.get('image_size', '?')} px, crop {pix.get('crop_fraction', '?')}, "
              f"{len(shards)} shards, {size / 2**20:,.0f} MiB")


def run(args) -> int:
    import shutil
    import time

    from bloodcell.core import settings
    from bloodcell.core.errors import ConfigError
    from bloodcell.core.preprocess import PreprocessConfig

    root = settings.cache_root()
    if args.clear:
        target = root / "pixels"
        if target.is_dir():
            shutil.rmtree(target)
        print(f"Cleared {target}.")
        return 0
    if args.info:
        _info(root)
        return 0
    if not args.data:
        raise ConfigError("bloodcell cache needs DATA (a dataset to decode), or --info / --clear.")
    from bloodcell.data import load_arrays

    cfg = PreprocessConfig(image_size=args.size, crop_fraction=args.crop)
    t = time.perf_counter()
    arrays = load_arrays(args.data, cfg, split=args.split, workers=args.workers, progress=not args.quiet,
                         require_labels=False)
    dt = time.perf_counter() - t
    print(f"{len(arrays):,} images at {args.size} px (crop {args.crop:g}) ready in {dt:.1f} s "
          f"({len(arrays) / dt:,.0f} images/s) under {root}.")
    for p in arrays.skipped:
        print(f"  skipped: {p.message}")
    return 0
