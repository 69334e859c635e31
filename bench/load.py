"""Load benchmark: dicomxr against a plain read(), a pydicom loop and SimpleITK.

Run from the project root (warm cache, one variant per subprocess so memory is measured
cleanly)::

    python bench/load.py                 # Philips 140 x 512^2 CT + a 300 x 512^2 phantom
    python bench/load.py --repeat 5 --only philips

Printed per series, for both lazy paths, open + load together:

* (open + load) time / plain ``read()`` of the same files        (goal <= 1.3)
  - ``[open_series .values]``: the default (dask, one frame per chunk): the untouched array's
    full compute is one threaded read of every frame into one preallocated array
    (``dicomxr._array.FullRead``)
  - ``[open_series .compute()]``: the same through ``DataArray.compute()``
  - ``[open_dataset .values]``: ``xr.open_dataset(d, engine="dicom")`` without chunks: no
    dask at all, xarray's lazy indexing over the same backend array
  - ``[.dicom.load()]``: the accessor (``dask.array.store`` into one array)
  - ``[(image + 0) .values]``: for comparison, dask's own per-frame compute (one task per
    frame, then a concatenation), what any operation on the array computes
* peak RSS / array bytes                                          (goal <= 1.1)
* frames read by one ``.isel(slice=k).values`` after the open, and after
  ``.dicom.reorient("RAS")``                                      (goal 1)
* speed-up over a pydicom ``dcmread`` + ``pixel_array`` + ``np.stack`` loop (goal >= 4)
* speed-up over SimpleITK ``ImageSeriesReader``                   (goal >= 5)
* lazy open time / a pydicom ``stop_before_pixels`` loop          (goal <= 0.33)

Times are the best of ``--repeat`` runs inside one process (warm page cache); a dicomxr
variant times the open and the load together. "Peak RSS" is the growth of the process's peak
resident set during the *first* open + load, over the resident set just before it (after
imports): the memory the load itself costs, not the interpreter's. The machine is shared, so
the numbers are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DICOMXR_TEST_DATA", ROOT.parent / "shared" / "data"))
PHILIPS = DATA / "dcm_qa_ct" / "In" / "Philips" / "S21570" / "S2020"

VARIANTS = (
    "raw",
    "headers",
    "pydicom",
    "sitk",
    "dicomxr_open",
    "dicomxr_values",
    "dicomxr_compute",
    "engine_values",
    "dicomxr_fast",
    "dicomxr_frames",
    "isel_reads",
)


def _files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if p.is_file() and p.name != "DIRFILE")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    """Reset the peak resident set (VmHWM) to the current one (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _run_variant(variant: str, folder: Path, repeat: int) -> dict:
    """Inside the subprocess: time one variant, measure the first load's memory."""
    import numpy as np

    files = _files(folder)
    if variant == "raw":

        def job():
            out = []
            for f in files:
                with open(f, "rb") as fh:
                    out.append(fh.read())
            return out

    elif variant == "headers":
        import pydicom

        def job():
            return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]

    elif variant == "pydicom":
        import pydicom

        def job():
            return np.stack([pydicom.dcmread(f).pixel_array for f in files])

    elif variant == "sitk":
        import SimpleITK as sitk

        def job():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
            return sitk.GetArrayFromImage(reader.Execute())

    elif variant == "dicomxr_open":
        import dicomxr

        def job():
            return dicomxr.open_series(folder)

    elif variant == "dicomxr_values":
        import dicomxr

        def job():
            # the default: one frame per chunk; the full compute is one threaded read
            return dicomxr.open_series(folder).values

    elif variant == "dicomxr_compute":
        import dicomxr

        def job():
            return dicomxr.open_series(folder).compute().data

    elif variant == "engine_values":
        import xarray as xr

        def job():
            ds = xr.open_dataset(folder, engine="dicom")  # no chunks: no dask
            if ds["image"].chunks is not None:
                raise RuntimeError("xr.open_dataset(engine='dicom') returned dask")
            return ds["image"].values

    elif variant == "dicomxr_fast":
        import dicomxr

        def job():
            return dicomxr.open_series(folder).dicom.load().data

    elif variant == "dicomxr_frames":
        import dicomxr

        def job():
            # an operation first: dask's per-frame compute, then a concatenation
            return (dicomxr.open_series(folder) + 0).values

    elif variant == "isel_reads":
        return _isel_reads(folder)

    else:
        raise ValueError(variant)

    if variant.startswith(("dicomxr", "engine")):
        _warm_up(folder)
    _reset_peak()
    before = _status_kib("VmRSS")
    t0 = time.perf_counter()
    result = job()
    times = [time.perf_counter() - t0]
    grown = max(_status_kib("VmHWM") - before, 0) * 1024
    nbytes = int(getattr(result, "nbytes", 0) or 0)
    del result
    for _ in range(repeat - 1):
        t0 = time.perf_counter()
        result = job()
        times.append(time.perf_counter() - t0)
        del result
    return {"variant": variant, "time": min(times), "peak_growth": grown, "nbytes": nbytes}


def _warm_up(folder: Path) -> None:
    """Import what both lazy paths import on first use (one frame read), so that the
    measured open + load pays for the open and the load, not for imports."""
    import xarray as xr

    import dicomxr

    dicomxr.open_series(folder).isel(slice=0).values  # noqa: B018
    xr.open_dataset(folder, engine="dicom")["image"].isel(slice=0).values  # noqa: B018


