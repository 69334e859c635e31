"""Labels on the image grid: DICOM SEG and RTSTRUCT read onto an image, SEG written back.

References are independent of the code under test: the SEG fixtures are made by highdicom
straight from the real Philips CT's files (masks defined in patient millimetres from the
files' own headers, read with pydicom), a written SEG is read back by highdicom itself, and
the RTSTRUCT (pydicom's bundled ``rtstruct.dcm``) is checked against the polygons' areas and
an even-odd ray-casting point-in-polygon test written here in numpy.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import xarray as xr
from pydicom.data import get_testdata_file

import dicomxr
from dicomxr.errors import LabelError, LabelWarning

hd = pytest.importorskip("highdicom")

# the slices of the 140-slice CT the SEG fixtures cover (sorted by position, feet to head)
FIRST, LAST = 60, 80
SPHERE_RADIUS_MM = 12.0
# pydicom's rtstruct.dcm: the grid it was drawn on (its referenced images are not shipped)
RT_FRAME = "1.2.826.0.1.3680043.8.498.2010020400001.2"
RT_SERIES = "1.2.826.0.1.3680043.8.498.2010020400001.2.1.1"
RT_STUDY = "1.2.826.0.1.3680043.8.498.2010020400001.1"


# --------------------------------------------------------------------------------------
# references computed from the files' headers, without dicomxr


def _ct_headers(folder: Path) -> list[pydicom.Dataset]:
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir())]
    images = [ds for ds in headers if "ImagePositionPatient" in ds]  # not the DIRFILE
    assert len(images) == 140
    return sorted(images, key=lambda ds: float(ds.ImagePositionPatient[2]))


def _pixel_centres_mm(ds: pydicom.Dataset) -> np.ndarray:
    """(rows, cols, 3) LPS positions of a file's pixel centres (PS3.3 C.7.6.2.1.1)."""
    ipp = np.asarray(ds.ImagePositionPatient, dtype=float)
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    i = np.arange(int(ds.Rows))[:, None, None]
    j = np.arange(int(ds.Columns))[None, :, None]
    return ipp + i * dr * iop[3:] + j * dc * iop[:3]


def _reference_masks(headers: list[pydicom.Dataset]) -> dict[str, np.ndarray]:
    """SOPInstanceUID -> (rows, cols, 2): a sphere in mm and a box in pixel indices."""
    middle = headers[(FIRST + LAST) // 2]
    centre = _pixel_centres_mm(middle)[250, 260]
    out = {}
    for n, ds in enumerate(headers[FIRST:LAST]):
        sphere = np.linalg.norm(_pixel_centres_mm(ds) - centre, axis=-1) < SPHERE_RADIUS_MM
        box = np.zeros_like(sphere)
        if 3 <= n < 9:
            box[100:140, 300:360] = True
        out[str(ds.SOPInstanceUID)] = np.stack([sphere, box], axis=-1)
    return out


def _description(number: int, label: str):
    from pydicom.sr.codedict import codes

    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue,
        algorithm_type="MANUAL",
    )


def _highdicom_seg(headers, masks: dict[str, np.ndarray], labels: list[str], path: Path) -> Path:
    sources = headers[FIRST:LAST]
    pixels = np.stack([masks[str(ds.SOPInstanceUID)] for ds in sources])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # highdicom: the CT's one-part PatientName
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=pixels,
            segmentation_type="BINARY",
            segment_descriptions=[_description(n + 1, lab) for n, lab in enumerate(labels)],
            series_instance_uid=hd.UID(),
            series_number=900,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="test",
            manufacturer_model_name="test",
            software_versions="1",
            device_serial_number="1",
        )
    seg.save_as(path)
    return path


def _on_grid(image: xr.DataArray, masks: dict[str, np.ndarray]) -> np.ndarray:
    """(segment, slice, row, col) reference on the image's slices, matched by SOPInstanceUID."""
    n_seg = next(iter(masks.values())).shape[-1]
    out = np.zeros((n_seg, *image.shape), dtype=bool)
    for k, uid in enumerate(image.coords["SOPInstanceUID"].values):
        if str(uid) in masks:
            out[:, k] = np.moveaxis(masks[str(uid)], -1, 0)
    return out


# --------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def ct(philips_ct: Path) -> xr.DataArray:
    return dicomxr.open_series(philips_ct)


