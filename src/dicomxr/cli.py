"""The ``dicomxr`` command line.

Each area of the package registers its own sub-commands (``register(subparsers)``), so the
command line grows with the package without one module knowing every part of it. The
options several sub-commands share (``--no-recursive``, ``--no-progress``,
``--on-irregular``, ``--on-duplicate``, ``--include``) are added by the helpers here, so
they are spelt, chosen and defaulted the same way everywhere.

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
import re
import shlex
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from dicomxr.errors import DicomxrError

# modules that provide ``register(subparsers)``; imported only when the CLI runs
_REGISTRARS = (
    "dicomxr._cli_io",  # demo, scan, info
    "dicomxr._cli_convert",  # convert
    "dicomxr._cli_anatomy",  # anatomy
    "dicomxr.net.cli",  # echo, find, get, move, store
)

#: the ``include`` values the planner understands (``dicomxr.series``)
INCLUDABLE = ("localizer", "secondary_capture")
#: the optional module behind an ImportError -> the dicomxr extra that provides it
_EXTRAS = {
    "matplotlib": "viewer",
    "ipywidgets": "viewer",
    "nibabel": "nifti",
    "zarr": "zarr",
    "pynetdicom": "net",
    "dicomweb_client": "net",
    "highdicom": "labels",
}


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


def add_source_options(parser: argparse.ArgumentParser, *, progress: bool = True) -> None:
    """Add ``--no-recursive`` (and ``--no-progress``) for a sub-command that scans a source."""
    parser.add_argument(
        "--no-recursive", action="store_true", help="do not descend into sub-folders"
    )
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_plan_options(
    parser: argparse.ArgumentParser, *, on_irregular: str = "warn", include: bool = True
) -> None:
    """Add ``--on-irregular``, ``--on-duplicate`` (and ``--include``): the planning policies."""
    from dicomxr.geometry import POLICIES

    parser.add_argument(
        "--on-irregular",
        choices=POLICIES,
        default=on_irregular,
        help="what to do with an irregular stack (gaps, uneven spacing): keep it and warn, "
        "raise, split it into regular blocks, fill whole missing slices, or keep it silently; "
        "as dicomxr.open_series(on_irregular=...)",
    )
    parser.add_argument(
        "--on-duplicate",
        choices=tuple(p for p in POLICIES if p != "fill"),
        default="warn",
        help="what to do with frames that share a position and nothing tells apart: keep them "
        "along a 'volume' dim and warn, raise, split them into one series per copy, or keep "
        "them silently; as dicomxr.open_series(on_duplicate=...)",
    )
    if include:
        parser.add_argument(
            "--include",
            action="append",
            choices=INCLUDABLE,
            default=[],
            help="also plan frames normally set apart (repeatable)",
        )


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


def error_line(exc: BaseException) -> str:
    """Return the one line the command line prints for ``exc`` (CLI syntax in its hints)."""
    if isinstance(exc, ImportError) and not isinstance(exc, DicomxrError):
        module = (getattr(exc, "name", None) or "").split(".")[0]
        if module and not module.startswith("dicomxr"):
            extra = _EXTRAS.get(module)
            how = f"pip install 'dicomxr[{extra}]'" if extra else f"pip install {module}"
            return f"needs the optional dependency {module!r}: install it with `{how}`"
    text = cli_hints(str(exc))
    # a series table (indented rows, the first its header) is what `dicomxr scan` prints:
    # one line names the command instead
    prose: list[str] = []
    rows = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("    "):
            if prose and prose[-1].endswith(":"):  # "... holds 3 series:" + the table
                prose[-1] = re.sub(r"[;,]?\s*it holds:$", "", prose[-1]).rstrip(":")
            rows += 1
            continue
        if rows and prose and not prose[-1].endswith("."):
            prose[-1] += "."
        prose.append(line.strip())
    message = " ".join(" ".join(prose).split()) or type(exc).__name__
    if rows > 1 and "dicomxr scan" not in message:
        message += f" (`dicomxr scan PATH` lists the {rows - 1} series it holds)"
    return message


_HINTS: tuple[tuple[str, str], ...] = (
    (r"open them all with dicomxr\.open_study\(\)", "list them all with `dicomxr scan PATH`"),
    (
        r"\(see dicomxr\.catalog\.skipped\(dicomxr\.scan\(\.\.\.\)\)\)",
        "(list them with `dicomxr scan PATH --skipped`)",
    ),
    (r"plan_series\(\.\.\., include=\[\.\.\.\]\) plans", "--include plans"),
    (r"dicomxr\.open_series\(folder, series=([^)]*)\)", r"--series \1"),
    (r"\bseries=<([^>]*)>", r"--series <\1>"),
    (r"\bseries=(['\"])(.*?)\1", r"--series \1\2\1"),
    (r"\bseries=(-?\d+)", r"--series \1"),
    (r"\bon_irregular=(['\"])(\w+)\1", r"--on-irregular \2"),
    (r"\bon_duplicate=(['\"])(\w+)\1", r"--on-duplicate \2"),
    (r"\binclude=\[(['\"])(\w+)\1\]", r"--include \2"),
    (r"\binclude=\[\.\.\.\]", "--include"),
    (r"\brecursive=False\b", "--no-recursive"),
)


def cli_hints(text: str) -> str:
    """Say the Python-syntax hints of a library message in command-line syntax.

    Examples
    --------
    >>> cli_hints("Pass on_irregular='split' to get regular blocks")
    'Pass --on-irregular split to get regular blocks'
    >>> cli_hints("for example series=3, or open them all with dicomxr.open_study().")
    'for example --series 3, or list them all with `dicomxr scan PATH`.'
    """
    for pattern, repl in _HINTS:
        text = re.sub(pattern, repl, text)
    # a value with spaces is quoted as a shell needs it
    return re.sub(r"(--series) (['\"])(.+?)\2", lambda m: f"{m[1]} {shlex.quote(m[3])}", text)


def print_error(command: str, message: Any) -> None:
    """Print a sub-command's own error as the one line :func:`main` prints for exceptions."""
    text = error_line(message) if isinstance(message, BaseException) else str(message)
    print(f"dicomxr {command}: {text}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
