"""Resampling: put an image on another grid, lazily, with the full affine.

Every output voxel centre is mapped through ``inv(A_in) @ A_out`` to a continuous index of
the input, and the value there is interpolated by :func:`scipy.ndimage.affine_transform`
(nearest, linear or cubic spline). Oblique, gantry-tilted (sheared) and flipped stacks are
handled by the same matrix; nothing is assumed axis-aligned.

The result is a dask array chunked in slabs along the output ``slice`` axis, one chunk per
index of every other dim (``time``, ``echo``, ... are resampled volume by volume). Each slab
reads only the box of input voxels its corners map into (padded by the kernel's support), so
computing a slab never reads the whole series and a full compute streams through it.

Points are inside the input when their continuous index lies within half a voxel of the
outermost voxel centres (the voxels' own extent, SimpleITK's convention); there the nearest
edge voxel is repeated for the kernel. Points further out get ``fill``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from itertools import product
from typing import Any, Literal

import numpy as np
import xarray as xr

from dicomxr.attrs import image_of
from dicomxr.errors import GeometryError
from dicomxr.spatial import POSITION_COORDS, SPATIAL_DIMS, affine_of, on_grid

__all__ = ["output_grid", "resample", "resample_like", "resample_to"]

#: the slabs in flight (input box + output block, one per core) as a share of one output
#: volume: bytes read and computed at once stay far below the output array
_WORKING_SET = 0.5
#: extra input voxels read around a slab's box, per interpolation order (the spline
#: prefilter of order 3 needs more than its 4-voxel support to match a whole-volume filter)
_PAD = {0: 1, 1: 1, 3: 8}
#: tolerance (in input voxels) for a point on the edge of the input's extent
_EDGE_EPS = 1e-6
#: refuse grids of more voxels than this (a spacing typed in metres, not millimetres)
_MAX_VOXELS = 2**34

Grid = Literal["input", "axis-aligned"]


# --------------------------------------------------------------------------------------
# checking the request


def _check_order(order: int) -> int:
    if order not in _PAD:
        raise ValueError(
            f"order={order!r} is not supported: use 0 (nearest), 1 (linear) or 3 (cubic spline)"
        )
    return int(order)


def _check_spacing(spacing: Any) -> np.ndarray:
    """Return ``(slice, row, col)`` spacing in mm, or raise naming what is wrong."""
    values = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if values.size == 1:
        values = np.repeat(values, 3)
    if values.shape != (3,):
        raise ValueError(
            f"spacing={spacing!r}: give one number (isotropic, mm) or three "
            "(slice, row, col) in mm, e.g. spacing=1.0 or spacing=(2.0, 1.0, 1.0)"
        )
    bad = [
        f"{dim}={v!r}"
        for dim, v in zip(SPATIAL_DIMS, values.tolist(), strict=True)
        if not (math.isfinite(v) and v > 0)
    ]
    if bad:
        raise ValueError(
            f"spacing={spacing!r} is degenerate ({', '.join(bad)}): every spacing must be a "
            "finite number of millimetres greater than 0"
        )
    return values


def _check_shape(shape: Any) -> tuple[int, int, int]:
    values = np.atleast_1d(np.asarray(shape))
    if values.shape != (3,) or not all(float(v).is_integer() for v in values.tolist()):
        raise ValueError(
            f"shape={shape!r}: give three whole numbers of voxels (slices, rows, cols), "
            "e.g. shape=(128, 256, 256)"
        )
    if np.any(values < 1):
        bad = [f"{d}={int(v)}" for d, v in zip(SPATIAL_DIMS, values, strict=True) if v < 1]
        raise ValueError(
            f"shape={shape!r} is degenerate ({', '.join(bad)}): every axis needs at least one voxel"
        )
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def _check_affine(affine: Any) -> np.ndarray:
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise GeometryError(
            "the output affine must be a finite 4x4 matrix (index (slice, row, col, 1) to LPS mm)"
        )
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise GeometryError(
            "the output affine is singular (an axis of zero length, or two parallel axes): "
            "no grid can be placed with it"
        )
    return matrix


def _check_size(shape: tuple[int, ...], what: str) -> None:
    voxels = math.prod(shape)
    if voxels > _MAX_VOXELS:
        raise ValueError(
            f"{what} would make a grid of {shape} = {voxels:.3g} voxels per volume: is the "
            "spacing in millimetres? Choose a larger spacing or a smaller shape."
        )


def _out_dtype(source: xr.DataArray, order: int, dtype: Any) -> np.dtype:
    if dtype is not None:
        return np.dtype(dtype)
    return np.dtype(source.dtype) if order == 0 else np.dtype(np.float32)


def _fill_value(fill: float | None, dtype: np.dtype) -> Any:
    if fill is None:
        return np.nan if dtype.kind in "fc" else 0
    if dtype.kind not in "fc" and not (math.isfinite(fill) and float(fill).is_integer()):
        raise ValueError(
            f"fill={fill!r} cannot be stored in the output dtype {dtype}: pass a whole number "
            "(e.g. fill=0, or -1024 for CT air) or ask for dtype='float32'"
        )
    return fill


def _spatial_source(da: xr.DataArray | xr.Dataset) -> xr.DataArray:
    """Return the image with its dims ordered ``(*extra, slice, row, col[, channel])``."""
    da = image_of(da)
    missing = [d for d in SPATIAL_DIMS if d not in da.dims]
    if missing:
        raise GeometryError(
            f"resampling needs the dims slice, row and col; this image has {tuple(da.dims)} "
            f"(missing {missing}). A single slice selected with .isel(slice=k) drops the dim: "
            "select with .isel(slice=[k]) to keep it."
        )
    extra = [d for d in da.dims if d not in (*SPATIAL_DIMS, "channel")]
    tail = ["channel"] if "channel" in da.dims else []
    return da.transpose(*extra, *SPATIAL_DIMS, *tail)


# --------------------------------------------------------------------------------------
# the output grid


def _orthonormal_axes(affine: np.ndarray) -> np.ndarray:
    """Return unit (slice, row, col) axes: row and col as stored, slice along their normal.

    For a gantry-tilted stack the slice step is not perpendicular to the image plane; the
    output slice axis is the plane's normal on the side the slices advance (dcm2niix's
    ``_Tilt`` grid).
    """
    row = affine[:3, 1] / np.linalg.norm(affine[:3, 1])
    col = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    col = col - (col @ row) * row  # DICOM rows and cols are perpendicular; rounding is not
    col /= np.linalg.norm(col)
    normal = np.cross(col, row)
    if normal @ affine[:3, 0] < 0:
        normal = -normal
    return np.stack([normal, row, col], axis=1)


def _axis_aligned(axes: np.ndarray) -> np.ndarray:
    """Return the LPS axes nearest to ``axes`` (a signed permutation: an axial stays axial)."""
    out = np.zeros((3, 3))
    free = [0, 1, 2]
    for column in np.argsort(-np.max(np.abs(axes), axis=0)):
        row = max(free, key=lambda r: abs(axes[r, column]))
        free.remove(row)
        out[row, column] = np.sign(axes[row, column]) or 1.0
    return out


def output_grid(
    da: xr.DataArray | xr.Dataset,
    *,
    spacing: float | tuple[float, float, float] | None = None,
    shape: tuple[int, int, int] | None = None,
    grid: Grid = "input",
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Return ``(affine, shape)`` of the grid :func:`resample` puts ``da`` on.

    The grid covers the input's voxel centres: its first voxel is where the input's extent
    starts along each output axis, and ``spacing`` is kept exactly (the last voxel may fall
    short of the far edge by less than one step), or ``shape`` voxels span the extent.

    Parameters
    ----------
    da
        The image (any dicomxr DataArray or selection of one).
    spacing
        Voxel size in mm: one number (isotropic) or ``(slice, row, col)``.
    shape
        Instead of ``spacing``: the number of ``(slices, rows, cols)``.
    grid
        ``"input"``: the input's row and col directions and the plane's normal (a tilted
        stack is de-tilted; an oblique one stays oblique). ``"axis-aligned"``: the LPS axes
        nearest to those (no obliquity left; an axial stays axial).

    Returns
    -------
    tuple
        4x4 LPS affine (index ``(slice, row, col, 1)``) and ``(slices, rows, cols)``.

    Examples
    --------
    >>> import dicomxr
    >>> da = dicomxr.open_series(dicomxr.data.sample_path())
    >>> affine, shape = output_grid(da, spacing=2.0)
    >>> shape
    (78, 119, 119)
    """
    if (spacing is None) == (shape is None):
        raise ValueError("give exactly one of spacing= (mm) or shape= (voxels)")
    source = _spatial_source(da)
    a_in = affine_of(source)
    axes = _orthonormal_axes(a_in)
    if grid == "axis-aligned":
        axes = _axis_aligned(axes)
    elif grid != "input":
        raise ValueError(f"grid={grid!r}: use 'input' or 'axis-aligned'")
    n_in = np.array([source.sizes[d] for d in SPATIAL_DIMS])
    corners = np.array(list(product(*[(0, n - 1) for n in n_in])), dtype=np.float64)
    centres = corners @ a_in[:3, :3].T + a_in[:3, 3]  # LPS of the corner voxel centres
    along = centres @ axes  # their coordinates along the output axes
    low, high = along.min(axis=0), along.max(axis=0)
    extent = high - low
    if spacing is not None:
        step = _check_spacing(spacing)
        counts = np.floor(extent / step + 1e-6).astype(np.int64) + 1
        out_shape = tuple(int(c) for c in counts)
        _check_size(out_shape, f"spacing={spacing!r}")
    else:
        out_shape = _check_shape(shape)
        counts = np.array(out_shape)
        spans = np.where(extent > 0, extent, 1.0)  # a single input slice: its thickness is unknown
        step = np.where(counts > 1, spans / np.maximum(counts - 1, 1), np.maximum(spans, 1.0))
        low = np.where(counts > 1, low, (low + high) / 2)
    affine = np.eye(4)
    affine[:3, :3] = axes * step
    affine[:3, 3] = axes @ low
    return affine, out_shape  # type: ignore[return-value]


