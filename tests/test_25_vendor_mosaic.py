"""Vendor mosaics beyond Siemens' CSA-counted MOSAIC (issue 11, item 2).

There is no United Imaging data in the shared corpora, so the UIH "GRID" images (ImageType
``VFRAME``) are built from the real Siemens mosaic of ``dcm_qa_ts`` (35 slices of 64x64 in
384x384, oblique 6.2 degrees) with pydicom, laid out the way dcm2niix's source reads them
(``nii_dicom.cpp``: (0065,1050) "MR Number Of Slice In Volume" read when Manufacturer starts
with "UI"; ``nii_demosaic``: ``ceil(sqrt(n))`` columns and ``ceil(n / columns)`` rows; the
stored ImagePositionPatient is the first slice's, no mosaic-corner shift) and as the vendor's
table in dcm2niix's ``UIH/README.md`` lists them (private creator ``Image Private Header``,
the "MR VFrame Sequence" (0065,1051) with one ImagePositionPatient per slice). dcm2niix from
PyPI converts the same synthetic files and is the reference for voxels and affine.

The Siemens fallback count (MosaicRefAcqTimes (0019,1029) when both (0019,100A) and the CSA
header are gone, as after some de-identification) is checked the same way; a mosaic whose
tile count is gone for good is set apart with a reason and a warning, never opened as one
384x384 image.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

import dicomxr
from dicomxr import frames, mosaic
from dicomxr.errors import DicomxrWarning
from dicomxr.series import plan_series
from reference import compare_images, run_dcm2niix

TILE = 64


@pytest.fixture(scope="module")
def siemens_mosaic(data_root: Path) -> Path:
    return data_root / "dcm_qa_ts" / "In" / "1.dcm"


@pytest.fixture(scope="module")
def tile_positions(siemens_mosaic: Path) -> list[np.ndarray]:
    """The 35 tile positions of the real mosaic (checked against dcm2niix in test_22)."""
    (plan,) = plan_series(dicomxr.scan(siemens_mosaic, progress=False, warn=False))
    return [np.asarray(p, dtype=float) for p in plan.frames["ImagePositionPatient"]]


def _uih_grid(
    src: Path,
    out: Path,
    positions: list[np.ndarray],
    n: int,
    *,
    descending: bool = False,
    vframe: bool = True,
) -> np.ndarray:
    """Write a UIH GRID file of the first ``n`` slices of the Siemens mosaic; return its tiles.

    ``descending`` stores the slices in the opposite order (the VFrame positions and the
    first-slice ImagePositionPatient follow), ``vframe=False`` leaves the VFrame sequence out.
    """
    ds = pydicom.dcmread(src)
    stored = ds.pixel_array
    n_cols = int(np.ceil(np.sqrt(35)))  # the Siemens grid: 6 x 6 tiles of 64
    tiles = [
        stored[(k // n_cols) * TILE : (k // n_cols + 1) * TILE, (k % n_cols) * TILE :][:, :TILE]
        for k in range(n)
    ]
    order = list(range(n))[::-1] if descending else list(range(n))
    grid_cols = int(np.ceil(np.sqrt(n)))
    grid_rows = int(np.ceil(n / grid_cols))
    image = np.zeros((grid_rows * TILE, grid_cols * TILE), dtype=stored.dtype)
    for slot, k in enumerate(order):
        r, c = divmod(slot, grid_cols)
        image[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = tiles[k]
    for tag in [t for t in ds.keys() if t.group % 2 == 1]:
        del ds[tag]  # no Siemens private tags (no CSA header, no 0019,100A)
    ds.Manufacturer = "UIH"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "VFRAME"]
    ds.Rows, ds.Columns = image.shape
    ds.PixelData = image.tobytes()
    ds.ImagePositionPatient = [f"{v:.6f}" for v in positions[order[0]]]
    block = ds.private_block(mosaic.UIH_GROUP, mosaic.UIH_CREATOR, create=True)
    block.add_new(mosaic.UIH_COUNT_ELEMENT, "DS", str(n))
    if vframe:
        items = []
        for k in order:
            item = Dataset()
            item.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
            item.AcquisitionTime = ds.AcquisitionTime
            items.append(item)
        block.add_new(mosaic.UIH_VFRAME_ELEMENT, "SQ", Sequence(items))
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return np.stack([tiles[k] for k in order])


def _dcm2niix_same(path: Path, tmp_path: Path, name: str) -> None:
    """Our NIfTI of ``path`` equals dcm2niix's (voxels exactly, affine within 1e-3 mm)."""
    conv = run_dcm2niix(path.parent, tmp_path / f"ref_{name}")
    assert conv.returncode == 0, conv.log
    (ref,) = [img for img in conv.images if not img.path.name.endswith("_ROI1.nii")]
    ours = tmp_path / f"ours_{name}.nii"
    dicomxr.open_series(path, chunks=None).dicom.to_nifti(ours)
    cmp = compare_images(nib.load(ours), nib.load(ref.path))
    assert cmp.shape_ours == cmp.shape_ref, cmp
    assert cmp.identical_voxels, cmp
    assert cmp.affine_max_diff_mm < 1e-3, cmp


