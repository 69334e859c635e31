"""Nothing of a series disappears silently (issue 11, items 3 and 5).

Built from 12 consecutive slices of the real Philips head CT (``dcm_qa_ct``, 1 mm apart):

- one slice cut short: opening warns (:class:`~dicomxr.SetApartWarning`) naming that file,
  the volume holds the other 11 slices as the geometry policy says (``"warn"``: the gap is
  reported; ``"fill"``: a NaN slice in its place, exact affine), the full list is in
  ``attrs["set_apart"]``;
- a byte-identical copy and a re-encoded (RLE) copy of one instance are set apart as copies
  (same decoded pixels, whatever the encoding), with the warning;
- a file that reuses a slice's SOPInstanceUID for a different image is no copy: it stays, as
  a distinct instance, with an :class:`~dicomxr.InstanceCollisionWarning` naming both files
  and the UID.

The reference for every voxel is pydicom's per-file decode.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

import dicomxr
from dicomxr.api import list_series
from dicomxr.errors import GeometryWarning, InstanceCollisionWarning, SetApartWarning

N = 12


@pytest.fixture()
def ct_folder(ct_slices) -> Path:
    return ct_slices(N)


def _reference(folder: Path, names: list[str]) -> np.ndarray:
    """pydicom's decode with the rescale applied, in the given file order."""
    out = []
    for name in names:
        ds = pydicom.dcmread(folder / name)
        out.append(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    return np.stack(out)


def _cut(path: Path, keep_bytes: int = 20_000) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - keep_bytes])


def _quiet_open(source, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SetApartWarning)
        return dicomxr.open_series(source, **kwargs)


def test_intact_series_opens_without_warning(ct_folder: Path) -> None:
    da = _quiet_open(ct_folder, chunks=None)
    assert da.sizes["slice"] == N and "set_apart" not in da.attrs


def test_truncated_slice_warns_and_keeps_the_rest(ct_folder: Path) -> None:
    cut = ct_folder / "slice05.dcm"
    _cut(cut)
    with pytest.warns(SetApartWarning) as rec:
        with pytest.warns(GeometryWarning, match="missing"):
            da = dicomxr.open_series(ct_folder, chunks=None)
    (msg,) = [str(w.message) for w in rec if w.category is SetApartWarning]
    assert "1 file(s) left out" in msg and "pixel data cut short" in msg
    assert str(cut) in msg and "attrs['set_apart']" in msg
    kept = [f"slice{i:02d}.dcm" for i in range(N) if i != 5]
    assert da.sizes["slice"] == N - 1
    assert np.array_equal(da.values, _reference(ct_folder, kept))
    listed = json.loads(da.attrs["set_apart"])
    assert [(item["path"], item["reason"]) for item in listed] == [
        (str(cut), "pixel data cut short (file truncated)")
    ]
    # the same list from the plans
    (row,) = list_series(ct_folder).set_apart.itertuples()
    assert row.path == str(cut)


def test_truncated_slice_with_fill_policy(ct_folder: Path) -> None:
    _cut(ct_folder / "slice05.dcm")
    with pytest.warns(SetApartWarning, match="slice05.dcm"):
        da = dicomxr.open_series(ct_folder, on_irregular="fill", chunks=None)
    assert da.sizes["slice"] == N
    values = da.values
    assert np.isnan(values[5]).all()
    kept = [f"slice{i:02d}.dcm" for i in range(N) if i != 5]
    assert np.array_equal(np.delete(values, 5, axis=0), _reference(ct_folder, kept))
    assert np.allclose(np.diff(da["slice"].values), 1.0)


def test_open_study_warns_too(ct_folder: Path) -> None:
    _cut(ct_folder / "slice11.dcm")  # the last slice: the rest is a regular stack
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeometryWarning)
        with pytest.warns(SetApartWarning, match="slice11.dcm"):
            tree = dicomxr.open_study(ct_folder)
    (leaf,) = tree.leaves
    assert leaf.dataset["image"].sizes["slice"] == N - 1


