"""Header-only scan of DICOM files into a catalog (one row per instance).

:func:`scan` accepts a file, a list of paths, a glob pattern, a directory tree or a
DICOMDIR (nested DIRFILEs included) and returns a :class:`pandas.DataFrame` with one row
per DICOM instance and one column per attribute of the catalog contract (see
``docs/dev/architecture.md``). Files that cannot be read never stop a scan: they are
listed with a reason in the skipped-files report, ``df.attrs["skipped"]``, also available
as a DataFrame through :func:`skipped`.

Headers are read by a small dedicated parser (:mod:`dicomxr._header`) for the common
encodings (explicit and implicit VR little endian); everything else goes through pydicom.
Both paths produce the same values (tested on every file of the real corpora).

``DiffusionBValue`` and ``DiffusionGradientOrientation`` come from the standard tags
(0018,9087) and (0018,9089) when present, else from the vendor's private tags (Siemens
(0019,100C)/(0019,100E), GE (0043,1039) first value/(0019,10BB-BD), Philips
(2001,1003)/(2005,10B0-B2)), each found through its private creator.
``NumberOfImagesInMosaic`` is Siemens' (0019,100A); when a MOSAIC lacks it, it is read from
the CSA image header with :mod:`nibabel.nicom` (``dicomxr[nifti]``). ``pixel_data_truncated``
is True when the pixel data (or, compressed, its fragments) runs past the end of the file:
the header is sound, the pixels cannot all be read.

``frame_digests`` is filled once every header is read, for the rows with readable pixel data
whose SOPInstanceUID another such row has (and only for them: no pixel is read otherwise):
one digest of the decoded values per stored frame (:func:`dicomxr.pixels.frame_digests`),
which :func:`dicomxr.plan_series` compares to tell a copy of an instance from a different
image under the same UID without opening the files again. ``None`` for every other row.
"""

from __future__ import annotations

import fnmatch
import functools
import glob as _glob
import json
import logging
import math
import operator
import os
import stat
import struct
import warnings
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dicomxr import _catalog_cache, dicomdir
from dicomxr._keys import Key, decode_text, resolve_keys, value_from_pydicom, value_from_raw
from dicomxr.errors import (
    SkippedFileWarning,
    failure_reason,
    is_per_file_failure,
    user_stacklevel,
)

logger = logging.getLogger(__name__)

__all__ = ["COLUMNS", "prune_cache", "read_header", "scan", "skipped"]

#: Catalog columns in order, with the pandas dtype each one gets.
#: ``"object"`` columns hold tuples (multi-valued attributes) or ``None``.
_SCHEMA: dict[str, str] = {
    "path": "str",
    "file_size": "int64",
    "mtime": "float64",
    "etag": "str",
    "pixel_data_offset": "int64",
    "TransferSyntaxUID": "str",
    "SOPClassUID": "str",
    "SOPInstanceUID": "str",
    "SeriesInstanceUID": "str",
    "StudyInstanceUID": "str",
    "FrameOfReferenceUID": "str",
    "PatientID": "str",
    "PatientName": "str",
    "StudyDate": "str",
    "StudyTime": "str",
    "StudyDescription": "str",
    "StudyID": "str",
    "AccessionNumber": "str",
    "SeriesNumber": "Int64",
    "SeriesDescription": "str",
    "Modality": "str",
    "Manufacturer": "str",
    "ManufacturerModelName": "str",
    "InstanceNumber": "Int64",
    "AcquisitionNumber": "Int64",
    "Rows": "Int64",
    "Columns": "Int64",
    "NumberOfFrames": "Int64",
    "SamplesPerPixel": "Int64",
    "BitsAllocated": "Int64",
    "BitsStored": "Int64",
    "HighBit": "Int64",
    "PixelRepresentation": "Int64",
    "PlanarConfiguration": "Int64",
    "PhotometricInterpretation": "str",
    "ImagePositionPatient": "object",
    "ImageOrientationPatient": "object",
    "PixelSpacing": "object",
    "SliceThickness": "float64",
    "SpacingBetweenSlices": "float64",
    "SliceLocation": "float64",
    "GantryDetectorTilt": "float64",
    "ImageType": "object",
    "RescaleSlope": "float64",
    "RescaleIntercept": "float64",
    "RescaleType": "str",
    "PhilipsScaleSlope": "float64",
    "RealWorldValueMapping": "object",
    "WindowCenter": "object",
    "WindowWidth": "object",
    "WindowCenterWidthExplanation": "str",
    "VOILUTFunction": "str",
    "AcquisitionDate": "str",
    "AcquisitionTime": "str",
    "ContentTime": "str",
    "AcquisitionDateTime": "str",
    "TriggerTime": "float64",
    "EchoTime": "float64",
    "EchoNumbers": "Int64",
    "TemporalPositionIdentifier": "Int64",
    "NumberOfTemporalPositions": "Int64",
    "TemporalPositionIndex": "Int64",
    "DiffusionBValue": "float64",
    "DiffusionGradientOrientation": "object",
    "LabelType": "str",
    "GridFrameOffsetVector": "object",
    "is_mosaic": "bool",
    "NumberOfImagesInMosaic": "Int64",
    "mosaic_kind": "str",
    "SliceNormalVector": "object",
    "tile_positions": "object",
    "is_enhanced": "bool",
    "per_frame": "object",
    "has_pixels": "bool",
    "pixel_data_truncated": "bool",
    "frame_digests": "object",
}

#: The catalog's column names, in order.
COLUMNS: tuple[str, ...] = tuple(_SCHEMA)

#: columns the scan computes across rows once every header is read (no file's row has them)
_ACROSS_ROWS = ("frame_digests",)
#: the columns of one file's row
_ROW_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c not in _ACROSS_ROWS)

# Attributes read from the top-level dataset, by tag, with how to convert the value.
# kind: "str" text, "uid" UI, "int" IS/US/UL/SS/SL (first value), "float" DS/FD/FL (first value),
# "floats" all values as a tuple of float, "strs" all values as a tuple of str.
_TAGS: dict[int, tuple[str, str]] = {
    0x00080008: ("ImageType", "strs"),
    0x00080016: ("SOPClassUID", "uid"),
    0x00080018: ("SOPInstanceUID", "uid"),
    0x00080020: ("StudyDate", "str"),
    0x00080022: ("AcquisitionDate", "str"),
    0x00080030: ("StudyTime", "str"),
    0x00080032: ("AcquisitionTime", "str"),
    0x00080033: ("ContentTime", "str"),
    0x00080050: ("AccessionNumber", "str"),
    0x00080060: ("Modality", "str"),
    0x00080070: ("Manufacturer", "str"),
    0x0008002A: ("AcquisitionDateTime", "str"),
    0x00081030: ("StudyDescription", "str"),
    0x0008103E: ("SeriesDescription", "str"),
    0x00081090: ("ManufacturerModelName", "str"),
    0x00100010: ("PatientName", "str"),
    0x00100020: ("PatientID", "str"),
    0x00180050: ("SliceThickness", "float"),
    0x00180081: ("EchoTime", "float"),
    0x00180086: ("EchoNumbers", "int"),
    0x00180088: ("SpacingBetweenSlices", "float"),
    0x00181060: ("TriggerTime", "float"),
    0x00181120: ("GantryDetectorTilt", "float"),
    0x00189087: ("DiffusionBValue", "float"),
    0x00189089: ("DiffusionGradientOrientation", "floats"),
    0x0020000D: ("StudyInstanceUID", "uid"),
    0x0020000E: ("SeriesInstanceUID", "uid"),
    0x00200010: ("StudyID", "str"),
    0x00200011: ("SeriesNumber", "int"),
    0x00200012: ("AcquisitionNumber", "int"),
    0x00200013: ("InstanceNumber", "int"),
    0x00200032: ("ImagePositionPatient", "floats"),
    0x00200037: ("ImageOrientationPatient", "floats"),
    0x00200052: ("FrameOfReferenceUID", "uid"),
    0x00200100: ("TemporalPositionIdentifier", "int"),
    0x00200105: ("NumberOfTemporalPositions", "int"),
    0x00201041: ("SliceLocation", "float"),
    0x00209128: ("TemporalPositionIndex", "int"),
    0x00280002: ("SamplesPerPixel", "int"),
    0x00280004: ("PhotometricInterpretation", "str"),
    0x00280006: ("PlanarConfiguration", "int"),
    0x00280008: ("NumberOfFrames", "int"),
    0x00280010: ("Rows", "int"),
    0x00280011: ("Columns", "int"),
    0x00280030: ("PixelSpacing", "floats"),
    0x00280100: ("BitsAllocated", "int"),
    0x00280101: ("BitsStored", "int"),
    0x00280102: ("HighBit", "int"),
    0x00280103: ("PixelRepresentation", "int"),
    0x00281050: ("WindowCenter", "floats"),
    0x00281051: ("WindowWidth", "floats"),
    0x00281052: ("RescaleIntercept", "float"),
    0x00281053: ("RescaleSlope", "float"),
    0x00281054: ("RescaleType", "str"),
    0x00281055: ("WindowCenterWidthExplanation", "str"),
    0x00281056: ("VOILUTFunction", "str"),
    0x3004000C: ("GridFrameOffsetVector", "floats"),
}

# Vendor private tags: (group, private creator, element offset within the block) -> name.
# Private creators are matched case-insensitively after stripping padding.
_PRIVATE: dict[tuple[int, str, int], str] = {
    (0x0019, "SIEMENS MR HEADER", 0x0A): "siemens_mosaic_n",  # NumberOfImagesInMosaic, US
    (0x0019, "SIEMENS MR HEADER", 0x0C): "siemens_bval",  # B_value, IS
    (0x0019, "SIEMENS MR HEADER", 0x0E): "siemens_bvec",  # DiffusionGradientDirection, FD x3
    (0x0019, "SIEMENS MR HEADER", 0x29): "siemens_slice_times",  # MosaicRefAcqTimes, FD xN
    (0x0065, "IMAGE PRIVATE HEADER", 0x50): "uih_grid_n",  # UIH MR Number Of Slice In Volume, DS
    (0x0065, "IMAGE PRIVATE HEADER", 0x51): "uih_vframe",  # UIH MR VFrame Sequence, SQ
    (0x0029, "SIEMENS CSA HEADER", 0x10): "siemens_csa_image",  # CSA Image Header Info, OB
    (0x0043, "GEMS_PARM_01", 0x39): "ge_bval",  # Slop_int_6...9, IS (b-value is the first)
    (0x0019, "GEMS_ACQU_01", 0xBB): "ge_bvec_x",  # UserData20, DS
    (0x0019, "GEMS_ACQU_01", 0xBC): "ge_bvec_y",
    (0x0019, "GEMS_ACQU_01", 0xBD): "ge_bvec_z",
    (0x2001, "PHILIPS IMAGING DD 001", 0x03): "philips_bval",  # Diffusion_B-Factor, FL
    (0x2005, "PHILIPS MR IMAGING DD 001", 0xB0): "philips_bvec_x",  # FL
    (0x2005, "PHILIPS MR IMAGING DD 001", 0xB1): "philips_bvec_y",
    (0x2005, "PHILIPS MR IMAGING DD 001", 0xB2): "philips_bvec_z",
    (0x2005, "PHILIPS MR IMAGING DD 005", 0x29): "philips_label_type",  # ASL CONTROL/LABEL, CS
    (0x2005, "PHILIPS MR IMAGING DD 001", 0x0E): "philips_scale_slope",  # MR Scale Slope, FL
}
# Real World Value Mapping Sequence (0040,9096): kept whole at the top level (classic files)
_RWV_TAG = 0x00409096
_PRIVATE_GROUPS = frozenset(g for g, _, _ in _PRIVATE)

_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})
_PERFRAME_TAG = 0x52009230
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_DEFLATED = frozenset(
    {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.205"}
)

# at least one of these (or pixel data) makes a parsed file an instance worth a row
_IDENTITY = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "Modality")

# the skip reason of a directory file met as if it were an instance
_DIRECTORY_FILE = (
    "DICOMDIR file (a directory of a file-set, not an instance; "
    "pass it to scan() to read the files it lists)"
)

# skip reasons that are listed in the report without a warning
_BENIGN = ("DICOMDIR file", "not a DICOM file", "not a regular file")

# how many skipped files the scan's warning names (the report lists them all)
_NAMED_SKIPPED = 3

# seconds an automatic progress bar waits before it appears
_PROGRESS_DELAY = 0.5

# characters that make a string source a glob pattern rather than a path
_GLOB_CHARS = frozenset("*?[")


class _Skip(ValueError):
    """A file that cannot be catalogued; the message is the reason shown to the user."""


# ----------------------------------------------------------------------------------------
# value helpers shared by the pydicom path and the fast reader


def _is_multi(value: Any) -> bool:
    # list/tuple first: the ABC check is slow and only pydicom's MultiValue needs it
    if isinstance(value, (list, tuple)):
        return True
    if isinstance(value, (str, bytes, bytearray, int, float)) or value is None:
        return False
    return isinstance(value, Sequence)


def _first(value: Any) -> Any:
    if _is_multi(value):
        return value[0] if value else None
    return value


def _to_float(value: Any) -> float | None:
    value = _first(value)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _to_int(value: Any) -> int | None:
    value = _first(value)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            return None
        return int(as_float) if as_float.is_integer() else None


def _to_floats(value: Any) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    if not _is_multi(value):
        value = (value,)
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out or None


