"""Geometry of a slice stack: affine, geometry report and the policies for irregular stacks.

Conventions
-----------
- Patient coordinates are DICOM's **LPS** (x to the patient's left, y to posterior, z to
  head), in millimetres.
- The array index order is dicomxr's: ``(slice, row, col)``. ``row`` runs along the column
  direction cosine ``ImageOrientationPatient[3:]`` (spaced by ``PixelSpacing[0]``), ``col``
  along the row direction cosine ``ImageOrientationPatient[:3]`` (spaced by
  ``PixelSpacing[1]``), ``slice`` along the stack, sorted by position along the slice normal
  ``n = row_cosine x col_cosine``.
- :func:`affine_lps` maps ``(slice, row, col, 1)`` to ``(x, y, z, 1)`` in LPS.
  :func:`lps_to_ras` flips x and y; :func:`nifti_affine` also reorders the index to NIfTI's
  ``(col, row, slice)``, which is what nibabel and dcm2niix write.

The slice column of the affine is the *measured* step between slice positions, not the
normal times a nominal spacing: a CT stack acquired with gantry tilt therefore gets a
sheared affine that puts every voxel where it was acquired (dcm2niix instead resamples
such stacks and writes a ``_Tilt`` copy).

Irregular stacks
----------------
A stack is irregular when its spacing is not uniform, when slices are missing, when
positions are not on a straight line, or when several frames share a position that no
dimension (time, echo, ...) explains. The caller picks what happens
(``on_irregular``):

``"warn"`` (default)
    keep every frame, keep the true positions as the ``slice`` coordinate, issue a
    :class:`~dicomxr.errors.GeometryWarning`; the affine is then approximate (first to last
    slice) and the report says so (``affine_exact=False``).
``"raise"``
    raise :class:`~dicomxr.errors.GeometryError` naming what is wrong.
``"split"``
    cut the stack into regular blocks, each its own series plan with an exact affine.
``"fill"``
    when the only irregularity is whole missing slices, insert empty frames (``-1`` in the
    grid, NaN in the array) so that the affine is exact; otherwise like ``"warn"``.
``"ignore"``
    keep everything like ``"warn"`` but without the warning (the report still says it).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

import numpy as np

from dicomxr.errors import GeometryError
from dicomxr.options import get_options


class _HasAffine(Protocol):
    """Anything with an ``affine`` (a :class:`~dicomxr.series.SeriesPlan`, for one)."""

    affine: Any


__all__ = [
    "POLICIES",
    "GeometryReport",
    "affine_from_positions",
    "affine_lps",
    "analyze_stack",
    "lps_to_ras",
    "nifti_affine",
    "ras_to_lps",
    "regular_blocks",
    "slice_normal",
]

#: Accepted values of ``on_irregular`` (``on_duplicate`` takes all but ``"fill"``).
POLICIES = ("warn", "raise", "split", "fill", "ignore")

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_AXIS_NAMES = ("sagittal", "coronal", "axial")


def slice_normal(orientation: Any) -> np.ndarray:
    """Return the unit slice normal ``row_cosine x col_cosine`` of an ImageOrientationPatient.

    Parameters
    ----------
    orientation
        Six direction cosines (row direction, then column direction).

    Returns
    -------
    numpy.ndarray
        Shape ``(3,)``, unit length.
    """
    iop = np.asarray(orientation, dtype=np.float64).reshape(6)
    normal = np.cross(iop[:3], iop[3:])
    norm = np.linalg.norm(normal)
    if not np.isfinite(norm) or norm < 1e-6:
        raise GeometryError(
            f"ImageOrientationPatient {tuple(iop)} has parallel or zero direction cosines"
        )
    return normal / norm


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """Return the affine in RAS (x and y negated); the index order is unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> lps_to_ras(np.eye(4))[:3, :3].diagonal().tolist()
    [-1.0, -1.0, 1.0]
    """
    return _LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)


def ras_to_lps(affine: np.ndarray) -> np.ndarray:
    """Return the affine in LPS (the inverse of :func:`lps_to_ras`, which is its own inverse)."""
    return _LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)


def nifti_affine(affine: np.ndarray) -> np.ndarray:
    """Convert a dicomxr affine (LPS, index ``(slice, row, col)``) to a NIfTI sform.

    The result is RAS and maps the NIfTI index ``(i, j, k) = (col, row, slice)``: the array
    ``data.transpose(2, 1, 0)`` of a ``(slice, row, col)`` volume goes with it.

    Parameters
    ----------
    affine
        4x4 LPS affine in dicomxr index order.

    Returns
    -------
    numpy.ndarray
        4x4 RAS affine in NIfTI index order.
    """
    ras = lps_to_ras(affine)
    return ras[:, [2, 1, 0, 3]]


def affine_from_positions(
    positions: np.ndarray,
    orientation: Any,
    pixel_spacing: Any,
    *,
    slice_spacing: float | None = None,
) -> np.ndarray:
    """Build the LPS affine of a stack from its sorted slice positions.

    Parameters
    ----------
    positions
        ``(n, 3)`` ImagePositionPatient of slice ``0 .. n-1`` in array order.
    orientation
        ImageOrientationPatient (6 floats).
    pixel_spacing
        PixelSpacing ``(row spacing, column spacing)`` in mm.
    slice_spacing
        Used only for a single slice (there is no step to measure): the slice column is
        then ``normal * slice_spacing`` (1 mm when ``None``).

    Returns
    -------
    numpy.ndarray
        4x4 affine mapping ``(slice, row, col, 1)`` to LPS mm. The slice column is
        ``(positions[-1] - positions[0]) / (n - 1)``: exact for a regular stack, sheared for
        a tilted one, and a first-to-last average for an irregular one.
    """
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    iop = np.asarray(orientation, dtype=np.float64).reshape(6)
    row_sp, col_sp = (float(v) for v in np.asarray(pixel_spacing, dtype=np.float64).reshape(2))
    affine = np.eye(4)
    affine[:3, 1] = iop[3:] * row_sp
    affine[:3, 2] = iop[:3] * col_sp
    affine[:3, 3] = pos[0]
    if len(pos) > 1:
        affine[:3, 0] = (pos[-1] - pos[0]) / (len(pos) - 1)
    else:
        step = slice_spacing if slice_spacing and np.isfinite(slice_spacing) else 1.0
        affine[:3, 0] = slice_normal(iop) * step
    return affine


def affine_lps(plan: _HasAffine) -> np.ndarray:
    """Return the 4x4 LPS affine of a series plan for the index ``(slice, row, col, 1)``.

    The frame dims other than ``slice`` (time, echo, ...) do not move in space and are not
    part of the affine.

    Parameters
    ----------
    plan
        A :class:`~dicomxr.series.SeriesPlan`.

    Returns
    -------
    numpy.ndarray
        A copy of ``plan.affine``.
    """
    return np.array(plan.affine, dtype=np.float64, copy=True)


def regular_blocks(
    distances: np.ndarray, *, rtol: float | None = None, atol: float | None = None
) -> list[slice]:
    """Cut sorted slice distances into maximal runs of equal spacing.

    A block starts at the first slice not yet in a block and grows while the next step
    equals the block's first step (within tolerance). A lone slice between two runs becomes
    a block of its own.

    Parameters
    ----------
    distances
        Sorted positions along the normal (mm).
    rtol, atol
        Tolerances; default from :func:`dicomxr.get_options`.

    Returns
    -------
    list of slice
        Index ranges into ``distances``.

    Examples
    --------
    >>> regular_blocks(np.array([0.0, 4, 8, 9, 16, 23]))
    [slice(0, 3, None), slice(3, 6, None)]
    """
    rtol, atol = _tolerances(rtol, atol)
    d = np.asarray(distances, dtype=np.float64)
    n = len(d)
    blocks: list[slice] = []
    start = 0
    while start < n:
        stop = start + 1
        if stop < n:
            first = d[stop] - d[start]
            stop += 1
            while stop < n and abs((d[stop] - d[stop - 1]) - first) <= atol + rtol * abs(first):
                stop += 1
        blocks.append(slice(start, stop))
        start = stop
    return blocks


def _tolerances(rtol: float | None, atol: float | None) -> tuple[float, float]:
    opts = get_options()
    return (
        float(opts["geometry_rtol"] if rtol is None else rtol),
        float(opts["geometry_atol_mm"] if atol is None else atol),
    )


@dataclass
class GeometryReport:
    """What the slice positions of a series say about its geometry.

    All distances are millimetres, angles degrees. Build one with :func:`analyze_stack`
    (``plan_series`` does it for every plan); read it as ``plan.geometry``, print it, show
    it in a notebook, or turn it into JSON-friendly data with :meth:`to_dict`.

    Attributes
    ----------
    n_slices
        Distinct slice positions.
    orientation
        ImageOrientationPatient, or ``None`` when the frames carry no geometry.
    normal
        Unit slice normal (LPS).
    pixel_spacing
        (row spacing, column spacing).
    spacing_min, spacing_median, spacing_max
        Distance between consecutive slice positions along the normal (``None`` for one slice).
    slice_thickness
        SliceThickness as recorded.
    spacing_tag
        SpacingBetweenSlices as recorded (``None`` when absent).
    spacing_tag_agrees
        Whether that tag matches the median spacing along the normal (``None`` without a tag
        or for uneven spacing).
    step_mm
        Median distance between neighbouring slice positions along the stack direction
        (equals the spacing unless the stack is tilted).
    uniform
        All steps equal within tolerance (missing slices aside).
    missing_slices
        Estimated number of absent slices (gaps that are whole multiples of the spacing).
    gaps
        One dict per gap or uneven step: ``{"after": slice index, "step_mm": ..., "missing": n}``.
    duplicate_positions
        Frames that share a position with another frame and are not told apart by any
        dimension (time, echo, b-value, ...).
    missing_frames
        Cells of the frame grid without a frame (a volume lacking a slice the others have;
        filled slices counted too), set by :func:`~dicomxr.series.plan_series`.
    max_off_line_mm
        Largest distance of a slice position from the straight line through the first and
        last one (in-plane shifts between slices).
    positions_on_line
        ``max_off_line_mm`` is within tolerance.
    tilt_deg
        Signed angle between the stack direction (first to last position) and the slice
        normal, positive by the right-hand rule about the row direction; derived from the
        positions, so it does not depend on a vendor's sign convention. ``0`` for an
        orthogonal stack.
    tilt_tag_deg
        GantryDetectorTilt as recorded (``None`` when absent).
    tilt_tag_agrees
        Whether the tag matches ``tilt_deg`` in magnitude and sign (``None`` without a tag).
        GE and Philips record the same physical tilt with opposite signs.
    obliquity_deg
        Largest angle between an image axis (row, column, normal) and its nearest patient
        axis.
    plane
        ``"axial"``, ``"coronal"`` or ``"sagittal"`` (nearest plane of the slices).
    affine_exact
        The affine maps every slice to its true position (regular stack).
    policy
        The ``on_irregular`` policy that was applied.
    issues
        Human-readable findings, empty for a clean regular stack.
    """

    n_slices: int
    orientation: tuple[float, ...] | None = None
    normal: tuple[float, float, float] | None = None
    pixel_spacing: tuple[float, float] | None = None
    spacing_min: float | None = None
    spacing_median: float | None = None
    spacing_max: float | None = None
    slice_thickness: float | None = None
    spacing_tag: float | None = None
    spacing_tag_agrees: bool | None = None
    step_mm: float | None = None
    uniform: bool = True
    missing_slices: int = 0
    gaps: list[dict[str, Any]] = field(default_factory=list)
    duplicate_positions: int = 0
    missing_frames: int = 0
    max_off_line_mm: float = 0.0
    positions_on_line: bool = True
    tilt_deg: float = 0.0
    tilt_tag_deg: float | None = None
    tilt_tag_agrees: bool | None = None
    obliquity_deg: float = 0.0
    plane: str | None = None
    affine_exact: bool = True
    policy: str = "warn"
    issues: list[str] = field(default_factory=list)

    @property
    def regular(self) -> bool:
        """True when spacing is uniform, nothing is missing or duplicated and slices are on a line."""
        return (
            self.uniform
            and self.missing_slices == 0
            and self.duplicate_positions == 0
            and self.affine_exact
        )

    @property
    def tilted(self) -> bool:
        """True when the stack direction departs from the normal (gantry tilt, sheared affine)."""
        return abs(self.tilt_deg) > 0.01

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-friendly data (lists, floats, str, bool, None)."""
        out = asdict(self)
        for key in ("orientation", "normal", "pixel_spacing"):
            if out[key] is not None:
                out[key] = [float(v) for v in out[key]]
        out["regular"] = self.regular
        out["tilted"] = self.tilted
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GeometryReport:
        """Rebuild a report from :meth:`to_dict` data (the inverse of :meth:`to_dict`).

        Parameters
        ----------
        data
            A dict as :meth:`to_dict` returns it (for example ``json.loads`` of a
            DataArray's ``attrs["geometry"]``). The derived ``regular`` and ``tilted``
            entries and keys this version does not know are ignored.

        Returns
        -------
        GeometryReport

        Raises
        ------
        ValueError
            When ``data`` is not a mapping or lacks ``n_slices``.

        Examples
        --------
        >>> report = GeometryReport(n_slices=3, normal=(0.0, 0.0, 1.0))
        >>> GeometryReport.from_dict(report.to_dict()) == report
        True
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a geometry report is a dict, not {type(data).__name__}")
        if "n_slices" not in data:
            raise ValueError("a geometry report dict needs 'n_slices'")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("orientation", "normal", "pixel_spacing"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(float(v) for v in kwargs[key])
        for key in ("gaps", "issues"):
            if kwargs.get(key) is not None:
                kwargs[key] = list(kwargs[key])
        return cls(**kwargs)

    def _rows(self) -> list[tuple[str, str]]:
        def mm(v: float | None) -> str:
            return "-" if v is None else f"{v:.4g} mm"

        rows = [("slices", str(self.n_slices))]
        if self.orientation is None:
            rows.append(("geometry", "none (no ImagePositionPatient / ImageOrientationPatient)"))
            return rows
        if self.plane is not None:
            rows.append(("plane", f"{self.plane}, obliquity {self.obliquity_deg:.1f}°"))
        if self.pixel_spacing is not None:
            rows.append(
                ("pixel spacing", f"{self.pixel_spacing[0]:.4g} x {self.pixel_spacing[1]:.4g} mm")
            )
        if self.spacing_median is not None:
            rows.append(
                (
                    "slice spacing",
                    f"min {mm(self.spacing_min)}, median {mm(self.spacing_median)}, max {mm(self.spacing_max)}"
                    + ("" if self.uniform else "  (NOT uniform)")
                    + (
                        f"; step along the tilted stack {mm(self.step_mm)}"
                        if self.tilted and self.step_mm
                        else ""
                    ),
                )
            )
        rows.append(("slice thickness", mm(self.slice_thickness)))
        rows.append(("missing slices", str(self.missing_slices)))
        rows.append(("duplicate positions", str(self.duplicate_positions)))
        if self.missing_frames:
            rows.append(
                ("missing frames", f"{self.missing_frames} (empty cells of the frame grid)")
            )
        tilt = f"{self.tilt_deg:+.2f}° (from positions)"
        if self.tilt_tag_deg is not None:
            tilt += f", GantryDetectorTilt tag {self.tilt_tag_deg:+.2f}°"
            if self.tilt_tag_agrees is False:
                tilt += " (disagrees)"
        rows.append(("tilt", tilt))
        rows.append(("affine", "exact" if self.affine_exact else "approximate (irregular stack)"))
        rows.append(("policy", self.policy))
        return rows

    def __str__(self) -> str:
        rows = self._rows()
        width = max(len(k) for k, _ in rows)
        lines = ["GeometryReport" + ("" if self.regular else " (irregular)")]
        lines += [f"  {k:<{width}} : {v}" for k, v in rows]
        lines += [f"  ! {issue}" for issue in self.issues]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>{html.escape(v)}</td></tr>"
            for k, v in self._rows()
        )
        issues = "".join(f"<li>{html.escape(i)}</li>" for i in self.issues)
        status = "regular" if self.regular else "irregular"
        return (
            f"<div class='dicomxr-geometry'><b>GeometryReport</b> ({status})"
            f"<table>{body}</table>" + (f"<ul>{issues}</ul>" if issues else "") + "</div>"
        )


def _angle_to_nearest_axis(vec: np.ndarray) -> float:
    v = np.abs(np.asarray(vec, dtype=np.float64))
    v = v / np.linalg.norm(v)
    return math.degrees(math.acos(min(1.0, float(v.max()))))


def analyze_stack(
    positions: np.ndarray | None,
    orientation: Any,
    pixel_spacing: Any,
    *,
    slice_thickness: float | None = None,
    spacing_tag: float | None = None,
    tilt_tag: float | None = None,
    duplicate_positions: int = 0,
    policy: str = "warn",
    rtol: float | None = None,
    atol: float | None = None,
) -> GeometryReport:
    """Measure a slice stack and report what is regular and what is not.

    Parameters
    ----------
    positions
        ``(n, 3)`` distinct slice positions (LPS mm), sorted along the normal; ``None``
        when the frames carry no position.
    orientation
        ImageOrientationPatient, or ``None``.
    pixel_spacing
        PixelSpacing, or ``None``.
    slice_thickness, spacing_tag, tilt_tag
        SliceThickness, SpacingBetweenSlices, GantryDetectorTilt as recorded.
    duplicate_positions
        Frames sharing a position that no dimension explains (counted by the caller).
    policy
        The ``on_irregular`` policy that will be applied (recorded in the report).
    rtol, atol
        Tolerances; default from :func:`dicomxr.get_options`.

    Returns
    -------
    GeometryReport
    """
    rtol, atol = _tolerances(rtol, atol)
    rep = GeometryReport(
        n_slices=0 if positions is None else len(positions),
        slice_thickness=_finite(slice_thickness),
        spacing_tag=_finite(spacing_tag),
        tilt_tag_deg=_finite(tilt_tag),
        duplicate_positions=int(duplicate_positions),
        policy=policy,
    )
    if pixel_spacing is not None:
        rep.pixel_spacing = tuple(
            float(v) for v in np.asarray(pixel_spacing, dtype=float).reshape(2)
        )
    if orientation is None or positions is None:
        rep.affine_exact = False
        rep.issues.append(
            "frames carry no ImagePositionPatient/ImageOrientationPatient: no patient geometry"
        )
        return rep
    iop = np.asarray(orientation, dtype=np.float64).reshape(6)
    normal = _measure_orientation(rep, iop)
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if duplicate_positions:
        rep.issues.append(
            f"{duplicate_positions} frame(s) share a position with another frame and no dimension tells them apart"
        )
    if len(pos) < 2:
        _check_tilt_tag(rep)
        return rep
    along_normal = pos @ normal
    _measure_spacing(rep, np.diff(along_normal), rtol=rtol, atol=atol)
    off_line = _measure_line(rep, pos, along_normal, atol=atol)
    _measure_tilt(rep, pos, normal, iop)
    _check_tilt_tag(rep)
    # distance between neighbouring positions along the stack (differs from the spacing
    # along the normal when the stack is tilted)
    rep.step_mm = float(np.median(np.linalg.norm(np.diff(pos, axis=0), axis=1)))
    _check_spacing_tag(rep, atol=atol)
    rep.affine_exact = bool(rep.uniform and rep.missing_slices == 0 and not off_line)
    return rep


def _finite(v: Any) -> float | None:
    """Read a recorded number as float; ``None`` when absent, not a number or not finite."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _measure_orientation(rep: GeometryReport, iop: np.ndarray) -> np.ndarray:
    """Record the orientation, normal, plane and obliquity; return the slice normal."""
    normal = slice_normal(iop)
    rep.orientation = tuple(float(v) for v in iop)
    rep.normal = tuple(float(v) for v in normal)
    rep.obliquity_deg = round(max(_angle_to_nearest_axis(v) for v in (iop[:3], iop[3:], normal)), 6)
    rep.plane = _AXIS_NAMES[int(np.argmax(np.abs(normal)))]
    return normal


