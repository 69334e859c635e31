"""Sub-command ``dicomxr anatomy FILE``: the DICOM file laid open in the terminal.

One line per part of the file: its byte offset, its header bytes coloured by role (tag, VR,
reserved, length) and the first value bytes, then what they mean (tag, keyword, VR and where
it came from, length, value). Sequences and items are indented. A broken file is shown up
to the break, and the break is named.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def _offset(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an offset: {text!r} (use decimal, or hex like 0x84)"
        ) from None


def register(subparsers: Any) -> None:
    """Add ``anatomy`` to the ``dicomxr`` command line."""
    p = subparsers.add_parser(
        "anatomy",
        help="lay a DICOM file open byte by byte (coloured dump with offsets)",
        description=(
            "Walk a DICOM file from its bytes and print every part: preamble, 'DICM' prefix, "
            "file meta group, then every data element with its offset, header bytes (tag, VR, "
            "reserved bytes, length field) and value; sequences, items, delimiters and "
            "encapsulated fragments nested. Broken files are shown up to the break."
        ),
    )
    p.add_argument("file", type=Path, help="the DICOM file")
    p.add_argument(
        "--no-color",
        action="store_true",
        help="plain text (also when NO_COLOR is set or the output is not a terminal)",
    )
    p.add_argument(
        "--max-elements", type=int, default=None, metavar="N", help="show at most N parts"
    )
    p.add_argument(
        "--offset",
        type=_offset,
        default=None,
        metavar="BYTES",
        help="start at the part covering this byte offset (decimal or 0x hex)",
    )
    p.add_argument("--table", action="store_true", help="print the element table (pandas) instead")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from dicomxr._cli_common import print_error
    from dicomxr.teaching.anatomy import anatomy

    path: Path = args.file
    if not path.exists():
        print_error("anatomy", f"{path}: no such file")
        return 2
    if path.is_dir():
        print_error("anatomy", f"{path} is a folder; give one file")
        return 2
    if args.max_elements is not None and args.max_elements < 0:
        print_error("anatomy", "--max-elements must be >= 0")
        return 2
    a = anatomy(path)
    if args.offset is not None and not 0 <= args.offset < max(a.size, 1):
        print_error(
            "anatomy",
            f"--offset {args.offset} is past the end of {path} ({a.size} bytes: "
            f"give 0..{max(a.size - 1, 0)})",
        )
        return 2
    if args.table:
        import pandas as pd

        with pd.option_context("display.max_rows", args.max_elements or 10_000,
                               "display.width", 200, "display.max_colwidth", 40):  # fmt: skip
            print(a.to_dataframe().head(args.max_elements or None))
    else:
        color = not args.no_color and not os.environ.get("NO_COLOR") and sys.stdout.isatty()
        print(a.dump(color=color, max_elements=args.max_elements, offset=args.offset))
    if a.is_sound:
        return 0
    # the dump shows the break; stderr says it in one line (and the exit code is 1)
    what = "is not a DICOM file" if not (a.has_prefix or a.has_meta) else "is broken"
    first = a.breaks[0]
    print_error("anatomy", f"{path} {what}: {_break_text(first)}")
    return 1


def _break_text(brk: Any) -> str:
    offset = getattr(brk, "offset", None)
    reason = " ".join(str(getattr(brk, "reason", brk)).split())
    return f"{reason} (at byte {offset})" if offset is not None else reason
