"""The ``.dicom`` accessor on :class:`xarray.DataArray` and :class:`xarray.Dataset`.

Registered when :mod:`dicomxr.api` is imported (which ``dicomxr.open_series`` does on first
use), or explicitly with ``import dicomxr.accessor``.

Index order
-----------
``affine`` maps the array index ``(slice, row, col, 1)`` - the order of the DataArray's
last spatial dims - to patient coordinates in millimetres, LPS (DICOM's patient system:
+x left, +y posterior, +z head). ``affine_ras`` is the same map into RAS (+x right,
+y anterior, +z head), the convention of NIfTI and most neuroimaging tools.

The affine follows slice selections: when the DataArray still carries the per-frame
``position_x/_y/_z`` coordinates (it does unless they were dropped), the origin and the
slice step are recomputed from them, so ``da.isel(slice=slice(10, 20)).dicom.affine`` is
right. In-plane crops (``row``/``col``) are not tracked; exporting a cropped image raises.

Examples
--------
>>> import dicomxr
>>> da = dicomxr.open_series(dicomxr.data.sample_path())
>>> da.dicom.affine.shape
(4, 4)
>>> da.dicom.window(center=300, width=600)  # doctest: +SKIP
>>> da.dicom.to_nifti("sample.nii.gz")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

if TYPE_CHECKING:
    from dicomxr.geometry import GeometryReport

__all__ = [
    "LPS_TO_RAS",
    "DicomAccessor",
    "DicomDatasetAccessor",
    "affine_from_attr",
    "encode_attrs",
    "geometry_from_attr",
]

#: multiply an LPS affine on the left by this to get the RAS affine
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_SPATIAL = ("slice", "row", "col")


def _image_of(obj: xr.DataArray | xr.Dataset) -> xr.DataArray:
    if isinstance(obj, xr.DataArray):
        return obj
    if "image" in obj.data_vars:
        return obj["image"]
    if len(obj.data_vars) == 1:
        return next(iter(obj.data_vars.values()))
    raise ValueError(
        f"the Dataset has variables {list(obj.data_vars)}; the .dicom accessor works on the "
        "variable named 'image' (as dicomxr.open_study and the 'dicom' engine create it)"
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
        return json.dumps(_plain(value))
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
        return json.dumps(_plain(items))  # nested or mixed: JSON text keeps it whole
    return str(value)


def _plain(value: Any) -> Any:
    """Numpy scalars and arrays as Python values, for ``json.dumps``."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
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
            value = json.dumps(_plain(value))
        value = _netcdf_value(value)
        if value is not None and value != "":
            out[str(key)] = value
    return out


def series_affine(da: xr.DataArray) -> np.ndarray:
    """Return the LPS affine of a DataArray made by dicomxr, following slice selections.

    Parameters
    ----------
    da
        A DataArray from :func:`dicomxr.open_series` (or a selection of one).

    Returns
    -------
    numpy.ndarray
        4x4, maps ``(slice, row, col, 1)`` to LPS millimetres.
    """
    if "affine" not in da.attrs:
        raise ValueError(
            "this DataArray has no 'affine' attribute: it was not opened by dicomxr, or its "
            "attrs were dropped (keep them with xarray.set_options(keep_attrs=True))"
        )
    affine = affine_from_attr(da.attrs["affine"])
    names = ("position_x", "position_y", "position_z")
    if not all(n in da.coords for n in names):
        return affine
    n_slices = da.sizes.get("slice", 1)
    columns = []
    for name in names:
        coord = da.coords[name]
        # one value per slice: the first along every other frame dim; constant -> broadcast
        coord = coord.isel({d: 0 for d in coord.dims if d != "slice"})
        values = np.asarray(coord.values, dtype=np.float64)
        columns.append(np.broadcast_to(values, (n_slices,)) if values.ndim == 0 else values)
    pos = np.stack(columns, axis=-1)
    pos = pos.reshape(-1, 3)
    if not np.all(np.isfinite(pos)) or len(pos) == 0:
        return affine
    affine[:3, 3] = pos[0]
    if len(pos) > 1:
        affine[:3, 0] = (pos[-1] - pos[0]) / (len(pos) - 1)
    return affine


