"""One row per frame: classic files 1:1, enhanced multi-frame and Siemens MOSAIC expanded.

:func:`expand` turns the catalog (one row per instance, :func:`dicomxr.scan`) into a frame
table with the same columns, so that everything above this layer treats a classic series,
an enhanced multi-frame export and a MOSAIC alike:

- classic single-frame files keep their row (``frame = 0``);
- enhanced multi-frame files (``is_enhanced``) are read again, header only, and each frame
  gets its values from the Shared and Per-frame Functional Groups: plane position and
  orientation, pixel measures, frame content (stack, in-stack position, temporal position,
  dimension index values, acquisition time), MR echo, MR diffusion (b-value and direction),
  pixel value transformation (rescale, per frame), frame VOI LUT, frame type (complex
  component) and, for Philips, the private per-frame item (InstanceNumber, ASL label type);
- vendor mosaics (Siemens MOSAIC, United Imaging GRID/VFRAME; :mod:`dicomxr.mosaic`) become
  one row per tile with the tile's true position and ``tile``, ``tile_rows``, ``tile_cols``
  (Rows/Columns become the tile size); a mosaic that cannot be unpacked keeps one row with
  the reason in ``frame_problem``, and the planner sets it apart;
- other multi-frame files (ultrasound cine, a plain multi-frame CT) get one row per frame
  with the file's attributes.

Columns added to the catalog's
------------------------------
``frame`` (int, 0-based frame index in its file), ``tile`` (int, -1 unless MOSAIC),
``tile_rows``, ``tile_cols`` (int, 0 unless MOSAIC), ``mosaic_rows``, ``mosaic_cols``
(stored image size of a MOSAIC, 0 otherwise), ``StackID``, ``InStackPositionNumber``,
``DimensionIndexValues``, ``FrameAcquisitionDateTime``, ``FrameType``,
``ComplexImageComponent`` (``MAGNITUDE``/``PHASE``/``REAL``/``IMAGINARY``, from the frame type
or, for classic files, from ImageType), ``LabelType`` (Philips ASL ``CONTROL``/``LABEL``),
``DiffusionDirectionality``, ``FrameLaterality`` (frame anatomy); ``frame_problem`` (str)
only when some frame cannot be used (the planner sets it apart with that reason).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd

from dicomxr import mosaic as vendor_mosaic

__all__ = ["FRAME_COLUMNS", "component_from_image_type", "expand", "read_label_type"]

logger = logging.getLogger(__name__)

#: Columns :func:`expand` adds to the catalog's.
FRAME_COLUMNS: tuple[str, ...] = (
    "frame",
    "tile",
    "tile_rows",
    "tile_cols",
    "mosaic_rows",
    "mosaic_cols",
    "StackID",
    "InStackPositionNumber",
    "DimensionIndexValues",
    "FrameAcquisitionDateTime",
    "FrameType",
    "ComplexImageComponent",
    "LabelType",
    "DiffusionDirectionality",
    "FrameLaterality",
)

_INT_FRAME_COLUMNS = ("frame", "tile", "tile_rows", "tile_cols", "mosaic_rows", "mosaic_cols")

# ImageType tokens (from the third value on) that name the complex component
_COMPONENT_TOKENS = {
    "M": "MAGNITUDE",
    "MAGNITUDE": "MAGNITUDE",
    "P": "PHASE",
    "PHASE": "PHASE",
    "PHASE MAP": "PHASE",
    "R": "REAL",
    "REAL": "REAL",
    "I": "IMAGINARY",
    "IMAGINARY": "IMAGINARY",
}
_component_cache: dict[Any, str | None] = {}

# Philips private per-frame item and its private creators
_PHILIPS_PERFRAME = 0x2005140F
_PHILIPS_LABEL_TYPE = 0x20051429


def component_from_image_type(image_type: Any) -> str | None:
    """Return the complex component an ImageType names, or ``None``.

    Looks at the values after ``ORIGINAL/DERIVED`` and ``PRIMARY/SECONDARY``: Siemens
    writes ``M``/``P`` as the third value, Philips ``M``/``P`` (and ``PHASE MAP``) as the
    third or fourth, the standard ``MAGNITUDE``/``PHASE``/``REAL``/``IMAGINARY``.

    Examples
    --------
    >>> component_from_image_type(("ORIGINAL", "PRIMARY", "PHASE MAP", "P", "FFE"))
    'PHASE'
    >>> component_from_image_type(("ORIGINAL", "PRIMARY", "AXIAL")) is None
    True
    """
    if image_type is None or isinstance(image_type, float):
        return None
    key = tuple(image_type) if not isinstance(image_type, str) else (image_type,)
    try:
        return _component_cache[key]
    except KeyError:
        pass
    found = None
    for token in key[2:]:
        comp = _COMPONENT_TOKENS.get(str(token).strip().upper())
        if comp is not None:
            found = comp
            break
    if len(_component_cache) < 4096:
        _component_cache[key] = found
    return found


def _empty(n: int) -> np.ndarray:
    out = np.empty(n, dtype=object)
    out[:] = None
    return out


def expand(catalog: pd.DataFrame) -> pd.DataFrame:
    """Return one row per frame of the instances in ``catalog``.

    Parameters
    ----------
    catalog
        The DataFrame from :func:`dicomxr.scan` (or a subset of its rows).

    Returns
    -------
    pandas.DataFrame
        Every catalog column (per-frame values filled in for enhanced files and MOSAIC
        tiles) plus :data:`FRAME_COLUMNS`; a fresh ``RangeIndex``. An enhanced file whose
        header cannot be read again keeps one row per frame with the file-level values and
        is listed in ``attrs["frame_errors"]``.

    Examples
    --------
    >>> import dicomxr
    >>> from dicomxr import frames
    >>> df = frames.expand(dicomxr.scan("series_folder"))  # doctest: +SKIP
    >>> df[["path", "frame", "ImagePositionPatient"]].head()  # doctest: +SKIP
    """
    n = len(catalog)
    if n == 0:
        out = catalog.copy()
        for col in FRAME_COLUMNS:
            out[col] = pd.Series([], dtype="int64" if col in _INT_FRAME_COLUMNS else object)
        return out
    cols = catalog.columns
    enhanced = (
        catalog["is_enhanced"].to_numpy(dtype=bool, na_value=False)
        if "is_enhanced" in cols
        else np.zeros(n, bool)
    )
    mosaic = (
        catalog["is_mosaic"].to_numpy(dtype=bool, na_value=False)
        if "is_mosaic" in cols
        else np.zeros(n, bool)
    )
    if "NumberOfFrames" in cols:
        nframes = catalog["NumberOfFrames"].to_numpy(dtype="float64", na_value=np.nan)
        nframes = np.where(np.isfinite(nframes) & (nframes >= 1), nframes, 1).astype(np.int64)
    else:
        nframes = np.ones(n, np.int64)
    n_mosaic = np.ones(n, np.int64)
    if mosaic.any():
        nm = catalog["NumberOfImagesInMosaic"].to_numpy(dtype="float64", na_value=np.nan)
        problems = _mosaic_problems(catalog, mosaic, nm)
        if problems:
            # a mosaic that cannot be unpacked is never a plain image: one row, set apart
            catalog = _with_frame_problems(catalog, problems)
            mosaic = mosaic & ~np.isin(np.arange(n), list(problems))
        n_mosaic[mosaic] = nm[mosaic].astype(np.int64)
    counts = np.where(mosaic, n_mosaic, nframes)
    claim_errors: list[dict[str, str]] = []
    impossible = _impossible_claims(catalog, counts, mosaic, claim_errors)
    if impossible.any():
        # planning memory follows the frames that exist, not what a header claims: a
        # file that cannot hold its claim is one row, flagged cut short (set apart)
        counts = np.where(impossible, 1, counts)
        mosaic = mosaic & ~impossible
        enhanced = enhanced & ~impossible
        catalog = catalog.copy()
        flags = catalog.get("pixel_data_truncated", pd.Series(False, index=catalog.index))
        catalog["pixel_data_truncated"] = flags.fillna(False).astype(bool).to_numpy() | impossible
        for rec in claim_errors:
            logger.warning("%s: %s", rec["path"], rec["reason"])

    image_type = catalog["ImageType"].to_numpy(dtype=object) if "ImageType" in cols else _empty(n)
    component = np.array([component_from_image_type(v) for v in image_type], dtype=object)

    if (counts == 1).all():
        # the common case, one frame per file: no copy of the rows, only new columns
        zeros = np.zeros(n, np.int64)
        new: dict[str, Any] = {
            "frame": zeros,
            "tile": np.full(n, -1, np.int64),
            "tile_rows": zeros,
            "tile_cols": zeros,
            "mosaic_rows": zeros,
            "mosaic_cols": zeros,
        }
        for col in FRAME_COLUMNS[6:]:
            if col not in cols:  # a catalog may already carry some (e.g. LabelType)
                new[col] = _empty(n)
        if "ComplexImageComponent" not in cols:
            new["ComplexImageComponent"] = component
        out = catalog.assign(**new)
        out.index = pd.RangeIndex(n)
        if claim_errors:
            out.attrs["frame_errors"] = claim_errors
        return out

    src = np.repeat(np.arange(n), counts)
    out = catalog.take(src)
    out.index = pd.RangeIndex(len(out))
    total = len(out)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    frame = np.arange(total) - np.repeat(starts, counts)
    # a MOSAIC image is one stored frame: its tiles share frame 0 and are told apart by `tile`
    frame[np.repeat(mosaic, counts)] = 0
    values: dict[str, np.ndarray] = {
        "frame": frame.astype(np.int64),
        "tile": np.full(total, -1, np.int64),
        "tile_rows": np.zeros(total, np.int64),
        "tile_cols": np.zeros(total, np.int64),
        "mosaic_rows": np.zeros(total, np.int64),
        "mosaic_cols": np.zeros(total, np.int64),
    }
    for col in FRAME_COLUMNS[6:]:
        values[col] = (
            catalog[col].to_numpy(dtype=object, na_value=None)[src]
            if col in cols
            else _empty(total)
        )
    if "ComplexImageComponent" not in cols:
        values["ComplexImageComponent"] = component[src]
    overrides: dict[str, np.ndarray] = {}
    errors: list[dict[str, str]] = list(claim_errors)

    def put(col: str, rows: slice, vals: list[Any]) -> None:
        if col in values:
            values[col][rows] = _as_object(vals)
            return
        if col not in overrides:
            base = (
                out[col].to_numpy(dtype=object, na_value=None)
                if col in out.columns
                else _empty(total)
            )
            overrides[col] = np.array(base, dtype=object)
        overrides[col][rows] = _as_object(vals)

    # fsspec options of a remote catalog (dicomxr.sources): headers are read by byte range
    options = catalog.attrs.get("storage_options")
    for i in np.flatnonzero(enhanced & (counts >= 1)):
        rows = slice(int(starts[i]), int(starts[i] + counts[i]))
        path = str(catalog["path"].iat[i])
        try:
            per_frame = _enhanced_frames(path, int(counts[i]), options)
        except Exception as exc:  # keep the frames with file-level values, say why
            logger.warning("cannot read the functional groups of %s: %s", path, exc)
            errors.append({"path": path, "reason": f"functional groups unreadable: {exc}"})
            continue
        for col, vals in per_frame.items():
            put(col, rows, vals)

    # classic multi-frame files (RT Dose, some NM/US): frame positions from the Grid Frame
    # Offset Vector when the file has one
    for i in np.flatnonzero(~enhanced & ~mosaic & (counts > 1)):
        rows = slice(int(starts[i]), int(starts[i] + counts[i]))
        positions = _grid_frame_positions(catalog.iloc[i], int(counts[i]), options)
        if positions is not None:
            put("ImagePositionPatient", rows, positions)

    for i in np.flatnonzero(mosaic):
        rows = slice(int(starts[i]), int(starts[i] + counts[i]))
        row = catalog.iloc[i]
        try:
            tiles = vendor_mosaic.tiles(row, int(counts[i]), options)
        except Exception as exc:
            logger.warning("cannot unpack MOSAIC %s: %s", row["path"], exc)
            errors.append({"path": str(row["path"]), "reason": f"MOSAIC not unpacked: {exc}"})
            continue
        for col, vals in tiles.items():
            put(col, rows, vals)

    for col, arr in values.items():
        out[col] = arr
    for col, arr in overrides.items():
        dtype = catalog[col].dtype if col in catalog.columns else np.dtype(object)
        try:
            out[col] = arr if dtype == np.dtype(object) else pd.array(arr, dtype=dtype)
        except (TypeError, ValueError):
            out[col] = arr
    if errors:
        out.attrs["frame_errors"] = errors
    return out


_NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})
# an encapsulated frame takes at least one fragment item header
_MIN_ENCAPSULATED_FRAME = 8


def _column(catalog: pd.DataFrame, name: str, default: float) -> np.ndarray:
    if name not in catalog.columns:
        return np.full(len(catalog), default, dtype=np.float64)
    values = pd.to_numeric(catalog[name], errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )
    return np.where(np.isfinite(values), values, default)


def _impossible_claims(
    catalog: pd.DataFrame, counts: np.ndarray, mosaic: np.ndarray, errors: list[dict[str, str]]
) -> np.ndarray:
    """Flag files whose header claims more frames (or tiles, or bytes) than the file can hold.

    Uncompressed: Rows x Columns x samples x bits x frames must fit between the pixel data
    element and the end of the file; encapsulated: every frame needs a fragment header; a
    MOSAIC cannot have more tiles than pixels. Each flagged file gets a reason in ``errors``.
    """
    has_pixels = (
        catalog["has_pixels"].to_numpy(dtype=bool, na_value=False)
        if "has_pixels" in catalog.columns
        else np.ones(len(catalog), bool)
    )
    size = _column(catalog, "file_size", np.inf)
    room = size - np.maximum(_column(catalog, "pixel_data_offset", 0.0), 0.0)
    frame_bytes = (
        _column(catalog, "Rows", 0.0)
        * _column(catalog, "Columns", 0.0)
        * np.maximum(_column(catalog, "SamplesPerPixel", 1.0), 1.0)
        * np.maximum(_column(catalog, "BitsAllocated", 8.0), 1.0)
        / 8
    )
    ts = (
        catalog["TransferSyntaxUID"].to_numpy(dtype=object, na_value=None)
        if "TransferSyntaxUID" in catalog.columns
        else np.full(len(catalog), None, dtype=object)
    )
    native = np.array([t in _NATIVE_SYNTAXES for t in ts], dtype=bool)
    stored = np.where(mosaic, 1, counts).astype(np.float64)
    # a zero Rows/Columns/bits claim still costs a table row per frame: at least a byte each
    need = np.where(native, stored * np.maximum(frame_bytes, 1), stored * _MIN_ENCAPSULATED_FRAME)
    too_many_tiles = mosaic & (
        counts > _column(catalog, "Rows", 0.0) * _column(catalog, "Columns", 0.0)
    )
    bad = has_pixels & ((need > room) | too_many_tiles)
    for i in np.flatnonzero(bad):
        what = f"{int(counts[i])} tile(s)" if mosaic[i] else f"{int(counts[i])} frame(s)"
        errors.append(
            {
                "path": str(catalog["path"].iat[i]) if "path" in catalog.columns else "?",
                "reason": (
                    f"header claims {what} needing {need[i]:.0f} bytes of pixel data "
                    f"({'uncompressed' if native[i] else 'encapsulated'}); the file has "
                    f"{room[i]:.0f} after the pixel data element: set apart as cut short"
                ),
            }
        )
    return bad


def _as_object(vals: list[Any]) -> np.ndarray:
    arr = np.empty(len(vals), dtype=object)
    arr[:] = vals  # keeps tuples as single elements
    return arr


# ---------------------------------------------------------------------------------------
# enhanced multi-frame


def _floats(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
            return (float(value),)
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    vals = _floats(value)
    if not vals:
        return None
    v = vals[0]
    return v if math.isfinite(v) else None


def _int(value: Any) -> int | None:
    try:
        if value is None or value == "":
            return None
        if hasattr(value, "__len__") and not isinstance(value, str):
            value = value[0]
        return int(value)
    except (TypeError, ValueError, IndexError):
        return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _item(group: Any, keyword: str) -> Any:
    seq = getattr(group, keyword, None) if group is not None else None
    if seq is None:
        return None
    try:
        return seq[0] if len(seq) else None
    except TypeError:
        return None


def _frame_type_item(group: Any) -> Any:
    if group is None:
        return None
    for elem in group:
        if elem.VR == "SQ" and elem.keyword.endswith("FrameTypeSequence") and len(elem.value):
            return elem.value[0]
    return None


def _philips_item(group: Any) -> Any:
    if group is None:
        return None
    elem = group.get(_PHILIPS_PERFRAME)
    if elem is None or elem.VR != "SQ" or not len(elem.value):
        return None
    return elem.value[0]


def _enhanced_frames(
    path: str, n_expected: int, storage_options: Any = None
) -> dict[str, list[Any]]:
    """Read the functional groups of an enhanced file; one value per frame per column."""
    import pydicom

    from dicomxr.sources import readable

    with readable(path, storage_options) as source:
        ds = pydicom.dcmread(source, stop_before_pixels=True)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq is not None and len(shared_seq) else None
    n = len(per_frame) if per_frame is not None else 0
    if n != n_expected:
        raise ValueError(f"{n} per-frame functional group items for NumberOfFrames {n_expected}")
    cols: dict[str, list[Any]] = {}

    def setv(col: str, k: int, value: Any) -> None:
        lst = cols.get(col)
        if lst is None:
            lst = cols[col] = [_MISSING] * n
        lst[k] = value

    for k, frame in enumerate(per_frame):

        def grp(keyword: str, frame: Any = frame) -> Any:
            item = _item(frame, keyword)
            return item if item is not None else _item(shared, keyword)

        item = grp("PlanePositionSequence")
        if item is not None:
            setv("ImagePositionPatient", k, _floats(item.get("ImagePositionPatient")))
        item = grp("PlaneOrientationSequence")
        if item is not None:
            setv("ImageOrientationPatient", k, _floats(item.get("ImageOrientationPatient")))
        item = grp("PixelMeasuresSequence")
        if item is not None:
            if "PixelSpacing" in item:
                setv("PixelSpacing", k, _floats(item.PixelSpacing))
            if "SliceThickness" in item:
                setv("SliceThickness", k, _float(item.SliceThickness))
            if "SpacingBetweenSlices" in item:
                setv("SpacingBetweenSlices", k, _float(item.SpacingBetweenSlices))
        item = grp("FrameContentSequence")
        if item is not None:
            setv("StackID", k, _text(item.get("StackID")))
            setv("InStackPositionNumber", k, _int(item.get("InStackPositionNumber")))
            setv("TemporalPositionIndex", k, _int(item.get("TemporalPositionIndex")))
            div = item.get("DimensionIndexValues")
            setv(
                "DimensionIndexValues", k, tuple(int(v) for v in div) if _is_seq(div) else _int(div)
            )
            setv("FrameAcquisitionDateTime", k, _text(item.get("FrameAcquisitionDateTime")))
        item = grp("PixelValueTransformationSequence")
        if item is not None:
            setv("RescaleSlope", k, _float(item.get("RescaleSlope")))
            setv("RescaleIntercept", k, _float(item.get("RescaleIntercept")))
            setv("RescaleType", k, _text(item.get("RescaleType")))
        item = grp("FrameVOILUTSequence")
        if item is not None:
            setv("WindowCenter", k, _floats(item.get("WindowCenter")))
            setv("WindowWidth", k, _floats(item.get("WindowWidth")))
        item = grp("FrameAnatomySequence")
        if item is not None and item.get("FrameLaterality") is not None:
            setv("FrameLaterality", k, _text(item.FrameLaterality))
        item = grp("MREchoSequence")
        if item is not None and item.get("EffectiveEchoTime") is not None:
            setv("EchoTime", k, _float(item.EffectiveEchoTime))
        item = grp("CardiacSynchronizationSequence")
        if item is not None and item.get("NominalCardiacTriggerDelayTime") is not None:
            setv("TriggerTime", k, _float(item.NominalCardiacTriggerDelayTime))
        item = grp("MRDiffusionSequence")
        if item is not None:
            setv("DiffusionBValue", k, _float(item.get("DiffusionBValue")))
            setv("DiffusionDirectionality", k, _text(item.get("DiffusionDirectionality")))
            direction = _item(item, "DiffusionGradientDirectionSequence")
            if direction is not None:
                setv(
                    "DiffusionGradientOrientation",
                    k,
                    _floats(direction.get("DiffusionGradientOrientation")),
                )
        ftype = _frame_type_item(frame) or _frame_type_item(shared)
        if ftype is not None:
            setv("FrameType", k, tuple(str(v) for v in ftype.get("FrameType", ())) or None)
            comp = _text(ftype.get("ComplexImageComponent"))
            if comp in ("MAGNITUDE", "PHASE", "REAL", "IMAGINARY"):
                setv("ComplexImageComponent", k, comp)
            else:
                setv("ComplexImageComponent", k, component_from_image_type(ftype.get("FrameType")))
        philips = _philips_item(frame)
        if philips is not None:
            # the classic-export values of this frame: keep InstanceNumber, echo, label type
            # (ImagePositionPatient in this item is shifted by half a voxel: not used)
            num = _int(philips.get("InstanceNumber"))
            if num is not None:
                setv("InstanceNumber", k, num)
            echo = _int(philips.get("EchoNumbers"))
            if echo is not None:
                setv("EchoNumbers", k, echo)
            tpi = _int(philips.get("TemporalPositionIdentifier"))
            if tpi is not None:
                setv("TemporalPositionIdentifier", k, tpi)
            label = philips.get(_PHILIPS_LABEL_TYPE)
            if label is not None:
                setv("LabelType", k, _text(label.value))
            if "ComplexImageComponent" not in cols or cols["ComplexImageComponent"][k] is _MISSING:
                setv(
                    "ComplexImageComponent", k, component_from_image_type(philips.get("ImageType"))
                )
    # columns only some frames had: the others keep None
    return {col: [None if v is _MISSING else v for v in vals] for col, vals in cols.items()}


class _Missing:
    __slots__ = ()


_MISSING = _Missing()


def _is_seq(value: Any) -> bool:
    return hasattr(value, "__len__") and not isinstance(value, (str, bytes))


def _grid_frame_positions(
    row: pd.Series, n_frames: int, storage_options: Any = None
) -> list[tuple[float, ...]] | None:
    """Per-frame positions of a classic multi-frame file from its GridFrameOffsetVector.

    Offsets run along the slice normal from ImagePositionPatient (PS3.3 C.8.8.3.2; in the
    retired form whose first value is not 0 they are z coordinates, hence relative to the
    first). ``None`` when the file has no usable vector.
    """
    ipp, iop = row.get("ImagePositionPatient"), row.get("ImageOrientationPatient")
    if ipp is None or iop is None or isinstance(ipp, float) or isinstance(iop, float):
        return None
    try:
        import pydicom

        from dicomxr.sources import readable

        with readable(str(row["path"]), storage_options) as source:
            ds = pydicom.dcmread(source, stop_before_pixels=True, specific_tags=[0x3004000C])
        offsets = ds.get("GridFrameOffsetVector")
        if offsets is None:
            return None
        off = np.asarray([float(v) for v in offsets], dtype=np.float64)
    except Exception as exc:  # no vector, or unreadable: frames keep the file's position
        logger.debug("no GridFrameOffsetVector in %s: %s", row["path"], exc)
        return None
    if len(off) != n_frames:
        logger.warning(
            "%s: GridFrameOffsetVector has %d values for %d frames; frame positions not set",
            row["path"],
            len(off),
            n_frames,
        )
        return None
    normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
    origin = np.asarray(ipp, dtype=np.float64)
    return [tuple(float(v) for v in origin + (o - off[0]) * normal) for o in off]


# ---------------------------------------------------------------------------------------
# vendor mosaics (the layouts are in dicomxr.mosaic)


def _mosaic_problems(
    catalog: pd.DataFrame, mosaic: np.ndarray, counts: np.ndarray
) -> dict[int, str]:
    """Row position -> why that mosaic image cannot be unpacked (see :func:`dicomxr.mosaic.layout`)."""
    kinds = (
        catalog["mosaic_kind"].to_numpy(dtype=object, na_value=None)
        if "mosaic_kind" in catalog.columns
        else np.full(len(catalog), "SIEMENS", dtype=object)
    )
    rows = _column(catalog, "Rows", 0)
    cols = _column(catalog, "Columns", 0)
    problems: dict[int, str] = {}
    for i in np.flatnonzero(mosaic):
        n = int(counts[i]) if np.isfinite(counts[i]) else None
        try:
            vendor_mosaic.layout(str(kinds[i] or "SIEMENS"), n, int(rows[i]), int(cols[i]))
        except vendor_mosaic.MosaicError as exc:
            problems[int(i)] = f"mosaic not unpacked: {exc}"
            logger.warning("%s: %s", catalog["path"].iat[i], problems[int(i)])
    return problems


def _with_frame_problems(catalog: pd.DataFrame, problems: dict[int, str]) -> pd.DataFrame:
    """Return a copy of ``catalog`` whose ``frame_problem`` column holds ``problems``."""
    out = catalog.copy()
    values = (
        out["frame_problem"].to_numpy(dtype=object, na_value=None)
        if "frame_problem" in out.columns
        else _empty(len(out))
    )
    for i, text in problems.items():
        values[i] = text
    out["frame_problem"] = values
    return out


# ---------------------------------------------------------------------------------------
# Philips ASL label type of classic files


def read_label_type(paths: list[str]) -> list[str | None]:
    """Read Philips' private ASL label type (2005,1429) of classic files.

    The catalog does not hold it: :func:`dicomxr.series.plan_series` calls this only for a
    Philips series whose frames share position, time and echo (pCASL label/control pairs).

    Parameters
    ----------
    paths
        Files to read (headers only, one tag).

    Returns
    -------
    list of str or None
        ``"LABEL"``, ``"CONTROL"``, ... per path; ``None`` where absent or unreadable.
    """
    import pydicom

    out: list[str | None] = []
    for path in paths:
        found = _label_type_fast(path)
        if found is not _MISSING:
            out.append(found)  # type: ignore[arg-type]
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[_PHILIPS_LABEL_TYPE])
            elem = ds.get(_PHILIPS_LABEL_TYPE)
            out.append(_text(elem.value) if elem is not None else None)
        except Exception as exc:
            logger.debug("no label type in %s: %s", path, exc)
            out.append(None)
    return out


_PHILIPS_DD005 = b"PHILIPS MR IMAGING DD 005"


def _label_type_fast(path: str) -> str | _Missing | None:
    """Read (2005,1429) with the catalog's raw header reader; ``_MISSING`` when it declines."""
    import os

    try:
        from dicomxr import _header

        raw = _header.read_raw(
            path, os.path.getsize(path), frozenset(), {0x2005: frozenset({0x29})}, frozenset()
        )
    except Exception as exc:  # the fast reader is an optimisation: pydicom decides
        logger.debug("fast header read of %s failed: %s", path, exc)
        return _MISSING
    if raw is None or raw.truncated_at is not None:
        return _MISSING
    for tag, (_, value) in raw.elements.items():
        if (
            tag >> 16 == 0x2005
            and 0x10 <= (tag & 0xFFFF) <= 0xFF
            and value.strip(b" \0").upper() == _PHILIPS_DD005
        ):
            elem = raw.elements.get(0x20050000 | ((tag & 0xFF) << 8) | 0x29)
            if elem is None:
                return None
            return _text(elem[1].strip(b" \0").decode("ascii", "replace"))
    return None