def _to_strs(value: Any) -> tuple[str, ...] | None:
    if value is None or value == "":
        return None
    if not _is_multi(value):
        value = (value,)
    return tuple(str(v) for v in value)


def _to_str(value: Any) -> str | None:
    if value is None:
        return None
    if _is_multi(value):
        return "\\".join(str(v) for v in value) if value else None
    out = str(value)
    return out if out != "" else None


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "str": _to_str,
    "uid": _to_str,
    "int": _to_int,
    "float": _to_float,
    "floats": _to_floats,
    "strs": _to_strs,
}


def _finish_row(row: dict[str, Any], private: dict[str, Any]) -> dict[str, Any]:
    """Fill the derived columns (vendor diffusion, MOSAIC) from vendor private values."""
    # Diffusion: standard tags win; vendor private tags fill the gaps.
    if private and row.get("DiffusionBValue") is None:
        bval = None
        for key in ("siemens_bval", "philips_bval"):
            bval = _to_float(private.get(key))
            if bval is not None:
                break
        if bval is None and private.get("ge_bval") is not None:
            bval = _to_float(private["ge_bval"])
            if bval is not None and bval >= 1e9:
                # newer GE software adds 1e9 to flag the value as a b-value
                bval = float(int(bval) % 1_000_000_000)
        row["DiffusionBValue"] = bval
    if private and row.get("DiffusionGradientOrientation") is None:
        bvec = _to_floats(private.get("siemens_bvec"))
        if bvec is None:
            for prefix in ("philips_bvec_", "ge_bvec_"):
                parts = [_to_float(private.get(prefix + c)) for c in "xyz"]
                if all(p is not None for p in parts):
                    bvec = tuple(parts)
                    break
        row["DiffusionGradientOrientation"] = bvec if bvec and len(bvec) == 3 else None
    # Philips precise values (dicomxr.scaling): dcm2niix reads the tag only for Philips
    scale_slope = _to_float(private.get("philips_scale_slope")) if private else None
    manufacturer = row.get("Manufacturer")
    row["PhilipsScaleSlope"] = (
        scale_slope if isinstance(manufacturer, str) and "PHILIPS" in manufacturer.upper() else None
    )
    if row.get("LabelType") is None:
        # Philips ASL: which frames are CONTROL and which LABEL (the classic export's only trace)
        row["LabelType"] = _to_str(private.get("philips_label_type")) if private else None
    kind, n_mosaic, normal = _mosaic_claim(row, private)
    row["is_mosaic"] = kind is not None
    row["NumberOfImagesInMosaic"] = n_mosaic
    row["mosaic_kind"] = kind
    row["SliceNormalVector"] = normal
    row["tile_positions"] = private.get("uih_vframe") if kind == "UIH" and private else None
    if row.get("NumberOfFrames") is None and row.get("has_pixels"):
        row["NumberOfFrames"] = 1
    return row


def _mosaic_claim(
    row: dict[str, Any], private: dict[str, Any]
) -> tuple[str | None, int | None, tuple[float, ...] | None]:
    """Which vendor mosaic an image says it is (``"SIEMENS"``, ``"UIH"`` or None), its tiles.

    Siemens: ImageType ``MOSAIC``; the count from (0019,100A), else the CSA image header,
    else the number of MosaicRefAcqTimes (0019,1029); the CSA header's SliceNormalVector (the
    order the tiles are stored in) when it has one. United Imaging: ImageType ``VFRAME``, or
    the grid count (0065,xx50) in an image whose Manufacturer starts with "UI" (as dcm2niix
    reads it). A claim without a count keeps ``None``: :mod:`dicomxr.mosaic` reports it.
    """
    vframe, mosaic = _image_type_flags(row.get("ImageType"))
    uih_n = _to_int(private.get("uih_grid_n")) if private else None
    if vframe or (
        uih_n is not None and str(row.get("Manufacturer") or "").strip().upper().startswith("UI")
    ):
        return "UIH", uih_n, None
    if not mosaic:
        return None, None, None
    n = _to_int(private.get("siemens_mosaic_n")) if private else None
    normal = None
    if private and private.get("siemens_csa_image") is not None:
        csa_n, normal = _mosaic_from_csa(private["siemens_csa_image"])
        n = csa_n if n is None else n
    if n is None and private:
        times = private.get("siemens_slice_times")
        if isinstance(times, (list, tuple)) and len(times) > 1:
            n = len(times)
    return "SIEMENS", n, normal


# ImageType -> (says VFRAME, says MOSAIC): a scan meets few distinct values
_IMAGE_TYPE_FLAGS: dict[Any, tuple[bool, bool]] = {}


def _image_type_flags(image_type: Any) -> tuple[bool, bool]:
    """Tell whether ImageType has the token ``VFRAME``, and whether it has ``MOSAIC``."""
    try:
        hit = _IMAGE_TYPE_FLAGS.get(image_type)
        hashable = True
    except TypeError:  # not hashable (a list): decide without the memo
        hit, hashable = None, False
    if hit is None:
        tokens = {str(v).strip().upper() for v in image_type or ()}
        hit = ("VFRAME" in tokens, "MOSAIC" in tokens)
        if hashable:
            if len(_IMAGE_TYPE_FLAGS) >= 1024:
                _IMAGE_TYPE_FLAGS.clear()
            _IMAGE_TYPE_FLAGS[image_type] = hit
    return hit


def _mosaic_from_csa(raw: bytes) -> tuple[int | None, tuple[float, ...] | None]:
    """NumberOfImagesInMosaic and SliceNormalVector from a Siemens CSA image header.

    Read with :mod:`nibabel.nicom` (``dicomxr[nifti]``); ``(None, None)`` without nibabel
    or when the header is damaged.
    """
    try:
        with warnings.catch_warnings():
            # nibabel warns that its DICOM readers are experimental on import
            warnings.simplefilter("ignore", UserWarning)
            from nibabel.nicom import csareader

            csa = csareader.read(bytes(raw))
            n_mosaic = _to_int(csareader.get_n_mosaic(csa))
    except Exception as exc:  # a broken private header must not stop the scan
        logger.debug("could not read the CSA image header: %s", exc)
        return None, None
    try:
        normal = _to_floats(list(csareader.get_slice_normal(csa)))
    except Exception:  # no SliceNormalVector: the tiles follow the cross product
        return n_mosaic, None
    if normal is None or len(normal) != 3 or not np.isfinite(normal).all():
        normal = None
    return n_mosaic, normal


# ----------------------------------------------------------------------------------------
# reading one file with pydicom (reference path and fallback)


def _private_creators(ds: Any) -> dict[tuple[int, int], str]:
    """(group, block) -> upper-cased private creator, for the vendor groups we read."""
    out: dict[tuple[int, int], str] = {}
    for tag in list(ds.keys()):
        group, elem = tag >> 16, tag & 0xFFFF
        if group in _PRIVATE_GROUPS and 0x10 <= elem < 0x100:
            value = ds[tag].value
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            out[(group, elem)] = str(value).strip(" \x00").upper()
    return out


def _pydicom_private(ds: Any) -> dict[str, Any]:
    creators = _private_creators(ds)
    private: dict[str, Any] = {}
    for (group, block), creator in creators.items():
        for (g, name, offset), key in _PRIVATE.items():
            if g != group or name != creator:
                continue
            tag = (group << 16) | (block << 8) | offset
            if tag not in ds:
                continue
            elem = ds[tag]
            value = elem.value
            if key == "uih_vframe":
                private[key] = _vframe_positions(value, True)
                continue
            if elem.VR in ("UN", "OB") and key != "siemens_csa_image" and isinstance(value, bytes):
                value = _decode_un(key, value, _encoding(ds)[1] is not False)
            private[key] = value
    return private


def _vframe_positions(value: Any, implicit: bool) -> tuple[tuple[float, ...], ...] | None:
    """Every tile's position from a UIH "MR VFrame Sequence" (raw bytes or pydicom items)."""
    from dicomxr import _functional_groups as groups

    try:
        if isinstance(value, (bytes, bytearray)):  # raw, or of unknown VR (implicit VR inside)
            return groups.positions_from_raw(bytes(value), implicit)
        return groups.positions_from_dataset(value)
    except Exception as exc:  # no or damaged sequence: the tiles follow the slice normal
        logger.debug("no UIH VFrame positions: %s", exc)
        return None


# how the vendor private values are stored, for files whose private VRs are unknown (UN)
_PRIVATE_VR: dict[str, str] = {
    "siemens_mosaic_n": "US",
    "siemens_bval": "IS",
    "siemens_bvec": "FD",
    "siemens_slice_times": "FD",
    "uih_grid_n": "DS",
    "ge_bval": "IS",
    "ge_bvec_x": "DS",
    "ge_bvec_y": "DS",
    "ge_bvec_z": "DS",
    "philips_bval": "FL",
    "philips_bvec_x": "FL",
    "philips_bvec_y": "FL",
    "philips_bvec_z": "FL",
    "philips_label_type": "CS",
    "philips_scale_slope": "FL",
}


def _decode_un(key: str, raw: bytes, little_endian: bool = True) -> Any:
    """Decode a private value of VR UN (implicit VR files) by its known real VR."""
    vr = _PRIVATE_VR.get(key)
    end = "<" if little_endian else ">"
    if vr in ("IS", "DS"):
        text = raw.decode("latin-1").strip(" \x00")
        parts = [p.strip() for p in text.split("\\")]
        return parts if len(parts) > 1 else parts[0]
    fmt = {"US": "H", "FD": "d", "FL": "f"}.get(vr or "")
    if fmt is None:
        return raw
    size = struct.calcsize(fmt)
    n = len(raw) // size
    if n == 0:
        return None
    values = struct.unpack(f"{end}{n}{fmt}", raw[: n * size])
    return list(values) if n > 1 else values[0]


def _pydicom_value(elem: Any, kind: str) -> Any:
    value = elem.value
    if value is None:
        return None
    if kind in ("str", "uid"):
        if isinstance(value, bytes):
            value = value.decode("latin-1").strip(" \x00")
        return _CONVERT[kind](value)
    if isinstance(value, (bytes, bytearray)):
        # numeric values stored as binary VRs (US/FD...) are already decoded by pydicom;
        # bytes here means an unknown-VR element we do not trust
        return None
    return _CONVERT[kind](value)


