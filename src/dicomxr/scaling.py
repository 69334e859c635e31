"""Which values a frame's stored integers stand for: display, Philips precise or real-world.

A scanner stores integers; what they mean is written next to them, sometimes in several ways:

``"display"`` (default)
    The Modality LUT of the standard: ``stored * RescaleSlope + RescaleIntercept`` (from the
    Pixel Value Transformation functional group in enhanced files). What the scanner shows and
    what every DICOM viewer computes; dcm2niix ``-p n``.
``"precise"``
    Philips' "floating point" values (Chenevert et al. 2014, PMC3998685): with the private
    Scale Slope SS (2005,100E), ``FP = (stored * RS + RI) / (RS * SS)``. Philips picks the
    rescale pair per series to fill the display range, so display values of two Philips
    series are not comparable; precise values are. This is what dcm2niix writes by default
    (``-p y``), and what it does is mirrored here: the values are read per frame (classic
    files at the top level, enhanced files in each frame's private item (2005,140F)), only
    when the Manufacturer is Philips and SS is present and not 0 (and ``RS * SS`` is not 0);
    every other frame keeps its display values. The Scale Intercept (2005,100D) is not part
    of the formula (dcm2niix ignores it too).
``"real_world"``
    The standard's Real World Value Mapping (0040,9096): a slope and intercept, or a lookup
    table, per frame, with the units it maps to (UCUM, e.g. ``mm2/s`` for ADC, ``ms`` for T1
    maps, ``mrad`` for Philips phase). Stored values outside the item's first..last value
    mapped have no real-world value: they become NaN. Where no frame carries the sequence,
    :class:`~dicomxr.errors.ScalingError` names the alternatives.

:func:`frame_scaling` turns a frame table (``plan.frames``) and a choice into per-frame
factors for the lazy array, and into the attrs that record what was applied. This module
imports nothing of dicomxr's but its errors, so the catalog (which reads the values in its
header pass) and the lazy array can both use it.
"""

from __future__ import annotations

import logging
import math
import struct
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dicomxr.errors import DicomxrWarning, ScalingError, user_stacklevel

__all__ = [
    "SCALINGS",
    "FrameScaling",
    "RealWorldMapping",
    "check_scaling",
    "frame_scaling",
    "precise_factors",
    "real_world_mappings",
]

logger = logging.getLogger(__name__)

#: The scaling choices, the default first.
SCALINGS: tuple[str, ...] = ("display", "precise", "real_world")

#: Catalog/frame-table columns the scaling reads (besides RescaleSlope/RescaleIntercept).
COLUMNS: tuple[str, ...] = ("Manufacturer", "PhilipsScaleSlope", "RealWorldValueMapping")

_RWV_TAG = 0x00409096


def check_scaling(scaling: Any) -> str:
    """Return ``scaling`` if it is one of :data:`SCALINGS`, else raise naming them.

    Examples
    --------
    >>> check_scaling("precise")
    'precise'
    """
    if isinstance(scaling, str) and scaling in SCALINGS:
        return scaling
    raise ScalingError(
        f"scaling={scaling!r} is not a scaling: choose one of "
        + ", ".join(repr(s) for s in SCALINGS)
        + " ('display': the standard's RescaleSlope/Intercept, what viewers show; 'precise': "
        "Philips' floating-point values, dcm2niix's default; 'real_world': the Real World "
        "Value Mapping with its units)"
    )


# ---------------------------------------------------------------------------------------
# Philips precise values


def is_philips(manufacturer: Any) -> bool:
    """Whether a Manufacturer value names Philips (as dcm2niix tells it: contains PHILIPS)."""
    return isinstance(manufacturer, str) and "PHILIPS" in manufacturer.upper()


