"""Sub-commands ``dicomxr demo``, ``dicomxr scan`` and ``dicomxr info``.

``demo`` runs the main job end to end on the embedded sample (no network): open lazily,
show the plan and the geometry report, write a montage PNG and a NIfTI file.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

from dicomxr._cli_common import add_plan_options, add_source_options, cli_hints, print_error

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``demo``, ``scan`` and ``info`` to the ``dicomxr`` command line."""
    demo = subparsers.add_parser(
        "demo",
        help="open the embedded sample series lazily, report it, write a PNG and a NIfTI",
        description=(
            "Open the embedded sample (a real Philips pCASL 4D MR series, 240 files) lazily, "
            "print its series plan, geometry report and the lazy array, then write a montage "
            "PNG and a NIfTI file. Runs offline."
        ),
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("dicomxr-demo"),
        help="output folder (default: ./dicomxr-demo)",
    )
    demo.set_defaults(func=_demo)

    scan = subparsers.add_parser(
        "scan",
        help="list the series in a file, folder or DICOMDIR (headers only)",
        description="Scan DICOM headers and print one line per series (no pixel is read).",
    )
    scan.add_argument("path", help="file, folder, glob, DICOMDIR, zip file or URL (s3://...)")
    add_source_options(scan)
    add_storage_options(scan)
    scan.add_argument("--csv", type=Path, help="also write the per-file catalog to this CSV")
    add_plan_options(scan)
    scan.add_argument(
        "--skipped", action="store_true", help="list every skipped file with its reason"
    )
    scan.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="KEY",
        help="also read this header field into the --csv catalog: a keyword "
        "(RepetitionTime) or a tag number for private ones (0019,100C); repeatable",
    )
    scan.set_defaults(func=_scan)

    info = subparsers.add_parser(
        "info",
        help="show the series plan and geometry report (headers only)",
        description=(
            "Print the plan (dimensions, shape, how frames are ordered, what was set apart) and "
            "the geometry report of a series. Without --series, every series in PATH."
        ),
    )
    info.add_argument("path", help="file, folder, glob, DICOMDIR, zip file or URL (s3://...)")
    add_storage_options(info)
    info.add_argument(
        "--series",
        help="SeriesNumber, key, SeriesInstanceUID or part of the description",
    )
    add_source_options(info)
    add_plan_options(info)
    info.set_defaults(func=_info)


