"""dicomxr.convert and ``dicomxr convert``: a cohort to NIfTI + BIDS sidecars or one Zarr store.

References are independent of the code under test: nibabel and xarray reopen what was
written, pydicom reads the headers for RepetitionTime, and the de-identification check
takes PS3.15 Table E.1-1 from another package (dicom-anonymizer's transcription of it).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import types
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pyarrow  # noqa: F401 (the manifest; the 'convert' extra)
import pydicom
import pytest
import xarray as xr

import dicomxr
import dicomxr.cli
from dicomxr.api import list_series, open_series
from dicomxr.conversion import ConvertError, convert, render_name, split_pieces
from dicomxr.phantom import phantom_volume, write_series

_SPATIAL = ("slice", "row", "col")


# --------------------------------------------------------------------------------------
# helpers


def nifti_layout(da: xr.DataArray) -> np.ndarray:
    """The array as to_nifti lays it out: (col, row, slice[, volumes flattened C order][, rgb])."""
    colour = ["channel"] if "channel" in da.dims else []
    extra = [d for d in da.dims if d not in (*_SPATIAL, "channel")]
    values = np.asarray(da.transpose(*extra, *_SPATIAL, *colour).values)
    if extra:
        values = values.reshape((-1, *values.shape[len(extra) :]))
        return np.moveaxis(values, [0, 1, 2, 3], [3, 2, 1, 0])
    return np.moveaxis(values, [0, 1, 2], [2, 1, 0])


def assert_nifti_equals(path: Path, da: xr.DataArray) -> None:
    img = nib.load(path)
    got = np.asanyarray(img.dataobj)
    if got.dtype.names:  # RGB24
        got = np.stack([got[name] for name in got.dtype.names], axis=-1)
    want = nifti_layout(da)
    assert got.shape == want.shape
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-6)


def manifest(dest: Path) -> pd.DataFrame:
    return pd.read_parquet(dest / "manifest.parquet")


def done_rows(dest: Path) -> pd.DataFrame:
    m = manifest(dest)
    return m[m.status == "done"]


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    """Three small synthetic CT series of one patient (2 share a frame of reference)."""
    src = tmp_path / "src"
    for number in (1, 2, 3):
        write_series(
            src / f"s{number}",
            phantom_volume((4, 8, 6), seed=number),
            series_number=number,
            series_description=f"phantom {number}",
            study_uid="1.2.826.0.1.3680043.10.1187.1.77",
        )
    return src


# --------------------------------------------------------------------------------------
# NIfTI and Zarr outputs equal open_series


def test_sample_to_nifti_equals_open_series(sample_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    report = convert(sample_dir, dest, progress=False)
    assert report.ok and len(report.done) == 1
    row = done_rows(dest).iloc[0]
    da = open_series(sample_dir)
    assert_nifti_equals(dest / row.output, da)
    assert list(row.dims) == list(da.dims) and list(row["shape"]) == list(da.shape)
    sidecar = json.loads((dest / row.sidecar).read_text())
    header = pydicom.dcmread(da.coords["path"].values.ravel()[0], stop_before_pixels=True)
    assert sidecar["RepetitionTime"] == pytest.approx(float(header.RepetitionTime) / 1000)
    assert sidecar["EchoTime"] == pytest.approx(float(header.EchoTime) / 1000)
    assert sidecar["FlipAngle"] == pytest.approx(float(header.FlipAngle))
    assert sidecar["MagneticFieldStrength"] == pytest.approx(float(header.MagneticFieldStrength))
    assert sidecar["Manufacturer"] == header.Manufacturer
    assert sidecar["SeriesDescription"] == header.SeriesDescription
    assert len(sidecar["dicomxr"]["volumes"]) == da.sizes["time"] * da.sizes["label"]


def test_sample_to_zarr_equals_open_series(sample_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    report = convert(sample_dir, dest, format="zarr", progress=False)
    assert report.ok
    row = done_rows(dest).iloc[0]
    store, _, group = row.output.partition("/")
    assert store == "cohort.zarr"
    ds = xr.open_zarr(dest / store, group=group)
    da = open_series(sample_dir)
    image = ds["image"]
    assert image.dims == da.dims and image.dtype == da.dtype
    assert image.data.chunksize[: len(da.dims) - 2] == (1,) * (len(da.dims) - 2)
    np.testing.assert_array_equal(image.values, da.values)
    np.testing.assert_allclose(image["slice"].values, da["slice"].values)
    np.testing.assert_allclose(image.dicom.affine, da.dicom.affine)
    assert image.attrs["SeriesInstanceUID"] == da.attrs["SeriesInstanceUID"]


@pytest.mark.parametrize("slab_bytes", [1, 3 * 64 * 64 * 2, 2**40])
def test_zarr_is_written_in_slabs_of_whole_frames(
    sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slab_bytes: int
) -> None:
    import zarr

    import dicomxr.conversion as module

    monkeypatch.setattr(module, "_SLAB_BYTES", slab_bytes)
    dest = tmp_path / "out"
    assert convert(sample_dir, dest, format="zarr", progress=False).ok
    group = done_rows(dest).iloc[0].output.partition("/")[2]
    da = open_series(sample_dir)
    array = zarr.open_group(str(dest / "cohort.zarr"), mode="r")[f"{group}/image"]
    frame = (1,) * (da.ndim - 2) + da.shape[-2:]
    assert array.chunks == frame  # one frame per chunk whatever the slab
    shards = array.shards
    assert shards is not None and all(s % c == 0 for s, c in zip(shards, frame, strict=True))
    if slab_bytes == 2**40:
        assert shards == da.shape  # a small image: one shard
    np.testing.assert_array_equal(array[...], da.values)
    np.testing.assert_array_equal(xr.open_zarr(dest / "cohort.zarr", group=group)["image"], da)


def test_zarr_store_metadata_is_consolidated_as_zarr_does_it(
    sample_dir: Path, cohort: Path, data_root: Path, tmp_path: Path
) -> None:
    """The root zarr.json equals, byte for byte, what zarr.consolidate_metadata writes."""
    import shutil

    import zarr

    dest = tmp_path / "out"
    for source, template in [(sample_dir, None), (cohort, "{PatientID}/{SeriesNumber}/x"),
                             (data_root / "dcm_qa_ts", "ts/{SeriesNumber}")]:  # fmt: skip
        convert(source, dest, format="zarr", progress=False, template=template)
    ours = (dest / "cohort.zarr" / "zarr.json").read_bytes()
    copy = tmp_path / "copy.zarr"
    shutil.copytree(dest / "cohort.zarr", copy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # consolidated metadata is not in the v3 spec yet
        zarr.consolidate_metadata(str(copy))
    assert ours == (copy / "zarr.json").read_bytes()
    group = zarr.open_group(str(dest / "cohort.zarr"), mode="r", use_consolidated=True)
    outputs = [o.partition("/")[2] for o in done_rows(dest).output]
    assert len(outputs) > 5 and all(isinstance(group[o], zarr.Group) for o in outputs)


def test_fieldmap_splits_into_one_file_per_echo_and_part(data_root: Path, tmp_path: Path) -> None:
    src = data_root / "dcm_qa_philips_enh" / "In" / "cl"
    plans = [p for p in list_series(src) if p.attrs.get("SeriesNumber") == 2001]
    dest = tmp_path / "out"
    report = convert(plans, dest, progress=False, template="{SeriesNumber}")
    assert report.ok
    rows = done_rows(dest)
    names = sorted(Path(o).name for o in rows.output)
    assert names == ["2001_e1.nii.gz", "2001_e1_ph.nii.gz", "2001_e2.nii.gz", "2001_e2_ph.nii.gz"]
    da = open_series(plans[0])
    assert da.dims[:2] == ("echo", "component")
    components = [str(c).upper() for c in da["component"].values]
    header = pydicom.dcmread(plans[0].frames["path"].iloc[0], stop_before_pixels=True)
    echo_times = []
    for e in range(da.sizes["echo"]):
        for c, part in enumerate(components):
            stem = dest / f"2001_e{e + 1}{'_ph' if part == 'PHASE' else ''}"
            assert_nifti_equals(stem.with_suffix(".nii.gz"), da.isel(echo=e, component=c))
            sidecar = json.loads(stem.with_suffix(".json").read_text())
            assert sidecar["RepetitionTime"] == pytest.approx(float(header.RepetitionTime) / 1e3)
            echo_times.append(sidecar["EchoTime"])
            assert (
                sidecar["EchoTime"] == pytest.approx(float(da["EchoTime"].values.ravel()[0]) / 1e3)
                or e
            )
    assert len(set(echo_times)) == 2 and max(echo_times) < 0.1  # seconds, one per echo


def test_slice_timing_from_per_slice_acquisition_times(tmp_path: Path) -> None:
    files = write_series(
        tmp_path / "src", phantom_volume((5, 6, 4)), modality="MR", rescale=(1.0, 0.0),
        extra={"RepetitionTime": 6000.0, "EchoTime": 30.0, "InPlanePhaseEncodingDirection": "COL"},
    )  # fmt: skip
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    seconds = [
        int(str(h.AcquisitionTime)[:2]) * 3600
        + int(str(h.AcquisitionTime)[2:4]) * 60
        + float(str(h.AcquisitionTime)[4:])
        for h in headers
    ]
    report = convert(tmp_path / "src", tmp_path / "o", progress=False, template="t")
    sidecar = json.loads((tmp_path / "o" / "t.json").read_text())
    assert sidecar["RepetitionTime"] == pytest.approx(6.0)
    assert sidecar["EchoTime"] == pytest.approx(0.03)
    assert sidecar["SliceTiming"] == pytest.approx([s - min(seconds) for s in seconds])
    assert sidecar["PhaseEncodingAxis"] == "j"
    assert report.ok


def test_mosaic_sidecar_agrees_with_dcm2niix(data_root: Path, tmp_path: Path) -> None:
    """SliceTiming and PhaseEncodingDirection of a Siemens MOSAIC against dcm2niix's JSON."""
    src = data_root / "dcm_qa_ts" / "In" / "1.dcm"
    ref = json.loads((data_root / "dcm_qa_ts" / "Ref" / "1.json").read_text())
    report = convert(src, tmp_path / "o", progress=False, template="m", deidentify=True)
    sidecar = json.loads((tmp_path / "o" / "m.json").read_text())
    mine = nib.load(tmp_path / "o" / report.done[0]["output"]).affine
    theirs = nib.load(data_root / "dcm_qa_ts" / "Ref" / "1.nii").affine
    np.testing.assert_allclose(mine[:3, 2], theirs[:3, 2], atol=1e-3)  # same slice order
    assert sidecar["SliceTiming"] == pytest.approx(ref["SliceTiming"], abs=1e-4)
    np.testing.assert_allclose(mine[:3, 1], -theirs[:3, 1], atol=1e-3)  # dcm2niix flips j
    flipped = {"j": "j-", "j-": "j", "i": "i", "i-": "i-"}
    assert sidecar["PhaseEncodingDirection"] == flipped[ref["PhaseEncodingDirection"]]
    assert sidecar["RepetitionTime"] == pytest.approx(ref["RepetitionTime"])
    assert sidecar["EchoTime"] == pytest.approx(ref["EchoTime"])
    assert sidecar["FlipAngle"] == pytest.approx(ref["FlipAngle"])


