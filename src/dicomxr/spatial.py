"""Geometry that follows the data: the affine of any selection, derived from coordinates.

A stored transform goes stale the moment a user crops, strides or flips an array (rioxarray
learnt this and rebuilds its transform from the ``x``/``y`` coordinates). dicomxr does the
same: every spatial dim carries an index coordinate, and the affine is derived from those
coordinates whenever it is asked for, so a crop, a stride, a reversal, a single row, a
``sel`` by millimetres, ``where``, ``pad`` or a concatenation of selections can never leave a
wrong affine behind. Where an operation destroys the geometry (a reduction over ``row``, an
unevenly spaced fancy index) :func:`affine_of` raises :class:`~dicomxr.errors.GeometryError`
naming the reason.

The coordinates
---------------
``slice``
    Position of each slice along the slice normal ``n = col_axis x row_axis``, in mm
    (``n . p`` with ``p`` the slice's first stored pixel, ImagePositionPatient).
``row``
    Distance in mm from the slice's first stored pixel along the column direction
    (ImageOrientationPatient[3:]): ``i * PixelSpacing[0]`` for the stored row ``i``.
``col``
    The same along the row direction (ImageOrientationPatient[:3]): ``j * PixelSpacing[1]``.
``position_x``, ``position_y``, ``position_z``
    The first stored pixel of each slice (LPS mm); 0-d when constant along the stack.

``attrs["affine"]`` is the affine of the *reference grid* these coordinates are measured on
(the grid the series was opened or last resampled on): it supplies the directions and, when
the positions are not coordinates, the origin. :func:`affine_of` never reads the origin and
spacing of a selection from it.

The affine maps the index ``(slice, row, col, 1)`` - in that order of the *named* dims,
whatever the order of the array's dims - to patient LPS millimetres.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import xarray as xr

from dicomxr.attrs import affine_from_attr, image_of
from dicomxr.errors import GeometryError
from dicomxr.options import get_options

__all__ = [
    "POSITION_COORDS",
    "SPATIAL_DIMS",
    "affine_of",
    "attrs_with_affine",
    "grid_coords",
    "on_grid",
    "position_residual_mm",
    "reference_affine",
    "spacing_of",
]

#: the spatial dims of a dicomxr image, in the index order of its affine
SPATIAL_DIMS = ("slice", "row", "col")
#: per-slice coordinates holding the first stored pixel of each slice (LPS mm)
POSITION_COORDS = ("position_x", "position_y", "position_z")


# --------------------------------------------------------------------------------------
# the reference grid


def reference_affine(da: xr.DataArray | xr.Dataset) -> np.ndarray:
    """Return ``attrs["affine"]``: the affine of the grid the coordinates are measured on.

    Parameters
    ----------
    da
        A DataArray made by dicomxr (or a Dataset with an ``image`` variable).

    Returns
    -------
    numpy.ndarray
        4x4 float64.

    Raises
    ------
    GeometryError
        When there is no ``affine`` attribute (attrs dropped, or not a dicomxr array).
    """
    da = image_of(da)
    if "affine" not in da.attrs:
        raise GeometryError(
            "this DataArray has no 'affine' attribute: it was not opened by dicomxr, or an "
            "operation dropped its attrs (keep them with xarray.set_options(keep_attrs=True), "
            "or copy them back: result.attrs = original.attrs)"
        )
    try:
        return affine_from_attr(da.attrs["affine"])
    except ValueError as exc:
        raise GeometryError(str(exc)) from None


def _unit(vector: np.ndarray, what: str) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm == 0:
        raise GeometryError(f"attrs['affine'] has a zero or non-finite {what} column")
    return vector / norm


def _tolerance(step_mm: float) -> float:
    opts = get_options()
    return float(opts["geometry_atol_mm"]) + float(opts["geometry_rtol"]) * abs(step_mm)


# --------------------------------------------------------------------------------------
# fitting an evenly spaced axis to coordinate values


def _fit_axis(
    values: np.ndarray, default_step: np.ndarray | float, dim: str
) -> tuple[np.ndarray, np.ndarray, float]:
    """Fit ``values[p] = start + step * p`` (values scalars or vectors) over the finite entries.

    Returns ``(start, step, residual)``, the residual being the largest distance (same units
    as the values) between a value and the fitted line. NaN entries (``pad`` fills new index
    values with NaN) are left out; one finite entry takes ``default_step``.
    """
    vals = np.asarray(values, dtype=np.float64)
    flat = vals.reshape(len(vals), -1)
    finite = np.all(np.isfinite(flat), axis=1)
    where = np.flatnonzero(finite)
    if where.size == 0:
        raise GeometryError(
            f"the {dim!r} coordinate holds no finite value: where these {dim}s lie is unknown"
        )
    first, last = where[0], where[-1]
    if first == last:
        step = np.asarray(default_step, dtype=np.float64).reshape(flat.shape[1])
    else:
        step = (flat[last] - flat[first]) / (last - first)
    start = flat[first] - step * first
    if not np.any(np.abs(step) > 0) and first != last:
        raise GeometryError(
            f"the {dim!r} coordinate repeats one value: {dim}s stacked at one place have no "
            "affine (a concatenation of the same selection?)"
        )
    fitted = start + np.outer(np.arange(len(flat)), step)
    residual = np.linalg.norm((flat - fitted)[finite], axis=1)
    return start, step, float(residual.max()) if residual.size else 0.0


def _uneven(dim: str, values: np.ndarray, residual: float) -> GeometryError:
    steps = np.diff(np.asarray(values, dtype=np.float64).reshape(len(values), -1), axis=0)
    sizes = np.linalg.norm(steps, axis=1) if steps.size else np.zeros(0)
    seen = f" (steps from {sizes.min():.4g} to {sizes.max():.4g} mm)" if sizes.size else ""
    return GeometryError(
        f"the {dim!r} coordinate is not evenly spaced{seen}, {residual:.3g} mm off a regular "
        f"grid: one affine cannot place these {dim}s. An unevenly spaced fancy index or a "
        f"concatenation with a gap does this; select an evenly spaced range "
        f"(.isel({dim}=slice(start, stop, step))), or resample (.dicom.resample)."
    )


# --------------------------------------------------------------------------------------
# the three axes


def _coord_1d(da: xr.DataArray, name: str, dim: str) -> np.ndarray | None:
    """Return a coordinate's values along ``dim`` (first along other dims), or None if absent."""
    if name not in da.coords:
        return None
    coord = da.coords[name]
    coord = coord.isel({d: 0 for d in coord.dims if d != dim})
    values = np.asarray(coord.values, dtype=np.float64)
    if values.ndim == 0:
        values = np.broadcast_to(values, (da.sizes.get(dim, 1),)).copy()
    return values


