"""Planning time per enhanced file (and per classic instance) against pydicom's ``dcmread``.

Run on demand (not a test)::

    python bench/plan.py [--repeat N]

For every enhanced multi-frame file of the real corpora (``$DICOMXR_TEST_DATA`` or
``../shared/data``) and for the 140-slice Philips CT (classic, one file per slice) it prints,
best of N:

- ``plan``: :func:`dicomxr.plan_series` of the already scanned catalog (frame expansion,
  grouping, dimensions, grid, geometry, coordinates); it opens no file;
- ``header``: the catalog's one header pass of the file (:func:`dicomxr.catalog.read_header`,
  functional groups included);
- the anchor, pydicom's ``dcmread(path, stop_before_pixels=True)`` of the same file, and the
  ratios to it. Issue 10's goal: planning an enhanced file costs <= 5 ms.

The machine the figures come from may be shared: say so with any figure you report.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPORA = ("dcm_qa_ct", "dcm_qa_philips_enh", "dcm_qa_ts", "dicomParser", "suyashkumar_dicom")


def _data() -> Path:
    return Path(os.environ.get("DICOMXR_TEST_DATA", ROOT.parent / "shared" / "data"))


def _best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _enhanced_files(data: Path) -> list[str]:
    import dicomxr

    out: list[str] = []
    for corpus in CORPORA:
        df = dicomxr.scan(data / corpus, warn=False, progress=False)
        out += list(df.loc[df["is_enhanced"] & df["has_pixels"], "path"])
    return out


def _row(name: str, frames: int, plan: float, header: float, anchor: float) -> str:
    return (
        f"{name[-44:]:>44} {frames:>6} {plan * 1e3:>8.2f} {header * 1e3:>8.2f} "
        f"{anchor * 1e3:>8.2f} {plan / anchor:>7.3f} {header / anchor:>7.3f}"
    )


def main() -> None:
    """Time planning, the header pass and dcmread; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    import pydicom

    import dicomxr
    from dicomxr.catalog import read_header

    warnings.simplefilter("ignore")
    data = _data()
    print(
        f"{'file':>44} {'frames':>6} {'plan ms':>8} {'head ms':>8} {'dcmread':>8} "
        f"{'plan/dr':>7} {'head/dr':>7}"
    )
    plans = []
    for path in _enhanced_files(data):
        cat = dicomxr.scan(path, warn=False, progress=False)
        frames = int(cat["NumberOfFrames"].iat[0])
        plan = _best(lambda cat=cat: dicomxr.plan_series(cat), args.repeat)
        header = _best(lambda p=path: read_header(p), args.repeat)
        anchor = _best(lambda p=path: pydicom.dcmread(p, stop_before_pixels=True), args.repeat)
        plans.append(plan)
        print(_row(os.path.basename(path), frames, plan, header, anchor))
    ct = data / "dcm_qa_ct" / "In" / "Philips" / "S21570" / "S2020"
    cat = dicomxr.scan(ct, warn=False, progress=False)
    n = len(cat)
    plan = _best(lambda: dicomxr.plan_series(cat), args.repeat) / n
    header = _best(lambda: [read_header(p) for p in cat["path"]], args.repeat) / n
    anchor = (
        _best(
            lambda: [pydicom.dcmread(p, stop_before_pixels=True) for p in cat["path"]], args.repeat
        )
        / n
    )
    print(_row(f"classic CT, per instance of {n}", 1, plan, header, anchor))
    enh = dicomxr.scan(data / "dcm_qa_philips_enh" / "In" / "enh", warn=False, progress=False)
    n_enh = int((enh["is_enhanced"] & enh["has_pixels"]).sum())
    plan = _best(lambda: dicomxr.plan_series(enh), args.repeat)
    print(
        f"Philips enhanced folder ({len(enh)} objects, {n_enh} enhanced images) planned at "
        f"once: {plan * 1e3:.2f} ms, {plan / n_enh * 1e3:.2f} ms per enhanced file"
    )
    if plans:
        print(f"worst plan time of an enhanced file: {max(plans) * 1e3:.2f} ms (goal <= 5 ms)")


if __name__ == "__main__":
    main()
