"""The three planes of a volume: honest names, display orientation and physical aspect.

A volume from :func:`dicomxr.open_series` has spatial dims ``(slice, row, col)`` and an
``affine`` attribute mapping the index ``(slice, row, col, 1)`` to patient coordinates (LPS,
mm). Each plane of the viewer fixes one of the three indices:

- the *native* plane fixes ``slice`` and shows ``row`` down, ``col`` across, as the file
  stores it (what every DICOM viewer shows);
- the two others fix ``row`` or ``col`` and are turned so that the head is up (superior at
  the top) and, across, patient left or posterior to the right (the radiological habit).

A plane is called axial, coronal or sagittal only when its normal lies within
:data:`NAME_TOLERANCE_DEG` of a patient axis; an oblique plane is named after the index it
fixes (``"slice"``, ``"row"``, ``"column"``) - a 20° tilted plane is not "axial".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["NAME_TOLERANCE_DEG", "Plane", "planes_from_affine"]

#: A plane is named axial/coronal/sagittal only when its normal is this close to an axis.
NAME_TOLERANCE_DEG = 10.0

SPATIAL = ("slice", "row", "col")
_FALLBACK_NAMES = {"slice": "slice", "row": "row", "col": "column"}
_AXIS_NAMES = ("sagittal", "coronal", "axial")  # normal along x (L), y (P), z (S)


@dataclass(frozen=True)
class Plane:
    """How one plane of the volume is displayed.

    Attributes
    ----------
    name
        ``"axial"``, ``"coronal"``, ``"sagittal"``, or ``"slice"``/``"row"``/``"column"``
        when the plane is oblique.
    fixed
        The spatial dim held fixed (``"slice"``, ``"row"`` or ``"col"``).
    vertical, horizontal
        The dims running down and across the displayed image.
    flip_vertical, flip_horizontal
        Whether the index runs up (right-to-left) on screen.
    spacing_vertical, spacing_horizontal
        Millimetres per index step along the displayed axes (physical aspect).
    oblique_deg
        Angle between the plane's normal and the nearest patient axis.
    """

    name: str
    fixed: str
    vertical: str
    horizontal: str
    flip_vertical: bool
    flip_horizontal: bool
    spacing_vertical: float
    spacing_horizontal: float
    oblique_deg: float

    @property
    def aspect(self) -> float:
        """Height over width of one displayed pixel (``spacing_vertical / spacing_horizontal``)."""
        return self.spacing_vertical / self.spacing_horizontal

    def orient(self, plane: np.ndarray, dims: tuple[str, str]) -> np.ndarray:
        """Turn a 2-D array with ``dims`` into display order (vertical, horizontal, ...)."""
        if dims != (self.vertical, self.horizontal):
            plane = np.swapaxes(plane, 0, 1)
        if self.flip_vertical:
            plane = plane[::-1]
        if self.flip_horizontal:
            plane = plane[:, ::-1]
        return plane

    def to_display(self, index: Mapping[str, int], sizes: Mapping[str, int]) -> tuple[int, int]:
        """Screen pixel ``(y, x)`` of a voxel index, for crosshairs."""
        y = int(index[self.vertical])
        x = int(index[self.horizontal])
        if self.flip_vertical:
            y = sizes[self.vertical] - 1 - y
        if self.flip_horizontal:
            x = sizes[self.horizontal] - 1 - x
        return y, x

    def from_display(self, y: int, x: int, sizes: Mapping[str, int]) -> dict[str, int]:
        """Voxel indices of the two in-plane dims for a screen pixel ``(y, x)`` (clamped)."""
        ny, nx = sizes[self.vertical], sizes[self.horizontal]
        y = min(max(int(y), 0), ny - 1)
        x = min(max(int(x), 0), nx - 1)
        if self.flip_vertical:
            y = ny - 1 - y
        if self.flip_horizontal:
            x = nx - 1 - x
        return {self.vertical: y, self.horizontal: x}

    def display_size(self, sizes: Mapping[str, int], max_px: int) -> tuple[int, int]:
        """(width, height) in screen pixels with the physical aspect, the longer side ``max_px``."""
        w_mm = sizes[self.horizontal] * self.spacing_horizontal
        h_mm = sizes[self.vertical] * self.spacing_vertical
        scale = max_px / max(w_mm, h_mm)
        return max(1, round(w_mm * scale)), max(1, round(h_mm * scale))


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _affine_or_default(attrs: Mapping[str, Any]) -> np.ndarray:
    affine = attrs.get("affine")
    if affine is not None:
        a = np.asarray(affine, dtype=float)
        if a.size == 16:  # nested 4x4, or flattened row by row (netCDF keeps 1-D attrs only)
            a = a.reshape(4, 4)
        if a.shape == (4, 4) and np.all(np.isfinite(a)):
            return a
    # no geometry: assume the usual axial stack with the spacing we know, and say nothing
    # about orientation (every plane will be named after its index)
    a = np.eye(4)
    ps = attrs.get("PixelSpacing")
    try:
        dr, dc = (float(x) for x in ps) if ps is not None else (1.0, 1.0)
    except (TypeError, ValueError):
        dr, dc = 1.0, 1.0
    dz = attrs.get("SpacingBetweenSlices") or attrs.get("SliceThickness") or 1.0
    try:
        dz = float(dz)
    except (TypeError, ValueError):
        dz = 1.0
    a[:3, :3] = np.diag([dz, dr, dc])
    return a


def planes_from_affine(attrs: Mapping[str, Any]) -> dict[str, Plane]:
    """Return the three planes of a volume, keyed by the dim each one holds fixed.

    Parameters
    ----------
    attrs
        The DataArray's attrs: ``affine`` (4x4, or its 16 values row by row; index
        ``(slice, row, col)`` to LPS mm). When
        it is missing, ``PixelSpacing`` and ``SliceThickness`` give the aspect and the planes
        are named ``slice``/``row``/``column``.

    Examples
    --------
    >>> import numpy as np
    >>> affine = np.eye(4)
    >>> affine[:3, :3] = [[0, 0, 0.5], [0, 0.5, 0], [2.0, 0, 0]]  # slice along z, 2 mm
    >>> planes = planes_from_affine({"affine": affine.tolist()})
    >>> [planes[d].name for d in ("slice", "row", "col")]
    ['axial', 'coronal', 'sagittal']
    >>> planes["row"].aspect  # coronal: 2 mm slices over 0.5 mm columns
    4.0
    """
    has_affine = attrs.get("affine") is not None
    a = _affine_or_default(attrs)
    axes = {d: a[:3, i] for i, d in enumerate(SPATIAL)}
    spacing = {d: float(np.linalg.norm(v)) or 1.0 for d, v in axes.items()}
    names_used: set[str] = set()
    out: dict[str, Plane] = {}
    for fixed in SPATIAL:
        in_plane = [d for d in SPATIAL if d != fixed]
        normal = _unit(np.cross(axes[in_plane[0]], axes[in_plane[1]]))
        dominant = int(np.argmax(np.abs(normal)))
        cos = float(np.clip(abs(normal[dominant]), 0.0, 1.0))
        oblique = float(np.degrees(np.arccos(cos)))
        name = _FALLBACK_NAMES[fixed]
        if has_affine and oblique <= NAME_TOLERANCE_DEG and _AXIS_NAMES[dominant] not in names_used:
            name = _AXIS_NAMES[dominant]
            names_used.add(name)
        if fixed == "slice":
            # the file's own display order
            vertical, horizontal = "row", "col"
            flip_v = flip_h = False
        else:
            vertical, horizontal, flip_v, flip_h = _orient_other(axes, in_plane, dominant)
        out[fixed] = Plane(
            name=name,
            fixed=fixed,
            vertical=vertical,
            horizontal=horizontal,
            flip_vertical=flip_v,
            flip_horizontal=flip_h,
            spacing_vertical=spacing[vertical],
            spacing_horizontal=spacing[horizontal],
            oblique_deg=oblique,
        )
    return out


def _orient_other(
    axes: Mapping[str, np.ndarray], in_plane: list[str], normal_axis: int
) -> tuple[str, str, bool, bool]:
    """Pick vertical/horizontal dims and flips so that the head is up, left/posterior right."""
    u = {d: _unit(axes[d]) for d in in_plane}
    if normal_axis == 2:
        # an axial-like plane: anterior at the top, so down the screen runs posterior (+y)
        up_axis = 1
    else:
        up_axis = 2
    vertical = max(in_plane, key=lambda d: abs(u[d][up_axis]))
    horizontal = next(d for d in in_plane if d != vertical)
    if up_axis == 2:
        # screen rows run down = toward inferior (-z): flip when the index runs superior
        flip_v = bool(u[vertical][2] > 0)
    else:
        flip_v = bool(u[vertical][1] < 0)
    h_axis = int(np.argmax(np.abs(u[horizontal])))
    # across the screen runs patient left (+x) or posterior (+y), as radiologists read
    flip_h = bool(u[horizontal][h_axis] < 0)
    return vertical, horizontal, flip_v, flip_h