def read_header_pydicom(
    path: str | os.PathLike[str] | Any, keys: tuple[Key, ...] = ()
) -> dict[str, Any]:
    """Read the catalog row of one file with pydicom (the reference reader).

    Parameters
    ----------
    path
        A DICOM file, or a seekable binary file object (a remote object's
        :class:`dicomxr.sources.RangeFile`).
    keys
        Extra header fields to read (from :func:`dicomxr._keys.resolve_keys`).

    Returns
    -------
    dict
        The catalog columns except ``path``, ``file_size`` and ``mtime``.

    Raises
    ------
    ValueError
        When the file is not DICOM or cannot be read; the message is the reason.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    local = isinstance(path, (str, os.PathLike))
    if local:
        path = os.fspath(path)
    with open(path, "rb") if local else path as fp:
        head = fp.read(132)
        fp.seek(0)
        if len(head) == 0:
            raise _Skip("empty file (0 bytes)")
        is_part10 = len(head) >= 132 and head[128:132] == b"DICM"
        if not is_part10 and not _plausible_raw_dataset(head):
            raise _Skip("not a DICOM file (no 'DICM' marker and no recognisable first element)")
        if is_part10:
            _check_after_marker(fp)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(
                    _Window(fp, _PYDICOM_WINDOW),
                    stop_before_pixels=True,
                    force=not is_part10,
                    defer_size=_DEFER_SIZE,
                )
                if fp.tell() >= _PYDICOM_WINDOW and _file_size(fp) > fp.tell():
                    raise _Skip(
                        f"header walk stopped after {_PYDICOM_WINDOW >> 20} MiB without "
                        "reaching the pixel data (not a plausible DICOM header)"
                    )
                if ds.file_meta.get("TransferSyntaxUID") in _DEFLATED:
                    pixel_offset = -1
                    # the pixel data sits in the deflated stream: its offset means nothing
                    # in the file, so only record whether it exists
                    has_pixels = _deflated_has_pixels(path if local else fp)
                else:
                    here = fp.tell()
                    tag_bytes = fp.read(4)
                    has_pixels = len(tag_bytes) == 4 and (
                        struct.unpack("<HH", tag_bytes) in _PIXEL_PAIRS_LE
                        or struct.unpack(">HH", tag_bytes) in _PIXEL_PAIRS_LE
                    )
                    pixel_offset = here if has_pixels else -1
        except InvalidDicomError as exc:
            raise _Skip(f"not a DICOM file: {exc}") from None
        except _Skip:
            raise
        except Exception as exc:
            raise _Skip(f"unreadable header ({failure_reason(exc)})") from None
        truncated = False
        if has_pixels and pixel_offset >= 0:
            truncated = _pixel_value_truncated(fp, pixel_offset, ds)
    if len(ds) == 0:
        raise _Skip("not a DICOM file (no data elements could be read)")
    row: dict[str, Any] = {}
    with warnings.catch_warnings():
        # pydicom converts values lazily and warns about invalid ones: the catalog
        # turns an unparseable value into a missing one instead
        warnings.simplefilter("ignore")
        try:
            for tag, (keyword, kind) in _TAGS.items():
                elem = ds.get(tag)
                row[keyword] = None if elem is None else _pydicom_value(elem, kind)
            private = _pydicom_private(ds)
            row["RealWorldValueMapping"] = _pydicom_rwv(ds)
            for key in keys:
                row[key.name] = value_from_pydicom(ds, key)
            ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
            if ts is None:
                ts = _guess_ts(ds)
            row["TransferSyntaxUID"] = str(ts) if ts else None
            if row["SOPClassUID"] is None and hasattr(ds, "file_meta"):
                msc = ds.file_meta.get("MediaStorageSOPClassUID")
                row["SOPClassUID"] = str(msc) if msc else None
        except Exception as exc:
            # an element pydicom cannot decode at all (a VR that is no VR, a value of
            # the wrong size): the header is damaged where the catalog needs it
            raise _Skip(f"damaged header ({type(exc).__name__}: {exc})") from None
    if row["SOPClassUID"] == _MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        raise _Skip(_DIRECTORY_FILE)
    row["pixel_data_offset"] = pixel_offset
    row["has_pixels"] = has_pixels
    row["pixel_data_truncated"] = truncated
    row["is_enhanced"] = _PERFRAME_TAG in ds
    row["per_frame"] = _per_frame_from_dataset(ds, row) if row["is_enhanced"] else None
    if keys and row["is_enhanced"]:
        _group_key_values_pydicom(row, ds, keys)
    return _finish_row(row, private)


def _group_key_values_pydicom(row: dict[str, Any], ds: Any, keys: tuple[Key, ...]) -> None:
    """Find requested keys in the functional groups of a file read by pydicom.

    The same order as :func:`_group_key_values`: the shared item, then each frame's item.
    """
    from dicomxr._functional_groups import PER_FRAME, SHARED, dataset_holding

    missing = [k for k in keys if row[k.name] is None]
    if not missing:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            shared = ds.get(SHARED)
            shared_item = shared.value[0] if shared is not None and shared.value else None
            per_frame = ds.get(PER_FRAME)
            frames = list(per_frame.value) if per_frame is not None else []
            for key in missing:
                holder = dataset_holding(shared_item, key.tag)
                if holder is not None:
                    row[key.name] = value_from_pydicom(holder, key)
                    continue
                values = []
                for item in frames:
                    holder = dataset_holding(item, key.tag)
                    values.append(None if holder is None else value_from_pydicom(holder, key))
                _put_frame_values(row, key.name, values)
        except Exception as exc:  # damaged groups: the per-frame table says so already
            logger.debug("requested keys not searched in the functional groups: %s", exc)


def _per_frame_from_dataset(ds: Any, row: dict[str, Any]) -> dict[str, tuple[Any, ...]] | str:
    """Return the per-frame table of an enhanced file read by pydicom, or why there is none."""
    from dicomxr._functional_groups import table_from_dataset

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return table_from_dataset(ds, _frame_count(row))
    except Exception as exc:  # a damaged functional group: the frames keep file values
        return f"functional groups unreadable: {failure_reason(exc)}"


_PIXEL_PAIRS_LE = frozenset({(0x7FE0, 0x0010), (0x7FE0, 0x0009), (0x7FE0, 0x0008)})


def _pydicom_rwv(ds: Any) -> tuple[Any, ...] | None:
    """Return the top-level Real World Value Mapping Sequence in the catalog's tuple form."""
    from dicomxr.scaling import real_world_mappings

    try:
        elem = ds.get(_RWV_TAG)
        if elem is None or elem.VR != "SQ":
            return None
        return real_world_mappings(elem.value)
    except Exception as exc:  # a damaged mapping must not skip the file: no mapping
        logger.debug("unreadable Real World Value Mapping Sequence: %s", exc)
        return None


def _encoding(ds: Any) -> tuple[bool | None, bool | None]:
    """(implicit VR, little endian) of the data set as pydicom read it."""
    enc = getattr(ds, "original_encoding", None)
    if enc is None:
        return None, None
    return enc[0], enc[1]


def _guess_ts(ds: Any) -> str | None:
    """Transfer syntax of a file without meta information, as pydicom read it."""
    implicit, little = _encoding(ds)
    if implicit is None or little is None:
        return None
    if implicit:
        return "1.2.840.10008.1.2" if little else None
    return "1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2"


# the pydicom fallback walks at most this far into a file (a DICM marker followed by
# gigabytes of zeros is walked at a few MB/s); values longer than _DEFER_SIZE are skipped
# by seeking, so a sound header never comes near it
_PYDICOM_WINDOW = 64 << 20
_DEFER_SIZE = 1 << 20
# a deflated data set (header and pixels) larger than this once inflated is not read
INFLATE_LIMIT = 256 << 20


class _Window:
    """A read-only view of the first ``limit`` bytes of a binary file (reads stop there)."""

    def __init__(self, fp: Any, limit: int) -> None:
        self._fp = fp
        self._limit = limit
        self.name = getattr(fp, "name", None)

    def read(self, n: int = -1) -> bytes:
        room = max(0, self._limit - self._fp.tell())
        return self._fp.read(room if n is None or n < 0 else min(n, room))

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._fp.seek(offset, whence)

    def tell(self) -> int:
        return self._fp.tell()

    def close(self) -> None:
        """Leave the underlying file to its owner."""


def _check_after_marker(fp: Any) -> None:
    """Skip a file whose DICM marker is followed by nothing but zeros (or nothing)."""
    fp.seek(132)
    after = fp.read(4096)
    fp.seek(0)
    if not after.strip(b"\x00"):
        raise _Skip("no data elements after the 'DICM' marker (only zero bytes)")
    if _deflated_meta(after):
        fp.seek(132)
        _check_inflated_size(fp)
        fp.seek(0)


def _deflated_meta(head: bytes) -> bool:
    return any(ts.encode() in head for ts in _DEFLATED)


def _check_inflated_size(fp: Any, limit: int = INFLATE_LIMIT) -> None:
    """Skip a deflated file that inflates past ``limit`` bytes (a decompression bomb).

    ``fp`` is anywhere before the deflated stream, which starts after the meta group.
    """
    from pydicom.filereader import _read_file_meta_info

    try:
        _read_file_meta_info(fp)
    except Exception:
        return  # pydicom will say what is wrong with the meta information
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while chunk := fp.read(1 << 20):
            while chunk:
                total += len(d.decompress(chunk, 1 << 22))
                if total > limit:
                    raise _Skip(f"deflated data set inflates past {limit >> 20} MiB (not read)")
                chunk = d.unconsumed_tail
            if d.eof:
                return
    except zlib.error:
        return  # pydicom reports the broken stream


def _file_size(fp: Any) -> int:
    if hasattr(fp, "fileno"):
        return os.fstat(fp.fileno()).st_size
    return fp.size


def _deflated_has_pixels(path: str | Any) -> bool:
    import pydicom

    if not isinstance(path, str):
        path.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, defer_size=64)
    return any(t in ds for t in _PIXEL_TAGS)


def _pixel_value_truncated(fp: Any, offset: int, ds: Any) -> bool:
    """Tell whether the Pixel Data value runs past the end of the file (or its fragments do)."""
    fp.seek(0, os.SEEK_END)
    size = fp.tell()
    fp.seek(offset)
    head = fp.read(12)
    if len(head) < 8:
        return True
    little = _encoding(ds)[1] is not False
    end = "<" if little else ">"
    # the element itself tells: explicit VR puts the VR where implicit VR has the length
    implicit = head[4:6] not in (b"OB", b"OW", b"OD", b"OF", b"OL", b"OV", b"UN")
    if implicit:
        (length,) = struct.unpack(end + "I", head[4:8])
        start = offset + 8
    else:
        if len(head) < 12:
            return True
        (length,) = struct.unpack(end + "I", head[8:12])
        start = offset + 12
    if length == 0xFFFFFFFF:
        from dicomxr._header import encapsulated_complete

        return not encapsulated_complete(os.fspath(fp.name) if hasattr(fp, "fileno") else fp, start)
    return start + length > size


def _plausible_raw_dataset(head: bytes) -> bool:
    """Whether a file without preamble starts like a DICOM data set (meta or group 0008)."""
    if len(head) < 8:
        return False
    group_le, elem_le = struct.unpack_from("<HH", head)
    group_be, _ = struct.unpack_from(">HH", head)
    if group_le in (0x0002, 0x0008) and elem_le < 0x0100:
        return True
    return group_be in (0x0002, 0x0008)


# ----------------------------------------------------------------------------------------
# reading one file with the fast header reader

# dictionary VRs of the catalog's tags: implicit VR files do not carry them
_TAG_VR: dict[int, str] = {
    0x00080005: "CS",
    0x00080008: "CS",
    0x00080016: "UI",
    0x00080018: "UI",
    0x00080020: "DA",
    0x00080022: "DA",
    0x0008002A: "DT",
    0x00080030: "TM",
    0x00080032: "TM",
    0x00080033: "TM",
    0x00080050: "SH",
    0x00080060: "CS",
    0x00080070: "LO",
    0x00081030: "LO",
    0x0008103E: "LO",
    0x00081090: "LO",
    0x00100010: "PN",
    0x00100020: "LO",
    0x00180050: "DS",
    0x00180081: "DS",
    0x00180086: "IS",
    0x00180088: "DS",
    0x00181060: "DS",
    0x00181120: "DS",
    0x00189087: "FD",
    0x00189089: "FD",
    0x0020000D: "UI",
    0x0020000E: "UI",
    0x00200010: "SH",
    0x00200011: "IS",
    0x00200012: "IS",
    0x00200013: "IS",
    0x00200032: "DS",
    0x00200037: "DS",
    0x00200052: "UI",
    0x00200100: "IS",
    0x00200105: "IS",
    0x00201041: "DS",
    0x00209128: "UL",
    0x00280002: "US",
    0x00280004: "CS",
    0x00280006: "US",
    0x00280008: "IS",
    0x00280010: "US",
    0x00280011: "US",
    0x00280030: "DS",
    0x00280100: "US",
    0x00280101: "US",
    0x00280102: "US",
    0x00280103: "US",
    0x00281050: "DS",
    0x00281051: "DS",
    0x00281052: "DS",
    0x00281053: "DS",
    0x00281054: "LO",
    0x00281055: "LO",
    0x00281056: "CS",
    0x3004000C: "DS",
}
_BINARY_FMT = {
    "US": "H",
    "SS": "h",
    "UL": "I",
    "SL": "i",
    "FL": "f",
    "FD": "d",
    "SV": "q",
    "UV": "Q",
}
# text VRs whose value is one string (backslash is not a value separator in them)
_SINGLE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})
_DEFAULT_CHARSETS = frozenset({"", "ISO_IR 100", "ISO_IR 6", "ISO 2022 IR 6"})

_PER_FRAME_TAGS = (0x52009230, 0x52009229)  # per-frame and shared functional groups
_FAST_WANTED = frozenset(_TAGS) | {0x00080005, _RWV_TAG, *_PER_FRAME_TAGS}
_FAST_PRESENCE = frozenset({_PERFRAME_TAG, 0x00041220})
_FAST_GROUPS: dict[int, frozenset[int]] = {
    group: frozenset(off for g, _, off in _PRIVATE if g == group) for group in _PRIVATE_GROUPS
}


def _decode_text(raw: bytes, vr: str, charset: list[str] | None) -> str:
    """Decode a text value the way pydicom does (padding stripped, items rstripped)."""
    if vr == "PN":
        raw = raw.rstrip(b"\x00 ")
    text = decode_text(raw, vr, charset)
    if vr in _SINGLE_TEXT_VRS:
        return text.rstrip("\x00 ")
    if vr in ("SH", "LO", "UC"):
        return "\\".join(v.rstrip("\x00 ") for v in text.split("\\"))
    return text.rstrip("\x00 ")


def _raw_value(raw: bytes, vr: str, kind: str, charset: list[str] | None) -> Any:
    """Decode a raw value of VR ``vr`` into the catalog's ``kind``, as pydicom would."""
    fmt = _BINARY_FMT.get(vr)
    if fmt is not None:
        size = struct.calcsize(fmt)
        n = len(raw) // size
        if n == 0:
            return None
        values = struct.unpack_from(f"<{n}{fmt}", raw)
        return _CONVERT[kind](list(values) if n > 1 else values[0])
    if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "SQ", "UN", "AT"):
        return None
    text = _decode_text(raw, vr, charset)
    if kind in ("str", "uid"):
        return text or None
    if text == "":
        return None
    if vr in ("IS", "DS"):
        text = text.strip()
    parts = text.split("\\")
    if kind == "strs":
        return tuple(parts)
    return _CONVERT[kind](parts if len(parts) > 1 else parts[0])


# Fast converters for values in their dictionary VR: each either returns what the
# general decoder (and pydicom) would, or raises so that the general decoder takes over.
_unpack_us = struct.Struct("<H").unpack
_unpack_ul = struct.Struct("<I").unpack
_unpack_fd = struct.Struct("<d").unpack


def _fast_plain(v: bytes) -> str | None:
    t = v.rstrip(b" \x00")
    return t.decode("latin-1") if t else None


def _fast_text(v: bytes) -> str | None:
    # ASCII without ESC decodes the same in every character set DICOM allows
    if not v.isascii() or b"\x1b" in v or b"\\" in v:
        raise ValueError("needs the general decoder")
    t = v.rstrip(b" \x00")
    return t.decode("ascii") if t else None


def _fast_strs(v: bytes) -> tuple[str, ...] | None:
    t = v.rstrip(b" \x00")
    return tuple(t.decode("latin-1").split("\\")) if t else None


def _fast_is(v: bytes) -> int:
    return int(v)


def _fast_ds(v: bytes) -> float:
    return float(v)