# --------------------------------------------------------------------------------------
# one output slab


@dataclass(frozen=True)
class _Slab:
    """What one output block needs: the map to its input box, its size, the kernel."""

    matrix: np.ndarray  # output index -> input index (3x3)
    offset: np.ndarray  # ... for the slab's first voxel, relative to the box origin
    box_origin: np.ndarray  # the box's first input index (for the extent mask)
    first_slice: int
    shape: tuple[int, int, int]
    input_shape: tuple[int, int, int]
    order: int
    fill: Any
    dtype: np.dtype
    lead: tuple[int, ...]  # leading 1s of the extra dims in the output block
    channels: int | None


def _inside_mask(slab: _Slab) -> np.ndarray | None:
    """Boolean mask of the slab's voxels inside the input's extent (None: all inside).

    The map is affine, so along each output row the inside points form one interval of
    ``col``; the interval is solved for each (slice, row) instead of mapping every voxel.
    """
    nz, ny, nx = slab.shape
    m = slab.matrix
    t = slab.offset + slab.box_origin  # absolute input index of output (first_slice, 0, 0)
    z = np.arange(nz, dtype=np.float64)[:, None]
    y = np.arange(ny, dtype=np.float64)[None, :]
    lo = np.full((nz, ny), -np.inf)
    hi = np.full((nz, ny), np.inf)
    for a in range(3):
        base = m[a, 0] * z + m[a, 1] * y + t[a]
        low, high = -0.5 - _EDGE_EPS, slab.input_shape[a] - 0.5 + _EDGE_EPS
        slope = m[a, 2]
        if abs(slope) < 1e-12:
            outside = (base < low) | (base > high)
            lo = np.where(outside, np.inf, lo)
        else:
            j1, j2 = (low - base) / slope, (high - base) / slope
            lo = np.maximum(lo, np.minimum(j1, j2))
            hi = np.minimum(hi, np.maximum(j1, j2))
    if np.all(lo <= 0) and np.all(hi >= nx - 1):
        return None
    cols = np.arange(nx, dtype=np.float64)
    return (cols >= lo[..., None]) & (cols <= hi[..., None])