def test_warning_names_the_first_few_and_counts_the_rest(ct_folder: Path) -> None:
    for i in (1, 3, 5, 7, 9):
        _cut(ct_folder / f"slice{i:02d}.dcm")
    with pytest.warns(SetApartWarning) as rec:
        dicomxr.open_series(ct_folder, on_irregular="ignore")
    (msg,) = [str(w.message) for w in rec if w.category is SetApartWarning]
    assert "5 file(s) left out" in msg and "and 2 more" in msg


def test_copies_are_set_apart_whatever_the_encoding(ct_folder: Path) -> None:
    dup = ct_folder / "again"
    dup.mkdir()
    shutil.copy(ct_folder / "slice03.dcm", dup / "same_bytes.dcm")
    ds = pydicom.dcmread(ct_folder / "slice07.dcm")
    # same instance, same pixels, other bytes
    ds.compress(pydicom.uid.RLELossless, generate_instance_uid=False)
    ds.save_as(dup / "rle.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("error", InstanceCollisionWarning)
        with pytest.warns(SetApartWarning, match=r"2 file\(s\) left out .*2 x copy") as rec:
            da = dicomxr.open_series(ct_folder, chunks=None)
    # the first copy in path order stays ("again/..." sorts first), the other is set apart
    msg = str(rec[0].message)
    assert str(ct_folder / "slice03.dcm") in msg and str(ct_folder / "slice07.dcm") in msg
    assert da.sizes["slice"] == N and "volume" not in da.dims
    names = [f"slice{i:02d}.dcm" for i in range(N)]
    assert np.array_equal(da.values, _reference(ct_folder, names))
    reasons = {item["path"]: item["reason"] for item in json.loads(da.attrs["set_apart"])}
    assert reasons[str(ct_folder / "slice07.dcm")] == (
        f"copy of the same instance (SOPInstanceUID, frame and pixel data) as {dup / 'rle.dcm'}"
    )


def test_uid_collision_is_kept_with_a_warning(ct_folder: Path) -> None:
    other = ct_folder / "zz_other.dcm"
    ds = pydicom.dcmread(ct_folder / "slice04.dcm")
    arr = ds.pixel_array.copy()
    arr[100:200, 100:200] = 0  # a different image under the same SOPInstanceUID
    ds.PixelData = arr.tobytes()
    ds.save_as(other)
    uid = ds.SOPInstanceUID
    with pytest.warns(InstanceCollisionWarning) as rec:
        with pytest.warns(GeometryWarning, match="share a position"):
            da = dicomxr.open_series(ct_folder, chunks=None)
    msg = str(rec[0].message)
    assert uid in msg and str(ct_folder / "slice04.dcm") in msg and str(other) in msg
    # kept: both images at that position, along the duplicate policy's 'volume' dim
    assert da.sizes["volume"] == 2 and da.sizes["slice"] == N
    pair = da.isel(slice=4).values
    ref = _reference(ct_folder, ["slice04.dcm", "zz_other.dcm"])
    assert np.array_equal(pair, ref) or np.array_equal(pair, ref[::-1])
    assert "set_apart" not in da.attrs  # nothing was left out


def test_collision_split_policy_gives_two_series(ct_folder: Path) -> None:
    other = ct_folder / "zz_other.dcm"
    ds = pydicom.dcmread(ct_folder / "slice04.dcm")
    ds.PixelData = (ds.pixel_array // 2).astype(ds.pixel_array.dtype).tobytes()
    ds.save_as(other)
    with pytest.warns(InstanceCollisionWarning, match=ds.SOPInstanceUID):
        plans = list_series(ct_folder, on_duplicate="split")
    assert sorted(p.grid.size for p in plans) == [1, N]


def test_scan_warning_names_skipped_files(ct_folder: Path) -> None:
    from pydicom.data import get_testdata_file

    # a DICOM file whose header is cut short (pydicom's test file): skipped by the scan
    shutil.copy(get_testdata_file("rtplan_truncated.dcm"), ct_folder / "broken.dcm")
    with pytest.warns(dicomxr.SkippedFileWarning, match="broken.dcm") as rec:
        da = dicomxr.open_series(ct_folder)
    assert "dicomxr.catalog.skipped" in str(rec[0].message)
    assert str(ct_folder / "broken.dcm") in str(rec[0].message)
    assert da.sizes["slice"] == N
