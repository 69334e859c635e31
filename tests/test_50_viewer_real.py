"""Viewer on real series: the 140-slice Philips head CT and the embedded Philips 4D pCASL.

Reads are counted at the bottom of the stack (every call of ``dicomxr.pixels.read_frame``),
and what is on screen is compared with pydicom's own decode of the file the viewer names.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

import dicomxr
import dicomxr.pixels


@pytest.fixture(scope="module")
def ct(philips_ct: Path):
    return dicomxr.open_series(philips_ct)


@pytest.fixture(scope="module")
def pcasl(sample_dir: Path):
    return dicomxr.open_series(sample_dir)


@pytest.fixture
def reads(monkeypatch):
    """Paths and frame numbers of every frame read from disk."""
    seen: list[tuple[str, int]] = []
    original = dicomxr.pixels.read_frame

    def counting(ref, *args, **kwargs):
        seen.append((str(getattr(ref, "path", ref)), int(getattr(ref, "frame", 0) or 0)))
        return original(ref, *args, **kwargs)

    monkeypatch.setattr(dicomxr.pixels, "read_frame", counting)
    return seen


def reference_hu(path: str) -> np.ndarray:
    """Independent decode: pydicom's pixel_array with the file's rescale."""
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def grey(values, center, width):
    """DICOM LINEAR window (PS3.3 C.11.2.1.2.1) to grey levels 0..255, rounded half up."""
    x = np.asarray(values, dtype=float)
    y = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    return np.floor(y * 255 + 0.5).astype(np.uint8)


def test_ct_opens_on_one_frame_and_steps_read_one_frame_each(ct, reads):
    v = dicomxr.view(ct)
    assert len(reads) == 1  # the frame on screen, nothing else
    assert v.planes["slice"].name == "axial"
    assert v.position["slice"] == 70
    for s in (71, 72, 73):
        v._sliders["slice"].value = s  # the slider counts from 0, like the index
    assert len(reads) == 4
    shown_files = {Path(p).name for p, _ in reads}
    expected = {Path(str(ct["path"].values[s])).name for s in (70, 71, 72, 73)}
    assert shown_files == expected
    v._sliders["slice"].value = 71  # seen: served from the frame cache
    assert len(reads) == 4


def test_engine_dataset_without_dask_steps_read_one_frame_each(philips_ct, reads):
    import xarray as xr

    image = xr.open_dataset(philips_ct, engine="dicom")["image"]
    assert image.chunks is None
    v = dicomxr.view(image)
    assert len(reads) == 1
    v._sliders["slice"].value = 12
    assert len(reads) == 2
    assert reads[-1][0] == str(image["path"].values[v.position["slice"]])


def test_ct_displayed_equals_pydicom_slice_under_file_and_ct_presets(ct):
    v = dicomxr.view(ct, position={"slice": 40})
    path = str(ct["path"].values[40])
    assert Path(path).name in v._slice_info.value
    assert f"InstanceNumber {int(ct['InstanceNumber'].values[40])}" in v._slice_info.value
    hu = reference_hu(path)
    assert (v.preset, v.level, v.window) == ("file 1", 40.0, 80.0)  # the file's brain window
    np.testing.assert_array_equal(v.plane_values().values, hu)
    np.testing.assert_array_equal(v.displayed()[..., 0], grey(hu, 40, 80))
    v.set_preset("bone")
    np.testing.assert_array_equal(v.displayed()[..., 1], grey(hu, 400, 1800))
    png = np.asarray(Image.open(io.BytesIO(v._images["slice"].value)).convert("L"))
    np.testing.assert_array_equal(png, grey(hu, 400, 1800))


def test_ct_orthogonal_planes_read_the_stack_once_with_physical_aspect(ct, reads):
    v = dicomxr.view(ct)
    assert len(reads) == 1
    v.view = "orthogonal"
    assert len(reads) == 140  # the column of frames the coronal/sagittal planes cut
    assert [v.planes[d].name for d in ("slice", "row", "col")] == ["axial", "coronal", "sagittal"]
    v.click("slice", 200, 300)  # moving the crosshair reads nothing more
    v.set_position(slice=10)
    assert len(reads) == 140
    dr, dc = ct.attrs["PixelSpacing"]
    dz = float(np.diff(ct["slice"].values).mean())
    for dim, across in (("row", 512 * dc), ("col", 512 * dr)):
        w, h = int(v._images[dim].width), int(v._images[dim].height)
        assert h / w == pytest.approx(140 * dz / across, rel=0.01)
    # the coronal plane holds row 200 of every slice, head (highest z) at the top
    coronal = v.plane_values("coronal").values
    top_first = ct["position_z"].values[-1] > ct["position_z"].values[0]
    expected = reference_hu(str(ct["path"].values[-1 if top_first else 0]))[200]
    np.testing.assert_array_equal(coronal[-1 if top_first else 0], expected)
    shown = v.displayed("coronal")[..., 0]
    np.testing.assert_array_equal(shown[0], grey(expected, v.level, v.window))


def test_pcasl_sliders_for_every_extra_dim_read_one_frame_a_step(pcasl, reads):
    extra = [d for d in pcasl.dims if d not in ("slice", "row", "col")]
    assert extra  # the 4D series has dims beyond the stack
    v = dicomxr.view(pcasl)
    assert len(reads) <= 3  # the frame shown (+2 sampled planes if the files carry no window)
    n0 = len(reads)
    for d in extra:
        slider = v._extra_w[d]
        assert len(slider.options) == pcasl.sizes[d]
        if d in pcasl.coords:
            first_label = slider.options[0][0]
            assert str(pcasl[d].values[0]).split(".")[0] in first_label
        slider.value = pcasl.sizes[d] - 1
    assert len(reads) == n0 + len(extra)
    idx = {d: pcasl.sizes[d] - 1 for d in extra}
    path = str(pcasl["path"].isel(idx).values[v.position["slice"]])
    ds = pydicom.dcmread(path)
    ref = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(v.plane_values().values, ref, rtol=1e-6, atol=1e-4)
    assert Path(path).name in v._slice_info.value


def test_browser_lists_the_sample_study_and_opens_its_series(sample_dir):
    catalog = dicomxr.scan(sample_dir)
    b = dicomxr.browse(catalog)
    assert b.study == str(catalog["StudyInstanceUID"].iloc[0])
    labels = [label for label, _ in b._series_w.options]
    assert len(labels) == 1 and "frames" in labels[0]
    v = b.open_viewer()
    assert isinstance(v, dicomxr.viewer.Viewer)
    assert b._slot.children == (v,)
    assert v.displayed().shape[:2] == (96, 96)


def test_ct_montage_reads_only_its_slices(ct, reads, tmp_path):
    from dicomxr.viewer import montage

    m = montage(ct, n=6, preset="brain", path=tmp_path / "ct.png")
    assert len(reads) == 6
    hu = reference_hu(str(ct["path"].values[m.indices[2]]))
    np.testing.assert_array_equal(m.tiles[2][..., 0], grey(hu, 40, 80))
    with Image.open(tmp_path / "ct.png") as img:
        assert img.format == "PNG"


def test_tilted_ge_ct_is_not_called_axial(ge_tilt_ct):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the loader reports the tilt and the uneven spacing
        da = dicomxr.open_series(ge_tilt_ct)
    v = dicomxr.view(da)
    tilt = v.planes["slice"].oblique_deg
    assert tilt == pytest.approx(18.5, abs=0.5)
    # the tilted stack's own plane is named after its index; the planes that contain the
    # tilt axis are still exactly coronal / sagittal
    assert v.view == "slice" and v.planes["slice"].name == "slice"
    assert "18.5° off axis" in v._captions["slice"].value
    assert (v.planes["row"].name, v.planes["col"].name) == ("coronal", "sagittal")


def test_browser_switches_studies_and_opens_the_chosen_series(data_root, reads):
    import warnings

    catalog = dicomxr.scan(data_root / "dcm_qa_ct" / "In")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # irregular stacks in these studies are reported
        b = dicomxr.browse(catalog)
        studies = [uid for _, uid in b._study_w.options]
        messages = []
        assert sorted(studies) == sorted(catalog["StudyInstanceUID"].dropna().astype(str).unique())
        assert reads == []  # listing reads headers only
        for uid in studies:
            b._study_w.value = uid  # what a person clicking the study list does
            assert b.study == uid
            messages.append(b._message.value)
            keys = [key for _, key in b._series_w.options]
            assert keys and b.series == keys[0]
            for key in keys:
                uids = set(b.plans[key].frames["StudyInstanceUID"].astype(str))
                assert uids == {uid}  # only this study's series are offered
        # the planner's findings show beside the lists (the GE study's uneven spacing)
        assert any("spacing" in m for m in messages)
        b._series_w.value = keys[-1]
        b._open_w.click()
    assert b.viewer is not None and b._slot.children == (b.viewer,)
    assert b.viewer.attrs["series_key"] == keys[-1]
    assert len(reads) == 1  # the frame on screen
