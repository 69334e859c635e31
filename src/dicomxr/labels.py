"""Labels on the image grid: DICOM SEG and RTSTRUCT read onto an image, and SEG written back.

:func:`open_labels` reads a segmentation (DICOM SEG, through highdicom) or a structure set
(RTSTRUCT, polygon contours filled on the image's pixels) into an :class:`xarray.DataArray`
that lies on the grid of the image it labels: the same ``slice``/``row``/``col`` coordinates,
the same per-slice coordinates (positions, UIDs, paths) and the same ``attrs["affine"]``, so
``xr.align(image, labels, join="exact")`` holds and every selection of the image selects the
labels with it. :func:`to_seg` (``image.dicom.to_seg(labels, path)``) writes labels back as a
DICOM SEG that references the image's instances.

Placement is by geometry *and* by UIDs
--------------------------------------
A label frame (SEG) or contour (RTSTRUCT) is placed by its patient coordinates through the
inverse of the image's affine (:func:`dicomxr.spatial.affine_of`, so a cropped, strided or
flipped image gets its labels cropped, strided or flipped alike). Before that, and against
that, the UIDs are checked:

- the label's FrameOfReferenceUID must be the image's (coordinates in another frame of
  reference mean nothing on this image);
- the series it references must be the image's series, and an instance a frame or contour
  references must be the image's instance at the slice where the geometry puts it
  (``check_references=False`` places labels made on another series of the same frame of
  reference by geometry alone);
- a frame or contour must lie on one of the image's slices, and a SEG's pixels on the image's
  pixels (same spacing, whole-pixel offset): labels between slices or pixels would need a
  resampling, which is the caller's choice, never a silent rounding.

Each failure is a :class:`~dicomxr.errors.LabelError` naming the expected and the found value.
Frames or contours outside the image (a crop) are left out.

Why matplotlib for the contours
-------------------------------
A contour is filled by testing each pixel centre with :meth:`matplotlib.path.Path.contains_points`
(even-odd rule across the contours of one ROI on one slice, so an inner contour is a hole).
matplotlib is already a core dependency and its point-in-polygon test is exactly the
definition wanted (a pixel belongs to the ROI when its centre is inside the polygon);
scikit-image's ``draw.polygon`` does the same at the cost of a new dependency, and rt-utils
pulls in OpenCV (``opencv-python``, with GUI libraries) for its rasterisation.

Two forms
---------
``form="mask"`` (default) gives one boolean mask per segment along a ``segment`` dim, with
coordinates ``segment_number``, ``segment_label`` (and ``roi_name`` for an RTSTRUCT).
``form="labelmap"`` gives one integer array holding the segment number of each voxel (0 is
background); overlapping segments cannot be a label map and raise, naming the overlaps.

Examples
--------
>>> import dicomxr
>>> image = dicomxr.open_series("ct/")  # doctest: +SKIP
>>> labels = dicomxr.open_labels("seg.dcm", like=image)  # doctest: +SKIP
>>> image.where(labels.sel(segment=1)).mean()  # doctest: +SKIP
>>> image.dicom.to_seg(labels, "copy.dcm")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from dicomxr.errors import LabelError, LabelWarning, require, user_stacklevel
from dicomxr.options import get_options

__all__ = ["RTSTRUCT_SOP_CLASS", "SEG_SOP_CLASSES", "open_labels", "to_labelmap", "to_seg"]

logger = logging.getLogger(__name__)

#: Segmentation Storage, Label Map Segmentation Storage
SEG_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")
#: RT Structure Set Storage
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"

_SPATIAL = ("slice", "row", "col")
# attrs of the image that describe its grid; copied onto the labels so they keep its geometry
_GRID_ATTRS = (
    "affine",
    "geometry",
    "FrameOfReferenceUID",
    "StudyInstanceUID",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "Rows",
    "Columns",
)

Form = Literal["mask", "labelmap"]


# --------------------------------------------------------------------------------------
# the image grid


@dataclass(frozen=True)
class _Grid:
    """The image's spatial grid, its UIDs per slice, and the tolerance to place things on it."""

    affine: np.ndarray
    inverse: np.ndarray
    shape: tuple[int, int, int]
    frame_of_reference: str | None
    series_uid: str | None
    instances: tuple[frozenset[str], ...]

    def tolerance(self, step_mm: float) -> float:
        opts = get_options()
        return float(opts["geometry_atol_mm"]) + float(opts["geometry_rtol"]) * abs(step_mm)

    def step_mm(self, axis: int) -> float:
        return float(np.linalg.norm(self.affine[:3, axis]))

    def plane(self, k: int) -> _Plane:
        origin = (self.affine @ np.array([k, 0.0, 0.0, 1.0]))[:3]
        return _Plane(origin, self.affine[:3, 1].copy(), self.affine[:3, 2].copy(), self.shape[1:])


