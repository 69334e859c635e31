"""Catalog layer: ``dicomxr.scan`` and its fast header reader.

The values in the catalog are checked against pydicom reading the same files (an
independent parser), on every file of the real corpora and of pydicom's test files.
"""

from __future__ import annotations

import math
import os
import shutil
import struct
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

import dicomxr
from dicomxr import catalog

PIXEL_TAGS = {0x7FE00010, 0x7FE00009, 0x7FE00008}


def _all_corpus_files(root: Path) -> list[str]:
    files = [str(p) for p in sorted(root.rglob("*")) if p.is_file()]
    files += [p for p in get_testdata_files() if os.path.isfile(p)]
    return files


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return a == b


@pytest.fixture(scope="module")
def ct(philips_ct: Path) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("error", dicomxr.SkippedFileWarning)
        return dicomxr.scan(philips_ct)


# ---------------------------------------------------------------------------------------
# the column contract


def test_columns_follow_the_contract(ct: pd.DataFrame) -> None:
    assert tuple(ct.columns) == catalog.COLUMNS
    required = {
        "path", "file_size", "mtime", "pixel_data_offset", "TransferSyntaxUID", "SOPClassUID",
        "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID",
        "PatientID", "PatientName", "StudyDate", "StudyTime", "StudyDescription", "StudyID",
        "AccessionNumber", "SeriesNumber", "SeriesDescription", "Modality", "Manufacturer",
        "ManufacturerModelName", "InstanceNumber", "AcquisitionNumber", "Rows", "Columns",
        "NumberOfFrames", "SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit",
        "PixelRepresentation", "PlanarConfiguration", "PhotometricInterpretation",
        "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
        "SpacingBetweenSlices", "SliceLocation", "GantryDetectorTilt", "ImageType",
        "RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth",
        "AcquisitionDate", "AcquisitionTime", "ContentTime", "AcquisitionDateTime",
        "TriggerTime", "EchoTime", "EchoNumbers", "TemporalPositionIdentifier",
        "NumberOfTemporalPositions", "TemporalPositionIndex", "DiffusionBValue",
        "DiffusionGradientOrientation", "is_mosaic", "NumberOfImagesInMosaic", "is_enhanced",
        "has_pixels",
    }  # fmt: skip
    assert required <= set(ct.columns)


def test_one_row_per_instance_with_types(ct: pd.DataFrame, philips_ct: Path) -> None:
    images = sorted(p for p in philips_ct.iterdir() if p.name.startswith("I"))
    assert len(ct) == len(images) == 140
    assert ct["SOPInstanceUID"].is_unique
    assert set(ct["path"]) == {str(p.resolve()) for p in images}
    assert all(os.path.isabs(p) for p in ct["path"])
    assert ct["file_size"].dtype == np.int64 and ct["pixel_data_offset"].dtype == np.int64
    assert ct["InstanceNumber"].dtype == "Int64" and ct["Rows"].dtype == "Int64"
    assert ct["RescaleIntercept"].dtype == np.float64
    assert ct["is_mosaic"].dtype == bool and not ct["is_mosaic"].any()
    assert ct["has_pixels"].all() and not ct["is_enhanced"].any()
    assert (ct["NumberOfFrames"] == 1).all()
    assert (ct["RescaleIntercept"] == -1024).all()
    for col, n in (
        ("ImagePositionPatient", 3),
        ("ImageOrientationPatient", 6),
        ("PixelSpacing", 2),
    ):
        assert all(isinstance(v, tuple) and len(v) == n for v in ct[col]), col
        assert all(isinstance(x, float) for v in ct[col] for x in v), col
    assert all(isinstance(v, tuple) and all(isinstance(s, str) for s in v) for v in ct["ImageType"])


