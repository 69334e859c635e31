"""Write a DICOM series (DataArray or Dataset from dicomxr) to a Zarr store.

The store holds one variable, ``image``, chunked one frame per chunk along the frame dims
(the storage layout of DICOM, so a later ``xr.open_zarr`` reads one slice with one chunk),
with every coordinate and the attrs in the form every xarray writer accepts (``affine`` as
16 floats in row-major order, the geometry report as JSON text; see
:func:`dicomxr.attrs.encode_attrs`). It is
written into a temporary sibling directory and renamed into place, so a reader never sees
half a store.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from dicomxr._files import replace_dir, umask_mode
from dicomxr.errors import require

__all__ = ["prepare_for_zarr", "to_zarr"]

_SPATIAL = ("row", "col", "channel")


def prepare_for_zarr(da: xr.DataArray, chunks: dict[str, int] | None) -> xr.Dataset:
    """Return the Dataset :func:`to_zarr` writes for one image (nothing is computed).

    Parameters
    ----------
    da
        The image.
    chunks
        Chunk sizes by dim; by default one frame per chunk, whole along ``row``, ``col``
        and ``channel``.

    Returns
    -------
    xarray.Dataset
        The variable ``image`` (dask, rechunked), its attrs encoded as for netCDF
        (:func:`dicomxr.attrs.encode_attrs`), string coordinates as object strings.
    """
    import dask.array

    from dicomxr.attrs import encode_attrs

    da = da.copy(deep=False)
    da.encoding = {}
    # the same attrs as a netCDF file: affine as 16 floats, the geometry report as JSON text,
    # whichever form (an older nested one included) the image carries
    da.attrs = encode_attrs(da.attrs)
    # strings as variable-length (object) strings: the portable Zarr v3 string type
    for name, coord in list(da.coords.items()):
        if coord.dtype.kind in "OUT":
            values = np.asarray(coord.values).astype(object)
            da = da.assign_coords({name: (coord.dims, values, coord.attrs)})
    for name in da.coords:
        da[name].encoding = {}
    sizes = dict(da.sizes)
    wanted = {d: (sizes[d] if d in _SPATIAL else 1) for d in da.dims}
    if chunks:
        unknown = set(chunks) - set(da.dims)
        if unknown:
            raise ValueError(f"chunks names unknown dims {sorted(unknown)}; dims are {da.dims}")
        wanted.update(chunks)
    target = tuple(wanted[d] for d in da.dims)
    data = da.data
    if isinstance(data, dask.array.Array):
        data = data.rechunk(target)
    else:
        data = dask.array.from_array(np.asarray(data), chunks=target)
    # only the image is chunked; coordinates stay in memory and are written whole
    da = da.copy(data=data)
    return da.to_dataset(name="image", promote_attrs=True)


def to_zarr(
    da: xr.DataArray | xr.Dataset,
    store: str | os.PathLike[str],
    *,
    chunks: dict[str, int] | None = None,
    overwrite: bool = False,
    zarr_format: int | None = None,
) -> Path:
    """Write the image to a Zarr directory store, atomically.

    Parameters
    ----------
    da
        DataArray from :func:`dicomxr.open_series`, or a Dataset with an ``image`` variable.
    store
        Destination directory (e.g. ``"series.zarr"``).
    chunks
        Chunk sizes by dim; default one frame per chunk (full ``row``/``col``).
    overwrite
        Replace an existing store at ``store``; otherwise an existing path is an error.
    zarr_format
        2 or 3 (default: zarr's default).

    Returns
    -------
    pathlib.Path
        The store written.

    Examples
    --------
    >>> import dicomxr, xarray as xr
    >>> da = dicomxr.open_series(dicomxr.data.sample_path())
    >>> path = da.dicom.to_zarr("sample.zarr")  # doctest: +SKIP
    >>> xr.open_zarr(path)["image"]  # doctest: +SKIP
    """
    from dicomxr.attrs import image_of

    require("zarr", extra="zarr", purpose="Zarr export")
    image = image_of(da) if isinstance(da, xr.Dataset) else da
    target = Path(store)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"destination folder {target.parent} does not exist")
    ds = prepare_for_zarr(image, chunks)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, umask_mode(directory=True))  # mkdtemp's 0700 would make the store private
    try:
        kwargs = {} if zarr_format is None else {"zarr_format": zarr_format}
        with warnings.catch_warnings():
            # consolidated metadata is not in the Zarr v3 spec yet, but xarray reads it
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            ds.to_zarr(tmp, mode="w", consolidated=True, **kwargs)
        replace_dir(tmp, target, old_name=f".{target.name}.old-{os.getpid()}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
