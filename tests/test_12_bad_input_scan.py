"""Bad input never stops a scan: each file is catalogued or listed with a reason.

The tree under test mixes a sound CT slice with every kind of damage we know of: non-DICOM
files, an empty file, headers and pixel data cut short (``tests/data``), random bytes
behind a DICM marker, a dangling symlink, pydicom's odd test files (bad VR, no meta,
missing transfer syntax, truncated), and the real corpora's raw-data objects and
secondary-capture pages.
"""

from __future__ import annotations

import os
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file

import dicomxr
from dicomxr import catalog

DATA = Path(__file__).parent / "data"

PYDICOM_ODD = [
    "badVR.dcm",
    "no_meta.dcm",
    "no_meta_group_length.dcm",
    "meta_missing_tsyntax.dcm",
    "rtplan_truncated.dcm",
    "MR_truncated.dcm",
    "ExplVR_BigEndNoMeta.dcm",
    "ExplVR_LitEndNoMeta.dcm",
    "empty_charset_LEI.dcm",
    "UN_sequence.dcm",
    "nested_priv_SQ.dcm",
    "J2K_pixelrep_mismatch.dcm",
    "reportsi_with_empty_number_tags.dcm",
    "zipMR.gz",
    "crayons.icc",
    "test1.json",
]


@pytest.fixture(scope="module")
def bad_tree(tmp_path_factory: pytest.TempPathFactory, philips_ct: Path) -> Path:
    root = tmp_path_factory.mktemp("bad_tree")
    shutil.copy(philips_ct / "I10", root / "good.dcm")
    (root / "notes.txt").write_text("a note that happens to sit in the DICOM folder\n")
    (root / "empty.dcm").write_bytes(b"")
    shutil.copy(DATA / "ct_header_cut.dcm", root / "header_cut.dcm")
    shutil.copy(DATA / "ct_pixels_cut.dcm", root / "pixels_cut.dcm")
    rng = np.random.default_rng(0)
    (root / "noise.bin").write_bytes(rng.bytes(4096))
    (root / "dicm_then_noise.dcm").write_bytes(b"\0" * 128 + b"DICM" + rng.bytes(2048))
    (root / "tiny.dcm").write_bytes(b"\x08\x00")
    os.symlink(root / "no-such-target.dcm", root / "dangling_link.dcm")
    os.mkfifo(root / "pipe.dcm")  # opening it would block: it must not be opened
    odd = root / "pydicom_odd"
    odd.mkdir()
    for name in PYDICOM_ODD:
        shutil.copy(get_testdata_file(name), odd / name)
    return root