def precise_factors(
    rescale_slope: float | None, rescale_intercept: float | None, scale_slope: float | None
) -> tuple[float, float] | None:
    """Return ``(slope, intercept)`` of Philips' precise values, or ``None`` without them.

    ``FP = (PV * RS + RI) / (RS * SS)`` is linear in the stored value PV: slope ``1 / SS``
    and intercept ``RI / (RS * SS)``, computed in float64. ``None`` when SS is missing, not
    finite or 0, or ``RS * SS`` is 0 (dcm2niix then keeps the display values). A missing
    RS is 1 and a missing RI 0, as in the standard.

    Examples
    --------
    >>> precise_factors(2.0, -100.0, 0.5)
    (1.0, -100.0)
    >>> precise_factors(2.0, 0.0, 0.0) is None
    True
    """
    rs = _finite(rescale_slope, 1.0)
    ri = _finite(rescale_intercept, 0.0)
    ss = _finite(scale_slope, 0.0)
    if ss == 0.0 or rs * ss == 0.0:
        return None
    return rs / (rs * ss), ri / (rs * ss)


def _finite(value: Any, default: float) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return default
    return f if math.isfinite(f) else default


# ---------------------------------------------------------------------------------------
# Real World Value Mapping


@dataclass(frozen=True)
class RealWorldMapping:
    """One item of a Real World Value Mapping Sequence (0040,9096).

    Attributes
    ----------
    slope, intercept
        RealWorldValueSlope / Intercept (``None`` with a lookup table).
    first, last
        Real World Value First / Last Value Mapped: the stored values the item maps.
    units
        The UCUM code of MeasurementUnitsCodeSequence (``"1"``: no units).
    units_meaning
        Its code meaning (``"milliradian"``, ``"no units"``...).
    label, explanation
        LUTLabel (0040,9210) and LUTExplanation (0028,3003).
    lut
        RealWorldValueLUTData (0040,9212), or ``None`` for a linear mapping.
    """

    slope: float | None
    intercept: float | None
    first: float | None
    last: float | None
    units: str | None = None
    units_meaning: str | None = None
    label: str | None = None
    explanation: str | None = None
    lut: tuple[float, ...] | None = None

    def as_value(self) -> tuple[Any, ...]:
        """Return a JSON-friendly, hashable tuple (the catalog's form)."""
        return (
            self.slope, self.intercept, self.first, self.last, self.units,
            self.units_meaning, self.label, self.explanation, self.lut,
        )  # fmt: skip

    @classmethod
    def from_value(cls, value: Sequence[Any]) -> RealWorldMapping:
        """Build from :meth:`as_value`'s tuple (or the list a JSON round trip makes of it)."""
        slope, intercept, first, last, units, meaning, label, explanation, lut = value
        return cls(
            _opt_float(slope), _opt_float(intercept), _opt_float(first), _opt_float(last),
            units, meaning, label, explanation,
            None if lut is None else tuple(float(v) for v in lut),
        )  # fmt: skip

    def bounds(self, pixel_representation: int = 0) -> tuple[float, float]:
        """``(first, last)`` stored values mapped, read as signed for signed pixel data.

        Implicit VR files do not say whether the first/last values are US or SS; they are
        then decoded unsigned and turned signed here when the pixels are.
        """
        lo = -math.inf if self.first is None else self.first
        hi = math.inf if self.last is None else self.last
        if pixel_representation == 1:
            lo = lo - 65536 if 32768 <= lo < 65536 else lo
            hi = hi - 65536 if 32768 <= hi < 65536 else hi
        return lo, hi


def _opt_float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    text = str(value).strip(" \x00")
    return text or None


def _number(value: Any, signed: bool = False) -> float | None:
    """Return a US/SS/FD value as pydicom decodes it, or from raw bytes (implicit VR UN)."""
    if isinstance(value, (bytes, bytearray)):
        if len(value) == 2:
            return float(struct.unpack("<h" if signed else "<H", value)[0])
        if len(value) == 8:
            return float(struct.unpack("<d", value)[0])
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    return _opt_float(value)


def real_world_mappings(sequence: Any) -> tuple[tuple[Any, ...], ...] | None:
    """Read a pydicom RealWorldValueMappingSequence into the catalog's tuple form.

    Parameters
    ----------
    sequence
        The sequence (or ``None``).

    Returns
    -------
    tuple of tuple or None
        One :meth:`RealWorldMapping.as_value` per item that maps values (a slope or a
        lookup table); ``None`` when there is none.
    """
    if sequence is None:
        return None
    items = []
    try:
        iterator = iter(sequence)
    except TypeError:
        return None
    for item in iterator:
        mapping = _mapping_from_item(item)
        if mapping is not None:
            items.append(mapping.as_value())
    return tuple(items) or None


