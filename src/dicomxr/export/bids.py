"""BIDS-style JSON sidecars: acquisition parameters in BIDS units (seconds, Tesla, degrees).

The catalog does not carry every acquisition parameter, so :func:`header_fields` reads the
first file of a series with pydicom (header only, ``stop_before_pixels=True``) and picks the
fields BIDS names, looking in enhanced multi-frame files' shared and first per-frame
functional groups too. :func:`bids_sidecar` adds what the written image knows (echo time of a
split echo, slice timing from per-slice acquisition times) and converts to BIDS units:
DICOM times in ms become seconds.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

__all__ = [
    "bids_sidecar",
    "header_fields",
    "key_value",
    "read_header",
    "requested_fields",
    "scaling_fields",
    "siemens_csa_fields",
    "slice_timing",
]

# BIDS name -> DICOM keywords tried in order, and the factor to BIDS units
_FIELDS: dict[str, tuple[tuple[str, ...], float | None]] = {
    "Modality": (("Modality",), None),
    "MagneticFieldStrength": (("MagneticFieldStrength",), 1.0),
    "Manufacturer": (("Manufacturer",), None),
    "ManufacturersModelName": (("ManufacturerModelName",), None),
    "SoftwareVersions": (("SoftwareVersions",), None),
    "SeriesDescription": (("SeriesDescription",), None),
    "ProtocolName": (("ProtocolName",), None),
    "SeriesNumber": (("SeriesNumber",), None),
    "ImageType": (("ImageType", "FrameType"), None),
    "BodyPartExamined": (("BodyPartExamined",), None),
    "ScanningSequence": (("ScanningSequence", "EchoPulseSequence"), None),
    "SequenceVariant": (("SequenceVariant",), None),
    "ScanOptions": (("ScanOptions",), None),
    "SequenceName": (("SequenceName", "PulseSequenceName"), None),
    "MRAcquisitionType": (("MRAcquisitionType",), None),
    "SliceThickness": (("SliceThickness",), 1.0),
    "SpacingBetweenSlices": (("SpacingBetweenSlices",), 1.0),
    "EchoTime": (("EchoTime", "EffectiveEchoTime"), 1e-3),
    "RepetitionTime": (("RepetitionTime",), 1e-3),
    "InversionTime": (("InversionTime",), 1e-3),
    "FlipAngle": (("FlipAngle",), 1.0),
    "EchoTrainLength": (("EchoTrainLength",), None),
    "PixelBandwidth": (("PixelBandwidth",), 1.0),
    "ImagingFrequency": (("ImagingFrequency",), 1.0),
    "ReceiveCoilName": (("ReceiveCoilName",), None),
    "PercentPhaseFOV": (("PercentPhaseFieldOfView",), 1.0),
    "PercentSampling": (("PercentSampling",), 1.0),
    "ConvolutionKernel": (("ConvolutionKernel",), None),
    "KVP": (("KVP",), 1.0),
    "XRayExposure": (("Exposure",), 1.0),
    "BurnedInAnnotation": (("BurnedInAnnotation",), None),
}
_EXTRA_KEYWORDS = ("InPlanePhaseEncodingDirection",)


def read_header(path: str | os.PathLike[str], storage_options: Any = None) -> Any:
    """Read the header of one DICOM file (no pixel data) with pydicom.

    ``path`` may be a URL (read by byte range with ``storage_options``, see
    :mod:`dicomxr.sources`).
    """
    import pydicom

    from dicomxr.sources import readable

    with readable(os.fspath(path), storage_options) as source:
        return pydicom.dcmread(source, stop_before_pixels=True, force=True)


def _plain(value: Any) -> Any:
    from pydicom.multival import MultiValue

    if isinstance(value, (MultiValue, list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    try:  # DS, IS
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return int(number) if str(value).strip().lstrip("-").isdigit() else number


def header_fields(ds: Any) -> dict[str, Any]:
    """Return the header values the sidecar and the naming template use, by DICOM keyword.

    Parameters
    ----------
    ds
        A pydicom dataset (header only is enough), de-identified already when it should be.

    Returns
    -------
    dict
        Every top-level keyword with a plain value (str, int, float, list), plus the
        keywords of :data:`_FIELDS` found in enhanced functional groups.
    """
    from dicomxr._functional_groups import header_value

    out: dict[str, Any] = {}
    for element in ds:
        if element.VR in ("SQ", "OB", "OW", "OF", "OD", "OL", "UN") or not element.keyword:
            continue
        if element.value is None or element.value == "":
            continue
        out[element.keyword] = _plain(element.value)
    wanted = {k for keys, _ in _FIELDS.values() for k in keys} | set(_EXTRA_KEYWORDS)
    for keyword in wanted:
        if keyword not in out:
            value = header_value(ds, keyword)
            if value is not None:
                out[keyword] = _plain(value)
    return out


def requested_fields(ds: Any, keys: Sequence[str]) -> dict[str, Any]:
    """Return the values of requested header keys in ``ds`` (see :func:`dicomxr.scan`).

    Keywords are looked up at the top level, then in an enhanced file's shared and first
    per-frame functional groups (where RepetitionTime and FlipAngle live there); tag
    numbers (private attributes) at the top level. Values are decoded as the catalog does
    (:mod:`dicomxr._keys`); tuples become lists. Absent keys are left out.

    Parameters
    ----------
    ds
        A pydicom dataset (de-identified already when it should be).
    keys
        Key names as :func:`dicomxr._keys.resolve_keys` gives them.
    """
    from dicomxr._functional_groups import header_value
    from dicomxr._keys import normalise_value, resolve_keys, value_from_pydicom

    out: dict[str, Any] = {}
    for key in resolve_keys(list(keys)):
        value = value_from_pydicom(ds, key)
        if value is None and not (key.tag >> 16) & 1:
            value = normalise_value(header_value(ds, key.name))
        if value is not None:
            out[key.name] = list(value) if isinstance(value, tuple) else value
    return out


def key_value(name: str, header: Mapping[str, Any], da: xr.DataArray) -> Any:
    """Return the value of a requested key for one written image.

    The image's attr when it has one (the value every frame shares); the list of its
    distinct coordinate values when the key varies across the image's frames; else the
    series' first-file header value; ``None`` when nothing has it.
    """
    if name in da.attrs:
        value = da.attrs[name]
        return value.tolist() if isinstance(value, np.ndarray) else value
    if name in da.coords:
        values = np.asarray(da.coords[name].values).ravel()
        if values.dtype.kind == "f":
            values = values[np.isfinite(values)]
        elif values.dtype.kind in "US":
            values = values[values != ""]
        unique = list(dict.fromkeys(values.tolist()))
        if unique:
            return unique[0] if len(unique) == 1 else unique
    return header.get(name)


def siemens_csa_fields(ds: Any) -> dict[str, Any]:
    """Return what a Siemens CSA image header adds to the sidecar (read by nibabel).

    ``CsaPhaseEncodingDirectionPositive`` (1: phase encoded along the + direction of its
    axis) and ``CsaMosaicRefAcqTimes`` (ms after the volume start, one per MOSAIC tile).
    The CSA header is private: read it before de-identification removes it.
    """
    if "SIEMENS" not in str(ds.get("Manufacturer", "")).upper():
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nibabel.nicom says it is experimental
            from nibabel.nicom import csareader

            csa = csareader.get_csa_header(ds, "image")
    except Exception:  # a CSA header nibabel cannot parse: those fields are left out
        return {}
    tags = (csa or {}).get("tags", {})
    out: dict[str, Any] = {}
    positive = tags.get("PhaseEncodingDirectionPositive", {}).get("items")
    if positive:
        out["CsaPhaseEncodingDirectionPositive"] = int(positive[0])
    times = tags.get("MosaicRefAcqTimes", {}).get("items")
    if times:
        out["CsaMosaicRefAcqTimes"] = [float(t) for t in times]
    return out


def _tm_seconds(value: Any) -> float | None:
    """Seconds since midnight of a DICOM TM (``HHMMSS.frac``) or DT value."""
    text = str(value).strip()
    if len(text) >= 14 and text[:8].isdigit():  # DT: YYYYMMDDHHMMSS.frac
        text = text[8:]
    text = text.split("+")[0].split("-")[0]
    try:
        hours = int(text[0:2])
        minutes = int(text[2:4] or 0)
        seconds = float(text[4:] or 0)
    except ValueError:
        return None
    return hours * 3600 + minutes * 60 + seconds


def slice_timing(da: xr.DataArray, repetition_time: float | None) -> list[float] | None:
    """Return the acquisition time of each slice relative to the first, in seconds.

    From the per-slice ``AcquisitionTime`` (or ``FrameAcquisitionDateTime``) coordinate of
    the first volume; ``None`` when the times do not vary along ``slice``, or spread over more
    than one repetition time (not a slice timing then).
    """
    for name in ("FrameAcquisitionDateTime", "AcquisitionTime"):
        if name not in da.coords or "slice" not in da.coords[name].dims:
            continue
        coord = da.coords[name]
        first = coord.isel({d: 0 for d in coord.dims if d != "slice"})
        seconds = [_tm_seconds(v) for v in np.asarray(first.values).ravel().tolist()]
        if any(s is None for s in seconds):
            continue
        times = np.asarray(seconds, dtype=np.float64)
        times = times - times.min()
        if not np.any(times > 0):
            return None
        if repetition_time and times.max() >= repetition_time:
            return None
        return [round(float(t), 6) for t in times]
    return None


def _mosaic_slice_timing(fields: Mapping[str, Any], da: xr.DataArray) -> list[float] | None:
    """Slice timing of a Siemens MOSAIC: each slice's tile in MosaicRefAcqTimes (ms)."""
    times = fields.get("CsaMosaicRefAcqTimes")
    if not times or "tile" not in da.coords or da.coords["tile"].dims != ("slice",):
        return None
    tiles = np.asarray(da.coords["tile"].values, dtype=np.int64)
    if tiles.min() < 0 or tiles.max() >= len(times):
        return None
    return [round(float(times[t]) / 1000.0, 6) for t in tiles]


