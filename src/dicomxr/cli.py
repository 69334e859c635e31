"""The ``dicomxr`` command line.

Each area of the package registers its own sub-commands (``register(subparsers)``), so the
command line grows with the package without one module knowing every part of it. The
options several sub-commands share (``--no-recursive``, ``--no-progress``,
``--on-irregular``, ``--on-duplicate``, ``--include``) are added by the helpers of
:mod:`dicomxr._cli_common`, so they are spelt, chosen and defaulted the same way everywhere.

Errors are one line on stderr and a non-zero exit code, never a traceback (set
``DICOMXR_TRACEBACK=1`` to see one): a documented dicomxr error, a path that does not
exist, a bad argument value or a missing optional dependency. The hints the library's
errors give in Python syntax (``series=3``, ``on_irregular='split'``,
``include=['localizer']``) are said in the command line's (``--series 3``,
``--on-irregular split``, ``--include localizer``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from dicomxr._cli_common import (  # noqa: F401 - shared by the sub-commands, kept here too
    INCLUDABLE,
    add_plan_options,
    add_source_options,
    cli_hints,
    error_line,
    print_error,
)
from dicomxr.errors import DicomxrError

# modules that provide ``register(subparsers)``; imported only when the CLI runs
_REGISTRARS = (
    "dicomxr._cli_io",  # demo, scan, info
    "dicomxr._cli_convert",  # convert
    "dicomxr.teaching.cli",  # anatomy
    "dicomxr.net.cli",  # echo, find, get, move, store
)


class _HelpFormatter(argparse.HelpFormatter):
    """Show every option's default in ``--help`` (flags and empty defaults excepted)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, argparse.SUPPRESS)
            or default == []
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (and the way to the help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every available sub-command."""
    from dicomxr import __version__

    parser = _Parser(
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
    for sub in subparsers.choices.values():
        sub.formatter_class = _HelpFormatter
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
    except BrokenPipeError:  # the output was piped into something that stopped reading
        return 0
    except (DicomxrError, OSError, ValueError, ImportError) as exc:
        # a bad file, a path that does not exist, a bad value, a missing extra: one line
        if os.environ.get("DICOMXR_TRACEBACK"):
            raise
        print(f"dicomxr {args.command}: {error_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
