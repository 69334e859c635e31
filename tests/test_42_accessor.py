"""The .dicom accessor: affine (checked against the phantom's construction), report, window, plot, view."""

from __future__ import annotations

import dask.array
import numpy as np
import pytest
import xarray as xr

from dicomxr import phantom
from dicomxr.api import open_series

ORIENTATION = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # sagittal: rows along +y, columns down -z
SPACING = (0.9, 0.7)  # (row spacing, column spacing)
STEP = 1.5
ORIGIN = (12.0, -80.0, 60.0)
SHAPE = (8, 14, 18)


@pytest.fixture(scope="module")
def sagittal(tmp_path_factory):
    root = tmp_path_factory.mktemp("sagittal")
    vol = phantom.phantom_volume(SHAPE, dtype="int16", seed=6)
    phantom.write_series(
        root,
        vol,
        orientation=ORIENTATION,
        spacing=SPACING,
        slice_step=STEP,
        origin=ORIGIN,
        modality="MR",
        rescale=(1.0, 0.0),
        extra={"WindowCenter": 500, "WindowWidth": 1000},
    )
    return open_series(root), vol


def _expected_point(k, r, c):
    row_cos = np.array(ORIENTATION[:3])
    col_cos = np.array(ORIENTATION[3:])
    normal = np.cross(row_cos, col_cos)
    # DICOM: column index moves along the row cosine by column spacing, row index along the
    # column cosine by row spacing
    return (
        np.array(ORIGIN) + k * STEP * normal + r * SPACING[0] * col_cos + c * SPACING[1] * row_cos
    )


@pytest.mark.parametrize("index", [(0, 0, 0), (3, 5, 7), (7, 13, 17)])
def test_affine_maps_indices_to_patient(sagittal, index):
    da, _ = sagittal
    point = da.dicom.affine @ np.array([*index, 1.0])
    np.testing.assert_allclose(point[:3], _expected_point(*index), atol=1e-6)
    ras = da.dicom.affine_ras @ np.array([*index, 1.0])
    np.testing.assert_allclose(ras[:3], _expected_point(*index) * [-1, -1, 1], atol=1e-6)
    assert da.dicom.spacing == pytest.approx((STEP, SPACING[0], SPACING[1]))


def test_affine_follows_slice_selection(sagittal):
    da, _ = sagittal
    sub = da.isel(slice=slice(2, 7, 2))
    np.testing.assert_allclose(
        sub.dicom.affine @ [0, 0, 0, 1], [*_expected_point(2, 0, 0), 1], atol=1e-6
    )
    np.testing.assert_allclose(
        sub.dicom.affine @ [1, 0, 0, 1], [*_expected_point(4, 0, 0), 1], atol=1e-6
    )
    flipped = da.isel(slice=slice(None, None, -1))
    np.testing.assert_allclose(
        flipped.dicom.affine @ [0, 0, 0, 1], [*_expected_point(7, 0, 0), 1], atol=1e-6
    )


def test_affine_needs_attrs(sagittal):
    da, _ = sagittal
    with pytest.raises(ValueError, match="affine"):
        xr.DataArray(np.zeros((2, 2, 2)), dims=("slice", "row", "col")).dicom.affine  # noqa: B018
    assert da.dicom.affine.shape == (4, 4)


def test_readers_take_the_old_nested_attrs(sagittal):
    """A DataArray saved by an older dicomxr (nested 4x4 affine, geometry dict) still reads."""
    import json

    da, _ = sagittal
    old = da.copy()
    old.attrs["affine"] = np.reshape(da.attrs["affine"], (4, 4)).tolist()
    old.attrs["geometry"] = json.loads(da.attrs["geometry"])
    np.testing.assert_array_equal(old.dicom.affine, da.dicom.affine)
    assert old.dicom.report == da.dicom.report
    assert da.attrs["geometry"] == json.dumps(old.attrs["geometry"])


def test_affine_attr_of_the_wrong_size_is_an_error(sagittal):
    da, _ = sagittal
    bad = da.copy()
    bad.attrs["affine"] = [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="16 numbers"):
        bad.dicom.affine  # noqa: B018


def test_report(sagittal):
    from dicomxr.geometry import GeometryReport

    da, _ = sagittal
    report = da.dicom.report
    assert isinstance(report, GeometryReport)
    assert report.n_slices == SHAPE[0]
    assert report.regular
    assert report.spacing_median == pytest.approx(STEP)
    assert report.plane == "sagittal"


def test_window_is_lazy_and_correct(sagittal):
    da, vol = sagittal
    win = da.dicom.window(100, 200)
    assert isinstance(win.data, dask.array.Array)
    values = win.values
    assert values.min() >= 0 and values.max() <= 1
    low, high = 100 - 0.5 - 199 / 2, 100 - 0.5 + 199 / 2
    expected = np.clip((vol.astype(np.float64) - low) / (high - low), 0, 1)
    np.testing.assert_allclose(values, expected, atol=1e-6)
    default = da.dicom.window()  # the series preset
    assert default.attrs["window_center"] == 500 and default.attrs["window_width"] == 1000
    with pytest.raises(ValueError, match="width"):
        da.dicom.window(0, 0)


def test_plot_physical_aspect(sagittal):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    da, _ = sagittal
    fig = da.dicom.plot()
    ax = fig.axes[0]
    assert ax.get_aspect() == pytest.approx(SPACING[0] / SPACING[1])
    image = ax.get_images()[0].get_array()
    np.testing.assert_array_equal(np.asarray(image), da.isel(slice=SHAPE[0] // 2).values)
    plt.close(fig)
    fig = da.dicom.plot(montage=4)
    assert sum(1 for a in fig.axes if a.get_images()) == 4
    plt.close(fig)
    with pytest.raises(ValueError, match="unknown dims"):
        da.dicom.plot(time=1)


def test_dataset_accessor(sagittal):
    da, _ = sagittal
    ds = da.to_dataset(name="image", promote_attrs=True)
    np.testing.assert_array_equal(ds.dicom.affine, da.dicom.affine)
    two = xr.Dataset({"a": da, "b": da})
    with pytest.raises(ValueError, match="image"):
        two.dicom.affine  # noqa: B018


def test_view_forwards_to_viewer(sagittal, monkeypatch):
    import dicomxr.viewer

    da, _ = sagittal
    seen = {}
    monkeypatch.setattr(
        dicomxr.viewer, "view", lambda obj, **kw: seen.update(obj=obj, kw=kw) or "viewer"
    )
    assert da.dicom.view(slice=2) == "viewer"
    assert seen["obj"] is da and seen["kw"] == {"slice": 2}


def test_load_reads_everything_into_one_array_and_leaves_the_original_lazy(sagittal):
    da, vol = sagittal
    loaded = da.dicom.load()
    assert isinstance(loaded.data, np.ndarray) and loaded.data.base is None
    np.testing.assert_array_equal(loaded.values, vol)
    assert isinstance(da.data, dask.array.Array)  # the original is untouched
    assert loaded.attrs == da.attrs and set(loaded.coords) == set(da.coords)


def test_load_of_a_selection_takes_dasks_route(sagittal):
    da, vol = sagittal
    part = da.isel(slice=slice(2, 5)).dicom.load()
    assert isinstance(part.data, np.ndarray)
    np.testing.assert_array_equal(part.values, vol[2:5])


def test_montage_is_a_static_png_of_the_frames_it_shows(sagittal, tmp_path):
    da, _ = sagittal
    out = tmp_path / "m.png"
    da.dicom.montage(n=4, path=out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
