"""NIfTI and Zarr export: layout, affines (against the phantom's construction), atomic writes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import xarray as xr

from dicomxr import phantom
from dicomxr.api import open_series
from dicomxr.errors import GeometryError
from dicomxr.export.nifti import fsl_bvecs, nifti_affine

SHAPE = (6, 10, 12)
ORIENTATION = (1.0, 0.0, 0.0, 0.0, 0.96592583, -0.25881905)  # axial, oblique 15 deg
ORIGIN = (-50.0, -60.0, 20.0)
SPACING = (0.75, 0.5)
STEP = 3.0


@pytest.fixture(scope="module")
def oblique(tmp_path_factory):
    root = tmp_path_factory.mktemp("oblique")
    vol = phantom.phantom_volume(SHAPE, dtype="int16", seed=9)
    phantom.write_series(
        root,
        vol,
        orientation=ORIENTATION,
        origin=ORIGIN,
        spacing=SPACING,
        slice_step=STEP,
        rescale=(1.0, -1000.0),
        series_description="oblique/phantom",
    )
    return open_series(root), vol


def _world_lps(k, r, c):
    row_cos, col_cos = np.array(ORIENTATION[:3]), np.array(ORIENTATION[3:])
    normal = np.cross(row_cos, col_cos)
    return (
        np.array(ORIGIN) + k * STEP * normal + r * SPACING[0] * col_cos + c * SPACING[1] * row_cos
    )


def test_nifti_layout_and_affine(oblique, tmp_path):
    da, vol = oblique
    path = da.dicom.to_nifti(tmp_path / "oblique.nii")
    img = nib.load(path)
    assert img.shape == (SHAPE[2], SHAPE[1], SHAPE[0])  # (col, row, slice)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    assert img.get_data_dtype() == np.int16  # smallest exact integer type, as DICOM stored it
    data = np.asanyarray(img.dataobj)
    np.testing.assert_array_equal(data, np.transpose(vol.astype(np.int32) - 1000, (2, 1, 0)))
    # voxel (i=col, j=row, k=slice) lands where DICOM says, in RAS
    for k, r, c in [(0, 0, 0), (5, 9, 11), (2, 3, 4)]:
        ras = img.affine @ [c, r, k, 1]
        np.testing.assert_allclose(ras[:3], _world_lps(k, r, c) * [-1, -1, 1], atol=1e-4)
    np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-4)  # no shear here
    np.testing.assert_allclose(img.header.get_zooms(), (SPACING[1], SPACING[0], STEP), atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_nifti_gz_and_selection(oblique, tmp_path):
    da, vol = oblique
    path = da.isel(slice=slice(1, 4)).dicom.to_nifti(tmp_path / "part.nii.gz")
    img = nib.load(path)
    assert img.shape == (SHAPE[2], SHAPE[1], 3)
    np.testing.assert_allclose(
        img.affine @ [0, 0, 0, 1], [*(_world_lps(1, 0, 0) * [-1, -1, 1]), 1], atol=1e-4
    )
    one = nib.load(da.isel(slice=2).dicom.to_nifti(tmp_path / "one.nii"))
    assert one.shape == (SHAPE[2], SHAPE[1], 1)
    np.testing.assert_array_equal(
        np.asanyarray(one.dataobj)[..., 0], (vol[2].astype(np.int32) - 1000).T
    )


def test_nifti_4d_sample(sample_dir, tmp_path):
    da = open_series(sample_dir)
    assert da.dims[:2] == ("time", "label")
    img = nib.load(da.dicom.to_nifti(tmp_path / "pcasl.nii"))
    assert img.shape == (96, 96, 40, 6)
    data = np.asanyarray(img.dataobj)
    # extra dims flattened in C order: volume = time * n_label + label
    for t, lab in [(0, 0), (1, 1), (2, 0)]:
        expected = da.isel(time=t, label=lab, slice=17).values
        np.testing.assert_allclose(data[:, :, 17, t * da.sizes["label"] + lab], expected.T)
    one = nib.load(da.isel(label=1).dicom.to_nifti(tmp_path / "label.nii"))
    assert one.shape == (96, 96, 40, 3)


def test_nifti_refuses_what_it_cannot_hold(oblique, tmp_path):
    da, _ = oblique
    with pytest.raises(ValueError, match=r"\.nii"):
        da.dicom.to_nifti(tmp_path / "x.img")
    with pytest.raises(FileNotFoundError):
        da.dicom.to_nifti(tmp_path / "missing" / "x.nii")
    with pytest.raises(GeometryError, match="not evenly spaced"):
        da.isel(row=[0, 1, 3]).dicom.to_nifti(tmp_path / "fancy.nii")
    with pytest.raises(GeometryError, match="reduction over row"):
        da.mean("row").dicom.to_nifti(tmp_path / "reduced.nii")


def test_nifti_of_an_in_plane_crop_is_where_the_voxels_were(oblique, tmp_path):
    da, vol = oblique
    crop = da.isel(row=slice(2, 5), col=slice(None, None, -2))
    img = nib.load(crop.dicom.to_nifti(tmp_path / "crop.nii"))
    assert img.shape == (crop.sizes["col"], 3, SHAPE[0])
    # NIfTI voxel (i=col, j=row, k=slice) of the crop is stored voxel (k, 2 + j, last - 2 i)
    last = SHAPE[2] - 1
    for i, j, k in [(0, 0, 0), (1, 2, 3), (2, 1, SHAPE[0] - 1)]:
        expected = [*(_world_lps(k, 2 + j, last - 2 * i) * [-1, -1, 1]), 1]
        np.testing.assert_allclose(img.affine @ [i, j, k, 1], expected, atol=1e-4)
    np.testing.assert_array_equal(
        np.asanyarray(img.dataobj)[..., 1].T, vol[1, 2:5, ::-2].astype(np.int32) - 1000
    )


def test_nifti_affine_permutes_and_flips():
    lps = np.array([[0, 0, 2.0, 10], [0, 3.0, 0, 20], [4.0, 0, 0, 30], [0, 0, 0, 1]])
    ras = nifti_affine(lps)
    origin = np.array([-10.0, -20.0, 30.0, 1.0])
    np.testing.assert_allclose(ras @ [1, 0, 0, 1], np.add(origin, [-2, 0, 0, 0]))
    np.testing.assert_allclose(ras @ [0, 0, 1, 1], np.add(origin, [0, 0, 4, 0]))


def test_fsl_bvecs_convention():
    # axial, LAS-like storage (det < 0 after LPS->RAS of an identity-in-LPS grid)
    affine = nifti_affine(np.diag([2.0, 2.0, 2.0, 1.0])[[2, 1, 0, 3]][:, [2, 1, 0, 3]])
    directions = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0, 0]])
    bvec = fsl_bvecs(directions, affine)
    assert bvec.shape == (3, 4)
    # world direction back from the bvec: undo the x flip when det > 0, then voxel axes -> RAS
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    vec = bvec.copy()
    if np.linalg.det(affine[:3, :3]) > 0:
        vec[0] = -vec[0]
    np.testing.assert_allclose((axes @ vec).T, directions * [-1, -1, 1], atol=1e-12)
    np.testing.assert_array_equal(bvec[:, 3], 0)


def test_zarr_round_trip(oblique, tmp_path):
    da, _ = oblique
    store = da.dicom.to_zarr(tmp_path / "series.zarr")
    back = xr.open_zarr(store)["image"]
    np.testing.assert_array_equal(back.values, da.values)
    assert back.chunks[0] == (1,) * SHAPE[0]
    np.testing.assert_allclose(back.dicom.affine, da.dicom.affine)
    np.testing.assert_array_equal(back.coords["slice"].values, da.coords["slice"].values)
    assert list(back.coords["SOPInstanceUID"].values) == list(da.coords["SOPInstanceUID"].values)
    with pytest.raises(FileExistsError):
        da.dicom.to_zarr(store)
    da.isel(slice=slice(0, 2)).dicom.to_zarr(store, overwrite=True)
    assert xr.open_zarr(store)["image"].sizes["slice"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series.zarr"]


def test_zarr_round_trips_attrs(sample_dir, tmp_path):
    da = open_series(sample_dir)
    store = da.dicom.to_zarr(tmp_path / "pcasl.zarr")
    back = xr.open_zarr(store)["image"]
    assert set(back.attrs) == set(da.attrs)
    for name, value in da.attrs.items():
        got = back.attrs[name]
        if isinstance(value, list):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(value), err_msg=name)
        else:
            assert got == value, name
    np.testing.assert_array_equal(back.dicom.affine, da.dicom.affine)
    assert back.dicom.report == da.dicom.report


def test_zarr_writes_old_nested_attrs_in_the_flat_form(oblique, tmp_path):
    import json

    da, _ = oblique
    old = da.copy()
    old.attrs["affine"] = da.dicom.affine.tolist()  # the nested form of earlier versions
    old.attrs["geometry"] = json.loads(da.attrs["geometry"])
    back = xr.open_zarr(old.dicom.to_zarr(tmp_path / "old.zarr"))["image"]
    assert back.attrs["affine"] == da.attrs["affine"]
    assert back.attrs["geometry"] == da.attrs["geometry"]


def test_nifti_sidecar_names_the_volumes(sample_dir, tmp_path):
    import json

    da = open_series(sample_dir)
    da.dicom.to_nifti(tmp_path / "pcasl.nii.gz", sidecar=True)
    info = json.loads((tmp_path / "pcasl.json").read_text())
    assert info["nifti_axes"] == ["col", "row", "slice", "volume"]
    assert len(info["volumes"]) == 6
    assert info["volumes"][1] == {"time_index": 0, "time": 1, "label_index": 1, "label": "LABEL"}
    assert info["SeriesInstanceUID"] == da.attrs["SeriesInstanceUID"]
    assert "PatientName" not in info
    np.testing.assert_array_equal(info["affine"], da.dicom.affine)  # 4x4 in the JSON
    assert info["geometry"]["n_slices"] == da.sizes["slice"]
    assert info["dim_sources"]["label"].startswith("LabelType")


def test_nifti_warns_when_it_cannot_place_every_slice(tmp_path):
    import warnings

    from dicomxr.errors import GeometryWarning

    vol = phantom.phantom_volume((6, 8, 8), dtype="int16")
    phantom.write_series(
        tmp_path / "uneven", vol, slice_step=[2.0, 2.0, 2.0, 5.0, 5.0], rescale=(1, 0)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)  # the open's own warning
        da = open_series(tmp_path / "uneven")
    with pytest.warns(GeometryWarning, match="on_irregular='split'") as record:
        da.dicom.to_nifti(tmp_path / "uneven.nii")
    assert record[0].filename == __file__  # points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeometryWarning)
        da.isel(slice=slice(0, 4)).dicom.to_nifti(tmp_path / "regular.nii")  # a regular block


def test_zarr_and_netcdf_keep_the_geometry_of_a_selection(sample_dir, tmp_path):
    da = open_series(sample_dir)
    part = da.isel(row=slice(10, 60, 2), col=slice(80, 5, -3)).dicom.reorient("RAS")
    back = xr.open_zarr(part.dicom.to_zarr(tmp_path / "part.zarr"))["image"]
    np.testing.assert_allclose(back.dicom.affine, part.dicom.affine, atol=1e-9)
    assert back.dicom.orientation == "RAS"
    one = part.isel(time=0, label=0)
    one.to_netcdf(tmp_path / "part.nc", engine="h5netcdf")
    with xr.open_dataarray(tmp_path / "part.nc", engine="h5netcdf") as reread:
        np.testing.assert_allclose(reread.dicom.affine, one.dicom.affine, atol=1e-9)
