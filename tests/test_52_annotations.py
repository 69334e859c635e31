"""Pictures a clinician reads (issue 11, item 9): orientation letters, slice numbers and
positions in mm, an optional colour bar - on ``.dicom.plot``, the static montage and the viewer.

The expected letters come from the files' ImageOrientationPatient (the nearest patient axis of
the row and column direction cosines), not from the code under test.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import dicomxr
from dicomxr.viewer.annotate import edge_letters, index_label, patient_letter

OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}


def _letter(v) -> str:
    """Nearest LPS axis of a direction cosine, written out independently of dicomxr."""
    axis = int(np.argmax(np.abs(v)))
    return ("LPS" if v[axis] > 0 else "RAI")[axis]


def _drawn(ax) -> dict[str, str]:
    """The orientation letters drawn on an Axes, by edge."""
    prefix = "dicomxr-orientation-"
    return {
        t.get_gid()[len(prefix) :]: t.get_text()
        for t in ax.texts
        if (t.get_gid() or "").startswith(prefix)
    }


@pytest.fixture(scope="module")
def ct(philips_ct: Path):
    return dicomxr.open_series(philips_ct)


@pytest.fixture(scope="module")
def ct_expected(ct) -> dict[str, str]:
    iop = np.asarray(ct.attrs["ImageOrientationPatient"], dtype=float)
    right, bottom = _letter(iop[:3]), _letter(iop[3:])  # columns run along iop[:3]
    return {"left": OPPOSITE[right], "right": right, "top": OPPOSITE[bottom], "bottom": bottom}


def test_patient_letters_of_lps_axes() -> None:
    assert [patient_letter(v) for v in np.eye(3)] == ["L", "P", "S"]
    assert [patient_letter(-v) for v in np.eye(3)] == ["R", "A", "I"]
    assert patient_letter([0.3, -0.9, 0.1]) == "A"  # oblique: the nearest axis


def test_philips_ct_axial_letters(ct, ct_expected) -> None:
    assert ct_expected == {
        "left": "R",
        "right": "L",
        "top": "A",
        "bottom": "P",
    }  # axial, IOP 1 0 0 0 1 0
    fig = ct.dicom.plot(slice=70)
    assert _drawn(fig.axes[0]) == ct_expected
    tiles = dicomxr.viewer.montage(ct, n=3).figure.axes
    assert [_drawn(ax) for ax in tiles] == [ct_expected] * 3


def test_letters_follow_a_reorientation(ct) -> None:
    ras = ct.dicom.reorient("RAS")  # columns now run to the patient's right, rows to anterior
    expected = {"left": "L", "right": "R", "top": "P", "bottom": "A"}
    assert _drawn(ras.dicom.plot(slice=70).axes[0]) == expected
    assert _drawn(dicomxr.viewer.montage(ras, n=1).figure.axes[0]) == expected
    flipped = ct.isel(col=slice(None, None, -1))  # a flip is exact through affine_of
    assert _drawn(flipped.dicom.plot(slice=70).axes[0])["right"] == "R"


def test_letters_of_reformatted_planes(ct) -> None:
    coronal = dicomxr.viewer.montage(ct, n=1, plane="coronal").figure.axes[0]
    sagittal = dicomxr.viewer.montage(ct, n=1, plane="sagittal").figure.axes[0]
    assert _drawn(coronal) == {"left": "R", "right": "L", "top": "S", "bottom": "I"}
    assert _drawn(sagittal) == {"left": "A", "right": "P", "top": "S", "bottom": "I"}


def test_letters_can_be_left_out(ct) -> None:
    assert _drawn(ct.dicom.plot(slice=1, letters=False).axes[0]) == {}
    assert _drawn(dicomxr.viewer.montage(ct, n=1, letters=False).figure.axes[0]) == {}


def test_edge_letters_flip_flags() -> None:
    axial = np.eye(4)
    axial[:3, :3] = [[0, 0, 0.5], [0, 0.5, 0], [1.0, 0, 0]]  # slices to S, rows to P, cols to L
    assert edge_letters(axial, 1, 2) == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    flipped = edge_letters(axial, 1, 2, flip_vertical=True, flip_horizontal=True)
    assert flipped == {"left": "L", "right": "R", "top": "P", "bottom": "A"}


def test_titles_count_from_zero_with_mm(ct) -> None:
    n = ct.sizes["slice"]
    mm = float(ct["slice"].values[70])
    assert ct.dicom.plot(slice=70).axes[0].get_title().endswith(f"slice 70/{n - 1}  {mm:.1f} mm")
    fig = ct.dicom.plot(montage=3)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0] == f"slice 0/{n - 1}  {float(ct['slice'].values[0]):.1f} mm"
    assert titles[-1].startswith(f"slice {n - 1}/{n - 1}")
    m = dicomxr.viewer.montage(ct, indices=[0, 70])
    assert [ax.get_title() for ax in m.figure.axes] == [
        f"axial 0/{n - 1}  {float(ct['slice'].values[0]):.1f} mm",
        f"axial 70/{n - 1}  {mm:.1f} mm",
    ]
    assert index_label("slice", 0, 1) == "slice 0/0"


def test_viewer_counts_from_zero(ct) -> None:
    v = dicomxr.view(ct)
    n = ct.sizes["slice"]
    slider = v._sliders["slice"]
    assert (slider.min, slider.max) == (0, n - 1)
    slider.value = 12
    assert v.position["slice"] == 12
    assert f"slice 12/{n - 1}" in v._slice_info.value


def test_optional_colorbar(ct) -> None:
    plain = dicomxr.viewer.montage(ct, n=2)
    with_bar = dicomxr.viewer.montage(ct, n=2, colorbar=True)
    assert len(with_bar.figure.axes) == len(plain.figure.axes) + 1
    bar = with_bar.figure.axes[-1]
    low, high = sorted(bar.get_ylim())
    w = with_bar.window
    assert (low, high) == pytest.approx((w.center - w.width / 2, w.center + w.width / 2))
    assert len(ct.dicom.plot(slice=3, colorbar=False).axes) == 1
    assert len(ct.dicom.plot(slice=3).axes) == 2  # one slice: a colour bar by default
    montage = ct.dicom.plot(montage=4)
    assert len(ct.dicom.plot(montage=4, colorbar=True).axes) == len(montage.axes) + 1
