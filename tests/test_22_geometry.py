"""Geometry: affine, geometry report, irregular-stack policies.

Affines are checked against the slice positions written in the files (every slice must land
where its ImagePositionPatient says) and against dcm2niix's NIfTI references (corner voxels
in RAS, independent of axis order and flips).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from dicomxr import geometry, phantom
from dicomxr.errors import GeometryError, GeometryWarning
from dicomxr.geometry import GeometryReport, affine_lps, lps_to_ras, nifti_affine, ras_to_lps
from dicomxr.series import SeriesPlan, plan_series


def _quiet(cat, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeometryWarning)
        return plan_series(cat, **kwargs)


def _positions_on_grid(plan: SeriesPlan) -> tuple[np.ndarray, np.ndarray]:
    """(true ImagePositionPatient, affine @ (slice, 0, 0, 1)) for every frame of the plan."""
    ipp = plan.frames["ImagePositionPatient"].to_numpy()
    true, mapped = [], []
    for idx in np.argwhere(plan.grid >= 0):
        true.append(ipp[plan.grid[tuple(idx)]])
        mapped.append((plan.affine @ [idx[-1], 0, 0, 1])[:3])
    return np.asarray(true, dtype=float), np.asarray(mapped)


def _corners_ras(plan: SeriesPlan) -> np.ndarray:
    ns, nr, nc = plan.grid.shape[-1], plan.frame_shape[0], plan.frame_shape[1]
    ras = lps_to_ras(plan.affine)
    return np.array(
        [(ras @ [s, r, c, 1])[:3] for s in (0, ns - 1) for r in (0, nr - 1) for c in (0, nc - 1)]
    )


def _corners_nifti(path: Path) -> np.ndarray:
    nib = pytest.importorskip("nibabel")
    img = nib.load(path)
    nx, ny, nz = img.shape[:3]
    return np.array(
        [
            (img.affine @ [i, j, k, 1])[:3]
            for i in (0, nx - 1)
            for j in (0, ny - 1)
            for k in (0, nz - 1)
        ]
    )


def _same_points(a: np.ndarray, b: np.ndarray, atol: float = 1e-3) -> bool:
    return all(np.linalg.norm(b - p, axis=1).min() < atol for p in a) and len(a) == len(b)


# ---------------------------------------------------------------------------------------
# real data


def test_ge_tilt_and_spacing_change(ge_tilt_ct: Path, scanned) -> None:
    cat = scanned(str(ge_tilt_ct))
    with pytest.warns(GeometryWarning, match="not uniform") as record:
        plans = plan_series(cat)
    assert record[0].filename == __file__  # the warning points at the caller's line
    (plan,) = plans
    rep = plan.geometry
    assert rep.n_slices == 28
    assert rep.tilt_deg == pytest.approx(18.5, abs=0.01)
    assert rep.tilt_tag_deg == 18.5 and rep.tilt_tag_agrees is True
    assert rep.tilted
    assert rep.spacing_min == pytest.approx(1.081, abs=1e-3)  # the step where 4 mm turns into 7 mm
    assert rep.spacing_median == pytest.approx(4.0, abs=0.01)
    assert rep.spacing_max == pytest.approx(7.0, abs=0.01)
    assert not rep.uniform and not rep.regular and not rep.affine_exact
    assert rep.missing_slices == 0
    assert any("not uniform" in i for i in rep.issues) and any("tilted" in i for i in rep.issues)
    # the slice coordinate keeps the true positions
    steps = np.diff(plan.coords["slice"][1])
    assert steps[:13] == pytest.approx([4.0] * 13, abs=0.01) and steps[-13:] == pytest.approx(
        [7.0] * 13, abs=0.01
    )


def test_ge_policies(ge_tilt_ct: Path, scanned) -> None:
    cat = scanned(str(ge_tilt_ct))
    with pytest.raises(GeometryError, match=r"not uniform.*on_irregular='split'"):
        plan_series(cat, on_irregular="raise")
    blocks = _quiet(cat, on_irregular="split")
    assert [p.grid.shape for p in blocks] == [(14,), (14,)]
    assert [round(p.geometry.spacing_median, 2) for p in blocks] == [4.0, 7.0]
    uid = cat["SeriesInstanceUID"].iloc[0]
    assert [p.key for p in blocks] == [f"{uid}/1", f"{uid}/2"]
    for plan in blocks:
        assert plan.geometry.regular and plan.geometry.affine_exact
        assert plan.geometry.tilt_deg == pytest.approx(18.5, abs=0.01)
        assert "regular block" in plan.label
        true, mapped = _positions_on_grid(plan)
        assert np.abs(true - mapped).max() < 1e-4  # sheared affine puts every slice in place
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (kept,) = plan_series(cat, on_irregular="ignore")
    assert not kept.geometry.affine_exact and kept.geometry.policy == "ignore"


def test_philips_tilt_sign_from_positions(data_root: Path, scanned) -> None:
    """Tag +16.5 degrees, positions -16.5: the positions win, the disagreement is reported."""
    cat = scanned(str(data_root / "dcm_qa_ct" / "In" / "Philips" / "S21610" / "S3010"))
    (plan,) = _quiet(cat)
    rep = plan.geometry
    assert rep.tilt_deg == pytest.approx(-16.5, abs=0.01)
    assert rep.tilt_tag_deg == 16.5 and rep.tilt_tag_agrees is False
    assert any("opposite sign" in i for i in rep.issues)
    assert rep.regular and rep.affine_exact and rep.uniform
    # SpacingBetweenSlices (2.5) is the table step along the tilted stack, not the spacing
    assert rep.spacing_median == pytest.approx(2.5 * np.cos(np.radians(16.5)), abs=1e-3)
    assert rep.step_mm == pytest.approx(2.5) and rep.spacing_tag_agrees is False
    assert any("along the tilted stack" in i for i in rep.issues)
    true, mapped = _positions_on_grid(plan)
    assert np.abs(true - mapped).max() < 1e-4
    # the slice column is the measured step (0, 0, 2.5), not the normal times a spacing
    assert plan.affine[:3, 0] == pytest.approx([0.0, 0.0, 2.5])
    # GE and Philips: same physical tilt convention from positions, opposite tag signs
    text = str(rep)
    assert "-16.50°" in text and "disagrees" in text


def test_oblique_mr_affine(data_root: Path, scanned) -> None:
    cat = scanned(str(data_root / "dcm_qa_philips_enh" / "In" / "cl" / "1301_*.dcm"))
    (plan,) = _quiet(cat)
    rep = plan.geometry
    assert rep.plane == "sagittal" and rep.obliquity_deg > 3
    assert rep.regular and not rep.tilted
    true, mapped = _positions_on_grid(plan)
    assert np.abs(true - mapped).max() < 1e-3
    # in-plane columns: row index along the column cosine, col index along the row cosine
    iop = np.asarray(plan.attrs["ImageOrientationPatient"])
    spacing = plan.attrs["PixelSpacing"]
    assert plan.affine[:3, 1] == pytest.approx(iop[3:] * spacing[0])
    assert plan.affine[:3, 2] == pytest.approx(iop[:3] * spacing[1])
    assert np.dot(plan.affine[:3, 0], geometry.slice_normal(iop)) > 0


@pytest.mark.parametrize(
    ("folder", "pattern", "number", "ref"),
    [
        ("cl", "1903_*.dcm", 1903, "1903_WIP_SOURCE_-_3DpCASL_cl.nii.gz"),
        ("enh", "1903_*.dcm", 1903, "1903_WIP_SOURCE_-_3DpCASL_enh.nii.gz"),
        ("cl", "2001_*.dcm", 2001, "2001_WIP_fcMRI_Field_Mapping_cl_e1.nii.gz"),
        ("enh", "2001_*.dcm", 2001, "2001_WIP_fcMRI_Field_Mapping_enh_e2_ph.nii.gz"),
        ("cl", "1901_*.dcm", 1901, "1901_WIP_3DpCASL_cl.nii.gz"),
        ("enh", "1901_*.dcm", 1901, "1901_WIP_3DpCASL_enh_real.nii.gz"),
    ],
)
def test_affine_matches_dcm2niix_philips(
    folder, pattern, number, ref, data_root: Path, scanned
) -> None:
    root = data_root / "dcm_qa_philips_enh"
    plans = _quiet(scanned(str(root / "In" / folder / pattern)))
    (plan,) = [p for p in plans if p.attrs["SeriesNumber"] == number]
    assert _same_points(_corners_ras(plan), _corners_nifti(root / "Ref" / ref))


def test_affine_matches_dcm2niix_mosaic(data_root: Path, scanned) -> None:
    (plan,) = _quiet(scanned(str(data_root / "dcm_qa_ts" / "In" / "1.dcm")))
    assert plan.geometry.obliquity_deg == pytest.approx(6.2, abs=0.05)
    assert _same_points(
        _corners_ras(plan), _corners_nifti(data_root / "dcm_qa_ts" / "Ref" / "1.nii")
    )


def test_nifti_affine_matches_nibabel_orientation(data_root: Path, scanned) -> None:
    """nifti_affine: same sform as dcm2niix up to the flips dcm2niix makes (it flips rows)."""
    nib = pytest.importorskip("nibabel")
    (plan,) = _quiet(scanned(str(data_root / "dcm_qa_ts" / "In" / "1.dcm")))
    ours = nifti_affine(plan.affine)
    ref = nib.load(data_root / "dcm_qa_ts" / "Ref" / "1.nii").affine
    # column vectors agree up to sign (dcm2niix flips the row axis so that j runs anterior)
    for k in range(3):
        assert np.allclose(np.abs(ours[:3, k]), np.abs(ref[:3, k]), atol=1e-4)
    assert nib.aff2axcodes(ours)[0] == nib.aff2axcodes(ref)[0]


# ---------------------------------------------------------------------------------------
# synthetic stacks


def test_missing_slice(tmp_path: Path, scanned) -> None:
    phantom.write_series(tmp_path, phantom.phantom_volume((5, 4, 4)), slice_step=[2, 2, 4, 2])
    cat = scanned(str(tmp_path))
    with pytest.warns(GeometryWarning, match="1 slice.s. missing"):
        (plan,) = plan_series(cat)
    rep = plan.geometry
    assert rep.missing_slices == 1 and rep.gaps == [{"after": 2, "step_mm": 4.0, "missing": 1}]
    assert rep.uniform  # apart from the gap, the spacing is even
    assert not rep.regular and not rep.affine_exact
    with pytest.raises(GeometryError, match="missing"):
        plan_series(cat, on_irregular="raise")
    parts = _quiet(cat, on_irregular="split")
    assert [p.grid.shape[0] for p in parts] == [3, 2]
    for part in parts:
        true, mapped = _positions_on_grid(part)
        assert np.abs(true - mapped).max() < 1e-5


def test_fill_missing_slices(tmp_path: Path, ge_tilt_ct: Path, scanned) -> None:
    phantom.write_series(tmp_path, phantom.phantom_volume((5, 4, 4)), slice_step=[2, 2, 6, 2])
    (plan,) = _quiet(scanned(str(tmp_path)), on_irregular="fill")
    assert plan.grid.tolist() == [0, 1, 2, -1, -1, 3, 4]
    assert plan.coords["slice"][1] == pytest.approx([-50, -48, -46, -44, -42, -40, -38])
    assert np.isnan(plan.coords["position_z"][1][3:5]).all()
    rep = plan.geometry
    assert rep.missing_slices == 2 and rep.affine_exact and rep.policy == "fill"
    assert any("filled 2 missing slice" in i for i in rep.issues)
    true, mapped = _positions_on_grid(plan)
    assert np.abs(true - mapped).max() < 1e-6
    # uneven spacing cannot be filled: kept, warned
    with pytest.warns(GeometryWarning, match="not uniform"):
        (ge,) = plan_series(scanned(str(ge_tilt_ct)), on_irregular="fill")
    assert not ge.geometry.affine_exact


def test_off_line_positions(tmp_path: Path, scanned) -> None:
    pos = [(0.0, 0.0, 0.0), (0.0, 0.0, 1.0), (3.0, 0.0, 2.0), (0.0, 0.0, 3.0)]
    phantom.write_series(tmp_path, phantom.phantom_volume((4, 4, 4)), positions=pos)
    with pytest.warns(GeometryWarning, match="not on a straight line"):
        (plan,) = plan_series(scanned(str(tmp_path)))
    assert plan.geometry.max_off_line_mm > 1 and not plan.geometry.affine_exact


def test_single_slice_affine(tmp_path: Path, scanned) -> None:
    phantom.write_series(
        tmp_path,
        phantom.phantom_volume((1, 4, 6)),
        orientation=(0, 1, 0, 0, 0, -1),
        spacing=(0.7, 0.9),
    )
    (plan,) = _quiet(scanned(str(tmp_path)))
    # one slice: the slice column is the normal times SliceThickness
    normal = np.cross([0, 1, 0], [0, 0, -1])
    assert plan.affine[:3, 0] == pytest.approx(normal * 1.0)
    assert plan.affine[:3, 1] == pytest.approx([0, 0, -0.7])
    assert plan.affine[:3, 2] == pytest.approx([0, 0.9, 0])
    assert plan.geometry.spacing_median is None and plan.geometry.regular


def test_affine_lps_and_ras_helpers(tmp_path: Path, scanned) -> None:
    phantom.write_series(
        tmp_path, phantom.phantom_volume((3, 4, 5)), origin=(10.0, 20.0, 30.0), slice_step=2.0
    )
    (plan,) = _quiet(scanned(str(tmp_path)))
    aff = affine_lps(plan)
    assert aff is not plan.affine and np.array_equal(aff, plan.affine)
    assert (aff @ [2, 3, 4, 1])[:3] == pytest.approx([10 + 4 * 0.5, 20 + 3 * 0.5, 30 + 2 * 2.0])
    ras = lps_to_ras(aff)
    assert (ras @ [0, 0, 0, 1])[:3] == pytest.approx([-10.0, -20.0, 30.0])
    assert np.array_equal(ras_to_lps(ras), aff)
    nii = nifti_affine(aff)
    # NIfTI index (col, row, slice)
    assert (nii @ [4, 3, 2, 1])[:3] == pytest.approx((ras @ [2, 3, 4, 1])[:3])


def test_report_serialises_and_prints(ge_tilt_ct: Path, scanned) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        (plan,) = plan_series(scanned(str(ge_tilt_ct)))
    rep = plan.geometry
    data = rep.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["regular"] is False and data["tilted"] is True
    assert plan.attrs["geometry"] == data
    text = str(rep)
    assert (
        text.startswith("GeometryReport (irregular)")
        and "NOT uniform" in text
        and "+18.50°" in text
    )
    html = rep._repr_html_()
    assert "<table>" in html and "irregular" in html


def test_report_from_dict_inverts_to_dict(ge_tilt_ct: Path, scanned) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        (plan,) = plan_series(scanned(str(ge_tilt_ct)))
    rep = plan.geometry
    back = GeometryReport.from_dict(json.loads(json.dumps(rep.to_dict())))
    assert back == rep
    assert isinstance(back.orientation, tuple) and isinstance(back.normal, tuple)
    assert back.regular is False and back.tilted is True and back.gaps == rep.gaps
    assert back.to_dict() == rep.to_dict()
    # keys of a later version are ignored; a dict without n_slices is no report
    assert GeometryReport.from_dict({**rep.to_dict(), "new_field": 1}) == rep
    with pytest.raises(ValueError, match="n_slices"):
        GeometryReport.from_dict({"uniform": True})
    with pytest.raises(ValueError, match="dict"):
        GeometryReport.from_dict("n_slices")  # type: ignore[arg-type]


def test_report_without_positions() -> None:
    rep = geometry.analyze_stack(None, None, None)
    assert rep.n_slices == 0 and not rep.affine_exact
    assert "no patient geometry" in rep.issues[0]
    assert isinstance(rep, GeometryReport)


def test_regular_blocks() -> None:
    assert geometry.regular_blocks(np.array([0.0, 4, 8, 9, 16, 23])) == [slice(0, 3), slice(3, 6)]
    assert geometry.regular_blocks(np.arange(5.0)) == [slice(0, 5)]
    assert geometry.regular_blocks(np.array([0.0])) == [slice(0, 1)]
    assert geometry.regular_blocks(np.array([0.0, 1, 2, 4, 5, 6])) == [slice(0, 3), slice(3, 6)]


def test_degenerate_orientation() -> None:
    with pytest.raises(GeometryError, match="parallel"):
        geometry.slice_normal((1, 0, 0, 1, 0, 0))