@pytest.fixture(scope="module")
def headers(philips_ct: Path) -> list[pydicom.Dataset]:
    return _ct_headers(philips_ct)


@pytest.fixture(scope="module")
def reference(headers) -> dict[str, np.ndarray]:
    return _reference_masks(headers)


@pytest.fixture(scope="module")
def seg_file(tmp_path_factory, headers, reference) -> Path:
    path = tmp_path_factory.mktemp("seg") / "sphere_box.dcm"
    return _highdicom_seg(headers, reference, ["sphere", "box"], path)


@pytest.fixture(scope="module")
def overlapping_seg(tmp_path_factory, headers, reference) -> tuple[Path, int]:
    masks = {
        uid: np.stack([m[..., 0], m[..., 0] | m[..., 1]], axis=-1) for uid, m in reference.items()
    }
    shared = sum(int(np.count_nonzero(m[..., 0])) for m in reference.values())
    path = tmp_path_factory.mktemp("seg") / "overlap.dcm"
    return _highdicom_seg(headers, masks, ["sphere", "sphere+box"], path), shared


def _edited(seg_file: Path, tmp_path: Path, edit) -> Path:
    ds = pydicom.dcmread(seg_file)
    edit(ds)
    out = tmp_path / "edited.dcm"
    ds.save_as(out)
    return out


# --------------------------------------------------------------------------------------
# SEG onto the image


def _no_compute(*args, **kwargs):
    raise AssertionError("the image's pixels were read: labels need only its grid")


def test_seg_lands_on_the_ct_grid_by_uid_and_geometry(ct, seg_file, reference):
    import dask

    with dask.config.set(scheduler=_no_compute):
        labels = dicomxr.open_labels(seg_file, like=ct)
    assert labels.dims == ("segment", "slice", "row", "col")
    assert labels.dtype == bool
    xr.align(ct, labels, join="exact")  # same spatial coords: no error
    assert labels.attrs["affine"] == ct.attrs["affine"]
    np.testing.assert_allclose(labels.dicom.affine, ct.dicom.affine)
    assert list(labels.segment_number.values) == [1, 2]
    assert list(labels.segment_label.values) == ["sphere", "box"]
    assert labels.attrs["ReferencedSeriesInstanceUID"] == ct.attrs["SeriesInstanceUID"]
    expected = _on_grid(ct, reference)
    assert expected.sum() > 0
    np.testing.assert_array_equal(labels.values, expected)
    # the sphere's volume is the analytic one to within a voxel shell
    voxel = float(np.prod(ct.dicom.spacing))
    volume = labels.sel(segment=1).sum().item() * voxel
    assert volume == pytest.approx(4 / 3 * np.pi * SPHERE_RADIUS_MM**3, rel=0.05)
    # the image's per-slice coords come along: masked statistics need no reindexing
    assert (labels.SOPInstanceUID == ct.SOPInstanceUID).all()


def test_seg_follows_a_cropped_strided_flipped_image(ct, seg_file, reference):
    crop = ct.isel(slice=slice(75, 55, -1), row=slice(80, 420, 3), col=slice(None, None, -2))
    labels = dicomxr.open_labels(seg_file, like=crop)
    xr.align(crop, labels, join="exact")
    full = _on_grid(ct, reference)
    np.testing.assert_array_equal(labels.values, full[:, 75:55:-1, 80:420:3, ::-2])
    np.testing.assert_allclose(labels.dicom.affine, crop.dicom.affine)


def test_seg_follows_a_transposed_image(ct, seg_file, reference):
    image = ct.isel(slice=slice(FIRST, LAST)).transpose("col", "slice", "row")
    labels = dicomxr.open_labels(seg_file, like=image)
    assert labels.dims == ("segment", "col", "slice", "row")
    full = _on_grid(ct, reference)[:, FIRST:LAST]
    np.testing.assert_array_equal(labels.transpose("segment", "slice", "row", "col").values, full)


def test_labelmap_form(ct, seg_file, reference):
    labelmap = dicomxr.open_labels(seg_file, like=ct, form="labelmap")
    assert labelmap.dims == ("slice", "row", "col")
    assert labelmap.dtype == np.uint8
    ref = _on_grid(ct, reference)
    np.testing.assert_array_equal(labelmap.values, ref[0] * 1 + ref[1] * 2)
    assert labelmap.attrs["flag_values"] == [1, 2]
    assert labelmap.attrs["flag_meanings"] == "sphere box"
    xr.align(ct, labelmap, join="exact")