@dataclass(frozen=True)
class _Plane:
    """A pixel grid in patient space: first pixel, mm step per row and per column, shape."""

    origin: np.ndarray
    row_step: np.ndarray
    col_step: np.ndarray
    shape: tuple[int, int]


def _grid_of(like: xr.DataArray) -> _Grid:
    from dicomxr.attrs import image_of
    from dicomxr.spatial import affine_of

    like = image_of(like)
    missing = [d for d in _SPATIAL if d not in like.dims]
    if missing:
        raise LabelError(
            f"labels need an image with the dims {_SPATIAL}; this one has {tuple(like.dims)} "
            f"(missing {missing}). Select a range rather than one index "
            "(.isel(slice=[k]) keeps the dim, .isel(slice=k) drops it)."
        )
    affine = affine_of(like)
    shape = (like.sizes["slice"], like.sizes["row"], like.sizes["col"])
    return _Grid(
        affine=affine,
        inverse=np.linalg.inv(affine),
        shape=shape,
        frame_of_reference=_str_or_none(like.attrs.get("FrameOfReferenceUID")),
        series_uid=_str_or_none(like.attrs.get("SeriesInstanceUID")),
        instances=_instances_by_slice(like),
    )


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _instances_by_slice(like: xr.DataArray) -> tuple[frozenset[str], ...]:
    """Return the SOPInstanceUIDs of each slice (several when the image has time, echo, ... dims)."""
    n = like.sizes["slice"]
    if "SOPInstanceUID" not in like.coords:
        return tuple(frozenset() for _ in range(n))
    coord = like.coords["SOPInstanceUID"]
    if "slice" not in coord.dims:
        return tuple(frozenset({str(v) for v in np.ravel(coord.values)}) for _ in range(n))
    values = np.asarray(coord.transpose("slice", ...).values).reshape(n, -1)
    return tuple(frozenset(str(v) for v in row) for row in values)


def _slice_index(grid: _Grid, point: np.ndarray, what: str) -> int | None:
    """Return the image slice a point lies on; None when outside the image; raises between slices."""
    index = (grid.inverse @ np.append(np.asarray(point, dtype=np.float64), 1.0))[0]
    nearest = round(float(index))
    step = grid.step_mm(0)
    if abs(index - nearest) * step > grid.tolerance(step):
        raise LabelError(
            f"{what} lies between the image's slices: at slice index {index:.3f} "
            f"({(index - nearest) * step:+.3f} mm from slice {nearest}; the slices are "
            f"{step:.4g} mm apart). The labels were drawn on another grid: open the series "
            "they were made on, or resample the image onto the labels' slices first."
        )
    if not 0 <= nearest < grid.shape[0]:
        return None
    return nearest


def _onto_plane(
    values: np.ndarray, src: _Plane, dst: _Plane, tol_mm: float, what: str
) -> np.ndarray:
    """Copy a 2D array from the pixel grid ``src`` onto ``dst``, pixel for pixel.

    Both grids must lie in one plane and the pixels of ``dst`` must fall on pixels of
    ``src`` (any whole-pixel offset, stride, flip or transpose); ``dst`` pixels outside
    ``src`` are 0. Anything else would need an interpolation, and raises.
    """
    row_mm, col_mm = float(np.linalg.norm(src.row_step)), float(np.linalg.norm(src.col_step))
    normal = np.cross(src.col_step / col_mm, src.row_step / row_mm)
    offset = dst.origin - src.origin
    height, width = dst.shape
    tilt = max(abs(dst.row_step @ normal) * height, abs(dst.col_step @ normal) * width)
    if abs(offset @ normal) > tol_mm or tilt > tol_mm:
        raise LabelError(
            f"{what} is not in the plane of the image's slice ({abs(offset @ normal):.3f} mm "
            f"off it, tilted by up to {tilt:.3f} mm across the image): the orientations "
            "differ. Resample one onto the other's grid first."
        )
    basis = np.stack([src.row_step / row_mm**2, src.col_step / col_mm**2])
    coef = basis @ np.column_stack(
        [offset, dst.row_step, dst.col_step]
    )  # [[r0, ar, br], [c0, ...]]
    whole = np.round(coef)
    off_mm = np.abs(coef - whole) * np.array([[row_mm], [col_mm]])
    reach = np.array([1.0, max(height - 1, 1), max(width - 1, 1)])
    singular = round(abs(float(np.linalg.det(whole[:, 1:])))) == 0  # image pixels would collide
    if np.any(off_mm * reach > tol_mm) or singular:
        raise LabelError(
            f"{what} does not fall on the image's pixels: one image pixel is "
            f"{coef[:, 1:].round(4).tolist()} label pixels per (row, col) step and the first "
            f"one is at label pixel {coef[:, 0].round(3).tolist()}; a whole-pixel match is "
            f"needed (label spacing {row_mm:.4g} x {col_mm:.4g} mm, image "
            f"{float(np.linalg.norm(dst.row_step)):.4g} x {float(np.linalg.norm(dst.col_step)):.4g} "
            "mm). Resample the labels onto the image grid first."
        )
    w = whole.astype(np.int64)
    i = np.arange(height)[:, None]
    j = np.arange(width)[None, :]
    r = w[0, 0] + w[0, 1] * i + w[0, 2] * j
    c = w[1, 0] + w[1, 1] * i + w[1, 2] * j
    inside = (r >= 0) & (r < src.shape[0]) & (c >= 0) & (c < src.shape[1])
    out = np.zeros(dst.shape, dtype=values.dtype)
    out[inside] = values[r[inside], c[inside]]
    return out