def _fast_ds_multi(v: bytes) -> tuple[float, ...]:
    return tuple(map(float, v.split(b"\\")))


def _fast_us(v: bytes) -> int:
    return _unpack_us(v)[0]


def _fast_ul(v: bytes) -> int:
    return _unpack_ul(v)[0]


def _fast_fd(v: bytes) -> float:
    return _unpack_fd(v)[0]


def _fast_fd_multi(v: bytes) -> tuple[float, ...]:
    n, rem = divmod(len(v), 8)
    if rem or not n:
        raise ValueError("not a whole number of doubles")
    return struct.unpack(f"<{n}d", v)


_FAST_BY_KIND_VR: dict[tuple[str, str], Callable[[bytes], Any]] = {
    ("uid", "UI"): _fast_plain,
    ("str", "CS"): _fast_plain,
    ("str", "DA"): _fast_plain,
    ("str", "TM"): _fast_plain,
    ("str", "DT"): _fast_plain,
    ("str", "SH"): _fast_text,
    ("str", "LO"): _fast_text,
    ("str", "PN"): _fast_text,
    ("strs", "CS"): _fast_strs,
    ("int", "IS"): _fast_is,
    ("int", "US"): _fast_us,
    ("int", "UL"): _fast_ul,
    ("float", "DS"): _fast_ds,
    ("float", "FD"): _fast_fd,
    ("floats", "DS"): _fast_ds_multi,
    ("floats", "FD"): _fast_fd_multi,
}
# attributes that differ from file to file within a series: not worth remembering
_PER_INSTANCE = frozenset(
    {
        "SOPInstanceUID",
        "InstanceNumber",
        "ImagePositionPatient",
        "SliceLocation",
        "AcquisitionTime",
        "ContentTime",
        "AcquisitionDateTime",
        "TriggerTime",
        "TemporalPositionIdentifier",
        "TemporalPositionIndex",
    }
)
_MEMO_LIMIT = 100_000
# tag -> (keyword, kind, dictionary VR as bytes, fast converter or None, shared in memo)
_FAST_SPEC: dict[int, tuple[str, str, bytes, Callable[[bytes], Any] | None, bool]] = {
    tag: (
        kw,
        kind,
        _TAG_VR[tag].encode(),
        _FAST_BY_KIND_VR.get((kind, _TAG_VR[tag])),
        kw not in _PER_INSTANCE,
    )
    for tag, (kw, kind) in _TAGS.items()
}
_EMPTY_ROW: dict[str, Any] = dict.fromkeys(
    [*(kw for kw, _ in _TAGS.values()), "RealWorldValueMapping"]
)


def _charset(elements: dict[int, tuple[bytes | None, bytes]]) -> list[str] | None:
    item = elements.get(0x00080005)
    if item is None:
        return None
    names = [v.strip() for v in item[1].decode("latin-1").rstrip("\x00 ").split("\\")]
    if all(n in _DEFAULT_CHARSETS for n in names):
        return None
    from pydicom.charset import convert_encodings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_encodings(names)


def read_header_fast(
    path: str | Any, size: int, memo: dict[Any, Any] | None = None, keys: tuple[Key, ...] = ()
) -> dict[str, Any] | None:
    """Read the catalog row of one file with the fast header reader.

    Parameters
    ----------
    path
        A DICOM file, or a remote object's :class:`dicomxr.sources.HeadReader`.
    size
        Its size in bytes.
    memo
        A dict shared by the calls of one scan, to convert repeated raw values once.
    keys
        Extra header fields to read in the same pass (from
        :func:`dicomxr._keys.resolve_keys`).

    Returns
    -------
    dict or None
        The catalog columns except ``path``, ``file_size`` and ``mtime``; ``None`` when
        the file is outside what the fast reader handles (then use pydicom).
    """
    raw = _instance_header(path, size, keys)
    if raw is None:
        return None
    elements = raw.elements
    groups = [elements.pop(tag, None) for tag in _PER_FRAME_TAGS]
    if memo is None:
        memo = {}
    charset = _memo_charset(elements, memo)
    if charset is _UNKNOWN_CHARSET:
        return None
    if len(memo) > _MEMO_LIMIT:
        memo.clear()  # a scan of a huge, varied tree: start afresh rather than grow
    row = dict(_EMPTY_ROW)
    for key in keys:
        row[key.name] = None
    has_private = _catalog_values(row, elements, raw.implicit, charset, memo)
    if keys:
        _key_values(row, elements, raw.implicit, charset, keys)
    row["TransferSyntaxUID"] = raw.transfer_syntax
    if row["SOPClassUID"] is None:
        msc = raw.meta.get(0x00020002)
        row["SOPClassUID"] = msc.rstrip(b"\x00 ").decode("ascii") or None if msc else None
    if row["SOPClassUID"] == _MEDIA_STORAGE_DIRECTORY:
        raise _Skip(_DIRECTORY_FILE)
    _pixel_columns(row, raw, size)
    # kept in the hot loop (a defined-length sequence), the tag is not in raw.present
    row["is_enhanced"] = _PERFRAME_TAG in raw.present or groups[0] is not None
    row["per_frame"] = (
        _per_frame_from_raw(groups, raw.implicit, row) if row["is_enhanced"] else None
    )
    if keys and row["is_enhanced"]:
        _group_key_values(row, groups, raw.implicit, charset, keys)
    return _finish_row(row, _fast_private(elements, raw.implicit) if has_private else {})


def _instance_header(path: str | Any, size: int, keys: tuple[Key, ...]) -> Any:
    """Walk one file's header (:func:`dicomxr._header.read_raw`); refuse what is no instance.

    ``None`` when the fast reader declines the file; :class:`_Skip` for a DICOMDIR or a
    header cut short.
    """
    from dicomxr._header import read_raw

    wanted = _wanted_with(keys) if keys else _FAST_WANTED
    raw = read_raw(path, size, wanted, _FAST_GROUPS, _FAST_PRESENCE, skip_directories=True)
    if raw is None:
        return None
    if raw.is_directory:
        raise _Skip(_DIRECTORY_FILE)
    if raw.truncated_at is not None:
        tag, offset = raw.truncated_at
        where = f"element ({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag >= 0 else "an element"
        raise _Skip(
            f"truncated header ({where} at byte {offset} runs past the end of the file, "
            f"{size} bytes)"
        )
    if 0x00041220 in raw.present:  # a directory record sequence: a DICOMDIR by content
        raise _Skip(_DIRECTORY_FILE)
    return raw


# a Specific Character Set the fast reader cannot map (pydicom then reads the file)
_UNKNOWN_CHARSET: Any = object()


def _memo_charset(elements: dict[int, tuple[bytes | None, bytes]], memo: dict[Any, Any]) -> Any:
    """Return the file's character sets (``None``: the default), decoded once per scan.

    :data:`_UNKNOWN_CHARSET` when one of them is unknown here.
    """
    key = ("charset", elements.get(0x00080005))
    charset = memo.get(key, memo)
    if charset is memo:
        try:
            charset = _charset(elements)
        except Exception:
            return _UNKNOWN_CHARSET
        memo[key] = charset
    return charset


def _catalog_values(
    row: dict[str, Any],
    elements: dict[int, tuple[bytes | None, bytes]],
    implicit: bool,
    charset: list[str] | None,
    memo: dict[Any, Any],
) -> bool:
    """Decode the catalog's attributes into ``row``; tell whether vendor private tags are there.

    Values that repeat across the files of a series (UIDs, sizes, spacing...) are converted
    once per scan: the fast converters ignore the character set, so their results can be
    shared through ``memo``. A value the fast converter refuses (or stored in another VR
    than the dictionary's) goes to the general decoder, which knows the corner cases.
    """
    has_private = False
    spec_of = _FAST_SPEC.get
    memo_get = memo.get
    for tag, item in elements.items():
        spec = spec_of(tag)
        if spec is None:
            if tag == _RWV_TAG:
                row["RealWorldValueMapping"] = _memo_rwv(item, implicit, memo)
            elif (tag >> 16) in _PRIVATE_GROUPS:
                has_private = True
            continue
        keyword, kind, dict_vr, fast, shared = spec
        if shared:
            key = (tag, item)
            hit = memo_get(key)
            if hit is not None:
                row[keyword] = hit[0]
                continue
        vr_bytes, value = item
        if fast is not None and (vr_bytes is None or vr_bytes == dict_vr):
            try:
                converted = fast(value)
            except (ValueError, UnicodeDecodeError, struct.error):
                pass
            else:
                row[keyword] = converted
                if shared:
                    memo[key] = (converted,)
                continue
        vr = _TAG_VR[tag] if implicit or vr_bytes in (None, b"UN") else vr_bytes.decode()
        row[keyword] = _raw_value(value, vr, kind, charset)
    return has_private


def _memo_rwv(item: tuple[bytes | None, bytes], implicit: bool, memo: dict[Any, Any]) -> Any:
    """Return the Real World Value Mapping; it repeats across a series, so parse it once."""
    key = ("rwv", implicit, item)
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = (_fast_rwv(item, implicit),)
    return hit[0]


def _key_values(
    row: dict[str, Any],
    elements: dict[int, tuple[bytes | None, bytes]],
    implicit: bool,
    charset: list[str] | None,
    keys: tuple[Key, ...],
) -> None:
    """Decode the requested keys the file has into ``row`` (see :mod:`dicomxr._keys`)."""
    for key in _EXTRA_TAGS[keys].values():
        item = elements.get(key.tag)
        if item is None:
            continue
        if implicit or item[0] in (None, b"UN"):
            creator = key.creator_tag
            vr = key.implicit_vr(None if creator is None else elements.get(creator, (0, None))[1])
        else:
            vr = item[0].decode()
        row[key.name] = value_from_raw(item[1], vr, charset)


def _group_key_values(
    row: dict[str, Any],
    groups: list[tuple[bytes | None, bytes] | None],
    implicit: bool,
    charset: list[str] | None,
    keys: tuple[Key, ...],
) -> None:
    """Find the requested keys an enhanced file keeps in its functional groups.

    A key the top level does not have is looked for in the shared item, then in each
    frame's item: one value for all frames goes into ``row``, values that vary go into the
    file's per-frame table (``row["per_frame"]``), so that they become a coordinate.
    """
    from dicomxr._functional_groups import raw_values_in_groups

    missing = [k for k in keys if row[k.name] is None]
    per_frame, shared = groups
    try:
        if missing and shared is not None:
            found = raw_values_in_groups(shared, implicit, _tags_of(missing))  # one item
            for key in missing:
                row[key.name] = _group_value(found[0] if found else {}, key, charset)
            missing = [k for k in missing if row[k.name] is None]
        if missing and per_frame is not None:
            frames = raw_values_in_groups(per_frame, implicit, _tags_of(missing))
            for key in missing:
                _put_frame_values(row, key.name, [_group_value(f, key, charset) for f in frames])
    except Exception as exc:  # damaged groups: the per-frame table says so already
        logger.debug("requested keys not searched in the functional groups: %s", exc)


def _tags_of(keys: list[Key]) -> frozenset[int]:
    """Return the tags to look for: the keys' and their private creators'."""
    return frozenset(t for k in keys for t in (k.tag, k.creator_tag) if t is not None)


def _group_value(
    found: dict[int, tuple[bytes | None, bytes]], key: Key, charset: list[str] | None
) -> Any:
    """Decode ``key``'s raw value found in one functional group item (``None``: not there)."""
    item = found.get(key.tag)
    if item is None:
        return None
    vr_bytes, value = item
    if vr_bytes in (None, b"UN"):
        creator = None if key.creator_tag is None else found.get(key.creator_tag, (0, None))[1]
        vr = key.implicit_vr(creator)
    else:
        vr = vr_bytes.decode()
    return value_from_raw(value, vr, charset)


def _put_frame_values(row: dict[str, Any], name: str, values: list[Any]) -> None:
    """Put a key's per-frame values: one value when all frames agree, else per frame."""
    if not values or all(v is None for v in values):
        return
    first = values[0]
    if all(type(v) is type(first) and v == first for v in values):
        row[name] = first
        return
    table = row["per_frame"]
    if isinstance(table, dict):  # an unreadable table keeps the file's values
        table[name] = tuple(values)


def _pixel_columns(row: dict[str, Any], raw: Any, size: int) -> None:
    """Where the pixel data is, and whether it runs past the end of the file."""
    has_pixels = raw.pixel_data_offset >= 0
    row["pixel_data_offset"] = raw.pixel_data_offset
    row["has_pixels"] = has_pixels
    if raw.pixel_data_length == 0xFFFFFFFF:
        truncated = not raw.encapsulated_complete
    else:
        truncated = raw.pixel_data_value_offset + raw.pixel_data_length > size
    row["pixel_data_truncated"] = bool(has_pixels and truncated)


# requested keys -> the wanted tags of the fast reader and tag -> key, built once per key set
# (a stable frozenset also keeps the header reader's memo of its tag sets warm)
_WANTED_WITH: dict[tuple[Key, ...], frozenset[int]] = {}
_EXTRA_TAGS: dict[tuple[Key, ...], dict[int, Key]] = {}


def _wanted_with(keys: tuple[Key, ...]) -> frozenset[int]:
    wanted = _WANTED_WITH.get(keys)
    if wanted is None:
        if len(_WANTED_WITH) > 32:
            _WANTED_WITH.clear()
            _EXTRA_TAGS.clear()
        wanted = _WANTED_WITH[keys] = _FAST_WANTED | {
            t for k in keys for t in (k.tag, k.creator_tag) if t is not None
        }
        _EXTRA_TAGS[keys] = {k.tag: k for k in keys}
    return wanted


