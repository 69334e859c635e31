"""Frame layer: ``dicomxr.frames.expand``.

Enhanced multi-frame and MOSAIC expansions are checked against independent readers:
pydicom reading the functional groups itself, the classic export of the same acquisition,
nibabel's MOSAIC wrapper and dcm2niix's NIfTI of the same file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from dicomxr import frames, phantom
from dicomxr.geometry import lps_to_ras


@pytest.fixture(scope="module")
def enh(data_root: Path, scanned) -> pd.DataFrame:
    return scanned(str(data_root / "dcm_qa_philips_enh" / "In" / "enh"))


@pytest.fixture(scope="module")
def enh_frames(enh: pd.DataFrame) -> pd.DataFrame:
    return frames.expand(enh)


def _rows_of(df: pd.DataFrame, name: str) -> pd.DataFrame:
    return df[df["path"].str.endswith(name)]


def test_classic_files_keep_one_row_each(tmp_path: Path, scanned) -> None:
    vol = phantom.phantom_volume((4, 8, 10))
    phantom.write_series(tmp_path, vol)
    cat = scanned(str(tmp_path))
    out = frames.expand(cat)
    assert len(out) == len(cat) == 4
    assert list(out.columns[: len(cat.columns)]) == list(cat.columns)
    assert set(frames.FRAME_COLUMNS) <= set(out.columns)
    assert (out["frame"] == 0).all() and (out["tile"] == -1).all()
    assert out["path"].tolist() == cat["path"].tolist()
    assert out["ImagePositionPatient"].tolist() == cat["ImagePositionPatient"].tolist()
    # the catalog itself is not modified
    assert "frame" not in cat.columns


def test_empty_catalog(scanned, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not dicom")
    cat = scanned(str(tmp_path))
    out = frames.expand(cat)
    assert len(out) == 0 and set(frames.FRAME_COLUMNS) <= set(out.columns)


def test_enhanced_frames_match_functional_groups(enh_frames: pd.DataFrame, data_root: Path) -> None:
    path = data_root / "dcm_qa_philips_enh" / "In" / "enh" / "1903_WIP_SOURCE_-_3DpCASL.dcm"
    rows = _rows_of(enh_frames, path.name)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    per_frame = ds.PerFrameFunctionalGroupsSequence
    assert len(rows) == len(per_frame) == 240
    assert rows["frame"].tolist() == list(range(240))
    for k in (0, 1, 57, 120, 239):
        item = per_frame[k]
        want = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert rows["ImagePositionPatient"].iloc[k] == pytest.approx(want)
        fc = item.FrameContentSequence[0]
        assert rows["TemporalPositionIndex"].iloc[k] == fc.TemporalPositionIndex
        assert rows["InStackPositionNumber"].iloc[k] == fc.InStackPositionNumber
        assert rows["DimensionIndexValues"].iloc[k] == tuple(fc.DimensionIndexValues)
        assert rows["RescaleSlope"].iloc[k] == pytest.approx(
            float(item.PixelValueTransformationSequence[0].RescaleSlope)
        )
    # the Philips private per-frame item: classic InstanceNumber and ASL label type
    assert rows["InstanceNumber"].is_unique
    assert sorted(rows["InstanceNumber"]) == list(range(1, 241))
    assert rows["LabelType"].value_counts().to_dict() == {"CONTROL": 120, "LABEL": 120}
    assert set(rows["ComplexImageComponent"]) == {"MAGNITUDE"}
    assert set(rows["FrameLaterality"]) == {"U"}  # FrameAnatomySequence, shared group


def test_enhanced_equals_classic_export(enh_frames: pd.DataFrame, data_root: Path, scanned) -> None:
    """The enhanced file and the classic files of pCASL 1903 describe the same 240 frames."""
    cl = scanned(str(data_root / "dcm_qa_philips_enh" / "In" / "cl" / "1903_*.dcm"))
    labels = frames.read_label_type(cl["path"].tolist())
    classic = {
        (int(n), tuple(np.round(p, 3)), lab)
        for n, p, lab in zip(cl["InstanceNumber"], cl["ImagePositionPatient"], labels, strict=True)
    }
    rows = _rows_of(enh_frames, "1903_WIP_SOURCE_-_3DpCASL.dcm")
    enhanced = {
        (int(n), tuple(np.round(p, 3)), lab)
        for n, p, lab in zip(
            rows["InstanceNumber"], rows["ImagePositionPatient"], rows["LabelType"], strict=True
        )
    }
    assert len(classic) == 240
    assert enhanced == classic


def test_enhanced_per_frame_rescale_and_echo(enh_frames: pd.DataFrame) -> None:
    rows = _rows_of(enh_frames, "2001_WIP_fcMRI_Field_Mapping_e2_phMag.dcm")
    assert len(rows) == 212
    pairs = rows.groupby("ComplexImageComponent")[["RescaleSlope", "RescaleIntercept"]].agg(set)
    assert pairs.loc["MAGNITUDE", "RescaleIntercept"] == {0.0}
    assert pairs.loc["PHASE", "RescaleIntercept"] == {-3142.0}
    (slope,) = pairs.loc["PHASE", "RescaleSlope"]
    assert slope == pytest.approx(1.53455433455433)
    assert sorted(set(rows["EchoTime"])) == [2.3, 4.6]
    assert sorted(set(rows["EchoNumbers"])) == [1, 2]
    assert rows.groupby(["EchoNumbers", "ComplexImageComponent"]).size().tolist() == [53] * 4


def test_raw_data_objects_stay_single_rows(enh: pd.DataFrame, enh_frames: pd.DataFrame) -> None:
    raw = enh_frames[enh_frames["path"].str.endswith("_Raw.dcm")]
    assert len(raw) == enh["path"].str.endswith("_Raw.dcm").sum() == 8
    assert not raw["has_pixels"].any()


def test_enhanced_ct_rows_and_flipped_orientation(data_root: Path, scanned) -> None:
    path = (
        data_root
        / "dicomParser"
        / "testImages"
        / "encapsulated"
        / "multi-frame"
        / "CT0012.explicit_little_endian.dcm"
    )
    out = frames.expand(scanned(str(path)))
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert len(out) == int(ds.NumberOfFrames) == 2
    for k, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        pos = (
            item.get("PlanePositionSequence")
            or ds.SharedFunctionalGroupsSequence[0].PlanePositionSequence
        )
        assert out["ImagePositionPatient"].iloc[k] == pytest.approx(
            [float(v) for v in pos[0].ImagePositionPatient]
        )
    iop = out["ImageOrientationPatient"].iloc[0]
    shared = ds.SharedFunctionalGroupsSequence[0]
    want = (
        shared.get("PlaneOrientationSequence")
        or ds.PerFrameFunctionalGroupsSequence[0].PlaneOrientationSequence
    )[0].ImageOrientationPatient
    assert iop == pytest.approx([float(v) for v in want])


def test_unreadable_enhanced_file_is_reported_not_fatal(enh: pd.DataFrame, tmp_path: Path) -> None:
    bad = tmp_path / "gone.dcm"
    bad.write_bytes(b"\0" * 64)
    cat = enh[enh["path"].str.endswith("1903_WIP_SOURCE_-_3DpCASL.dcm")].copy()
    cat["path"] = str(bad)
    out = frames.expand(cat)
    assert len(out) == 240  # one row per frame, file-level values
    assert out.attrs["frame_errors"][0]["path"] == str(bad)
    assert "functional groups unreadable" in out.attrs["frame_errors"][0]["reason"]


@pytest.fixture(scope="module")
def mosaic(data_root: Path, scanned) -> pd.DataFrame:
    return frames.expand(scanned(str(data_root / "dcm_qa_ts" / "In" / "1.dcm")))


def test_mosaic_tiles(mosaic: pd.DataFrame) -> None:
    assert len(mosaic) == 35
    assert mosaic["tile"].tolist() == list(range(35))
    # one stored frame: `frame` is the frame within the file, the tile is in `tile`
    assert mosaic["frame"].tolist() == [0] * 35
    assert set(mosaic["Rows"]) == set(mosaic["tile_rows"]) == {64}
    assert set(mosaic["Columns"]) == set(mosaic["tile_cols"]) == {64}
    assert set(mosaic["mosaic_rows"]) == {384}


def test_mosaic_first_tile_matches_nibabel(mosaic: pd.DataFrame, data_root: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nibabel.nicom import dicomwrappers

        wrapper = dicomwrappers.wrapper_from_data(
            pydicom.dcmread(data_root / "dcm_qa_ts" / "In" / "1.dcm")
        )
        assert wrapper.is_mosaic
        first = np.asarray(wrapper.image_position, dtype=float)
    assert np.allclose(mosaic["ImagePositionPatient"].iloc[0], first, atol=1e-4)


def test_mosaic_tile_positions_match_dcm2niix(mosaic: pd.DataFrame, data_root: Path) -> None:
    """Every tile's corner voxel lies on a corner column of dcm2niix's NIfTI of the same file."""
    nib = pytest.importorskip("nibabel")
    img = nib.load(data_root / "dcm_qa_ts" / "Ref" / "1.nii")
    nx, ny, nz = img.shape[:3]
    assert nz == len(mosaic)
    corners = np.array(
        [img.affine @ [i, j, k, 1] for i in (0, nx - 1) for j in (0, ny - 1) for k in range(nz)]
    )[:, :3]
    for pos in mosaic["ImagePositionPatient"]:
        ras = (lps_to_ras(np.eye(4)) @ [*pos, 1])[:3]
        assert np.linalg.norm(corners - ras, axis=1).min() < 1e-3


def test_component_from_image_type() -> None:
    assert (
        frames.component_from_image_type(("ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"))
        == "MAGNITUDE"
    )
    assert frames.component_from_image_type(("ORIGINAL", "PRIMARY", "P", "ND")) == "PHASE"
    assert (
        frames.component_from_image_type(("ORIGINAL", "PRIMARY", "PHASE MAP", "P", "FFE"))
        == "PHASE"
    )
    assert (
        frames.component_from_image_type(("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"))
        == "MAGNITUDE"
    )
    assert frames.component_from_image_type(("DERIVED", "SECONDARY", "REAL")) == "REAL"
    assert frames.component_from_image_type(("ORIGINAL", "PRIMARY", "AXIAL")) is None
    assert frames.component_from_image_type(None) is None


def test_rt_dose_frames_positioned_by_grid_frame_offsets(scanned) -> None:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("rtdose.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    out = frames.expand(scanned(str(path)))
    assert len(out) == int(ds.NumberOfFrames)
    origin = np.array([float(v) for v in ds.ImagePositionPatient])
    for k, offset in enumerate(ds.GridFrameOffsetVector):
        # axial dose grid: the offsets run along +z from the first frame
        assert out["ImagePositionPatient"].iloc[k] == pytest.approx(
            origin + np.array([0.0, 0.0, float(offset)])
        )


@pytest.mark.parametrize(
    "values",
    [
        pd.array(["a", None, "b"], dtype="str"),
        pd.array(["a", None, "b"], dtype="string"),
        pd.array([1, None, 3], dtype="Int64"),
        pd.array([True, None, False], dtype="boolean"),
        np.array([(1.0, 2.0), None, np.nan, "x"], dtype=object),
        np.array([1.5, np.nan]),
        np.array([], dtype=object),
    ],
    ids=["str", "string", "Int64", "boolean", "object", "float", "empty"],
)
def test_object_values_equal_pandas_conversion(values) -> None:
    # the reference: pandas' own conversion (numpy's cast for an array of numbers)
    if isinstance(values, np.ndarray) and values.dtype != object:
        expected = values.astype(object)
    else:
        expected = pd.Series(values).to_numpy(dtype=object, na_value=None)
    got = frames.object_values(values)
    assert got.dtype == object and len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        same = g == e or (g is None and e is None) or (g != g and e != e)  # NaN is NaN
        assert type(g) is type(e) and same, (g, e)
    assert got is not values  # a fresh array: callers may write into it