# --------------------------------------------------------------------------------------
# UID checks


def _check_frame_of_reference(grid: _Grid, found: Sequence[str], what: str) -> None:
    found = [f for f in dict.fromkeys(found) if f]
    if not found:
        raise LabelError(f"{what} has no FrameOfReferenceUID: where its labels lie is unknown")
    if grid.frame_of_reference is None:
        raise LabelError(
            "the image has no FrameOfReferenceUID attr (dropped attrs?): labels cannot be "
            "checked against it. Copy the attrs back (labels need image.attrs as opened)."
        )
    if grid.frame_of_reference not in found:
        raise LabelError(
            f"{what} is on another Frame of Reference: expected the image's "
            f"FrameOfReferenceUID {grid.frame_of_reference}, found {', '.join(found)}. Its "
            "coordinates mean nothing on this image: open the series it was made on."
        )


def _check_series(grid: _Grid, found: Sequence[str], what: str, check: bool) -> None:
    found = [f for f in dict.fromkeys(found) if f]
    if not check or not found:
        if not found:
            logger.info("%s references no series; placed by geometry alone", what)
        return
    if grid.series_uid not in found:
        raise LabelError(
            f"{what} references the series {', '.join(found)}, not the image's series "
            f"{grid.series_uid}: the series it was made on is absent here. Open that series "
            f"(dicomxr.open_series(folder, series={found[0]!r})), or pass "
            "check_references=False to place the labels by geometry alone (same Frame of "
            "Reference)."
        )


def _check_instance(grid: _Grid, k: int, refs: Sequence[str], what: str, check: bool) -> None:
    if not check or not refs or not grid.instances[k]:
        return
    if not set(refs) & grid.instances[k]:
        raise LabelError(
            f"{what} references the instance {', '.join(refs)} but lies on slice {k} of the "
            f"image, whose instance is {', '.join(sorted(grid.instances[k]))}: the labels "
            "were made on other images. Open those, or pass check_references=False to place "
            "the labels by geometry alone."
        )


# --------------------------------------------------------------------------------------
# DICOM SEG


def _functional(frame_item: Any, shared: Any, sequence: str) -> Any | None:
    """Return the first item of a functional group, per-frame first, then shared."""
    for group in (frame_item, shared):
        if group is not None and sequence in group and len(group[sequence].value):
            return group[sequence].value[0]
    return None


def _seg_referenced_series(seg: Any) -> list[str]:
    found = [str(s.SeriesInstanceUID) for s in seg.get("ReferencedSeriesSequence", [])]
    for study in seg.get("StudiesContainingOtherReferencedInstancesSequence", []):
        found += [str(s.SeriesInstanceUID) for s in study.get("ReferencedSeriesSequence", [])]
    return found


def _frame_references(frame_item: Any) -> list[str]:
    refs = []
    for derivation in frame_item.get("DerivationImageSequence", []) if frame_item else []:
        for source in derivation.get("SourceImageSequence", []):
            refs.append(str(source.ReferencedSOPInstanceUID))
    return refs


