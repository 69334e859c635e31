"""One volume per series, merged back into one series (issue 11, item 4).

Siemens XA classic exports write each fMRI volume as its own series (new SeriesInstanceUID,
consecutive SeriesNumbers, identical geometry and protocol). There is no such export in the
shared corpora, so the cohort is made from a real 4D series: the embedded sample (Philips
pCASL, 3 time points x label/control x 40 slices) split with pydicom into one series per
volume, in acquisition order. With ``merge_runs=True`` the merged array must equal the
original 4D load (values, dims, coordinates, affine); without it the folder holds six
series and the error says how to merge them. dcm2niix (the reference converter) keeps such
series apart, one 3D file each, with and without ``-m y``: checked here too, because that
is why merging is opt-in.

A second cohort from 12 slices of the real Philips CT, repeated as three series whose
volumes nothing tells apart (same times), checks that the SeriesNumber order becomes the
``time`` order; series that differ in protocol, geometry or numbering are never merged.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

import dicomxr
from dicomxr.api import list_series
from dicomxr.runs import find_runs
from reference import dcm2niix_exe


@pytest.fixture(scope="module")
def original():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dicomxr.open_series(dicomxr.data.sample_path(), chunks=None)


@pytest.fixture(scope="module")
def split_cohort(tmp_path_factory, original) -> Path:
    """The sample, one series per volume: new SeriesInstanceUIDs, consecutive numbers."""
    out = tmp_path_factory.mktemp("xa_classic")
    paths = original["path"].values  # (time, label, slice)
    volumes = paths.reshape(-1, paths.shape[-1])
    base = int(original.attrs["SeriesNumber"])
    for k, files in enumerate(volumes):
        uid = pydicom.uid.generate_uid()
        folder = out / f"S{base + k}"
        folder.mkdir()
        for path in files:
            ds = pydicom.dcmread(path)
            ds.SeriesInstanceUID = uid
            ds.SeriesNumber = base + k
            ds.save_as(folder / Path(path).name)
    return out


def test_without_merge_the_volumes_are_separate_series(split_cohort: Path, original) -> None:
    plans = list_series(split_cohort)
    assert len(plans) == 6 and all(p.dims == ("slice",) for p in plans)
    (run,) = find_runs(plans)
    assert [p.attrs["SeriesNumber"] for p in run] == list(range(1903, 1909))
    with pytest.raises(dicomxr.MultipleSeriesError, match=r"merge_runs=True") as err:
        dicomxr.open_series(split_cohort)
    assert "SeriesNumber 1903-1908 (6 volumes)" in str(err.value)


def test_dcm2niix_keeps_them_apart(split_cohort: Path, tmp_path: Path) -> None:
    for flags in ((), ("-m", "y")):
        out = tmp_path / ("m" if flags else "default")
        out.mkdir()
        subprocess.run(
            [dcm2niix_exe(), *flags, "-b", "n", "-z", "n", "-f", "%s", "-o", str(out),
             str(split_cohort)],
            capture_output=True, check=True, timeout=300,
        )  # fmt: skip
        assert sorted(p.name for p in out.glob("*.nii")) == [f"{n}.nii" for n in range(1903, 1909)]


def test_merged_equals_the_original_4d_load(split_cohort: Path, original) -> None:
    merged = dicomxr.open_series(split_cohort, merge_runs=True, chunks=None)
    assert merged.dims == original.dims == ("time", "label", "slice", "row", "col")
    assert np.array_equal(merged.values, original.values)
    assert np.allclose(merged.dicom.affine, original.dicom.affine)
    for name in ("time", "label", "slice", "SOPInstanceUID", "AcquisitionTime", "position_z"):
        assert np.array_equal(merged[name].values, original[name].values), name
    # which series each volume came from
    assert merged["SeriesNumber"].dims == ("time", "label")
    assert merged["SeriesNumber"].values.tolist() == [[1903, 1904], [1905, 1906], [1907, 1908]]
    listed = json.loads(merged.attrs["merged_series"])
    assert [item["SeriesNumber"] for item in listed] == list(range(1903, 1909))
    assert len({item["SeriesInstanceUID"] for item in listed}) == 6


def test_open_study_and_convert_merge_too(split_cohort: Path, original, tmp_path: Path) -> None:
    tree = dicomxr.open_study(split_cohort, merge_runs=True)
    (leaf,) = tree.leaves
    assert leaf.dataset["image"].shape == original.shape
    report = dicomxr.convert(
        split_cohort, tmp_path / "out", merge_runs=True, progress=False, split=None
    )
    assert len(report.done) == 1


def _ct_runs(philips_ct: Path, out: Path, *, n_runs: int = 3, n_slices: int = 8) -> Path:
    """``n_runs`` series of the same slices (new UIDs), volume k's pixels shifted by 10 k."""
    files = sorted(philips_ct.glob("I*"), key=lambda p: int(p.name[1:]))[:n_slices]
    for k in range(n_runs):
        uid = pydicom.uid.generate_uid()
        for f in files:
            ds = pydicom.dcmread(f)
            ds.SeriesInstanceUID = uid
            ds.SeriesNumber = 10 + k
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            ds.PixelData = (ds.pixel_array + 10 * k).astype(ds.pixel_array.dtype).tobytes()
            folder = out / f"run{k}"
            folder.mkdir(parents=True, exist_ok=True)
            ds.save_as(folder / f.name)
    return out