def _interpolate(box: np.ndarray, slab: _Slab) -> np.ndarray:
    from scipy import ndimage

    m = slab.matrix
    diagonal = np.allclose(m, np.diag(np.diag(m)), rtol=0, atol=1e-12)
    out = np.empty(slab.shape, dtype=slab.dtype)
    ndimage.affine_transform(
        box,
        np.diag(m) if diagonal else m,  # a diagonal map takes scipy's faster zoom path
        offset=slab.offset,
        output_shape=slab.shape,
        output=out,
        order=slab.order,
        mode="nearest",  # within half a voxel of the edge: the edge voxel, as SimpleITK
        prefilter=slab.order > 1,
    )
    return out


def _resample_slab(box: _Box | np.ndarray | None, slab: _Slab) -> np.ndarray:
    """Compute one output block from the input box it needs (None: all outside)."""
    full = (*slab.lead, *slab.shape, *(() if slab.channels is None else (slab.channels,)))
    if box is None:
        return np.full(full, slab.fill, dtype=slab.dtype)
    box = box.read() if isinstance(box, _Box) else np.asarray(box)
    box = box.reshape(box.shape[len(slab.lead) :])
    if slab.channels is None:
        out = _interpolate(box, slab)
    else:
        out = np.stack([_interpolate(box[..., c], slab) for c in range(slab.channels)], -1)
    mask = _inside_mask(slab)
    if mask is not None:
        out[~mask] = slab.fill
    return out.reshape(full)


