"""Sub-command ``dicomxr convert SRC DEST``: a cohort to NIfTI files or one Zarr store.

Forwards to :func:`dicomxr.convert`, prints its report, and exits non-zero when a
series failed (1) or the conversion could not start (2).
"""

from __future__ import annotations

import argparse
from typing import Any

from dicomxr._cli_common import add_plan_options, add_source_options, print_error

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``convert`` to the ``dicomxr`` command line."""
    from dicomxr.conversion import DEFAULT_TEMPLATE

    cmd = subparsers.add_parser(
        "convert",
        help="convert every series in SRC to NIfTI (+ BIDS sidecars) or one Zarr store",
        description=(
            "Convert every image series in SRC (file, folder tree, glob or DICOMDIR) into "
            "DEST: NIfTI files with BIDS-style JSON sidecars, or one Zarr store "
            "(DEST/cohort.zarr) with a group per series; DEST/manifest.parquet lists every "
            "output. A re-run converts only what is missing. Exit code 1 when a series failed."
        ),
    )
    from dicomxr._cli_io import add_storage_options

    cmd.add_argument(
        "source", metavar="SRC", help="file, folder, glob, DICOMDIR, zip file or URL (s3://...)"
    )
    add_storage_options(cmd)
    cmd.add_argument("dest", metavar="DEST", help="destination folder (created)")
    cmd.add_argument("--format", choices=("nifti", "zarr"), default="nifti", help="output format")
    cmd.add_argument(
        "-f",
        "--template",
        default=None,
        help=f"output name from header keywords, '/' for folders (default: {DEFAULT_TEMPLATE})",
    )
    cmd.add_argument(
        "--split",
        default="auto",
        help=(
            "frame dims to write as separate files, comma separated (echo,component); "
            "'auto': echo,component for NIfTI, none for Zarr; 'none' to keep them together"
        ),
    )
    cmd.add_argument(
        "--deidentify",
        action="store_true",
        help="apply the DICOM PS3.15 basic de-identification profile to everything written",
    )
    cmd.add_argument(
        "--date-shift",
        type=int,
        default=None,
        metavar="DAYS",
        help="with --deidentify: move dates back by DAYS (default: a secret offset)",
    )
    cmd.add_argument("--orientation", help="reorient every image, e.g. RAS or LPS")
    cmd.add_argument(
        "--spacing",
        type=_spacing,
        metavar="MM[,MM,MM]",
        help="resample to this voxel spacing in mm (one value, or slice,row,col)",
    )
    cmd.add_argument(
        "--window",
        type=_window,
        metavar="C,W|auto",
        help="window to [0, 1]: center,width, or 'auto' for the series' own preset",
    )
    cmd.add_argument("--dtype", help="cast images to this dtype, e.g. float32")
    cmd.add_argument(
        "--scaling",
        choices=("display", "precise", "real_world"),
        default="display",
        help=(
            "what stored values become: display (RescaleSlope/Intercept, dcm2niix -p n), "
            "precise (Philips floating-point values, dcm2niix -p y) or real_world (the Real "
            "World Value Mapping, in its units) (default: display)"
        ),
    )
    add_plan_options(cmd, on_irregular="split", include=False)
    add_source_options(cmd)
    cmd.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="KEY",
        help="also carry this header field into sidecars, Zarr attrs and the manifest: a "
        "keyword (RepetitionTime) or a tag number for a private one (0019,100C); repeatable",
    )
    cmd.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on this dask.distributed scheduler (tcp://host:8786), one task per series (or batch of small series); "
        "DEST must be writable by every worker",
    )
    cmd.add_argument("--no-compress", action="store_true", help="write .nii, uncompressed Zarr")
    cmd.add_argument("--no-resume", action="store_true", help="convert everything again")
    cmd.set_defaults(func=_convert)


def _spacing(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give mm as 1.5 or 3,1,1") from None


def _window(text: str) -> tuple[float, float] | bool:
    if text.lower() == "auto":
        return True
    try:
        center, width = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give center,width (40,400) or auto") from None
    return center, width


def _convert(args: argparse.Namespace) -> int:
    from dicomxr.conversion import ConvertError, convert
    from dicomxr.errors import DicomxrError

    split = None if args.split.lower() in ("none", "") else args.split
    client = None
    try:
        if args.scheduler:
            from distributed import Client

            client = Client(args.scheduler, timeout="30s")
        report = convert(
            args.source,
            args.dest,
            format=args.format,
            template=args.template,
            split=split,
            deidentify=args.deidentify,
            date_shift=args.date_shift,
            orientation=args.orientation,
            spacing=args.spacing,
            window=args.window,
            dtype=args.dtype,
            compress=not args.no_compress,
            scaling=args.scaling,
            resume=not args.no_resume,
            progress=False if args.no_progress else None,
            on_irregular=args.on_irregular,
            on_duplicate=args.on_duplicate,
            merge_runs=args.merge_runs,
            recursive=not args.no_recursive,
            storage_options=args.storage_options,
            keys=args.key or None,
            client=client,
        )
    except (ConvertError, DicomxrError, ValueError, OSError, ImportError) as exc:
        print_error("convert", exc)
        return 2
    finally:
        if client is not None:
            client.close()
    print(report)
    if not (report.done or report.skipped or report.failed):
        print_error("convert", f"no image series found in {args.source!r}")
        return 1
    return 0 if report.ok else 1
