"""The affine of any selection, on every series of the real corpora, against the files.

For random crops, strides, flips, single indices and transposes of every series in
``../shared/data``, ``affine @ (k, i, j, 1)`` must be the position of that voxel computed by
pydicom from the file it came from: ImagePositionPatient + i * PixelSpacing[0] * column
cosine + j * PixelSpacing[1] * row cosine (per-frame functional groups for enhanced files).
Then the reorientation judge: the NIfTI of ``reorient("RAS")`` equals nibabel's
``as_closest_canonical`` of the NIfTI of the series.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import xarray as xr

import dicomxr
from dicomxr.errors import GeometryError

FOLDER_UNITS = (
    "dcm_qa_ct/In/GE",
    "dcm_qa_ct/In/Philips/S21570",
    "dcm_qa_ct/In/Philips/S21610",
    "dcm_qa_philips_enh/In/cl",
    "dcm_qa_philips_enh/In/enh",
    "dcm_qa_ts/In",
    "suyashkumar_dicom/testdata",
    "dicomParser/testImages",
)
TOLERANCE_MM = 1e-4


@functools.cache
def _series(unit: str) -> list[xr.DataArray]:
    from conftest import _data_root

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        catalog = dicomxr.scan(str(_data_root() / unit), progress=False, warn=False)
        plans = dicomxr.plan_series(catalog, on_irregular="split", on_duplicate="split")
        return [dicomxr.open_series(plan) for plan in plans]


@functools.cache
def _file_geometry(path: str, frame: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(ImagePositionPatient, ImageOrientationPatient, PixelSpacing) of one frame, by pydicom."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    groups = []
    for name in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        seq = ds.get(name)
        if seq:
            groups.append(seq[frame] if name.startswith("PerFrame") else seq[0])

    def find(sequence: str, keyword: str):
        for item in groups:
            inner = item.get(sequence)
            if inner and keyword in inner[0]:
                return inner[0].get(keyword)
        return ds.get(keyword)

    ipp = find("PlanePositionSequence", "ImagePositionPatient")
    iop = find("PlaneOrientationSequence", "ImageOrientationPatient")
    spacing = find("PixelMeasuresSequence", "PixelSpacing")
    if ipp is None or iop is None or spacing is None:
        return None
    return (
        np.asarray(ipp, dtype=np.float64),
        np.asarray(iop, dtype=np.float64),
        np.asarray(spacing, dtype=np.float64),
    )


def _per_slice(da: xr.DataArray, name: str) -> np.ndarray:
    coord = da.coords[name]
    coord = coord.isel({d: 0 for d in coord.dims if d != "slice"})
    return np.broadcast_to(coord.values, (da.sizes["slice"],))


def _truth(da: xr.DataArray, k: int, i: int, j: int) -> np.ndarray | None:
    """Where the stored voxel (slice k, row i, col j) of the opened series is, per pydicom."""
    path = str(_per_slice(da, "path")[k])
    if not path:
        return None  # a filled (missing) slice
    geometry = _file_geometry(path, int(_per_slice(da, "frame")[k]))
    if geometry is None:
        return None
    ipp, iop, spacing = geometry
    return ipp + i * spacing[0] * iop[3:] + j * spacing[1] * iop[:3]


def _random_selection(rng: np.random.Generator, sizes: dict[str, int]) -> dict[str, object]:
    selection: dict[str, object] = {}
    for dim in ("slice", "row", "col"):
        n = sizes[dim]
        kind = rng.integers(4)
        if kind == 0 and n > 1:
            selection[dim] = int(rng.integers(n))
        else:
            step = int(rng.choice([1, 2, 3, -1, -2]))
            start, stop = sorted(int(v) for v in rng.integers(0, n + 1, size=2))
            if stop - start < 1:
                start, stop = 0, n
            selection[dim] = (
                slice(start, stop, step)
                if step > 0
                else slice(stop - 1, start - 1 if start else None, step)
            )
    return selection


def _original_index(n: int, sel: object) -> np.ndarray:
    return np.atleast_1d(np.arange(n)[sel])


def _mosaic(da: xr.DataArray) -> bool:
    return "tile" in da.coords and np.any(np.asarray(da.coords["tile"].values) >= 0)


@pytest.mark.parametrize("unit", FOLDER_UNITS)
def test_affine_of_random_selections_is_where_pydicom_puts_the_voxels(unit, data_root):
    rng = np.random.default_rng(sum(map(ord, unit)))
    checked = 0
    for da in _series(unit):
        if "slice" not in da.dims or "affine" not in da.attrs:
            continue
        full = da.dicom.affine
        for _ in range(4):
            selection = _random_selection(rng, dict(da.sizes))
            view = da.isel({d: s for d, s in selection.items()})
            if rng.integers(2):
                view = view.transpose(*reversed(view.dims))
            affine = view.dicom.affine
            index = {d: _original_index(da.sizes[d], s) for d, s in selection.items()}
            for _ in range(6):
                picked = {d: int(rng.integers(len(index[d]))) for d in index}
                k, i, j = (int(index[d][picked[d]]) for d in ("slice", "row", "col"))
                ours = (affine @ [picked["slice"], picked["row"], picked["col"], 1])[:3]
                if _mosaic(da):
                    # MOSAIC tile positions are derived (CSA), not recorded per tile: the
                    # selection must agree with the whole series' affine, which
                    # test_22_geometry checks against dcm2niix
                    expected = (full @ [k, i, j, 1])[:3]
                else:
                    expected = _truth(da, k, i, j)
                    if expected is None:
                        continue
                np.testing.assert_allclose(
                    ours, expected, atol=TOLERANCE_MM, rtol=0,
                    err_msg=f"{unit} {da.attrs.get('series_key')} {selection} voxel {(k, i, j)}",
                )  # fmt: skip
                checked += 1
    assert checked > 0, f"no voxel of {unit} was checked"


def test_selections_the_issue_names(philips_ct):
    da = dicomxr.open_series(philips_ct)
    a = da.dicom.affine
    crop = da.isel(row=slice(20, 70), col=slice(30, 80))
    np.testing.assert_allclose(crop.dicom.affine[:3, 3], (a @ [0, 20, 30, 1])[:3], atol=1e-9)
    np.testing.assert_allclose(
        crop.dicom.affine[:3, 3], [-102.0, 7.2, 694.2], atol=0.05
    )  # the issue's numbers
    strided = da.isel(row=slice(None, None, 2))
    assert np.linalg.norm(strided.dicom.affine[:3, 1]) == pytest.approx(0.902, abs=1e-3)
    # sel by millimetres, where, pad, concatenation of selections, one row
    by_mm = da.sel(row=slice(9.0, 31.6), col=slice(13.5, None))
    i0 = int(np.ceil(9.0 / 0.451171875))
    np.testing.assert_allclose(by_mm.dicom.affine, a @ _shift(0, i0, 30), atol=1e-9)
    assert np.array_equal(crop.where(crop > 0).dicom.affine, crop.dicom.affine)
    padded = crop.pad(row=(3, 2), col=(1, 0))
    np.testing.assert_allclose(padded.dicom.affine, a @ _shift(0, 17, 29), atol=1e-9)
    joined = xr.concat([da.isel(row=slice(20, 40)), da.isel(row=slice(40, 70))], dim="row")
    np.testing.assert_allclose(joined.dicom.affine, a @ _shift(0, 20, 0), atol=1e-9)
    one_row = da.isel(row=33)
    np.testing.assert_allclose(one_row.dicom.affine[:3, 3], (a @ [0, 33, 0, 1])[:3], atol=1e-9)
    np.testing.assert_allclose(
        da.transpose("col", "slice", "row").dicom.affine, a, atol=0
    )  # the affine is in named-dim order


def _shift(k: int, i: int, j: int) -> np.ndarray:
    shift = np.eye(4)
    shift[:3, 3] = [k, i, j]
    return shift


def test_operations_that_destroy_the_geometry_say_so(philips_ct):
    da = dicomxr.open_series(philips_ct)
    with pytest.raises(GeometryError, match="reduction over row"):
        _ = da.mean("row").dicom.affine
    with pytest.raises(GeometryError, match="reduction over slice"):
        _ = da.max("slice").drop_vars(["position_x", "position_y"]).dicom.affine
    with pytest.raises(GeometryError, match="not evenly spaced"):
        _ = da.isel(col=[0, 5, 6]).dicom.affine
    with pytest.raises(GeometryError, match="not evenly spaced"):
        _ = da.isel(slice=[0, 1, 5]).dicom.affine
    with pytest.raises(GeometryError, match="not evenly spaced"):
        _ = xr.concat([da.isel(row=slice(0, 10)), da.isel(row=slice(20, 30))], "row").dicom.affine
    with pytest.raises(GeometryError, match="no 'affine' attribute"):
        _ = (da + 1).drop_attrs().dicom.affine
    with pytest.warns(dicomxr.GeometryWarning, match="voxel units"):
        from dicomxr.spatial import attrs_with_affine

        assert "affine" not in attrs_with_affine(da.isel(row=[0, 2, 3]))


def test_slice_coordinate_alone_places_the_slices(philips_ct):
    """Without the position coordinates the slice coordinate (mm along the normal) suffices."""
    da = dicomxr.open_series(philips_ct)
    a = da.dicom.affine
    bare = da.drop_vars(["position_x", "position_y", "position_z"])
    part = bare.isel(slice=slice(100, 9, -3), row=slice(5, None))
    expected = a @ _shift(100, 5, 0) @ np.diag([-3.0, 1, 1, 1])
    np.testing.assert_allclose(part.dicom.affine, expected, atol=1e-6)


@pytest.mark.parametrize("unit", FOLDER_UNITS)
def test_reorient_ras_equals_nibabel_closest_canonical(unit, tmp_path):
    nib = pytest.importorskip("nibabel")
    written = 0
    for n, da in enumerate(_series(unit)):
        if "slice" not in da.dims or "affine" not in da.attrs:
            continue
        if da.size > 20_000_000:  # the 140-slice CT is checked below, cropped
            da = da.isel(row=slice(100, 300), col=slice(50, 450))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            original = nib.load(da.dicom.to_nifti(tmp_path / f"{n}.nii"))
            ras = da.dicom.reorient("RAS")
            reoriented = nib.load(ras.dicom.to_nifti(tmp_path / f"{n}_ras.nii"))
        canonical = nib.as_closest_canonical(original)
        assert nib.aff2axcodes(reoriented.affine) == ("R", "A", "S")
        assert reoriented.shape == canonical.shape, (unit, da.attrs.get("series_key"))
        np.testing.assert_array_equal(
            np.asanyarray(reoriented.dataobj), np.asanyarray(canonical.dataobj)
        )
        np.testing.assert_allclose(reoriented.affine, canonical.affine, atol=1e-3)
        written += 1
    assert written > 0


def test_reorient_any_code_is_lazy_and_carries_coords(sample_dir):
    da = dicomxr.open_series(sample_dir)
    for code in ("LPS", "RAS", "PSR", "ILA", "closest"):
        out = da.dicom.reorient(code)
        assert out.dicom.orientation == ("RAS" if code == "closest" else code)
        assert out.chunks is not None  # still dask
        assert (
            out.dims == da.dims and out.attrs["SeriesInstanceUID"] == da.attrs["SeriesInstanceUID"]
        )
        # every voxel keeps its place in the patient: compare one voxel's world position
        i = {"time": 1, "label": 0, "slice": 7, "row": 11, "col": 60}
        world = (da.dicom.affine @ [i["slice"], i["row"], i["col"], 1])[:3]
        inv = np.linalg.inv(out.dicom.affine) @ [*world, 1]
        k, r, c = (round(v) for v in inv[:3])
        assert float(out.isel(time=1, label=0, slice=k, row=r, col=c)) == float(da.isel(i))
    # PSR: row points superior, so the stored (axial) slices run along row: the UIDs follow
    coronal_rows = da.dicom.reorient("PSR")
    assert coronal_rows.coords["SOPInstanceUID"].dims == ("time", "label", "row")
    assert da.dicom.reorient(da.dicom.orientation) is da


@pytest.mark.parametrize("code", ["RRS", "XYZ", "RA", "LPSX", "SAL "])
def test_reorient_refuses_codes_that_are_not_orientations(code, sample_dir):
    da = dicomxr.open_series(sample_dir)
    with pytest.raises(ValueError, match="L/R, A/P, S/I"):
        da.dicom.reorient(code)
