"""Orientation codes and reorientation: axis flips and transposes, never interpolation.

An orientation code has three letters, one from each of the pairs L/R, A/P and S/I, naming
where the ``col``, ``row`` and ``slice`` axes of an image point, in that order (the order of
NIfTI's voxel axes ``i, j, k``, which is how dicomxr writes NIfTI). ``"RAS"`` is NIfTI's
canonical orientation (col towards the patient's right, row anterior, slice superior);
``"LPS"`` is DICOM's patient axes and ITK's canonical one.

:func:`reorient` flips and transposes the spatial dims so that the image has the code asked
for, lazily (a dask array stays a dask array). The axes are matched the way nibabel matches
them (:func:`nibabel.orientations.io_orientation`), so the result of
``reorient(da, "RAS")`` written as NIfTI equals ``nibabel.as_closest_canonical`` of the
NIfTI of ``da``. For an oblique image each axis goes to its nearest patient axis; the
affine keeps the obliquity (no interpolation).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from dicomxr.attrs import image_of
from dicomxr.spatial import POSITION_COORDS, SPATIAL_DIMS, affine_of, on_grid

__all__ = ["check_code", "orientation_of", "reorient"]

_PAIRS = ("LR", "PA", "IS")  # nibabel's default labels: the second letter is the + direction
#: the NIfTI order of the spatial dims: the letters of a code name these, in this order
_CODE_DIMS = ("col", "row", "slice")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def check_code(code: str) -> str:
    """Return ``code`` upper-cased when it is a valid three-letter orientation code.

    Parameters
    ----------
    code
        Three letters, one of L/R, one of A/P, one of S/I, in any order (``"RAS"``,
        ``"LPS"``, ``"PSR"``); ``"closest"`` means ``"RAS"`` (nibabel's closest canonical).

    Returns
    -------
    str

    Raises
    ------
    ValueError
        Naming what is wrong (a letter that is not an axis, an axis named twice).

    Examples
    --------
    >>> check_code("ras")
    'RAS'
    >>> check_code("RRS")
    Traceback (most recent call last):
    ...
    ValueError: orientation code 'RRS' names the left-right axis twice (R, R) and the anterior-posterior axis not at all; a code takes one letter from each of L/R, A/P, S/I, e.g. 'RAS' or 'LPS'
    """
    if not isinstance(code, str):
        raise TypeError(f"an orientation code is a str like 'RAS', not {type(code).__name__}")
    if code.lower() == "closest":
        return "RAS"
    text = code.upper()
    hint = "a code takes one letter from each of L/R, A/P, S/I, e.g. 'RAS' or 'LPS'"
    if len(text) != 3 or any(c not in "LRAPSI" for c in text):
        raise ValueError(
            f"orientation code {code!r} is not three of the letters L/R, A/P, S/I; {hint}"
        )
    names = ("left-right", "anterior-posterior", "superior-inferior")
    for axis, pair in enumerate(_PAIRS):
        used = [c for c in text if c in pair]
        if len(used) > 1:
            absent = [names[a] for a, p in enumerate(_PAIRS) if not any(c in p for c in text)]
            raise ValueError(
                f"orientation code {code!r} names the {names[axis]} axis twice "
                f"({', '.join(used)}) and the {' and the '.join(absent)} axis not at all; {hint}"
            )
    return text


def _nifti_ras(affine_lps: np.ndarray) -> np.ndarray:
    """RAS affine of the NIfTI voxel axes ``(col, row, slice)``."""
    return _LPS_TO_RAS @ np.asarray(affine_lps, dtype=np.float64)[:, [2, 1, 0, 3]]


def orientation_of(da: xr.DataArray | xr.Dataset) -> str:
    """Return the orientation code of an image: where its col, row and slice axes point.

    Each axis is named by the patient direction it is closest to (nibabel's
    :func:`~nibabel.orientations.aff2axcodes` of the NIfTI affine).

    Parameters
    ----------
    da
        A DataArray from :func:`dicomxr.open_series` (or a selection of one).

    Returns
    -------
    str
        For example ``"LPS"`` for an axial DICOM stack stored the usual way.

    Examples
    --------
    >>> import dicomxr
    >>> da = dicomxr.open_series(dicomxr.data.sample_path())
    >>> orientation_of(da)
    'LPS'
    """
    from nibabel.orientations import aff2axcodes

    return "".join(aff2axcodes(_nifti_ras(affine_of(da))))


def reorient(da: xr.DataArray | xr.Dataset, code: str = "RAS") -> xr.DataArray:
    """Flip and transpose the spatial dims so that the image has orientation ``code``.

    Lazy, exact (no interpolation). Dims keep their names and roles: afterwards ``col``,
    ``row`` and ``slice`` point as ``code`` says, the spatial coordinates and the affine
    describe the new grid, and the per-slice coordinates (UIDs, paths, InstanceNumber) move
    with the axis they were on (onto ``col`` for a sagittal stack reoriented to RAS). Frame
    dims (``time``, ``echo``, ...) and their coordinates are untouched.

    Parameters
    ----------
    da
        A DataArray from :func:`dicomxr.open_series` (or a selection of one), or a Dataset
        with an ``image`` variable.
    code
        Three letters (``"RAS"``, ``"LPS"``, ``"LAS"``, any order such as ``"PSR"``) naming
        where col, row and slice should point; ``"closest"`` is ``"RAS"``.

    Returns
    -------
    xarray.DataArray
        ``da`` itself when it already has the orientation.

    Raises
    ------
    ValueError
        For a code that is not an orientation (``"RRS"``, ``"XYZ"``).
    GeometryError
        When the image's geometry is unknown (see :func:`dicomxr.spatial.affine_of`).

    Examples
    --------
    >>> import dicomxr
    >>> da = dicomxr.open_series(dicomxr.data.sample_path())
    >>> ras = reorient(da, "RAS")
    >>> orientation_of(ras), ras.dims == da.dims
    ('RAS', True)
    """
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    target = check_code(code)
    da = image_of(da)
    current = io_orientation(_nifti_ras(affine_of(da)))
    wanted = axcodes2ornt(tuple(target), labels=tuple(tuple(pair) for pair in _PAIRS))
    transform = ornt_transform(current, wanted)  # per input axis: (output axis, flip)
    moves = {
        _CODE_DIMS[axis]: (_CODE_DIMS[int(out)], int(flip) == -1)
        for axis, (out, flip) in enumerate(transform)
    }
    if all(new == old and not flip for old, (new, flip) in moves.items()):
        return da
    return _apply_moves(da, moves, target)


def _apply_moves(da: xr.DataArray, moves: dict[str, tuple[str, bool]], code: str) -> xr.DataArray:
    """Flip the dims that need it, then give every spatial dim its new role."""
    flipped = da.isel({old: slice(None, None, -1) for old, (_, flip) in moves.items() if flip})
    affine = affine_of(flipped)
    source_of = {new: old for old, (new, _) in moves.items()}
    new_affine = affine.copy()
    for axis, dim in enumerate(SPATIAL_DIMS):
        new_affine[:3, axis] = affine[:3, SPATIAL_DIMS.index(source_of[dim])]
    extra = [d for d in flipped.dims if d not in (*SPATIAL_DIMS, "channel")]
    order = [*extra, *(source_of[d] for d in SPATIAL_DIMS)]
    if "channel" in flipped.dims:
        order.append("channel")
    data = flipped.transpose(*order).data
    out = on_grid(flipped, data, new_affine, history=f"reoriented to {code} (flips and transposes)")
    return out.assign_coords(_carried_coords(flipped, moves))


def _carried_coords(da: xr.DataArray, moves: dict[str, tuple[str, bool]]) -> dict[str, Any]:
    """Per-axis coordinates (UIDs, paths, ...) moved onto the dims their axes became."""
    rename = {old: new for old, (new, _) in moves.items()}
    carried = {}
    for name, coord in da.coords.items():
        if name in (*SPATIAL_DIMS, *POSITION_COORDS) or not set(coord.dims) & set(SPATIAL_DIMS):
            continue
        carried[name] = (tuple(rename.get(d, d) for d in coord.dims), coord.values, coord.attrs)
    return carried