def _read_seg(
    ds: Any, grid: _Grid, *, check_references: bool, threshold: float, what: str
) -> tuple[np.ndarray, list[int], list[str], dict[str, Any]]:
    """Masks ``(segment, slice, row, col)``, segment numbers and labels of a DICOM SEG."""
    hd = require("highdicom", extra="labels", purpose="Reading a DICOM SEG")
    seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
    _check_frame_of_reference(grid, [str(seg.get("FrameOfReferenceUID", ""))], what)
    _check_series(grid, _seg_referenced_series(seg), what, check_references)
    kind = str(seg.SegmentationType)
    # a LABELMAP SEG may describe its background as segment 0: not a segment of the image
    segments = [s for s in seg.SegmentSequence if int(s.SegmentNumber) > 0]
    numbers = [int(s.SegmentNumber) for s in segments]
    labels = [str(s.get("SegmentLabel", f"Segment {s.SegmentNumber}")) for s in segments]
    scale = float(seg.get("MaximumFractionalValue", 1)) if kind == "FRACTIONAL" else 1.0
    masks = np.zeros((len(numbers), *grid.shape), dtype=bool)
    shared = (
        seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else None
    )
    per_frame = seg.get("PerFrameFunctionalGroupsSequence", [])
    n_frames = int(seg.get("NumberOfFrames", 1))
    placed = 0
    for f in range(n_frames):
        item = per_frame[f] if f < len(per_frame) else None
        at = f"{what}, frame {f + 1}"
        src = _seg_plane(seg, item, shared, at)
        k = _slice_index(grid, src.origin, at)
        if k is None:
            continue
        _check_instance(grid, k, _frame_references(item), at, check_references)
        frame = np.asarray(seg.get_stored_frame(f + 1))
        on_image = _onto_plane(frame, src, grid.plane(k), grid.tolerance(grid.step_mm(1)), at)
        if kind == "LABELMAP":
            for s, number in enumerate(numbers):
                masks[s, k] |= on_image == number
        else:
            ident = _functional(item, shared, "SegmentIdentificationSequence")
            number = int(ident.ReferencedSegmentNumber)
            hit = on_image / scale >= threshold if kind == "FRACTIONAL" else on_image > 0
            masks[numbers.index(number), k] |= hit
        placed += 1
    info = {
        "Modality": "SEG",
        "SegmentationType": kind,
        "SOPInstanceUID": str(seg.SOPInstanceUID),
        "SeriesInstanceUID": str(seg.SeriesInstanceUID),
        "frames_placed": placed,
        "frames_outside": n_frames - placed,
    }
    return masks, numbers, labels, info


def _seg_plane(seg: Any, item: Any, shared: Any, what: str) -> _Plane:
    position = _functional(item, shared, "PlanePositionSequence")
    orientation = _functional(item, shared, "PlaneOrientationSequence")
    measures = _functional(item, shared, "PixelMeasuresSequence")
    if position is None or orientation is None or measures is None:
        raise LabelError(
            f"{what} has no plane position, orientation or pixel spacing (a SEG of slide "
            "or non-patient images?): it cannot be placed on the image by geometry"
        )
    iop = np.asarray(orientation.ImageOrientationPatient, dtype=np.float64)
    spacing = np.asarray(measures.PixelSpacing, dtype=np.float64)
    return _Plane(
        np.asarray(position.ImagePositionPatient, dtype=np.float64),
        iop[3:] * spacing[0],
        iop[:3] * spacing[1],
        (int(seg.Rows), int(seg.Columns)),
    )


# --------------------------------------------------------------------------------------
# RTSTRUCT


def _read_rtstruct(
    ds: Any, grid: _Grid, *, check_references: bool, what: str
) -> tuple[np.ndarray, list[int], list[str], dict[str, Any]]:
    """Masks ``(segment, slice, row, col)``, ROI numbers and names of an RTSTRUCT."""
    rois = {int(r.ROINumber): r for r in ds.get("StructureSetROISequence", [])}
    frames = [str(f.FrameOfReferenceUID) for f in ds.get("ReferencedFrameOfReferenceSequence", [])]
    frames += [str(r.get("ReferencedFrameOfReferenceUID", "")) for r in rois.values()]
    _check_frame_of_reference(grid, frames, what)
    series = [
        str(s.SeriesInstanceUID)
        for f in ds.get("ReferencedFrameOfReferenceSequence", [])
        for study in f.get("RTReferencedStudySequence", [])
        for s in study.get("RTReferencedSeriesSequence", [])
    ]
    _check_series(grid, series, what, check_references)
    numbers: list[int] = []
    names: list[str] = []
    masks: list[np.ndarray] = []
    skipped: list[str] = []
    for roi_contour in ds.get("ROIContourSequence", []):
        number = int(roi_contour.ReferencedROINumber)
        roi = rois.get(number)
        name = str(roi.get("ROIName", f"ROI {number}")) if roi is not None else f"ROI {number}"
        if roi is not None and roi.get("ReferencedFrameOfReferenceUID"):
            _check_frame_of_reference(
                grid, [str(roi.ReferencedFrameOfReferenceUID)], f"{what}, ROI {name!r}"
            )
        contours = [
            c
            for c in roi_contour.get("ContourSequence", [])
            if c.ContourGeometricType == "CLOSED_PLANAR"
        ]
        if not contours:
            kinds = sorted(
                {str(c.ContourGeometricType) for c in roi_contour.get("ContourSequence", [])}
            )
            skipped.append(
                f"ROI {number} {name!r}: {'/'.join(kinds) or 'no'} contours, no area to fill"
            )
            continue
        mask = np.zeros(grid.shape, dtype=bool)
        for c, contour in enumerate(contours):
            at = f"{what}, ROI {name!r} contour {c + 1}"
            _fill_contour(mask, contour, grid, check_references, at)
        numbers.append(number)
        names.append(name)
        masks.append(mask)
    if skipped:
        logger.info("%s: ROIs left out: %s", what, "; ".join(skipped))
    stacked = np.stack(masks) if masks else np.zeros((0, *grid.shape), dtype=bool)
    info = {
        "Modality": "RTSTRUCT",
        "SOPInstanceUID": str(ds.get("SOPInstanceUID", "")),
        "SeriesInstanceUID": str(ds.get("SeriesInstanceUID", "")),
        "skipped_rois": skipped,
    }
    return stacked, numbers, names, info


