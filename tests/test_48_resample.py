"""Resampling against SimpleITK ``Resample`` on the same output grid, laziness, bad requests.

The references are independent of dicomxr's geometry where SimpleITK can hold it: the
untilted CT and the oblique MR are read by SimpleITK's own ``ImageSeriesReader`` (GDCM sorts
and places the slices) and resampled onto our output grid. A gantry-tilted stack has a
sheared affine, which no SimpleITK image can hold; there the reference resamples the voxel
array in index space with ``sitk.AffineTransform`` (the map ``inv(A_in) @ A_out``), and the
input affine itself is checked against pydicom's per-slice ImagePositionPatient.

Interpolation conventions match SimpleITK's: a point is inside the input within half a voxel
of the outermost voxel centres, where the edge voxel is repeated. Nearest must be identical;
linear within 1e-3 of the intensity range away from the output's border.
"""

from __future__ import annotations

import pickle
import threading
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import xarray as xr

import dicomxr
from dicomxr import pixels
from dicomxr.errors import GeometryError
from dicomxr.resample import output_grid, resample, resample_like, resample_to

GE_BLOCK = "1.2.826.0.1.3680043.9.4245.3115138630835728997848661150714813892/1"


# --------------------------------------------------------------------------------------
# helpers


def _open(path: Path, **kwargs) -> xr.DataArray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tilt and split warnings: the geometry is known
        return dicomxr.open_series(path, **kwargs)


def _sitk_grid(affine: np.ndarray, shape: tuple[int, int, int]) -> sitk.Image:
    """An empty SimpleITK image on the grid (index order x=col, y=row, z=slice)."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = affine[:3, :3] / spacing
    image = sitk.Image([int(n) for n in shape[::-1]], sitk.sitkFloat32)
    image.SetSpacing([float(s) for s in spacing[::-1]])
    image.SetOrigin([float(v) for v in affine[:3, 3]])
    image.SetDirection([float(v) for v in direction[:, ::-1].ravel()])
    return image


def _sitk_series(path: Path, files: list[str] | None = None) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files or reader.GetGDCMSeriesFileNames(str(path)))
    return sitk.Cast(reader.Execute(), sitk.sitkFloat32)


def _sitk_resample(image: sitk.Image, out: xr.DataArray, order: int) -> np.ndarray:
    kernel = sitk.sitkNearestNeighbor if order == 0 else sitk.sitkLinear
    grid = _sitk_grid(out.dicom.affine, tuple(out.sizes[d] for d in ("slice", "row", "col")))
    result = sitk.Resample(image, grid, sitk.Transform(), kernel, np.nan, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(result)


def _sitk_index_space(volume: np.ndarray, index_map: np.ndarray, shape, order: int) -> np.ndarray:
    """Resample ``volume`` by output index -> input index ``index_map`` (any affine)."""
    image = sitk.GetImageFromArray(volume.astype(np.float32))  # spacing 1, origin 0, identity
    transform = sitk.AffineTransform(3)
    flip = np.eye(3)[::-1]  # (slice, row, col) <-> (x=col, y=row, z=slice)
    transform.SetMatrix((flip @ index_map[:3, :3] @ flip).ravel().tolist())
    transform.SetTranslation((flip @ index_map[:3, 3]).tolist())
    kernel = sitk.sitkNearestNeighbor if order == 0 else sitk.sitkLinear
    result = sitk.Resample(
        image, [int(n) for n in shape[::-1]], transform, kernel, (0, 0, 0), (1, 1, 1),
        (1, 0, 0, 0, 1, 0, 0, 0, 1), np.nan, sitk.sitkFloat32,
    )  # fmt: skip
    return sitk.GetArrayFromImage(result)


def _assert_close(got: np.ndarray, ref: np.ndarray, *, order: int, value_range: float) -> None:
    """Nearest identical; linear within 1e-3 of the range, two voxels off the border."""
    got = np.asarray(got, dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))  # the same field of view
    if order == 0:
        np.testing.assert_array_equal(got, ref)
        return
    inner = (slice(2, -2),) * 3
    diff = np.abs(got - ref)[inner]
    diff = diff[np.isfinite(diff)]
    assert diff.size > 0
    assert diff.max() <= 1e-3 * value_range, diff.max()


class _Counter:
    """Counts frames read (``pixels.read_frame``), from any thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.frames = 0
        self._lock = threading.Lock()
        real = pixels.read_frame

        def read_frame(ref, **kwargs):
            with self._lock:
                self.frames += 1
            return real(ref, **kwargs)

        monkeypatch.setattr(pixels, "read_frame", read_frame)


