"""Catalog scan time against a pydicom ``dcmread(stop_before_pixels=True)`` loop.

Run on demand (not a test)::

    python bench/scan.py [FOLDER] [--repeat N]

FOLDER defaults to the 140-slice Philips head CT of the real corpora
(``$DICOMXR_TEST_DATA`` or ``../shared/data``). Prints the best-of-N wall time of each
and the ratio ``scan / pydicom header loop``; issue 2's goal for the whole lazy open is
<= 0.33, so the scan itself should stay well below it.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _default_folder() -> Path:
    data = Path(os.environ.get("DICOMXR_TEST_DATA", ROOT.parent / "shared" / "data"))
    return data / "dcm_qa_ct" / "In" / "Philips" / "S21570" / "S2020"


def _best(fn, repeat: int, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeat):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return min(times)


def main() -> None:
    """Time both and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=_default_folder())
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    import pydicom

    import dicomxr
    from dicomxr.catalog import _read_one

    folder: Path = args.folder
    files = sorted(str(p) for p in folder.rglob("*") if p.is_file())
    df = dicomxr.scan(folder, warn=False)
    instances = list(df["path"])

    def pydicom_loop() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for path in instances:
                pydicom.dcmread(path, stop_before_pixels=True)

    def scan() -> None:
        dicomxr.scan(folder, warn=False, progress=False)

    def read_rows_only() -> None:
        memo: dict = {}  # as scan() does: repeated values converted once
        for path in instances:
            _read_one(path, os.stat(path), memo)

    pydicom_loop()  # warm the page cache and imports
    scan()
    print(f"folder: {folder} ({len(files)} files, {len(instances)} instances)")
    # wall time is what users see; CPU time of this process is steadier on a busy machine
    for label, clock in (("wall", time.perf_counter), ("cpu", time.process_time)):
        t_pydicom = _best(pydicom_loop, args.repeat, clock)
        t_scan = _best(scan, args.repeat, clock)
        t_rows = _best(read_rows_only, args.repeat, clock)
        print(f"[{label}] pydicom dcmread(stop_before_pixels=True) loop: {t_pydicom:.4f} s")
        print(f"[{label}] dicomxr.scan (walk + headers + DataFrame):      {t_scan:.4f} s")
        print(f"[{label}]   of which header reading:                     {t_rows:.4f} s")
        print(f"[{label}] ratio scan / pydicom loop: {t_scan / t_pydicom:.3f}")


if __name__ == "__main__":
    main()
