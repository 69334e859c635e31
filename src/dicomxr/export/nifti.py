"""Write a DICOM series (a DataArray from :func:`dicomxr.open_series`) as NIfTI-1.

Layout of the file
------------------
- voxel axes ``(i, j, k)`` = ``(col, row, slice)``: i runs along the DICOM row direction
  cosine (ImageOrientationPatient[:3]), j along the column cosine, k along the stack, so the
  in-plane layout is DICOM's and the array is written without resampling;
- a 4D series (extra frame dims: ``time``, ``echo``, ``diffusion``, ``label``, ...) goes on the
  4th axis; several extra dims are flattened into it in the DataArray's dim order (C order,
  the last extra dim varying fastest - ``.transpose`` first to choose, ``.isel`` to pick one);
- colour images (``channel`` dim of 3 uint8) are written as NIfTI RGB24; integer images in
  the smallest of int16/uint16/int32/uint32 that holds their values exactly;
- sform and qform are both set, code 1 (scanner), in RAS (NIfTI's world space). The sform is
  the exact affine, sheared for a gantry-tilted stack; the qform cannot hold a shear, so for a
  tilted stack it is nibabel's closest rigid approximation (like dcm2niix's);
- diffusion: ``<stem>.bval`` (one line) and ``<stem>.bvec`` (three lines) in FSL's
  convention - the gradient directions in voxel axes, x negated when the affine's determinant
  is positive - when the image has a ``DiffusionBValue`` coordinate along its 4th axis.

Every file is written under a temporary name in the destination folder and renamed into
place (``os.replace``), so a reader never sees half a file.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from dicomxr._files import atomic_path
from dicomxr.errors import GeometryWarning, require, user_stacklevel

__all__ = ["fsl_bvecs", "nifti_affine", "to_nifti", "volume_labels"]

logger = logging.getLogger(__name__)

_SPATIAL = ("slice", "row", "col")
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_DIFFUSION_DIMS = ("diffusion",)
_POSITION_TOL_MM = 0.01


def nifti_affine(affine_lps: np.ndarray) -> np.ndarray:
    """RAS affine of the NIfTI voxel axes ``(col, row, slice)`` from dicomxr's LPS affine.

    Parameters
    ----------
    affine_lps
        4x4 mapping ``(slice, row, col, 1)`` to LPS mm (``da.dicom.affine``).

    Returns
    -------
    numpy.ndarray
        4x4 mapping ``(i=col, j=row, k=slice, 1)`` to RAS mm.
    """
    affine = np.asarray(affine_lps, dtype=np.float64)
    permuted = affine[:, [2, 1, 0, 3]]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ permuted


def fsl_bvecs(directions_lps: np.ndarray, affine_ras: np.ndarray) -> np.ndarray:
    """Gradient directions (patient LPS) as FSL bvecs for an image with ``affine_ras``.

    Parameters
    ----------
    directions_lps
        ``(n, 3)`` unit vectors in DICOM patient coordinates (zero vectors for b=0).
    affine_ras
        The NIfTI image's 4x4 RAS affine.

    Returns
    -------
    numpy.ndarray
        ``(3, n)``: components along the voxel axes, x negated when ``det(affine) > 0``.
    """
    directions = np.asarray(directions_lps, dtype=np.float64).reshape(-1, 3)
    ras = directions * np.array([-1.0, -1.0, 1.0])
    axes = affine_ras[:3, :3]
    norms = np.linalg.norm(axes, axis=0)
    norms[norms == 0] = 1.0
    unit = axes / norms
    # components along the (possibly non-orthogonal) voxel axes
    vox = np.linalg.solve(unit, ras.T)
    if np.linalg.det(affine_ras[:3, :3]) > 0:
        vox[0] = -vox[0]
    vox[np.abs(vox) < 1e-12] = 0.0
    return vox


def _split_suffix(path: Path) -> tuple[Path, str]:
    name = path.name
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return path.with_name(name[: -len(suffix)]), suffix
    raise ValueError(f"{path}: a NIfTI file name ends with .nii or .nii.gz")


def _nifti_data(data: np.ndarray, colour: bool) -> np.ndarray:
    if colour:
        if data.shape[-1] != 3 or data.dtype != np.uint8:
            raise ValueError(
                f"colour export needs 3 uint8 channels, got {data.shape[-1]} x {data.dtype}"
            )
        rgb = np.empty(data.shape[:-1], dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        rgb["R"], rgb["G"], rgb["B"] = data[..., 0], data[..., 1], data[..., 2]
        return rgb
    if data.dtype == np.bool_:
        return data.astype(np.uint8)
    if data.dtype == np.float16:
        return data.astype(np.float32)
    if data.dtype.kind in "iu" and data.dtype.itemsize > 2 and data.size:
        # the smallest integer type that holds the values exactly (dicomxr widens a rescaled
        # int16 series to int32 in memory; the file need not be twice as large)
        low, high = int(data.min()), int(data.max())
        for candidate in (np.int16, np.uint16, np.int32, np.uint32):
            info = np.iinfo(candidate)
            if info.min <= low and high <= info.max:
                return data.astype(candidate) if candidate != data.dtype else data
    return data


def _time_step_seconds(da: xr.DataArray, dim: str) -> float:
    """Spacing of the 4th axis in seconds when it is time-like, else 0."""
    if dim != "time":
        return 0.0
    for name in ("RepetitionTime",):
        value = da.attrs.get(name)
        if isinstance(value, (int, float)) and value > 0:
            return float(value) / 1000.0  # DICOM RepetitionTime is in ms
    return 0.0


def _diffusion(da: xr.DataArray, dim: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(bvals (n,), directions LPS (n, 3)) along ``dim``, or None when not diffusion."""
    if dim is None or "DiffusionBValue" not in da.coords:
        return None
    coord = da.coords["DiffusionBValue"]
    if dim not in coord.dims:
        return None
    bvals = np.asarray(coord.values, dtype=np.float64)
    # reduce to one value per volume (first along other dims)
    for d in reversed(coord.dims):
        if d != dim:
            bvals = bvals.take(0, axis=coord.dims.index(d))
    directions = np.zeros((len(bvals), 3))
    names = ("bvec_x", "bvec_y", "bvec_z")
    if all(n in da.coords for n in names):
        for axis, name in enumerate(names):
            values = np.asarray(da.coords[name].values, dtype=np.float64)
            cdims = da.coords[name].dims
            for d in reversed(cdims):
                if d != dim:
                    values = values.take(0, axis=cdims.index(d))
            directions[:, axis] = values
    directions = np.nan_to_num(directions, nan=0.0)
    bvals = np.nan_to_num(bvals, nan=0.0)
    # a b=0 volume has no direction (scanners may still record one): FSL writes 0 0 0
    directions[bvals == 0] = 0.0
    return bvals, directions