def test_split_none_keeps_the_dims_together(data_root: Path, tmp_path: Path) -> None:
    src = data_root / "dcm_qa_philips_enh" / "In" / "cl"
    plans = [p for p in list_series(src) if p.attrs.get("SeriesNumber") == 2001]
    report = convert(plans, tmp_path / "o", progress=False, split=None, template="x")
    assert [Path(r["output"]).name for r in report.done] == ["x.nii.gz"]
    assert report.done[0]["dims"][:2] == ["echo", "component"]


def test_options_are_passed_through(sample_dir: Path, tmp_path: Path) -> None:
    report = convert(
        sample_dir, tmp_path / "o", progress=False, orientation="RAS", dtype="float64",
        window=(600, 1200),
    )  # fmt: skip
    row = report.done[0]
    assert row["orientation"] == "RAS" and row["dtype"] == "float64"
    img = nib.load(tmp_path / "o" / row["output"])
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    data = np.asanyarray(img.dataobj)
    assert data.min() >= 0 and data.max() <= 1
    want = open_series(sample_dir).dicom.reorient("RAS").dicom.window(600, 1200)
    assert_nifti_equals(tmp_path / "o" / row["output"], want)


def test_spacing_is_passed_to_resample(sample_dir: Path, tmp_path: Path) -> None:
    da = open_series(sample_dir)
    if not hasattr(da.dicom, "resample"):
        with pytest.raises(ConvertError, match="resample"):
            convert(sample_dir, tmp_path / "o", progress=False, spacing=4.0)
        return
    report = convert(sample_dir, tmp_path / "o", progress=False, spacing=4.0, template="r")
    assert report.ok
    np.testing.assert_allclose(report.done[0]["spacing"], [4.0, 4.0, 4.0], atol=1e-3)
    assert_nifti_equals(tmp_path / "o" / "r.nii.gz", da.dicom.resample(spacing=4.0))
    report = convert(sample_dir, tmp_path / "z", progress=False, spacing=(4.0, 3.0, 3.0),
                     format="zarr", template="r")  # fmt: skip
    image = xr.open_zarr(tmp_path / "z" / "cohort.zarr", group="r")["image"]
    np.testing.assert_allclose(image.dicom.spacing, [4.0, 3.0, 3.0], atol=1e-3)