# --------------------------------------------------------------------------------------
# the lazy graph


def _slab_size(
    index_map: np.ndarray,
    shape: tuple[int, int, int],
    n_in: np.ndarray,
    itemsizes: tuple[int, int],
    order: int,
    volumes: int,
) -> int:
    """Slices per output slab, so that the slabs in flight stay small next to the output.

    A slab costs its input box and its output block; with one slab per core in flight,
    their sum is kept near ``_WORKING_SET`` of one output volume (within 2-64 MB), and
    there are at least two slabs per core when the series is one volume.
    """
    nz, ny, nx = shape
    cores = os.cpu_count() or 1
    in_size, out_size = itemsizes
    budget = _WORKING_SET * nz * ny * nx * out_size / cores
    budget = min(max(budget, 2 * 2**20), 64 * 2**20)
    per_volume = max(1, math.ceil(2 * cores / max(1, volumes)))
    size = max(1, math.ceil(nz / per_volume))
    while size > 1:
        box = _box(index_map, 0, size, shape, n_in, _PAD[order])
        boxed = 0 if box is None else int(np.prod(box[1] - box[0]))
        if boxed * in_size + size * ny * nx * out_size <= budget:
            break
        size = max(1, size * 2 // 3)
    return int(size)


def _box(
    index_map: np.ndarray,
    z0: int,
    z1: int,
    shape_out: tuple[int, int, int],
    n_in: np.ndarray,
    pad: int,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Input index box ``[start, stop)`` that output slices ``z0:z1`` map into, or None."""
    _, ny, nx = shape_out
    corners = np.array(list(product((z0, z1 - 1), (0, ny - 1), (0, nx - 1))), dtype=np.float64)
    mapped = corners @ index_map[:3, :3].T + index_map[:3, 3]
    start = np.floor(mapped.min(axis=0)).astype(np.int64) - pad
    stop = np.ceil(mapped.max(axis=0)).astype(np.int64) + pad + 1
    start, stop = np.clip(start, 0, n_in), np.clip(stop, 0, n_in)
    if np.any(stop <= start):
        return None
    return start, stop


def _source_array(source: xr.DataArray) -> Any:
    """Return the source as a dask array (a lazily read series is sliced before it is read)."""
    import dask.array as dsa

    if isinstance(source.data, dsa.Array):
        return source.data
    return source.chunk({d: -1 for d in source.dims}).data


class _Box:
    """The input box of one slab, read inside the slab's own task.

    Reading in the task that consumes the box (rather than in a task of its own) keeps the
    scheduler from reading boxes ahead of the slabs that need them: one box per core is in
    memory at a time. The slice is optimised on its own first, which fuses it into the read
    of a lazily opened series, so only the box's frames are read.
    """

    def __init__(self, data: Any, key: tuple[slice, ...]) -> None:
        import dask

        (self.piece,) = dask.optimize(data[key])
        self.token = (data.name, repr(key))

    def __dask_tokenize__(self) -> Any:
        return self.token

    def read(self) -> np.ndarray:
        return np.asarray(self.piece.compute(scheduler="sync"))


def _lazy_resample(
    source: xr.DataArray,
    index_map: np.ndarray,
    shape: tuple[int, int, int],
    order: int,
    fill: Any,
    dtype: np.dtype,
) -> Any:
    import dask.array as dsa
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    data = _source_array(source)
    n_extra = source.ndim - 3 - ("channel" in source.dims)
    extra_shape = data.shape[:n_extra]
    channels = source.sizes["channel"] if "channel" in source.dims else None
    n_in = np.array(data.shape[n_extra : n_extra + 3])
    volumes = math.prod(extra_shape)
    itemsizes = (np.dtype(data.dtype).itemsize, np.dtype(dtype).itemsize)
    size = _slab_size(index_map, shape, n_in, itemsizes, order, volumes)
    starts = list(range(0, shape[0], size))
    name = "resample-" + tokenize(data.name, index_map, shape, order, fill, str(dtype), size)
    dsk: dict[Any, Any] = {}
    lead = (1,) * n_extra
    tail = (0,) if channels is not None else ()
    for k, z0 in enumerate(starts):
        z1 = min(z0 + size, shape[0])
        box = _box(index_map, z0, z1, shape, n_in, _PAD[order])
        origin = box[0] if box is not None else np.zeros(3, np.int64)
        first = np.array([z0, 0, 0], dtype=np.float64)
        slab = _Slab(
            matrix=index_map[:3, :3].copy(),
            offset=index_map[:3, :3] @ first + index_map[:3, 3] - origin,
            box_origin=origin.astype(np.float64),
            first_slice=z0,
            shape=(z1 - z0, shape[1], shape[2]),
            input_shape=tuple(int(n) for n in n_in),  # type: ignore[arg-type]
            order=order,
            fill=fill,
            dtype=dtype,
            lead=lead,
            channels=channels,
        )
        for e in np.ndindex(*extra_shape):
            key = (name, *e, k, 0, 0, *tail)
            if box is None:
                dsk[key] = (_resample_slab, None, slab)
                continue
            window = tuple(slice(int(a), int(b)) for a, b in zip(*box, strict=True))
            dsk[key] = (
                _resample_slab,
                _Box(data, tuple(slice(i, i + 1) for i in e) + window),
                slab,
            )
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[])
    chunks = (
        *((1,) * n for n in extra_shape),
        tuple(min(size, shape[0] - z0) for z0 in starts),
        (shape[1],),
        (shape[2],),
        *(((channels,),) if channels is not None else ()),
    )
    return dsa.Array(graph, name, chunks, dtype=dtype)


# --------------------------------------------------------------------------------------
# public functions


def resample_to(
    da: xr.DataArray | xr.Dataset,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    *,
    order: int = 1,
    fill: float | None = None,
    dtype: Any = None,
    history: str | None = None,
) -> xr.DataArray:
    """Resample ``da`` onto the grid ``shape`` placed by ``affine``, lazily.

    Parameters
    ----------
    da
        The image (a DataArray from :func:`dicomxr.open_series`, any selection of one, 3D
        or with extra dims such as ``time``; those are resampled volume by volume).
    affine
        4x4 LPS affine of the output grid (index ``(slice, row, col, 1)``).
    shape
        ``(slices, rows, cols)`` of the output grid.
    order
        0 nearest, 1 linear, 3 cubic spline (:func:`scipy.ndimage.affine_transform`).
    fill
        Value of output voxels outside the input; default NaN (0 for an integer dtype).
    dtype
        Output dtype; default the input's for ``order=0``, float32 otherwise.
    history
        Note appended to ``attrs["history"]``; a default one names the operation.

    Returns
    -------
    xarray.DataArray
        Dask-backed, dims ``(*extra, slice, row, col)``, chunked in slabs along ``slice``;
        coordinates, affine and attrs describe the output grid (``out.dicom.affine`` is
        ``affine``).

    Raises
    ------
    GeometryError
        When the input has no geometry, or ``affine`` is not a usable grid.
    ValueError
        For a degenerate ``shape``, an unsupported ``order`` or a ``fill`` the dtype cannot
        hold.
    """
    order = _check_order(order)
    out_affine = _check_affine(affine)
    out_shape = _check_shape(shape)
    _check_size(out_shape, f"shape={shape!r}")
    source = _spatial_source(da)
    a_in = affine_of(source)
    if abs(np.linalg.det(a_in[:3, :3])) < 1e-12:
        raise GeometryError("the input's affine is singular: its voxels have no extent")
    out_dtype = _out_dtype(source, order, dtype)
    fill_value = _fill_value(fill, out_dtype)
    index_map = np.linalg.inv(a_in) @ out_affine
    data = _lazy_resample(source, index_map, out_shape, order, fill_value, out_dtype)
    kernel = {0: "nearest", 1: "linear", 3: "cubic"}[order]
    note = history or f"resampled ({kernel}) to {out_shape} voxels"
    return on_grid(source, data, out_affine, history=note)


def resample(
    da: xr.DataArray | xr.Dataset,
    *,
    spacing: float | tuple[float, float, float] | None = None,
    shape: tuple[int, int, int] | None = None,
    order: int = 1,
    fill: float | None = None,
    dtype: Any = None,
    grid: Grid = "input",
) -> xr.DataArray:
    """Resample ``da`` to a new voxel size (or number of voxels), lazily.

    The output grid (:func:`output_grid`) keeps the input's directions - a gantry-tilted
    stack comes out de-tilted, its slices perpendicular to the image plane - and covers the
    input's field of view. Extra dims (``time``, ``echo``, ...) are resampled volume by
    volume.

    Parameters
    ----------
    da
        The image.
    spacing
        Voxel size in mm: one number (isotropic) or ``(slice, row, col)``.
    shape
        Instead of ``spacing``: ``(slices, rows, cols)``.
    order, fill, dtype
        As for :func:`resample_to`.
    grid
        ``"input"`` or ``"axis-aligned"`` (see :func:`output_grid`).

    Returns
    -------
    xarray.DataArray
        Lazy (dask), chunked in slabs along ``slice``, with the output grid's coordinates
        and affine.

    Raises
    ------
    ValueError
        For a degenerate spacing (zero, negative, NaN) or shape, naming the axis.

    Examples
    --------
    >>> import dicomxr
    >>> da = dicomxr.open_series(dicomxr.data.sample_path())
    >>> iso = resample(da, spacing=2.0)
    >>> iso.sizes["row"], [round(s, 3) for s in iso.dicom.spacing]
    (119, [2.0, 2.0, 2.0])
    """
    affine, out_shape = output_grid(da, spacing=spacing, shape=shape, grid=grid)
    what = f"spacing={spacing!r}" if spacing is not None else f"shape={shape!r}"
    order = _check_order(order)
    kernel = {0: "nearest", 1: "linear", 3: "cubic"}[order]
    return resample_to(
        da,
        affine,
        out_shape,
        order=order,
        fill=fill,
        dtype=dtype,
        history=f"resample({what}, order={order}, grid={grid!r}): {kernel}, {out_shape}",
    )


def resample_like(
    da: xr.DataArray | xr.Dataset,
    other: xr.DataArray | xr.Dataset,
    *,
    order: int = 1,
    fill: float | None = None,
    dtype: Any = None,
    check_frame_of_reference: bool = True,
) -> xr.DataArray:
    """Resample ``da`` onto the grid of ``other`` (PET on CT, a label on its image, ...).

    Parameters
    ----------
    da
        The image to resample.
    other
        The image whose grid (affine of its current selection, ``slice``/``row``/``col``
        sizes) the result takes. Its non-spatial dims are not used.
    order, fill, dtype
        As for :func:`resample_to`. Use ``order=0`` for labels.
    check_frame_of_reference
        Patient coordinates of two series mean the same place only in one Frame of
        Reference: when both carry a ``FrameOfReferenceUID`` and they differ (a follow-up
        on a baseline, another scanner) the resampling is refused unless this is False (you
        know the coordinates agree, or ``da`` was registered onto ``other``).

    Returns
    -------
    xarray.DataArray
        On ``other``'s grid: ``xr.align(out, other.isel(<extra dims>=0), join="exact")``
        holds for the spatial dims.

    Raises
    ------
    GeometryError
        When ``other`` has no geometry, or the Frames of Reference differ.

    Examples
    --------
    >>> import dicomxr
    >>> da = dicomxr.open_series(dicomxr.data.sample_path())
    >>> target = da.isel(slice=slice(0, 40, 2), row=slice(10, 90))
    >>> bool((resample_like(da, target, order=0) == target).all())
    True
    """
    other_img = image_of(other)
    try:
        other_affine = affine_of(other_img)
        other_shape = tuple(int(other_img.sizes[d]) for d in SPATIAL_DIMS)
    except (GeometryError, KeyError) as exc:
        raise GeometryError(
            f"resample_like: the target ('other') has no usable grid: {exc}"
        ) from None
    if check_frame_of_reference:
        mine = image_of(da).attrs.get("FrameOfReferenceUID")
        theirs = other_img.attrs.get("FrameOfReferenceUID")
        if mine and theirs and mine != theirs:
            raise GeometryError(
                f"resample_like: the two series are in different Frames of Reference "
                f"({mine} vs {theirs}), so the same patient coordinates need not be the same "
                "place. Register them first, or pass check_frame_of_reference=False if you "
                "know the coordinates agree."
            )
    out = resample_to(
        da,
        other_affine,
        other_shape,  # type: ignore[arg-type]
        order=order,
        fill=fill,
        dtype=dtype,
        history=f"resample_like(order={order}) onto {other_shape} voxels",
    )
    return _with_grid_of(out, other_img, other_affine)


def _with_grid_of(out: xr.DataArray, other: xr.DataArray, affine: np.ndarray) -> xr.DataArray:
    """Give ``out`` the very spatial coordinates of ``other`` (same grid), so they align.

    A crop of ``other`` measures ``row``/``col`` from its series' first pixel; the new grid
    would measure them from 0. Taking ``other``'s coordinates and reference affine keeps
    ``xr.align(out, other, join="exact")`` true, and the affine is checked to be unchanged.
    """
    names = [n for n in (*SPATIAL_DIMS, *POSITION_COORDS) if n in other.coords]
    candidate = out.assign_coords({n: other.coords[n].variable for n in names})
    candidate.attrs = {**out.attrs, "affine": other.attrs["affine"]}
    try:
        same = np.allclose(affine_of(candidate), affine, rtol=0, atol=1e-6)
    except GeometryError:
        same = False
    return candidate if same else out