@pytest.fixture(scope="module")
def ct(philips_ct: Path) -> xr.DataArray:
    return _open(philips_ct)


@pytest.fixture(scope="module")
def mprage_files(data_root: Path) -> list[str]:
    folder = data_root / "dcm_qa_philips_enh" / "In" / "cl"
    return sorted(str(p) for p in folder.glob("1301_*.dcm"))


# --------------------------------------------------------------------------------------
# against SimpleITK


@pytest.mark.parametrize("order", [0, 1])
def test_ct_matches_simpleitk(ct, philips_ct, order) -> None:
    # 1.313 mm never lands half-way between two 1 mm slices: a tie would be rounding noise
    out = resample(ct, spacing=(1.313, 1.1, 1.1), order=order, dtype=np.float32)
    assert out.dtype == np.float32
    ref = _sitk_resample(_sitk_series(philips_ct), out, order)
    got = out.values
    assert not np.isnan(got).any()  # the grid lies inside the input's field of view
    _assert_close(got, ref, order=order, value_range=float(np.ptp(ref)))


@pytest.mark.parametrize("order", [0, 1])
def test_oblique_mr_matches_simpleitk(data_root, mprage_files, order) -> None:
    da = _open(data_root / "dcm_qa_philips_enh" / "In" / "cl", series=1301)
    out = resample(da, spacing=2.0, order=order)
    # still oblique: the output keeps the input's directions
    units_in = da.dicom.affine[:3, :3] / np.linalg.norm(da.dicom.affine[:3, :3], axis=0)
    np.testing.assert_allclose(out.dicom.affine[:3, :3] / 2.0, units_in, atol=1e-6)
    assert np.abs(units_in).max(axis=0).min() < 0.999
    ref = _sitk_resample(_sitk_series(Path(), mprage_files), out, order)
    _assert_close(out.values, ref, order=order, value_range=float(np.nanmax(ref) - np.nanmin(ref)))