def _measure_spacing(rep: GeometryReport, steps: np.ndarray, *, rtol: float, atol: float) -> None:
    """Record the spacing along the normal, its gaps (whole missing slices) and uneven steps."""
    rep.spacing_min = float(steps.min())
    rep.spacing_median = float(np.median(steps))
    rep.spacing_max = float(steps.max())
    med = rep.spacing_median
    tol = atol + rtol * abs(med)
    uneven = np.abs(steps - med) > tol
    for i in np.flatnonzero(uneven):
        ratio = steps[i] / med if med > 0 else 0.0
        k = round(ratio)
        missing = k - 1 if k >= 2 and abs(steps[i] - k * med) <= tol * k else 0
        rep.gaps.append({"after": int(i), "step_mm": float(steps[i]), "missing": int(missing)})
    rep.missing_slices = int(sum(g["missing"] for g in rep.gaps))
    rep.uniform = not any(g["missing"] == 0 for g in rep.gaps)
    if rep.missing_slices:
        where = ", ".join(
            f"after slice {g['after']} ({g['missing']})" for g in rep.gaps if g["missing"]
        )
        rep.issues.append(
            f"{rep.missing_slices} slice(s) missing: gaps of whole multiples of the {med:.4g} mm spacing {where}"
        )
    if not rep.uniform:
        odd = [g for g in rep.gaps if g["missing"] == 0]
        shown = ", ".join(f"{g['step_mm']:.4g} mm after slice {g['after']}" for g in odd[:5])
        more = f" and {len(odd) - 5} more" if len(odd) > 5 else ""
        rep.issues.append(
            f"slice spacing is not uniform: median {med:.4g} mm, min {rep.spacing_min:.4g}, "
            f"max {rep.spacing_max:.4g} (uneven steps: {shown}{more})"
        )