@pytest.mark.parametrize(
    ("n", "grid"),
    [(30, (5, 6)), (20, (4, 5)), (35, (6, 6))],
    ids=["30-slices-5x6", "20-slices-4x5", "35-slices-6x6"],
)
def test_uih_grid_unpacks_like_dcm2niix(
    n, grid, siemens_mosaic, tile_positions, tmp_path: Path
) -> None:
    path = tmp_path / "uih" / "grid.dcm"
    tiles = _uih_grid(siemens_mosaic, path, tile_positions, n)
    cat = dicomxr.scan(path, progress=False)
    row = cat.iloc[0]
    assert (row["mosaic_kind"], row["NumberOfImagesInMosaic"]) == ("UIH", n)
    assert (row["Rows"], row["Columns"]) == (grid[0] * TILE, grid[1] * TILE)
    fr = frames.expand(cat)
    assert fr["tile"].tolist() == list(range(n))
    assert set(fr["Rows"]) == set(fr["Columns"]) == {TILE}
    # every tile sits where the real Siemens mosaic put that slice
    got = np.array(fr["ImagePositionPatient"].tolist())
    assert np.allclose(got, np.array(tile_positions[:n]), atol=1e-4)
    # the pixels: each tile, against pydicom's decode of the tiles written
    da = dicomxr.open_series(path, chunks=None)
    assert da.dims == ("slice", "row", "col") and da.shape == (n, TILE, TILE)
    assert np.array_equal(da.values, tiles)
    _dcm2niix_same(path, tmp_path, f"grid{n}")


def test_uih_grid_stored_in_descending_order(siemens_mosaic, tile_positions, tmp_path) -> None:
    """Slices stored top-down: the VFrame positions order them, as dcm2niix does."""
    path = tmp_path / "uih_desc" / "grid.dcm"
    tiles = _uih_grid(siemens_mosaic, path, tile_positions, 30, descending=True)
    da = dicomxr.open_series(path, chunks=None)
    # the volume is sorted along the slice normal: the same slices as the ascending file
    assert np.array_equal(da.values, tiles[::-1])
    _dcm2niix_same(path, tmp_path, "desc")


def test_uih_grid_without_vframe_sequence(siemens_mosaic, tile_positions, tmp_path) -> None:
    """No per-slice positions: the tiles step along the slice normal by SpacingBetweenSlices."""
    path = tmp_path / "uih_novf" / "grid.dcm"
    _uih_grid(siemens_mosaic, path, tile_positions, 30, vframe=False)
    fr = frames.expand(dicomxr.scan(path, progress=False))
    got = np.array(fr["ImagePositionPatient"].tolist())
    assert np.allclose(got, np.array(tile_positions[:30]), atol=1e-3)
    _dcm2niix_same(path, tmp_path, "novf")


