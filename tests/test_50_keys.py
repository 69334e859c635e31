"""Any header field on request: ``keys=`` of scan, open_series/open_study, convert and the CLI.

Values are checked against pydicom reading each file on its own (the independent reference),
never against the catalog itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

import dicomxr
from dicomxr._keys import HeaderKeyError, resolve_keys
from dicomxr.api import list_series
from dicomxr.catalog import read_header_fast, read_header_pydicom


@pytest.fixture(scope="module")
def philips(data_root: Path) -> Path:
    return data_root / "dcm_qa_philips_enh" / "In"


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _pydicom_value(ds: pydicom.Dataset, tag: int) -> object:
    """The value pydicom gives: top level, else the enhanced file's functional groups.

    The shared item first, then the frames' items when they all agree (pydicom's own
    depth-first ``iterall``). ``None`` when absent, empty or different per frame.
    """
    elem = ds.get(tag)
    if elem is not None and elem.value not in (None, ""):
        return elem.value
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        found = _first_nested(shared[0], tag)
        if found is not None:
            return found
    frames = ds.get("PerFrameFunctionalGroupsSequence") or []
    values = [_first_nested(item, tag) for item in frames]
    return values[0] if values and all(v == values[0] for v in values) else None


def _first_nested(item: pydicom.Dataset, tag: int) -> object:
    for elem in item.iterall():
        if elem.tag == tag:
            return None if elem.value in (None, "") else elem.value
    return None


def _pydicom_number(ds: pydicom.Dataset, tag: int) -> float | None:
    value = _pydicom_value(ds, tag)
    return None if value is None else float(value)


def test_resolve_spellings_and_errors() -> None:
    spellings = ["0019,100C", "(0019,100C)", "0019100C", "(0x0019, 0x100c)", 0x0019100C]
    keys = [resolve_keys([s])[0] for s in spellings]
    keys.append(resolve_keys([(0x0019, 0x100C)])[0])
    assert {k.tag for k in keys} == {0x0019100C}
    assert {k.name for k in keys} == {"0019,100C"}
    assert resolve_keys(["RepetitionTime", "RepetitionTime"])[0].name == "RepetitionTime"
    with pytest.raises(HeaderKeyError, match="RepetitionTime"):  # names the close keyword
        resolve_keys(["RepetitionTme"])
    with pytest.raises(HeaderKeyError, match="sequence"):
        resolve_keys(["ReferencedSeriesSequence"])
    with pytest.raises(HeaderKeyError, match="pixel data"):
        resolve_keys(["7FE0,0010"])
    # the error is a DicomxrError and a ValueError, raised before any file is read
    with pytest.raises(dicomxr.DicomxrError):
        dicomxr.scan("/nonexistent-folder", keys=["NoSuchKeyword"])


def test_scan_keys_equal_pydicom_on_every_corpus(data_root: Path) -> None:
    names = ["RepetitionTime", "FlipAngle", "MagneticFieldStrength", "ProtocolName"]
    private = ["0019,100A", "2005,1030", "2001,1003"]  # Siemens mosaic n, Philips TR, b
    with _quiet():
        df = dicomxr.scan(data_root, keys=[*names, *private])
    assert df.attrs["keys"] == [*names, *private]
    checked = {n: 0 for n in [*names, *private]}
    for i in range(len(df)):
        path = df["path"].iloc[i]
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        for name in ("RepetitionTime", "FlipAngle", "MagneticFieldStrength"):
            want = _pydicom_number(ds, pydicom.datadict.tag_for_keyword(name))
            got = df[name].iloc[i]
            if want is None:
                assert pd.isna(got), (path, name, got)
            else:
                assert got == pytest.approx(want), (path, name)
                checked[name] += 1
        want_text = str(ds.get("ProtocolName", "") or "").strip() or None
        got_text = df["ProtocolName"].iloc[i]
        assert (None if pd.isna(got_text) else got_text) == want_text, path
        checked["ProtocolName"] += want_text is not None
        for tag_text in private:
            tag = int(tag_text.replace(",", ""), 16)
            value = _pydicom_value(ds, tag)
            got = df[tag_text].iloc[i]
            if value is None:
                assert got is None or pd.isna(got), (path, tag_text, got)
                continue
            # pydicom decodes with its private dictionary (creator known)
            if isinstance(value, bytes):  # implicit VR, creator unknown to pydicom
                continue
            checked[tag_text] += 1
            if isinstance(value, pydicom.multival.MultiValue):
                value = value[0]
            assert float(got) == pytest.approx(float(value)), (path, tag_text)
    # every key was met in real files, including each private one
    assert not [n for n, count in checked.items() if count == 0], checked


def test_fast_reader_and_pydicom_path_agree(data_root: Path) -> None:
    keys = resolve_keys(
        ["RepetitionTime", "ImageType", "AcquisitionMatrix", "SoftwareVersions",
         "0019,100A", "2005,1030", "0029,1010", "ReferencedSOPClassUID"]
    )  # fmt: skip
    compared = 0
    for folder in ("dcm_qa_ts", "dcm_qa_philips_enh", "suyashkumar_dicom"):
        for root, _, files in os.walk(data_root / folder):
            for name in files[:60]:
                path = os.path.join(root, name)
                try:
                    with _quiet():
                        ref = read_header_pydicom(path, keys)
                except ValueError:
                    continue
                fast = read_header_fast(path, os.path.getsize(path), None, keys)
                if fast is None:
                    continue
                for key in keys:
                    assert fast[key.name] == ref[key.name], (path, key.name)
                compared += 1
    assert compared > 50


def test_keys_read_in_the_same_pass(philips: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = sorted(p for p in (philips / "cl").rglob("*") if p.is_file())[:40]
    opened: list[str] = []
    real_open, real_builtin = os.open, open

    def counting_open(path, *args, **kwargs):
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    with _quiet():
        df = dicomxr.scan([str(f) for f in files], keys=["RepetitionTime", "2005,1030"])
    assert real_builtin is open
    assert df["RepetitionTime"].notna().any()
    per_file = pd.Series(opened).value_counts()
    assert per_file.max() == 1, per_file.head()


def test_cache_keeps_keys_apart(tmp_path: Path, philips: Path) -> None:
    files = [str(p) for p in sorted((philips / "cl").rglob("*")) if p.is_file()][:30]
    db = tmp_path / "cache"
    with _quiet():
        plain = dicomxr.scan(files, cache=db)
        keyed = dicomxr.scan(files, cache=db, keys=["FlipAngle"])
        again = dicomxr.scan(files, cache=db, keys=["FlipAngle"])
    assert "FlipAngle" not in plain.columns
    assert keyed["FlipAngle"].notna().all()
    pd.testing.assert_frame_equal(keyed, again)


def test_open_series_attrs_and_coords(philips: Path) -> None:
    with _quiet():
        plans = list_series(philips, keys=["RepetitionTime", "FlipAngle", "2005,10A0"])
    pcasl = next(
        p
        for p in plans
        if p.attrs.get("SeriesNumber") == 1903 and p.frames["NumberOfFrames"].max() == 1
    )
    da = dicomxr.open_series(pcasl, keys=["RepetitionTime", "FlipAngle", "2005,10A0"])
    first = pydicom.dcmread(pcasl.frames["path"].iloc[0], stop_before_pixels=True)
    assert da.attrs["RepetitionTime"] == pytest.approx(float(first.RepetitionTime))
    assert da.attrs["FlipAngle"] == pytest.approx(float(first.FlipAngle))
    # a private value that varies along time: a coordinate on the time dim
    coord = da.coords["2005,10A0"]
    assert coord.dims == ("time",)
    for t in range(da.sizes["time"]):
        path = da.coords["path"].isel(time=t).values.ravel()[0]
        want = float(pydicom.dcmread(str(path), stop_before_pixels=True)[0x2005, 0x10A0].value)
        assert float(coord.values[t]) == pytest.approx(want)
    # a catalog scanned without the key is refused with the fix named
    with _quiet():
        bare = dicomxr.scan(philips / "cl")
    with pytest.raises(HeaderKeyError, match=r"scan\(\.\.\., keys="):
        dicomxr.open_series(bare, series=1301, keys=["FlipAngle"])
    # open_study carries them too
    with _quiet():
        tree = dicomxr.open_study(philips / "cl", keys=["FlipAngle"])
    flips = [leaf.dataset["image"].attrs.get("FlipAngle") for leaf in tree.leaves]
    assert flips and all(f is not None for f in flips)


def test_xarray_engine_takes_keys(philips: Path) -> None:
    import xarray as xr

    keys = ["RepetitionTime", "FlipAngle", "2005,10A0"]
    with _quiet():
        plans = list_series(philips, keys=keys)
    pcasl = next(
        p
        for p in plans
        if p.attrs.get("SeriesNumber") == 1903 and p.frames["NumberOfFrames"].max() == 1
    )
    with _quiet():
        ds = xr.open_dataset(philips, engine="dicom", series=pcasl.key, keys=keys)
    image = ds["image"]
    first = pydicom.dcmread(pcasl.frames["path"].iloc[0], stop_before_pixels=True)
    assert image.attrs["RepetitionTime"] == pytest.approx(float(first.RepetitionTime))
    assert image.attrs["FlipAngle"] == pytest.approx(float(first.FlipAngle))
    coord = image.coords["2005,10A0"]  # varies along time: a coordinate
    assert coord.dims == ("time",)
    for t in range(image.sizes["time"]):
        path = image.coords["path"].isel(time=t).values.ravel()[0]
        want = float(pydicom.dcmread(str(path), stop_before_pixels=True)[0x2005, 0x10A0].value)
        assert float(coord.values[t]) == pytest.approx(want)
    # open_datatree: every series carries the key, each equal to its first file's value
    with _quiet():
        tree = xr.open_datatree(philips / "cl", engine="dicom", keys=["FlipAngle"])
    leaves = [leaf.dataset["image"] for leaf in tree.leaves]
    assert leaves
    for image in leaves:
        path = np.asarray(image.coords["path"].values).ravel()[0]
        want = float(pydicom.dcmread(str(path), stop_before_pixels=True).FlipAngle)
        assert image.attrs["FlipAngle"] == pytest.approx(want)


def test_series_tables_name_the_sop_class(philips: Path) -> None:
    with _quiet():
        plans = list_series(philips)
    table = plans.table()
    both = table[table["label"].str.startswith("2001 ")]
    assert set(both["SOPClass"]) == {"MR Image Storage", "Enhanced MR Image Storage"}
    rows = dicomxr.api.series_table(plans)
    assert {r["SOPClass"] for r in rows} >= {"MR Image Storage", "Enhanced MR Image Storage"}
    with pytest.raises(dicomxr.MultipleSeriesError, match="Enhanced MR Image"):
        dicomxr.open_series(philips, series=2001)


def test_cli_scan_key_and_sop_class(philips: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "catalog.csv"
    env = dict(os.environ, PYTHONPATH=str(Path(dicomxr.__file__).parents[1]))
    proc = subprocess.run(
        [sys.executable, "-m", "dicomxr", "scan", str(philips / "cl"), "--key", "FlipAngle",
         "--key", "2005,1030", "--csv", str(out)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "SOP class" in proc.stdout and "MR Image" in proc.stdout
    csv = pd.read_csv(out)
    assert {"FlipAngle", "2005,1030"} <= set(csv.columns)
    assert csv["FlipAngle"].notna().all()


def test_convert_carries_keys(philips: Path, tmp_path: Path) -> None:
    keys = ["RepetitionTime", "FlipAngle", "ScanningSequence", "2005,1030"]
    src = philips / "cl"
    with _quiet():
        nifti = dicomxr.convert(src, tmp_path / "n", keys=keys, progress=False)
        zarr_report = dicomxr.convert(src, tmp_path / "z", format="zarr", keys=keys, progress=False)
    assert nifti.ok and zarr_report.ok
    manifest = pd.read_parquet(tmp_path / "n" / "manifest.parquet")
    done = manifest[manifest["status"] == "done"]
    assert {f"key:{k}" for k in keys} <= set(done.columns)
    for row in done.to_dict("records"):
        sidecar = json.loads((tmp_path / "n" / row["sidecar"]).read_text())
        uid = sidecar["SeriesInstanceUID"]
        path = next(p for p in src.rglob("*") if p.is_file()
                    and pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID == uid)  # fmt: skip
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        # BIDS units for the BIDS name, the DICOM value in the manifest and for other keys
        assert sidecar["RepetitionTime"] == pytest.approx(float(ds.RepetitionTime) / 1000)
        assert sidecar["FlipAngle"] == pytest.approx(float(ds.FlipAngle))
        assert sidecar["ScanningSequence"] == str(ds.ScanningSequence)
        private = ds[0x2005, 0x1030].value
        if isinstance(private, pydicom.multival.MultiValue):
            private = list(private)
        assert sidecar["2005,1030"] == pytest.approx(private)
        assert row["key:RepetitionTime"] == pytest.approx(float(ds.RepetitionTime))
        assert row["key:ScanningSequence"] == str(ds.ScanningSequence)
    import xarray as xr

    zm = pd.read_parquet(tmp_path / "z" / "manifest.parquet")
    zdone = zm[zm["status"] == "done"]
    for output in zdone["output"]:
        ds = xr.open_zarr(tmp_path / "z" / output)
        assert ds["image"].attrs["FlipAngle"] > 0
        assert "ScanningSequence" in ds["image"].attrs
    # de-identified: private keys do not survive (PS3.15 basic profile removes them)
    with _quiet():
        deid = dicomxr.convert(src, tmp_path / "d", keys=keys, deidentify=True, progress=False)
    assert deid.ok
    for sidecar in (tmp_path / "d").rglob("*.json"):
        assert "2005,1030" not in json.loads(sidecar.read_text())
    # a wrong key is refused before anything is written
    with pytest.raises(dicomxr.DicomxrError, match="names no DICOM attribute"):
        dicomxr.convert(src, tmp_path / "x", keys=["Nope"], progress=False)
    assert not (tmp_path / "x" / "manifest.parquet").exists()


# enhanced file -> dcm2niix's sidecar of it (the corpus' reference outputs)
_ENHANCED_REFS = {
    "1901_WIP_3DpCASL_real.dcm": ["1901_WIP_3DpCASL_enh_real.json"],
    # dcm2niix writes RepetitionTime 51 s for this 240-frame ASL source (a time of its own
    # making), not the header's 4250 ms: only pydicom is the reference here
    "1903_WIP_SOURCE_-_3DpCASL.dcm": [],
    "2001_WIP_fcMRI_Field_Mapping_e2_phMag.dcm": [
        "2001_WIP_fcMRI_Field_Mapping_enh_e1.json",
        "2001_WIP_fcMRI_Field_Mapping_enh_e2.json",
    ],
}


def test_keys_inside_functional_groups(philips: Path) -> None:
    # an enhanced MR file keeps RepetitionTime and FlipAngle in the shared MR Timing and
    # Related Parameters group, the echo time per frame in the MR Echo group
    refs = philips.parent / "Ref"
    keys = ["RepetitionTime", "FlipAngle", "EffectiveEchoTime"]
    for name, sidecars in _ENHANCED_REFS.items():
        path = philips / "enh" / name
        with _quiet():
            row = dicomxr.scan(path, keys=keys).iloc[0]
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        timing = ds.SharedFunctionalGroupsSequence[0].MRTimingAndRelatedParametersSequence[0]
        assert ds.get("RepetitionTime") is None  # not at the top level
        assert row["RepetitionTime"] == pytest.approx(float(timing.RepetitionTime))
        assert row["FlipAngle"] == pytest.approx(float(timing.FlipAngle))
        echoes = [
            float(f.MREchoSequence[0].EffectiveEchoTime)
            for f in ds.PerFrameFunctionalGroupsSequence
        ]
        want_echoes = sorted(set(echoes))
        dcm2niix = [json.loads((refs / s).read_text()) for s in sidecars]
        for side in dcm2niix:  # dcm2niix's BIDS sidecars, in seconds
            assert row["RepetitionTime"] / 1000 == pytest.approx(side["RepetitionTime"])
            assert row["FlipAngle"] == pytest.approx(side["FlipAngle"])
        if dcm2niix:
            want = [s["EchoTime"] for s in dcm2niix]
            assert [e / 1000 for e in want_echoes] == pytest.approx(want)
        if len(want_echoes) == 1:  # one value for all frames: in the catalog row
            assert row["EffectiveEchoTime"] == pytest.approx(want_echoes[0])
            continue
        # values that vary per frame: none in the row, each frame's in its per-frame table,
        # and a coordinate of the opened image along the dim they vary with
        assert row["EffectiveEchoTime"] is None
        assert row["per_frame"]["EffectiveEchoTime"] == pytest.approx(tuple(echoes))
        with _quiet():
            da = dicomxr.open_series(path, keys=keys)
        assert da.attrs["RepetitionTime"] == pytest.approx(float(timing.RepetitionTime))
        coord = da.coords["EffectiveEchoTime"]
        assert coord.dims == ("echo",)
        assert sorted(coord.values.tolist()) == pytest.approx(want_echoes)


def test_keys_inside_functional_groups_both_readers(philips: Path) -> None:
    # the pydicom path (files the fast reader declines) finds the same values
    keys = resolve_keys(["RepetitionTime", "FlipAngle", "EffectiveEchoTime", "2005,1429"])
    for name in _ENHANCED_REFS:
        path = str(philips / "enh" / name)
        fast = read_header_fast(path, os.path.getsize(path), None, keys)
        with _quiet():
            ref = read_header_pydicom(path, keys)
        assert fast is not None
        for key in keys:
            assert fast[key.name] == ref[key.name], (name, key.name)
            got = fast["per_frame"].get(key.name)
            want = ref["per_frame"].get(key.name)
            assert got == want, (name, key.name)
