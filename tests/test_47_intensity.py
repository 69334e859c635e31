"""Intensity: one window implementation for the accessor, the viewer, the montage and plot.

The DICOM VOI functions are checked against values worked out by hand from PS3.3
C.11.2.1.2 and against pydicom's ``apply_windowing`` / ``apply_voi_lut`` (an independent
implementation), on the real Philips CT. The default window is checked to be the same
everywhere, for the CT (a file window), the embedded 4D sample (a window per frame), and
for series with no file window (a CT preset, sampled percentiles).
"""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as dsa
import matplotlib
import numpy as np
import pydicom
import pytest
import traitlets
import xarray as xr
from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing

import dicomxr
from dicomxr import intensity
from dicomxr.intensity import PRESETS, Window
from dicomxr.viewer import montage

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def ct(philips_ct: Path) -> xr.DataArray:
    return dicomxr.open_series(philips_ct)


@pytest.fixture(scope="module")
def sample(sample_dir: Path) -> xr.DataArray:
    return dicomxr.open_series(sample_dir)


def _no_compute(*args, **kwargs):
    raise AssertionError("dask computed something")


def _small(ct: xr.DataArray, **attrs) -> xr.DataArray:
    """A 12-slice crop of the real CT with attrs changed (``None`` removes one)."""
    da = ct.isel(slice=slice(60, 72), row=slice(100, 400), col=slice(100, 400))
    da.attrs = {**da.attrs, **attrs}
    for k in [k for k, v in da.attrs.items() if v is None]:
        del da.attrs[k]
    return da


def _plot_window(da: xr.DataArray, **kw) -> tuple[float, float, str]:
    import matplotlib.pyplot as plt

    fig = da.dicom.plot(**kw)
    image = fig.axes[0].get_images()[0]
    vmin, vmax = image.get_clim()
    cmap = image.get_cmap().name
    plt.close(fig)
    return vmin, vmax, cmap


# -- the same default window everywhere --------------------------------------------------------
def _same_default_everywhere(da: xr.DataArray, expected: Window) -> None:
    ref = intensity.reference_index(da)
    assert intensity.default_window(da) == expected
    # the accessor: the default window applied at the reference frame
    windowed = da.dicom.window().isel(ref).values
    frame = da.isel(ref).values.astype(np.float64)
    np.testing.assert_allclose(
        windowed,
        intensity.voi(frame, expected.center, expected.width, expected.function),
        atol=1e-6,
    )
    assert windowed.dtype == np.float32
    # the viewer opens on the reference frame with that window
    v = dicomxr.view(da)
    assert (v.preset, v.level, v.window) == (expected.name, expected.center, expected.width)
    # the montage (of the first volume) and plot (of its middle slice)
    assert montage(da, n=3).window == expected
    vmin, vmax, _ = _plot_window(da)
    assert (vmin, vmax) == pytest.approx(expected.ramp)


def test_philips_ct_opens_with_its_file_window_everywhere(ct):
    expected = Window(40.0, 80.0, "file 1")  # Philips repeats its brain window: offered once
    _same_default_everywhere(ct, expected)
    out = ct.dicom.window()
    assert (out.attrs["window_center"], out.attrs["window_width"]) == (40.0, 80.0)
    assert out.attrs["window_name"] == "file 1" and out.attrs["units"] == "1"


def test_sample_opens_with_the_window_of_its_reference_frame_everywhere(sample):
    # the 4D pCASL keeps one window per frame as coordinates; the default is the frame's own
    ref = intensity.reference_index(sample)
    assert ref == {"time": 0, "label": 0, "slice": 20}
    c = float(sample["WindowCenter"].isel(ref))
    w = float(sample["WindowWidth"].isel(ref))
    _same_default_everywhere(sample, Window(c, w, "file 1"))
    # every frame is windowed with its own file window
    other = {"time": 2, "label": 1, "slice": 7}
    c2, w2 = float(sample["WindowCenter"].isel(other)), float(sample["WindowWidth"].isel(other))
    assert (c2, w2) != (c, w)
    np.testing.assert_allclose(
        sample.dicom.window().isel(other).values,
        intensity.voi(sample.isel(other).values.astype(np.float64), c2, w2),
        atol=1e-6,
    )
    v = dicomxr.view(sample, position=other)
    assert (v.level, v.window) == (c2, w2)
    assert _plot_window(sample, slice=7, time=2, label=1)[:2] == pytest.approx(Window(c2, w2).ramp)


def test_ct_without_a_file_window_opens_with_the_abdomen_preset_everywhere(ct):
    da = _small(ct, WindowCenter=None, WindowWidth=None)
    _same_default_everywhere(da, PRESETS["abdomen"])


