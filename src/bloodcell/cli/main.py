"""The ``bloodcell`` command line.

Each verb is a module in :mod:`bloodcell.cli` defining ``HELP`` (one
line), ``add_arguments(parser)`` and ``run(args) -> int``; the verbs call the
same library functions as the Python API. User errors print one clear line and
exit with status 2, never a stack trace.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import pkgutil
import sys

import bloodcell.cli as commands
from bloodcell.core import __version__
from bloodcell.core.errors import BloodcellError


def _verbs() -> dict[str, object]:
    found = {}
    for info in pkgutil.iter_modules(commands.__path__):
        if not info.name.startswith("_") and info.name != "main":
            found[info.name.replace("_", "-")] = info.name
    return found


def build_parser(verbs: dict[str, str], only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with every verb listed; only the arguments of the verb ``only`` are built
    (none for ``bloodcell --help``), so start-up loads that verb's modules alone."""
    parser = argparse.ArgumentParser(
        prog="bloodcell",
        description="Classify microscope images of single peripheral blood cells (8-class differential).",
    )
    parser.add_argument("--version", action="version", version=f"bloodcell {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    for verb, module_name in sorted(verbs.items()):
        module = importlib.import_module(f"{commands.__name__}.{module_name}")
        # argparse %-formats help strings (not descriptions): a literal % must be doubled.
        p = sub.add_parser(verb, help=module.HELP.replace("%", "%%"), description=module.HELP)
        if verb == only:
            module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verbs = _verbs()
    if argv and not argv[0].startswith("-") and argv[0] not in verbs:
        close = difflib.get_close_matches(argv[0], list(verbs), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"bloodcell: unknown command {argv[0]!r}.{hint} Commands: {', '.join(sorted(verbs))}.", file=sys.stderr)
        return 2
    parser = build_parser(verbs, only=argv[0] if argv and argv[0] in verbs else None)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except BloodcellError as e:
        print(f"bloodcell {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bloodcell {args.verb}: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