def _fill_contour(mask: np.ndarray, contour: Any, grid: _Grid, check: bool, what: str) -> None:
    """XOR the pixels whose centres lie inside one closed planar contour into ``mask``."""
    from matplotlib.path import Path as PolygonPath

    points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
    index = (grid.inverse @ np.column_stack([points, np.ones(len(points))]).T)[:3].T
    step = grid.step_mm(0)
    spread = float(np.ptp(index[:, 0])) * step
    if spread > grid.tolerance(step):
        raise LabelError(
            f"{what} is not parallel to the image's slices (its points spread {spread:.3f} mm "
            "along the slice normal): resample the image onto the contours' planes first"
        )
    k = _slice_index(grid, points.mean(axis=0), what)
    if k is None:
        return
    refs = [str(r.ReferencedSOPInstanceUID) for r in contour.get("ContourImageSequence", [])]
    _check_instance(grid, k, refs, what, check)
    rows, cols = index[:, 1], index[:, 2]
    n_rows, n_cols = grid.shape[1:]
    r0, r1 = max(int(np.ceil(rows.min())), 0), min(int(np.floor(rows.max())), n_rows - 1)
    c0, c1 = max(int(np.ceil(cols.min())), 0), min(int(np.floor(cols.max())), n_cols - 1)
    if r1 < r0 or c1 < c0:
        return
    ii, jj = np.mgrid[r0 : r1 + 1, c0 : c1 + 1]
    inside = PolygonPath(np.column_stack([rows, cols]), closed=False).contains_points(
        np.column_stack([ii.ravel(), jj.ravel()])
    )
    mask[k, r0 : r1 + 1, c0 : c1 + 1] ^= inside.reshape(ii.shape)


# --------------------------------------------------------------------------------------
# the DataArray


def _label_array(
    masks: np.ndarray,
    numbers: list[int],
    names: list[str],
    like: xr.DataArray,
    info: dict[str, Any],
    *,
    roi_names: bool,
) -> xr.DataArray:
    """Wrap masks ``(segment, slice, row, col)`` on ``like``'s grid, coords and affine."""
    from dicomxr.attrs import encode_attrs

    coords: dict[str, Any] = {
        name: coord.variable
        for name, coord in like.coords.items()
        if set(coord.dims) <= set(_SPATIAL)
    }
    coords["segment"] = ("segment", np.asarray(numbers, dtype=np.int64))
    coords["segment_number"] = ("segment", np.asarray(numbers, dtype=np.int64))
    coords["segment_label"] = ("segment", np.asarray(names, dtype=str))
    if roi_names:
        coords["roi_name"] = ("segment", np.asarray(names, dtype=str))
    attrs = {key: like.attrs[key] for key in _GRID_ATTRS if key in like.attrs}
    attrs["ReferencedSeriesInstanceUID"] = like.attrs.get("SeriesInstanceUID", "")
    attrs.update(info)
    out = xr.DataArray(
        masks, dims=("segment", *_SPATIAL), coords=coords, attrs=encode_attrs(attrs), name="labels"
    )
    order = [d for d in like.dims if d in _SPATIAL]
    return out.transpose("segment", *order)


def to_labelmap(masks: xr.DataArray) -> xr.DataArray:
    """One integer array from boolean masks along ``segment``: each voxel's segment number.

    0 is background. A voxel in two segments has no single number: overlaps raise rather
    than let one segment silently overwrite another.

    Parameters
    ----------
    masks
        Boolean masks with a ``segment`` dim whose coordinate holds the segment numbers
        (as :func:`open_labels` makes them).

    Returns
    -------
    xarray.DataArray
        ``uint8`` (``uint16`` beyond 255 segments) without the ``segment`` dim; attrs
        ``flag_values`` / ``flag_meanings`` (CF conventions), ``segment_numbers`` and
        ``segment_labels`` say which number is which segment.

    Raises
    ------
    LabelError
        When segments overlap; the message names the pairs and how many voxels they share.
    """
    if "segment" not in masks.dims:
        raise LabelError(f"expected masks with a 'segment' dim, got dims {masks.dims}")
    numbers = [int(n) for n in masks["segment"].values]
    if any(n <= 0 for n in numbers) or len(set(numbers)) != len(numbers):
        raise LabelError(
            f"a label map needs distinct positive segment numbers, got {numbers}: renumber "
            "with masks.assign_coords(segment=range(1, n + 1))"
        )
    data = np.asarray(masks.transpose("segment", ...).values, dtype=bool)
    overlaps = _overlaps(data, numbers)
    if overlaps:
        raise LabelError(
            "segments overlap, so they cannot be one label map (a voxel holds one number): "
            + "; ".join(f"segments {a} and {b} share {n} voxels" for a, b, n in overlaps)
            + ". Keep the masks (form='mask'), or pick segments that do not overlap "
            "(masks.sel(segment=[...]))."
        )
    dtype = np.uint8 if max(numbers, default=0) <= 255 else np.uint16
    values = np.zeros(data.shape[1:], dtype=dtype)
    for s, number in enumerate(numbers):
        values[data[s]] = number
    labels = _segment_labels(masks)
    out = xr.DataArray(
        values,
        dims=[d for d in masks.dims if d != "segment"],
        coords={n: c.variable for n, c in masks.coords.items() if "segment" not in c.dims},
        attrs=dict(masks.attrs),
        name=masks.name,
    )
    out.attrs.update(
        flag_values=numbers,
        flag_meanings=" ".join(
            label.replace(" ", "_") or f"segment_{n}"
            for n, label in zip(numbers, labels, strict=True)
        ),
        segment_numbers=numbers,
        segment_labels=labels,
    )
    return out