def test_overlapping_segments_refuse_to_be_a_labelmap(ct, overlapping_seg):
    path, shared = overlapping_seg
    masks = dicomxr.open_labels(path, like=ct)  # as masks they are fine
    assert int((masks.sel(segment=1) & masks.sel(segment=2)).sum()) == shared
    with pytest.raises(LabelError, match=rf"segments 1 and 2 share {shared} voxels.*form='mask'"):
        dicomxr.open_labels(path, like=ct, form="labelmap")


def test_seg_of_an_absent_series(ct, seg_file, tmp_path):
    def other_series(ds):
        ds.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3.4.5"

    path = _edited(seg_file, tmp_path, other_series)
    with pytest.raises(LabelError) as err:
        dicomxr.open_labels(path, like=ct)
    message = str(err.value)
    assert "1.2.3.4.5" in message and ct.attrs["SeriesInstanceUID"] in message
    assert "check_references=False" in message
    # by geometry alone (same Frame of Reference) the labels still land where they belong
    labels = dicomxr.open_labels(path, like=ct, check_references=False)
    assert labels.sum() > 0


def test_seg_on_another_frame_of_reference(ct, seg_file, tmp_path):
    path = _edited(seg_file, tmp_path, lambda ds: setattr(ds, "FrameOfReferenceUID", "1.2.3.9"))
    with pytest.raises(
        LabelError, match=rf"Frame of Reference.*{ct.attrs['FrameOfReferenceUID']}.*1\.2\.3\.9"
    ):
        dicomxr.open_labels(path, like=ct)
    with pytest.raises(LabelError, match="Frame of Reference"):
        dicomxr.open_labels(path, like=ct, check_references=False)


def test_image_of_another_series_is_refused(seg_file, tmp_path):
    from dicomxr.phantom import write_series

    write_series(tmp_path / "phantom", np.zeros((3, 8, 8), np.int16))
    phantom = dicomxr.open_series(tmp_path / "phantom")
    with pytest.raises(LabelError, match="another Frame of Reference"):
        dicomxr.open_labels(seg_file, like=phantom)


def test_frame_referencing_another_instance(ct, seg_file, tmp_path):
    other = str(ct.SOPInstanceUID.values[0])

    def wrong_source(ds):
        item = ds.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
        item.SourceImageSequence[0].ReferencedSOPInstanceUID = other

    path = _edited(seg_file, tmp_path, wrong_source)
    with pytest.raises(
        LabelError, match=rf"frame 1 references the instance {other}.*lies on slice"
    ):
        dicomxr.open_labels(path, like=ct)


def test_frame_between_slices(ct, seg_file, tmp_path):
    def half_slice_up(ds):
        position = ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence[0]
        x, y, z = (float(v) for v in position.ImagePositionPatient)
        position.ImagePositionPatient = [x, y, z + 0.5]

    path = _edited(seg_file, tmp_path, half_slice_up)
    with pytest.raises(
        LabelError, match=r"frame 3 lies between the image's slices.*\+?-?0\.500 mm"
    ):
        dicomxr.open_labels(path, like=ct, check_references=False)


def test_frame_between_pixels(ct, seg_file, tmp_path):
    def half_pixel_right(ds):
        for item in ds.PerFrameFunctionalGroupsSequence:
            position = item.PlanePositionSequence[0]
            x, y, z = (float(v) for v in position.ImagePositionPatient)
            position.ImagePositionPatient = [x + 0.451171875 / 2, y, z]

    path = _edited(seg_file, tmp_path, half_pixel_right)
    with pytest.raises(LabelError, match="does not fall on the image's pixels"):
        dicomxr.open_labels(path, like=ct)


def test_frames_outside_a_crop_are_left_out(ct, seg_file):
    labels = dicomxr.open_labels(seg_file, like=ct.isel(slice=slice(0, FIRST + 2)))
    assert (
        labels.attrs["frames_placed"] + labels.attrs["frames_outside"]
        > labels.attrs["frames_placed"]
        > 0
    )


def test_not_a_label_file(ct, philips_ct):
    with pytest.raises(LabelError, match="neither a DICOM SEG nor an RT Structure Set"):
        dicomxr.open_labels(next(philips_ct.iterdir()), like=ct)


def test_image_without_slice_dim(ct, seg_file):
    with pytest.raises(LabelError, match=r"missing \['slice'\].*isel\(slice=\[k\]\)"):
        dicomxr.open_labels(seg_file, like=ct.isel(slice=3))