def _frame_count(row: dict[str, Any]) -> int:
    """NumberOfFrames as the frame table counts it (missing or below 1: one frame)."""
    n = row.get("NumberOfFrames")
    return n if isinstance(n, int) and n >= 1 else 1


def _per_frame_from_raw(
    groups: list[tuple[bytes | None, bytes] | None], implicit: bool, row: dict[str, Any]
) -> dict[str, tuple[Any, ...]] | str:
    """Return the per-frame table from the groups the fast reader kept, or why there is none."""
    from dicomxr._functional_groups import table_from_raw

    per_frame, shared = groups
    if per_frame is None:
        return "functional groups unreadable: no Per-frame Functional Groups Sequence value"
    try:
        return table_from_raw(
            per_frame, shared, implicit, _frame_count(row), row.get("Manufacturer")
        )
    except Exception as exc:  # a damaged functional group: the frames keep file values
        return f"functional groups unreadable: {failure_reason(exc)}"


def _fast_rwv(item: tuple[bytes | None, bytes], implicit: bool) -> tuple[Any, ...] | None:
    from dicomxr.scaling import decode_raw_sequence

    vr, value = item
    try:
        return decode_raw_sequence(bytes(value), vr, implicit)
    except Exception as exc:  # a damaged mapping must not stop the scan: no mapping
        logger.debug("unreadable Real World Value Mapping Sequence: %s", exc)
        return None


def _fast_private(
    elements: dict[int, tuple[bytes | None, bytes]], implicit: bool
) -> dict[str, Any]:
    private: dict[str, Any] = {}
    creators: dict[tuple[int, int], str] = {}
    for tag, (_, value) in elements.items():
        group, elem = tag >> 16, tag & 0xFFFF
        if group in _PRIVATE_GROUPS and 0x10 <= elem < 0x100:
            creators[(group, elem)] = value.decode("latin-1").strip(" \x00").upper()
    for (group, block), creator in creators.items():
        for (g, name, offset), key in _PRIVATE.items():
            if g != group or name != creator:
                continue
            item = elements.get((group << 16) | (block << 8) | offset)
            if item is None:
                continue
            vr_bytes, value = item
            if key == "siemens_csa_image":
                private[key] = value
                continue
            if key == "uih_vframe":
                private[key] = _vframe_positions(value, implicit or vr_bytes in (None, b"UN"))
                continue
            vr = _PRIVATE_VR[key] if implicit or vr_bytes in (None, b"UN") else vr_bytes.decode()
            private[key] = _decode_private(value, vr)
    return private


def _decode_private(raw: bytes, vr: str) -> Any:
    fmt = _BINARY_FMT.get(vr)
    if fmt is not None:
        size = struct.calcsize(fmt)
        n = len(raw) // size
        if n == 0:
            return None
        values = struct.unpack_from(f"<{n}{fmt}", raw)
        return list(values) if n > 1 else values[0]
    text = raw.decode("latin-1").strip(" \x00")
    parts = [p.strip() for p in text.split("\\")]
    return parts if len(parts) > 1 else parts[0]


# ----------------------------------------------------------------------------------------
# one file: fast reader first, pydicom when it declines


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the catalog row of one file (header only).

    Uses the fast header reader for the common encodings and pydicom otherwise.

    Parameters
    ----------
    path
        A DICOM file.

    Returns
    -------
    dict
        Every catalog column for this file.

    Raises
    ------
    ValueError
        When the file cannot be catalogued; the message says why.
    """
    path = os.path.abspath(os.fspath(path))
    try:
        return _read_one(path, os.stat(path))
    except _Skip as exc:
        raise ValueError(f"{path}: {exc}") from None


def _read_one(
    path: str,
    st: os.stat_result,
    memo: dict[Any, Any] | None = None,
    keys: tuple[Key, ...] = (),
) -> dict[str, Any]:
    if not stat.S_ISREG(st.st_mode):
        # opening a FIFO would block the scan forever
        raise _Skip("not a regular file (a pipe, socket or device)")
    if st.st_size == 0:
        raise _Skip("empty file (0 bytes)")
    row = read_header_fast(path, st.st_size, memo, keys)
    if row is None:
        row = read_header_pydicom(path, keys)
    for key in keys:  # a key the file lacks (or a reader that found none) is missing
        row.setdefault(key.name, None)
    return _checked_row(row, path, st.st_size, st.st_mtime, None)


def _checked_row(
    row: dict[str, Any], path: str, size: int, mtime: float, etag: str | None
) -> dict[str, Any]:
    """Refuse a row nothing identifies, blank impossible geometry, add the file columns."""
    if not row["has_pixels"] and all(row[k] is None for k in _IDENTITY):
        # parsed as DICOM, but nothing in it identifies an instance: noise behind a
        # DICM marker, or a stray file that happens to start like an element
        raise _Skip(
            "no usable DICOM attributes (no SOP Class/Instance UID, Series UID, "
            "Modality or Pixel Data)"
        )
    _drop_impossible_geometry(row, path)
    row["path"] = path
    row["file_size"] = size
    row["mtime"] = mtime
    row["etag"] = etag
    return row


def plausible_orientation(iop: Any) -> bool:
    """Tell whether ImageOrientationPatient is two finite, unit-ish, non-parallel cosines.

    Lenient about rounding (norms within 0.5..1.5, ``|cos angle| < 0.5``): the planner's own
    tolerances judge real data; this only refuses values no geometry can come from (NaN,
    infinities, zero or parallel vectors, the wrong number of values).
    """
    if type(iop) is tuple and len(iop) == 6 and _all_floats(iop):
        verdict = _orientation_verdict(iop)
        if verdict is not None:
            return verdict
    try:
        v = np.asarray(iop, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    if v.shape != (6,) or not np.isfinite(v).all() or np.abs(v).max() > 10:
        return False
    row, col = v[:3], v[3:]
    nr, nc = float(np.linalg.norm(row)), float(np.linalg.norm(col))
    if not (0.5 < nr < 1.5 and 0.5 < nc < 1.5):
        return False
    return abs(float(row @ col)) / (nr * nc) < 0.5


# how far from a threshold the plain-float check of an orientation must be to decide alone
_NEAR = 1e-9


_ONLY_FLOAT = {float}


def _all_floats(values: tuple[Any, ...]) -> bool:
    return set(map(type, values)) == _ONLY_FLOAT


def _orientation_verdict(iop: tuple[float, ...]) -> bool | None:
    """:func:`plausible_orientation` of six floats in plain Python (a scan checks every file).

    ``None`` when a norm or the cosine lies so close to its threshold that rounding could
    decide: the array check then judges, as it always did.
    """
    a, b, c, d, e, f = iop
    # chained comparisons are False for NaN: finite and at most 10 in magnitude, in one test
    if not (
        -10.0 <= a <= 10.0
        and -10.0 <= b <= 10.0
        and -10.0 <= c <= 10.0
        and -10.0 <= d <= 10.0
        and -10.0 <= e <= 10.0
        and -10.0 <= f <= 10.0
    ):
        return False
    nr = math.sqrt(a * a + b * b + c * c)
    nc = math.sqrt(d * d + e * e + f * f)
    cosine = abs(a * d + b * e + c * f) / (nr * nc) if nr and nc else 0.0
    if (
        abs(nr - 0.5) < _NEAR
        or abs(nr - 1.5) < _NEAR
        or abs(nc - 0.5) < _NEAR
        or abs(nc - 1.5) < _NEAR
        or abs(cosine - 0.5) < _NEAR
    ):
        return None
    if not (0.5 < nr < 1.5 and 0.5 < nc < 1.5):
        return False
    return cosine < 0.5


def _finite_values(values: Any, n: int) -> bool:
    """Whether ``values`` are ``n`` finite numbers (plain floats checked without numpy)."""
    if type(values) is tuple and _all_floats(values):
        return len(values) == n and all(map(math.isfinite, values))
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return v.shape == (n,) and bool(np.isfinite(v).all())


def _plausible_spacing(spacing: Any) -> bool:
    """Whether PixelSpacing is two finite, positive numbers."""
    if type(spacing) is tuple and _all_floats(spacing):
        return len(spacing) == 2 and all(map(math.isfinite, spacing)) and min(spacing) > 0
    sp = np.asarray(spacing, dtype=np.float64)
    return sp.shape == (2,) and bool(np.isfinite(sp).all()) and not (sp <= 0).any()


def _drop_impossible_geometry(row: dict[str, Any], path: str) -> None:
    """Blank geometry values no image can have, so planning sets the file apart by name."""
    iop = row.get("ImageOrientationPatient")
    if iop is not None and not plausible_orientation(iop):
        logger.warning("%s: ImageOrientationPatient %s is not a valid orientation", path, iop)
        row["ImageOrientationPatient"] = None
    ipp = row.get("ImagePositionPatient")
    if ipp is not None and (len(ipp) != 3 or not _finite_values(ipp, 3)):
        logger.warning("%s: ImagePositionPatient %s is not a position", path, ipp)
        row["ImagePositionPatient"] = None
    spacing = row.get("PixelSpacing")
    if spacing is not None and not _plausible_spacing(spacing):
        logger.warning("%s: PixelSpacing %s is not a spacing", path, spacing)
        row["PixelSpacing"] = None


# ----------------------------------------------------------------------------------------
# sources


def _iter_source(
    source: Any,
    recursive: bool,
    skipped_out: list[dict[str, str]],
    explicit_out: set[str] | None = None,
    stats_out: _Stats | None = None,
) -> list[str]:
    """Expand a source into a list of absolute file paths (DICOMDIRs resolved).

    Files named directly (not found by walking a folder, a pattern or a DICOMDIR) are
    added to ``explicit_out``; the stats the walk of a folder took, to ``stats_out``.
    """
    if explicit_out is None:
        explicit_out = set()
    if isinstance(source, (str, os.PathLike)):
        return _expand_one(
            os.fspath(source), recursive, skipped_out, explicit_out, top=True, stats=stats_out
        )
    if isinstance(source, Iterable):
        out: list[str] = []
        for item in source:
            if not isinstance(item, (str, os.PathLike)):
                raise TypeError(
                    f"scan() got a list holding {type(item).__name__!r}; expected paths"
                )
            out.extend(
                _expand_one(
                    os.fspath(item),
                    recursive,
                    skipped_out,
                    explicit_out,
                    top=False,
                    stats=stats_out,
                )
            )
        return out
    raise TypeError(
        f"scan() expects a path, a glob pattern, a DICOMDIR or a list of paths, "
        f"not {type(source).__name__!r}"
    )


def _expand_one(
    item: str,
    recursive: bool,
    skipped_out: list[dict[str, str]],
    explicit_out: set[str],
    *,
    top: bool,
    stats: _Stats | None = None,
) -> list[str]:
    item = os.path.expanduser(item)
    if os.path.isdir(item):
        return _walk(item, recursive, skipped_out, stats)
    if os.path.isfile(item):
        path = os.path.abspath(item)
        # one look inside for a lone file; in long lists, only files named like a
        # directory file (DICOMDIR is the name PS3.10 gives it) are worth the extra read
        if (top or _looks_like_dicomdir_name(path)) and dicomdir.is_dicomdir(path):
            files, dangling = dicomdir.referenced_files(path)
            skipped_out.extend(dangling)
            if recursive and _damaged_directory(path, dangling):
                return files + _on_disk_besides(path, files, skipped_out)
            return files
        explicit_out.add(path)
        return [path]
    if os.path.exists(item):  # a pipe, socket or device: the reader skips it, naming it
        path = os.path.abspath(item)
        explicit_out.add(path)
        return [path]
    if any(c in item for c in _GLOB_CHARS):
        matches = _glob_paths(item)
        if not matches and top:
            raise FileNotFoundError(f"no files match the pattern {item!r}")
        out: list[str] = []
        for m in matches:
            if os.path.isdir(m):
                out.extend(_walk(m, recursive, skipped_out, stats))
            else:
                out.append(os.path.abspath(m))
        return out
    if top:
        raise FileNotFoundError(f"no such file or directory: {item!r}")
    skipped_out.append({"path": os.path.abspath(item), "reason": "file not found"})
    return []


_DIRECTORY_DAMAGE = (
    "truncated directory file",
    "unreadable directory file",
    "damaged directory record",
    "directory file without",
)


def _damaged_directory(path: str, dangling: list[dict[str, str]]) -> bool:
    return any(d["path"] == path and d["reason"].startswith(_DIRECTORY_DAMAGE) for d in dangling)


def _on_disk_besides(
    dicomdir: str, listed: list[str], skipped_out: list[dict[str, str]]
) -> list[str]:
    """Find the files under a damaged DICOMDIR's folder that it does not list."""
    known = set(listed) | {dicomdir}
    extra = [p for p in _walk(os.path.dirname(dicomdir), True, skipped_out) if p not in known]
    if extra:
        skipped_out.append(
            {
                "path": dicomdir,
                "reason": f"damaged directory file: {len(extra)} file(s) in its folder "
                "that it does not list were read too",
            }
        )
    return extra