def _phase_encoding_axis(fields: Mapping[str, Any], in_plane_kept: bool) -> str | None:
    """BIDS PhaseEncodingAxis (``i``/``j``) from InPlanePhaseEncodingDirection.

    NIfTI ``i`` runs along the DICOM row direction (``col`` dim): ``ROW`` phase encoding is
    ``i``, ``COL`` is ``j``. Only while the image keeps DICOM's in-plane layout (not
    reoriented: a reorientation may swap the axes).
    """
    direction = str(fields.get("InPlanePhaseEncodingDirection", "")).upper()
    if direction not in ("ROW", "COL") or not in_plane_kept:
        return None
    return "i" if direction == "ROW" else "j"


def _phase_encoding_direction(fields: Mapping[str, Any], axis: str | None) -> str | None:
    """BIDS PhaseEncodingDirection (``i``, ``i-``, ``j``, ``j-``) where the polarity is known.

    dicomxr keeps DICOM's row order in NIfTI's ``j`` (dcm2niix flips it, so its polarity
    along ``j`` is the opposite of ours for the same data).
    """
    positive = fields.get("CsaPhaseEncodingDirectionPositive")
    if axis is None or positive not in (0, 1):
        return None
    return axis if positive == 1 else axis + "-"


def bids_sidecar(
    fields: Mapping[str, Any], da: xr.DataArray, *, in_plane_kept: bool = True
) -> dict[str, Any]:
    """Return the BIDS-style sidecar of the image ``da`` written from a series.

    Parameters
    ----------
    fields
        :func:`header_fields` of the series' first file.
    da
        The image as written (after selection, split, reorientation).
    in_plane_kept
        The image keeps DICOM's in-plane layout (not reoriented), so the phase encoding
        axis can be named.

    Returns
    -------
    dict
        BIDS keys in BIDS units (times in seconds), only those the headers define.
    """
    from dicomxr._version import __version__

    out: dict[str, Any] = {}
    for bids, (keywords, factor) in _FIELDS.items():
        value = next((fields[k] for k in keywords if k in fields), None)
        if value is None:
            continue
        if factor is not None:
            try:
                value = round(float(value) * factor, 9)
            except (TypeError, ValueError):
                continue
        out[bids] = value
    echo = _coordinate_values(da, "EchoTime")
    if echo is not None:  # the written image knows its echoes better than the first file
        if len(echo) == 1:
            out["EchoTime"] = round(echo[0] * 1e-3, 9)
        else:
            out.pop("EchoTime", None)
            out["EchoTimes"] = [round(e * 1e-3, 9) for e in echo]
    timing = slice_timing(da, out.get("RepetitionTime"))
    if timing is None:
        timing = _mosaic_slice_timing(fields, da)
    if timing is not None:
        out["SliceTiming"] = timing
    axis = _phase_encoding_axis(fields, in_plane_kept)
    if axis is not None:
        out["PhaseEncodingAxis"] = axis
        direction = _phase_encoding_direction(fields, axis)
        if direction is not None:
            out["PhaseEncodingDirection"] = direction
    out.update(scaling_fields(da, fields))
    if "SeriesInstanceUID" in da.attrs:
        out["SeriesInstanceUID"] = da.attrs["SeriesInstanceUID"]
    out["ConversionSoftware"] = "dicomxr"
    out["ConversionSoftwareVersion"] = __version__
    return out