def _in_plane_axis(da: xr.DataArray, dim: str, column: np.ndarray) -> tuple[float, float]:
    """``(start, step)`` of ``row`` or ``col`` in reference voxels (whole where they are)."""
    spacing = float(np.linalg.norm(column))
    values = _coord_1d(da, dim, dim)
    if values is None:
        values = _assumed_in_plane(da, dim, spacing)
    start, step, residual = _fit_axis(values / spacing, 1.0, dim)
    if residual * spacing > _tolerance(float(step[0]) * spacing):
        raise _uneven(dim, values, residual * spacing)
    return _snap(float(start[0])), _snap(float(step[0]))


def _snap(index: float) -> float:
    """Return a reference index that is whole to rounding as the whole number it is."""
    nearest = round(index)
    return float(nearest) if abs(index - nearest) < 1e-9 else index


def _assumed_in_plane(da: xr.DataArray, dim: str, spacing: float) -> np.ndarray:
    """Coordinates of an image without ``row``/``col`` coordinates, when provably whole."""
    stored = da.attrs.get("Rows" if dim == "row" else "Columns")
    if dim not in da.dims:
        raise GeometryError(
            f"the image has no {dim!r} dim and no {dim!r} coordinate: a reduction over "
            f"{dim} (mean, max, ...) removed where the {dim}s lie. Select one {dim} with "
            f".isel({dim}=k) to keep the geometry, or reduce after exporting."
        )
    size = da.sizes[dim]
    if stored is None or int(stored) == size:
        # whole as stored, or an array built by hand whose affine describes it as it is
        return np.arange(size) * spacing
    raise GeometryError(
        f"the {dim!r} dim has no coordinate (it was dropped, or the array was made by an "
        f"older dicomxr) and its {size} {dim}s are not the series' {stored}: where this crop "
        f"starts is unknown. Crop the array as opened (its {dim} coordinate follows the crop)."
    )