def to_nifti(
    da: xr.DataArray | xr.Dataset,
    path: str | os.PathLike[str],
    *,
    bvals: bool = True,
    sidecar: bool = False,
) -> Path:
    """Write ``da`` as a NIfTI-1 file (``.nii`` or ``.nii.gz``), with bval/bvec for diffusion.

    Parameters
    ----------
    da
        A DataArray from :func:`dicomxr.open_series` (or a selection of one), dims
        ``(*frame dims, "slice", "row", "col")``; frame dims besides ``slice`` go on the
        4th axis (several are flattened, the last fastest). A Dataset is accepted and its
        ``image`` variable written.
    path
        Destination; ``.nii.gz`` is compressed.
    bvals
        Write ``.bval``/``.bvec`` next to the image when it is a diffusion series.
    sidecar
        Also write ``<stem>.json``: the series attrs as JSON (``affine`` as the 4x4 LPS
        matrix, ``geometry`` and ``dim_sources`` as objects, whichever form ``da.attrs``
        holds them in) plus ``"volumes"``, the frame-dim coordinates of each 4th-axis volume
        in order.

    Returns
    -------
    pathlib.Path
        The path written.

    Examples
    --------
    >>> import dicomxr
    >>> da = dicomxr.open_series(dicomxr.data.sample_path())
    >>> da.dicom.to_nifti("pcasl.nii.gz")  # doctest: +SKIP
    """
    from dicomxr.attrs import image_of
    from dicomxr.spatial import affine_of, position_residual_mm

    nib = require("nibabel", extra="nifti", purpose="NIfTI export")
    da = image_of(da) if isinstance(da, xr.Dataset) else da
    path = Path(path)
    stem, suffix = _split_suffix(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"destination folder {path.parent} does not exist")
    lps = affine_of(da)  # first: a reduced or unevenly selected image is refused here
    for dim in _SPATIAL:  # a single slice, row or column selected: a voxel thick
        if dim not in da.dims:
            da = da.expand_dims(dim)
    colour = "channel" in da.dims
    extra = [d for d in da.dims if d not in (*_SPATIAL, "channel")]
    volumes = volume_labels(da, extra)
    order = [*extra, *_SPATIAL, *(["channel"] if colour else [])]
    values = np.asarray(da.transpose(*order).values)
    if len(extra) > 1:  # NIfTI has one axis beyond space: flatten, last extra dim fastest
        logger.info("flattening frame dims %s into the 4th NIfTI axis", extra)
        values = values.reshape((-1, *values.shape[len(extra) :]))
        flat = "volume"
        da = da.stack({flat: extra}) if "DiffusionBValue" in da.coords else da
        extra = [flat]
    # (extra?, slice, row, col, channel?) -> (col, row, slice, extra?, channel?)
    spatial_axes = [len(extra) + 2, len(extra) + 1, len(extra)]
    axes = spatial_axes + list(range(len(extra))) + ([values.ndim - 1] if colour else [])
    data = _nifti_data(np.transpose(values, axes), colour)
    residual = position_residual_mm(da)
    if residual > _POSITION_TOL_MM:
        warnings.warn(
            f"the slices are not evenly spaced (a slice is {residual:.3g} mm from where the "
            "NIfTI affine puts it): NIfTI holds one affine, so this file misplaces slices. "
            "Open with on_irregular='split' for regular blocks, or export a regular "
            "selection (.isel(slice=...)).",
            GeometryWarning,
            stacklevel=user_stacklevel(),
        )
    affine = nifti_affine(lps)

    img = nib.Nifti1Image(data, affine)
    header = img.header
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    zooms = list(np.linalg.norm(affine[:3, :3], axis=0))
    if extra:
        zooms.append(_time_step_seconds(da, extra[0]))
    header.set_zooms(zooms)
    header.set_xyzt_units(xyz="mm", t="sec")
    description = str(da.attrs.get("SeriesDescription", ""))[:79]
    header["descrip"] = description.encode("ascii", "replace")
    header.set_dim_info(freq=0, phase=1, slice=2)

    diffusion = _diffusion(da, extra[0] if extra else None) if bvals else None
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, tmp)
    if diffusion is not None:
        bval, directions = diffusion
        bvec = fsl_bvecs(directions, affine)
        with atomic_path(stem.with_name(stem.name + ".bval"), suffix=".bval") as tmp:
            tmp.write_text(" ".join(_fmt(b) for b in bval) + "\n")
        with atomic_path(stem.with_name(stem.name + ".bvec"), suffix=".bvec") as tmp:
            tmp.write_text("\n".join(" ".join(_fmt(v) for v in row) for row in bvec) + "\n")
    if sidecar:
        import json

        info = _sidecar_attrs(da.attrs)
        info["volumes"] = volumes
        info["nifti_axes"] = ["col", "row", "slice", *(["volume"] if volumes else [])]
        with atomic_path(stem.with_name(stem.name + ".json"), suffix=".json") as tmp:
            tmp.write_text(json.dumps(info, indent=1))
    logger.info("wrote %s %s", path, data.shape)
    return path


