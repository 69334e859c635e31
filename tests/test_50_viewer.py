"""Viewer over hand-built lazy arrays that count their reads (dims and attrs per the contract).

The arrays here follow docs/dev/architecture.md exactly (dask, one frame per chunk, ``affine``
for index ``(slice, row, col)``), and count every frame the viewer makes them read, so that
the laziness promises are checked to the frame. Real series are in test_50_viewer_real.py.
"""

from __future__ import annotations

import threading

import dask.array as dsa
import numpy as np
import pytest
import xarray as xr
from PIL import Image

import dicomxr
from dicomxr.viewer import montage, windowing
from dicomxr.viewer.planes import planes_from_affine


class CountingArray:
    """A numpy array behind dask that records which frames were read."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self.shape = values.shape
        self.dtype = values.dtype
        self.ndim = values.ndim
        self.reads: list[tuple[int, ...]] = []
        self._lock = threading.Lock()

    def __getitem__(self, key):
        lead = []
        for k in key[: self.ndim - 2]:
            start = k.start if isinstance(k, slice) else k
            stop = k.stop if isinstance(k, slice) else k + 1
            lead.append(range(start or 0, stop))
        import itertools

        with self._lock:
            self.reads.extend(itertools.product(*lead))
        return self.values[key]


def make_series(
    *,
    extra: dict[str, list] | None = None,
    shape=(12, 40, 30),
    spacing=(2.5, 0.8, 0.6),
    modality="CT",
    photometric="MONOCHROME2",
    windows=((40.0, 400.0), (300.0, 1500.0)),
    rotate_deg=0.0,
    seed=0,
):
    """An axial stack (slice along +z), optionally rotated about x, as the loader would return."""
    extra = extra or {}
    rng = np.random.default_rng(seed)
    full = tuple(len(v) for v in extra.values()) + shape
    values = rng.integers(-1000, 2000, size=full).astype(np.int16)
    counter = CountingArray(values)
    chunks = (1,) * (len(full) - 2) + shape[1:]
    data = dsa.from_array(counter, chunks=chunks, asarray=False)
    t = np.radians(rotate_deg)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    affine = np.eye(4)
    # columns: slice along +z (S), row along +y (P), col along +x (L)
    affine[:3, 0] = rot @ np.array([0, 0, spacing[0]])
    affine[:3, 1] = rot @ np.array([0, spacing[1], 0])
    affine[:3, 2] = rot @ np.array([spacing[2], 0, 0])
    frame_dims = (*extra, "slice")
    n_frames = int(np.prod(full[:-2]))
    coords = {
        "slice": np.arange(shape[0]) * spacing[0] - 10.0,
        "InstanceNumber": (frame_dims, np.arange(1, n_frames + 1).reshape(full[:-2])),
        "path": (
            frame_dims,
            np.array([f"/data/IM{i:04d}.dcm" for i in range(n_frames)]).reshape(full[:-2]),
        ),
    }
    for dim, vals in extra.items():
        coords[dim] = vals
    attrs = {
        "affine": affine.tolist(),
        "Modality": modality,
        "PhotometricInterpretation": photometric,
        "PixelSpacing": [spacing[1], spacing[2]],
        "SeriesDescription": "synthetic",
        "SeriesNumber": 7,
    }
    if windows:
        attrs["WindowCenter"] = [w[0] for w in windows]
        attrs["WindowWidth"] = [w[1] for w in windows]
    da = xr.DataArray(
        data, dims=(*extra, "slice", "row", "col"), coords=coords, attrs=attrs, name="image"
    )
    return da, counter


def expected_gray(values, center, width, invert=False):
    """Independent window: DICOM LINEAR (PS3.3 C.11.2.1.2.1) to 0..255, rounded half up."""
    x = values.astype(float)
    ramp = (x - (center - 0.5)) / (width - 1) + 0.5
    y = np.where(x <= center - 0.5 - (width - 1) / 2, 0.0, ramp)
    y = np.where(x > center - 0.5 + (width - 1) / 2, 1.0, y)
    out = np.floor(y * 255 + 0.5).astype(np.uint8)
    return 255 - out if invert else out


def test_open_reads_only_the_frame_on_screen():
    da, counter = make_series(extra={"time": [10.0, 20.0, 30.0]})
    v = dicomxr.view(da)
    assert counter.reads == [(0, 6)]
    assert v.view == "axial"
    assert v.position == {"time": 0, "slice": 6, "row": 20, "col": 15}


def test_slider_step_reads_exactly_the_new_frame_and_cache_serves_seen_ones():
    da, counter = make_series(extra={"time": [10.0, 20.0, 30.0]})
    v = dicomxr.view(da)
    counter.reads.clear()
    v._sliders["slice"].value = 9  # what a person moving the slider does (counts from 0)
    assert counter.reads == [(0, 9)]
    assert v.position["slice"] == 9
    v._extra_w["time"].value = 2
    assert counter.reads == [(0, 9), (2, 9)]
    v.set_position(slice=6, time=0)  # seen at opening: no read
    assert counter.reads == [(0, 9), (2, 9)]
    assert v.volume.reads == 3


def test_orthogonal_views_read_one_column_of_frames_on_request_only():
    da, counter = make_series(extra={"time": [10.0, 20.0]})
    v = dicomxr.view(da)
    counter.reads.clear()
    v.view = "orthogonal"
    # the coronal and sagittal planes cut every frame of the stack at the current time point
    assert sorted(counter.reads) == [(0, s) for s in range(12) if s != 6]
    counter.reads.clear()
    v.set_position(row=3, col=29, slice=0)  # crosshair moves: all frames already there
    assert counter.reads == []
    v.set_position(time=1)
    assert sorted(counter.reads) == [(1, s) for s in range(12)]


def test_displayed_image_equals_windowed_slice():
    da, counter = make_series(extra={"time": [1.0, 2.0]})
    values = counter.values
    v = dicomxr.view(da, position={"slice": 4, "time": 1})
    assert v.preset == "file 1" and (v.level, v.window) == (40.0, 400.0)
    shown = v.displayed()
    assert shown.shape == (40, 30, 3)
    np.testing.assert_array_equal(shown[..., 0], expected_gray(values[1, 4], 40, 400))
    assert (shown[..., 0] == shown[..., 1]).all() and (shown[..., 1] == shown[..., 2]).all()
    v.level, v.window = 500.0, 1000.0
    assert v.preset == "custom" or v.preset == "file 1"
    np.testing.assert_array_equal(v.displayed()[..., 0], expected_gray(values[1, 4], 500, 1000))
    np.testing.assert_array_equal(v.plane_values().values, values[1, 4])
    # the PNG that goes to the browser holds exactly that picture
    import io

    png = np.asarray(Image.open(io.BytesIO(v._images["slice"].value)).convert("RGB"))
    np.testing.assert_array_equal(png, v.displayed())


def test_monochrome1_is_shown_inverted():
    da, counter = make_series(photometric="MONOCHROME1")
    values = counter.values
    v = dicomxr.view(da, level=100, window=800)
    np.testing.assert_array_equal(
        v.displayed()[..., 0], expected_gray(values[6], 100, 800, invert=True)
    )


def test_presets_file_ct_and_window_slider_by_hand():
    da, _counter = make_series()
    v = dicomxr.view(da)
    assert list(v.presets)[:2] == ["file 1", "file 2"]
    for name in ("brain", "subdural", "lung", "bone", "abdomen"):
        assert name in v.presets
    v._preset_w.value = "lung"
    assert (v.preset, v.level, v.window) == ("lung", -600.0, 1500.0)
    v._width_w.value = 700.0
    assert (v.preset, v.level, v.window) == ("custom", -600.0, 700.0)
    assert v._preset_w.value == "custom"
    v.set_preset("file 2")
    assert (v.level, v.window) == (300.0, 1500.0)


def test_auto_window_for_mr_samples_three_planes_not_the_volume():
    da, counter = make_series(modality="MR", windows=None, shape=(20, 16, 16))
    values = counter.values
    v = dicomxr.view(da)
    assert v.preset == "auto"
    picks = windowing.sample_indices(20, 3, include=10)
    assert sorted(counter.reads) == [(s,) for s in picks]
    sample = values[picks].ravel().astype(float)
    sample = sample[sample != 0]
    lo, hi = np.percentile(sample, [1, 99.5])
    assert v.level == pytest.approx((lo + hi) / 2) and v.window == pytest.approx(hi - lo)
    assert "brain" not in v.presets  # CT presets only for CT


def test_honest_plane_names_and_physical_aspect():
    da, _counter = make_series(spacing=(2.5, 0.8, 0.6))
    v = dicomxr.view(da, view="orthogonal")
    assert [v.planes[d].name for d in ("slice", "row", "col")] == ["axial", "coronal", "sagittal"]
    # coronal: 12 slices x 2.5 mm tall, 30 cols x 0.6 mm wide
    w, h = int(v._images["row"].width), int(v._images["row"].height)
    assert h / w == pytest.approx((12 * 2.5) / (30 * 0.6), rel=0.02)
    w, h = int(v._images["col"].width), int(v._images["col"].height)
    assert h / w == pytest.approx((12 * 2.5) / (40 * 0.8), rel=0.02)
    assert v.planes["row"].aspect == pytest.approx(2.5 / 0.6)
    oblique, _c = make_series(rotate_deg=25.0)
    names = [p.name for p in planes_from_affine(oblique.attrs).values()]
    assert names == ["slice", "row", "sagittal"]  # rotated about x: the sagittal plane stays
    flat = {"affine": np.asarray(da.attrs["affine"]).ravel().tolist()}  # as netCDF keeps it
    assert planes_from_affine(flat) == planes_from_affine(da.attrs)


def test_coronal_has_head_up_and_crosshair_links_the_planes():
    da, counter = make_series()
    values = counter.values
    v = dicomxr.view(da, view="orthogonal", position={"slice": 2, "row": 5, "col": 7})
    coronal = v.plane_values("coronal").values  # (slice, col) at row 5
    np.testing.assert_array_equal(coronal, values[:, 5, :])
    shown = v.displayed("coronal")[..., 0]
    # slices run toward +z (head): the last slice is on the top row
    np.testing.assert_array_equal(shown, expected_gray(values[::-1, 5, :], v.level, v.window))
    # the crosshair: where the axial (slice 2) and sagittal (col 7) planes cut the coronal one
    assert v.crosshair("coronal") == (12 - 1 - 2, 7)
    svg = v._layers["row"].value
    assert 'y1="9.5"' in svg and 'x1="7.5"' in svg and 'viewBox="0 0 30 12"' in svg
    v.show_crosshair = False
    assert "<line" not in v._layers["row"].value
    # a click on the axial plane moves the coronal and sagittal planes there
    v.click("slice", 30, 4)
    assert (v.position["row"], v.position["col"]) == (30, 4)
    np.testing.assert_array_equal(v.plane_values("sagittal").values, values[:, :, 4])
    # a click on the coronal plane (screen row 0 = top = last slice) moves the slice
    v.click("row", 0, 10)
    assert (v.position["slice"], v.position["col"]) == (11, 10)
    # what the browser sends (ipyevents): pixels of the layer's box, scaled to the plane
    w, h = int(v._images["col"].width), int(v._images["col"].height)
    v._on_click_event(
        "col",
        {
            "relativeX": w * 0.5,
            "relativeY": h * 0.99,
            "boundingRectWidth": w,
            "boundingRectHeight": h,
        },
    )
    assert (v.position["slice"], v.position["row"]) == (0, 20)
    # the mouse wheel over a plane steps through its own stack, within bounds
    v._on_dom_event("slice", {"type": "wheel", "deltaY": 100})
    assert v.position["slice"] == 1
    v._on_dom_event("slice", {"type": "wheel", "deltaY": -3})
    v._on_dom_event("slice", {"type": "wheel", "deltaY": -3})
    assert v.position["slice"] == 0


def test_extra_dim_sliders_are_labelled_with_their_values():
    da, _counter = make_series(extra={"echo": [4.6, 9.2]})
    da = da.assign_coords(EchoNumbers=("echo", [1, 2]))
    v = dicomxr.view(da)
    labels = [label for label, _ in v._extra_w["echo"].options]
    assert labels == ["4.6", "9.2"]
    assert "EchoNumbers=1" in v._extra_info["echo"].value
    v._extra_w["echo"].value = 1
    assert v.position["echo"] == 1
    assert "1/1 · EchoNumbers=2" in v._extra_info["echo"].value  # 0-based, like the index
    assert "echo 1/1" in v._slice_info.value


def test_slice_info_and_metadata_panel_follow_the_frame_on_screen():
    da, counter = make_series(extra={"time": [10.0, 20.0]})
    v = dicomxr.view(da, position={"slice": 3, "time": 1})
    assert "slice 3/11" in v._slice_info.value  # index 3 of 0..11
    assert "-2.50 mm" in v._slice_info.value  # slice coordinate of index 3
    assert "InstanceNumber 16" in v._slice_info.value  # 12 + 3 + 1
    assert "IM0015.dcm" in v._slice_info.value
    assert "/data/IM0015.dcm" in v._meta.value
    value = int(counter.values[1, 3, 20, 15])
    assert f"<td>{value}</td>" in v._meta.value


def test_overlay_colours_labels_with_opacity():
    da, _counter = make_series()
    labels = np.zeros((12, 40, 30), np.uint8)
    labels[6, 10:20, 5:10] = 1
    labels[6, 25:30, 20:25] = 2
    mask = xr.DataArray(dsa.from_array(labels, chunks=(1, 40, 30)), dims=("slice", "row", "col"))
    v = dicomxr.view(da, overlay=mask, overlay_opacity=1.0)
    shown = v.displayed()
    c1, c2 = tuple(shown[12, 6]), tuple(shown[27, 22])
    assert c1 != c2 and len(set(c1)) > 1 and len(set(c2)) > 1  # two distinct colours
    assert shown[0, 0, 0] == shown[0, 0, 1] == shown[0, 0, 2]  # no label: grey
    v.overlay_opacity = 0.0
    assert shown[12, 6].tolist() != v.displayed()[12, 6].tolist()
    with pytest.raises(ValueError, match="grid"):
        dicomxr.view(da, overlay=mask.isel(row=slice(0, 10)))


def test_colormap_reset_and_errors():
    da, _counter = make_series(extra={"time": [1.0, 2.0]})
    v = dicomxr.view(da)
    v._cmap_w.value = "viridis"
    shown = v.displayed()
    assert not (shown[..., 0] == shown[..., 2]).all()
    v.set_position(slice=1, time=1)
    v.view = "coronal"
    v.set_preset("bone")
    v._reset_w.click()
    assert v.position == {"time": 0, "slice": 6, "row": 20, "col": 15}
    assert (v.view, v.colormap, v.preset) == ("axial", "gray", "file 1")
    import traitlets

    with pytest.raises(traitlets.TraitError, match="out of range"):
        v.set_position(slice=12)
    with pytest.raises(traitlets.TraitError, match="unknown view"):
        v.view = "oblique"
    with pytest.raises(ValueError, match="rename"):
        dicomxr.view(da.rename(row="y"))
    with pytest.raises(TypeError, match="cannot view"):
        dicomxr.view(np.zeros((3, 3)))


def test_series_dataset_and_numpy_backed_arrays():
    da, counter = make_series()
    ds = da.to_dataset(name="image")
    v = dicomxr.view(ds)
    assert v.displayed().shape == (40, 30, 3)
    mem = da.copy(data=counter.values.copy())
    v = dicomxr.view(mem, view="sagittal")
    np.testing.assert_array_equal(v.plane_values().values, mem.values[:, :, 15])


def test_montage_reads_only_its_frames_and_saves_png(tmp_path):
    da, counter = make_series(extra={"time": [1.0, 2.0]})
    values = counter.values
    m = montage(da, n=4, isel={"time": 1}, preset="brain", path=tmp_path / "m.png")
    assert sorted(counter.reads) == [(1, i) for i in m.indices]
    assert len(m.indices) == 4
    np.testing.assert_array_equal(
        m.tiles[0][..., 0], expected_gray(values[1, m.indices[0]], 40, 80)
    )
    with Image.open(tmp_path / "m.png") as img:
        assert img.format == "PNG" and img.size[0] > 100
    assert list(tmp_path.iterdir()) == [tmp_path / "m.png"]  # no temporary left behind
    assert m._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"


def test_per_frame_file_window_follows_the_frame_and_auto_is_per_volume():
    # Philips stores one window per volume of a 4D series: the loader keeps it as a coordinate
    da, counter = make_series(extra={"time": [1.0, 2.0]}, windows=None, modality="MR")
    centers = np.array([[1070.0] * 12, [51.0] * 12])
    da = da.assign_coords(
        WindowCenter=(("time", "slice"), centers), WindowWidth=(("time", "slice"), centers * 1.7)
    )
    v = dicomxr.view(da)
    assert (v.preset, v.level, v.window) == ("file 1", 1070.0, 1819.0)
    assert counter.reads == [(0, 6)]  # a file window: no sampled planes
    v.set_position(time=1)
    assert (v.preset, v.level, v.window) == ("file 1", 51.0, 51.0 * 1.7)
    assert v._level_w.value == 51.0
    np.testing.assert_array_equal(
        v.displayed()[..., 0], expected_gray(counter.values[1, 6], 51.0, 51.0 * 1.7)
    )
    counter.reads.clear()
    v.set_preset("auto")  # sampled from the volume on screen
    assert sorted(counter.reads) == [
        (1, s) for s in windowing.sample_indices(12, 3, include=6) if s != 6
    ]
    auto = (v.level, v.window)
    counter.reads.clear()
    v.set_position(time=0, slice=3)  # a step reads the frame shown, and the auto window stays
    assert counter.reads == [(0, 3)] and (v.level, v.window) == auto


def test_rgb_series_shown_as_stored_and_overlay_with_extra_dims():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 255, size=(4, 20, 16, 3), dtype=np.uint8)
    da = xr.DataArray(
        dsa.from_array(rgb, chunks=(1, 20, 16, 3)),
        dims=("slice", "row", "col", "channel"),
        attrs={"PhotometricInterpretation": "RGB", "Modality": "US"},
    )
    v = dicomxr.view(da)
    np.testing.assert_array_equal(v.displayed(), rgb[2])
    assert v._preset_w not in v.children[2].children  # no window for colour images
    # an overlay that varies along an extra dim follows that slider
    gray, counter = make_series(extra={"time": [1.0, 2.0]})
    labels = np.zeros((2, 12, 40, 30), np.uint8)
    labels[1, :, :5, :5] = 3
    ov = xr.DataArray(labels, dims=("time", "slice", "row", "col"))
    v = dicomxr.view(gray, overlay=ov, overlay_opacity=1.0)
    assert tuple(v.displayed()[0, 0]) == (expected_gray(counter.values[0, 6, 0, 0], 40, 400),) * 3
    v.set_position(time=1)
    assert len(set(v.displayed()[0, 0].tolist())) > 1  # label 3 in colour


def test_snapshot_draws_the_planes_on_screen():
    da, _counter = make_series()
    v = dicomxr.view(da, view="orthogonal", position={"slice": 3})
    snap = v.snapshot()
    assert snap.indices == [3, 20, 15]
    for got, dim in zip(snap.tiles, ("slice", "row", "col"), strict=True):
        np.testing.assert_array_equal(got, v.displayed(dim))
    assert snap.png[:8] == b"\x89PNG\r\n\x1a\n"


def test_close_frees_the_cache_and_the_widgets():
    da, _counter = make_series()
    v = dicomxr.view(da, view="orthogonal")
    assert v.volume.frames.nbytes > 0
    image = v._images["row"]
    v.close()
    assert v.volume.frames.nbytes == 0 and len(v._png) == 0
    assert image.comm is None and v.comm is None


def test_sel_moves_by_coordinate_value():
    da, _counter = make_series(extra={"time": [10.0, 20.0, 30.0]})
    da = da.assign_coords(phase=("time", ["a", "b", "c"]))
    v = dicomxr.view(da)
    v.sel(slice=4.9, time=21.0)  # slices at -10, -7.5, ... mm: 5.0 is index 6
    assert (v.position["slice"], v.position["time"]) == (6, 1)
    with pytest.raises(ValueError, match="no coordinate"):
        v.sel(row=3)
    with pytest.raises(ValueError, match="not a time value"):
        v.sel(time="x")