def _walk(
    folder: str,
    recursive: bool,
    skipped_out: list[dict[str, str]] | None = None,
    stats_out: _Stats | None = None,
) -> list[str]:
    """Every file under ``folder`` in sorted order; linked sub-folders are followed once.

    One pass over the folders: an entry's type comes with the listing (no ``stat``, but for
    symbolic links); folders are ``stat``-ed for their device and inode, so that a folder
    reached a second time (a symbolic-link loop, or two links to one folder) is not read
    again but reported in ``skipped_out``. Files are ``stat``-ed only when ``stats_out``
    asks for their size and mtime (the persistent cache): in batches, by threads that
    need no GIL (:func:`_stat_files`), while the walk goes on.
    """
    folder = os.path.abspath(folder)
    try:
        st = os.stat(folder)
    except OSError:
        return []
    out: list[str] = []
    seen: dict[tuple[int, int], str] = {(st.st_dev, st.st_ino): folder}
    stack = [folder]
    with _StatBatches(stats_out) as stats:
        while stack:
            dirpath = stack.pop()
            files, subdirs = _list_folder(dirpath)
            out.extend(files)
            stats.add(files)
            if not recursive:
                break
            todo = []
            for sub, sub_st in subdirs:
                first = seen.setdefault((sub_st.st_dev, sub_st.st_ino), sub)
                if first == sub:
                    todo.append(sub)
                elif skipped_out is not None:
                    skipped_out.append(
                        {
                            "path": sub,
                            "reason": f"symbolic link to a folder already scanned ({first}; a "
                            "link loop or a second link): not read twice",
                        }
                    )
            stack.extend(reversed(todo))
    return out


def _list_folder(folder: str) -> tuple[list[str], list[tuple[str, os.stat_result]]]:
    """List the files (sorted paths) and sub-folders (path, stat) of one folder.

    An entry that is not a folder (or a link to one) is a file, a dangling link included:
    the reader reports it. A folder that cannot be listed gives nothing, as
    :func:`os.walk` does.
    """
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=_entry_name)
    except OSError:
        return [], []
    prefix = folder if folder.endswith(os.sep) else folder + os.sep
    files: list[str] = []
    subdirs: list[tuple[str, os.stat_result]] = []
    for entry in entries:
        try:
            # the listing's file type; a stat only for a link (or where the type is unknown)
            if entry.is_dir():
                subdirs.append((prefix + entry.name, entry.stat()))
                continue
        except OSError:  # gone meanwhile, or a link that cannot be followed: a file
            pass
        files.append(prefix + entry.name)
    return files, subdirs


_entry_name = operator.attrgetter("name")

#: files per batch ``stat``-ed by one thread for the cache's comparison
_STAT_BATCH = 4096