def _mapping_from_item(item: Any) -> RealWorldMapping | None:
    try:
        slope = _number(item.get(0x00409225).value) if 0x00409225 in item else None
        intercept = _number(item.get(0x00409224).value) if 0x00409224 in item else None
        lut = None
        if 0x00409212 in item:
            raw = item.get(0x00409212).value
            if isinstance(raw, (bytes, bytearray)):
                n = len(raw) // 8
                raw = struct.unpack(f"<{n}d", bytes(raw[: n * 8]))
            elif not isinstance(raw, (list, tuple)) and type(raw).__name__ != "MultiValue":
                raw = [raw]
            lut = tuple(float(v) for v in raw)
        if slope is None and not lut:
            return None
        first = _number(item.get(0x00409216).value) if 0x00409216 in item else None
        last = _number(item.get(0x00409211).value) if 0x00409211 in item else None
        units = meaning = None
        if 0x004008EA in item and len(item.get(0x004008EA).value):
            code = item.get(0x004008EA).value[0]
            units = _text(code.get("CodeValue"))
            meaning = _text(code.get("CodeMeaning"))
        return RealWorldMapping(
            slope=slope,
            intercept=intercept if intercept is not None else (0.0 if slope is not None else None),
            first=first,
            last=last,
            units=units,
            units_meaning=meaning,
            label=_text(item.get("LUTLabel")),
            explanation=_text(item.get("LUTExplanation")),
            lut=lut or None,
        )
    except Exception as exc:  # a damaged item maps nothing; the others still count
        logger.debug("unreadable Real World Value Mapping item: %s", exc)
        return None


def decode_raw_sequence(raw: bytes, vr: bytes | None, implicit: bool) -> Any:
    """Parse the raw value of a top-level (0040,9096) kept by the fast header reader.

    ``raw`` is the value as it stands in the file (a defined length, or the items up to and
    including the sequence delimiter); pydicom parses the one element.
    """
    from io import BytesIO

    from pydicom.filereader import read_dataset

    undefined = raw[-8:] == b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    length = 0xFFFFFFFF if undefined else len(raw)
    tag = struct.pack("<HH", 0x0040, 0x9096)
    as_implicit = implicit or vr is None or vr == b"UN"
    if as_implicit:
        head = tag + struct.pack("<I", length)
    else:
        head = tag + b"SQ\0\0" + struct.pack("<I", length)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = read_dataset(BytesIO(head + raw), as_implicit, True)
        return real_world_mappings(ds.get(_RWV_TAG).value if _RWV_TAG in ds else None)


# ---------------------------------------------------------------------------------------
# per-frame factors


@dataclass
class FrameScaling:
    """Per-frame factors of one scaling over the rows of a frame table.

    Attributes
    ----------
    requested
        The scaling asked for.
    applied
        What was applied: ``requested``, or ``"display"`` when no frame had precise
        values.
    slopes, intercepts
        Per row: the linear factors from stored to output values (for a real-world lookup
        table row: NaN).
    mappings
        Per row, for ``"real_world"``: ``(first, last, lut or None)`` of the applied item
        (values outside first..last become NaN); ``None`` for other scalings.
    per_row
        Extra per-row values to record (``PhilipsScaleSlope``...).
    attrs
        Constant attributes to record (units, LUT label...).
    """

    requested: str
    applied: str
    slopes: np.ndarray
    intercepts: np.ndarray
    mappings: list[tuple[float, float, np.ndarray | None]] | None = None
    per_row: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


def _column(rows: Any, name: str, n: int) -> list[Any]:
    if hasattr(rows, "columns"):
        if name not in rows.columns:
            return [None] * n
        # a frame table's column array (dicomxr.frames.FrameTable.column): no Series
        array = rows.column(name) if hasattr(rows, "column") else rows[name].array
        if isinstance(array, np.ndarray):
            values = array.astype(object)
            values[pd.isna(values)] = None
            return values.tolist()
        return array.to_numpy(dtype=object, na_value=None).tolist()
    return [r.get(name) for r in rows]


