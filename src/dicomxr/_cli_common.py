"""What the ``dicomxr`` sub-commands share: their common options and their one-line errors.

The sub-commands (``_cli_io``, ``_cli_convert``, ``net/cli``, ``teaching/cli``) import these
helpers from here, below the dispatcher (:mod:`dicomxr.cli`) that finds them by name, so no
sub-command imports the dispatcher back.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from typing import Any

from dicomxr.errors import DicomxrError

__all__ = [
    "INCLUDABLE",
    "add_plan_options",
    "add_source_options",
    "cli_hints",
    "error_line",
    "print_error",
]

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
    """Add ``--on-irregular``, ``--on-duplicate``, ``--merge-runs`` (and ``--include``)."""
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
    parser.add_argument(
        "--merge-runs",
        action="store_true",
        help="merge runs of one-volume series (consecutive SeriesNumbers, same geometry and "
        "protocol, as Siemens XA classic fMRI exports write) into one series with a time dim; "
        "as dicomxr.open_series(merge_runs=True)",
    )


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