def _reference_exact(da: xr.DataArray) -> bool:
    """Whether the series' geometry report says its affine placed every slice exactly."""
    raw = da.attrs.get("geometry")
    try:
        report = json.loads(raw) if isinstance(raw, (str, bytes)) else dict(raw or {})
    except (TypeError, ValueError):
        return True
    return bool(report.get("affine_exact", True))


def _slice_axis(da: xr.DataArray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(origin, step)`` as LPS vectors of the slice axis of ``da``."""
    positions = [_coord_1d(da, name, "slice") for name in POSITION_COORDS]
    values = None
    if all(p is not None for p in positions):
        values = np.stack(positions, axis=-1)  # type: ignore[arg-type]
    if values is not None and np.isfinite(values).any():
        start, step, residual = _fit_axis(values, reference[:3, 0], "slice")
    else:
        values = _slice_indices(da, reference)
        k0, dk, residual_k = _fit_axis(values, 1.0, "slice")
        start = reference[:3, 3] + k0[0] * reference[:3, 0]
        step = dk[0] * reference[:3, 0]
        residual = residual_k * float(np.linalg.norm(reference[:3, 0]))
    if residual > _tolerance(float(np.linalg.norm(step))) and _reference_exact(da):
        raise _uneven("slice", values, residual)
    return start, step


def _slice_indices(da: xr.DataArray, reference: np.ndarray) -> np.ndarray:
    """Return the reference slice index of each slice, from the ``slice`` coordinate."""
    values = _coord_1d(da, "slice", "slice")
    if values is None:
        if "slice" not in da.dims:
            raise GeometryError(
                "the image has no 'slice' coordinate and no slice positions: a reduction over "
                "slice (mean, max, ...) removed where the slices lie. Select one slice with "
                ".isel(slice=k) to keep the geometry, or reduce after exporting."
            )
        report_n = _reference_slices(da)
        if report_n == da.sizes["slice"]:
            return np.arange(report_n, dtype=np.float64)
        raise GeometryError(
            "the 'slice' dim has neither a coordinate nor slice positions (position_x/_y/_z), "
            "and its size differs from the series': where these slices lie is unknown"
        )
    if not _has_patient_geometry(da):
        return values  # no ImagePositionPatient: the slice coordinate is the frame index
    normal = np.cross(_unit(reference[:3, 2], "col"), _unit(reference[:3, 1], "row"))
    along = float(normal @ reference[:3, 0])
    if abs(along) < 1e-9:
        raise GeometryError("attrs['affine'] has a slice axis inside the image plane")
    return (values - float(normal @ reference[:3, 3])) / along


def _has_patient_geometry(da: xr.DataArray) -> bool:
    raw = da.attrs.get("geometry")
    try:
        report = json.loads(raw) if isinstance(raw, (str, bytes)) else dict(raw or {})
    except (TypeError, ValueError):
        return True
    return not report or report.get("orientation") is not None


def _reference_slices(da: xr.DataArray) -> int | None:
    raw = da.attrs.get("geometry")
    try:
        report = json.loads(raw) if isinstance(raw, (str, bytes)) else dict(raw or {})
        return int(report["n_slices"])
    except (TypeError, ValueError, KeyError):
        return None


# --------------------------------------------------------------------------------------
# public functions


def affine_of(da: xr.DataArray | xr.Dataset) -> np.ndarray:
    """Return the 4x4 LPS affine of ``da`` as it is now, derived from its coordinates.

    Exact after any crop, stride, reversal, single-index selection, ``sel`` by coordinate,
    ``where``, ``pad`` (the padded voxels extend the grid) or concatenation of evenly spaced
    selections, because it is rebuilt from the ``slice``/``row``/``col`` coordinates and the
    slice positions rather than read from a stored value.

    Parameters
    ----------
    da
        A DataArray from :func:`dicomxr.open_series` (or any selection of one), or a Dataset
        with an ``image`` variable.

    Returns
    -------
    numpy.ndarray
        4x4 float64 mapping the index ``(slice, row, col, 1)`` (named-dim order, whatever
        the order of the array's dims) to LPS millimetres.

    Raises
    ------
    GeometryError
        When the geometry cannot be known: a spatial dim was reduced away, a coordinate is
        not evenly spaced (fancy index, concatenation with a gap), or the attrs were dropped.

    Examples
    --------
    >>> import dicomxr
    >>> da = dicomxr.open_series(dicomxr.data.sample_path())
    >>> crop = da.isel(row=slice(10, 50, 2))
    >>> a, c = affine_of(da), affine_of(crop)
    >>> bool(np.allclose(c[:3, 3], (a @ [0, 10, 0, 1])[:3]))
    True
    >>> bool(np.allclose(c[:3, 1], 2 * a[:3, 1]))
    True
    """
    da = image_of(da)
    reference = reference_affine(da)
    row_start, row_step = _in_plane_axis(da, "row", reference[:3, 1])
    col_start, col_step = _in_plane_axis(da, "col", reference[:3, 2])
    origin, slice_step = _slice_axis(da, reference)
    affine = np.eye(4)
    affine[:3, 0] = slice_step
    affine[:3, 1] = reference[:3, 1] * row_step
    affine[:3, 2] = reference[:3, 2] * col_step
    affine[:3, 3] = origin + reference[:3, 1] * row_start + reference[:3, 2] * col_start
    return affine


def spacing_of(da: xr.DataArray | xr.Dataset) -> tuple[float, float, float]:
    """Voxel size ``(slice step, row step, col step)`` in mm of ``da`` as it is now.

    Parameters
    ----------
    da
        As for :func:`affine_of`.

    Returns
    -------
    tuple of float
    """
    affine = affine_of(da)
    return tuple(float(np.linalg.norm(affine[:3, i])) for i in range(3))  # type: ignore[return-value]


def position_residual_mm(da: xr.DataArray | xr.Dataset) -> float:
    """Largest distance between a slice's recorded position and an evenly spaced stack.

    Zero (to rounding) for a regular stack; large for uneven spacing or missing slices, whose
    positions no single affine can hold. ``nan`` when the positions are not coordinates.

    Parameters
    ----------
    da
        As for :func:`affine_of`.

    Returns
    -------
    float
        Millimetres, measured against the line from the first to the last slice.
    """
    da = image_of(da)
    positions = [_coord_1d(da, name, "slice") for name in POSITION_COORDS]
    if any(p is None for p in positions):
        return float("nan")
    pos = np.stack(positions, axis=-1)  # type: ignore[arg-type]
    if not np.isfinite(pos).any():
        return float("nan")
    return _fit_axis(pos, np.zeros(3), "slice")[2]


def attrs_with_affine(da: xr.DataArray | xr.Dataset) -> dict[str, Any]:
    """Return a copy of ``da.attrs`` whose ``affine`` is the array's own (:func:`affine_of`).

    For consumers that read the geometry from attrs (the viewer's planes and aspect). When
    the geometry cannot be derived, the stale ``affine`` is left out and a
    :class:`~dicomxr.errors.GeometryWarning` says why, so nothing shows a wrong aspect
    silently.

    Parameters
    ----------
    da
        A DataArray (or a Dataset with an ``image`` variable).

    Returns
    -------
    dict
    """
    import warnings

    from dicomxr.errors import GeometryWarning, user_stacklevel

    da = image_of(da)
    attrs = dict(da.attrs)
    if "affine" not in attrs:
        return attrs
    try:
        attrs["affine"] = affine_of(da).ravel().tolist()
    except GeometryError as exc:
        del attrs["affine"]
        warnings.warn(
            f"no geometry for this image, shown in voxel units: {exc}",
            GeometryWarning,
            stacklevel=user_stacklevel(),
        )
    return attrs


def grid_coords(
    affine: np.ndarray, shape: tuple[int, int, int]
) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """Spatial coordinates of the grid ``shape = (slices, rows, cols)`` placed by ``affine``.

    The inverse of :func:`affine_of`: an array carrying these coordinates and
    ``attrs["affine"] = affine`` has exactly this affine.

    Parameters
    ----------
    affine
        4x4 LPS affine of the grid (index ``(slice, row, col, 1)``).
    shape
        ``(slices, rows, cols)``.

    Returns
    -------
    dict
        ``name -> (dims, values)`` for ``slice``, ``row``, ``col`` and
        ``position_x/_y/_z`` (along ``slice``).

    Examples
    --------
    >>> coords = grid_coords(np.diag([2.0, 0.5, 0.5, 1.0]), (3, 2, 2))
    >>> coords["row"][1].tolist(), coords["slice"][1].tolist()
    ([0.0, 0.5], [0.0, 2.0, 4.0])
    """
    affine = np.asarray(affine, dtype=np.float64)
    n_slices, n_rows, n_cols = (int(v) for v in shape)
    row_unit = _unit(affine[:3, 1], "row")
    col_unit = _unit(affine[:3, 2], "col")
    normal = np.cross(col_unit, row_unit)
    positions = affine[:3, 3] + np.outer(np.arange(n_slices), affine[:3, 0])
    coords: dict[str, tuple[tuple[str, ...], np.ndarray]] = {
        "slice": (("slice",), positions @ normal),
        "row": (("row",), np.arange(n_rows) * float(np.linalg.norm(affine[:3, 1]))),
        "col": (("col",), np.arange(n_cols) * float(np.linalg.norm(affine[:3, 2]))),
    }
    for axis, name in enumerate(POSITION_COORDS):
        coords[name] = (("slice",), positions[:, axis].copy())
    return coords


def on_grid(
    source: xr.DataArray,
    data: Any,
    affine: np.ndarray,
    *,
    history: str | None = None,
) -> xr.DataArray:
    """Wrap ``data`` laid out on a new grid as a DataArray like ``source``.

    The result keeps ``source``'s name, attrs and every coordinate that does not lie along
    a spatial dim (``time``, ``echo``, ``EchoTime``, ...); the spatial coordinates, the
    affine, ImageOrientationPatient, PixelSpacing, Rows/Columns and the geometry report
    describe the new grid. Per-slice coordinates of ``source`` (UIDs, paths) are dropped:
    they no longer describe the new slices.

    Parameters
    ----------
    source
        The array ``data`` was made from.
    data
        numpy or dask array of dims ``(*source's non-spatial dims, "slice", "row", "col")``
        (+ ``"channel"`` when ``source`` has it).
    affine
        4x4 LPS affine of the new grid.
    history
        A note appended to ``attrs["history"]`` (what was done).

    Returns
    -------
    xarray.DataArray
    """
    from dicomxr.attrs import encode_attrs
    from dicomxr.geometry import analyze_stack

    affine = np.asarray(affine, dtype=np.float64)
    extra = [d for d in source.dims if d not in (*SPATIAL_DIMS, "channel")]
    dims = (*extra, *SPATIAL_DIMS, *(["channel"] if "channel" in source.dims else []))
    if getattr(data, "ndim", None) != len(dims):
        raise ValueError(f"data has shape {getattr(data, 'shape', None)}; expected dims {dims}")
    shape = tuple(int(data.shape[dims.index(d)]) for d in SPATIAL_DIMS)
    coords: dict[str, Any] = {
        name: coord
        for name, coord in source.coords.items()
        if not set(coord.dims) & {*SPATIAL_DIMS, "channel"}
        and name not in (*SPATIAL_DIMS, *POSITION_COORDS)
    }
    coords.update(grid_coords(affine, shape))  # type: ignore[arg-type]
    if "channel" in source.dims and "channel" in source.coords:
        coords["channel"] = source.coords["channel"]
    out = xr.DataArray(data, dims=dims, coords=coords, name=source.name)
    row_unit, col_unit = _unit(affine[:3, 1], "row"), _unit(affine[:3, 2], "col")
    orientation = [*col_unit.tolist(), *row_unit.tolist()]
    spacing = [float(np.linalg.norm(affine[:3, 1])), float(np.linalg.norm(affine[:3, 2]))]
    positions = np.stack([coords[n][1] for n in POSITION_COORDS], axis=-1)
    report = analyze_stack(positions, orientation, spacing, policy="ignore")
    attrs = dict(source.attrs)
    attrs.update(
        {
            "affine": affine.ravel().tolist(),
            "ImageOrientationPatient": orientation,
            "PixelSpacing": spacing,
            "Rows": shape[1],
            "Columns": shape[2],
            "geometry": report.to_dict(),
        }
    )
    if history:
        previous = attrs.get("history")
        attrs["history"] = f"{previous}\n{history}" if previous else history
    out.attrs = encode_attrs(attrs)
    out.encoding = {}
    return out