def test_values_equal_pydicom_dataset(ct: pd.DataFrame) -> None:
    """Compare directly with pydicom's Dataset attributes (not through the catalog code)."""
    for row in ct.iloc[::17].itertuples():
        ds = pydicom.dcmread(row.path, stop_before_pixels=True)
        assert row.SOPInstanceUID == ds.SOPInstanceUID
        assert row.SeriesInstanceUID == ds.SeriesInstanceUID
        assert row.InstanceNumber == ds.InstanceNumber
        assert row.ImagePositionPatient == tuple(float(v) for v in ds.ImagePositionPatient)
        assert row.ImageOrientationPatient == tuple(float(v) for v in ds.ImageOrientationPatient)
        assert row.PixelSpacing == tuple(float(v) for v in ds.PixelSpacing)
        assert row.Rows == ds.Rows and row.Columns == ds.Columns
        assert row.RescaleSlope == float(ds.RescaleSlope)
        assert row.PatientName == str(ds.PatientName)
        assert row.ImageType == tuple(ds.ImageType)
        assert row.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert row.file_size == os.path.getsize(row.path)


def test_pixel_data_offset_points_at_the_tag(ct: pd.DataFrame) -> None:
    for row in ct.iloc[::23].itertuples():
        with open(row.path, "rb") as fp:
            fp.seek(row.pixel_data_offset)
            head = fp.read(12)
        assert struct.unpack("<HH", head[:4]) == (0x7FE0, 0x0010)
        ds = pydicom.dcmread(row.path)
        value_tell = ds.get_item(0x7FE00010).value_tell
        # explicit VR OB/OW: tag(4) + VR(2) + reserved(2) + length(4)
        assert row.pixel_data_offset == value_tell - 12
        (length,) = struct.unpack("<I", head[8:12])
        assert length == row.Rows * row.Columns * row.BitsAllocated // 8


# ---------------------------------------------------------------------------------------
# the forms of the source


def test_source_forms(philips_ct: Path, tmp_path: Path) -> None:
    images = sorted(str(p) for p in philips_ct.glob("I1*"))
    one = dicomxr.scan(images[0])
    assert len(one) == 1 and one["path"].iloc[0] == images[0]
    assert len(dicomxr.scan(Path(images[0]))) == 1
    as_list = dicomxr.scan(images[:5])
    assert list(as_list["path"]) == images[:5]
    by_glob = dicomxr.scan(str(philips_ct / "I1*"))
    assert set(by_glob["path"]) == set(images)
    # a file named twice is catalogued once
    assert len(dicomxr.scan([images[0], images[0], str(philips_ct / "I1*")])) == len(images)
    # recursion
    parent = philips_ct.parent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dicomxr.SkippedFileWarning)
        flat = dicomxr.scan(parent, recursive=False)
        deep = dicomxr.scan(parent, recursive=True)
    assert len(flat) == 0 and len(deep) > 140
    assert (deep["path"].str.startswith(str(philips_ct))).sum() == 140


def test_threads_give_the_same_catalog(data_root: Path) -> None:
    source = data_root / "dcm_qa_ct"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dicomxr.SkippedFileWarning)
        one = dicomxr.scan(source)
        three = dicomxr.scan(source, workers=3)
    pd.testing.assert_frame_equal(one, three)
    assert one.attrs == three.attrs and len(one) > 200


