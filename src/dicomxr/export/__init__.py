"""Exporters for DICOM series opened by dicomxr: NIfTI-1 (:mod:`.nifti`) and Zarr (:mod:`.zarr`).

Each imports its optional dependency (nibabel, zarr) only when called; the ``.dicom``
accessor's ``to_nifti`` / ``to_zarr`` are the usual way in.
"""

from __future__ import annotations

__all__ = ["to_nifti", "to_zarr"]


def to_nifti(*args, **kwargs):
    """Write NIfTI-1; see :func:`dicomxr.export.nifti.to_nifti`."""
    from dicomxr.export.nifti import to_nifti as _to_nifti

    return _to_nifti(*args, **kwargs)


def to_zarr(*args, **kwargs):
    """Write a Zarr store; see :func:`dicomxr.export.zarr.to_zarr`."""
    from dicomxr.export.zarr import to_zarr as _to_zarr

    return _to_zarr(*args, **kwargs)