def _segment_labels(masks: xr.DataArray) -> list[str]:
    if "segment_label" in masks.coords:
        return [str(v) for v in masks.coords["segment_label"].values]
    return [f"Segment {int(n)}" for n in masks["segment"].values]


def _overlaps(data: np.ndarray, numbers: list[int]) -> list[tuple[int, int, int]]:
    if data.shape[0] < 2 or not (data.sum(axis=0, dtype=np.int64) > 1).any():
        return []
    found = []
    for a in range(len(numbers)):
        for b in range(a + 1, len(numbers)):
            shared = int(np.count_nonzero(data[a] & data[b]))
            if shared:
                found.append((numbers[a], numbers[b], shared))
    return found


# --------------------------------------------------------------------------------------
# public reader


def open_labels(
    path: str | os.PathLike[str],
    *,
    like: xr.DataArray,
    form: Form = "mask",
    check_references: bool = True,
    threshold: float = 0.5,
) -> xr.DataArray:
    """Read a DICOM SEG or RTSTRUCT onto the grid of the image it labels.

    Parameters
    ----------
    path
        A DICOM SEG (Segmentation or Label Map Segmentation Storage) or RT Structure Set file.
    like
        The image the labels belong to, from :func:`dicomxr.open_series` (any crop, stride
        or flip of it): the labels come back on its grid, with its spatial coordinates and
        ``attrs["affine"]``.
    form
        ``"mask"``: booleans ``(segment, slice, row, col)``, one mask per segment.
        ``"labelmap"``: one integer array ``(slice, row, col)`` of segment numbers
        (:func:`to_labelmap`; overlapping segments raise).
    check_references
        Check that the labels reference the image's series and, frame by frame, the
        image's instance where the geometry puts them (default). ``False`` places labels
        made on another series of the same Frame of Reference by geometry alone.
    threshold
        FRACTIONAL SEG only: a pixel belongs to a segment when its fraction is at least this.

    Returns
    -------
    xarray.DataArray
        Named ``labels``; coords ``segment`` (the segment or ROI number), ``segment_number``,
        ``segment_label`` (+ ``roi_name`` for an RTSTRUCT) and the image's spatial coords;
        attrs: the image's grid attrs (``affine``, ``FrameOfReferenceUID``, ...), the label
        object's ``Modality``, ``SOPInstanceUID``, ``SeriesInstanceUID``,
        ``ReferencedSeriesInstanceUID`` (the image's), and for an RTSTRUCT ``skipped_rois``
        (ROIs of points or open curves, which have no area).

    Raises
    ------
    LabelError
        Another Frame of Reference, a referenced series or instance that is not the
        image's, frames or contours between the image's slices or pixels, a file that is
        neither SEG nor RTSTRUCT, overlapping segments for ``form="labelmap"``.

    Notes
    -----
    The labels are read whole into memory (numpy; a SEG's frames are bit-packed and small
    next to the image) and the image's pixels are never read: only its coordinates, attrs
    and affine are used.

    Examples
    --------
    >>> labels = dicomxr.open_labels("seg.dcm", like=image)  # doctest: +SKIP
    >>> xr.align(image, labels, join="exact")  # doctest: +SKIP
    >>> image.where(labels.sel(segment=1)).mean().item()  # doctest: +SKIP
    """
    import pydicom

    from dicomxr.attrs import image_of

    if form not in ("mask", "labelmap"):
        raise ValueError(f"form must be 'mask' or 'labelmap', got {form!r}")
    like = image_of(like)
    grid = _grid_of(like)
    path = Path(path)
    ds = pydicom.dcmread(path, force=True)
    sop_class = str(ds.get("SOPClassUID", ""))
    what = f"{path.name}"
    if sop_class in SEG_SOP_CLASSES:
        masks, numbers, names, info = _read_seg(
            ds, grid, check_references=check_references, threshold=threshold, what=f"the SEG {what}"
        )
    elif sop_class == RTSTRUCT_SOP_CLASS:
        masks, numbers, names, info = _read_rtstruct(
            ds, grid, check_references=check_references, what=f"the RTSTRUCT {what}"
        )
    else:
        raise LabelError(
            f"{path}: SOP class {sop_class or 'missing'} (Modality {ds.get('Modality', '?')}) is "
            "neither a DICOM SEG nor an RT Structure Set; open images with dicomxr.open_series"
        )
    info["label_file"] = str(path)
    labels = _label_array(
        masks, numbers, names, like, info, roi_names=info["Modality"] == "RTSTRUCT"
    )
    return to_labelmap(labels) if form == "labelmap" else labels