def _floats(values: Iterable[Any], default: float) -> np.ndarray:
    return np.array([_finite(v, default) for v in values], dtype=np.float64)


def frame_scaling(
    rows: Any,
    scaling: str = "display",
    *,
    used: Sequence[int] | None = None,
    what: str = "this series",
    pixel_representation: int = 0,
) -> FrameScaling:
    """Per-frame factors of ``scaling`` for the rows of a frame table.

    Parameters
    ----------
    rows
        ``plan.frames`` (a DataFrame) or a list of row dicts, with ``RescaleSlope``,
        ``RescaleIntercept`` and the :data:`COLUMNS` the catalog reads.
    scaling
        One of :data:`SCALINGS`.
    used
        Rows the image shows (the others are not checked for a mapping).
    what
        How to name the series in messages.
    pixel_representation
        Of the stored values (signed first/last values mapped of implicit VR files).

    Returns
    -------
    FrameScaling

    Raises
    ------
    ScalingError
        ``scaling`` is unknown, or ``"real_world"`` and a shown frame has no mapping.
    """
    scaling = check_scaling(scaling)
    n = len(rows)
    rs = _floats(_column(rows, "RescaleSlope", n), 1.0)
    ri = _floats(_column(rows, "RescaleIntercept", n), 0.0)
    shown = np.arange(n) if used is None else np.unique(np.asarray(used, dtype=np.int64))
    if scaling == "display":
        out = FrameScaling(scaling, "display", rs, ri)
    elif scaling == "precise":
        out = _precise(rows, n, rs, ri, shown, what)
    else:
        out = _real_world(rows, n, shown, what, pixel_representation)
    for name, values in _recorded(rows, n).items():
        out.per_row.setdefault(name, values)
    return out


def _recorded(rows: Any, n: int) -> dict[str, np.ndarray]:
    """Return the values every scaling records, as dcm2niix's sidecar does.

    The Philips Scale Slope and the first linear Real World Value Mapping, where the frames
    have them.
    """
    out: dict[str, np.ndarray] = {}
    scale = _floats(_column(rows, "PhilipsScaleSlope", n), np.nan)
    if np.isfinite(scale).any():
        out["PhilipsScaleSlope"] = scale
    slope, intercept = np.full(n, np.nan), np.full(n, np.nan)
    memo: dict[Any, list[RealWorldMapping]] = {}
    for i, value in enumerate(_column(rows, "RealWorldValueMapping", n)):
        items = _mappings_of(value, memo)
        if items and items[0].lut is None and items[0].slope is not None:
            slope[i], intercept[i] = items[0].slope, items[0].intercept or 0.0
    if np.isfinite(slope).any():
        out["RealWorldValueSlope"] = slope
        out["RealWorldValueIntercept"] = intercept
    return out


def _precise(
    rows: Any, n: int, rs: np.ndarray, ri: np.ndarray, shown: np.ndarray, what: str
) -> FrameScaling:
    manufacturer = _column(rows, "Manufacturer", n)
    ss = _column(rows, "PhilipsScaleSlope", n)
    slopes, intercepts = rs.copy(), ri.copy()
    precise = np.zeros(n, dtype=bool)
    for i in range(n):
        if not is_philips(manufacturer[i]):
            continue
        factors = precise_factors(rs[i], ri[i], ss[i])
        if factors is not None:
            slopes[i], intercepts[i] = factors
            precise[i] = True
    scale = _floats(ss, np.nan)
    shown_precise = precise[shown] if len(shown) else precise
    if not shown_precise.any():
        reason = (
            "it is not a Philips series"
            if not any(is_philips(manufacturer[i]) for i in shown)
            else "no frame has a Philips Scale Slope (2005,100E) other than 0"
        )
        logger.info("scaling='precise' for %s: %s; display values kept", what, reason)
        return FrameScaling(
            "precise", "display", rs, ri,
            attrs={"scaling_note": f"precise values requested but {reason}: display values"},
        )  # fmt: skip
    out = FrameScaling(
        "precise", "precise", slopes, intercepts, per_row={"PhilipsScaleSlope": scale}
    )
    if not shown_precise.all():
        missing = int((~shown_precise).sum())
        message = (
            f"scaling='precise' for {what}: {missing} of {len(shown)} frames have no Philips "
            "Scale Slope (2005,100E); they keep their display values (the 'PhilipsScaleSlope' "
            "coordinate is NaN there)"
        )
        warnings.warn(message, DicomxrWarning, stacklevel=user_stacklevel())
        out.attrs["scaling_note"] = message
    return out