def _seg_of_kind(headers, pixels: np.ndarray, kind: str, path: Path, **kwargs) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        seg = hd.seg.Segmentation(
            source_images=headers[FIRST : FIRST + len(pixels)],
            pixel_array=pixels,
            segmentation_type=kind,
            segment_descriptions=[_description(1, "a"), _description(2, "b")],
            series_instance_uid=hd.UID(),
            series_number=901,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="test",
            manufacturer_model_name="test",
            software_versions="1",
            device_serial_number="1",
            **kwargs,
        )
    seg.save_as(path)
    return path


def test_labelmap_seg_is_read(ct, headers, tmp_path):
    # Label Map Segmentation Storage: one frame per slice holding segment numbers
    values = np.zeros((4, 512, 512), np.uint8)
    values[1:3, 10:20, 10:30] = 1
    values[2:4, 100:120, 300:330] = 2
    path = _seg_of_kind(headers, values, "LABELMAP", tmp_path / "labelmap.dcm")
    assert str(pydicom.dcmread(path).SOPClassUID) == dicomxr.labels.SEG_SOP_CLASSES[1]
    labelmap = dicomxr.open_labels(path, like=ct, form="labelmap")
    np.testing.assert_array_equal(labelmap.values[FIRST : FIRST + 4], values)
    assert not labelmap.values[:FIRST].any() and not labelmap.values[FIRST + 4 :].any()


def test_fractional_seg_is_thresholded(ct, headers, tmp_path):
    fraction = np.zeros((2, 512, 512, 2), np.float32)
    fraction[0, 50:60, 50:60, 0] = 0.3
    fraction[0, 50:60, 60:70, 0] = 0.8
    fraction[1, 200:210, 200:220, 1] = 1.0
    path = _seg_of_kind(
        headers, fraction, "FRACTIONAL", tmp_path / "fractional.dcm", max_fractional_value=200
    )
    labels = dicomxr.open_labels(path, like=ct)
    expected = np.moveaxis(fraction >= 0.5, -1, 0)
    np.testing.assert_array_equal(labels.values[:, FIRST : FIRST + 2], expected)
    strict = dicomxr.open_labels(path, like=ct, threshold=0.2)
    assert int(strict.sel(segment=1).sum()) == 200  # the 0.3 fractions count too


def test_rtstruct_contour_referencing_another_instance(tmp_path):
    image = _rt_grid(tmp_path / "ct")
    ds = _rtstruct()
    uids = [str(u) for u in image.SOPInstanceUID.values]
    contour = ds.ROIContourSequence[0].ContourSequence[0]  # z = -200: slice 1
    ref = pydicom.Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.ReferencedSOPInstanceUID = uids[1]
    contour.ContourImageSequence = [ref]
    path = tmp_path / "rt.dcm"
    ds.save_as(path, enforce_file_format=False)
    assert dicomxr.open_labels(path, like=image).sum() > 0  # the right instance: fine
    ref.ReferencedSOPInstanceUID = uids[3]
    ds.save_as(path, enforce_file_format=False)
    with pytest.raises(LabelError, match=rf"references the instance {uids[3]} but lies on slice 1"):
        dicomxr.open_labels(path, like=image)


# --------------------------------------------------------------------------------------
# writing a SEG


def test_to_seg_round_trip_and_highdicom_reads_it(ct, seg_file, tmp_path):
    part = ct.isel(slice=slice(FIRST, LAST))
    labels = dicomxr.open_labels(seg_file, like=part)
    import dask

    with dask.config.set(scheduler=_no_compute):  # the sources' headers only
        out = part.dicom.to_seg(labels, tmp_path / "copy.dcm", series_description="round trip")
    back = dicomxr.open_labels(out, like=part)
    xr.testing.assert_equal(back.drop_attrs(), labels.drop_attrs())
    assert list(back.segment_label.values) == ["sphere", "box"]
    # highdicom, reading its own way (by source instance UIDs), agrees
    seg = hd.seg.segread(out)
    assert seg.SeriesDescription == "round trip"
    assert seg.FrameOfReferenceUID == ct.attrs["FrameOfReferenceUID"]
    assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [
        ct.attrs["SeriesInstanceUID"]
    ]
    uids = [str(u) for u in part.SOPInstanceUID.values]
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[1, 2])
    np.testing.assert_array_equal(np.moveaxis(pixels, -1, 0).astype(bool), labels.values)