def scaling_fields(da: xr.DataArray, fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return the intensity scaling of ``da`` under the names dcm2niix writes in sidecars.

    ``PhilipsRescaleSlope``, ``PhilipsRescaleIntercept``, ``PhilipsScaleSlope`` and
    ``UsePhilipsFloatNotDisplayScaling`` (1: the image holds precise values, 0: display
    values) for a Philips series with a Scale Slope; ``PhilipsRWVSlope`` /
    ``PhilipsRWVIntercept`` where a Real World Value Mapping exists; plus dicomxr's own
    ``IntensityScaling`` (``display``, ``precise``, ``real_world``) and, for real-world
    values, ``Units``. A value that differs between the volumes of the image is a list
    (dcm2niix would split the file).
    """
    out: dict[str, Any] = {}
    scaling = da.attrs.get("scaling")
    if scaling:
        out["IntensityScaling"] = scaling
    manufacturer = str(da.attrs.get("Manufacturer") or (fields or {}).get("Manufacturer") or "")
    scale = _one_or_list(da, "PhilipsScaleSlope")
    if scale is not None and "PHILIPS" in manufacturer.upper():
        rescale = _one_or_list(da, "RescaleSlope")
        intercept = _one_or_list(da, "RescaleIntercept")
        out["PhilipsRescaleSlope"] = 1.0 if rescale is None else rescale
        out["PhilipsRescaleIntercept"] = 0.0 if intercept is None else intercept
        out["PhilipsScaleSlope"] = scale
        out["UsePhilipsFloatNotDisplayScaling"] = int(scaling == "precise")
    rwv = _one_or_list(da, "RealWorldValueSlope")
    if rwv is not None:
        out["PhilipsRWVSlope"] = rwv
        out["PhilipsRWVIntercept"] = _one_or_list(da, "RealWorldValueIntercept") or 0.0
    if scaling == "real_world" and da.attrs.get("units"):
        out["Units"] = da.attrs["units"]
    return out


def _one_or_list(da: xr.DataArray, name: str) -> float | list[float] | None:
    """Return an attr, or a coordinate's distinct finite values (one: a float), or None."""
    if name in da.coords:
        values = _coordinate_values(da, name)
        if values is None:
            return None
        return values[0] if len(values) == 1 else values
    value = da.attrs.get(name)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def _coordinate_values(da: xr.DataArray, name: str) -> list[float] | None:
    if name not in da.coords:
        return None
    values = np.unique(np.asarray(da.coords[name].values, dtype=np.float64).ravel())
    values = values[np.isfinite(values)]
    return [float(v) for v in values] if values.size else None