def position_residual_mm(da: xr.DataArray, affine: np.ndarray | None = None) -> float:
    """Largest distance between a slice's recorded position and where the affine puts it.

    Zero (to rounding) for a regular stack; large for uneven spacing or missing slices, whose
    positions no single affine can hold. ``nan`` when the positions are not coordinates.
    """
    names = ("position_x", "position_y", "position_z")
    if not all(n in da.coords for n in names):
        return float("nan")
    affine = series_affine(da) if affine is None else affine
    n_slices = da.sizes.get("slice", 1)
    columns = []
    for name in names:
        coord = da.coords[name]
        coord = coord.isel({d: 0 for d in coord.dims if d != "slice"})
        values = np.asarray(coord.values, dtype=np.float64)
        columns.append(np.broadcast_to(values, (n_slices,)) if values.ndim == 0 else values)
    pos = np.stack(columns, axis=-1)
    index = np.zeros((n_slices, 4))
    index[:, 0] = np.arange(n_slices)
    index[:, 3] = 1
    mapped = (affine @ index.T).T[:, :3]
    distance = np.linalg.norm(mapped - pos, axis=1)
    distance = distance[np.isfinite(distance)]
    return float(distance.max()) if distance.size else float("nan")


def _pixel_spacing(da: xr.DataArray) -> tuple[float, float]:
    spacing = da.attrs.get("PixelSpacing")
    if spacing is not None and len(spacing) == 2:
        return float(spacing[0]), float(spacing[1])
    affine = affine_from_attr(da.attrs.get("affine", np.eye(4)))
    return float(np.linalg.norm(affine[:3, 1])) or 1.0, float(np.linalg.norm(affine[:3, 2])) or 1.0


def window_array(da: xr.DataArray, center: float, width: float) -> xr.DataArray:
    """Linear VOI window (DICOM PS3.3 C.11.2.1.2): values mapped to [0, 1], lazily.

    Parameters
    ----------
    da
        Image values (after rescale).
    center, width
        Window centre and width in the image's units (``width`` >= 1).

    Returns
    -------
    xarray.DataArray
        float32 in [0, 1], lazy when ``da`` is.
    """
    center = float(center)
    width = float(width)
    if not width >= 1:
        raise ValueError(f"window width must be >= 1, got {width}")
    # DICOM's linear function: centre - 0.5 and width - 1 place the ramp between pixel values
    low = center - 0.5 - (width - 1) / 2
    scaled = (da.astype(np.float32) - np.float32(low)) / np.float32(width - 1)
    out = scaled.clip(0.0, 1.0)
    out.attrs = dict(da.attrs)
    out.attrs.update({"window_center": center, "window_width": width})
    out.name = da.name
    return out


def _default_window(da: xr.DataArray) -> tuple[float, float] | None:
    center, width = da.attrs.get("WindowCenter"), da.attrs.get("WindowWidth")
    if isinstance(center, (list, tuple)):
        center = center[0] if center else None
    if isinstance(width, (list, tuple)):
        width = width[0] if width else None
    if center is None or width is None or not float(width) >= 1:
        return None
    return float(center), float(width)