def test_to_seg_from_a_labelmap_and_file_safety(ct, seg_file, tmp_path):
    part = ct.isel(slice=slice(FIRST, LAST))
    labelmap = dicomxr.open_labels(seg_file, like=part, form="labelmap")
    target = tmp_path / "labelmap_seg.dcm"
    old = os.umask(0o027)
    try:
        dicomxr.labels.to_seg(part, labelmap, target)
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o640  # the user's umask, like any new file
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary left behind
    back = dicomxr.open_labels(target, like=part, form="labelmap")
    np.testing.assert_array_equal(back.values, labelmap.values)
    assert back.attrs["segment_labels"] == ["sphere", "box"]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        part.dicom.to_seg(labelmap, target)
    part.dicom.to_seg(labelmap, target, overwrite=True)


def test_to_seg_from_an_in_plane_crop_fills_the_full_frames(ct, seg_file, tmp_path, reference):
    crop = ct.isel(slice=slice(FIRST, LAST), row=slice(90, 300), col=slice(200, 400))
    labels = dicomxr.open_labels(seg_file, like=crop)
    out = crop.dicom.to_seg(labels, tmp_path / "crop.dcm")
    back = dicomxr.open_labels(out, like=ct)
    expected = _on_grid(ct, reference)
    outside = np.ones(expected.shape[1:], bool)
    outside[FIRST:LAST, 90:300, 200:400] = False
    expected[:, outside] = False
    np.testing.assert_array_equal(back.values, expected)


def test_to_seg_refuses_labels_off_the_grid(ct, seg_file, tmp_path):
    part = ct.isel(slice=slice(FIRST, LAST))
    labels = dicomxr.open_labels(seg_file, like=part)
    with pytest.raises(LabelError, match=r"not on the image's grid.*open_labels"):
        part.dicom.to_seg(labels.isel(row=slice(1, None)), tmp_path / "x.dcm")
    strided = part.isel(row=slice(None, None, 2))
    with pytest.raises(LabelError, match="does not fall on the image's pixels"):
        strided.dicom.to_seg(labels.isel(row=slice(None, None, 2)), tmp_path / "x.dcm")
    with pytest.raises(LabelError, match=r"the dims \['time'\].*labels.isel\(time=0\)"):
        part.dicom.to_seg(labels.expand_dims(time=2), tmp_path / "x.dcm")
    assert not list(tmp_path.iterdir())


def test_to_seg_of_a_4d_series_and_of_a_phantom(tmp_path, sample_dir):
    # the pCASL sample: (time, label, slice, row, col); the SEG references the first volume
    mr = dicomxr.open_series(sample_dir)
    first = mr.isel(time=0, label=0)
    mask = np.zeros((1, *first.shape), bool)
    mask[0, 10:20, 30:60, 40:50] = True
    labels = xr.DataArray(mask, dims=("segment", *first.dims), coords={"segment": [1]})
    labels = labels.assign_coords(
        {n: c.variable for n, c in first.coords.items() if n in first.dims}
    )
    out = mr.dicom.to_seg(labels, tmp_path / "mr_seg.dcm")
    back = dicomxr.open_labels(out, like=mr)
    assert back.dims == ("segment", "slice", "row", "col")
    np.testing.assert_array_equal(back.values, mask)
    seg = pydicom.dcmread(out, stop_before_pixels=True)
    refs = {
        str(i.ReferencedSOPInstanceUID)
        for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert refs == {str(u) for u in first.SOPInstanceUID.values}
    # a synthetic series without AccessionNumber or ReferringPhysicianName (Type 2 in a SEG)
    from dicomxr.phantom import write_series

    write_series(tmp_path / "phantom", np.zeros((3, 16, 16), np.int16))
    phantom = dicomxr.open_series(tmp_path / "phantom")
    out = phantom.dicom.to_seg((phantom > -5000).expand_dims(segment=[1]), tmp_path / "ph.dcm")
    assert int(dicomxr.open_labels(out, like=phantom).sum()) == 3 * 16 * 16


def test_to_seg_round_trip_on_a_tilted_ct(data_root, tmp_path):
    # Philips CT with gantry tilt: the affine is sheared (slices stacked along z, rows tilted)
    image = dicomxr.open_series(data_root / "dcm_qa_ct" / "In" / "Philips" / "S21610" / "S3010")
    assert abs(image.dicom.affine[2, 1]) > 0.05  # really sheared
    part = image.isel(slice=slice(5, 15))
    mask = np.zeros((1, *part.shape), bool)
    mask[0, 2:7, 100:200, 150:250] = True
    labels = xr.DataArray(mask, dims=("segment", *part.dims), coords={"segment": [1]})
    out = part.dicom.to_seg(labels, tmp_path / "tilt.dcm")
    back = dicomxr.open_labels(out, like=image)  # onto the whole series
    expected = np.zeros((1, *image.shape), bool)
    expected[:, 5:15] = mask
    np.testing.assert_array_equal(back.values, expected)
    # highdicom places the frames by their source instances: the same slices
    seg = hd.seg.segread(out)
    uids = [str(u) for u in part.SOPInstanceUID.values]
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[1])
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), mask[0])