@pytest.mark.parametrize("kind", ["folder", "glob", "catalog", "file"])
def test_every_kind_of_source(cohort: Path, tmp_path: Path, kind: str) -> None:
    source = {
        "folder": cohort,
        "glob": str(cohort / "s*" / "*.dcm"),
        "catalog": dicomxr.scan(cohort, progress=False),
        "file": next((cohort / "s2").glob("*.dcm")),
    }[kind]
    report = convert(source, tmp_path / "o", progress=False, format="zarr")
    assert report.ok and len(report.done) == (1 if kind == "file" else 3)


@pytest.mark.filterwarnings("ignore::dicomxr.SkippedFileWarning")
def test_dicomdir_source(data_root: Path, tmp_path: Path) -> None:
    dicomdir = data_root / "dcm_qa_ct" / "In" / "Philips" / "DICOMDIR"
    report = convert(dicomdir, tmp_path / "o", progress=False, template="{SeriesNumber}")
    assert report.ok and report.done
    want = {p.key for p in list_series(dicomdir)}
    assert {r["series_key"] for r in report.done} == want


def test_nifti_and_zarr_share_a_destination(cohort: Path, tmp_path: Path) -> None:
    convert(cohort, tmp_path / "o", progress=False)
    convert(cohort, tmp_path / "o", progress=False, format="zarr")
    m = done_rows(tmp_path / "o")
    assert sorted(m.format.value_counts().items()) == [("nifti", 3), ("zarr", 3)]
    again = convert(cohort, tmp_path / "o", progress=False)
    assert len(again.skipped) == 3