def volume_labels(da: xr.DataArray, extra: list[str]) -> list[dict[str, Any]]:
    """List the frame-dim index and coordinate value of each 4th-axis volume, in file order.

    Parameters
    ----------
    da
        The image written.
    extra
        Its frame dims other than ``slice``, flattened (C order) into NIfTI's 4th axis.

    Returns
    -------
    list of dict
        One dict per volume: ``<dim>_index`` and, where the dim has a coordinate, ``<dim>``
        with its value; empty when there is no extra dim.
    """
    import itertools

    labels = []
    for combo in itertools.product(*(range(da.sizes[d]) for d in extra)):
        label: dict[str, Any] = {}
        for dim, i in zip(extra, combo, strict=True):
            label[f"{dim}_index"] = i
            if dim in da.coords:
                value = da.coords[dim].values[i]
                label[dim] = value.item() if hasattr(value, "item") else value
        labels.append(label)
    return labels if extra else []


def _sidecar_attrs(attrs: Any) -> dict[str, Any]:
    """Return the attrs as JSON data: affine as a 4x4 list, JSON-text attrs as objects."""
    import json

    from dicomxr.attrs import affine_from_attr, geometry_from_attr, to_plain

    info: dict[str, Any] = {}
    for key, value in attrs.items():
        try:
            if key == "affine":
                value = affine_from_attr(value).tolist()
            elif key == "geometry":
                value = geometry_from_attr(value)
            elif isinstance(value, str) and value[:1] in "{[" and value[-1:] in "]}":
                value = json.loads(value)
        except ValueError:
            pass  # kept as it is when it is not what its name says
        value = to_plain(value)
        if _json_ok(value):
            info[str(key)] = value
    return info


def _json_ok(value: Any) -> bool:
    import json

    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _fmt(value: Any) -> str:
    value = float(value)
    if value == int(value):
        return str(int(value))
    return f"{value:.6g}"