@pytest.fixture(scope="module")
def scanned(bad_tree: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    with pytest.warns(dicomxr.SkippedFileWarning) as record:
        df = dicomxr.scan(bad_tree)
    assert len(record) == 1
    return df, catalog.skipped(df)


def _reason(report: pd.DataFrame, path: Path) -> str:
    (reason,) = report.loc[report["path"] == str(path), "reason"]
    return reason


def test_every_file_is_accounted_for_once(
    bad_tree: Path, scanned: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    df, report = scanned
    everything = {
        os.path.join(d, f) for d, _, files in os.walk(bad_tree) for f in files
    }  # includes the dangling symlink
    rows, skipped = set(df["path"]), set(report["path"])
    assert rows.isdisjoint(skipped)
    assert rows | skipped == everything
    assert report["reason"].str.len().min() > 10  # a reason, not a code


def test_reasons_are_specific(bad_tree: Path, scanned: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    _, report = scanned
    assert _reason(report, bad_tree / "empty.dcm") == "empty file (0 bytes)"
    assert _reason(report, bad_tree / "pipe.dcm").startswith("not a regular file")
    assert _reason(report, bad_tree / "notes.txt").startswith("not a DICOM file")
    assert _reason(report, bad_tree / "noise.bin").startswith("not a DICOM file")
    assert _reason(report, bad_tree / "tiny.dcm").startswith("not a DICOM file")
    assert _reason(report, bad_tree / "dangling_link.dcm").startswith("broken symbolic link")
    header_cut = _reason(report, bad_tree / "header_cut.dcm")
    assert header_cut.startswith("truncated header (element (01F7,1019) at byte 3782")
    assert "4096 bytes" in header_cut
    noise_after_dicm = _reason(report, bad_tree / "dicm_then_noise.dcm")
    assert noise_after_dicm.startswith("no usable DICOM attributes")
    odd = bad_tree / "pydicom_odd"
    # implicit VR: (300A,00B0) at byte 1410 declares 976 bytes, the file ends at 2129
    assert _reason(report, odd / "rtplan_truncated.dcm").startswith(
        "truncated header (element (300A,00B0) at byte 1410 "
    )
    for name in ("zipMR.gz", "crayons.icc", "test1.json"):
        assert _reason(report, odd / name).startswith("not a DICOM file")


def test_sound_headers_are_catalogued(
    bad_tree: Path, scanned: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    df, _ = scanned
    by_name = df.set_index(df["path"].map(os.path.basename))
    good = by_name.loc["good.dcm"]
    assert good["has_pixels"] and not good["pixel_data_truncated"]
    ds = pydicom.dcmread(bad_tree / "good.dcm", stop_before_pixels=True)
    assert good["SOPInstanceUID"] == ds.SOPInstanceUID
    for name in ("badVR.dcm", "ExplVR_BigEndNoMeta.dcm", "ExplVR_LitEndNoMeta.dcm"):
        assert name in by_name.index, name
    # headers read without a transfer syntax in the meta get the one pydicom found
    assert by_name.loc["meta_missing_tsyntax.dcm", "TransferSyntaxUID"] == "1.2.840.10008.1.2"
    assert by_name.loc["ExplVR_BigEndNoMeta.dcm", "TransferSyntaxUID"] == "1.2.840.10008.1.2.2"


def test_pixel_data_cut_short_is_flagged(
    bad_tree: Path, scanned: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    df, _ = scanned
    flagged = set(df.loc[df["pixel_data_truncated"], "path"].map(os.path.basename))
    assert flagged == {"pixels_cut.dcm", "MR_truncated.dcm"}
    row = df.loc[df["path"] == str(bad_tree / "pixels_cut.dcm")].iloc[0]
    with open(row["path"], "rb") as fp:
        fp.seek(row["pixel_data_offset"])
        group, elem, vr, _, length = struct.unpack("<HH2sHI", fp.read(12))
    assert (group, elem, vr) == (0x7FE0, 0x0010, b"OW")
    assert row["pixel_data_offset"] + 12 + length > row["file_size"]


def test_non_recursive_scan_reports_dangling_links(tmp_path: Path) -> None:
    os.symlink(tmp_path / "gone.dcm", tmp_path / "link.dcm")
    (tmp_path / "sub").mkdir()
    with pytest.warns(dicomxr.SkippedFileWarning, match="broken symbolic link"):
        df = dicomxr.scan(tmp_path, recursive=False)
    assert list(catalog.skipped(df)["path"]) == [str(tmp_path / "link.dcm")]


def test_a_named_non_dicom_file_is_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "LICENSE"
    path.write_text("BSD-2-Clause\n")
    with pytest.warns(dicomxr.SkippedFileWarning, match="1 x not a DICOM file"):
        df = dicomxr.scan(path)
    assert len(df) == 0 and list(catalog.skipped(df)["path"]) == [str(path)]


def test_a_single_bad_file_is_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    with pytest.warns(dicomxr.SkippedFileWarning, match="1 x empty file"):
        df = dicomxr.scan(path)
    assert len(df) == 0 and list(catalog.skipped(df)["path"]) == [str(path)]


def test_non_dicom_companions_do_not_warn(tmp_path: Path, philips_ct: Path) -> None:
    shutil.copy(philips_ct / "I10", tmp_path / "I10")
    (tmp_path / "LICENSE").write_text("BSD-2-Clause\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", dicomxr.SkippedFileWarning)
        df = dicomxr.scan(tmp_path)
    assert len(df) == 1
    assert list(catalog.skipped(df)["path"]) == [str(tmp_path / "LICENSE")]
    with warnings.catch_warnings():
        warnings.simplefilter("error", dicomxr.DicomxrWarning)
        dicomxr.scan([tmp_path / "I10", tmp_path / "missing"], warn=False)


def test_raw_data_objects_and_secondary_capture_pages(data_root: Path) -> None:
    """Objects without pixels and RGB pages are catalogued as they are, for the plan to set apart."""
    raw = sorted((data_root / "dcm_qa_philips_enh" / "In" / "enh").glob("*_Raw.dcm"))
    pages = sorted((data_root / "dcm_qa_ct" / "In" / "Philips" / "S21570" / "S4010").glob("I*"))
    df = dicomxr.scan(raw + pages)
    assert len(df) == len(raw) + len(pages)
    is_raw = df["path"].str.endswith("_Raw.dcm")
    assert not df.loc[is_raw, "has_pixels"].any()
    assert (df.loc[is_raw, "pixel_data_offset"] == -1).all()
    assert df.loc[is_raw, "Rows"].isna().all()
    assert df.loc[is_raw, "SOPClassUID"].eq("1.2.840.10008.5.1.4.1.1.66").all()  # Raw Data
    sc = df[~is_raw]
    assert sc["has_pixels"].all() and set(sc["SamplesPerPixel"]) == {1, 3}  # RGB and grey
    assert sc.loc[sc["SamplesPerPixel"] == 3, "ImagePositionPatient"].isna().all()
    assert sc["SOPClassUID"].eq("1.2.840.10008.5.1.4.1.1.7").all()


def test_file_names_that_are_not_utf8(tmp_path: Path, philips_ct: Path) -> None:
    folder = os.fsencode(tmp_path)
    shutil.copy(philips_ct / "I10", os.path.join(folder, b"slice\xff.dcm"))
    with open(os.path.join(folder, b"notes\xfe.txt"), "wb") as fh:
        fh.write(b"not DICOM")
    df = dicomxr.scan(tmp_path)
    (path,) = df["path"]
    assert os.fsencode(path) == os.path.join(folder, b"slice\xff.dcm")
    assert os.path.isfile(path)
    (skipped_path,) = catalog.skipped(df)["path"]
    assert os.fsencode(skipped_path).endswith(b"notes\xfe.txt")


def test_compressed_pixel_data_cut_short(tmp_path: Path, data_root: Path) -> None:
    """Encapsulated pixel data: whole files pass, a file cut inside a fragment is flagged."""
    whole = dicomxr.scan(data_root / "dcm_qa_ts" / "In")
    compressed = whole[whole["TransferSyntaxUID"].str.startswith("1.2.840.10008.1.2.4")]
    assert len(compressed) >= 5 and not compressed["pixel_data_truncated"].any()
    row = compressed.iloc[0]
    cut = tmp_path / "cut_in_fragment.dcm"
    cut.write_bytes(Path(row["path"]).read_bytes()[: row["pixel_data_offset"] + 2000])
    # the same bytes with trailing padding after a complete pixel data element
    padded = tmp_path / "padded.dcm"
    padded.write_bytes(
        Path(row["path"]).read_bytes() + b"\xfc\xff\xfc\xffOB\x00\x00\x02\x00\x00\x00\x00\x00"
    )
    df = dicomxr.scan([cut, padded]).set_index("path")
    assert df.loc[str(cut), "pixel_data_truncated"]
    assert df.loc[str(cut), "pixel_data_offset"] == row["pixel_data_offset"]
    assert not df.loc[str(padded), "pixel_data_truncated"]
    for path, expected in ((cut, True), (padded, False)):
        assert catalog.read_header_pydicom(path)["pixel_data_truncated"] is expected


def test_mutated_headers_never_crash_a_scan(tmp_path: Path, data_root: Path) -> None:
    """Seeded fuzzing: random byte flips, splices and cuts in real headers (explicit and
    implicit VR, Philips CT and MR, Siemens MOSAIC). The fast reader and the pydicom
    fallback must catalogue or skip every file, never raise."""
    sources = [
        data_root / "dcm_qa_ct" / "In" / "Philips" / "S21570" / "S2020" / "I10",
        data_root / "dcm_qa_ts" / "In" / "1.dcm",  # explicit VR LE
        data_root / "dcm_qa_ts" / "In" / "2.dcm",  # implicit VR LE
        sorted((data_root / "dcm_qa_philips_enh" / "In" / "cl").glob("*"))[5],
    ]
    heads = [src.read_bytes()[:20_000] for src in sources]
    rng = np.random.default_rng(20261126)
    for i in range(300):
        data = bytearray(heads[i % len(heads)])
        for _ in range(int(rng.integers(1, 8))):
            pos = int(rng.integers(0, len(data)))
            kind = rng.random()
            if kind < 0.5:
                data[pos] = int(rng.integers(0, 256))
            elif kind < 0.7:
                data[pos : pos + 4] = rng.bytes(4)
            elif kind < 0.85:
                del data[pos : pos + int(rng.integers(1, 50))]
            else:
                del data[pos:]
        (tmp_path / f"mutant_{i:03d}.dcm").write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dicomxr.SkippedFileWarning)
        df = dicomxr.scan(tmp_path)
    report = catalog.skipped(df)
    assert len(df) + len(report) == 300
    assert set(df["path"]).isdisjoint(report["path"])
    assert len(df) > 0 and len(report) > 0  # the mutations do both
