"""Transforms benchmark: resampling to 1 mm isotropic (linear) against SimpleITK and MONAI.

Run from the project root (warm page cache, each variant in its own subprocess, one run)::

    python bench/transforms.py                 # the Philips 140 x 512^2 CT and the 4D pCASL sample
    python bench/transforms.py --only ct

MONAI needs torch: ``pip install torch==2.13.0`` (a CPU wheel) first, then ``pip install monai``
(or ``pip install -e ".[bench]"`` after torch). Without them the MONAI lines say so.

Printed per series, each variant timing open + read + resample together:

* ``dicomxr``: ``open_series(...).dicom.resample(spacing=1.0).values`` (lazy slabs, dask threads)
* ``dicomxr store``: the same graph streamed into one preallocated array with
  :func:`dask.array.store`: each slab is dropped once copied, so the output is held once
* ``SimpleITK``: ``ImageSeriesReader`` + ``sitk.Resample`` (linear) onto the very grid dicomxr
  makes (4D: volume by volume, each volume's files read by ImageSeriesReader)
* ``MONAI``: ``LoadImaged`` (``PydicomReader``) + ``EnsureChannelFirstd`` +
  ``Spacingd(pixdim=1.0, mode="bilinear")`` (4D: volume by volume); MONAI picks its own
  grid (its shape may differ by a voxel)
* the same chained after ``reorient("RAS")`` (SimpleITK: ``DICOMOrient(image, "RAS")``,
  MONAI: ``Orientationd(axcodes="RAS")``)

Each variant runs in phases, timed and measured one by one: dicomxr ``open`` (the header
scan) then ``resample`` (pixel reads + interpolation; before it, a resample of the first four
slices, untimed, takes the compute path's lazy imports out of the figures), SimpleITK
``read`` then ``resample``, MONAI ``load`` then ``resample``.

Ratios: time of SimpleITK / dicomxr (goal >= 1), MONAI / dicomxr (goal >= 2) - open +
resample, and dicomxr's resample phase alone (it reads the pixels; only the header scan is
left out) - and the resample phase's peak RSS growth / output array bytes (goal <= 1.5). "Peak RSS growth" is the rise of the
process's peak resident set during the run over the resident set just before it (after the
imports): what the resampling costs, not the interpreter. The machine is shared: noisy.
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
CT = DATA / "dcm_qa_ct" / "In" / "Philips" / "S21570" / "S2020"
SPACING = 1.0

VARIANTS = (
    "dicomxr",
    "dicomxr_store",
    "sitk",
    "monai",
    "dicomxr_ras",
    "dicomxr_ras_store",
    "sitk_ras",
    "monai_ras",
)


# --------------------------------------------------------------------------------------
# inside a subprocess


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


class _Phases:
    """Times and peak RSS growth of the phases of one run (each over the RSS before it)."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.growth: dict[str, int] = {}
        self.start = _status_kib("VmRSS")
        self.peak = 0  # growth of the whole run over its start (bytes)

    def run(self, name: str, func, *args):
        _reset_peak()
        before = _status_kib("VmRSS")
        t0 = time.perf_counter()
        result = func(*args)
        self.times[name] = time.perf_counter() - t0
        self.growth[name] = max(_status_kib("VmHWM") - before, 0) * 1024
        self.peak = max(self.peak, (before - self.start) * 1024 + self.growth[name])
        return result


def _dicomxr_job(folder: str, ras: bool, store: bool):
    import numpy as np

    import dicomxr

    def open_(path):
        da = dicomxr.open_series(path)
        return da.dicom.reorient("RAS") if ras else da

    def resample(da):
        out = da.dicom.resample(spacing=SPACING).data
        if not store:
            return out.compute()
        import dask.array as dsa

        target = np.empty(out.shape, out.dtype)
        dsa.store(out, target, lock=False)
        return target

    def job(phases: _Phases):
        da = phases.run("open", open_, folder)
        # first use of the compute path (dask's and scipy's lazy imports): not the resampling's
        resample(da.isel(slice=slice(0, 4)))
        return phases.run("resample", resample, da)

    return job


def _sitk_grid(sitk, grid: dict):
    import numpy as np

    affine = np.asarray(grid["affine"])
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image = sitk.Image([int(n) for n in grid["shape"][::-1]], sitk.sitkFloat32)
    image.SetSpacing([float(s) for s in spacing[::-1]])
    image.SetOrigin([float(v) for v in affine[:3, 3]])
    image.SetDirection([float(v) for v in (affine[:3, :3] / spacing)[:, ::-1].ravel()])
    return image


def _sitk_job(volumes: list[list[str]], grid: dict, ras: bool):
    import numpy as np
    import SimpleITK as sitk

    def read(files):
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        image = reader.Execute()
        return sitk.DICOMOrient(image, "RAS") if ras else image

    def resample(images):
        reference = _sitk_grid(sitk, grid)
        kernel, pixel = sitk.sitkLinear, sitk.sitkFloat32
        out = [
            sitk.GetArrayFromImage(
                sitk.Resample(image, reference, sitk.Transform(), kernel, 0.0, pixel)
            )
            for image in images
        ]
        return np.stack(out) if len(out) > 1 else out[0]

    def job(phases: _Phases):
        images = phases.run("read", lambda: [read(files) for files in volumes])
        return phases.run("resample", resample, images)

    return job