# --------------------------------------------------------------------------------------
# writer


def _masks_of(labels: xr.DataArray) -> xr.DataArray:
    """Boolean masks with a ``segment`` dim, from either form."""
    if "segment" in labels.dims:
        if labels.dtype != bool:
            raise LabelError(
                f"labels with a 'segment' dim must be boolean masks, got {labels.dtype}: "
                "pass labels > 0.5 (or another threshold) for probabilities"
            )
        return labels
    if labels.dtype.kind not in "iub":
        raise LabelError(
            f"a label map must hold integer segment numbers, got {labels.dtype}; pass boolean "
            "masks with a 'segment' dim for anything else"
        )
    values = np.asarray(labels.values)
    numbers = [int(n) for n in np.unique(values) if n != 0]
    if any(n < 0 for n in numbers):
        raise LabelError(f"a label map holds segment numbers >= 0 (0 background), found {numbers}")
    names = labels.attrs.get("segment_labels")
    listed = [int(n) for n in labels.attrs.get("segment_numbers", [])]
    by_number = dict(zip(listed, names, strict=False)) if names is not None else {}
    masks = xr.concat([labels == n for n in numbers], dim="segment") if numbers else None
    if masks is None:
        raise LabelError("the label map is empty (all 0): there is no segment to write")
    return masks.assign_coords(
        segment=numbers,
        segment_label=("segment", [str(by_number.get(n, f"Segment {n}")) for n in numbers]),
    )


def _source_datasets(image: xr.DataArray) -> list[Any]:
    """Read the image's source instances, one per slice, headers only (highdicom needs no pixels)."""
    import pydicom

    if "path" not in image.coords:
        raise LabelError(
            "the image has no 'path' coordinate: a SEG must reference the source files. "
            "Write from the image as dicomxr.open_series made it."
        )
    paths = image.coords["path"]
    if "slice" not in paths.dims:
        raise LabelError(
            "the image's slices share one file (enhanced multi-frame): writing a SEG of "
            "multi-frame sources is not supported yet; convert the series to single frames"
        )
    paths = paths.isel({d: 0 for d in paths.dims if d != "slice"})
    names = [str(p) for p in paths.values]
    if len(set(names)) != len(names):
        raise LabelError(
            "several slices of the image come from one file (enhanced multi-frame): writing a "
            "SEG of multi-frame sources is not supported yet"
        )
    return [_with_type2(pydicom.dcmread(p, stop_before_pixels=True)) for p in names]


# patient and study attributes a SEG must carry (Type 2: present, possibly empty)
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def _with_type2(ds: Any) -> Any:
    """Give a source header the Type 2 attributes it lacks, empty, as DICOM allows."""
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def _source_plane(ds: Any) -> _Plane:
    iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    spacing = np.asarray(ds.PixelSpacing, dtype=np.float64)
    return _Plane(
        np.asarray(ds.ImagePositionPatient, dtype=np.float64),
        iop[3:] * spacing[0],
        iop[:3] * spacing[1],
        (int(ds.Rows), int(ds.Columns)),
    )


def _segment_numbers_for_seg(numbers: list[int]) -> list[int]:
    """Segment numbers a SEG can hold (1..n in order); warns when they change."""
    wanted = list(range(1, len(numbers) + 1))
    if numbers != wanted:
        warnings.warn(
            f"a DICOM SEG numbers its segments 1..n in order: segments {numbers} are written "
            f"as {wanted} (their labels are kept)",
            LabelWarning,
            stacklevel=user_stacklevel(),
        )
    return wanted


def _write_atomic(dataset: Any, path: Path) -> None:
    """Write to a temporary file in the destination folder, then rename it into place."""
    from dicomxr._files import atomic_path

    with atomic_path(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)