class _StatBatches:
    """Collect the size and mtime of files listed in order, ``stat``-ed in worker threads.

    A no-op when ``stats_out`` is ``None``. Leaving the ``with`` block waits for every
    batch and appends to ``stats_out`` in the order the files were added.
    """

    def __init__(self, stats_out: _Stats | None) -> None:
        self.stats_out = stats_out
        self.pending: list[str] = []
        self.futures: list[Any] = []
        self.executor: Any = None

    def __enter__(self) -> _StatBatches:
        return self

    def add(self, paths: list[str]) -> None:
        if self.stats_out is None:
            return
        self.stats_out.paths.extend(paths)
        self.pending.extend(paths)
        if len(self.pending) >= _STAT_BATCH:
            self._submit()

    def _submit(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        if self.executor is None:
            threads = min(4, os.cpu_count() or 1)
            self.executor = ThreadPoolExecutor(threads, thread_name_prefix="dicomxr-stat")
        self.futures.append(self.executor.submit(_stat_files, self.pending))
        self.pending = []

    def __exit__(self, *exc: object) -> None:
        out = self.stats_out
        try:
            if out is None or exc[0] is not None:
                return
            for future in self.futures:
                size, mtime_ns = future.result()
                out.size.append(size)
                out.mtime_ns.append(mtime_ns)
            size, mtime_ns = _stat_files(self.pending)  # the last few, here
            out.size.append(size)
            out.mtime_ns.append(mtime_ns)
        finally:
            if self.executor is not None:
                self.executor.shutdown(wait=True)


def _stat_files(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Return the size and mtime (ns) of files, following links (-1 where ``stat`` fails).

    With pyarrow (which the cache needs) the files are ``stat``-ed by its file system in
    C++ without holding the GIL, so that threads really ``stat`` in parallel
    (:func:`os.stat` spends about a third of its time building its result under the GIL).
    Without it, or where it fails as a whole (a name that is not UTF-8), one
    :func:`os.stat` each.
    """
    n = len(paths)
    infos = _arrow_file_info(paths)
    if infos is not None:
        sizes = [info.size for info in infos]
        mtimes = [info.mtime_ns for info in infos]
        if None not in sizes and None not in mtimes:
            return np.array(sizes, np.int64), np.array(mtimes, np.int64)
        pairs = [(-1, _catalog_cache.UNTRUSTED) if s is None or m is None else (s, m)
                 for s, m in zip(sizes, mtimes, strict=True)]  # fmt: skip
    else:
        pairs = [_stat_pair(p) for p in paths]
    if not n:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    size, mtime = zip(*pairs, strict=True)
    return np.array(size, np.int64), np.array(mtime, np.int64)


def _stat_pair(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return -1, _catalog_cache.UNTRUSTED
    return st.st_size, st.st_mtime_ns


def _arrow_file_info(paths: Sequence[str]) -> list[Any] | None:
    """Return pyarrow's file information for local paths, or ``None`` when it cannot tell."""
    try:
        from pyarrow import fs
    except ImportError:
        return None
    try:
        return fs.LocalFileSystem().get_file_info(list(paths))
    except Exception:  # a name Arrow cannot encode, a folder it may not search: os.stat
        return None


def _glob_paths(pattern: str) -> list[str]:
    """Paths matching a glob pattern; a ``**`` pattern walks its base folder link-safely.

    :func:`glob.glob` follows linked folders under ``**`` with no loop check: one loop
    lists every file dozens of times, two never finish.
    """
    if "**" not in pattern:
        return sorted(_glob.glob(pattern, recursive=True))
    parts = pattern.split(os.sep)
    first = next(i for i, p in enumerate(parts) if any(c in p for c in _GLOB_CHARS))
    bases = _glob.glob(os.sep.join(parts[:first]) or ".") if first else ["."]
    pattern_abs = os.path.abspath(pattern)
    shallow = pattern_abs.replace("**" + os.sep, "")
    out = []
    for base in bases:
        if not os.path.isdir(base):
            continue
        for path in _walk_all(base):
            if fnmatch.fnmatchcase(path, pattern_abs) or fnmatch.fnmatchcase(path, shallow):
                if not any(c.startswith(".") for c in os.path.relpath(path, base).split(os.sep)):
                    out.append(path)
    return sorted(out)


def _walk_all(base: str) -> list[str]:
    """Every folder and file under ``base`` (linked folders once), for pattern matching."""
    files = _walk(base, True)
    folders = {os.path.dirname(f) for f in files}
    return sorted(folders | set(files))


def _looks_like_dicomdir_name(path: str) -> bool:
    name = os.path.basename(path).upper()
    return name.startswith("DICOMDIR") or name.startswith("DIRFILE")


# ----------------------------------------------------------------------------------------
# public API


def scan(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    recursive: bool = True,
    progress: bool | None = None,
    warn: bool = True,
    cache: bool | str | os.PathLike[str] = False,
    workers: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    keys: Sequence[str | int | tuple[int, int]] | str | None = None,
    client: Any = None,
) -> pd.DataFrame:
    """Scan DICOM headers into a catalog: one row per instance.

    Only headers are read (up to the Pixel Data element). Files that are not DICOM or
    cannot be read never stop the scan; they are listed with a reason in
    ``df.attrs["skipped"]`` (see :func:`skipped`).

    Parameters
    ----------
    source
        A file, a list of paths, a glob pattern (``"data/**/*.dcm"``), a directory tree,
        or a DICOMDIR file (nested DIRFILEs are followed; referenced file IDs resolve
        from the file-set root, the DICOMDIR's folder; references to missing files are
        reported as skipped). Also a zip file, or a URL that fsspec opens
        (``s3://bucket/prefix/``, ``https://host/folder/``, ``zip://*::s3://bucket/x.zip``,
        a glob URL, a list of URLs): see :mod:`dicomxr.sources` and the guide's "Remote
        and packed sources". Remote headers are read by byte range, a head block per
        object and more only when the header needs it, in ``workers`` threads.
    recursive
        Descend into sub-folders of a directory source.
    progress
        Show a tqdm progress bar. ``None`` (default) shows it when the scan touches at
        least ``dicomxr.get_options()["progress_min_files"]`` files and is still running
        half a second after it started.
    warn
        Emit a :class:`~dicomxr.SkippedFileWarning` summarising skipped files that look
        like damaged DICOM (empty, truncated or unreadable headers, dangling DICOMDIR
        references). Non-DICOM files met in a folder (not named) are only reported.
    cache
        Keep a snapshot of the catalog in a persistent cache, so that scanning the same
        source again (in this or a later session) reads no header that has not changed:
        only new or modified files (by size and modification time) are read, removed ones
        dropped. Opt-in: ``True`` uses ``<user cache dir>/dicomxr/catalog`` (see
        :func:`dicomxr.data.cache_dir`; ``$DICOMXR_CACHE_DIR`` moves it), a path names
        another folder. One snapshot per source and set of ``keys``; nothing is written
        next to the data. Needs pyarrow (``dicomxr[cache]``). See the guide.
    workers
        Read headers in this many threads. Worth it on network file systems and cold
        disks, where waiting for each file dominates; on a local, cached tree one
        thread (the default) is as fast. Remote sources default to 16 threads.
    storage_options
        Options for fsspec when ``source`` is a URL or a zip file (credentials, endpoint,
        ``{"anon": True}``...). They are kept in ``df.attrs["storage_options"]`` so that
        :func:`dicomxr.open_series` of the catalog reads the pixels with them.
    keys
        Extra header fields to carry as catalog columns, read in the same pass as the
        rest: DICOM keywords (``["RepetitionTime", "FlipAngle"]``) or tag numbers, the way
        to ask for private attributes (``"0019,100C"``, ``"(0019,100C)"``,
        ``"0019100C"``, ``0x0019100C``, ``(0x0019, 0x100C)``). A keyword's column is the
        keyword, a private tag's is ``"gggg,eeee"``; values are numbers, text, tuples
        for multi-valued attributes, hexadecimal text for binary ones, missing where a file
        lacks the attribute. A key an enhanced file does not have at its top level is
        looked for in its shared functional groups, then in each frame's (values that
        differ per frame: ``None`` here, per frame in its ``per_frame`` table). Keys the
        catalog has are ignored; the names are in ``df.attrs["keys"]``.
    client
        A :class:`distributed.Client` (``True``: the session's default client,
        ``distributed.get_client()``): the headers are read by its workers, one task per
        batch of files, and the rows gathered here. The persistent cache is looked up and
        updated here, so only the files not in it are sent. ``None`` (default) reads in
        this process; so do remote sources (threads overlap their waiting).

    Returns
    -------
    pandas.DataFrame
        Columns as listed in :data:`COLUMNS` (DICOM keywords plus ``path``,
        ``file_size``, ``mtime``, ``etag``, ``pixel_data_offset``, ``is_mosaic``, ``is_enhanced``,
        ``has_pixels``, ``pixel_data_truncated``, ``frame_digests``). Missing values are
        ``None``/``NaN``/``<NA>``. ``pixel_data_offset`` is the byte offset of the Pixel
        Data element's tag, -1 when there is none or when it is not addressable in the file
        (deflated transfer syntax).

    Raises
    ------
    FileNotFoundError
        When ``source`` is a path that does not exist or a pattern that matches nothing.

    Notes
    -----
    Where the vendor columns come from, and what ``pixel_data_truncated`` means: see the
    module's documentation (:mod:`dicomxr.catalog`), as what ``frame_digests`` holds.

    Examples
    --------
    >>> import dicomxr
    >>> df = dicomxr.scan(dicomxr.data.sample_path())
    >>> df[["SeriesNumber", "InstanceNumber", "ImagePositionPatient"]].head()  # doctest: +SKIP
    >>> dicomxr.catalog.skipped(df)  # doctest: +SKIP
    """
    # a wrong key is refused before any file is touched
    extra = tuple(k for k in resolve_keys(keys) if k.name not in _SCHEMA)
    if not isinstance(source, (str, os.PathLike)) and isinstance(source, Iterable):
        source = list(source)  # walked twice: once for the cache's name, once for the files
    store = _open_cache(cache, source, recursive, extra) if cache else None
    started = _catalog_cache.now_ns()
    found = _find_files(source, recursive, storage_options, workers, stats=store is not None)
    df, skips = _catalog(found, store, started, _progress_choice(progress, len(found.paths)),
                         extra, client)  # fmt: skip
    found.skipped.extend(skips)
    df.attrs["skipped"] = found.skipped
    if extra:
        df.attrs["keys"] = [k.name for k in extra]
    if found.remote is not None and found.storage_options:
        df.attrs["storage_options"] = dict(found.storage_options)
    if found.skipped:
        logger.info("scan skipped %d file(s)", len(found.skipped))
    if warn:
        _warn_skipped(found.skipped, found.explicit)
    return df


@dataclass
class _Stats:
    """Size and mtime (ns) of the files a walk listed, in its order (-1: unknown).

    ``size`` and ``mtime_ns`` are arrays in chunks (one per batch of ``stat`` calls).
    """

    paths: list[str]
    size: list[np.ndarray]
    mtime_ns: list[np.ndarray]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the sizes and the mtimes as two arrays."""
        if not self.size:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(self.size), np.concatenate(self.mtime_ns)


@dataclass
class _Found:
    """The files a source names, in catalog order, and what finding them told."""

    paths: list[str]
    skipped: list[dict[str, str]]
    explicit: set[str]
    stats: _Stats = field(default_factory=lambda: _Stats([], [], []))
    remote: dict[str, Any] | None = None  # URL -> dicomxr.sources.Entry
    storage_options: Mapping[str, Any] | None = None
    workers: int | None = None


def _find_files(
    source: Any,
    recursive: bool,
    storage_options: Mapping[str, Any] | None,
    workers: int | None,
    stats: bool = False,
) -> _Found:
    """List the files of a source: walk folders, resolve DICOMDIRs, patterns and URLs.

    With ``stats``, the walk of a folder also takes the size and mtime of its files (for
    the persistent cache; a scan without it needs none).
    """
    if _maybe_remote(source) and _sources().is_remote_source(source):
        skipped: list[dict[str, str]] = []  # references a remote DICOMDIR cannot follow
        entries, storage_options = _sources().resolve(
            source, storage_options, recursive=recursive, skipped_out=skipped
        )
        remote = {e.url: e for e in entries}
        paths = list(remote)
        explicit = set(paths) if len(paths) == 1 else set()
        workers = _REMOTE_WORKERS if workers is None else workers
        return _Found(paths, skipped, explicit, {}, remote, storage_options, workers)
    found = _Found([], [], set(), workers=workers)
    walked = found.stats if stats else None
    paths = _iter_source(source, recursive, found.skipped, found.explicit, walked)
    # a file listed twice (glob + list, DICOMDIR + folder) is catalogued once; one
    # folder's walk lists each file once
    one_folder = isinstance(source, (str, os.PathLike)) and os.path.isdir(source)
    found.paths = paths if one_folder else list(dict.fromkeys(paths))
    return found


def _cache_source(source: Any, recursive: bool) -> str:
    """Name a source's snapshot: its absolute paths (or URLs) and ``recursive``."""

    def one(item: Any) -> str:
        text = os.fspath(item)
        return text if "://" in text else os.path.abspath(os.path.expanduser(text))

    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    return json.dumps([[one(i) for i in items], bool(recursive)])


def _open_cache(
    cache: bool | str | os.PathLike[str], source: Any, recursive: bool, extra: tuple[Key, ...]
) -> _catalog_cache.CatalogCache | None:
    """Open (and start loading) the snapshot of this source and these keys."""
    signature = (*COLUMNS, *(k.name for k in extra))
    try:
        key = _cache_source(source, recursive)
    except TypeError:
        return None  # not a source: _find_files says why
    return _catalog_cache.CatalogCache.open(cache, key, signature, tuple(k.name for k in extra))


def _catalog(
    found: _Found,
    store: _catalog_cache.CatalogCache | None,
    started: int,
    progress: tuple[bool, float],
    extra: tuple[Key, ...],
    client: Any,
) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Read what the snapshot does not hold, and put the catalog together.

    Returns the catalog and the files skipped, in order.
    """
    names = tuple(k.name for k in extra)
    snap = store.snapshot() if store is not None else None
    keys = _current_keys(found) if store is not None else _NO_KEYS
    plan = _Plan.make(found.paths, keys, snap)
    todo = plan.to_read.tolist()
    results = _read_files([found.paths[i] for i in todo], found, progress, extra, client)
    if snap is not None and plan.unchanged(results):
        frame, skips = snap.frame, plan.kept_skips(found.paths)  # digests as they were
    else:
        frame, skips = _merge(found.paths, plan, results, names)
        _put_frame_digests(frame, found.storage_options, found.workers)
    if store is not None and (snap is None or not plan.unchanged(results)):
        store.save(frame, _entries(found, keys, plan, results, frame, started))
    return _typed_keys(frame, names), skips


_NO_KEYS = (np.empty(0, np.int64), np.empty(0, np.int64))  # no cache: none compared


def _put_frame_digests(
    frame: pd.DataFrame, storage_options: Mapping[str, Any] | None, workers: int | None = None
) -> None:
    """Fill the ``frame_digests`` column: the stored frames' digests of colliding instances.

    Files whose SOPInstanceUID another file with readable pixel data reuses are either
    copies of one instance or different images under one UID, which only their decoded
    values tell apart (:func:`dicomxr.series.plan_series` sets copies apart). Their digests
    (:func:`dicomxr.pixels.frame_digests`) are computed here, once, so that planning opens
    no file; every other row is ``None``. A digest kept from the persistent cache (the row's
    file unchanged) is reused; rows that collide no more are cleared. The files are read in
    ``workers`` threads, as the headers were (remote objects: their waits overlap).
    """
    column = frame.columns.get_loc("frame_digests")
    old = frame.iloc[:, column].to_numpy()
    rows = _colliding_rows(frame)
    if not len(rows):
        if any(v is not None for v in old):  # the files it collided with are gone
            frame.isetitem(column, np.full(len(frame), None, dtype=object))
        return
    from dicomxr.pixels import frame_digests

    out = np.full(len(frame), None, dtype=object)
    todo = []
    for i in rows.tolist():
        if isinstance(old[i], tuple):  # from the snapshot: the file has not changed
            out[i] = old[i]
        else:
            todo.append(i)
    refs = [_row_dict(frame, i) for i in todo]

    def digests(row: dict[str, Any]) -> tuple[str, ...]:
        return frame_digests(row, storage_options)

    if workers is not None and workers > 1 and len(refs) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers, thread_name_prefix="dicomxr-digest") as ex:
            done = list(ex.map(digests, refs))
    else:
        done = list(map(digests, refs))
    for i, value in zip(todo, done, strict=True):
        out[i] = value
    frame.isetitem(column, out)


def _colliding_rows(frame: pd.DataFrame) -> np.ndarray:
    """Positions of the rows with readable pixel data whose SOPInstanceUID another such row has.

    One hash of the column (a few ms for 100,000 rows) when no UID repeats.
    """
    if len(frame) < 2:
        return np.empty(0, np.int64)
    readable = frame["has_pixels"].to_numpy(dtype=bool) & ~frame["pixel_data_truncated"].to_numpy(
        dtype=bool
    )
    uid = frame["SOPInstanceUID"]
    if not readable.all():
        uid = uid[readable]
    if uid.is_unique:
        return np.empty(0, np.int64)
    repeated = (uid.duplicated(keep=False) & uid.notna()).to_numpy(dtype=bool)
    return np.flatnonzero(readable)[repeated]


def _row_dict(frame: pd.DataFrame, i: int) -> dict[str, Any]:
    """Return what :class:`dicomxr.pixels.FrameRef` needs of row ``i`` of a catalog."""
    from dicomxr.pixels import LAYOUT_FIELDS

    names = ("path", "pixel_data_offset", *LAYOUT_FIELDS)
    # missing values (None, NaN, pd.NA) take the standard's defaults in FrameRef.from_row
    return {name: frame[name].iat[i] for name in names if name in frame.columns}


def _current_keys(found: _Found) -> tuple[np.ndarray, np.ndarray]:
    """Size and mtime (ns) of every file, from the walk (or a stat); -1 where unknown."""
    n = len(found.paths)
    if found.remote is not None:
        entries = [found.remote[p] for p in found.paths]
        size = np.array([-1 if e.size is None else e.size for e in entries], dtype=np.int64)
        mtime = np.array([_remote_mtime_ns(e.mtime) for e in entries], dtype=np.int64)
        return size, mtime
    walked = found.stats
    size, mtime = walked.arrays()
    if walked.paths == found.paths:  # one folder's walk: its stats, in order
        return size, mtime
    where = dict(zip(walked.paths, range(len(walked.paths)), strict=True))
    at = np.fromiter((where.get(p, -1) for p in found.paths), np.int64, n)
    known = at >= 0
    out_size = np.full(n, -1, np.int64)
    out_mtime = np.full(n, _catalog_cache.UNTRUSTED, np.int64)
    out_size[known], out_mtime[known] = size[at[known]], mtime[at[known]]
    missing = np.flatnonzero(~known)  # named directly, or listed by a DICOMDIR
    if len(missing):
        out_size[missing], out_mtime[missing] = _stat_files([found.paths[i] for i in missing])
    return out_size, out_mtime


def _remote_mtime_ns(mtime: float | None) -> int:
    return _catalog_cache.UNTRUSTED if not mtime else round(mtime * 1e9)


@dataclass
class _Plan:
    """Which files the snapshot answers for (a row or a skip reason), which must be read.

    ``at`` maps each file to its snapshot entry (-1: none); ``kept`` says whether that entry
    is still valid (same size and mtime); ``row_of`` numbers the snapshot's rows.
    """

    at: np.ndarray
    kept: np.ndarray
    to_read: np.ndarray
    snap: _catalog_cache.Snapshot | None
    same_files: bool

    @classmethod
    def make(
        cls,
        paths: list[str],
        keys: tuple[np.ndarray, np.ndarray],
        snap: _catalog_cache.Snapshot | None,
    ) -> _Plan:
        n = len(paths)
        if snap is None:
            return cls(np.full(n, -1), np.zeros(n, bool), np.arange(n), None, False)
        same_files = snap.same_paths(paths)
        if same_files:
            at = np.arange(n)
        else:
            where = dict(zip(snap.paths, range(len(snap.paths)), strict=True))
            at = np.fromiter((where.get(p, -1) for p in paths), np.int64, n)
        size, mtime = keys
        found = at >= 0
        at_ok = np.where(found, at, 0)
        kept = (
            found
            & (snap.size[at_ok] == size)
            & (snap.mtime_ns[at_ok] == mtime)
            & (mtime != _catalog_cache.UNTRUSTED)
        ) if len(snap) else np.zeros(n, bool)  # fmt: skip
        return cls(at, kept, np.flatnonzero(~kept), snap, same_files)

    def unchanged(self, results: list[Any]) -> bool:
        """Whether the snapshot is the catalog as it is: same files, none read."""
        return self.same_files and not results

    def kept_skips(self, paths: list[str]) -> list[dict[str, str]]:
        """List the files the snapshot says to skip, with its reasons (same files)."""
        assert self.snap is not None
        where, reasons = self.snap.skipped()
        return [
            {"path": paths[i], "reason": r} for i, r in zip(where.tolist(), reasons, strict=True)
        ]


def _merge(
    paths: list[str], plan: _Plan, results: list[Any], names: tuple[str, ...]
) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Join the snapshot's valid rows and the rows just read, in file order."""
    reasons = plan.snap.reasons if plan.snap is not None else []
    kept_pos: list[int] = []
    kept_rows: list[int] = []
    skips: list[tuple[int, dict[str, str]]] = []
    if plan.snap is not None and len(reasons):
        is_row = np.fromiter((r is None for r in reasons), bool, len(reasons))
        row_of = np.cumsum(is_row) - 1
        for i in np.flatnonzero(plan.kept).tolist():
            j = int(plan.at[i])
            if is_row[j]:
                kept_pos.append(i)
                kept_rows.append(int(row_of[j]))
            else:
                skips.append((i, {"path": paths[i], "reason": reasons[j]}))
    new_pos: list[int] = []
    new_rows: list[dict[str, Any]] = []
    for i, (row, skip, _) in zip(plan.to_read.tolist(), results, strict=True):
        if row is not None:
            new_pos.append(i)
            new_rows.append(row)
        if skip is not None:
            skips.append((i, skip))
    skips.sort(key=operator.itemgetter(0))
    new = _to_frame(new_rows, names, raw=True)
    if not kept_rows:
        return new, [s for _, s in skips]
    kept = plan.snap.frame.take(kept_rows) if plan.snap is not None else new
    return _interleave(kept, kept_pos, new, new_pos), [s for _, s in skips]


def _interleave(
    kept: pd.DataFrame, kept_pos: list[int], new: pd.DataFrame, new_pos: list[int]
) -> pd.DataFrame:
    """Two row sets put back in file order, each column with the dtype a scan gives it."""
    if not new_pos:
        return kept.reset_index(drop=True)
    order = np.argsort(np.array(kept_pos + new_pos), kind="stable")
    both = pd.concat([kept, new], ignore_index=True)
    for col in kept.columns:
        if kept[col].dtype != new[col].dtype:  # text with and without undecodable names
            both[col] = _column(_values(kept[col]) + _values(new[col]), _SCHEMA.get(col, "object"))
    return both.take(order).reset_index(drop=True)


def _values(series: pd.Series) -> list[Any]:
    """Return a column's values as the rows held them (missing as None)."""
    if series.dtype == object:
        return series.tolist()
    return series.astype(object).where(series.notna(), None).tolist()


def _typed_keys(frame: pd.DataFrame, names: tuple[str, ...]) -> pd.DataFrame:
    """Give the requested keys' columns (kept as raw values) their catalog dtype."""
    if not names:
        return frame
    out = frame.copy(deep=False)
    for name in names:
        out[name] = _extra_column(out[name].tolist())
    return out


def _entries(
    found: _Found,
    keys: tuple[np.ndarray, np.ndarray],
    plan: _Plan,
    results: list[Any],
    frame: pd.DataFrame,
    started: int,
) -> _catalog_cache.Entries:
    """Every file of this scan as the next snapshot records it."""
    size, mtime = keys[0].copy(), keys[1].copy()
    reasons: list[str | None] = [None] * len(found.paths)
    if plan.snap is not None:
        snap_reasons = plan.snap.reasons
        for i in np.flatnonzero(plan.kept).tolist():
            reasons[i] = snap_reasons[plan.at[i]]
    for i, (row, skip, key) in zip(plan.to_read.tolist(), results, strict=True):
        if row is None:
            reasons[i] = skip["reason"] if skip is not None else "skipped"
        size[i], mtime[i] = key if key is not None else (-1, _catalog_cache.UNTRUSTED)
    if found.remote is None:  # files changed within a clock tick of the scan: read again
        mtime = _catalog_cache.distrust_recent(mtime, started)
    return _catalog_cache.Entries(found.paths, size, mtime, reasons)


def _progress_choice(progress: bool | None, n_files: int) -> tuple[bool, float]:
    """Whether to show a progress bar, and after what delay.

    Automatic (``None``): only for many files, and only once the scan has run for a moment,
    so that a fast scan of a few hundred cached files does not flash a bar.
    """
    if progress is not None:
        return progress, 0.0
    from dicomxr.options import get_options

    return n_files >= get_options()["progress_min_files"], _PROGRESS_DELAY


_Result = tuple[dict[str, Any] | None, dict[str, str] | None, tuple[int, int] | None]


def _read_files(
    paths: list[str],
    found: _Found,
    progress: tuple[bool, float],
    extra: tuple[Key, ...],
    client: Any,
) -> list[_Result]:
    """Read the header of every file once: ``(row, skip, (size, mtime_ns) or None)`` each.

    Local files are read in this process (in ``found.workers`` threads), on a
    dask.distributed ``client``'s workers (one task per batch), remote ones by ranged reads
    in threads.
    """
    memo: dict[Any, Any] = {}
    show, delay = progress
    remote = found.remote

    def one(path: str) -> _Result:
        if remote is not None:
            return _scan_remote_one(remote[path], found.storage_options, memo, extra)
        return _scan_one(path, memo, extra)

    workers = found.workers
    if client is not None and paths and remote is None:
        return _scan_on_client(client, paths, extra, show)
    if workers is not None and workers > 1 and len(paths) > 1:
        from concurrent.futures import ThreadPoolExecutor

        # file system latency overlaps across threads (os.open/pread release the
        # GIL); the parsing itself still takes turns
        with ThreadPoolExecutor(workers, thread_name_prefix="dicomxr-scan") as ex:
            return list(_progress(ex.map(one, paths), show, len(paths), delay))
    return list(map(one, _progress(paths, show, len(paths), delay)))


def _warn_skipped(skipped_list: list[dict[str, str]], explicit: set[str]) -> None:
    """Warn about skipped files that look like damaged DICOM, naming a few."""
    # non-DICOM companions (README, LICENSE, sidecars) and directory files met while walking
    # a tree are listed but are no cause for alarm; damaged DICOM and dangling references are
    problems = [
        s for s in skipped_list if s["path"] in explicit or not s["reason"].startswith(_BENIGN)
    ]
    if not problems:
        return
    reasons = pd.Series([s["reason"].split(" (")[0] for s in problems]).value_counts()
    summary = "; ".join(f"{n} x {r}" for r, n in reasons.head(5).items())
    named = ", ".join(str(s["path"]) for s in problems[:_NAMED_SKIPPED])
    if len(problems) > _NAMED_SKIPPED:
        named += f" and {len(problems) - _NAMED_SKIPPED} more"
    warnings.warn(
        f"scan skipped {len(problems)} file(s) ({summary}): {named}; "
        "see dicomxr.catalog.skipped(df) for all of them",
        SkippedFileWarning,
        stacklevel=user_stacklevel(),
    )


#: files per task when a distributed client reads the headers
SCAN_BATCH = 2000


def _scan_batch(paths: list[str], keys: tuple[Key, ...]) -> list[_Result]:
    """Catalogue a batch of files (one task of a distributed scan)."""
    memo: dict[Any, Any] = {}
    return [_scan_one(path, memo, keys) for path in paths]


def _scan_on_client(
    client: Any, paths: list[str], keys: tuple[Key, ...], progress: bool
) -> list[_Result]:
    """Read the headers on a dask.distributed cluster, one task per batch, results in order."""
    if client is True:
        from distributed import get_client

        client = get_client()
    batches = [paths[i : i + SCAN_BATCH] for i in range(0, len(paths), SCAN_BATCH)]
    futures = [
        client.submit(
            _scan_batch, batch, keys, pure=False, key=f"dicomxr-scan-{i}-{os.urandom(4).hex()}"
        )
        for i, batch in enumerate(batches)
    ]
    if progress:
        from distributed import as_completed
        from tqdm.auto import tqdm

        with tqdm(total=len(paths), desc="scanning DICOM headers", unit="file") as bar:
            for _, batch in zip(as_completed(futures), batches, strict=True):
                bar.update(len(batch))
    out: list[_Result] = []
    for future in futures:
        out.extend(future.result())
        future.release()
    return out


def _progress(items: Iterable[Any], show: bool, total: int, delay: float) -> Iterable[Any]:
    if not show:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="scanning DICOM headers", unit="file", total=total, delay=delay)


def _scan_one(path: str, memo: dict[Any, Any], keys: tuple[Key, ...] = ()) -> _Result:
    """Catalogue one file: ``(row, skip, (size, mtime_ns))``, the first two exclusive.

    The last item is ``None`` when the outcome says nothing lasting about the file (it could
    not be read this time), so the cache does not keep it.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        if os.path.islink(path):
            reason = f"broken symbolic link (to {os.readlink(path)})"
        else:
            reason = f"cannot stat: {exc.strerror or exc}"
        return None, {"path": path, "reason": reason}, None
    key = (st.st_size, st.st_mtime_ns)
    try:
        row = _read_one(path, st, memo, keys) if keys else _read_one(path, st, memo)
    except _Skip as exc:
        return None, {"path": path, "reason": str(exc)}, key
    except OSError as exc:
        return None, {"path": path, "reason": f"cannot read: {exc.strerror or exc}"}, None
    except BaseException as exc:
        # anything else one file does (a recursion, a decoder panic, a lying header's
        # MemoryError) is that file's problem: report it and go on with the rest
        if not is_per_file_failure(exc):
            raise
        reason = f"unreadable header ({failure_reason(exc)})"
        return None, {"path": path, "reason": reason}, None
    return row, None, key


_REMOTE_WORKERS = 16


def _maybe_remote(source: Any) -> bool:
    """Cheap test before :func:`dicomxr.sources.is_remote_source`: a URL or a ``.zip`` name."""
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        return isinstance(text, str) and ("://" in text or text.lower().endswith(".zip"))
    if isinstance(source, (list, tuple)):
        return any(_maybe_remote(s) for s in source)
    return False


def _sources() -> Any:
    from dicomxr import sources

    return sources


def _scan_remote_one(
    entry: Any,
    storage_options: Mapping[str, Any] | None,
    memo: dict[Any, Any],
    keys: tuple[Key, ...] = (),
) -> _Result:
    """Catalogue one remote object (see :func:`_scan_one`), reading its head by byte range."""
    from dicomxr import sources

    url = entry.url
    try:
        fs, inner = sources.filesystem(url, storage_options)
        size = entry.size if entry.size is not None else int(fs.size(inner))
    except Exception as exc:
        return None, {"path": url, "reason": f"cannot read: {failure_reason(exc)}"}, None
    # an object without a modification time cannot be told unchanged: never cached
    key = (size, _remote_mtime_ns(entry.mtime)) if entry.mtime else None
    try:
        if size == 0:
            raise _Skip("empty file (0 bytes)")
        head = sources.HeadReader(fs, inner, size)
        row = read_header_fast(head, size, memo, keys)
        if row is None:
            row = read_header_pydicom(head.file(), keys)
        for k in keys:
            row.setdefault(k.name, None)
        row = _checked_row(row, url, size, entry.mtime, entry.etag)
    except _Skip as exc:
        return None, {"path": url, "reason": str(exc)}, key
    except BaseException as exc:
        # a dropped connection, a broken zip member, a lying header: this object's problem
        if not (isinstance(exc, OSError) or is_per_file_failure(exc)):
            raise
        return None, {"path": url, "reason": f"cannot read: {failure_reason(exc)}"}, None
    return row, None, key


def _to_frame(
    rows: list[dict[str, Any]], extra: tuple[str, ...] = (), *, raw: bool = False
) -> pd.DataFrame:
    """Build the catalog of ``rows``; ``raw``: the requested keys' columns as read."""
    # column by column, straight into arrays: far cheaper than letting pandas infer
    data: dict[str, Any] = {}
    try:
        # one list per column, gathered in C (no tuple per row for the collector to trace)
        columns = [list(map(operator.itemgetter(col), rows)) for col in _ROW_COLUMNS]
    except KeyError:  # a row without some column (never from scan(); be lenient)
        columns = [[r.get(col) for r in rows] for col in _ROW_COLUMNS]
    for col, values in zip(_ROW_COLUMNS, columns, strict=True):
        data[col] = _column(values, _SCHEMA[col])
    for col in _ACROSS_ROWS:  # filled in by the scan once the rows are together
        data[col] = np.full(len(rows), None, dtype=object)
    for name in extra:
        values = [r.get(name) for r in rows]
        data[name] = _column(values, "object") if raw else _extra_column(values)
    return pd.DataFrame(data, columns=[*_SCHEMA, *extra], copy=False)


def _column(values: list[Any], dtype: str) -> Any:
    """Build one catalog column of ``dtype`` from the rows' values."""
    n = len(values)
    if dtype == "object":
        # fromiter stores each value as it is: tuples stay tuples, not a 2-D array
        return np.fromiter(values, dtype=object, count=n)
    if dtype == "bool":
        return np.fromiter(map(bool, values), dtype=bool, count=n)
    if dtype in ("float64", "int64"):
        return np.array(values, dtype=dtype)
    if dtype == "str":
        try:
            return _str_array(values)
        except UnicodeEncodeError:
            # file names that are not valid UTF-8 come back from the OS with lone
            # surrogates, which an Arrow-backed str dtype refuses: keep them as objects
            # (an explicit object Series: pandas would infer its str dtype again)
            return pd.Series(np.array(values, dtype=object), dtype=object)
    if dtype == "Int64":
        return _int_array(values)
    return pd.array(values, dtype=dtype)


def _str_array(values: list[Any]) -> Any:
    """Build pandas' ``str`` array through Arrow (a third of ``pd.array``'s cost)."""
    empty = _empty_str_array()
    if type(empty).__name__ != "ArrowStringArray":  # pandas without pyarrow strings
        return pd.array(values, dtype="str")
    import pyarrow as pa

    try:
        arrow = pa.array(values, type=pa.large_string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # not all str: pandas says how it is
        return pd.array(values, dtype="str")
    return type(empty)(arrow).astype(empty.dtype, copy=False)


@functools.cache
def _empty_str_array() -> Any:
    """Return an empty array of pandas' ``str`` dtype: its class and dtype, made once."""
    return pd.array([], dtype="str")


def _int_array(values: list[Any]) -> Any:
    """Build a nullable ``Int64`` array from ints and ``None`` (half ``pd.array``'s cost).

    Anything else (a float, a bool, an int beyond 64 bits) goes to ``pd.array``, which
    decides as it always did.
    """
    if all(v is None or type(v) is int for v in values):
        mask = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
        try:
            data = np.array(
                [0 if v is None else v for v in values] if mask.any() else values, dtype=np.int64
            )
        except OverflowError:
            return pd.array(values, dtype="Int64")
        return pd.arrays.IntegerArray(data, mask)
    return pd.array(values, dtype="Int64")


def _extra_column(values: list[Any]) -> Any:
    """Build a requested key's column: Int64, float64 or str when its values allow, else objects."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pd.array(values, dtype="Int64")
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    if present and all(isinstance(v, str) for v in present):
        try:
            return pd.array(values, dtype="str")
        except UnicodeEncodeError:
            pass
    arr = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        arr[i] = v  # tuples stay tuples
    return arr


def prune_cache(
    cache: bool | str | os.PathLike[str] = True,
    max_age_days: float = _catalog_cache.MAX_AGE_DAYS,
) -> list[str]:
    """Remove the catalog snapshots no scan has used for ``max_age_days`` days.

    :func:`scan` does this after it writes a snapshot (90 days); call it to trim a cache
    folder now, or to empty it (``max_age_days=0``).

    Parameters
    ----------
    cache
        The ``cache=`` given to :func:`scan`: ``True`` for the user cache folder, or a
        folder.
    max_age_days
        Age, in days since a scan last read or wrote it, from which a snapshot goes.

    Returns
    -------
    list of str
        The files removed.

    Examples
    --------
    >>> import dicomxr
    >>> dicomxr.catalog.prune_cache(max_age_days=30)  # doctest: +SKIP
    """
    folder = _catalog_cache.default_folder() if cache is True else os.fspath(cache)
    return _catalog_cache.prune(folder, max_age_days)


def skipped(df: pd.DataFrame) -> pd.DataFrame:
    """Return the skipped-files report of a catalog as a DataFrame (``path``, ``reason``).

    Parameters
    ----------
    df
        A catalog returned by :func:`scan` (or derived from one: pandas keeps ``attrs``).

    Returns
    -------
    pandas.DataFrame
        One row per skipped file or dangling reference.
    """
    records = list(df.attrs.get("skipped", []))
    # object columns: a file name that is not UTF-8 (lone surrogates) fits no Arrow str dtype
    return pd.DataFrame(
        {
            name: pd.Series([r.get(name) for r in records], dtype=object)
            for name in ("path", "reason")
        }
    )