# --------------------------------------------------------------------------------------
# names


def test_names_are_sanitised() -> None:
    fields = {"PatientID": "../../etc/passwd", "SeriesNumber": 7, "SeriesDescription": "T1 w/ gd.."}
    name = render_name("{PatientID}/{SeriesNumber:03d}_{SeriesDescription}", fields)
    assert name == "etc_passwd/007_T1_w_gd"
    assert render_name("{PatientID}", {"PatientID": ".."}) == "na"
    assert render_name("{Missing}/{SeriesNumber}", {"SeriesNumber": 2}) == "na/2"
    for bad in ("../{PatientID}", "/abs/{PatientID}", "{PatientID.__class__}", "{0}",
                "{PatientID:>999999999}"):  # fmt: skip
        with pytest.raises(ConvertError):
            render_name(bad, fields)


def test_equal_names_are_made_unique(cohort: Path, tmp_path: Path) -> None:
    report = convert(cohort, tmp_path / "o", progress=False, template="{PatientID}")
    names = sorted(Path(r["output"]).name for r in report.done)
    assert names == ["PHANTOM-0001.nii.gz", "PHANTOM-0001_2.nii.gz", "PHANTOM-0001_3.nii.gz"]


# --------------------------------------------------------------------------------------
# resume, atomic outputs, failures, permissions, destination