def _mappings_of(value: Any, memo: dict[Any, list[RealWorldMapping]] | None = None) -> list:
    """Return the mapping items of a catalog value; ``memo`` shares them between equal ones."""
    if value is None or isinstance(value, float):
        return []
    if memo is not None:
        try:
            return memo[value]
        except KeyError:
            pass
        except TypeError:  # unhashable (a list from JSON): not shared
            memo = None
    out = []
    for item in value:
        try:
            out.append(RealWorldMapping.from_value(item))
        except (TypeError, ValueError):
            continue
    if memo is not None:
        memo[value] = out
    return out


def _real_world(
    rows: Any, n: int, shown: np.ndarray, what: str, pixel_representation: int
) -> FrameScaling:
    values = _column(rows, "RealWorldValueMapping", n)
    chosen: list[RealWorldMapping | None] = [None] * n
    others: set[str] = set()
    memo: dict[Any, list[RealWorldMapping]] = {}
    for i in range(n):
        items = _mappings_of(values[i], memo)
        if items:
            chosen[i] = items[0]
            others.update(str(m.units) for m in items[1:] if m.units != items[0].units)
    lacking = [int(i) for i in shown if chosen[i] is None]
    if lacking:
        raise ScalingError(
            f"scaling='real_world' for {what}: {len(lacking)} of {len(shown)} frames carry no "
            "Real World Value Mapping Sequence (0040,9096), so there are no real-world values "
            "to give; use scaling='display' (RescaleSlope/Intercept) or, for Philips MR, "
            "scaling='precise'"
        )
    slopes = np.full(n, np.nan)
    intercepts = np.full(n, np.nan)
    mappings: list[tuple[float, float, np.ndarray | None]] = []
    units: set[str | None] = set()
    for i, m in enumerate(chosen):
        if m is None:  # a frame the image does not show
            mappings.append((-math.inf, math.inf, None))
            slopes[i], intercepts[i] = 1.0, 0.0
            continue
        lo, hi = m.bounds(pixel_representation)
        if m.lut is not None:
            mappings.append((lo, hi, np.asarray(m.lut, dtype=np.float64)))
        else:
            slopes[i], intercepts[i] = m.slope, m.intercept or 0.0
            mappings.append((lo, hi, None))
        units.add(m.units)
    first = next(m for m in chosen if m is not None)
    attrs: dict[str, Any] = {}
    if len(units) == 1:
        if first.units is not None:
            attrs["units"] = first.units
        if first.units_meaning:
            attrs["units_meaning"] = first.units_meaning
    else:
        attrs["units"] = "mixed"
        attrs["scaling_note"] = (
            f"frames map to different units ({', '.join(sorted(str(u) for u in units))}); "
            "see the 'real_world_units' coordinate"
        )
    if first.label:
        attrs["LUTLabel"] = first.label
    if first.explanation:
        attrs["LUTExplanation"] = first.explanation
    if any(m is not None and m.lut is not None for m in chosen):
        attrs["real_world_lut"] = 1
    if others:
        attrs["real_world_other_units"] = sorted(others)
        logger.info(
            "%s: frames carry several Real World Value Mapping items; the first is applied "
            "(others map to %s)", what, ", ".join(sorted(others)),
        )  # fmt: skip
    per_row = {}
    if len(units) > 1:
        per_row["real_world_units"] = np.array(
            ["" if m is None or m.units is None else m.units for m in chosen], dtype=object
        )
    return FrameScaling(
        "real_world", "real_world", slopes, intercepts, mappings=mappings, per_row=per_row,
        attrs=attrs,
    )  # fmt: skip