def _pydicom_affine(files: list[str]) -> np.ndarray:
    """The affine from pydicom's ImagePositionPatient of every slice (first and step)."""
    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    iop = np.array(heads[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    heads.sort(key=lambda h: float(np.array(h.ImagePositionPatient, dtype=float) @ normal))
    ipp = np.array([h.ImagePositionPatient for h in heads], dtype=float)
    steps = np.diff(ipp, axis=0)
    np.testing.assert_allclose(steps, np.broadcast_to(steps[0], steps.shape), atol=1e-3)
    dr, dc = (float(v) for v in heads[0].PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = steps[0], iop[3:] * dr, iop[:3] * dc
    affine[:3, 3] = ipp[0]
    return affine


@pytest.mark.parametrize("which", ["philips", "ge"])
@pytest.mark.parametrize("order", [0, 1])
def test_tilted_ct_on_a_detilted_grid(data_root, which, order) -> None:
    if which == "philips":
        da = _open(data_root / "dcm_qa_ct" / "In" / "Philips" / "S21610" / "S3010")
    else:
        da = _open(data_root / "dcm_qa_ct" / "In" / "GE", on_irregular="split", series=GE_BLOCK)
    files = [str(p) for p in np.asarray(da.coords["path"].values).ravel()]
    a_in = da.dicom.affine
    np.testing.assert_allclose(a_in, _pydicom_affine(files), atol=1e-3)
    step, row, col = (a_in[:3, i] / np.linalg.norm(a_in[:3, i]) for i in range(3))
    assert abs(step @ np.cross(col, row)) < 0.99  # really sheared

    out = resample(da, spacing=(2.5, 1.0, 1.0), order=order, dtype=np.float32)
    a_out = out.dicom.affine
    axes = a_out[:3, :3] / np.linalg.norm(a_out[:3, :3], axis=0)
    np.testing.assert_allclose(axes.T @ axes, np.eye(3), atol=1e-9)  # de-tilted: orthogonal
    np.testing.assert_allclose(axes[:, 1:], np.stack([row, col], axis=1), atol=1e-9)

    index_map = np.linalg.inv(a_in) @ a_out
    ref = _sitk_index_space(da.values, index_map, out.shape, order)
    got = out.values
    assert np.isnan(got).any() and np.isfinite(got).mean() > 0.5  # the sheared corners
    _assert_close(got, ref, order=order, value_range=float(np.nanmax(ref) - np.nanmin(ref)))


def test_4d_sample_per_volume(sample_dir) -> None:
    da = _open(sample_dir)
    out = resample(da, spacing=3.0)
    assert out.dims == da.dims
    assert out.sizes["time"] == 3 and out.sizes["label"] == 2
    for name in ("time", "label", "TriggerTime", "LabelType"):
        xr.testing.assert_identical(out.coords[name].variable, da.coords[name].variable)
    assert out.chunks[:2] == ((1, 1, 1), (1, 1))
    got = out.values
    index_map = np.linalg.inv(da.dicom.affine) @ out.dicom.affine
    for t, label in [(0, 0), (2, 1)]:
        volume = da.isel(time=t, label=label).values
        ref = _sitk_index_space(volume, index_map, out.shape[2:], 1)
        _assert_close(got[t, label], ref, order=1, value_range=float(np.ptp(volume)))
        one = resample(da.isel(time=t, label=label), spacing=3.0).values
        np.testing.assert_allclose(got[t, label], one, rtol=1e-6)  # other slabs, same values


def test_cubic_by_slabs_equals_one_whole_volume_spline(sample_dir) -> None:
    from scipy import ndimage

    da = _open(sample_dir).isel(time=0, label=0)
    out = resample(da, spacing=2.0, order=3)
    assert len(out.chunks[0]) > 1
    index_map = np.linalg.inv(da.dicom.affine) @ out.dicom.affine
    whole = ndimage.affine_transform(
        da.values.astype(np.float64), index_map[:3, :3], index_map[:3, 3],
        output_shape=out.shape, order=3, mode="nearest",
    )  # fmt: skip
    inner = (slice(2, -2),) * 3
    diff = np.abs(out.values - whole)[inner]
    assert np.nanmax(diff) <= 1e-5 * float(np.ptp(da.values))  # the padded boxes suffice


def test_dim_order_does_not_matter(sample_dir) -> None:
    da = _open(sample_dir)
    a = resample(da, spacing=4.0, order=0)
    b = resample(da.transpose("col", "label", "row", "slice", "time"), spacing=4.0, order=0)
    xr.testing.assert_identical(a.compute(), b.transpose(*a.dims).compute())


# --------------------------------------------------------------------------------------
# resample_like


def test_resample_like_a_selection_is_the_selection(sample_dir) -> None:
    da = _open(sample_dir)
    target = da.isel(slice=slice(3, 37, 3), row=slice(90, 5, -2), col=slice(7, 80))
    out = resample_like(da, target, order=0)
    assert out.dims == target.dims and out.dtype == da.dtype
    np.testing.assert_array_equal(out.values, target.values)
    xr.align(out, target, join="exact")  # the very coordinates: masks need no reindexing
    np.testing.assert_allclose(out.dicom.affine, target.dicom.affine, atol=1e-9)
    linear = resample_like(da, target).values
    np.testing.assert_allclose(linear, target.values, atol=1e-3 * float(np.ptp(target.values)))


def test_resample_like_a_label_onto_its_image(ct) -> None:
    image = ct.isel(slice=slice(60, 70))
    coarse = resample(image, spacing=2.0, order=0)
    back = resample_like(coarse, image, order=0, fill=-1024)
    assert back.dtype == ct.dtype and back.shape == image.shape
    assert (back.values != -1024).mean() > 0.9


# --------------------------------------------------------------------------------------
# laziness


def test_building_reads_nothing_one_slab_reads_part(philips_ct, monkeypatch) -> None:
    count = _Counter(monkeypatch)
    da = _open(philips_ct)
    out = resample(da, spacing=1.0)
    assert count.frames == 0
    assert len(out.chunks[0]) > 1  # slabs along slice
    first = out.chunks[0][0]
    out.isel(slice=slice(0, first)).compute()
    assert 0 < count.frames <= first + 4  # the slab's slices and the kernel's padding
    count.frames = 0
    out.isel(slice=slice(60, 61)).compute()
    assert count.frames < 140 // 2


def test_a_full_compute_never_holds_the_whole_input(ct, monkeypatch) -> None:
    from dicomxr import resample as module

    sizes: list[int] = []
    real = module._Box.read

    def read(box):
        values = real(box)
        sizes.append(values.size)
        return values

    monkeypatch.setattr(module._Box, "read", read)
    resample(ct, spacing=1.0).compute()
    assert len(sizes) > 4 and sum(sizes) >= ct.size  # every slab read its own box ...
    assert max(sizes) <= ct.size // 4  # ... a small part of the series


def test_per_frame_chunks_and_no_dask_read_only_the_box(philips_ct, monkeypatch) -> None:
    count = _Counter(monkeypatch)
    full = resample(_open(philips_ct).isel(slice=slice(60, 64)), spacing=1.0).values
    for chunks in ({}, None):  # one dask chunk per frame; xarray's lazy indexing, no dask
        da = _open(philips_ct, chunks=chunks)
        out = resample(da, spacing=1.0)
        count.frames = 0
        got = out.isel(slice=slice(60, 64)).values
        assert count.frames <= out.chunks[0][0] + 4
        sub = resample_like(da.isel(slice=slice(60, 64)), out.isel(slice=slice(60, 64))).values
        np.testing.assert_array_equal(got, sub)
    np.testing.assert_allclose(full, got, rtol=1e-6)


def test_graph_is_deterministic_and_picklable(sample_dir) -> None:
    da = _open(sample_dir)
    a, b = resample(da, spacing=3.0), resample(da, spacing=3.0)
    assert a.data.name == b.data.name
    assert resample(da, spacing=3.0, order=0).data.name != a.data.name
    again = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(again.values, a.values)


def test_in_memory_input(sample_dir) -> None:
    da = _open(sample_dir)
    lazy = resample(da, spacing=3.0).values
    np.testing.assert_array_equal(resample(da.compute(), spacing=3.0).values, lazy)


# --------------------------------------------------------------------------------------
# the grid, coords and attrs


def test_grid_keeps_spacing_and_directions(ct) -> None:
    affine, shape = output_grid(ct, spacing=1.0)
    assert shape == (140, 231, 231)
    np.testing.assert_allclose(affine[:3, 3], ct.dicom.affine[:3, 3])
    out = resample(ct, spacing=1.0)
    np.testing.assert_allclose(out.dicom.affine, affine)
    assert out.dicom.spacing == pytest.approx((1.0, 1.0, 1.0))
    assert out.attrs["PixelSpacing"] == [1.0, 1.0]
    assert out.attrs["Rows"] == 231 and "resample" in out.attrs["history"]
    assert "SOPInstanceUID" not in out.coords  # per-slice UIDs do not describe new slices
    by_shape = resample(ct, shape=(70, 100, 100))
    assert by_shape.shape == (70, 100, 100)
    assert by_shape.dicom.spacing == pytest.approx(
        (139 / 69, 511 * 0.451171875 / 99, 511 * 0.451171875 / 99)
    )


def test_axis_aligned_grid(data_root) -> None:
    da = _open(data_root / "dcm_qa_ct" / "In" / "Philips" / "S21610" / "S3010")
    out = resample(da, spacing=2.0, grid="axis-aligned")
    axes = out.dicom.affine[:3, :3] / 2.0
    np.testing.assert_array_equal(np.abs(axes).sum(axis=0), [1, 1, 1])
    assert out.dicom.orientation == da.dicom.orientation


def test_dtype_and_fill(ct) -> None:
    small = ct.isel(slice=slice(0, 4))
    assert resample(small, spacing=2.0).dtype == np.float32
    assert resample(small, spacing=2.0, order=0).dtype == ct.dtype
    assert resample(small, spacing=2.0, dtype="float64").dtype == np.float64
    big = small.dicom.affine.copy()
    big[:3, 3] -= 50.0 * (big[:3, 1] + big[:3, 2])  # starts 50 voxels outside, in-plane
    out = resample_to(small, big, (4, 300, 300), order=0, fill=-2000).values
    assert (out == -2000).any() and (out != -2000).any()
    outside = resample_to(small, big, (4, 300, 300)).values
    assert np.isnan(outside).any()


def test_accessor_methods(sample_dir) -> None:
    da = _open(sample_dir)
    xr.testing.assert_identical(
        da.dicom.resample(spacing=3.0).compute(), resample(da, spacing=3.0).compute()
    )
    target = da.isel(slice=slice(0, 10))
    np.testing.assert_array_equal(da.dicom.resample_like(target, order=0).values, target.values)


# --------------------------------------------------------------------------------------
# bad requests


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spacing": 0}, r"degenerate \(slice=0.0, row=0.0, col=0.0\)"),
        ({"spacing": (1.0, -1.0, 1.0)}, r"degenerate \(row=-1.0\).*greater than 0"),
        ({"spacing": (float("nan"), 1, 1)}, r"degenerate \(slice=nan\)"),
        ({"spacing": (1.0, 1.0)}, "one number .* or three"),
        ({"shape": (10, 0, 10)}, r"degenerate \(row=0\).*at least one voxel"),
        ({"shape": (10, 10)}, "three whole numbers"),
        ({}, "exactly one of spacing= .* or shape="),
        ({"spacing": 1.0, "shape": (1, 1, 1)}, "exactly one of"),
        ({"spacing": 1e-6}, "is the spacing in millimetres"),
        ({"spacing": 1.0, "order": 2}, "0 \\(nearest\\), 1 \\(linear\\) or 3"),
        ({"spacing": 1.0, "grid": "oblique"}, "'input' or 'axis-aligned'"),
        ({"spacing": 1.0, "order": 0, "fill": float("nan")}, "cannot be stored in .* int16"),
    ],
)
def test_degenerate_requests_name_what_is_wrong(ct, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        resample(ct, **kwargs)


def test_bad_targets(ct, sample_dir) -> None:
    bare = ct.isel(slice=slice(0, 2)).copy()
    bare.attrs = {}
    with pytest.raises(GeometryError, match=r"target .* no usable grid.*no 'affine' attribute"):
        resample_like(ct, bare)
    with pytest.raises(GeometryError, match="no 'affine' attribute"):
        resample(bare, spacing=1.0)
    with pytest.raises(GeometryError, match=r"missing \['slice'\].*isel\(slice=\[k\]\)"):
        resample(ct.isel(slice=0), spacing=1.0)
    singular = np.eye(4)
    singular[2, 2] = 0
    with pytest.raises(GeometryError, match="singular"):
        resample_to(ct, singular, (2, 2, 2))
    other = _open(sample_dir)  # another patient, another Frame of Reference
    with pytest.raises(GeometryError, match=r"different Frames of Reference.*check_frame_of"):
        resample_like(ct, other)
    out = resample_like(ct, other, check_frame_of_reference=False, order=0)
    assert out.shape == other.shape[-3:] and out.dicom.affine == pytest.approx(other.dicom.affine)
