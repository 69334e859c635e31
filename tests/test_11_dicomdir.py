"""DICOMDIR sources: nested DIRFILEs, file-set root, dangling references.

References are checked against pydicom: its DICOMDIR records for the real Philips CT
file-set, and its :class:`pydicom.fileset.FileSet` for pydicom's own DICOMDIR test set.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.fileset import FileSet

import dicomxr
from dicomxr import catalog, dicomdir


def _image_records(path: Path) -> list[tuple[str, ...]]:
    """ReferencedFileIDs of the records of one directory file (pydicom, no recursion)."""
    ds = pydicom.dcmread(path)
    out = []
    for record in ds.DirectoryRecordSequence:
        fid = record.get("ReferencedFileID")
        if fid is not None:
            out.append(tuple([fid] if isinstance(fid, str) else fid))
    return out


def test_philips_nested_dirfiles(data_root: Path) -> None:
    root = data_root / "dcm_qa_ct" / "In" / "Philips"
    # reference, by hand with pydicom: root DICOMDIR -> study DIRFILEs -> series DIRFILEs
    expected_files: set[str] = set()
    expected_missing: set[str] = set()
    for study_id in _image_records(root / "DICOMDIR"):
        for series_id in _image_records(root.joinpath(*study_id)):
            series_dirfile = root.joinpath(*series_id)
            if not series_dirfile.exists():
                expected_missing.add(str(series_dirfile))
                continue
            for image_id in _image_records(series_dirfile):
                expected_files.add(str(root.joinpath(*image_id)))
    assert len(expected_missing) == 3  # S21570/S2030, S21570/S2010, S21610/S2010

    with pytest.warns(dicomxr.SkippedFileWarning, match="3 x dangling DICOMDIR reference"):
        df = dicomxr.scan(root / "DICOMDIR")
    assert set(df["path"]) == expected_files
    assert len(df) == len(expected_files) and df["SOPInstanceUID"].is_unique
    report = catalog.skipped(df)
    assert set(report["path"]) == expected_missing
    assert report["reason"].str.startswith("dangling DICOMDIR reference").all()
    # the DIRFILEs themselves never become rows
    assert not df["path"].str.endswith("DIRFILE").any()
    # the same instances as walking the tree (which lists the DIRFILEs, without warning)
    with warnings.catch_warnings():
        warnings.simplefilter("error", dicomxr.SkippedFileWarning)
        walked = dicomxr.scan(root)
    assert set(walked["SOPInstanceUID"]) == set(df["SOPInstanceUID"])
    assert catalog.skipped(walked)["reason"].str.startswith("DICOMDIR file").all()


def test_dicomdir_pointing_at_a_missing_folder(data_root: Path) -> None:
    path = data_root / "dcm_qa_ct" / "DICOMDIR"
    n_images = sum(
        1
        for r in pydicom.dcmread(path).DirectoryRecordSequence
        if r.get("ReferencedFileID") is not None
    )
    with pytest.warns(dicomxr.SkippedFileWarning):
        df = dicomxr.scan(path)
    assert len(df) == 0 and tuple(df.columns) == catalog.COLUMNS
    report = catalog.skipped(df)
    assert len(report) == n_images > 0
    assert report["path"].str.startswith(str(data_root / "dcm_qa_ct" / "DICOM")).all()


@pytest.mark.parametrize(
    "name", ["DICOMDIR", "DICOMDIR-implicit", "DICOMDIR-bigEnd", "DICOMDIR-reordered"]
)
def test_pydicom_file_sets(name: str) -> None:
    path = get_testdata_file(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        reference = {os.fspath(inst.path) for inst in FileSet(pydicom.dcmread(path))}
    df = dicomxr.scan(path)
    assert set(df["path"]) == reference
    assert catalog.skipped(df).empty


def test_empty_dicomdir() -> None:
    df = dicomxr.scan(get_testdata_file("DICOMDIR-empty.dcm"))
    assert len(df) == 0 and catalog.skipped(df).empty


def test_written_file_set_with_a_deleted_file(tmp_path: Path, data_root: Path) -> None:
    """A file-set written by pydicom; one instance deleted afterwards is reported."""
    sources = sorted((data_root / "dcm_qa_ct" / "In" / "Philips" / "S21570" / "S1000").glob("I*"))
    fs = FileSet()
    for src in sources:
        fs.add(pydicom.dcmread(src))
    fs.write(tmp_path / "media")
    root = tmp_path / "media"
    written = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "DICOMDIR")
    assert len(written) == len(sources)
    written[0].unlink()
    with pytest.warns(dicomxr.SkippedFileWarning, match="1 x dangling"):
        df = dicomxr.scan(root / "DICOMDIR")
    assert len(df) == len(sources) - 1
    assert list(catalog.skipped(df)["path"]) == [str(written[0])]


def test_reference_case_and_escape(tmp_path: Path, data_root: Path) -> None:
    """File IDs match case-insensitively on disk; IDs that would leave the root are refused."""
    src = next((data_root / "dcm_qa_ct" / "In" / "Philips" / "S21570" / "S1000").glob("I*"))
    fs = FileSet()
    fs.add(pydicom.dcmread(src))
    fs.write(tmp_path / "media")
    root = tmp_path / "media"
    (target,) = [p for p in root.rglob("*") if p.is_file() and p.name != "DICOMDIR"]
    lower = target.with_name(target.name.lower())
    shutil.move(target, lower)
    files, dangling = dicomdir.referenced_files(root / "DICOMDIR")
    assert files == [str(lower)] and dangling == []

    ds = pydicom.dcmread(root / "DICOMDIR")
    warnings.simplefilter("ignore", UserWarning)  # pydicom: '..' is not a valid CS
    for record in ds.DirectoryRecordSequence:
        if "ReferencedFileID" in record:
            record.ReferencedFileID = ["..", "etc", "passwd"]
    ds.save_as(root / "DICOMDIR")
    files, dangling = dicomdir.referenced_files(root / "DICOMDIR")
    assert files == []
    assert "invalid ReferencedFileID component '..'" in dangling[0]["reason"]


def test_unreadable_dicomdir_is_reported(tmp_path: Path) -> None:
    good = Path(get_testdata_file("DICOMDIR"))
    broken = tmp_path / "DICOMDIR"
    broken.write_bytes(good.read_bytes()[:600])  # meta intact, records cut off
    with pytest.warns(dicomxr.SkippedFileWarning):
        df = dicomxr.scan(broken)
    report = catalog.skipped(df)
    assert report["reason"].str.startswith("truncated directory file").sum() == 1
    assert (report["path"] == str(broken)).sum() == 1
    # whatever records survived before the cut are still followed
    assert len(df) + len(report) >= 1


def test_mutated_dicomdirs_never_crash_a_scan(tmp_path: Path) -> None:
    """Seeded fuzzing of pydicom's DICOMDIR: damaged records are reported, never raised."""
    source = Path(get_testdata_file("DICOMDIR")).parent
    root = tmp_path / "fs"
    shutil.copytree(source, root)
    original = (root / "DICOMDIR").read_bytes()
    rng = np.random.default_rng(7)
    outcomes = set()
    for _ in range(120):
        data = bytearray(original)
        for _ in range(int(rng.integers(1, 6))):
            pos = int(rng.integers(132, len(data)))
            kind = rng.random()
            if kind < 0.6:
                data[pos] = int(rng.integers(0, 256))
            elif kind < 0.8:
                data[pos : pos + 4] = rng.bytes(4)
            else:
                del data[pos:]
        (root / "DICOMDIR").write_bytes(bytes(data))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            df = dicomxr.scan(root / "DICOMDIR", progress=False)
        assert set(df["path"]) <= {str(p) for p in root.rglob("*") if p.is_file()}
        outcomes.add((len(df) > 0, not catalog.skipped(df).empty))
    assert (True, True) in outcomes or (False, True) in outcomes  # damage was reported