def _measure_line(
    rep: GeometryReport, pos: np.ndarray, along_normal: np.ndarray, *, atol: float
) -> bool:
    """Record how far the positions stray from the line through the first and last; True if off."""
    span = pos[-1] - pos[0]
    along = along_normal - along_normal[0]
    total = along[-1]
    if total > 0:
        fitted = pos[0] + np.outer(along / total, span)
        rep.max_off_line_mm = float(np.linalg.norm(pos - fitted, axis=1).max())
    off_line = rep.max_off_line_mm > 10 * max(atol, 1e-3 * abs(rep.spacing_median or 0.0))
    rep.positions_on_line = not off_line
    if off_line:
        rep.issues.append(
            f"slice positions are not on a straight line (up to {rep.max_off_line_mm:.3g} mm off): "
            "no single affine fits every slice"
        )
    return off_line


def _measure_tilt(
    rep: GeometryReport, pos: np.ndarray, normal: np.ndarray, iop: np.ndarray
) -> None:
    """Record the tilt: the angle between the stack's direction and the slice normal."""
    span = pos[-1] - pos[0]
    direction = span / np.linalg.norm(span)
    cosang = float(np.clip(direction @ normal, -1.0, 1.0))
    angle = math.degrees(math.acos(cosang))
    sign = 1.0 if float(np.cross(normal, direction) @ iop[:3]) >= 0 else -1.0
    rep.tilt_deg = round(sign * angle, 4) if angle > 1e-4 else 0.0
    if rep.tilted:
        rep.issues.append(
            f"stack is tilted {rep.tilt_deg:+.2f}° from the slice normal (gantry tilt): "
            "the affine is sheared so that every slice keeps its acquired position"
        )


