"""The ``dicomxr`` command line.

Each area of the package registers its own sub-commands (``register(subparsers)``), so the
command line grows with the package without one module knowing every part of it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from dicomxr.errors import DicomxrError

# modules that provide ``register(subparsers)``; imported only when the CLI runs
_REGISTRARS = (
    "dicomxr._cli_io",  # demo, scan, info
    "dicomxr._cli_convert",  # convert
    "dicomxr.teaching.cli",  # anatomy
    "dicomxr.net.cli",  # echo, find, get, move, store
)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every available sub-command."""
    from dicomxr import __version__

    parser = argparse.ArgumentParser(
        prog="dicomxr",
        description="Lazy DICOM series as xarray objects: scan, inspect, fetch and teach.",
    )
    parser.add_argument("--version", action="version", version=f"dicomxr {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _REGISTRARS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("dicomxr"):
                continue  # that part of the package is not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (DicomxrError, OSError) as exc:
        # documented failures (a bad file, a path that does not exist): one line, no traceback
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"dicomxr {args.command}: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