def test_mr_without_a_file_window_opens_with_the_same_sampled_window_everywhere(ct):
    da = _small(ct, WindowCenter=None, WindowWidth=None, Modality="MR", units=None)
    auto = intensity.default_window(da)
    assert auto.name == "auto"
    # the planes sampled: three around the middle slice of the first volume, nothing else
    picks = intensity.sample_indices(12, 3, include=6)
    values = da.isel(slice=picks).values
    assert auto == intensity.auto_window(list(values), "MR")
    _same_default_everywhere(da, auto)


def test_default_window_reads_only_the_sampled_planes():
    reads: list[int] = []

    def frame(i):
        reads.append(int(i))
        return np.full((1, 8, 8), float(i), np.float32)

    data = dsa.concatenate(
        [dsa.from_delayed(dask.delayed(frame)(i), (1, 8, 8), np.float32) for i in range(40)]
    )
    da = xr.DataArray(data, dims=("slice", "row", "col"), attrs={"Modality": "MR"})
    w = intensity.default_window(da)
    assert sorted(reads) == intensity.sample_indices(40, 3, include=20) == [10, 20, 29]
    assert (w.low, w.high) == pytest.approx(
        tuple(np.percentile(np.repeat([10, 20, 29], 64), [1, 99.5]))
    )


# -- the VOI functions -------------------------------------------------------------------------
def test_linear_by_hand_from_the_standard():
    # c = 40, w = 80: ymin at x <= 40 - 0.5 - 79/2 = 0, ymax at x > 40 - 0.5 + 79/2 = 79,
    # else (x - 39.5) / 79 + 0.5
    x = np.array([-1000.0, 0.0, 0.5, 1.0, 39.5, 40.0, 78.0, 79.0, 79.5, 3000.0])
    # (here simply x / 79 on the ramp)
    expected = [0.0, 0.0, 0.5 / 79, 1 / 79, 0.5, 40 / 79, 78 / 79, 1.0, 1.0, 1.0]
    np.testing.assert_allclose(intensity.voi(x, 40, 80), expected, rtol=0, atol=1e-15)
    # width 1: a step at c - 0.5 (x <= c - 0.5 -> ymin, else ymax)
    np.testing.assert_array_equal(
        intensity.voi(np.array([-1.0, 0.0, 0.25, 1.0]), 0.5, 1), [0, 0, 1, 1]
    )
    # an output range: 8-bit, the standard's own example range
    np.testing.assert_allclose(
        intensity.voi(np.array([0.0, 39.5, 79.0]), 40, 80, out_range=(0, 255)), [0, 127.5, 255]
    )


def test_linear_exact_and_sigmoid_by_hand():
    x = np.array([-10.0, 0.0, 20.0, 40.0, 80.0, 90.0])
    np.testing.assert_allclose(
        intensity.voi(x, 40, 80, "LINEAR_EXACT"), [0, 0, 0.25, 0.5, 1, 1], atol=1e-15
    )
    # SIGMOID: 1 / (1 + exp(-4 (x - c) / w)); at x = c + w/4 that is 1 / (1 + e^-1)
    got = intensity.voi(np.array([40.0, 60.0, 20.0]), 40, 80, "SIGMOID")
    np.testing.assert_allclose(got, [0.5, 1 / (1 + np.exp(-1)), 1 / (1 + np.exp(1))], atol=1e-15)


@pytest.mark.parametrize(
    ("function", "center", "width"),
    [
        ("LINEAR", 40, 80),
        ("LINEAR", -600, 1500),
        ("LINEAR", 0.5, 1),
        ("LINEAR_EXACT", 40, 80),
        ("LINEAR_EXACT", 35.5, 0.5),
        ("SIGMOID", 40, 80),
        ("SIGMOID", 400, 1800),
    ],
)
def test_voi_equals_pydicom_on_a_real_ct_slice(ct, function, center, width):
    ds = pydicom.dcmread(str(ct["path"].values[70]))
    hu = apply_modality_lut(ds.pixel_array, ds)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function
    ref = apply_windowing(hu, ds)
    # pydicom's output range: the stored range mapped through the rescale
    ymin = 0 * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    ymax = (2**ds.BitsStored - 1) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    ours = intensity.voi(hu, center, width, function, out_range=(ymin, ymax))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)
    # the accessor on the loaded series: same numbers in [0, 1], lazily
    out = ct.isel(slice=70).dicom.window(center, width, function=function)
    np.testing.assert_allclose(out.values, (ref - ymin) / (ymax - ymin), atol=1e-6)