def to_seg(
    image: xr.DataArray,
    labels: xr.DataArray,
    path: str | os.PathLike[str],
    *,
    segment_labels: Sequence[str] | None = None,
    segment_descriptions: Sequence[Any] | None = None,
    series_description: str = "dicomxr labels",
    series_number: int | None = None,
    content_label: str = "LABELS",
    overwrite: bool = False,
) -> Path:
    """Write labels on an image's grid as a DICOM SEG (BINARY) referencing the image.

    The SEG is made by highdicom from the image's own files (``image.coords["path"]``,
    headers only), so it references the image's study, series, Frame of Reference and,
    frame by frame, the source instances. Empty frames are left out. Patient and study
    attributes of Type 2 that the sources lack (synthetic series) are written empty.

    Parameters
    ----------
    image
        The image from :func:`dicomxr.open_series` (single-frame files; a crop is fine:
        the labels are placed in the full frames of the source files).
    labels
        Aligned with ``image`` (``xr.align(image, labels, join="exact")``): boolean masks
        with a ``segment`` dim, or an integer label map (0 background).
    path
        The file to write (written to a temporary name in the same folder, then renamed).
    segment_labels
        One label per segment; default the ``segment_label`` coordinate, else
        ``"Segment <n>"``.
    segment_descriptions
        Full :class:`highdicom.seg.SegmentDescription` objects (numbered 1..n), for coded
        categories and types; default "Tissue" for both.
    series_description, series_number, content_label
        Of the new SEG series (``series_number`` default: the image's + 1000).
    overwrite
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    LabelError
        Labels not on the image's grid, an empty label map, multi-frame sources.
    FileExistsError
        When ``path`` exists and ``overwrite`` is False.

    Examples
    --------
    >>> image.dicom.to_seg(labels, "tumour_seg.dcm")  # doctest: +SKIP
    """
    from dicomxr.attrs import image_of

    hd = require("highdicom", extra="labels", purpose="Writing a DICOM SEG")
    image = image_of(image)
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    try:
        xr.align(image, labels, join="exact", copy=False)
    except ValueError as exc:
        raise LabelError(
            f"the labels are not on the image's grid ({exc}). Read them with "
            "dicomxr.open_labels(path, like=image), or select the image as the labels were."
        ) from None
    _check_label_dims(labels)
    masks = _masks_of(labels).transpose("segment", *_SPATIAL)
    grid = _grid_of(image)
    if masks.shape[1:] != grid.shape:
        raise LabelError(f"labels have shape {masks.shape[1:]}, the image {grid.shape}")
    sources = _source_datasets(image)
    numbers = [int(n) for n in masks["segment"].values]
    names = list(segment_labels) if segment_labels is not None else _segment_labels(masks)
    if len(names) != len(numbers):
        raise LabelError(f"{len(names)} segment_labels for {len(numbers)} segments")
    seg_numbers = _segment_numbers_for_seg(numbers)
    if segment_descriptions is None:
        segment_descriptions = [
            _description(hd, n, name) for n, name in zip(seg_numbers, names, strict=True)
        ]
    pixels = _source_frames(np.asarray(masks.values, dtype=bool), grid, sources)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=list(segment_descriptions),
        series_instance_uid=hd.UID(),
        series_number=series_number if series_number is not None else _series_number(image),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="dicomxr",
        manufacturer_model_name="dicomxr",
        software_versions=_version(),
        device_serial_number="0",
        content_label=content_label,
        series_description=series_description,
    )
    _write_atomic(seg, path)
    return path


def _check_label_dims(labels: xr.DataArray) -> None:
    missing = [d for d in _SPATIAL if d not in labels.dims]
    if missing:
        raise LabelError(
            f"labels need the dims {_SPATIAL}; these have {tuple(labels.dims)} (missing "
            f"{missing}): keep the dims when selecting (.isel(slice=[k]), not .isel(slice=k))"
        )
    extra = [d for d in labels.dims if d not in (*_SPATIAL, "segment")]
    if extra:
        raise LabelError(
            f"labels have the dims {extra} besides {_SPATIAL} and 'segment': a SEG holds one "
            f"volume; select one first (labels.isel({extra[0]}=0))"
        )


def _source_frames(masks: np.ndarray, grid: _Grid, sources: list[Any]) -> np.ndarray:
    """``(source, rows, cols, segment)`` masks in the full frames of the source files."""
    first = _source_plane(sources[0])
    out = np.zeros((len(sources), *first.shape, masks.shape[0]), dtype=bool)
    tol = grid.tolerance(grid.step_mm(1))
    for k, ds in enumerate(sources):
        dst = _source_plane(ds)
        src = grid.plane(k)
        for s in range(masks.shape[0]):
            if masks[s, k].any():
                out[k, ..., s] = _onto_plane(masks[s, k], src, dst, tol, f"labels slice {k}")
    return out


def _description(hd: Any, number: int, label: str) -> Any:
    from pydicom.sr.codedict import codes

    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )


def _series_number(image: xr.DataArray) -> int:
    try:
        return int(image.attrs.get("SeriesNumber")) + 1000
    except (TypeError, ValueError):
        return 1000


def _version() -> str:
    from dicomxr._version import __version__

    return str(__version__)