class DicomAccessor:
    """DICOM-aware helpers on a DataArray from :func:`dicomxr.open_series` (``da.dicom``)."""

    def __init__(self, obj: xr.DataArray) -> None:
        self._obj = obj

    # -- geometry ---------------------------------------------------------------------
    @property
    def affine(self) -> np.ndarray:
        """4x4 affine mapping ``(slice, row, col, 1)`` to patient LPS millimetres."""
        return series_affine(self._obj)

    @property
    def affine_ras(self) -> np.ndarray:
        """4x4 affine mapping ``(slice, row, col, 1)`` to RAS millimetres (NIfTI's space)."""
        return LPS_TO_RAS @ self.affine

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size ``(slice step, row spacing, col spacing)`` in mm, from the affine."""
        affine = self.affine
        return tuple(float(np.linalg.norm(affine[:3, i])) for i in range(3))  # type: ignore[return-value]

    @property
    def report(self) -> GeometryReport:
        """The series' geometry report (:class:`dicomxr.GeometryReport`).

        Rebuilt from ``attrs["geometry"]`` (JSON text, or the dict older versions stored)
        with :meth:`dicomxr.GeometryReport.from_dict`.
        """
        from dicomxr.geometry import GeometryReport

        raw = self._obj.attrs.get("geometry")
        if raw is None:
            raise ValueError("no 'geometry' attribute: this DataArray was not opened by dicomxr")
        return GeometryReport.from_dict(geometry_from_attr(raw))

    # -- data -------------------------------------------------------------------------
    def load(self) -> xr.DataArray:
        """Return the image with its pixels read into memory, by the fastest route.

        For a series as :func:`dicomxr.open_series` returned it (not sliced or computed on),
        every frame is read with a thread pool straight into one preallocated array: about
        the time of a plain ``read()`` of the files and the array's bytes in memory. Anything
        else (a selection, an arithmetic result) is computed by dask as usual. Like
        :meth:`xarray.DataArray.compute`, a new object is returned and this one stays lazy.

        Returns
        -------
        xarray.DataArray
            The same dims, coords and attrs, backed by a numpy array.

        Examples
        --------
        >>> import dicomxr
        >>> da = dicomxr.open_series(dicomxr.data.sample_path())
        >>> isinstance(da.dicom.load().data, np.ndarray)
        True
        """
        from dicomxr._array import frame_grid_of

        da = self._obj
        spec = frame_grid_of(da.data)
        if spec is None or spec.shape != da.shape:
            return da.compute()
        return da.copy(data=spec.read_all())

    # -- display ----------------------------------------------------------------------
    def window(self, center: float | None = None, width: float | None = None) -> xr.DataArray:
        """Apply a linear window, lazily: values mapped to [0, 1] (float32).

        Parameters
        ----------
        center, width
            Window centre and width; default: the series' first WindowCenter/WindowWidth
            preset, else the 1st-99th percentile of three sampled slices.
        """
        da = self._obj
        if center is None or width is None:
            preset = _default_window(da) or _sampled_window(da)
            center = preset[0] if center is None else center
            width = preset[1] if width is None else width
        return window_array(da, center, width)

    def plot(
        self,
        *,
        slice: int | None = None,
        montage: bool | int = False,
        center: float | None = None,
        width: float | None = None,
        ax: Any = None,
        cmap: str = "gray",
        **isel: int,
    ) -> Any:
        """Show one slice, or a montage of evenly spaced slices, with the physical aspect.

        Only the slices shown are read. matplotlib is imported on call.

        Parameters
        ----------
        slice
            Slice index (default: the middle slice). Ignored for a montage.
        montage
            ``True`` for 12 slices, or the number of slices to tile.
        center, width
            Display window (default: the series preset, else sampled percentiles).
        ax
            Axes to draw into (single slice only); a new figure otherwise.
        cmap
            Colormap for greyscale images.
        **isel
            Index along the other frame dims (``time=2``, ``echo=0``); default 0.

        Returns
        -------
        matplotlib.figure.Figure
        """
        import matplotlib.pyplot as plt

        da = self._obj
        extra = [d for d in da.dims if d not in (*_SPATIAL, "channel")]
        unknown = set(isel) - set(extra)
        if unknown:
            raise ValueError(f"unknown dims {sorted(unknown)}; the frame dims are {extra}")
        da = da.isel({d: isel.get(d, 0) for d in extra})
        if "slice" not in da.dims:
            da = da.expand_dims("slice")
        n = da.sizes["slice"]
        row_mm, col_mm = _pixel_spacing(da)
        aspect = row_mm / col_mm
        colour = "channel" in da.dims
        if center is None or width is None:
            preset = None if colour else (_default_window(da) or _sampled_window(da))
            if preset is not None:
                center = preset[0] if center is None else center
                width = preset[1] if width is None else width
        vmin = vmax = None
        if center is not None and width is not None:
            vmin, vmax = center - width / 2, center + width / 2
        title = str(da.attrs.get("SeriesDescription") or da.attrs.get("series_key", ""))
        if montage:
            count = 12 if montage is True else int(montage)
            count = max(1, min(count, n))
            index = np.unique(np.linspace(0, n - 1, count).round().astype(int))
            frames = da.isel(slice=index).values
            ncols = math.ceil(math.sqrt(len(index)))
            nrows = math.ceil(len(index) / ncols)
            fig, axes = plt.subplots(
                nrows, ncols, figsize=(2.2 * ncols, 2.2 * nrows * aspect), squeeze=False
            )
            for k, axis in enumerate(axes.ravel()):
                axis.set_axis_off()
                if k < len(index):
                    axis.imshow(
                        _display(frames[k], colour), cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect
                    )
                    axis.set_title(f"slice {index[k]}", fontsize=8)
            fig.suptitle(title)
            return fig
        k = n // 2 if slice is None else int(slice)
        frame = da.isel(slice=k).values
        if ax is None:
            fig, ax = plt.subplots(figsize=(5, 5 * aspect * frame.shape[0] / frame.shape[1]))
        else:
            fig = ax.figure
        image = ax.imshow(_display(frame, colour), cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect)
        ax.set_title(f"{title}  slice {k}/{n}" if title else f"slice {k}/{n}")
        ax.set_xlabel("col")
        ax.set_ylabel("row")
        if not colour:
            fig.colorbar(image, ax=ax, shrink=0.8, label=str(da.attrs.get("units", "")))
        return fig

    def montage(self, **kwargs: Any) -> Any:
        """Draw a static grid of planes (:func:`dicomxr.viewer.static.montage`), to a PNG.

        The fallback where widgets cannot render; reads only the frames it shows.
        """
        from dicomxr.viewer.static import montage

        return montage(self._obj, **kwargs)

    def view(self, **kwargs: Any) -> Any:
        """Open the interactive notebook viewer (:func:`dicomxr.view`) on this image."""
        from dicomxr.viewer import view

        return view(self._obj, **kwargs)

    # -- export -----------------------------------------------------------------------
    def to_nifti(self, path: str | os.PathLike[str], **kwargs: Any) -> Any:
        """Write a NIfTI-1 file (see :func:`dicomxr.export.nifti.to_nifti`)."""
        from dicomxr.export.nifti import to_nifti

        return to_nifti(self._obj, path, **kwargs)

    def to_zarr(self, store: str | os.PathLike[str], **kwargs: Any) -> Any:
        """Write a Zarr store (see :func:`dicomxr.export.zarr.to_zarr`)."""
        from dicomxr.export.zarr import to_zarr

        return to_zarr(self._obj, store, **kwargs)


def _display(frame: np.ndarray, colour: bool) -> np.ndarray:
    if not colour:
        return frame
    if frame.dtype != np.uint8:
        lo, hi = float(np.nanmin(frame)), float(np.nanmax(frame))
        frame = (frame - lo) / ((hi - lo) or 1.0)
    return frame


def _sampled_window(da: xr.DataArray) -> tuple[float, float]:
    """1st-99th percentile window from three slices (never a full compute)."""
    extra = [d for d in da.dims if d not in (*_SPATIAL, "channel")]
    sub = da.isel({d: 0 for d in extra})
    if "slice" in sub.dims:
        n = sub.sizes["slice"]
        sub = sub.isel(slice=sorted({0, n // 2, n - 1}))
    values = np.asarray(sub.values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.5, 1.0
    lo, hi = np.percentile(values, [1, 99])
    width = max(float(hi - lo), 1.0)
    return float(lo + hi) / 2, width


class DicomDatasetAccessor(DicomAccessor):
    """The ``.dicom`` accessor on a Dataset: works on its ``image`` variable."""

    def __init__(self, obj: xr.Dataset) -> None:
        self._dataset = obj
        super().__init__(_image_of(obj))


xr.register_dataarray_accessor("dicom")(DicomAccessor)
xr.register_dataset_accessor("dicom")(DicomDatasetAccessor)
