"""``bloodcell cache DATA``: decode a dataset into the preprocessing cache ahead of training."""

from __future__ import annotations

from bloodcell.data.cache import cache

HELP = "Decode a dataset once into the preprocessing cache (size, crop), or show / clear the cache."


def add_arguments(parser) -> None:
    parser.add_argument("data", nargs="?", help="class-folder dataset, .npz file or CSV manifest")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--crop", type=float, default=1.0,
                        help="centred square crop as a fraction of the shorter side, before resizing (default 1.0)")
    parser.add_argument("--split", choices=("train", "val", "test"), default=None, help="only this split of a manifest")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: BLOODCELL_WORKERS or CPUs)")
    parser.add_argument("--info", action="store_true", help="list what the cache holds")
    parser.add_argument("--clear", action="store_true", help="delete the cache folder's decoded images")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    result = cache(args.data, size=args.size, crop=args.crop, split=args.split, workers=args.workers,
                   info=args.info, clear=args.clear, quiet=args.quiet)
    if result.cleared is not None:
        print(f"Cleared {result.cleared}.")
    elif result.arrays is None:
        if not result.folders:
            print(f"{result.root}: no cached images.")
        for f in result.folders:
            print(f"{f['folder']}: {f['images']:,} images at {f['image_size']} px, crop {f['crop_fraction']}, "
                  f"{f['shards']} shards, {f['bytes'] / 2**20:,.0f} MiB")
    else:
        arrays, dt = result.arrays, result.seconds
        print(f"{len(arrays):,} images at {args.size} px (crop {args.crop:g}) ready in {dt:.1f} s "
              f"({len(arrays) / dt:,.0f} images/s) under {result.root}.")
        for p in arrays.skipped:
            print(f"  skipped: {p.message}")
    return 0