def _monai_job(folders: list[str], ras: bool):
    import numpy as np
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

    load = Compose(
        [LoadImaged(keys="image", reader="PydicomReader"), EnsureChannelFirstd(keys="image")]
    )
    steps = [Orientationd(keys="image", axcodes="RAS")] if ras else []
    spacing = Compose([*steps, Spacingd(keys="image", pixdim=SPACING, mode="bilinear")])

    def resample(items):
        out = [np.asarray(spacing(item)["image"]) for item in items]
        return np.stack(out) if len(out) > 1 else out[0]

    def job(phases: _Phases):
        items = phases.run("load", lambda: [load({"image": f}) for f in folders])
        return phases.run("resample", resample, items)

    return job


def _run_variant(variant: str, spec: dict) -> dict:
    ras = "ras" in variant
    if variant.startswith("dicomxr"):
        job = _dicomxr_job(spec["folder"], ras, variant.endswith("store"))
    elif variant.startswith("sitk"):
        job = _sitk_job(spec["volumes"], spec["grid_ras" if ras else "grid"], ras)
    else:
        try:
            job = _monai_job(spec["volume_dirs"], ras)
        except ImportError as exc:
            return {"variant": variant, "error": f"{exc} (install torch==2.13.0, then monai)"}
    phases = _Phases()
    result = job(phases)
    return {
        "variant": variant,
        "time": sum(phases.times.values()),
        "peak_growth": phases.peak,
        "phases": phases.times,
        "phase_growth": phases.growth,
        "nbytes": int(result.nbytes),
        "shape": list(result.shape),
    }


# --------------------------------------------------------------------------------------
# the parent


def _spec(folder: Path, tmp: Path) -> dict:
    """What every variant needs: the files of each volume, the output grids, volume folders."""
    import numpy as np

    import dicomxr
    from dicomxr.resample import output_grid

    da = dicomxr.open_series(folder)
    extra = [d for d in da.dims if d not in ("slice", "row", "col")]
    paths = da.coords["path"].transpose(*extra, "slice").values
    volumes = [list(map(str, v)) for v in np.asarray(paths).reshape(-1, da.sizes["slice"])]
    volume_dirs = []
    for i, files in enumerate(volumes):
        target = tmp / f"volume_{i}"
        target.mkdir()
        for f in files:
            (target / Path(f).name).symlink_to(f)
        volume_dirs.append(str(target))
    grids = {}
    for name, image in (("grid", da), ("grid_ras", da.dicom.reorient("RAS"))):
        affine, shape = output_grid(image, spacing=SPACING)
        grids[name] = {"affine": affine.tolist(), "shape": list(shape)}
    for files in volumes:  # warm the page cache once
        for f in files:
            Path(f).read_bytes()
    return {"folder": str(folder), "volumes": volumes, "volume_dirs": volume_dirs, **grids}


def _measure(variant: str, spec_path: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--spec", str(spec_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
    if proc.returncode != 0:
        return {"variant": variant, "error": " ".join(proc.stderr.strip().splitlines()[-1:])}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _report(label: str, folder: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="dicomxr-bench-") as tmp:
        spec = _spec(folder, Path(tmp))
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        res = {v: _measure(v, spec_path) for v in VARIANTS}
    print(f"\n== {label}: {folder}")
    for v, r in res.items():
        if "error" in r:
            print(f"  {v:18s} FAILED: {r['error']}")
            continue
        steps = ", ".join(
            f"{k} {t:.2f} s / {r['phase_growth'][k] / 2**20:.0f} MiB"
            for k, t in r["phases"].items()
        )
        print(
            f"  {v:18s} {r['time']:6.2f} s  peak RSS growth {r['peak_growth'] / 2**20:6.1f} MiB"
            f"  ({steps})  output {tuple(r['shape'])} {r['nbytes'] / 2**20:.1f} MiB"
        )
    for suffix, what in (("", "resample"), ("_ras", 'reorient("RAS") + resample')):
        mine = res[f"dicomxr{suffix}"]
        if "error" in mine:
            continue
        lines = []
        for other, goal in ((f"sitk{suffix}", ">= 1"), (f"monai{suffix}", ">= 2")):
            if "error" not in res[other]:
                ratio = res[other]["time"] / mine["time"]
                lines.append((f"{other} time / dicomxr time (open + resample)", ratio, goal))
                ratio = res[other]["time"] / mine["phases"]["resample"]
                lines.append(
                    (f"{other} time / dicomxr resample (pixel reads, no open)", ratio, goal)
                )
        for v in (f"dicomxr{suffix}", f"dicomxr{suffix}_store"):
            if "error" not in res[v]:
                ratio = res[v]["phase_growth"]["resample"] / res[v]["nbytes"]
                lines.append((f"resample peak RSS growth / output bytes [{v}]", ratio, "<= 1.5"))
        for other in (f"sitk{suffix}", f"monai{suffix}"):
            if "error" not in res[other]:
                ratio = res[other]["peak_growth"] / res[other]["nbytes"]
                lines.append((f"whole-run peak RSS growth / output bytes [{other}]", ratio, "-"))
        print(f"  -- {what}")
        for name, value, goal in lines:
            print(f"  {name:62s} {value:6.2f}   (goal {goal})")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--child``, one variant in this process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("ct", "pcasl"))
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_run_variant(args.child, json.loads(args.spec.read_text()))))
        return 0
    import dicomxr

    if args.only in (None, "ct"):
        if not CT.is_dir():
            print(f"Philips CT not found at {CT}: set DICOMXR_TEST_DATA", file=sys.stderr)
            return 2
        _report("Philips CT 140 x 512^2", CT)
    if args.only in (None, "pcasl"):
        _report("pCASL sample 3 x 2 x 40 x 96^2", dicomxr.data.sample_path())
    return 0


if __name__ == "__main__":
    sys.exit(main())