def _isel_reads(folder: Path) -> dict:
    """Frames read by one ``.isel(slice=k).values`` after each lazy open (goal: 1 each)."""
    import xarray as xr

    import dicomxr
    from dicomxr import pixels

    count = [0]
    real = pixels.read_frame

    def counting(ref, **kwargs):
        count[0] += 1
        return real(ref, **kwargs)

    pixels.read_frame = counting
    reads = {}
    opens = {
        "open_series": lambda: dicomxr.open_series(folder),
        "open_dataset": lambda: xr.open_dataset(folder, engine="dicom")["image"],
        "reorient RAS": lambda: dicomxr.open_series(folder).dicom.reorient("RAS"),
    }
    for name, open_ in opens.items():
        image = open_()
        count[0] = 0
        image.isel(slice=image.sizes["slice"] // 2).values  # noqa: B018
        reads[name] = count[0]
    return {"variant": "isel_reads", "reads": reads, "time": 0.0, "peak_growth": 0, "nbytes": 0}


def _measure(variant: str, folder: Path, repeat: int) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--folder", str(folder)]
    cmd += ["--repeat", str(repeat)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
    if proc.returncode != 0:
        return {"variant": variant, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _report(label: str, folder: Path, repeat: int) -> dict:
    # warm the page cache once
    for f in _files(folder):
        Path(f).read_bytes()
    res = {v: _measure(v, folder, repeat) for v in VARIANTS}
    print(f"\n== {label}: {folder} ({len(_files(folder))} files)")
    for v, r in res.items():
        if v == "isel_reads" and "error" not in r:
            continue
        if "error" in r:
            print(f"  {v:14s} FAILED: {r['error']}")
        else:
            print(
                f"  {v:14s} {r['time']:8.3f} s   peak RSS growth {r['peak_growth'] / 2**20:7.1f} MiB"
            )
    t = {v: r.get("time", float("nan")) for v, r in res.items()}
    nbytes = max(int(r.get("nbytes") or 0) for r in res.values())

    def rss(v: str) -> float:
        return res[v].get("peak_growth", float("nan")) / nbytes if nbytes else float("nan")

    paths = {
        "open_series .values": "dicomxr_values",
        "open_series .compute()": "dicomxr_compute",
        "open_dataset .values": "engine_values",
        ".dicom.load()": "dicomxr_fast",
        "(image + 0) .values": "dicomxr_frames",
    }
    ratios: dict[str, tuple[float, str]] = {}
    for label_, v in paths.items():
        ratios[f"(open + load) / raw read [{label_}]"] = (t[v] / t["raw"], "<= 1.3")
    for label_, v in paths.items():
        ratios[f"peak RSS / array bytes [{label_}]"] = (rss(v), "<= 1.1")
    ratios["speed-up vs pydicom loop [open_series .values]"] = (
        t["pydicom"] / t["dicomxr_values"],
        ">= 4",
    )
    ratios["speed-up vs SimpleITK [open_series .values]"] = (
        t["sitk"] / t["dicomxr_values"],
        ">= 5",
    )
    ratios["lazy open / pydicom header loop"] = (t["dicomxr_open"] / t["headers"], "<= 0.33")
    ratios["pydicom loop peak RSS / array bytes"] = (rss("pydicom"), "-")
    print(f"  array: {nbytes / 2**20:.1f} MiB")
    for name, (value, goal) in ratios.items():
        print(f"  {name:50s} {value:7.2f}   (goal {goal})")
    for name, n in res["isel_reads"].get("reads", {}).items():
        print(f"  {'frames read by one .isel(slice=k) [' + name + ']':50s} {n:7d}   (goal 1)")
    return {"label": label, "times": t, "ratios": {k: v for k, (v, _) in ratios.items()}}


def _phantom(dest: Path, n: int = 300) -> Path:
    import numpy as np

    from dicomxr.phantom import phantom_volume, write_series

    folder = dest / f"phantom_{n}"
    if not folder.exists():
        # phantom_volume works in float64 on the whole grid: build 300 slices from blocks
        # like most CT: 12 stored bits in uint16, intercept -1024 (int16 holds the result)
        block = phantom_volume((10, 512, 512), dtype="uint16") // 2
        volume = np.concatenate([block + np.uint16(5 * i) for i in range(-(-n // 10))])[:n]
        volume = np.minimum(volume, 4095).astype(np.uint16)
        write_series(
            folder,
            volume,
            rescale=(1.0, -1024.0),
            extra={"BitsStored": 12, "HighBit": 11},
        )
    return folder


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--child``, one variant in this process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("philips", "phantom"))
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_run_variant(args.child, args.folder, args.repeat)))
        return 0
    results = []
    if args.only in (None, "philips"):
        if not PHILIPS.is_dir():
            print(f"Philips CT not found at {PHILIPS}: set DICOMXR_TEST_DATA", file=sys.stderr)
            return 2
        results.append(_report("Philips CT 140 x 512^2", PHILIPS, args.repeat))
    if args.only in (None, "phantom"):
        with tempfile.TemporaryDirectory(prefix="dicomxr-bench-") as tmp:
            results.append(_report("phantom 300 x 512^2", _phantom(Path(tmp)), args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