def test_resume_after_an_interruption_does_only_what_is_missing(
    cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "out"
    real_save = nib.save
    calls = {"n": 0}

    def interrupted_save(img, filename):  # writes half a file, then Ctrl-C
        calls["n"] += 1
        if calls["n"] == 2:
            Path(filename).write_bytes(b"\x1f\x8b half a file")
            raise KeyboardInterrupt
        return real_save(img, filename)

    monkeypatch.setattr(nib, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        convert(cohort, dest, progress=False)
    monkeypatch.setattr(nib, "save", real_save)
    finished = sorted(p.relative_to(dest) for p in dest.rglob("*.nii.gz"))
    assert len(finished) == 1  # the second series left nothing under a final name
    records = list((dest / ".dicomxr-convert" / "done").glob("*.json"))
    assert len(records) == 1
    first = dest / finished[0]
    mtime = first.stat().st_mtime_ns

    report = convert(cohort, dest, progress=False)
    assert report.ok
    assert len(report.skipped) == 1 and report.skipped[0]["reason"] == "already converted"
    assert len(report.done) == 2
    assert first.stat().st_mtime_ns == mtime
    assert not [p for p in dest.rglob("*") if ".tmp" in p.name]
    rows = done_rows(dest)
    assert len(rows) == 3  # the manifest lists every output, old and new
    for plan in list_series(cohort):
        row = rows[rows.series_uid == plan.attrs["SeriesInstanceUID"]].iloc[0]
        assert_nifti_equals(dest / row.output, open_series(plan))

    again = convert(cohort, dest, progress=False)
    assert not again.done and len(again.skipped) == 3


def test_ctrl_c_in_the_cli_then_a_rerun(
    cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import dicomxr.conversion as module

    real = module.convert_series
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "convert_series", interrupted)
    args = ["convert", str(cohort), str(tmp_path / "o"), "--no-progress"]
    assert dicomxr.cli.main(args) == 130
    assert "interrupted" in capsys.readouterr().err
    monkeypatch.setattr(module, "convert_series", real)
    assert dicomxr.cli.main(args) == 0
    out = capsys.readouterr().out
    assert "2 output(s) written, 1 series skipped" in out


def test_dicomxr_convert_is_the_function(cohort: Path, tmp_path: Path) -> None:
    import dicomxr.conversion as module

    # the function, also after its module is imported; no module-class rewrite makes it so
    assert dicomxr.convert is module.convert
    assert type(module) is types.ModuleType
    assert dicomxr.convert(cohort, tmp_path / "o", progress=False).ok


def test_changed_input_is_converted_again(cohort: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    convert(cohort, dest, progress=False)
    one = next((cohort / "s2").glob("*.dcm"))
    os.utime(one, (one.stat().st_atime + 10, one.stat().st_mtime + 10))
    report = convert(cohort, dest, progress=False)
    assert len(report.done) == 1 and len(report.skipped) == 2


def test_killed_subprocess_then_rerun(cohort: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    script = (
        "import os, dicomxr, dicomxr.conversion as c\n"
        "real = c.convert_series\n"
        "def once(task, dest, options, secret):\n"
        "    rows = real(task, dest, options, secret)\n"
        "    os._exit(9)  # killed right after the first series\n"
        "c.convert_series = once\n"
        f"dicomxr.convert({str(cohort)!r}, {str(dest)!r}, progress=False)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == 9
    assert len(list(dest.rglob("*.nii.gz"))) == 1
    assert not (dest / "manifest.parquet").exists()
    report = convert(cohort, dest, progress=False)
    assert len(report.skipped) == 1 and len(report.done) == 2


def test_a_series_that_fails_to_decode_is_reported_and_the_rest_convert(
    cohort: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "src" / "bad"
    files = write_series(
        bad, phantom_volume((3, 8, 6)), series_number=9, transfer_syntax="1.2.840.10008.1.2.5"
    )
    ds = pydicom.dcmread(files[1])
    item = bytearray(pydicom.encaps.generate_fragments(ds.PixelData).__next__())
    item[:4] = (15).to_bytes(4, "little")  # an RLE header claiming 15 segments: undecodable
    ds.PixelData = pydicom.encaps.encapsulate([bytes(item)])
    ds.save_as(files[1])
    dest = tmp_path / "out"
    report = convert(tmp_path / "src", dest, progress=False)
    assert not report.ok
    assert len(report.failed) == 1 and "9" in report.failed[0]["series"]
    assert len(report.done) == 3
    m = manifest(dest)
    assert (m.status == "failed").sum() == 1 and (m.status == "done").sum() == 3
    assert "FAILED" in str(report)
    assert dicomxr.cli.main([
        "convert", str(tmp_path / "src"), str(tmp_path / "cli"), "--no-progress"
    ]) == 1  # fmt: skip


def test_files_get_the_users_permissions(cohort: Path, tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        convert(cohort, tmp_path / "o", progress=False)
        convert(cohort, tmp_path / "z", progress=False, format="zarr")
    finally:
        os.umask(old)
    for root in (tmp_path / "o", tmp_path / "z"):
        for path in files_under(root):
            if ".dicomxr-convert" in path.parts:
                continue
            assert stat.S_IMODE(path.stat().st_mode) == 0o640, path


def test_nothing_is_written_outside_dest(cohort: Path, tmp_path: Path) -> None:
    hostile = tmp_path / "src" / "hostile"
    write_series(
        hostile, phantom_volume((2, 4, 4)), series_number=5,
        extra={"PatientID": "../../../escape", "SeriesDescription": "../../x"},
    )  # fmt: skip
    before = files_under(tmp_path)
    dest = tmp_path / "box" / "out"
    convert(tmp_path / "src", dest, progress=False)
    convert(tmp_path / "src", dest, progress=False, format="zarr")
    new = files_under(tmp_path) - before
    assert new and all(p.is_relative_to(dest) for p in new)
    with pytest.raises(ConvertError, match=r"\.\."):
        convert(cohort, dest, progress=False, template="../{PatientID}")


def test_unwritable_destination_is_a_clear_error(cohort: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConvertError, match="cannot write to the destination"):
        convert(cohort, blocker / "out", progress=False)
    assert dicomxr.cli.main(["convert", str(cohort), str(blocker / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    # one line, named after the sub-command (the CLI's shared error style)
    assert err.startswith("dicomxr convert: cannot write to the destination") and "\n" not in err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(ConvertError, match="cannot write"):
            convert(cohort, locked / "out", progress=False)


def test_series_tasks_run_in_other_processes(cohort: Path, tmp_path: Path) -> None:
    """convert_series is the unit a distributed scheduler maps: picklable in and out."""
    import multiprocessing
    import pickle
    from concurrent.futures import ProcessPoolExecutor

    from dicomxr.conversion import ConvertOptions, convert_series

    tasks = []
    convert(cohort, tmp_path / "a", progress=False, on_series=lambda t, rows: tasks.append(t))
    assert len(tasks) == 3
    tasks = pickle.loads(pickle.dumps(tasks))
    dest = tmp_path / "b"
    (dest / ".dicomxr-convert" / "done").mkdir(parents=True)
    options = ConvertOptions(split=("echo", "component"))
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        results = list(pool.map(convert_series, tasks, [dest] * 3, [options] * 3, [""] * 3))
    assert [len(r) for r in results] == [1, 1, 1]
    for task, rows in zip(tasks, results, strict=True):
        assert_nifti_equals(dest / rows[0]["output"], open_series(task.plan))


def test_one_run_per_destination(cohort: Path, tmp_path: Path) -> None:
    dest = tmp_path / "o"
    state = dest / ".dicomxr-convert"
    state.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (state / "lock").write_text(str(sleeper.pid))
        with pytest.raises(ConvertError, match="another conversion"):
            convert(cohort, dest, progress=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert convert(cohort, dest, progress=False).ok  # the lock of a dead process is taken over
    assert not (state / "lock").exists()


def test_set_apart_frames_are_listed(data_root: Path, tmp_path: Path) -> None:
    src = data_root / "dcm_qa_ct" / "In" / "Philips" / "S21610"
    report = convert(src, tmp_path / "o", progress=False)
    reasons = " ".join(item["reason"] for item in report.set_apart)
    assert "localizer" in reasons
    m = manifest(tmp_path / "o")
    assert (m.status == "set_apart").sum() == len(report.set_apart)


def test_cli_convert(cohort: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "dicomxr", "convert", str(cohort), str(tmp_path / "o"),
           "--no-progress", "--format", "zarr", "-f", "{SeriesNumber}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "3 output(s) written" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "o" / "cohort.zarr").iterdir() if p.is_dir()) == [
        "1", "2", "3"
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "already converted" in proc.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    assert dicomxr.cli.main(["convert", str(empty), str(tmp_path / "e"), "--no-progress"]) == 1
    args = ["convert", str(cohort), str(tmp_path / "w"), "--window", "40,400", "--spacing", "1",
            "--dtype", "float32", "--no-progress", "-f", "{SeriesNumber}"]  # fmt: skip
    assert dicomxr.cli.main(args) == 0
    data = np.asanyarray(nib.load(tmp_path / "w" / "1.nii.gz").dataobj)
    assert data.dtype == np.float32 and 0 <= data.min() and data.max() <= 1
    assert dicomxr.cli.main(["convert", str(cohort), str(tmp_path / "x"), "--format",
                             "nifti", "--orientation", "XYZ", "--no-progress"]) == 2  # fmt: skip


# --------------------------------------------------------------------------------------
# de-identification, checked against PS3.15 Table E.1-1 from another package


def _basic_profile_tags() -> set[int]:
    # a test dependency (pyproject 'test' extra): missing, the check fails rather than skips
    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

    db = dicom_anonymization_database_selector("dicomfields_2026c")
    return {(t[0] << 16) | t[1] for t in db["ALL_TAGS"] if len(t) == 2}


_IDENTIFIERS = {
    "PatientName": "Doe^Jane^Q",
    "PatientID": "MRN-55501234",
    "PatientBirthDate": "19610417",
    "PatientSex": "F",
    "PatientAge": "062Y",
    "PatientWeight": "71.5",
    "OtherPatientIDs": "ALT-99887766",
    "AccessionNumber": "ACC20240102X",
    "InstitutionName": "Saint Elsewhere Hospital",
    "InstitutionAddress": "12 Hospital Road, Springfield",
    "ReferringPhysicianName": "House^Gregory",
    "OperatorsName": "Tech^Tina",
    "PerformingPhysicianName": "Strange^Stephen",
    "StationName": "CTSTATION07",
    "DeviceSerialNumber": "SN-4455667788",
    "StudyDescription": "HEAD WO CONTRAST Jane Doe",
    "ProtocolName": "Doe research protocol",
    "ImageComments": "patient moved, call Jane at 555-0199",
    "StudyID": "STUDY-31337",
    "StudyTime": "101112",
    "ContentDate": "20240102",
    "AcquisitionDate": "20240102",
}


@pytest.fixture
def identified(tmp_path: Path) -> Path:
    src = tmp_path / "idsrc"
    for number, burned in ((11, "NO"), (12, "YES")):
        files = write_series(
            src / f"s{number}", phantom_volume((3, 6, 5), seed=number), series_number=number,
            series_description=f"Jane Doe brain {number}", modality="MR", rescale=(1.0, 0.0),
            study_uid="1.2.826.0.1.3680043.10.1187.1.4242",
            extra={**_IDENTIFIERS, "BurnedInAnnotation": burned, "RepetitionTime": 2000.0},
        )  # fmt: skip
        for path in files:  # same frame of reference for both series; a private tag
            ds = pydicom.dcmread(path)
            ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.1187.3.4242"
            block = ds.private_block(0x0029, "ACME 1.0", create=True)
            block.add_new(0x10, "LO", "private note about Jane Doe")
            ds.save_as(path)
    return src


def _output_strings(dest: Path) -> list[str]:
    """Every text value written under dest (outside the state folder), and every name."""
    out: list[str] = []

    def leaves(value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                out.append(str(k))
                leaves(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                leaves(v)
        elif value is not None:
            out.append(str(value))

    for path in dest.rglob("*"):
        rel = path.relative_to(dest)
        if rel.parts[0] == ".dicomxr-convert":
            continue
        out.extend(rel.parts)
        if path.suffix == ".json" and path.is_file():
            leaves(json.loads(path.read_text()))
        elif path.name.endswith(".nii.gz"):
            header = nib.load(path).header
            for field in ("descrip", "aux_file", "intent_name", "db_name"):
                out.append(header[field].item().decode("latin-1", "replace").strip("\x00"))
    m = manifest(dest)
    for column in m.columns:
        leaves(m[column].tolist())
    store = dest / "cohort.zarr"
    if store.exists():
        for row in m[m.status == "done"].itertuples():
            ds = xr.open_zarr(store, group=row.output.partition("/")[2])
            leaves(dict(ds.attrs))
            for name, var in ds.variables.items():
                leaves(dict(var.attrs))
                out.append(str(name))
                if var.dtype.kind in "OUT" or str(var.dtype).startswith("String"):
                    leaves(np.asarray(var.values).ravel().tolist())
    return out


def _leaks(
    source: Path, dest: Path, *, short_values: bool = True, private: bool = True
) -> tuple[list[str], int]:
    """Basic-profile values (and private values) of the inputs found in what dest holds.

    ``short_values=False`` ignores values under 4 characters, like ``"90"`` (a weight) or
    ``"MR"`` (a private series type), that real outputs hold by coincidence (a flip angle,
    the modality). ``private=False`` checks Table E.1-1 only: real private elements copy
    technical public values (a series number, the imaging frequency).
    """
    tags = _basic_profile_tags()
    candidates: dict[str, str] = {}  # value -> the attribute it came from
    for path in source.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for element in ds.iterall():
            listed = element.tag in tags or (private and element.tag.is_private)
            if element.VR == "SQ" or not listed:
                continue
            values = element.value if element.VM > 1 else [element.value]
            for value in (str(v).strip() for v in values):
                if len(value) >= (2 if short_values else 4):
                    candidates.setdefault(value, str(element.keyword or element.tag))
    written = _output_strings(dest)
    exact = set(written)
    text = "\n".join(written)
    leaks = [
        f"{name}={value!r}"
        for value, name in candidates.items()
        if value in exact or (len(value) >= 6 and value in text)
    ]
    return sorted(leaks), len(candidates)


@pytest.mark.parametrize("fmt", ["nifti", "zarr"])
def test_deidentified_outputs_hold_no_basic_profile_value(
    identified: Path, tmp_path: Path, fmt: str
) -> None:
    dest = tmp_path / "deid"
    report = convert(identified, dest, progress=False, deidentify=True, format=fmt)
    assert report.ok and len(report.done) == 2
    assert len(report.burned_in) == 1 and "12" in report.burned_in[0]
    assert manifest(dest).burned_in_annotation.sum() == 1
    leaks, checked = _leaks(identified, dest)
    assert checked > 30
    assert not leaks
    if fmt == "zarr":  # UIDs replaced consistently: both series keep one frame of reference
        groups = [o.partition("/")[2] for o in done_rows(dest).output]
        stores = [xr.open_zarr(dest / "cohort.zarr", group=g) for g in groups]
        frames = {ds.attrs["FrameOfReferenceUID"] for ds in stores}
        assert len(frames) == 1 and "1187.3.4242" not in next(iter(frames))
        assert all("path" not in ds.coords for ds in stores)
        pixels = sorted(ds["image"].values.sum() for ds in stores)
        want = sorted(open_series(identified, series=n).values.sum() for n in (11, 12))
        np.testing.assert_allclose(pixels, want)


@pytest.mark.slow
def test_deidentified_real_corpora_hold_no_basic_profile_value(
    data_root: Path, tmp_path: Path
) -> None:
    sources = [
        data_root / "dcm_qa_ts" / "In",
        data_root / "dcm_qa_philips_enh" / "In" / "cl",
        data_root / "suyashkumar_dicom",
    ]
    for fmt in ("nifti", "zarr"):
        dest = tmp_path / fmt
        for source in sources:
            # a fixed shift: a random one can move one study's date onto another study's
            # original date (these corpora hold dates 151 days apart), which is no leak
            report = convert(
                source, dest, progress=False, deidentify=True, format=fmt, date_shift=1000
            )
            assert report.ok
        for source in sources:
            leaks, checked = _leaks(source, dest, short_values=False, private=False)
            assert checked > 10
            assert not leaks, (source, leaks[:20])


def test_the_leak_check_finds_identifiers_when_not_deidentified(
    identified: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "plain"
    convert(identified, dest, progress=False, format="zarr")
    leaks, _ = _leaks(identified, dest)
    found = " ".join(leaks)
    for keyword in ("PatientID", "SeriesInstanceUID", "SOPInstanceUID", "StudyDescription"):
        assert keyword in found


def test_deidentified_uids_are_stable_across_resumed_runs(identified: Path, tmp_path: Path) -> None:
    dest = tmp_path / "deid"
    first = convert(identified / "s11", dest, progress=False, deidentify=True, format="zarr")
    second = convert(identified, dest, progress=False, deidentify=True, format="zarr")
    assert len(second.skipped) == 1 and len(second.done) == 1
    m = done_rows(dest)
    attrs = [xr.open_zarr(dest / "cohort.zarr", group=o.partition("/")[2]).attrs for o in m.output]
    assert attrs[0]["StudyInstanceUID"] == attrs[1]["StudyInstanceUID"]
    assert first.done[0]["series_uid"] in set(m.series_uid)
    # names carry no identifier: the patient folder is dicognito's replacement ID
    assert all("MRN" not in o and "Doe" not in o for o in m.output)
    assert stat.S_IMODE((dest / ".dicomxr-convert" / "secret").stat().st_mode) == 0o600


def test_identified_and_deidentified_outputs_never_mix(cohort: Path, tmp_path: Path) -> None:
    convert(cohort, tmp_path / "plain", progress=False)
    with pytest.raises(ConvertError, match="holds identified outputs"):
        convert(cohort, tmp_path / "plain", progress=False, deidentify=True, format="zarr")
    convert(cohort, tmp_path / "deid", progress=False, deidentify=True)
    with pytest.raises(ConvertError, match="holds deidentified outputs"):
        convert(cohort, tmp_path / "deid", progress=False)


def test_date_shift_moves_dates_back(identified: Path, tmp_path: Path) -> None:
    report = convert(
        identified / "s11", tmp_path / "d", progress=False, deidentify=True, date_shift=10,
        format="zarr",
    )  # fmt: skip
    ds = xr.open_zarr(
        tmp_path / "d" / "cohort.zarr", group=report.done[0]["output"].partition("/")[2]
    )
    assert ds.attrs["StudyDate"] == "20231223"


def test_dicognito_header_pass_covers_the_basic_profile(identified: Path) -> None:
    from dicomxr.export.deid import Deidentifier

    tags = _basic_profile_tags()
    path = next(identified.rglob("*.dcm"))
    original = pydicom.dcmread(path, stop_before_pixels=True)
    ds = Deidentifier("k").dataset(pydicom.dcmread(path, stop_before_pixels=True))
    for element in original:
        if element.tag in tags and element.value not in (None, ""):
            kept = ds.get(element.tag)
            assert kept is None or kept.value != element.value, element.keyword
        if element.tag.is_private:
            assert element.tag not in ds


# --------------------------------------------------------------------------------------
# every corpus


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["nifti", "zarr"])
def test_cli_converts_every_corpus(data_root: Path, tmp_path: Path, fmt: str) -> None:
    dest = tmp_path / fmt
    code = dicomxr.cli.main(
        ["convert", str(data_root), str(dest), "--format", fmt, "--no-progress"]
    )
    assert code == 0
    m = manifest(dest)
    done = m[m.status == "done"]
    assert len(done) >= 25 and not (m.status == "failed").any()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the corpora's irregular stacks, known and reported
        plans = {p.key: p for p in list_series(data_root, on_irregular="split")}
    for row in done.itertuples():  # each output reopened equals open_series of its series
        da = open_series(plans[row.series_key])
        if fmt == "nifti":
            assert (dest / row.sidecar).exists()
            pieces = dict(split_pieces(da, ("echo", "component")))
            stem = Path(row.output).name.removesuffix(".nii.gz")
            suffix = next(s for s in sorted(pieces, key=len, reverse=True) if stem.endswith(s))
            assert_nifti_equals(dest / row.output, pieces[suffix])
        else:
            group = row.output.partition("/")[2]
            image = xr.open_zarr(dest / "cohort.zarr", group=group)["image"]
            np.testing.assert_array_equal(image.values, da.values)
