"""The attrs codec: dicomxr's attributes in the form every xarray writer accepts, and back.

A DataArray from :func:`dicomxr.open_series` keeps only values netCDF and Zarr accept in its
``attrs``: scalars, strings and flat lists. The 4x4 LPS ``affine`` is stored as 16 floats in
row-major order and the geometry report as JSON text. :func:`encode_attrs` writes that form,
:func:`affine_from_attr` and :func:`geometry_from_attr` read it back (older nested forms too).

This module is low in the house: the api, the accessor, the exporters and the viewer all use
it, and it imports nothing of dicomxr's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

__all__ = [
    "affine_from_attr",
    "encode_attrs",
    "geometry_from_attr",
    "image_of",
    "to_plain",
]


def image_of(obj: xr.DataArray | xr.Dataset) -> xr.DataArray:
    """Return the image of a dicomxr object: the DataArray itself, or a Dataset's ``image``.

    Parameters
    ----------
    obj
        A DataArray, or a Dataset whose image variable is named ``image`` (as
        :func:`dicomxr.open_study` and the ``dicom`` engine create it) or that has one variable.

    Returns
    -------
    xarray.DataArray
    """
    if isinstance(obj, xr.DataArray):
        return obj
    if "image" in obj.data_vars:
        return obj["image"]
    if len(obj.data_vars) == 1:
        return next(iter(obj.data_vars.values()))
    raise ValueError(
        f"the Dataset has variables {sorted(map(str, obj.data_vars))}; dicomxr works on the "
        "variable named 'image' (as dicomxr.open_study and the 'dicom' engine create it): "
        "pass ds['<name>'] to choose one"
    )


def affine_from_attr(value: Any) -> np.ndarray:
    """Return the 4x4 affine stored in ``attrs["affine"]``.

    Accepts the stored form (a flat list of 16 floats, row-major, as netCDF and Zarr keep
    it) and the older nested 4x4 list.

    Parameters
    ----------
    value
        The value of ``attrs["affine"]``.

    Returns
    -------
    numpy.ndarray
        4x4 float64.

    Raises
    ------
    ValueError
        When the value does not hold 16 numbers.

    Examples
    --------
    >>> affine_from_attr(list(range(16)))[1]
    array([4., 5., 6., 7.])
    """
    arr = np.asarray(value, dtype=np.float64)
    if arr.size != 16 or arr.shape not in ((16,), (4, 4)):
        raise ValueError(
            f"attrs['affine'] has shape {arr.shape}; expected 16 numbers (row-major 4x4) "
            "or a 4x4 nested list"
        )
    return arr.reshape(4, 4).copy()


def geometry_from_attr(value: Any) -> dict[str, Any]:
    """Return the geometry report stored in ``attrs["geometry"]`` as a dict.

    Accepts the stored form (a JSON string, as netCDF and Zarr keep it) and the older dict.

    Parameters
    ----------
    value
        The value of ``attrs["geometry"]``.

    Returns
    -------
    dict
        :meth:`dicomxr.GeometryReport.to_dict` data.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, Mapping):
        raise ValueError(
            f"attrs['geometry'] is a {type(value).__name__}; expected a JSON string or a dict"
        )
    return dict(value)


def _netcdf_value(value: Any) -> Any:
    """One attribute value in a form netCDF and Zarr writers accept, or ``None`` to drop it."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return int(value)  # netCDF has no boolean attribute type
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Mapping):
        return json.dumps(to_plain(value))
    if isinstance(value, (list, tuple, np.ndarray)):
        items = np.asarray(value, dtype=object).tolist() if isinstance(value, np.ndarray) else value
        items = list(items)
        if not items:
            return None
        if all(isinstance(v, str) for v in items):
            return items
        numbers = (int, float, np.integer, np.floating, bool, np.bool_)
        if all(v is None or isinstance(v, numbers) for v in items) and any(
            v is not None for v in items
        ):
            if all(isinstance(v, (int, np.integer, bool, np.bool_)) for v in items):
                return [int(v) for v in items]
            return [float("nan") if v is None else float(v) for v in items]
        return json.dumps(to_plain(items))  # nested or mixed: JSON text keeps it whole
    return str(value)


def to_plain(value: Any) -> Any:
    """Numpy scalars and arrays as Python values, for ``json.dumps``."""
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def encode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``attrs`` in the form every xarray writer accepts (netCDF, Zarr).

    Scalars and strings stay; booleans become 0/1; flat lists of numbers or of strings stay
    (``None`` in a list of numbers becomes NaN); ``affine`` becomes 16 floats (row-major),
    ``geometry`` and any other dict or nested list become JSON text; ``None`` and empty
    values are dropped. Readers take both forms (:func:`affine_from_attr`,
    :func:`geometry_from_attr`).

    Parameters
    ----------
    attrs
        Attributes of a dicomxr DataArray, old or new form.

    Returns
    -------
    dict
    """
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if key == "affine" and value is not None:
            try:
                value = affine_from_attr(value).ravel().tolist()
            except (TypeError, ValueError):
                pass  # not a 4x4 affine: written as any other value
        elif key == "geometry" and isinstance(value, Mapping):
            value = json.dumps(to_plain(value))
        value = _netcdf_value(value)
        if value is not None and value != "":
            out[str(key)] = value
    return out
