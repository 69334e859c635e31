"""The ``.dicom`` accessor on :class:`xarray.DataArray` and :class:`xarray.Dataset`.

Registered before dicomxr makes its first xarray object (when :mod:`dicomxr.api` is
imported, which ``dicomxr.open_series`` does on first use), or explicitly with ``import
dicomxr.accessor`` (for objects read back from Zarr or netCDF).

Index order
-----------
``affine`` maps the index ``(slice, row, col, 1)`` - in that order of the named dims,
whatever the order of the array's dims - to patient coordinates in millimetres, LPS
(DICOM's patient system: +x left, +y posterior, +z head). ``affine_ras`` is the same map
into RAS (+x right, +y anterior, +z head), the convention of NIfTI and most neuroimaging
tools.

The affine follows every selection: it is derived from the ``slice``/``row``/``col``
coordinates and the slice positions (:mod:`dicomxr.spatial`), so a crop, a stride, a
flip, ``sel`` by millimetres, ``where``, ``pad`` and concatenations keep it exact, and an
operation that destroys the geometry makes it raise with the reason.

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

import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from dicomxr import intensity
from dicomxr.attrs import (
    affine_from_attr,
    encode_attrs,
    geometry_from_attr,
    image_of,
)
from dicomxr.errors import GeometryError
from dicomxr.spatial import affine_of, spacing_of

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


def series_affine(da: xr.DataArray) -> np.ndarray:
    """Return the LPS affine of a DataArray made by dicomxr, following any selection.

    The same as :func:`dicomxr.spatial.affine_of` (kept under this name for older code).

    Parameters
    ----------
    da
        A DataArray from :func:`dicomxr.open_series` (or a selection of one).

    Returns
    -------
    numpy.ndarray
        4x4, maps ``(slice, row, col, 1)`` to LPS millimetres.
    """
    return affine_of(da)


def _pixel_spacing(da: xr.DataArray) -> tuple[float, float]:
    """``(row step, col step)`` in mm of the array as it is (strides included)."""
    try:
        _, row_mm, col_mm = spacing_of(da)
    except GeometryError:
        spacing = da.attrs.get("PixelSpacing")
        if spacing is not None and len(spacing) == 2:
            return float(spacing[0]), float(spacing[1])
        return 1.0, 1.0
    return row_mm, col_mm


def window_array(da: xr.DataArray, center: float, width: float) -> xr.DataArray:
    """Linear VOI window (DICOM PS3.3 C.11.2.1.2): values mapped to [0, 1], lazily.

    Kept for older code: :func:`dicomxr.intensity.window` without the MONOCHROME1 flip.
    """
    return intensity.window(da, center, width, invert=False)


class DicomAccessor:
    """DICOM-aware helpers on a DataArray from :func:`dicomxr.open_series` (``da.dicom``)."""

    def __init__(self, obj: xr.DataArray) -> None:
        self._obj = obj

    # -- geometry ---------------------------------------------------------------------
    @property
    def affine(self) -> np.ndarray:
        """4x4 affine mapping ``(slice, row, col, 1)`` to patient LPS millimetres.

        Derived from the coordinates (:func:`dicomxr.spatial.affine_of`), so it is exact
        after any crop, stride, flip or ``sel``; raises :class:`~dicomxr.GeometryError`
        when an operation destroyed the geometry (a reduction over ``row``, an unevenly
        spaced fancy index).
        """
        return affine_of(self._obj)

    @property
    def affine_ras(self) -> np.ndarray:
        """4x4 affine mapping ``(slice, row, col, 1)`` to RAS millimetres (NIfTI's space)."""
        return LPS_TO_RAS @ self.affine

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size ``(slice step, row spacing, col spacing)`` in mm, from the affine."""
        return spacing_of(self._obj)

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

    @property
    def orientation(self) -> str:
        """Where the col, row and slice axes point, as a code like ``"LPS"`` or ``"RAS"``.

        See :func:`dicomxr.orientation.orientation_of`.
        """
        from dicomxr.orientation import orientation_of

        return orientation_of(self._obj)

    def reorient(self, code: str = "RAS") -> xr.DataArray:
        """Flip and transpose the spatial dims to orientation ``code``, lazily.

        See :func:`dicomxr.orientation.reorient`: ``"RAS"`` (NIfTI's canonical, and what
        ``"closest"`` means), ``"LPS"``, or any three letters from L/R, A/P, S/I. No
        interpolation; coordinates, attrs and the affine follow.

        Examples
        --------
        >>> import dicomxr
        >>> da = dicomxr.open_series(dicomxr.data.sample_path())
        >>> da.dicom.reorient("RAS").dicom.orientation
        'RAS'
        """
        from dicomxr.orientation import reorient

        return reorient(self._obj, code)

    def resample(
        self,
        *,
        spacing: float | tuple[float, float, float] | None = None,
        shape: tuple[int, int, int] | None = None,
        order: int = 1,
        fill: float | None = None,
        dtype: Any = None,
        grid: str = "input",
    ) -> xr.DataArray:
        """Resample to a voxel size (mm) or a number of voxels, lazily, on the full affine.

        See :func:`dicomxr.resample.resample`: a tilted stack comes out de-tilted, extra
        dims are resampled volume by volume, the result is a dask array in slabs.

        Examples
        --------
        >>> import dicomxr
        >>> da = dicomxr.open_series(dicomxr.data.sample_path())
        >>> [round(s, 6) for s in da.dicom.resample(spacing=2.0).dicom.spacing]
        [2.0, 2.0, 2.0]
        """
        from dicomxr.resample import resample

        return resample(
            self._obj, spacing=spacing, shape=shape, order=order, fill=fill, dtype=dtype,
            grid=grid,  # type: ignore[arg-type]
        )  # fmt: skip

    def resample_like(
        self,
        other: xr.DataArray | xr.Dataset,
        *,
        order: int = 1,
        fill: float | None = None,
        dtype: Any = None,
        check_frame_of_reference: bool = True,
    ) -> xr.DataArray:
        """Resample onto the grid of ``other`` (PET on CT, a label on its image), lazily.

        See :func:`dicomxr.resample.resample_like`; use ``order=0`` for labels.
        """
        from dicomxr.resample import resample_like

        return resample_like(
            self._obj, other, order=order, fill=fill, dtype=dtype,
            check_frame_of_reference=check_frame_of_reference,
        )  # fmt: skip

    # -- data -------------------------------------------------------------------------
    def load(self) -> xr.DataArray:
        """Return the image with its pixels read into memory, into one preallocated array.

        Like :meth:`xarray.DataArray.compute`, but a dask-backed image is streamed chunk by
        chunk into one numpy array (:func:`dask.array.store`), so the peak memory is about
        the array's bytes also for an image computed through operations (``(da * 2)``, a
        reorientation), where ``.compute()`` ends in dask's concatenation (~2x). An image as
        opened computes in one threaded full read into one array either way (see
        :func:`dicomxr.open_series`); without dask (``chunks=None``) this is xarray's own
        load. A new object is returned and this one stays lazy.

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
        da = self._obj
        data = da.data
        if not hasattr(data, "dask"):
            return da.compute()
        from dicomxr._array import FullRead

        if FullRead.attached(data):  # the image as opened: one threaded read
            return da.compute()
        import dask.array

        out = np.empty(data.shape, dtype=data.dtype)
        dask.array.store(data, out, lock=False)
        return da.copy(data=out)

    # -- display ----------------------------------------------------------------------
    def window(
        self,
        preset: str | tuple[float, float] | float | None = None,
        width: float | None = None,
        *,
        center: float | None = None,
        function: str | None = None,
        invert: bool | None = None,
    ) -> xr.DataArray:
        """Window the image lazily: values mapped to [0, 1] (float32), 1 = white.

        One implementation for the package (:func:`dicomxr.intensity.window`): the DICOM
        VOI function, the file's presets, named presets, MONOCHROME1 flipped.

        Parameters
        ----------
        preset
            Nothing for the default window (the viewer's too: the file's, else the
            modality's, else sampled percentiles), a name (``"brain"``, ``"lung"``,
            ``"file 1"``, ``"auto"``...), a ``(center, width)`` pair, or the centre.
        width, center
            Window width (and centre, by keyword); a missing one comes from the default.
        function, invert
            VOI function (default the file's, else LINEAR) and flip (default MONOCHROME1).

        Examples
        --------
        >>> import dicomxr
        >>> da = dicomxr.open_series(dicomxr.data.sample_path())
        >>> da.dicom.window(300, 600).attrs["window_width"]
        600.0
        """
        if center is not None and preset is not None:
            raise TypeError("give the centre either as the first argument or as center=")
        preset = center if center is not None else preset
        numeric = preset is None or isinstance(preset, (int, float))
        if numeric and (preset is None) != (width is None):
            default = intensity.default_window(self._obj)
            preset = default.center if preset is None else preset
            width = default.width if width is None else width
        return intensity.window(self._obj, preset, width, function=function, invert=invert)

    def clip(self, low: float | None = None, high: float | None = None) -> xr.DataArray:
        """Clip lazily to ``[low, high]``, keeping coords and attrs (:func:`dicomxr.intensity.clip`)."""
        return intensity.clip(self._obj, low, high)

    def clip_percentile(
        self, low: float = 1.0, high: float = 99.0, *, sample: bool = True
    ) -> xr.DataArray:
        """Clip lazily to percentiles of sampled slices (:func:`dicomxr.intensity.clip_percentile`)."""
        return intensity.clip_percentile(self._obj, low, high, sample=sample)

    def zscore(
        self, *, mask: xr.DataArray | None = None, over: tuple[str, ...] = _SPATIAL
    ) -> xr.DataArray:
        """Standardise lazily, per volume by default (:func:`dicomxr.intensity.zscore`)."""
        return intensity.zscore(self._obj, mask=mask, over=over)

    def plot(
        self,
        *,
        slice: int | None = None,
        montage: bool | int = False,
        center: float | None = None,
        width: float | None = None,
        ax: Any = None,
        cmap: str = "gray",
        preset: str | None = None,
        letters: bool = True,
        colorbar: bool | None = None,
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
            Display window (default: :func:`dicomxr.intensity.default_window`, the
            viewer's; a file window that varies by frame is the shown slice's).
        preset
            A window preset by name instead (``"brain"``, ``"file 1"``, ``"auto"``...).
        ax
            Axes to draw into (single slice only); a new figure otherwise.
        cmap
            Colormap for greyscale images.
        letters
            Write the patient directions (A/P/R/L/S/I) on the edges, from the array's own
            affine (:func:`dicomxr.spatial.affine_of`, exact after crops and flips).
        colorbar
            Add a colour bar (default: beside a single slice, not on a montage).
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
        k_shown = n // 2 if montage or slice is None else int(slice)
        vmin, vmax, cmap = _plot_window(da, preset, center, width, k_shown, cmap, colour)
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
                    axis.set_title(_slice_title(da, index[k]), fontsize=8)
                    _edge_letters(axis, da, letters)
            if colorbar and not colour:
                _plot_colorbar(fig, axes.ravel().tolist(), vmin, vmax, cmap, da)
            fig.suptitle(title)
            return fig
        k = n // 2 if slice is None else int(slice)
        frame = da.isel(slice=k).values
        if ax is None:
            fig, ax = plt.subplots(figsize=(5, 5 * aspect * frame.shape[0] / frame.shape[1]))
        else:
            fig = ax.figure
        image = ax.imshow(_display(frame, colour), cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect)
        ax.set_title(f"{title}  {_slice_title(da, k)}" if title else _slice_title(da, k))
        ax.set_xlabel("col")
        ax.set_ylabel("row")
        _edge_letters(ax, da, letters)
        if colorbar is not False and not colour:
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

    def to_seg(self, labels: xr.DataArray, path: str | os.PathLike[str], **kwargs: Any) -> Any:
        """Write ``labels`` on this image's grid as a DICOM SEG (see :func:`dicomxr.labels.to_seg`)."""
        from dicomxr.labels import to_seg

        return to_seg(self._obj, labels, path, **kwargs)


def _display(frame: np.ndarray, colour: bool) -> np.ndarray:
    if not colour:
        return frame
    if frame.dtype != np.uint8:
        lo, hi = float(np.nanmin(frame)), float(np.nanmax(frame))
        frame = (frame - lo) / ((hi - lo) or 1.0)
    return frame


def _plot_window(
    da: xr.DataArray,
    preset: str | None,
    center: float | None,
    width: float | None,
    k: int,
    cmap: str,
    colour: bool,
) -> tuple[float | None, float | None, str]:
    """``vmin, vmax, cmap`` for imshow: the VOI ramp of the window, reversed for MONOCHROME1."""
    if colour:
        return None, None, cmap
    w = intensity.resolve_window(da, preset, at={"slice": k})
    if center is not None or width is not None:
        c = w.center if center is None else float(center)
        w = intensity.Window(c, w.width if width is None else float(width), "custom", w.function)
    vmin, vmax = w.ramp
    if intensity.is_inverted(da.attrs):
        cmap = cmap[:-2] if cmap.endswith("_r") else f"{cmap}_r"
    return vmin, vmax, cmap


class DicomDatasetAccessor(DicomAccessor):
    """The ``.dicom`` accessor on a Dataset: works on its ``image`` variable."""

    def __init__(self, obj: xr.Dataset) -> None:
        self._dataset = obj
        super().__init__(image_of(obj))


xr.register_dataarray_accessor("dicom")(DicomAccessor)
xr.register_dataset_accessor("dicom")(DicomDatasetAccessor)


def _slice_title(da: xr.DataArray, k: int) -> str:
    """``"slice 20/139  35.0 mm"``: the 0-based index and the position along the normal."""
    from dicomxr.viewer.annotate import index_label

    label = index_label("slice", k, da.sizes["slice"])
    if "slice" in da.coords and np.issubdtype(da.coords["slice"].dtype, np.number):
        label += f"  {float(da.coords['slice'].values[k]):.1f} mm"
    return label


def _edge_letters(ax: Any, da: xr.DataArray, letters: bool) -> None:
    """Write A/P/R/L/S/I on the edges of a native slice (rows down, columns across)."""
    if not letters:
        return
    from dicomxr.viewer.annotate import draw_edge_letters, edge_letters

    try:
        affine = affine_of(da)
    except (ValueError, KeyError):  # no geometry (GeometryError is a ValueError): no letters
        return
    draw_edge_letters(ax, edge_letters(affine, vertical=1, horizontal=2), color="yellow")


def _plot_colorbar(
    fig: Any, axes: list[Any], vmin: float, vmax: float, cmap: Any, da: xr.DataArray
) -> None:
    """Add one colour bar for every tile of a montage."""
    import matplotlib as mpl

    mappable = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(vmin, vmax), cmap=cmap)
    fig.colorbar(mappable, ax=axes, shrink=0.8, label=str(da.attrs.get("units", "")))