def _siemens_variant(src: Path, out: Path, drop: list[int]) -> Path:
    ds = pydicom.dcmread(src)
    for tag in drop:
        if tag in ds:
            del ds[tag]
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out)
    return out


def test_siemens_count_from_slice_times(siemens_mosaic, tmp_path: Path) -> None:
    """No (0019,100A), no CSA header: MosaicRefAcqTimes (0019,1029) still counts the tiles."""
    path = _siemens_variant(
        siemens_mosaic, tmp_path / "times" / "m.dcm", [0x0019100A, 0x00291010, 0x00291020]
    )
    row = dicomxr.scan(path, progress=False).iloc[0]
    assert (row["mosaic_kind"], row["NumberOfImagesInMosaic"]) == ("SIEMENS", 35)
    _dcm2niix_same(path, tmp_path, "times")


def test_mosaic_without_count_is_set_apart_with_a_warning(siemens_mosaic, tmp_path) -> None:
    path = _siemens_variant(
        siemens_mosaic,
        tmp_path / "nocount" / "m.dcm",
        [0x0019100A, 0x00291010, 0x00291020, 0x00191029],
    )
    cat = dicomxr.scan(path, progress=False)
    assert cat.iloc[0]["is_mosaic"] and pd_isna(cat.iloc[0]["NumberOfImagesInMosaic"])
    plans = plan_series(cat)
    assert len(plans) == 0  # never a 384x384 "slice"
    (reason,) = plans.set_apart["reason"]
    assert reason.startswith("mosaic not unpacked: SIEMENS mosaic without a tile count")
    with pytest.raises(dicomxr.NoSeriesError, match="mosaic not unpacked"):
        dicomxr.open_series(path)


def test_uih_grid_that_does_not_divide_is_set_apart(siemens_mosaic, tile_positions, tmp_path):
    path = tmp_path / "uih_bad" / "grid.dcm"
    _uih_grid(siemens_mosaic, path, tile_positions, 30)
    ds = pydicom.dcmread(path)
    ds.private_block(mosaic.UIH_GROUP, mosaic.UIH_CREATOR)[mosaic.UIH_COUNT_ELEMENT].value = "31"
    ds.save_as(path)  # 31 slices need 6 x 6 tiles of 320/6 rows: not a grid
    # next to it, a good slice of the same series keeps the series open, minus the grid
    good = tmp_path / "uih_bad" / "other.dcm"
    _uih_grid(siemens_mosaic, good, tile_positions, 30)
    other = pydicom.dcmread(good)
    other.SOPInstanceUID = pydicom.uid.generate_uid()
    other.InstanceNumber = 2
    other.save_as(good)
    with pytest.warns(DicomxrWarning, match=r"1 file\(s\) left out .*mosaic not unpacked") as rec:
        da = dicomxr.open_series(path.parent)
    assert str(path) in str(rec[0].message)
    assert da.shape == (30, TILE, TILE)


def test_layout_rules() -> None:
    assert mosaic.layout("UIH", 20, 256, 320) == mosaic.Layout(4, 5, 64, 64)
    assert mosaic.layout("SIEMENS", 20, 320, 320) == mosaic.Layout(5, 5, 64, 64)
    with pytest.raises(mosaic.MosaicError, match="without a tile count"):
        mosaic.layout("UIH", None, 256, 320)
    with pytest.raises(mosaic.MosaicError, match="not a grid"):
        mosaic.layout("SIEMENS", 20, 256, 320)


def pd_isna(value) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


def test_real_siemens_mosaic_unchanged(siemens_mosaic) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DicomxrWarning)
        da = dicomxr.open_series(siemens_mosaic, chunks=None)
    assert da.shape == (35, TILE, TILE)