def test_nothing_tells_volumes_apart_series_order_is_time(philips_ct, tmp_path) -> None:
    folder = _ct_runs(philips_ct, tmp_path / "ct")
    with warnings.catch_warnings():
        warnings.simplefilter("error", dicomxr.GeometryWarning)
        merged = dicomxr.open_series(folder, merge_runs=True, chunks=None)
    assert merged.dims == ("time", "slice", "row", "col") and merged.sizes["time"] == 3
    first = dicomxr.open_series(folder, series=10, chunks=None)
    for k in range(3):
        assert np.array_equal(merged.isel(time=k).values, first.values + 10 * k)
    assert merged["SeriesNumber"].values.tolist() == [10, 11, 12]


def test_what_is_not_a_run_is_not_merged(philips_ct, tmp_path) -> None:
    folder = _ct_runs(philips_ct, tmp_path / "ct", n_runs=4)
    # series 11: another protocol; series 13: one slice fewer
    for f in (folder / "run1").iterdir():
        ds = pydicom.dcmread(f)
        ds.SeriesDescription = "another protocol"
        ds.save_as(f)
    last = sorted((folder / "run3").iterdir())[-1]
    last.unlink()
    plans = list_series(folder, merge_runs=True)
    assert sorted(p.attrs["SeriesNumber"] for p in plans) == [10, 11, 12, 13]
    assert all(p.dims == ("slice",) for p in plans)
    # numbers that are not consecutive are no run either
    shutil.rmtree(folder / "run1")
    assert len(list_series(folder, merge_runs=True)) == 3


def test_cli_merge_runs(split_cohort: Path, capsys) -> None:
    from dicomxr.cli import main

    assert main(["info", str(split_cohort), "--merge-runs"]) == 0
    out = capsys.readouterr().out
    assert "run of 6 series merged" in out and "time" in out


def test_engine_merge_runs(split_cohort: Path, original) -> None:
    import xarray as xr

    ds = xr.open_dataset(split_cohort, engine="dicom", merge_runs=True)
    assert ds["image"].dims == original.dims
    assert np.array_equal(ds["image"].values, original.values)


def test_cli_scan_names_the_run(split_cohort: Path, capsys) -> None:
    from dicomxr.cli import main

    assert main(["scan", str(split_cohort)]) == 0
    assert "series 1903-1908 look like the 6 volumes of one run" in capsys.readouterr().out
    assert main(["scan", str(split_cohort), "--merge-runs"]) == 0
    assert "time,label,slice" in capsys.readouterr().out