def test_missing_sources_raise(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        dicomxr.scan(tmp_path / "nothing-here")
    with pytest.raises(FileNotFoundError, match="no files match"):
        dicomxr.scan(str(tmp_path / "*.dcm"))
    with pytest.raises(TypeError, match="expects a path"):
        dicomxr.scan(42)  # type: ignore[arg-type]


def test_missing_entries_of_a_list_are_reported(philips_ct: Path, tmp_path: Path) -> None:
    good = str(next(philips_ct.glob("I1*")))
    with pytest.warns(dicomxr.SkippedFileWarning, match="file not found"):
        df = dicomxr.scan([good, str(tmp_path / "gone.dcm")])
    assert len(df) == 1
    report = catalog.skipped(df)
    assert list(report["path"]) == [str(tmp_path / "gone.dcm")]


def test_empty_folder_gives_empty_catalog_with_columns(tmp_path: Path) -> None:
    df = dicomxr.scan(tmp_path)
    assert len(df) == 0 and tuple(df.columns) == catalog.COLUMNS
    assert catalog.skipped(df).empty


def test_progress_bar(
    philips_ct: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    files = sorted(str(p) for p in philips_ct.glob("I1*"))[:6]
    monkeypatch.setattr(catalog, "_PROGRESS_DELAY", 0.0)  # the real one hides fast scans
    with dicomxr.set_options(progress_min_files=5):
        dicomxr.scan(files)
    assert "scanning DICOM headers" in capsys.readouterr().err
    dicomxr.scan(files)  # default threshold is far higher
    assert "scanning DICOM headers" not in capsys.readouterr().err
    dicomxr.scan(files[:2], progress=True)
    assert "scanning DICOM headers" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# real corpora: MOSAIC, enhanced, diffusion


def test_siemens_mosaic(data_root: Path) -> None:
    df = dicomxr.scan(data_root / "dcm_qa_ts" / "In")
    assert len(df) == 9
    assert df["is_mosaic"].all()
    assert (df["NumberOfImagesInMosaic"] == 35).all()
    # explicit LE, implicit LE, big endian (pydicom path) and the compressed ones
    assert df["TransferSyntaxUID"].nunique() == 7


def test_mosaic_count_from_csa_when_the_tag_is_missing(data_root: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(data_root / "dcm_qa_ts" / "In" / "1.dcm")
    del ds[0x0019100A]
    path = tmp_path / "mosaic_no_0019100A.dcm"
    ds.save_as(path, enforce_file_format=True)
    row = dicomxr.scan(path).iloc[0]
    assert bool(row["is_mosaic"]) and row["NumberOfImagesInMosaic"] == 35


def test_enhanced_and_raw_objects(data_root: Path) -> None:
    folder = data_root / "dcm_qa_philips_enh" / "In" / "enh"
    df = dicomxr.scan(folder)
    images = df[df["has_pixels"]]
    raw = df[~df["has_pixels"]]
    assert images["is_enhanced"].all() and (images["NumberOfFrames"] > 1).all()
    assert len(raw) >= 1 and (raw["pixel_data_offset"] == -1).all()
    assert raw["path"].str.endswith("_Raw.dcm").all()
    for row in images.itertuples():
        ds = pydicom.dcmread(row.path, stop_before_pixels=True)
        assert row.NumberOfFrames == int(ds.NumberOfFrames)
        assert row.is_enhanced == ("PerFrameFunctionalGroupsSequence" in ds)


def test_diffusion_bvalues_match_dcm2niix(data_root: Path) -> None:
    """Philips classic DWI: the catalog's b-values are the set dcm2niix wrote."""
    cl = data_root / "dcm_qa_philips_enh" / "In" / "cl"
    files = sorted(cl.glob("2301*"))
    assert files, "the DWI series 2301 is missing from the corpus"
    df = dicomxr.scan(files)
    ref = (data_root / "dcm_qa_philips_enh" / "Ref" / "2301_WIP_DTIphase_S2MB2_cl.bval").read_text()
    assert set(df["DiffusionBValue"]) == {float(v) for v in ref.split()}
    assert all(isinstance(v, tuple) and len(v) == 3 for v in df["DiffusionGradientOrientation"])


def _vendor_file(tmp_path: Path, name: str, private: list, *, implicit: bool) -> Path:
    """A small MR file carrying vendor private diffusion tags (and no standard ones)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"]
    for group, block, creator, elements in private:
        ds.add_new((group << 16) | block, "LO", creator)
        for offset, vr, value in elements:
            ds.add_new((group << 16) | (block << 8) | offset, vr, value)
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = b"\x00" * 8
    path = tmp_path / f"{name}_{'implicit' if implicit else 'explicit'}.dcm"
    ds.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return path


@pytest.mark.parametrize("implicit", [False, True])
def test_vendor_private_diffusion(tmp_path: Path, implicit: bool) -> None:
    siemens = _vendor_file(
        tmp_path,
        "siemens",
        # the private block need not be 0x10: the creator decides
        [
            (
                0x0019,
                0x11,
                "SIEMENS MR HEADER",
                [(0x0C, "IS", "1000"), (0x0E, "FD", [0.6, 0.8, 0.0])],
            )
        ],
        implicit=implicit,
    )
    ge = _vendor_file(
        tmp_path,
        "ge",
        [
            (0x0043, 0x10, "GEMS_PARM_01", [(0x39, "IS", ["1000000700", "8", "0", "0"])]),
            (
                0x0019,
                0x10,
                "GEMS_ACQU_01",
                [(0xBB, "DS", "0.0"), (0xBC, "DS", "-1.0"), (0xBD, "DS", "0.0")],
            ),
        ],
        implicit=implicit,
    )
    philips = _vendor_file(
        tmp_path,
        "philips",
        [
            (0x2001, 0x10, "Philips Imaging DD 001", [(0x03, "FL", 1500.0)]),
            (
                0x2005,
                0x10,
                "Philips MR Imaging DD 001",
                [(0xB0, "FL", 0.0), (0xB1, "FL", 0.0), (0xB2, "FL", 1.0)],
            ),
        ],
        implicit=implicit,
    )
    # a block owned by another creator must not be read as Siemens
    other = _vendor_file(
        tmp_path,
        "other",
        [(0x0019, 0x10, "SOMEONE ELSE", [(0x0C, "IS", "999")])],
        implicit=implicit,
    )
    df = dicomxr.scan([siemens, ge, philips, other]).set_index(
        pd.Index(["siemens", "ge", "philips", "other"])
    )
    assert df.loc["siemens", "DiffusionBValue"] == 1000.0
    assert df.loc["siemens", "DiffusionGradientOrientation"] == (0.6, 0.8, 0.0)
    assert df.loc["ge", "DiffusionBValue"] == 700.0
    assert df.loc["ge", "DiffusionGradientOrientation"] == (0.0, -1.0, 0.0)
    assert df.loc["philips", "DiffusionBValue"] == 1500.0
    assert df.loc["philips", "DiffusionGradientOrientation"] == (0.0, 0.0, 1.0)
    assert math.isnan(df.loc["other", "DiffusionBValue"])
    # the pydicom reader agrees
    for path in (siemens, ge, philips, other):
        ref = catalog.read_header_pydicom(path)
        fast = catalog.read_header_fast(str(path), os.path.getsize(path))
        assert fast is not None
        for key in ("DiffusionBValue", "DiffusionGradientOrientation"):
            assert _same(ref[key], fast[key]), (path.name, key)


# ---------------------------------------------------------------------------------------
# the fast reader against pydicom, on every file we have


def test_fast_reader_equals_pydicom_on_every_file(data_root: Path) -> None:
    """Every catalog column, fast reader vs pydicom, for every real and pydicom test file."""
    handled = declined = 0
    mismatches: list[str] = []
    memo: dict = {}  # shared across every file, as within one scan, only more varied
    for path in _all_corpus_files(data_root):
        size = os.path.getsize(path)
        try:
            fast = catalog.read_header_fast(path, size, memo)
            fast_err = None
        except catalog._Skip as exc:
            fast, fast_err = None, str(exc)
        try:
            ref = catalog.read_header_pydicom(path)
            ref_err = None
        except catalog._Skip as exc:
            ref, ref_err = None, str(exc)
        if fast is None and fast_err is None:
            declined += 1
            continue
        handled += 1
        if fast_err is not None:
            if ref is not None:
                # pydicom reads a header cut short silently; the fast reader refuses it
                assert fast_err.startswith("truncated header"), (path, fast_err)
                assert os.path.basename(path) == "rtplan_truncated.dcm", path
            continue
        assert ref is not None, (path, ref_err)
        for key, value in ref.items():
            if not _same(value, fast.get(key)):
                mismatches.append(f"{path}: {key}: pydicom {value!r} != fast {fast.get(key)!r}")
        assert set(fast) == set(ref)
    assert not mismatches, "\n".join(mismatches[:20])
    # the fast reader must carry the bulk of real files, not decline its way to green
    assert handled > 1600 and declined < 130, (handled, declined)


def test_fast_reader_declines_big_endian_and_deflated(data_root: Path) -> None:
    for name in ("MR_small_bigendian.dcm", "image_dfl.dcm"):
        path = get_testdata_file(name)
        assert catalog.read_header_fast(path, os.path.getsize(path)) is None
        row = catalog.read_header(path)  # pydicom takes over
        assert row["SOPInstanceUID"]
    deflated = catalog.read_header(get_testdata_file("image_dfl.dcm"))
    assert deflated["has_pixels"] and deflated["pixel_data_offset"] == -1
    big = catalog.read_header(get_testdata_file("MR_small_bigendian.dcm"))
    with open(big["path"], "rb") as fp:
        fp.seek(big["pixel_data_offset"])
        assert struct.unpack(">HH", fp.read(4)) == (0x7FE0, 0x0010)


def test_read_header_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not an image\n")
    with pytest.raises(ValueError, match=r"notes\.txt: not a DICOM file"):
        catalog.read_header(path)


def test_catalog_is_cheap_to_copy_and_keeps_the_report(data_root: Path) -> None:
    with pytest.warns(dicomxr.SkippedFileWarning):
        df = dicomxr.scan(data_root / "dcm_qa_ct" / "DICOMDIR")
    sub = df[df["has_pixels"]]
    assert catalog.skipped(sub).equals(catalog.skipped(df))
    assert all(set(r) == {"path", "reason"} for r in df.attrs["skipped"])


# ---------------------------------------------------------------------------------------
# the opt-in persistent cache


def _backdate(folder: Path, seconds: float = 3600.0) -> None:
    """Give every file an mtime in the past: files modified within the cache's racy window
    of a scan are read again by the next one (their mtime cannot vouch for their content)."""
    when = time.time() - seconds
    for path in folder.rglob("*"):
        if path.is_file():
            os.utime(path, (when, when))


def _counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real_read_one = catalog._read_one

    def counting(path: str, st: os.stat_result, memo: dict | None = None, *keys) -> dict:
        calls.append(path)
        return real_read_one(path, st, memo, *keys)

    monkeypatch.setattr(catalog, "_read_one", counting)
    return calls


def _assert_same_catalog(got: pd.DataFrame, want: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(got, want)
    assert list(got.dtypes) == list(want.dtypes)
    assert got.attrs == want.attrs
    for col in [c for c in got.columns if got[c].dtype == np.dtype(object)]:  # tuples stay tuples
        for a, b in zip(got[col], want[col], strict=True):
            assert type(a) is type(b), (col, a, b)
            assert repr(a) == repr(b), (col, a, b)


def test_cache_reads_unchanged_files_once(
    tmp_path: Path, philips_ct: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMXR_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    for src in sorted(philips_ct.glob("I1*"))[:5]:
        shutil.copy(src, data / src.name)
    (data / "notes.txt").write_text("not DICOM\n")
    _backdate(data)
    before = sorted(p.name for p in data.iterdir())

    first = dicomxr.scan(data, cache=True)
    assert len(list((tmp_path / "cache" / "catalog").glob("snapshot-*.arrow"))) == 1
    assert sorted(p.name for p in data.iterdir()) == before  # nothing next to the data

    calls = _counting_reads(monkeypatch)
    second = dicomxr.scan(data, cache=True)
    assert calls == []  # every header, and the non-DICOM verdict, came from the cache
    _assert_same_catalog(second, first)
    assert all(isinstance(v, tuple) for v in second["ImagePositionPatient"])

    changed = sorted(data.glob("I*"))[0]
    os.utime(changed, (1_000_000_000, 1_000_000_000))
    third = dicomxr.scan(data, cache=True)
    assert calls == [str(changed)]
    assert third.loc[third["path"] == str(changed), "mtime"].iloc[0] == 1_000_000_000
    # without cache=True the cache is neither read nor written
    calls.clear()
    dicomxr.scan(data)
    assert len(calls) == 6


def test_rescan_equals_a_plain_scan_of_the_real_corpora(data_root: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dicomxr.SkippedFileWarning)
        plain = dicomxr.scan(data_root, progress=False)
        filled = dicomxr.scan(data_root, progress=False, cache=tmp_path / "cache")
        again = dicomxr.scan(data_root, progress=False, cache=tmp_path / "cache")
    _assert_same_catalog(filled, plain)
    _assert_same_catalog(again, plain)


def test_cache_prunes_snapshots_no_scan_used(tmp_path: Path, philips_ct: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for src in sorted(philips_ct.glob("I1*"))[:2]:
        shutil.copy(src, data / src.name)
    _backdate(data)
    cache = tmp_path / "cache"
    cache.mkdir()
    day = 86400
    now = time.time()
    # a snapshot of a source last scanned 100 days ago, one of 10 days ago, a temporary file
    # of a write killed 2 days ago, one being written now, and a file that is not ours
    files = {
        "snapshot-old.arrow": now - 100 * day,
        "snapshot-recent.arrow": now - 10 * day,
        ".snapshot-x.arrow.abc.tmp.arrow": now - 2 * day,
        ".snapshot-y.arrow.def.tmp.arrow": now,
        "notes.txt": now - 1000 * day,
    }
    for name, when in files.items():
        (cache / name).write_bytes(b"x")
        os.utime(cache / name, (when, when))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dicomxr.SkippedFileWarning)
        dicomxr.scan(data, cache=cache)  # writes a snapshot, then prunes
    left = sorted(p.name for p in cache.iterdir())
    written = [n for n in left if n.startswith("snapshot-") and n not in files]
    assert len(written) == 1
    assert left == sorted(
        [written[0], "snapshot-recent.arrow", ".snapshot-y.arrow.def.tmp.arrow", "notes.txt"]
    )
    # a rescan that reads the snapshot (and writes nothing) makes it young again
    os.utime(cache / written[0], (now - 100 * day, now - 100 * day))
    dicomxr.scan(data, cache=cache)
    assert time.time() - (cache / written[0]).stat().st_mtime < day
    # prune_cache trims now; max_age_days=0 empties the cache of everything dicomxr wrote
    assert dicomxr.catalog.prune_cache(cache, max_age_days=30) == []
    removed = dicomxr.catalog.prune_cache(cache, max_age_days=0)
    assert sorted(os.path.basename(f) for f in removed) == sorted(
        [written[0], "snapshot-recent.arrow", ".snapshot-y.arrow.def.tmp.arrow"]
    )
    assert [p.name for p in cache.iterdir()] == ["notes.txt"]


def test_rescan_keeps_file_names_that_are_not_utf8(
    tmp_path: Path, philips_ct: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a name the OS gives as bytes that are not UTF-8 (Python: lone surrogates), next to a
    # skipped non-DICOM file, so that the snapshot's entries are stored out of file order
    data = tmp_path / "data"
    data.mkdir()
    names = [b"a-\xff.dcm", b"b.dcm"]
    for name, src in zip(names, sorted(philips_ct.glob("I1*"))[:2], strict=True):
        shutil.copy(src, os.path.join(os.fsencode(data), name))
    (data / "0-notes.txt").write_text("not DICOM\n")
    _backdate(data)
    cache = tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dicomxr.SkippedFileWarning)
        plain = dicomxr.scan(data, progress=False)
        dicomxr.scan(data, progress=False, cache=cache)
        calls = _counting_reads(monkeypatch)
        again = dicomxr.scan(data, progress=False, cache=cache)
    assert calls == []
    assert os.fsencode(again["path"].iloc[0]).endswith(b"a-\xff.dcm")
    _assert_same_catalog(again, plain)


def test_rescan_follows_added_removed_modified_and_replaced_files(
    tmp_path: Path, philips_ct: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    sources = sorted(philips_ct.glob("I1*"))[:8]
    for i, src in enumerate(sources[:6]):
        sub = data / f"d{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, sub / src.name)
    (data / "README.txt").write_text("not DICOM\n")
    _backdate(data)
    cache = tmp_path / "cache"
    # snapshots in record batches of 3 rows: the chunked reading of a large cohort
    monkeypatch.setattr(catalog._catalog_cache, "CHUNK_ROWS", 3)

    real_read_one = catalog._read_one

    def check(expect_reads: set[str], expect_warning: bool = False) -> pd.DataFrame:
        calls = _counting_reads(monkeypatch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dicomxr.SkippedFileWarning)
            if not expect_warning:  # a snapshot that cannot be written warns too
                warnings.simplefilter("error", RuntimeWarning)
            got = dicomxr.scan(data, cache=cache, progress=False)
        monkeypatch.setattr(catalog, "_read_one", real_read_one)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dicomxr.SkippedFileWarning)
            want = dicomxr.scan(data, progress=False)  # the reference: no cache
        _assert_same_catalog(got, want)
        assert set(calls) == expect_reads
        return got

    first = check({str(p) for p in data.rglob("*") if p.is_file()})
    assert len(first) == 6 and len(catalog.skipped(first)) == 1
    check(set())
    # added, removed, modified (same size, another mtime), replaced by a non-DICOM file
    added = data / "d0" / sources[6].name
    shutil.copy(sources[6], added)
    removed = sorted((data / "d1").glob("I*"))[0]
    removed.unlink()
    modified = sorted((data / "d0").glob("I*"))[0]
    blob = bytearray(modified.read_bytes())
    blob[-1] ^= 0xFF  # a pixel changes: same size
    modified.write_bytes(bytes(blob))
    replaced = sorted((data / "d1").glob("I*"))[-1]
    replaced.write_text("replaced by notes\n")
    new_folder = data / "d2"
    new_folder.mkdir()
    shutil.copy(sources[7], new_folder / sources[7].name)
    _backdate(data, 100.0)  # every file changed its mtime
    got = check({str(p) for p in data.rglob("*") if p.is_file()})
    os.utime(modified, (1_000_000_000, 1_000_000_000))
    got = check({str(modified)})
    assert len(got) == 6 and str(removed) not in set(got["path"])
    assert str(replaced) in set(catalog.skipped(got)["path"])
    check(set())
    # a snapshot cut short, then one overwritten with noise: a warning, every file read
    (snapshot,) = cache.glob("snapshot-*.arrow")
    everything = {str(p) for p in data.rglob("*") if p.is_file()}
    snapshot.write_bytes(snapshot.read_bytes()[: snapshot.stat().st_size // 2])
    with pytest.warns(RuntimeWarning, match="unreadable"):
        check(everything, expect_warning=True)
    check(set())  # rewritten whole
    snapshot.write_bytes(b"ARROW1" + os.urandom(5000))
    with pytest.warns(RuntimeWarning, match="unreadable"):
        check(everything, expect_warning=True)
    # another dicomxr version's snapshot is ignored (and replaced) without a warning
    monkeypatch.setattr(catalog._catalog_cache, "__version__", "0.0.0-other")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        calls = _counting_reads(monkeypatch)
        dicomxr.scan(data, cache=cache, progress=False, warn=False)
    assert set(calls) == everything


def test_recently_modified_files_are_read_again(
    tmp_path: Path, philips_ct: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file written just before a scan may change again within one mtime tick."""
    data = tmp_path / "data"
    data.mkdir()
    src = sorted(philips_ct.glob("I1*"))[0]
    shutil.copy(src, data / src.name)  # mtime: now
    dicomxr.scan(data, cache=tmp_path / "cache", progress=False)
    calls = _counting_reads(monkeypatch)
    dicomxr.scan(data, cache=tmp_path / "cache", progress=False)
    assert calls == [str(data / src.name)]


# ---------------------------------------------------------------------------------------
# the fast reader on hand-made layouts the corpora may not cover


def _tricky_dataset(*, pixels: bool) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.SeriesDescription = "Kopf nativ, Schädel"  # non-ASCII in UTF-8
    # nested sequences of undefined length, holding the same tags as the top level
    inner = Dataset()
    inner.ImagePositionPatient = [9.0, 9.0, 9.0]
    inner.InstanceNumber = 99
    outer = Dataset()
    outer.SOPInstanceUID = "9.9.9"
    outer.ReferencedImageSequence = pydicom.Sequence([inner])
    ds.ReferencedImageSequence = pydicom.Sequence([outer, Dataset()])
    ds["ReferencedImageSequence"].is_undefined_length = True
    ds.ReferencedImageSequence[0]["ReferencedImageSequence"].is_undefined_length = True
    for item in ds.ReferencedImageSequence:
        item.is_undefined_length_sequence_item = True
    ds.PatientName = "Doe^Jane"
    ds.SeriesInstanceUID = generate_uid()
    ds.InstanceNumber = 7
    ds.ImagePositionPatient = [-1.5, 2.25, 3e2]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    # a private value far larger than the reader's first chunk, then a kept value that
    # itself crosses a chunk boundary
    ds.add_new(0x00291010, "OB", b"\x01" * 40_000)
    ds.Rows = ds.Columns = 4
    ds.PixelSpacing = [0.5, 0.5]
    ds.WindowCenter = [str(40 + i) for i in range(5000)]  # ~25 kB
    ds.WindowWidth = "400"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if pixels:
        ds.PixelData = np.arange(16, dtype="<i2").tobytes()
    return ds


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("pixels", [True, False])
def test_fast_reader_on_tricky_layouts(tmp_path: Path, implicit: bool, pixels: bool) -> None:
    ds = _tricky_dataset(pixels=pixels)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    path = tmp_path / "tricky.dcm"
    ds.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    size = os.path.getsize(path)
    fast = catalog.read_header_fast(str(path), size)
    assert fast is not None, "the fast reader declined a plain little-endian file"
    ref = catalog.read_header_pydicom(path)
    for key, value in ref.items():
        assert _same(value, fast[key]), (key, value, fast[key])
    # the top-level values, not the ones nested in the sequences
    assert fast["InstanceNumber"] == 7 and fast["ImagePositionPatient"] == (-1.5, 2.25, 300.0)
    assert fast["SeriesDescription"] == "Kopf nativ, Schädel"
    assert len(fast["WindowCenter"]) == 5000 and fast["WindowCenter"][-1] == 5039.0
    if pixels:
        with open(path, "rb") as fp:
            fp.seek(fast["pixel_data_offset"])
            assert struct.unpack("<HH", fp.read(4)) == (0x7FE0, 0x0010)
        assert fast["pixel_data_offset"] == size - (8 if implicit else 12) - 32
    else:
        # the file ends on a 10-byte element (PixelRepresentation): no pixels, no error
        assert fast["pixel_data_offset"] == -1 and not fast["has_pixels"]
        assert fast["PixelRepresentation"] == 1