def test_to_seg_renumbers_with_a_warning(ct, seg_file, tmp_path):
    part = ct.isel(slice=slice(FIRST, LAST))
    labels = dicomxr.open_labels(seg_file, like=part).assign_coords(segment=[3, 7])
    with pytest.warns(LabelWarning, match=r"segments \[3, 7\] are written as \[1, 2\]"):
        out = part.dicom.to_seg(labels, tmp_path / "renumbered.dcm")
    back = dicomxr.open_labels(out, like=part)
    np.testing.assert_array_equal(back.values, labels.values)


# --------------------------------------------------------------------------------------
# RTSTRUCT


def _rtstruct() -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True)


def _rt_grid(folder: Path, *, z0: float = -210.0, frame: str = RT_FRAME) -> xr.DataArray:
    """The images rtstruct.dcm was drawn on, rebuilt: 2 mm pixels whose centres sit on odd mm
    (never on the contours' even-mm edges), slices every 10 mm through its contours."""
    from dicomxr.phantom import write_series

    write_series(
        folder,
        np.zeros((4, 160, 210), np.int16),
        spacing=(2.0, 2.0),
        origin=(-209.0, -159.0, z0),
        slice_step=10.0,
        series_uid=RT_SERIES,
        study_uid=RT_STUDY,
        extra={"FrameOfReferenceUID": frame},
    )
    return dicomxr.open_series(folder)