def _check_spacing_tag(rep: GeometryReport, *, atol: float) -> None:
    """Compare SpacingBetweenSlices with the spacing the positions give (uniform stacks)."""
    med = rep.spacing_median
    if rep.spacing_tag is None or not rep.uniform or med is None:
        return
    if abs(rep.spacing_tag - med) <= max(atol, 0.01 * med):
        rep.spacing_tag_agrees = True
        return
    rep.spacing_tag_agrees = False
    step = rep.step_mm or 0.0
    along = abs(rep.spacing_tag - step) <= max(atol, 0.01 * step)
    rep.issues.append(
        f"SpacingBetweenSlices tag says {rep.spacing_tag:.4g} mm, the positions {med:.4g} mm along the normal"
        + (f" ({step:.4g} mm along the tilted stack)" if along and rep.tilted else "")
    )


def _check_tilt_tag(rep: GeometryReport) -> None:
    if rep.tilt_tag_deg is None:
        return
    agrees = abs(rep.tilt_tag_deg - rep.tilt_deg) <= 0.1
    rep.tilt_tag_agrees = bool(agrees)
    if not agrees:
        if abs(abs(rep.tilt_tag_deg) - abs(rep.tilt_deg)) <= 0.1 and rep.tilt_tag_deg != 0:
            why = "same magnitude, opposite sign: vendors record the tilt with different sign conventions"
        else:
            why = "the positions are the truth, the tag is informational"
        rep.issues.append(
            f"GantryDetectorTilt tag says {rep.tilt_tag_deg:+.2f}° but the positions say {rep.tilt_deg:+.2f}° ({why})"
        )