def test_accessor_brain_preset_equals_pydicom_apply_voi_lut(ct):
    ds = pydicom.dcmread(str(ct["path"].values[30]))
    ds.WindowCenter, ds.WindowWidth = 40, 80
    ref = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    lo, hi = float(ds.RescaleIntercept), (2**ds.BitsStored - 1) + float(ds.RescaleIntercept)
    out = ct.dicom.window("brain").isel(slice=30)
    np.testing.assert_allclose(out.values, (ref - lo) / (hi - lo), atol=1e-6)
    assert out.attrs["window_name"] == "brain"


def test_viewer_grey_levels_are_the_voi_output_rounded(ct):
    v = dicomxr.view(ct, position={"slice": 50})
    hu = v.plane_values().values
    expected = np.floor(intensity.voi(hu.astype(float), 40, 80) * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(v.displayed()[..., 0], expected)


def test_voi_lut_function_from_the_attrs_is_used_everywhere(ct):
    da = _small(ct, VOILUTFunction="SIGMOID")
    w = intensity.default_window(da)
    assert (w.name, w.function) == ("file 1", "SIGMOID")
    out = da.dicom.window().isel(slice=6)
    frame = da.isel(slice=6).values.astype(float)
    sigmoid = 1 / (1 + np.exp(-4 * (frame - 40) / 80))
    np.testing.assert_allclose(out.values, sigmoid, atol=1e-6)
    assert out.attrs["window_function"] == "SIGMOID"
    v = dicomxr.view(da)
    shown = v.displayed()[..., 0]
    np.testing.assert_array_equal(shown, np.floor(sigmoid * 255 + 0.5).astype(np.uint8))
    assert montage(da, n=2).window.function == "SIGMOID"


def test_monochrome1_is_inverted_in_one_place(ct):
    da = _small(ct, PhotometricInterpretation="MONOCHROME1")
    plain = _small(ct)
    out = da.dicom.window("bone")
    np.testing.assert_allclose(out.values, 1 - plain.dicom.window("bone").values, atol=1e-6)
    assert out.attrs["window_inverted"] == 1
    assert da.dicom.window("bone", invert=False).attrs["window_inverted"] == 0
    v, p = dicomxr.view(da), dicomxr.view(plain)
    np.testing.assert_array_equal(v.displayed(), 255 - p.displayed())
    assert _plot_window(da)[2] == "gray_r"


# -- presets by name ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["brain", "lung", "bone", "abdomen", "subdural", "mediastinum"])
def test_named_presets_from_accessor_viewer_montage_and_plot(ct, name):
    preset = PRESETS[name]
    out = ct.dicom.window(name)
    assert (out.attrs["window_center"], out.attrs["window_width"]) == (preset.center, preset.width)
    v = dicomxr.view(ct, preset=name)
    assert (v.preset, v.level, v.window) == (name, preset.center, preset.width)
    assert montage(ct, n=2, preset=name).window == preset
    assert _plot_window(ct, preset=name)[:2] == pytest.approx(preset.ramp)


def test_a_pair_a_window_and_keywords(ct):
    one = ct.dicom.window((300, 600))
    two = ct.dicom.window(300, 600)
    three = ct.dicom.window(center=300, width=600)
    four = intensity.window(ct, Window(300, 600))
    for out in (one, two, three, four):
        assert (out.attrs["window_center"], out.attrs["window_width"]) == (300, 600)
    assert ct.dicom.window(width=600).attrs["window_center"] == 40  # the default's centre


# -- laziness: window, clip, zscore keep dask, coords and attrs --------------------------------
def test_window_clip_zscore_normalize_stay_lazy_and_keep_coords(ct):
    with dask.config.set(scheduler=_no_compute):
        outs = {
            "window": ct.dicom.window(),
            "brain": ct.dicom.window("brain"),
            "clip": ct.dicom.clip(-100, 100),
            "zscore": ct.dicom.zscore(),
            "minmax": intensity.normalize(ct, "minmax"),
        }
    for name, out in outs.items():
        assert isinstance(out.data, dsa.Array), name
        assert set(out.coords) == set(ct.coords), name
        assert out.dims == ct.dims and out.shape == ct.shape, name
        for key in ("affine", "Modality", "SeriesInstanceUID", "PixelSpacing"):
            assert out.attrs[key] == ct.attrs[key], (name, key)
    assert outs["clip"].attrs["clip_low"] == -100 and outs["clip"].dtype == ct.dtype
    assert outs["zscore"].attrs["normalization"] == "zscore over slice,row,col"
    assert outs["minmax"].attrs["normalization"] == "minmax over slice,row,col"
    np.testing.assert_array_equal(ct.dicom.affine, outs["zscore"].dicom.affine)


def test_clip_and_zscore_values(ct):
    da = _small(ct)
    vals = da.values.astype(np.float64)
    np.testing.assert_array_equal(da.dicom.clip(-100, 100).values, np.clip(vals, -100, 100))
    z = da.dicom.zscore().values
    np.testing.assert_allclose(z, (vals - vals.mean()) / vals.std(), rtol=1e-4, atol=1e-4)
    # statistics inside a mask only: the mask's voxels come out with mean 0 and std 1
    mask = da > 0
    zm = da.dicom.zscore(mask=mask)
    inside = zm.values[mask.values]
    assert abs(inside.mean()) < 1e-3 and inside.std() == pytest.approx(1, rel=1e-3)
    assert zm.attrs["normalization"] == "zscore over slice,row,col (masked)"
    # per slice: over row and col only
    per_slice = da.dicom.zscore(over=("row", "col")).values
    np.testing.assert_allclose(per_slice.mean(axis=(1, 2)), 0, atol=1e-4)
    mm = intensity.normalize(da, "minmax").values
    assert np.nanmin(mm) == 0 and np.nanmax(mm) == 1


def test_clip_percentile_samples_planes_unless_asked(ct):
    da = _small(ct)
    out = da.dicom.clip_percentile(1, 99)
    picks = intensity.sample_indices(12, 3, include=6)
    lo, hi = np.percentile(da.isel(slice=picks).values, [1, 99])
    assert (out.attrs["clip_low"], out.attrs["clip_high"]) == pytest.approx((lo, hi))
    assert isinstance(out.data, dsa.Array) and out.attrs["clip_sampled"] == 1
    full = da.dicom.clip_percentile(1, 99, sample=False)
    assert full.attrs["clip_low"] == pytest.approx(np.percentile(da.values, 1))


# -- bad input ---------------------------------------------------------------------------------
def test_unknown_preset_names_list_the_known_ones(ct, sample):
    with pytest.raises(ValueError, match=r"unknown window preset 'nope'.*'brain'.*'lung'.*'auto'"):
        ct.dicom.window("nope")
    with pytest.raises(ValueError, match="unknown window preset 'nope'"):
        montage(ct, preset="nope")
    with pytest.raises(ValueError, match="unknown window preset 'nope'"):
        dicomxr.view(ct).set_preset("nope")
    with pytest.raises(ValueError, match="'brain' is a CT preset"):
        sample.dicom.window("brain")  # an MR series: Hounsfield presets do not apply


def test_width_below_one_is_a_clear_value_error(ct):
    with pytest.raises(ValueError, match="width must be >= 1 for the DICOM LINEAR"):
        ct.dicom.window(40, 0.5)
    with pytest.raises(ValueError, match="width must be >= 1"):
        ct.dicom.window(0, 0)
    with pytest.raises(ValueError, match="width must be >= 1"):
        Window(40, 0)
    with pytest.raises(ValueError, match="width must be > 0 for SIGMOID"):
        intensity.voi(np.zeros(3), 0, 0, "SIGMOID")
    with pytest.raises(ValueError, match="unknown VOI function 'GAMMA'"):
        ct.dicom.window(40, 80, function="gamma")
    with pytest.raises(ValueError, match="a centre needs a width"):
        intensity.window(ct, 40)
    v = dicomxr.view(ct)
    with pytest.raises(traitlets.TraitError, match="width must be >= 1"):
        v.window = 0.5
    # narrower windows are fine with LINEAR_EXACT, as the standard allows
    assert ct.dicom.window(40, 0.5, function="LINEAR_EXACT").attrs["window_width"] == 0.5
    with pytest.raises(ValueError, match="low <= high"):
        ct.dicom.clip(10, -10)
    with pytest.raises(ValueError, match="over names"):
        ct.dicom.zscore(over=("time",))


def test_intensity_imports_no_higher_layer():
    import ast

    tree = ast.parse(Path(intensity.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not {m for m in imported if m.startswith("dicomxr")}


def test_the_loader_reads_explanations_and_the_voi_function(tmp_path):
    from dicomxr.phantom import phantom_volume, write_series

    write_series(
        tmp_path / "ct",
        phantom_volume((6, 40, 40)),
        extra={
            "WindowCenter": [40, 400],
            "WindowWidth": [400, 1800],
            "WindowCenterWidthExplanation": ["SOFT", "BONE"],
            "VOILUTFunction": "SIGMOID",
        },
    )
    da = dicomxr.open_series(tmp_path / "ct")
    assert da.attrs["VOILUTFunction"] == "SIGMOID"
    expected = Window(40.0, 400.0, "file: SOFT", "SIGMOID")
    _same_default_everywhere(da, expected)
    assert list(intensity.presets_for(da.attrs))[:2] == ["file: SOFT", "file: BONE"]
    v = dicomxr.view(da, preset="file: BONE")
    assert (v.level, v.window) == (400.0, 1800.0)
    bone = da.dicom.window("file: BONE")
    assert (bone.attrs["window_function"], bone.attrs["window_center"]) == ("SIGMOID", 400.0)