def add_storage_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--storage-options JSON`` (fsspec options of a URL or zip source)."""
    parser.add_argument(
        "--storage-options",
        type=_json_object,
        default=None,
        metavar="JSON",
        help=(
            "fsspec options for a URL source, as JSON: '{\"anon\": true}', "
            '\'{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}\' '
            "(credentials are best left to the environment, e.g. AWS_PROFILE)"
        ),
    )


def _json_object(text: str) -> dict[str, Any]:
    import json

    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object {{...}}, got {text!r}")
    return value


def _print_table(rows: list[dict[str, Any]]) -> None:
    header = ("number", "description", "modality", "SOP class", "frames", "dims", "shape", "key")
    body = [
        (
            "" if r["SeriesNumber"] is None else str(r["SeriesNumber"]),
            r["SeriesDescription"][:40],
            r["Modality"],
            r["SOPClass"].removesuffix(" Storage"),
            str(r["frames"]),
            r["dims"],
            r["shape"],
            r["key"],
        )
        for r in rows
    ]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for b in body:
        print("  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip())


def _scan(args: argparse.Namespace) -> int:
    from dicomxr.api import list_series, series_table
    from dicomxr.catalog import skipped

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped files are summarised below
        catalog = _catalog(args)
        plans = list_series(catalog, **_policies(args))
    elapsed = time.perf_counter() - start
    rows = series_table(plans)
    if rows:
        _print_table(rows)
    else:
        print("no image series found")
    skip = skipped(catalog)
    print(
        f"\n{len(catalog)} DICOM file(s), {len(plans)} series, {len(skip)} skipped "
        f"({elapsed:.2f} s, headers only)"
    )
    if len(skip):
        if args.skipped:
            for path, reason in zip(skip["path"], skip["reason"], strict=True):
                print(f"  skipped {path}: {reason}")
        else:
            print("  (list them with --skipped)")
    if not args.merge_runs:
        from dicomxr.runs import find_runs

        for run in find_runs(plans):
            numbers = [p.attrs.get("SeriesNumber") for p in run]
            print(
                f"series {numbers[0]}-{numbers[-1]} look like the {len(run)} volumes of one run "
                "(merge them with --merge-runs)"
            )
    set_apart = plans.set_apart
    if len(set_apart):
        counts = set_apart.groupby("reason").size()
        print(f"{len(set_apart)} frame(s) set apart (not in any series above):")
        for reason, n in counts.items():
            print(f"  {n} x {cli_hints(reason)}")
        print("  (list localizers / secondary captures as series with --include)")
    if args.csv:
        catalog.to_csv(args.csv, index=False)
        print(f"catalog written to {args.csv}")
    return 0


def _catalog(args: argparse.Namespace) -> Any:
    from dicomxr.catalog import scan

    return scan(
        args.path,
        recursive=not args.no_recursive,
        progress=False if args.no_progress else None,
        storage_options=args.storage_options,
        keys=getattr(args, "key", None) or None,
    )


def _policies(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "on_irregular": args.on_irregular,
        "on_duplicate": args.on_duplicate,
        "include": args.include,
        "merge_runs": args.merge_runs,
    }


def _info(args: argparse.Namespace) -> int:
    from dicomxr.api import list_series, select_plan
    from dicomxr.errors import DicomxrError, NoSeriesError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plans = list_series(_catalog(args), **_policies(args))
    if args.series is not None:
        try:
            plans = [select_plan(plans, args.series, args.path)]
        except DicomxrError as exc:  # a usage error: exit 2, as argparse's own
            print_error("info", exc)
            return 2
    if not plans:
        raise NoSeriesError(f"no image series found in {args.path!r}")
    print(
        f"policies: on_irregular={args.on_irregular}, on_duplicate={args.on_duplicate}"
        + (f", include={','.join(args.include)}" if args.include else "")
        + f"; {len(plans)} series\n"
    )
    for i, plan in enumerate(plans):
        if i:
            print("\n" + "-" * 72 + "\n")
        text = plan.describe()
        print(text)
        if "GeometryReport" not in text:
            print()
            print(plan.geometry)
    return 0


def _demo(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dicomxr import data
    from dicomxr.api import list_series, open_series

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    folder = data.sample_path()
    print(f"sample: {data.SAMPLES[data.DEFAULT_SAMPLE].description}")
    print(f"        unpacked at {folder}\n")

    start = time.perf_counter()
    plans = list_series(folder)
    plan = plans[0]
    print("== series plan and geometry report (headers only, no pixel read yet)")
    text = plan.describe()
    print(text)
    if "GeometryReport" not in text:
        print(plan.geometry)
    da = open_series(plan)
    print(f"\n== lazy DataArray (opened in {time.perf_counter() - start:.2f} s)")
    print(da)

    extra = {d: 0 for d in da.dims if d not in ("slice", "row", "col", "channel")}
    png = out / "montage.png"
    fig = da.dicom.plot(montage=True, **extra)
    fig.savefig(png, dpi=80)
    plt.close(fig)
    print(
        f"\nwrote {png}  (montage of {', '.join(f'{k}={v}' for k, v in extra.items()) or 'the series'})"
    )

    nii = out / "sample.nii.gz"
    start = time.perf_counter()
    da.dicom.to_nifti(nii)
    extra_dims = [d for d in da.dims if d not in ("slice", "row", "col", "channel")]
    volumes = " x ".join(f"{d}={da.sizes[d]}" for d in extra_dims)
    print(
        f"wrote {nii}  ({time.perf_counter() - start:.2f} s; voxel axes col, row, slice"
        + (f", volumes {volumes} flattened ({extra_dims[-1]} fastest)" if extra_dims else "")
        + "; RAS affine:)"
    )
    import numpy as np

    from dicomxr.export.nifti import nifti_affine

    with np.printoptions(precision=3, suppress=True):
        print(nifti_affine(da.dicom.affine))
    return 0
