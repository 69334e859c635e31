"""The xarray ``"dicom"`` engine: ``xr.open_dataset(path, engine="dicom")``.

A thin layer over :func:`dicomxr.open_series` and :func:`dicomxr.open_study`, called with
``chunks=None``: the Dataset's ``image`` wraps the lazy backend array
(:class:`dicomxr._array.DicomBackendArray`) in xarray's lazy indexing, with
``encoding["preferred_chunks"]`` = one frame per chunk. xarray owns the chunking: without
``chunks`` there is no dask at all (``.values`` is one threaded full read, ``.isel(slice=k)``
reads one frame); ``chunks={}`` gives dask with one frame per chunk.

xarray imports every installed engine when it guesses which one opens a file, so this module
imports only ``xarray.backends`` (already loaded by then) and the standard library; dicomxr's
loader is imported inside the open methods.

Examples
--------
>>> import xarray as xr
>>> ds = xr.open_dataset("folder/of/dicom", engine="dicom", series=3)  # doctest: +SKIP
>>> tree = xr.open_datatree("folder/of/dicom", engine="dicom")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from xarray.backends import BackendEntrypoint

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["DicomBackendEntrypoint"]

_DICM_OFFSET = 128


class DicomBackendEntrypoint(BackendEntrypoint):
    """Open DICOM series with xarray (``engine="dicom"``).

    ``open_dataset`` returns a Dataset with one variable, ``image`` (see
    :func:`dicomxr.open_series` for dims, coordinates and attrs); ``open_datatree`` the
    Patient / Study / Series tree of :func:`dicomxr.open_study`. Folders, DICOMDIRs and
    single files are accepted.
    """

    description = "Lazy, geometry-correct DICOM series (files, folders, DICOMDIR) via dicomxr"
    url = "https://dicomxr.readthedocs.io"
    open_dataset_parameters = (
        "filename_or_obj",
        "drop_variables",
        "series",
        "on_irregular",
        "on_duplicate",
        "dtype",
        "include_patient",
        "include",
        "rescale",
        "recursive",
        "storage_options",
        "scaling",
        "merge_runs",
        "keys",
    )

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        """Whether ``filename_or_obj`` is a DICOM Part 10 file (``DICM`` at 128) or a DICOMDIR."""
        try:
            path = os.fspath(filename_or_obj)
        except TypeError:
            return False
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        return _looks_like_dicom(path)

    def open_dataset(  # type: ignore[override]
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        series: int | str | None = None,
        on_irregular: str = "warn",
        on_duplicate: str = "warn",
        dtype: str = "auto",
        include_patient: bool = False,
        include: tuple[str, ...] = (),
        rescale: bool = True,
        recursive: bool = True,
        merge_runs: bool = False,
        storage_options: dict[str, Any] | None = None,
        scaling: str = "display",
        keys: Any = None,
    ) -> xr.Dataset:
        """Open one series as a Dataset with the variable ``image`` (no dask).

        Parameters
        ----------
        filename_or_obj
            File, folder, DICOMDIR, zip file or URL (``s3://``, ``https://``, ...).
        drop_variables
            Coordinates to leave out.
        series, on_irregular, on_duplicate, dtype, include_patient, include, rescale, recursive
            As for :func:`dicomxr.open_series`.
        merge_runs
            As for :func:`dicomxr.open_series`.
        storage_options
            fsspec options for a URL or zip source, as for :func:`dicomxr.open_series`.
        scaling
            ``"display"`` (default), ``"precise"`` or ``"real_world"``, as for
            :func:`dicomxr.open_series`.
        keys
            Extra header fields (keywords or private tag numbers) carried into the attrs, or
            coordinates when they vary, as for :func:`dicomxr.open_series`.
        """
        from dicomxr.api import open_series

        image = open_series(
            _source(filename_or_obj),
            series=series,
            on_irregular=on_irregular,
            on_duplicate=on_duplicate,
            dtype=dtype,
            include_patient=include_patient,
            include=include,
            rescale=rescale,
            recursive=recursive,
            storage_options=storage_options,
            chunks=None,
            merge_runs=merge_runs,
            scaling=scaling,
            keys=keys,
        )
        return _drop(image.to_dataset(promote_attrs=True), drop_variables)

    def open_datatree(  # type: ignore[override]
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        on_irregular: str = "warn",
        on_duplicate: str = "warn",
        dtype: str = "auto",
        include_patient: bool = False,
        include: tuple[str, ...] = (),
        rescale: bool = True,
        recursive: bool = True,
        merge_runs: bool = False,
        storage_options: dict[str, Any] | None = None,
        scaling: str = "display",
        keys: Any = None,
    ) -> xr.DataTree:
        """Open every series as a Patient / Study / Series DataTree (no dask).

        Parameters
        ----------
        filename_or_obj
            File, folder, DICOMDIR, zip file or URL.
        drop_variables
            Coordinates to leave out of every series.
        on_irregular, on_duplicate, dtype, include_patient, include, rescale, recursive, scaling
            As for :func:`dicomxr.open_study`.
        merge_runs
            As for :func:`dicomxr.open_study`.
        storage_options
            fsspec options for a URL or zip source.
        keys
            Extra header fields carried by every series, as for :func:`dicomxr.open_study`.
        """
        from dicomxr.api import open_study

        tree = open_study(
            _source(filename_or_obj),
            on_irregular=on_irregular,
            on_duplicate=on_duplicate,
            dtype=dtype,
            include_patient=include_patient,
            include=include,
            rescale=rescale,
            recursive=recursive,
            storage_options=storage_options,
            chunks=None,
            merge_runs=merge_runs,
            scaling=scaling,
            keys=keys,
        )
        if drop_variables:
            tree = tree.map_over_datasets(lambda ds: _drop(ds, drop_variables))
        return tree

    def open_groups_as_dict(  # type: ignore[override]
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        on_irregular: str = "warn",
        on_duplicate: str = "warn",
        dtype: str = "auto",
        include_patient: bool = False,
        include: tuple[str, ...] = (),
        rescale: bool = True,
        recursive: bool = True,
        merge_runs: bool = False,
        storage_options: dict[str, Any] | None = None,
        scaling: str = "display",
        keys: Any = None,
    ) -> dict[str, xr.Dataset]:
        """Open every series as ``{node path: Dataset}`` (for ``xr.open_groups``)."""
        tree = self.open_datatree(
            filename_or_obj,
            drop_variables=drop_variables,
            on_irregular=on_irregular,
            on_duplicate=on_duplicate,
            dtype=dtype,
            include_patient=include_patient,
            include=include,
            rescale=rescale,
            recursive=recursive,
            merge_runs=merge_runs,
            storage_options=storage_options,
            scaling=scaling,
            keys=keys,
        )
        return {node.path: node.to_dataset() for node in tree.subtree}


def _looks_like_dicom(path: str) -> bool:
    name = os.path.basename(path).upper()
    if name == "DICOMDIR":
        return True
    if os.path.isdir(path):
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(_DICM_OFFSET + 4)
    except OSError:
        return False
    return head[_DICM_OFFSET : _DICM_OFFSET + 4] == b"DICM"


def _source(filename_or_obj: Any) -> Any:
    try:
        return os.fspath(filename_or_obj)
    except TypeError:
        return filename_or_obj


def _drop(ds: xr.Dataset, drop_variables: str | Iterable[str] | None) -> xr.Dataset:
    if not drop_variables:
        return ds
    names = [drop_variables] if isinstance(drop_variables, str) else list(drop_variables)
    return ds.drop_vars([n for n in names if n in ds.variables])