def _inside(points_xy: np.ndarray, polygon_xy: np.ndarray) -> np.ndarray:
    """Even-odd ray casting (a ray towards +x), the textbook test, in numpy."""
    x, y = points_xy[:, 0:1], points_xy[:, 1:2]
    x1, y1 = polygon_xy[:, 0], polygon_xy[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    straddles = (y1 > y) != (y2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross_x = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
    return ((straddles & (x < cross_x)).sum(axis=1) % 2).astype(bool)


def _shoelace(polygon_xy: np.ndarray) -> float:
    x, y = polygon_xy[:, 0], polygon_xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def test_rtstruct_contours_fill_the_image_grid(tmp_path):
    image = _rt_grid(tmp_path / "ct")
    labels = dicomxr.open_labels(get_testdata_file("rtstruct.dcm"), like=image)
    xr.align(image, labels, join="exact")
    assert list(labels.roi_name.values) == ["patient"]
    assert list(labels.segment_number.values) == [1]
    assert labels.attrs["Modality"] == "RTSTRUCT"
    assert len(labels.attrs["skipped_rois"]) == 2  # the two isocentres are POINTs: no area
    assert all("POINT" in s for s in labels.attrs["skipped_rois"])
    patient = labels.sel(segment=1)
    per_slice = patient.sum(["row", "col"]).values
    # slice at z=-210 has no contour; the others hold a 400 x 300 mm rectangle (2 mm pixels)
    assert per_slice[0] == 0
    np.testing.assert_array_equal(per_slice[1:], [400 * 300 / 4] * 3)
    ds = _rtstruct()
    headers = sorted(
        (pydicom.dcmread(p) for p in (tmp_path / "ct").iterdir()),
        key=lambda d: float(d.ImagePositionPatient[2]),
    )
    for contour in ds.ROIContourSequence[0].ContourSequence:
        pts = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
        k = [round(float(h.ImagePositionPatient[2])) for h in headers].index(round(pts[0, 2]))
        centres = _pixel_centres_mm(headers[k])[..., :2].reshape(-1, 2)
        expected = _inside(centres, pts[:, :2]).reshape(160, 210)
        np.testing.assert_array_equal(patient.values[k], expected)
        assert expected.sum() * 4.0 == pytest.approx(_shoelace(pts[:, :2]))


def test_rtstruct_oblique_polygon_and_a_hole(tmp_path):
    image = _rt_grid(tmp_path / "ct")
    ds = _rtstruct()
    contours = ds.ROIContourSequence[0].ContourSequence
    # slice z=-200: a rotated hexagon-ish polygon; slice z=-190: the rectangle with a hole
    angles = np.deg2rad(np.arange(0, 360, 45) + 10)
    star = np.column_stack([90 * np.cos(angles), 60 * np.sin(angles) + 7.3, np.full(8, -200.0)])
    contours[0].ContourData = [f"{v:.4f}" for v in star.ravel()]
    contours[0].NumberOfContourPoints = len(star)
    hole_xy = np.array([[-50.0, -40.0], [60.0, -40.0], [60.0, 30.0], [-50.0, 30.0]])
    hole = copy.deepcopy(contours[1])
    hole.ContourData = [f"{v:.1f}" for v in np.column_stack([hole_xy, np.full(4, -190.0)]).ravel()]
    hole.NumberOfContourPoints = 4
    contours.append(hole)
    path = tmp_path / "rt.dcm"
    ds.save_as(path, enforce_file_format=False)
    patient = dicomxr.open_labels(path, like=image).sel(segment=1)
    header = pydicom.dcmread(sorted((tmp_path / "ct").iterdir())[1])
    centres = _pixel_centres_mm(header)[..., :2].reshape(-1, 2)
    expected = _inside(centres, star[:, :2]).reshape(160, 210)
    np.testing.assert_array_equal(patient.values[1], expected)
    # area agrees with the polygon's to within the pixels its boundary crosses
    perimeter = np.linalg.norm(np.diff(star[:, :2], axis=0, append=star[:1, :2]), axis=1).sum()
    assert abs(expected.sum() * 4.0 - _shoelace(star[:, :2])) < perimeter * 2.0
    # the inner contour is a hole (even-odd): 400 x 300 minus 110 x 70
    assert int(patient.values[2].sum()) * 4 == 400 * 300 - 110 * 70


def test_rtstruct_on_another_frame_of_reference(tmp_path):
    image = _rt_grid(tmp_path / "ct", frame="1.2.3.77")
    with pytest.raises(
        LabelError, match=rf"expected the image's FrameOfReferenceUID 1\.2\.3\.77, found {RT_FRAME}"
    ):
        dicomxr.open_labels(get_testdata_file("rtstruct.dcm"), like=image)


def test_rtstruct_contours_between_slices(tmp_path):
    image = _rt_grid(tmp_path / "ct", z0=-205.0)
    with pytest.raises(LabelError, match=r"contour 1 lies between the image's slices.*5\.000 mm"):
        dicomxr.open_labels(get_testdata_file("rtstruct.dcm"), like=image)


def test_rtstruct_of_another_series(tmp_path):
    from dicomxr.phantom import write_series

    write_series(
        tmp_path / "ct",
        np.zeros((4, 160, 210), np.int16),
        spacing=(2.0, 2.0),
        origin=(-209.0, -159.0, -210.0),
        slice_step=10.0,
        extra={"FrameOfReferenceUID": RT_FRAME},
    )
    image = dicomxr.open_series(tmp_path / "ct")
    with pytest.raises(LabelError, match=rf"references the series {RT_SERIES}"):
        dicomxr.open_labels(get_testdata_file("rtstruct.dcm"), like=image)
    labels = dicomxr.open_labels(
        get_testdata_file("rtstruct.dcm"), like=image, check_references=False
    )
    assert int(labels.sum()) == 3 * 400 * 300 // 4


# --------------------------------------------------------------------------------------
# the package around it


def test_open_labels_is_lazy_and_imports_no_highdicom_until_a_seg():
    import subprocess
    import sys

    code = (
        "import sys, dicomxr; dicomxr.open_labels; "
        "print('highdicom' in sys.modules, 'matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
    assert "open_labels" in dicomxr.__all__ and "LabelError" in dicomxr.__all__


def test_missing_highdicom_names_the_extra(ct, seg_file, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "highdicom", None)
    with pytest.raises(dicomxr.MissingDependencyError, match=r"dicomxr\[labels\]"):
        dicomxr.open_labels(seg_file, like=ct)
