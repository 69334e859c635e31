"""Series plans: grouping, splitting, sorting along the normal and dimension discovery.

:func:`plan_series` turns a catalog (:func:`dicomxr.scan`) or a frame table
(:func:`dicomxr.frames.expand`) into one :class:`SeriesPlan` per image series, before any
pixel is read. What it does, in order:

1. **Set apart** what is not part of an image volume, with a reason: objects without pixel
   data (Philips ``*_Raw.dcm`` raw-data objects, SR, presentation states), pixel data cut
   short, secondary-capture pages, localizers (unless ``include`` asks for them).
2. **Group** by SeriesInstanceUID **and** SOPClassUID (a classic and an enhanced export of
   one acquisition share a SeriesInstanceUID) and SeriesNumber, then **split** where the
   orientation, the image size, the samples per pixel or the pixel spacing differ.
3. **Sort** frames by their position along the slice normal (the cross product of the
   orientation's direction cosines); InstanceNumber only breaks ties.
4. **Discover** the dimensions of frames that share a position: ``time`` (temporal
   position, or distinct acquisition times), ``label`` (ASL label/control), ``echo``,
   ``component`` (magnitude/phase/real/imaginary), ``diffusion`` (b-value and direction:
   b = 2 is not b = 0), ``stack``. Kinds that vary together as a full cartesian product get
   one dim each (a field map is ``("echo", "component", "slice")``); otherwise they share
   one ``volume`` dim.
5. **Check** the grid and the stack (:mod:`dicomxr.geometry`) and apply the caller's
   policy for irregular stacks and duplicate positions.

Plan keys
---------
``plan.key`` is the SeriesInstanceUID when the UID yields one plan, else
``"<SeriesInstanceUID>/<n>"`` (``n`` from 1, in the order SOP class, SeriesNumber, image size,
orientation, position). Keys are what ``open_series(..., series=...)`` accepts.
"""

from __future__ import annotations

import html
import logging
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from dicomxr import geometry
from dicomxr.errors import (
    GeometryError,
    GeometryWarning,
    InstanceCollisionWarning,
    user_stacklevel,
)
from dicomxr.frames import FrameTable, frame_table, object_values
from dicomxr.geometry import GeometryReport
from dicomxr.options import get_options

__all__ = ["SeriesPlan", "SeriesPlans", "plan_series"]

logger = logging.getLogger(__name__)

_SECONDARY_CAPTURE = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.5.1.4.1.1.7.1",
        "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.3",
        "1.2.840.10008.5.1.4.1.1.7.4",
    }
)
_LOCALIZER_TOKENS = frozenset({"LOCALIZER", "SCOUT", "SURVEY", "LOCALIZERS"})
_INCLUDABLE = frozenset({"localizer", "secondary_capture"})
_COMPONENT_ORDER = {"MAGNITUDE": 0, "PHASE": 1, "REAL": 2, "IMAGINARY": 3}
# outer to inner; "slice" always last
_KIND_ORDER = ("stack", "time", "label", "echo", "component", "diffusion", "volume")
_PATIENT_KEYS = ("PatientID", "PatientName")

# attributes that become coordinates when they vary along the frame dims (in this order)
_COORD_COLUMNS = (
    "InstanceNumber",
    "SOPInstanceUID",
    "path",
    "frame",
    "tile",
    "AcquisitionNumber",
    "AcquisitionDate",
    "AcquisitionTime",
    "AcquisitionDateTime",
    "ContentTime",
    "FrameAcquisitionDateTime",
    "TriggerTime",
    "EchoTime",
    "EchoNumbers",
    "TemporalPositionIdentifier",
    "TemporalPositionIndex",
    "DiffusionBValue",
    "ComplexImageComponent",
    "LabelType",
    "StackID",
    "InStackPositionNumber",
    "SliceLocation",
    "SliceThickness",
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
    "ImageType",
)
# always coordinates (0-d when constant), per the contract
_ALWAYS_COORDS = (
    "position_x",
    "position_y",
    "position_z",
    "InstanceNumber",
    "SOPInstanceUID",
    "path",
    "frame",
)
# constant attributes copied to plan.attrs when present
_ATTR_COLUMNS = (
    "Modality",
    "SOPClassUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "FrameOfReferenceUID",
    "SeriesDescription",
    "SeriesNumber",
    "StudyDescription",
    "StudyDate",
    "StudyID",
    "Manufacturer",
    "ManufacturerModelName",
    "TransferSyntaxUID",
    "PixelSpacing",
    "ImageOrientationPatient",
    "SliceThickness",
    "SpacingBetweenSlices",
    "GantryDetectorTilt",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "WindowCenterWidthExplanation",
    "VOILUTFunction",
    "EchoTime",
    "EchoNumbers",
    "TriggerTime",
    "DiffusionBValue",
    "AcquisitionNumber",
    "AcquisitionDate",
    "AcquisitionTime",
    "ComplexImageComponent",
    "ImageType",
)


class _FramesField:
    """``SeriesPlan.frames``: a DataFrame, made from the plan's light frame table when first read.

    Planning keeps each plan's frames as a :class:`~dicomxr.frames.FrameTable` (the
    catalog's columns one value per instance); most consumers read columns of it
    (:attr:`SeriesPlan.frame_table`), and the ~90-column DataFrame is made only for a
    caller that asks for ``plan.frames``. A dataclass field without a default (a
    descriptor-typed field): ``SeriesPlan(frames=df, ...)`` and ``dataclasses.replace`` work.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, plan: Any, owner: type | None = None) -> pd.DataFrame:
        if plan is None:
            raise AttributeError("frames")  # no class-level default: a required field
        value = plan.__dict__[self.slot]
        if isinstance(value, FrameTable):
            value = plan.__dict__[self.slot] = value.to_pandas()
            plan.__dict__["_frame_table"] = None  # the DataFrame is the truth from now on
        return value

    def __set__(self, plan: Any, value: pd.DataFrame | FrameTable) -> None:
        plan.__dict__[self.slot] = value
        plan.__dict__["_frame_table"] = value if isinstance(value, FrameTable) else None


@dataclass
class SeriesPlan:
    """How the frames of one series become an array, decided before any pixel is read.

    Attributes
    ----------
    key
        Stable, unique name: the SeriesInstanceUID, or ``"<uid>/<n>"`` when one UID gives
        several plans. ``open_series(..., series=key)`` selects it.
    label
        Human name: SeriesNumber, SeriesDescription, SOP class (and why it was split).
    frames
        One row per frame of this plan (:func:`dicomxr.frames.expand` columns); ``grid``
        holds row positions into it (not necessarily in grid order). Made from
        :attr:`frame_table` when first read: opening the plan does not need it.
    dims
        Names of the frame-grid dims, always ending with ``"slice"``.
    grid
        ``int64`` array of the frame-grid shape: row index into ``frames``, ``-1`` where a
        frame is missing.
    frame_shape
        ``(rows, cols)`` or ``(rows, cols, samples)``.
    coords
        ``name -> (dims, values)`` for the xarray layer: ``slice`` (position along the
        normal, mm), one dimension coordinate per extra dim, and every attribute that varies
        along the frame dims (positions, InstanceNumber, SOPInstanceUID, path, times, echo,
        b-value, rescale, ...), each on the dims it varies along.
    attrs
        Constant attributes (JSON-friendly), plus ``affine`` (nested list), ``geometry``
        (the report as a dict), ``series_key`` and ``units``. No patient identifiers.
    geometry
        The :class:`~dicomxr.geometry.GeometryReport`.
    affine
        4x4 LPS affine for the index ``(slice, row, col, 1)``.
    set_apart
        Frames of this SeriesInstanceUID left out of the plan: dicts
        ``{"path", "frame", "reason"}``.
    patient
        Patient identifiers (``PatientID``, ``PatientName``), kept apart from ``attrs``.
    """

    key: str
    label: str
    frames: pd.DataFrame = _FramesField()  # type: ignore[assignment]
    dims: tuple[str, ...]
    grid: np.ndarray
    frame_shape: tuple[int, ...]
    coords: dict[str, tuple[tuple[str, ...], np.ndarray]]
    attrs: dict[str, Any]
    geometry: GeometryReport
    affine: np.ndarray
    set_apart: list[dict[str, Any]] = field(default_factory=list)
    patient: dict[str, Any] = field(default_factory=dict)

    @property
    def frame_table(self) -> FrameTable:
        """The frames as a :class:`~dicomxr.frames.FrameTable`: columns read without a DataFrame.

        The same rows as :attr:`frames` (which is made from it when first read); after
        ``frames`` was read or set, a snapshot of that DataFrame as it is now.
        """
        table = self.__dict__.get("_frame_table")
        return table if table is not None else FrameTable.from_frames(self.frames)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the array this plan makes: ``grid.shape + frame_shape``."""
        return tuple(self.grid.shape) + tuple(self.frame_shape)

    @property
    def n_frames(self) -> int:
        """Number of frames present (cells of the grid that are not ``-1``)."""
        return int((self.grid >= 0).sum())

    @property
    def sizes(self) -> dict[str, int]:
        """Frame-grid dim name -> length."""
        return dict(zip(self.dims, self.grid.shape, strict=True))

    def _summary_rows(self) -> list[tuple[str, str]]:
        a = self.attrs
        table = self.frame_table
        files = table["path"].nunique() if "path" in table else 0
        rows = [
            ("label", self.label),
            ("modality", f"{a.get('Modality', '?')}, {a.get('Manufacturer', '?')}"),
            ("frames", f"{self.n_frames} frame(s) from {files} file(s)"),
            ("dims", ", ".join(f"{d}={n}" for d, n in self.sizes.items()) + " | row, col"),
            ("shape", " x ".join(str(s) for s in self.shape)),
        ]
        sources = self.attrs.get("dim_sources", {})
        for dim in self.dims[:-1]:
            values = self.coords.get(dim, ((), np.array([])))[1]
            source = sources.get(dim)
            rows.append((dim, _short(values) + (f"  (from {source})" if source else "")))
        extra = [name for name, (dims, _) in self.coords.items() if dims and name not in self.dims]
        if extra:
            rows.append(("coordinates", ", ".join(extra)))
        missing = int((self.grid < 0).sum())
        if missing:
            rows.append(("missing frames", f"{missing} cell(s) of the grid have no frame"))
        if self.set_apart:
            reasons: dict[str, int] = {}
            for item in self.set_apart:
                reasons[item["reason"]] = reasons.get(item["reason"], 0) + 1
            rows.append(("set apart", "; ".join(f"{n} x {r}" for r, n in reasons.items())))
        return rows

    def describe(self) -> str:
        """Return a readable summary of the plan and its geometry report."""
        rows = self._summary_rows()
        width = max(len(k) for k, _ in rows)
        lines = [f"SeriesPlan {self.key}"]
        lines += [f"  {k:<{width}} : {v}" for k, v in rows]
        lines += ["  " + line for line in str(self.geometry).splitlines()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{d}: {n}" for d, n in self.sizes.items())
        return f"<SeriesPlan {self.key!r} {self.label!r} ({sizes}) frame {self.frame_shape}>"

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>{html.escape(v)}</td></tr>"
            for k, v in self._summary_rows()
        )
        return (
            f"<div class='dicomxr-plan'><b>SeriesPlan</b> <code>{html.escape(self.key)}</code>"
            f"<table>{body}</table>{self.geometry._repr_html_()}</div>"
        )


_SET_APART_COLUMNS = (
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "path",
    "frame",
    "reason",
)


class SeriesPlans(list):
    """The list of plans :func:`plan_series` returns, with what was set apart.

    A plain ``list`` of :class:`SeriesPlan` plus:

    Attributes
    ----------
    set_apart : pandas.DataFrame
        Every frame left out of all plans: ``SeriesInstanceUID``, ``SeriesNumber``,
        ``SeriesDescription``, ``path``, ``frame``, ``reason``.
    skipped : list of dict
        The files the scan skipped (``{"path", "reason"}``, the catalog's
        ``attrs["skipped"]``), kept with the plans for error messages.
    """

    set_apart: pd.DataFrame
    skipped: list[dict[str, Any]]

    def __init__(
        self,
        plans: Iterable[SeriesPlan] = (),
        *,
        set_apart: pd.DataFrame | None = None,
        skipped: Iterable[dict[str, Any]] = (),
    ) -> None:
        super().__init__(plans)
        if set_apart is None:  # a copy of the empty table, not its construction
            set_apart = _NOTHING_SET_APART.copy()
        self.set_apart = set_apart
        self.skipped = list(skipped)

    def get(self, key: str) -> SeriesPlan:
        """Return the plan with this key (or whose key starts with it, when unique)."""
        for plan in self:
            if plan.key == key:
                return plan
        hits = [p for p in self if p.key.startswith(key)]
        if len(hits) == 1:
            return hits[0]
        raise KeyError(f"no plan {key!r}; plans are: {[p.key for p in self]}")

    def table(self) -> pd.DataFrame:
        """One row per plan: key, label, dims, shape, modality, SOP class, regular geometry.

        ``SOPClass`` is the SOP class name (``"MR Image Storage"``, ``"Enhanced MR Image
        Storage"``...), which tells classic and enhanced copies of one series apart.
        """
        return pd.DataFrame(
            [
                {
                    "key": p.key,
                    "label": p.label,
                    "dims": " x ".join(f"{d}={n}" for d, n in p.sizes.items()),
                    "shape": p.shape,
                    "Modality": p.attrs.get("Modality"),
                    "SOPClass": sop_class_name(p.attrs.get("SOPClassUID")),
                    "regular": p.geometry.regular,
                }
                for p in self
            ]
        )

    def describe(self) -> str:
        """Readable list of the plans and of what was set apart."""
        lines = [f"{len(self)} series plan(s)"]
        lines += [
            f"  {p.key}  {p.label}  " + " x ".join(f"{d}={n}" for d, n in p.sizes.items())
            for p in self
        ]
        if len(self.set_apart):
            counts = self.set_apart.groupby("reason").size()
            lines.append("set apart:")
            lines += [f"  {n} x {reason}" for reason, n in counts.items()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return self.table().to_html(index=False)


_NOTHING_SET_APART = pd.DataFrame(
    {name: pd.Series([], dtype=object) for name in _SET_APART_COLUMNS}
)


def sop_class_name(uid: Any) -> str:
    """Return the readable name of a SOP Class UID (``"Enhanced MR Image Storage"``).

    The UID itself when pydicom does not know it, ``""`` when there is none.
    """
    text = "" if uid is None else str(uid).strip()
    if text in ("", "<NA>", "nan", "None"):
        return ""
    from pydicom.uid import UID

    return str(UID(text).name or text)


def _short(values: Any, limit: int = 8) -> str:
    vals = list(np.asarray(values, dtype=object).ravel())
    text = ", ".join(str(v) for v in vals[:limit])
    return text + (f", ... ({len(vals)})" if len(vals) > limit else "")


# ---------------------------------------------------------------------------------------
# column access helpers (numpy, once per call)


class _Columns:
    """Numpy arrays of the frame table's columns, converted once.

    A column of the catalog is converted one value per instance and spread over the frames
    with the table's ``src``; :meth:`constant` looks at each instance once.
    """

    def __init__(self, table: FrameTable, owned: bool = False) -> None:
        self.table = table
        self.n = len(table)
        self._owned = owned  # the table was made by planning: no one else holds it
        self._cache: dict[str, np.ndarray] = {}
        self._kinds: dict[str, bool] = {}

    def _convert(self, name: str, kind: str, convert: Any, missing: Any) -> np.ndarray:
        key = kind + name
        arr = self._cache.get(key)
        if arr is None:
            if name not in self.table:
                arr = np.full(self.n, missing, dtype=object if missing is None else np.float64)
            elif self._from_catalog(name):
                arr = self._spread(self._per_instance(name, kind, convert))
            else:
                arr = convert(self.table.column(name))
            self._cache[key] = arr
        return arr

    def _from_catalog(self, name: str) -> bool:
        """Whether ``name`` is a catalog column (one value per instance, spread by ``src``)."""
        return name in self.table and self.table.per_instance(name) is not None

    def _per_instance(self, name: str, kind: str, convert: Any) -> np.ndarray:
        """``convert`` of a catalog column's values, one per instance (cached)."""
        key = "i" + kind + name
        arr = self._cache.get(key)
        if arr is None:
            arr = self._cache[key] = convert(self.table.per_instance(name))
        return arr

    def _spread(self, per_instance: np.ndarray) -> np.ndarray:
        """Values of the catalog's instances, one per frame."""
        return per_instance if self.table.identity else per_instance[self.table.src]

    def mapped(self, name: str, func: Any) -> np.ndarray:
        """``func`` (object array -> array of as many values) of the column, per frame.

        A catalog column is passed one value per instance and the result spread over the
        frames: a test of every value costs one call per file, not per frame.
        """
        key = "m:" + getattr(func, "__name__", repr(func)) + ":" + name
        arr = self._cache.get(key)
        if arr is None:
            if self._from_catalog(name):
                arr = self._spread(func(self._per_instance(name, "o:", _to_object)))
            else:
                arr = func(self.obj(name))
            self._cache[key] = arr
        return arr

    def obj(self, name: str) -> np.ndarray:
        return self._convert(name, "o:", _to_object, None)

    def num(self, name: str) -> np.ndarray:
        return self._convert(name, "f:", _to_float_array, np.nan)

    def vec(self, name: str, width: int) -> np.ndarray:
        """Return the column's tuples as ``(n, width)`` floats, NaN rows where not such a tuple."""
        key = f"v{width}:" + name
        arr = self._cache.get(key)
        if arr is None:
            if name not in self.table:
                arr = np.full((self.n, width), np.nan)
            elif self._from_catalog(name):
                arr = self._spread(_vectors(self._per_instance(name, "o:", _to_object), width))
            else:
                arr = _vectors(self.obj(name), width)
            self._cache[key] = arr
        return arr

    def has(self, name: str) -> bool:
        return name in self.table

    def instance_rows(self, rows: np.ndarray) -> np.ndarray:
        """One of ``rows`` per catalog instance, in order of first appearance (for :meth:`constant`)."""
        src = self.table.src[rows]
        if not len(rows) or (src == src[0]).all():
            return rows[:1]
        _, at = np.unique(src, return_index=True)
        return rows[np.sort(at)]

    def constant(
        self, name: str, rows: np.ndarray, instance_rows: np.ndarray, numeric: bool = False
    ) -> bool:
        """Tell :func:`_constant` of the column's values at ``rows`` (floats or objects).

        For a catalog column only ``instance_rows`` (:meth:`instance_rows` of ``rows``) are
        compared, in the catalog's own values: the same answer, without a value per frame.
        """
        if not self._from_catalog(name):
            return _constant((self.num(name) if numeric else self.obj(name))[rows])
        values = (
            self._per_instance(name, "f:", _to_float_array)
            if numeric
            else self._per_instance(name, "o:", _to_object)
        )
        src = self.table.src
        if len(instance_rows) == 1:  # one instance: the value against itself
            first = values[src[instance_rows[0]]]
            if numeric or first is None or isinstance(first, str):
                return True
        return _constant(values[src[instance_rows]])

    def value(self, name: str, row: int) -> Any:
        """Return the column's value (as :meth:`obj` gives it) at one row."""
        if self._from_catalog(name):
            return self._per_instance(name, "o:", _to_object)[self.table.src[row]]
        return self.obj(name)[row]

    def whole(self) -> FrameTable:
        """Return the table for a plan of every frame: itself (once) when planning made it.

        A table the caller passed is shared through a take of all its rows instead.
        """
        if self._owned:
            self._owned = False
            return self.table
        return self.table.take(np.arange(self.n))

    def is_numeric(self, name: str) -> bool:
        return self._dtype_is(name, pd.api.types.is_numeric_dtype)

    def is_integer(self, name: str) -> bool:
        return self._dtype_is(name, pd.api.types.is_integer_dtype)

    def _dtype_is(self, name: str, test: Any) -> bool:
        key = test.__name__ + ":" + name
        answer = self._kinds.get(key)
        if answer is None:
            answer = self._kinds[key] = bool(test(self.table.dtype(name)))
        return answer

    def flag(self, name: str) -> np.ndarray:
        values = self.table.column(name)
        if isinstance(values, np.ndarray) and values.dtype == bool:
            return values.copy()
        return np.array(
            [bool(v) if v is not None else False for v in _to_object(values)], dtype=bool
        )


def _vectors(values: np.ndarray, width: int) -> np.ndarray:
    """Tuples of ``width`` numbers as rows of a float array; NaN rows for anything else."""
    n = len(values)
    if n:
        try:  # every row a tuple of the right length: one conversion
            fast = np.array(values.tolist(), dtype=np.float64)
        except (TypeError, ValueError):
            fast = None
        if fast is not None and fast.shape == (n, width):
            return fast
    arr = np.full((n, width), np.nan)
    for i, v in enumerate(values):
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            try:
                if len(v) == width:
                    arr[i] = v
            except (TypeError, ValueError):
                pass
    return arr


def _to_object(values: Any) -> np.ndarray:
    return object_values(values)


def _to_float_array(values: Any) -> np.ndarray:
    try:
        if isinstance(values, np.ndarray):
            return values.astype(np.float64)
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):
        return np.array([_to_float(v) for v in _to_object(values)], dtype=np.float64)


def _to_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return np.nan


def _codes(values: np.ndarray) -> np.ndarray:
    """Integer codes of hashable values; None/NaN get their own code."""
    if len(values) and _one_value(values):
        return np.zeros(len(values), np.int64)
    codes, _ = _factorize(values)
    return codes.astype(np.int64)


def _one_value(values: np.ndarray) -> bool:
    """Tell whether a non-empty array holds one value throughout (all None counts)."""
    first = values[0]
    if first is None:
        return values.dtype == object and values.tolist().count(None) == len(values)
    return _all_equal(values, first)


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes in order of first appearance and the distinct values; None/NaN get a code too.

    ``pandas.factorize`` of the values as objects, without building a Series.
    """
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        # numbers: pandas' float table (NaN one value), the levels as Python floats
        codes, uniques = pd.factorize(values, use_na_sentinel=False)
        return codes, uniques.astype(object)
    return pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=False)


def _all_equal(values: np.ndarray, first: Any) -> bool:
    """Tell whether every element equals ``first`` (vectorised for scalars)."""
    if isinstance(first, (str, int, float, np.number)) and not (
        isinstance(first, float) and math.isnan(first)
    ):
        try:
            return bool(np.all(values == first))
        except (TypeError, ValueError):
            pass
    if isinstance(first, tuple) and values.dtype == object:
        # tuples compare item by item as `==` does, in C: list.count's identity-first
        # comparison differs from `==` only for an object unequal to itself (a NaN), and a
        # tuple holding the very same NaN object compares equal either way
        return values.tolist().count(first) == len(values)
    return all(v == first for v in values)


def _combine(*codes: np.ndarray) -> np.ndarray:
    """One code per distinct tuple of codes (row-wise)."""
    if not codes:
        raise ValueError("nothing to combine")
    if len(codes) == 1:
        return codes[0]
    sizes = [int(c.max(initial=0)) + 1 for c in codes]
    if math.prod(sizes) < 2**62 and all(int(c.min(initial=0)) >= 0 for c in codes):
        # one integer per tuple, ordered as the tuples are: the codes np.unique(axis=0) gives
        _, inverse = np.unique(np.ravel_multi_index(codes, sizes), return_inverse=True)
    else:
        _, inverse = np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


# ---------------------------------------------------------------------------------------
# public entry point


def plan_series(
    catalog_or_frames: pd.DataFrame,
    *,
    on_irregular: str = "warn",
    on_duplicate: str = "warn",
    include: Iterable[str] = (),
) -> SeriesPlans:
    """Plan every image series of a catalog or frame table.

    Parameters
    ----------
    catalog_or_frames
        The DataFrame from :func:`dicomxr.scan` (expanded to frames here) or from
        :func:`dicomxr.frames.expand` (recognised by its ``frame`` column).
    on_irregular
        What to do with a stack whose spacing is uneven, whose slices are missing or off a
        line, or whose frame grid is incomplete: ``"warn"`` (keep all frames, true
        positions as the ``slice`` coordinate, approximate affine, :class:`GeometryWarning`),
        ``"raise"`` (:class:`GeometryError`), ``"split"`` (regular blocks become separate
        plans), ``"fill"`` (whole missing slices become empty NaN frames so the affine is
        exact; otherwise like ``"warn"``), ``"ignore"`` (like ``"warn"``, silently; the report
        still tells).
    on_duplicate
        What to do with frames that share a position and that no dimension tells apart:
        ``"warn"`` (keep them along an extra ``volume`` dim in InstanceNumber order, with a
        warning), ``"raise"``, ``"split"`` (one plan per copy), ``"ignore"``.
    include
        Frames normally set apart that should be planned: ``"localizer"``,
        ``"secondary_capture"``.

    Returns
    -------
    SeriesPlans
        A list of :class:`SeriesPlan` sorted by StudyInstanceUID, SeriesNumber, key; its
        ``set_apart`` attribute lists the frames left out and why.

    Raises
    ------
    GeometryError
        With ``on_irregular="raise"`` / ``on_duplicate="raise"``, naming the series and
        what is wrong.

    Examples
    --------
    >>> import dicomxr
    >>> plans = dicomxr.plan_series(dicomxr.scan("folder"))  # doctest: +SKIP
    >>> print(plans[0].describe())  # doctest: +SKIP
    """
    include = _check_arguments(on_irregular, on_duplicate, include)
    cols = _Columns(_frame_table(catalog_or_frames), owned="frame" not in catalog_or_frames.columns)
    reason = _set_apart_reasons(cols, include)
    _mark_copies(cols, reason)
    keep = np.flatnonzero(_free(reason))
    plans = _plan_groups(cols, keep, on_irregular, on_duplicate) if len(keep) else []
    gone = np.flatnonzero(~_free(reason))
    table = _set_apart_table(cols, gone, reason, plans)
    _add_set_apart(cols, gone, reason, plans)
    return SeriesPlans(
        sorted(plans, key=_plan_order),
        set_apart=table,
        skipped=catalog_or_frames.attrs.get("skipped", ()),
    )


def _check_arguments(
    on_irregular: str, on_duplicate: str, include: Iterable[str]
) -> frozenset[str]:
    """Refuse unknown policies and ``include`` values, naming the choices."""
    duplicate_policies = tuple(p for p in geometry.POLICIES if p != "fill")
    for name, value, allowed in (
        ("on_irregular", on_irregular, geometry.POLICIES),
        ("on_duplicate", on_duplicate, duplicate_policies),
    ):
        if value not in allowed:
            raise ValueError(f"{name}={value!r}; choose one of {list(allowed)}")
    include = frozenset(include)
    unknown = include - _INCLUDABLE
    if unknown:
        raise ValueError(
            f"include={sorted(unknown)} not understood; choose from {sorted(_INCLUDABLE)}"
        )
    return include


def _frame_table(catalog_or_frames: pd.DataFrame) -> FrameTable:
    """Return the frame table (a catalog is expanded here, into a light table)."""
    if "frame" in catalog_or_frames.columns:
        return FrameTable.from_frames(catalog_or_frames)
    if not len(catalog_or_frames):
        from dicomxr.frames import expand

        return FrameTable.from_frames(expand(catalog_or_frames))
    return frame_table(catalog_or_frames)


def _plan_groups(
    cols: _Columns, keep: np.ndarray, on_irregular: str, on_duplicate: str
) -> list[SeriesPlan]:
    """Plan every group of the kept frames and give the plans their keys."""
    by_uid: dict[str, list[SeriesPlan]] = {}
    for rows, split_note in _group(cols, keep):
        for plan in _plan_group(cols, rows, split_note, on_irregular, on_duplicate):
            by_uid.setdefault(plan.attrs.get("SeriesInstanceUID", ""), []).append(plan)
    plans: list[SeriesPlan] = []
    for uid, uid_plans in by_uid.items():
        uid_plans.sort(key=_key_order)
        for i, plan in enumerate(uid_plans, 1):
            plan.key = uid if len(uid_plans) == 1 else f"{uid}/{i}"
            plan.attrs["series_key"] = plan.key
        plans.extend(uid_plans)
    return plans


_SET_APART_NAMES = ("SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "path")


def _set_apart_table(
    cols: _Columns, gone: np.ndarray, reason: np.ndarray, plans: list[SeriesPlan]
) -> pd.DataFrame:
    """Every frame left out: set apart overall, and by the plans themselves."""
    if len(gone):
        table = pd.DataFrame(
            {
                "SeriesInstanceUID": cols.obj("SeriesInstanceUID")[gone],
                "SeriesNumber": cols.obj("SeriesNumber")[gone],
                "SeriesDescription": cols.obj("SeriesDescription")[gone],
                "path": cols.obj("path")[gone],
                "frame": cols.num("frame")[gone].astype(np.int64),
                "reason": reason[gone],
            }
        )
    else:  # nothing set apart (the usual case): the empty table, without its construction
        table = _EMPTY_SET_APART.copy()
    local = [
        {
            "SeriesInstanceUID": plan.attrs.get("SeriesInstanceUID"),
            "SeriesNumber": plan.attrs.get("SeriesNumber"),
            "SeriesDescription": plan.attrs.get("SeriesDescription"),
            **item,
        }
        for plan in plans
        for item in plan.set_apart
    ]
    if local:  # frames a plan left out itself (no position in a positioned series)
        table = pd.concat([table, pd.DataFrame(local)], ignore_index=True)
    return table


_EMPTY_SET_APART = pd.DataFrame(
    {
        **{name: np.empty(0, object) for name in _SET_APART_NAMES},
        "frame": np.empty(0, np.int64),
        "reason": np.empty(0, object),
    }
)


def _add_set_apart(
    cols: _Columns, gone: np.ndarray, reason: np.ndarray, plans: list[SeriesPlan]
) -> None:
    """Give each plan the frames of its SeriesInstanceUID that were set apart before grouping."""
    if not len(gone):
        return
    uid, paths, frame_idx = cols.obj("SeriesInstanceUID"), cols.obj("path"), cols.num("frame")
    extra: dict[str, list[dict[str, Any]]] = {}
    for i in gone:
        extra.setdefault(uid[i], []).append(
            {"path": paths[i], "frame": int(frame_idx[i]), "reason": reason[i]}
        )
    for plan in plans:
        plan.set_apart = extra.get(plan.attrs.get("SeriesInstanceUID"), []) + plan.set_apart


def _plan_order(plan: SeriesPlan) -> tuple[Any, ...]:
    """Order of the plans: StudyInstanceUID, SeriesNumber, key."""
    num = plan.attrs.get("SeriesNumber")
    return (
        str(plan.attrs.get("StudyInstanceUID", "")),
        num if isinstance(num, int) else 1 << 62,
        plan.key,
    )


def _key_order(plan: SeriesPlan) -> tuple[Any, ...]:
    """Order of the plans of one UID for their ``/<n>`` keys (independent of file order)."""
    num = plan.attrs.get("SeriesNumber")
    iop = plan.attrs.get("ImageOrientationPatient")
    slice_values = plan.coords["slice"][1]
    inst = plan.coords.get("InstanceNumber", ((), np.array([])))[1]
    inst = (
        np.asarray(inst, dtype=np.float64) if np.asarray(inst).dtype.kind in "if" else np.array([])
    )
    return (
        str(plan.attrs.get("SOPClassUID", "")),
        num if isinstance(num, int) else 1 << 62,
        tuple(plan.frame_shape),
        tuple(round(float(v), 4) for v in iop) if isinstance(iop, list) else (),
        float(slice_values[0]) if len(slice_values) else 0.0,
        float(np.nanmin(inst)) if inst.size and not np.isnan(inst).all() else 0.0,
        _first_path(plan.frame_table),
    )


def _first_path(table: FrameTable) -> str:
    if not len(table) or "path" not in table:
        return ""
    per_instance = table.per_instance("path")
    if per_instance is not None:
        return str(per_instance[int(table.src[0])])
    return str(table.column("path")[0])


def _set_apart_reasons(cols: _Columns, include: frozenset[str]) -> np.ndarray:
    n = cols.n
    reason = np.full(n, None, dtype=object)
    sop = cols.obj("SOPClassUID")
    if cols.has("has_pixels"):
        no_pixels = ~cols.flag("has_pixels")
        for i in np.flatnonzero(no_pixels):
            reason[i] = f"no pixel data (raw data or non-image object, SOP class {sop[i]})"
    if cols.has("pixel_data_truncated"):
        cut = cols.flag("pixel_data_truncated")
        reason[cut & _free(reason)] = "pixel data cut short (file truncated)"
    if cols.has("frame_problem"):  # what the frame expansion found unusable (a mosaic not unpacked)
        problem = cols.obj("frame_problem")
        for i in np.flatnonzero(_has_value(problem) & _free(reason)):
            reason[i] = str(problem[i])
    rows, columns = cols.num("Rows"), cols.num("Columns")
    reason[~((rows > 0) & (columns > 0)) & _free(reason)] = "no image size (Rows/Columns missing)"
    _mark_unreadable_layout(cols, reason)
    if "secondary_capture" not in include:
        sc = cols.mapped("SOPClassUID", _secondary_capture_flags)
        reason[sc & _free(reason)] = (
            "secondary capture (a screen or page, not part of a volume); plan it with include=['secondary_capture']"
        )
    if "localizer" not in include:
        loc = cols.mapped("ImageType", _localizer_flags)
        reason[loc & _free(reason)] = "localizer (scout image); plan it with include=['localizer']"
    _mark_lost_geometry(cols, reason)
    _mark_odd_instances(cols, reason)
    return reason


def _mark_unreadable_layout(cols: _Columns, reason: np.ndarray) -> None:
    """Set apart frames whose pixel layout no reader can decode (BitsAllocated 0, 12, 65535...).

    Such a header would otherwise stop the whole series when its array is made.
    """
    if not cols.has("BitsAllocated"):
        return
    bits = cols.num("BitsAllocated")
    stored = cols.num("BitsStored") if cols.has("BitsStored") else np.full(cols.n, np.nan)
    free = _free(reason)
    bad_alloc = ~np.isin(bits, (1, 8, 16, 32, 64)) & ~np.isnan(bits) & free
    for i in np.flatnonzero(bad_alloc):
        reason[i] = f"BitsAllocated {bits[i]:g} is not a pixel layout (1, 8, 16, 32 or 64)"
    bad_stored = ~np.isnan(stored) & ((stored < 1) | (stored > bits)) & _free(reason)
    for i in np.flatnonzero(bad_stored):
        reason[i] = f"BitsStored {stored[i]:g} does not fit BitsAllocated {bits[i]:g}"


def _has_value(values: np.ndarray) -> np.ndarray:
    return np.array(
        [v is not None and not (isinstance(v, float) and math.isnan(v)) for v in values],
        dtype=bool,
    )


def _mark_lost_geometry(cols: _Columns, reason: np.ndarray) -> None:
    """Set apart frames without position, orientation or spacing in a series whose other frames have them.

    The catalog blanks impossible values (NaN, parallel or zero direction cosines, a zero,
    negative or non-finite PixelSpacing): such a frame cannot take a place in its series'
    volume, and must not split it into two plans.
    """
    names = ("ImagePositionPatient", "ImageOrientationPatient", "SeriesInstanceUID")
    if not all(cols.has(n) for n in names):
        return
    positioned = cols.mapped(names[0], _has_value)
    oriented = cols.mapped(names[1], _has_value)
    spaced = (
        cols.mapped("PixelSpacing", _has_value)
        if cols.has("PixelSpacing")
        else np.ones(cols.n, bool)
    )
    placed = positioned & oriented
    if (placed & spaced).all():
        return  # every frame has its geometry (the usual case)
    free = _free(reason)
    sop = cols.obj("SOPClassUID") if cols.has("SOPClassUID") else np.full(cols.n, None, object)
    keys = list(
        zip(cols.obj(names[2]), sop, strict=True)
    )  # pages without geometry have their own class
    if (placed & free).any():
        with_geometry = {keys[i] for i in np.flatnonzero(placed & free)}
        for i in np.flatnonzero(~placed & free):
            # pages (secondary capture) carry geometry or not as they please
            if keys[i] in with_geometry and sop[i] not in _SECONDARY_CAPTURE:
                reason[i] = (
                    "no ImagePositionPatient"
                    if not positioned[i]
                    else "no valid ImageOrientationPatient (missing, or impossible values) "
                    "while the rest of its series has one"
                )
    free = _free(reason)
    if spaced.all() or not (spaced & placed & free).any():
        return
    with_spacing = {keys[i] for i in np.flatnonzero(spaced & placed & free)}
    for i in np.flatnonzero(~spaced & placed & free):
        if keys[i] in with_spacing and sop[i] not in _SECONDARY_CAPTURE:
            reason[i] = (
                "no valid PixelSpacing (missing, zero, negative or not a number) while the "
                "rest of its series has one: lost geometry"
            )


#: an instance is an odd one out only next to this many instances that agree
_ODD_MAJORITY = 3


def _mark_odd_instances(cols: _Columns, reason: np.ndarray) -> None:
    """Set apart a lone instance whose image size or in-plane geometry differs from its series.

    One file of a series (one UID and SOP class) whose SeriesNumber, Rows, Columns,
    SamplesPerPixel, PixelSpacing or orientation differs from at least
    :data:`_ODD_MAJORITY` other instances that agree with each other
    (a damaged or mislabelled file, a lying header) would otherwise make a plan of its own
    next to the series', and ``open_series(series=uid)`` would stop at two plans. Groups of
    two or more instances stay plans of their own (a real second stack), and so do images
    without a position and secondary-capture pages (an exam summary's pages differ in size).
    """
    needed = ("SeriesInstanceUID", "Rows", "Columns", "path", "ImagePositionPatient")
    if not all(cols.has(n) for n in needed):
        return
    # slices of a volume only: pages (secondary capture) come in the sizes they please
    stackable = cols.mapped("ImagePositionPatient", _has_value) & ~cols.mapped(
        "SOPClassUID", _secondary_capture_flags
    )
    free = np.flatnonzero(_free(reason) & stackable)
    if len(free) <= _ODD_MAJORITY or len(set(cols.obj("path")[free])) <= _ODD_MAJORITY:
        return  # an odd file needs _ODD_MAJORITY other files that agree
    # one SOP class of one UID; a lone SeriesNumber in it is as odd as a lone size
    series = _combine(
        _codes(cols.obj("SeriesInstanceUID")[free]),
        _codes(cols.obj("SOPClassUID")[free])
        if cols.has("SOPClassUID")
        else np.zeros(len(free), np.int64),
    )
    number = (
        _codes(cols.obj("SeriesNumber")[free]).astype(np.float64)
        if cols.has("SeriesNumber")
        else np.zeros(len(free))
    )
    spp = (
        np.nan_to_num(cols.num("SamplesPerPixel")[free], nan=1.0)
        if cols.has("SamplesPerPixel")
        else np.ones(len(free))
    )
    iop = _cluster_rows(np.nan_to_num(cols.vec("ImageOrientationPatient", 6)[free], nan=9.0), 1e-3)
    spacing = _cluster_rows(np.nan_to_num(cols.vec("PixelSpacing", 2)[free], nan=-1.0), 1e-4)
    geo = np.column_stack(
        [
            number,
            np.nan_to_num(cols.num("Rows")[free], nan=-1),
            np.nan_to_num(cols.num("Columns")[free], nan=-1),
            spp,
            iop,
            spacing,
        ]
    )
    _, geo_code = np.unique(geo, axis=0, return_inverse=True)
    geo_code = geo_code.reshape(-1)
    paths = cols.obj("path")[free]
    for code in np.unique(series):
        members = np.flatnonzero(series == code)
        kinds = np.unique(geo_code[members])
        if len(kinds) < 2:
            continue
        files = {k: {paths[j] for j in members[geo_code[members] == k]} for k in kinds}
        major = max(kinds, key=lambda k: len(files[k]))
        if len(files[major]) < _ODD_MAJORITY:
            continue
        m = free[members[geo_code[members] == major][0]]
        for k in kinds:
            if k == major or len(files[k]) != 1:
                continue
            odd = free[members[geo_code[members] == k]]
            what, usual = _odd_difference(cols, odd[0], m)
            reason[odd] = (
                f"odd one out: {what} where the {len(files[major])} other instances of its "
                f"series have {usual} (a damaged or mislabelled file is not made a series)"
            )


def _odd_difference(cols: _Columns, odd: int, usual: int) -> tuple[str, str]:
    """Say what frame ``odd`` has and what frame ``usual`` has instead (for the reason)."""
    numbers = cols.obj("SeriesNumber") if cols.has("SeriesNumber") else None
    if numbers is not None and numbers[odd] != numbers[usual]:
        return f"SeriesNumber {numbers[odd]}", f"SeriesNumber {numbers[usual]}"
    return (
        ", ".join(_what_differs(cols, odd, [odd, usual])),
        ", ".join(_what_differs(cols, usual, [odd, usual])),
    )


def _mark_copies(cols: _Columns, reason: np.ndarray) -> None:
    """Set apart second copies of one instance's frame (same SOPInstanceUID, frame and tile).

    The same instance stored twice (a file copied into two folders, or re-encoded in another
    transfer syntax) is one image, not a second volume: the first copy in path order is kept.
    Files that reuse a SOPInstanceUID for a *different* image (it happens in real exports)
    are no copies: their frames are compared (decoded values, read only for the colliding
    files) and those that differ stay, as distinct instances, with an
    :class:`~dicomxr.InstanceCollisionWarning` naming them.
    """
    if not cols.has("SOPInstanceUID"):
        return
    sop = cols.obj("SOPInstanceUID")
    free = _free(reason) & cols.mapped("SOPInstanceUID", _has_value)
    idx = np.flatnonzero(free)
    if len(idx) < 2 or ((cols.num("frame")[idx] == 0).all() and len(set(sop[idx])) == len(idx)):
        return  # every kept frame is the only one of its instance: no copies
    if not _any_same_frame(sop[idx], cols.num("frame")[idx], cols.num("tile")[idx]):
        return
    key = pd.DataFrame(
        {
            "sop": sop[idx],
            "frame": cols.num("frame")[idx],
            "tile": cols.num("tile")[idx],
            "path": cols.obj("path")[idx],
        }
    )
    key = key.sort_values("path", kind="stable")
    dup_any = key.duplicated(["sop", "frame", "tile"], keep=False)
    digest = _StoredFrameDigests(cols)
    collisions: dict[str, list[str]] = {}
    for (uid, _, _), group in key[dup_any].groupby(["sop", "frame", "tile"], sort=False):
        kept: list[tuple[int, str | None]] = []  # (row, digest) of the distinct images kept
        for pos in group.index:
            i = int(idx[pos])
            value, error = digest(i)
            if not kept:
                kept.append((i, value))
                continue
            same = next((k for k, d in kept if value is not None and d == value), None)
            if same is not None:
                reason[i] = (
                    "copy of the same instance (SOPInstanceUID, frame and pixel data) as "
                    f"{cols.obj('path')[same]}"
                )
            elif error is not None or kept[0][1] is None:
                reason[i] = (
                    f"same SOPInstanceUID and frame as {cols.obj('path')[kept[0][0]]}; "
                    f"pixel data not compared ({error or 'the first copy cannot be read'})"
                )
            else:  # a different image under the same UID: keep it
                kept.append((i, value))
                names = collisions.setdefault(str(uid), [])
                for k, _ in kept:
                    if cols.obj("path")[k] not in names:
                        names.append(str(cols.obj("path")[k]))
    if collisions:
        _warn_collisions(collisions)


def _any_same_frame(sop: np.ndarray, frame: np.ndarray, tile: np.ndarray) -> bool:
    """Tell whether two rows name one frame: the same SOPInstanceUID, frame and tile."""
    # NaN is one value here, as in pandas' duplicated
    key = _combine(
        _codes(sop),
        np.unique(np.nan_to_num(frame, nan=-np.inf), return_inverse=True)[1].reshape(-1),
        np.unique(np.nan_to_num(tile, nan=-np.inf), return_inverse=True)[1].reshape(-1),
    )
    return len(np.unique(key)) < len(key)


def _sorted_codes(values: np.ndarray) -> np.ndarray:
    """Integer codes in the sort order of the values (pandas' factorize, sorted)."""
    return pd.factorize(values, sort=True)[0]


class _StoredFrameDigests:
    """Digest of each colliding row's stored frame: the catalog's, else read once per (file, frame).

    :func:`dicomxr.scan` computes the digests of the instances whose SOPInstanceUID another
    file reuses (its ``frame_digests`` column: one item per stored frame; a MOSAIC tile
    is part of stored frame 0), so planning a scanned catalog opens no file. Only a row
    without one (a catalog made some other way, e.g. ``pd.concat`` of two scans whose rows
    collide only across them, or without the column) has its frame read and decoded here,
    with the catalog's ``attrs["storage_options"]`` for a URL.
    """

    def __init__(self, cols: _Columns) -> None:
        self.cols = cols
        self.done: dict[tuple[str, int], tuple[str | None, str | None]] = {}
        self.scanned = cols.obj("frame_digests") if cols.has("frame_digests") else None

    def __call__(self, i: int) -> tuple[str | None, str | None]:
        """Return ``(digest, None)`` or ``(None, why it cannot be read)``."""
        # pixels is a leaf module (no plan): imported here, only when UIDs collide
        from dicomxr.pixels import digest_or_reason

        cols = self.cols
        frame = int(cols.num("frame")[i])
        kept = self.scanned[i] if self.scanned is not None else None
        if isinstance(kept, tuple) and 0 <= frame < len(kept):
            return digest_or_reason(kept[frame])
        where = (str(cols.obj("path")[i]), frame)
        if where not in self.done:
            self.done[where] = self._read(i)
        return self.done[where]

    def _read(self, i: int) -> tuple[str | None, str | None]:
        """Read and decode row ``i``'s stored frame (the fallback: no digest in the catalog)."""
        from dicomxr.pixels import FrameRef, stored_frame_digest

        cols = self.cols
        ref = FrameRef.from_row({n: cols.obj(n)[i] for n in _PIXEL_COLUMNS if cols.has(n)})
        options = cols.table.attrs.get("storage_options")
        if options:
            ref = replace(ref, storage_options=dict(options))
        try:
            return stored_frame_digest(ref), None
        except Exception as exc:  # any unreadable frame: not comparable, say why
            return None, f"{type(exc).__name__}: {exc}"


# the frame table columns a pixel read needs (dicomxr.pixels.FrameRef.from_row)
_PIXEL_COLUMNS = (
    "path", "frame", "pixel_data_offset", "TransferSyntaxUID", "Rows", "Columns",
    "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation",
    "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames", "tile",
    "mosaic_rows", "mosaic_cols",
)  # fmt: skip

# how many UIDs and paths a collision warning names
_NAMED = 3


def _warn_collisions(collisions: dict[str, list[str]]) -> None:
    files = sum(len(p) for p in collisions.values())
    shown = "; ".join(
        f"SOPInstanceUID {uid}: {', '.join(paths[:_NAMED])}"
        + (f" and {len(paths) - _NAMED} more" if len(paths) > _NAMED else "")
        for uid, paths in list(collisions.items())[:_NAMED]
    )
    more = f" (and {len(collisions) - _NAMED} more UIDs)" if len(collisions) > _NAMED else ""
    warnings.warn(
        f"{files} files share a SOPInstanceUID with another file but hold a different image; "
        f"they are kept as distinct instances: {shown}{more}",
        InstanceCollisionWarning,
        stacklevel=user_stacklevel(),
    )


# set-apart reasons of objects that are not images of the volume (nothing of it is lost)
_NOT_OF_THE_VOLUME = ("no pixel data", "localizer", "secondary capture")


def left_out(plan: SeriesPlan) -> list[dict[str, Any]]:
    """Return the frames of ``plan``'s series left out of its volume although they are images of it.

    Everything in ``plan.set_apart`` except objects that are not images of the volume (raw
    data and other objects without pixels, localizers, secondary captures): pixel data cut
    short, second copies of one instance, frames without position or orientation, mosaics
    that cannot be unpacked. :func:`dicomxr.open_series` warns about these
    (:class:`~dicomxr.SetApartWarning`).

    Parameters
    ----------
    plan
        A plan from :func:`plan_series`.

    Returns
    -------
    list of dict
        ``{"path", "frame", "reason"}`` per frame left out.
    """
    return [
        item
        for item in plan.set_apart
        if not str(item.get("reason", "")).startswith(_NOT_OF_THE_VOLUME)
    ]


def _free(reason: np.ndarray) -> np.ndarray:
    return np.equal(reason, None)


def _secondary_capture_flags(sop_classes: np.ndarray) -> np.ndarray:
    return np.array([s in _SECONDARY_CAPTURE for s in sop_classes], dtype=bool)


def _localizer_flags(image_types: np.ndarray) -> np.ndarray:
    seen: dict[Any, bool] = {}
    out = np.zeros(len(image_types), dtype=bool)
    for i, value in enumerate(image_types):
        key = tuple(value) if isinstance(value, list) else value
        try:
            flag = seen[key]
        except KeyError:
            flag = seen[key] = _is_localizer(value)
        except TypeError:  # unhashable oddity: no caching
            flag = _is_localizer(value)
        out[i] = flag
    return out


def _is_localizer(image_type: Any) -> bool:
    if image_type is None or isinstance(image_type, (float, str)):
        return False
    return any(str(t).strip().upper() in _LOCALIZER_TOKENS for t in image_type[2:])


def _group(cols: _Columns, keep: np.ndarray) -> list[tuple[np.ndarray, str]]:
    """Split the kept frames into groups of one UID, SOP class, series number and geometry."""
    uid = _codes(cols.obj("SeriesInstanceUID")[keep])
    sop = _codes(cols.obj("SOPClassUID")[keep])
    number = _codes(cols.obj("SeriesNumber")[keep])
    rows = cols.num("Rows")[keep]
    columns = cols.num("Columns")[keep]
    spp = np.nan_to_num(cols.num("SamplesPerPixel")[keep], nan=1.0)
    iop = _cluster_rows(np.nan_to_num(cols.vec("ImageOrientationPatient", 6)[keep], nan=9.0), 1e-3)
    spacing = _cluster_rows(np.nan_to_num(cols.vec("PixelSpacing", 2)[keep], nan=-1.0), 1e-4)
    geo = np.column_stack([rows, columns, spp, iop, spacing])
    if (geo == geo[0]).all():  # one geometry (the usual case): no sort of the rows
        geo_code = np.zeros(len(keep), np.int64)
    else:
        geo_code = np.unique(geo, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)
    series_code = _combine(uid, sop, number)
    group = _combine(series_code, geo_code)
    out = []
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    for chunk in np.split(order, bounds):
        rows_idx = keep[chunk]
        out.append((rows_idx, ""))
    # note why a UID was split, for the label
    uids, sops, nums = (
        cols.obj("SeriesInstanceUID"),
        cols.obj("SOPClassUID"),
        cols.obj("SeriesNumber"),
    )
    by_uid: dict[Any, set[Any]] = {}
    for rows_idx, _ in out:
        i = rows_idx[0]
        by_uid.setdefault(uids[i], set()).add((sops[i], nums[i]))
    notes = []
    for rows_idx, _ in out:
        i = rows_idx[0]
        bits = []
        if len({s for s, _ in by_uid[uids[i]]}) > 1:
            bits.append("SOP class differs")
        if len({n for _, n in by_uid[uids[i]]}) > 1:
            bits.append("SeriesNumber differs")
        same_series = [
            g
            for g in out
            if uids[g[0][0]] == uids[i] and sops[g[0][0]] == sops[i] and nums[g[0][0]] == nums[i]
        ]
        if len(same_series) > 1:
            bits.extend(_what_differs(cols, i, [g[0][0] for g in same_series]))
        notes.append((rows_idx, ", ".join(bits)))
    return notes


def _cluster_rows(values: np.ndarray, tol: float) -> np.ndarray:
    """Code rows that agree within ``tol`` (max abs difference) alike; exact duplicates are cheap."""
    if not len(values) or (values == values[0]).all():
        return np.zeros(len(values), np.int64)
    uniq, inverse = np.unique(values, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    if len(uniq) == 1:
        return np.zeros(len(values), np.int64)
    labels = np.full(len(uniq), -1, np.int64)
    reps: list[np.ndarray] = []
    for i, row in enumerate(uniq):
        for k, rep in enumerate(reps):
            if np.abs(row - rep).max() <= tol:
                labels[i] = k
                break
        else:
            labels[i] = len(reps)
            reps.append(row)
    return labels[inverse]


def _what_differs(cols: _Columns, i: int, others: list[int]) -> list[str]:
    """Describe how group ``i`` differs from the other groups of its series (for the label)."""
    rows, columns = cols.num("Rows"), cols.num("Columns")
    iop, spacing = cols.vec("ImageOrientationPatient", 6), cols.vec("PixelSpacing", 2)
    bits = []
    if len({(rows[j], columns[j]) for j in others}) > 1:
        bits.append(f"{int(rows[i])}x{int(columns[i])} pixels")
    if len({tuple(np.round(iop[j], 4)) for j in others}) > 1:
        normal = np.cross(iop[i, :3], iop[i, 3:]) if not np.isnan(iop[i]).any() else None
        plane = (
            "no orientation"
            if normal is None
            else ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]
        )
        bits.append(plane if normal is None else f"{plane} orientation")
    if len({tuple(np.round(spacing[j], 4)) for j in others}) > 1 and not np.isnan(spacing[i]).any():
        bits.append(f"pixel spacing {spacing[i, 0]:.4g}x{spacing[i, 1]:.4g} mm")
    return bits or ["samples per pixel differ"]


# ---------------------------------------------------------------------------------------
# one group -> one or more plans


@dataclass
class _Dim:
    kind: str
    codes: np.ndarray  # per frame (group-local), level index 0..n-1
    levels: list[Any]  # value per level (dimension coordinate)
    # for a 'volume' made of several kinds: (the kinds' _Dims, level codes per volume)
    parts: tuple[list[_Dim], np.ndarray] | None = None
    source: str = ""  # what tells the levels apart (shown to the user)


_SOURCES = {
    "stack": "StackID",
    "label": "LabelType (Philips ASL label/control, 2005,1429)",
    "component": "ComplexImageComponent / ImageType",
    "diffusion": "DiffusionBValue + DiffusionGradientOrientation",
}


def _kind_sources(cols: _Columns, rows: np.ndarray) -> dict[str, str]:
    tpi = cols.num("TemporalPositionIdentifier")[rows]
    te = cols.num("EchoTime")[rows]
    echo_by_time = (
        len(np.unique(te[~np.isnan(te)])) > 1 or np.isnan(cols.num("EchoNumbers")[rows]).all()
    )
    return {
        **_SOURCES,
        "time": "TemporalPositionIdentifier"
        if not np.isnan(tpi).all()
        else "TemporalPositionIndex",
        "echo": "EchoTime" if echo_by_time else "EchoNumbers",
    }


def _kind_candidates(cols: _Columns, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame hashable values of every kind of extra dimension."""
    out: dict[str, np.ndarray] = {}
    stack = cols.obj("StackID")[rows]
    out["stack"] = stack
    tpi = cols.num("TemporalPositionIdentifier")[rows]
    if np.isnan(tpi).all():
        tpi = cols.num("TemporalPositionIndex")[rows]
    out["time"] = tpi
    out["label"] = cols.obj("LabelType")[rows]
    echo = cols.num("EchoNumbers")[rows]
    te = cols.num("EchoTime")[rows]
    # echo time identifies echoes when it varies (some exports number every echo 1)
    out["echo"] = te if len(np.unique(te[~np.isnan(te)])) > 1 or np.isnan(echo).all() else echo
    out["component"] = cols.obj("ComplexImageComponent")[rows]
    b = np.round(cols.num("DiffusionBValue")[rows], 3)
    bvec = np.round(cols.vec("DiffusionGradientOrientation", 3)[rows], 4)
    diff = np.full(len(rows), None, dtype=object)
    for i in np.flatnonzero(~np.isnan(b)):
        diff[i] = (float(b[i]), *(None if np.isnan(v) else float(v) for v in bvec[i]))
    out["diffusion"] = diff
    return out


def _level_order(kind: str, values: list[Any], first_seen: list[float]) -> list[int]:
    """Sort order of the levels of one kind."""

    def numeric(v: Any) -> float:
        try:
            f = float(v)
        except (TypeError, ValueError):
            return math.inf
        return f if not math.isnan(f) else math.inf

    idx = list(range(len(values)))
    if kind in ("time", "echo"):
        return sorted(idx, key=lambda i: (numeric(values[i]), first_seen[i]))
    if kind == "component":
        return sorted(idx, key=lambda i: (_COMPONENT_ORDER.get(values[i], 9), first_seen[i]))
    if kind == "stack":
        return sorted(idx, key=lambda i: (numeric(values[i]), str(values[i])))
    return sorted(idx, key=lambda i: (first_seen[i], str(values[i])))


def _make_dim(kind: str, values: np.ndarray, order_key: np.ndarray, source: str = "") -> _Dim:
    codes, uniques = _factorize(values)
    uniques = list(uniques)
    first_seen = [float(np.min(order_key[codes == k])) for k in range(len(uniques))]
    order = _level_order(kind, uniques, first_seen)
    remap = np.empty(len(order), np.int64)
    remap[order] = np.arange(len(order))
    return _Dim(kind, remap[codes], [uniques[i] for i in order], source=source)


@dataclass
class _Placed:
    """Stage 1: a group's frames in space (along the slice normal) and in acquisition order."""

    rows: np.ndarray  # row numbers into the frame table
    ipp: np.ndarray  # (n, 3) ImagePositionPatient
    iop: np.ndarray | None  # orientation shared by the group, None without geometry
    normal: np.ndarray | None
    dist: np.ndarray  # position along the normal (zeros without geometry)
    frame_no: np.ndarray
    order_key: np.ndarray  # acquisition rank: InstanceNumber, then file, then frame
    set_apart: list[dict[str, Any]]

    @property
    def geometric(self) -> bool:
        return self.iop is not None


@dataclass
class _Slices:
    """Stage 2: which slice (position cluster) each frame belongs to."""

    slice_id: np.ndarray
    n_slices: int
    counts: np.ndarray  # frames per slice
    dims: list[_Dim]  # a positionless series of several multi-frame files: one volume each


@dataclass
class _Copies:
    """Frames that share a grid cell and that nothing tells apart (stage 3)."""

    count: int
    rank: np.ndarray  # copy number of each frame within its cell
    what: str  # an example, for messages


@dataclass
class _Grid:
    """Stage 4: the frame grid."""

    dims: list[_Dim]
    slice_id: np.ndarray
    n_slices: int
    cells: np.ndarray  # grid of positions into ``order`` (-1 missing)
    order: np.ndarray  # group-local frame indices in grid order
    rows: np.ndarray  # frame-table rows in grid order


@dataclass
class _Stack:
    """Stage 5: the stack's geometry and its report."""

    report: GeometryReport
    slice_pos: np.ndarray | None  # (n_slices, 3) first position per slice
    slice_d: np.ndarray  # mean position along the normal per slice
    spacing: tuple[float, ...] | None
    slice_spacing: float | None  # SpacingBetweenSlices, else SliceThickness


def _plan_group(
    cols: _Columns,
    rows: np.ndarray,
    split_note: str,
    on_irregular: str,
    on_duplicate: str,
) -> list[SeriesPlan]:
    """Plan one group: place → cluster → dims → grid → stack → policies → plan (or pieces)."""
    placed = _place(cols, rows)
    slices = _cluster(cols, placed)
    dims, copies = _discover_dims(cols, placed, slices)
    grid = _grid_of(placed.rows, dims, slices.slice_id, slices.n_slices)
    stack = _check_stack(cols, placed, grid, copies, on_irregular)
    label = _label(cols, placed.rows[0], split_note)
    outcome = _apply_policies(placed, grid, stack, copies, label, on_irregular, on_duplicate)
    if isinstance(outcome, tuple):
        return [_make_plan(cols, placed, *outcome, label)]
    plans = [
        plan
        for sub, note, policy in outcome
        for plan in _plan_group(
            cols, sub, (split_note + ", " if split_note else "") + note, policy, on_duplicate
        )
    ]
    if plans:  # frames the whole group set apart stay reported
        plans[0].set_apart = placed.set_apart + plans[0].set_apart
    return plans


def _place(cols: _Columns, rows: np.ndarray) -> _Placed:
    """Positions along the normal and acquisition order; frames without geometry set apart."""
    n = len(rows)
    ipp = cols.vec("ImagePositionPatient", 3)[rows]
    iop_all = cols.vec("ImageOrientationPatient", 6)[rows]
    has_geo = ~np.isnan(ipp).any(axis=1) & ~np.isnan(iop_all).any(axis=1)
    instance = cols.num("InstanceNumber")[rows]
    frame_no = cols.num("frame")[rows]
    # acquisition order: InstanceNumber, then file, then frame (a rank, so ties are stable)
    path_code = cols.mapped("path", _sorted_codes)[rows]
    by_order = np.lexsort(
        (np.nan_to_num(frame_no), path_code, np.where(np.isnan(instance), np.inf, instance))
    )
    order_key = np.empty(n, np.float64)
    order_key[by_order] = np.arange(n)
    set_apart: list[dict[str, Any]] = []
    if has_geo.any() and not has_geo.all():
        paths = cols.obj("path")
        set_apart = [
            {"path": paths[rows[i]], "frame": int(frame_no[i]), "reason": "no ImagePositionPatient"}
            for i in np.flatnonzero(~has_geo)
        ]
        rows, ipp, iop_all = rows[has_geo], ipp[has_geo], iop_all[has_geo]
        frame_no, order_key = frame_no[has_geo], order_key[has_geo]
    if not has_geo.any():
        return _Placed(rows, ipp, None, None, np.zeros(len(rows)), frame_no, order_key, set_apart)
    normal = geometry.slice_normal(iop_all[0])
    return _Placed(rows, ipp, iop_all[0], normal, ipp @ normal, frame_no, order_key, set_apart)


def _cluster(cols: _Columns, placed: _Placed) -> _Slices:
    """Slices: frames within ``geometry_atol_mm`` along the normal share one."""
    n = len(placed.rows)
    if not placed.geometric:
        return _positionless_slices(cols, placed)
    atol = float(get_options()["geometry_atol_mm"])
    order = np.lexsort((placed.order_key, placed.dist))
    new = np.concatenate([[True], np.diff(placed.dist[order]) > atol])
    slice_id = np.empty(n, np.int64)
    slice_id[order] = np.cumsum(new) - 1
    n_slices = int(slice_id.max()) + 1 if n else 0
    return _Slices(slice_id, n_slices, np.bincount(slice_id, minlength=n_slices), [])


def _positionless_slices(cols: _Columns, placed: _Placed) -> _Slices:
    """Without positions, frames in InstanceNumber / frame order form the slice axis.

    Several multi-frame files (cine loops) each become one ``volume``.
    """
    n = len(placed.rows)
    file_code = pd.factorize(cols.obj("path")[placed.rows])[0]
    per_file = np.bincount(file_code)
    dims: list[_Dim] = []
    if len(per_file) > 1 and per_file.max() > 1:
        first_of_file = np.full(len(per_file), np.inf)
        np.minimum.at(first_of_file, file_code, placed.order_key)
        file_rank = np.argsort(np.argsort(first_of_file, kind="stable"), kind="stable")
        dims = [_Dim("volume", file_rank[file_code], list(range(len(per_file))), source="file")]
        slice_id = np.nan_to_num(placed.frame_no).astype(np.int64)
    else:
        order = np.argsort(placed.order_key, kind="stable")
        slice_id = np.empty(n, np.int64)
        slice_id[order] = np.arange(n)
    n_slices = int(slice_id.max()) + 1
    return _Slices(slice_id, n_slices, np.ones(n_slices, np.int64), dims)


def _discover_dims(
    cols: _Columns, placed: _Placed, slices: _Slices
) -> tuple[list[_Dim], _Copies | None]:
    """Extra dims for frames sharing a slice: the kinds that tell them apart, then time or copies."""
    if slices.counts.max(initial=0) <= 1:
        return slices.dims, None
    rows, slice_id, n_slices = placed.rows, slices.slice_id, slices.n_slices
    cand = _kind_candidates(cols, rows)
    useful = _useful_kinds(cand, slice_id, n_slices)
    sources = _kind_sources(cols, rows)
    dims = [_make_dim(k, cand[k], placed.order_key, sources[k]) for k in _KIND_ORDER if k in useful]
    copies = None
    cell = _combine(*[d.codes for d in dims], slice_id) if dims else slice_id
    if len(np.unique(cell)) < len(rows):
        extra, copies = _tell_apart(cols, placed, slices, cell, "time" in useful)
        dims.append(extra)
    dims.sort(key=lambda d: _KIND_ORDER.index(d.kind))
    return _arrange_dims(dims), copies


def _tell_apart(
    cols: _Columns, placed: _Placed, slices: _Slices, cell: np.ndarray, has_time: bool
) -> tuple[_Dim, _Copies | None]:
    """Frames still sharing a cell: a time axis when their times differ, else copies."""
    rows, order_key = placed.rows, placed.order_key
    times = _acq_time_codes(cols, rows)
    rank = _rank_within(cell, times, order_key)
    dup_cells = _cells_with_duplicates(cell)
    distinct_times = _distinct_within(cell, times, dup_cells)
    # frames of one multi-frame file at one position (cine, NM dynamics): a time series in
    # frame order, not copies
    one_file = _frames_of_one_file(cols, rows, cell, dup_cells)
    if one_file and not has_time:
        rank = _rank_within(cell, np.full_like(times, np.nan), order_key)
    # a repeated acquisition covers most positions; a few positions acquired twice (a
    # re-scanned slice, an overlapping copy) are duplicates, not a time axis
    repeated_majority = np.count_nonzero(slices.counts > 1) * 2 >= slices.n_slices
    levels = list(range(int(rank.max()) + 1))
    if ((distinct_times and repeated_majority) or one_file) and not has_time:
        source = "frame order within one file" if one_file else "acquisition / trigger times"
        return _Dim("time", rank, levels, source=source), None
    copies = _Copies(
        int(len(rows) - len(np.unique(cell))),
        rank,
        _duplicate_message(cols, rows, cell, placed.dist),
    )
    return _Dim("volume", rank, levels, source="InstanceNumber order (copies)"), copies


def _grid_of(rows: np.ndarray, dims: list[_Dim], slice_id: np.ndarray, n_slices: int) -> _Grid:
    """Lay the frames out on the grid of these dims and slices."""
    cells, order = _build_grid(dims, slice_id, n_slices)
    return _Grid(dims, slice_id, n_slices, cells, order, rows[order])


def _check_stack(
    cols: _Columns, placed: _Placed, grid: _Grid, copies: _Copies | None, on_irregular: str
) -> _Stack:
    """Slice positions and the geometry report of the stack."""
    rows, slice_id, n_slices = placed.rows, grid.slice_id, grid.n_slices
    slice_pos = None
    slice_d = np.arange(n_slices, dtype=np.float64)
    if placed.geometric:
        first = np.full(n_slices, -1, np.int64)
        first[slice_id[::-1]] = np.arange(len(rows))[::-1]
        slice_pos = placed.ipp[first]
        counts = np.bincount(slice_id, minlength=n_slices)
        sums = np.bincount(slice_id, weights=placed.dist, minlength=n_slices)
        slice_d = sums / np.maximum(counts, 1)
    spacing = _first_valid_vec(cols.vec("PixelSpacing", 2)[rows])
    thickness = _median(cols.num("SliceThickness")[rows])
    spacing_tag = _median(cols.num("SpacingBetweenSlices")[rows])
    report = geometry.analyze_stack(
        slice_pos,
        placed.iop,
        spacing,
        slice_thickness=thickness,
        spacing_tag=spacing_tag,
        tilt_tag=_median(cols.num("GantryDetectorTilt")[rows]),
        duplicate_positions=copies.count if copies is not None else 0,
        policy=on_irregular,
    )
    if not placed.geometric:
        report.n_slices = n_slices
    return _Stack(report, slice_pos, slice_d, spacing, spacing_tag or thickness)


# one piece of a group to plan on its own: (frame-table rows, label note, on_irregular)
_Piece = tuple[np.ndarray, str, str]


def _apply_policies(
    placed: _Placed,
    grid: _Grid,
    stack: _Stack,
    copies: _Copies | None,
    label: str,
    on_irregular: str,
    on_duplicate: str,
) -> tuple[_Grid, _Stack] | list[_Piece]:
    """Apply the caller's policies: raise, split into pieces, fill, warn or ignore.

    Returns the (possibly filled) grid and stack to plan, or the pieces to plan separately.
    """
    if copies is not None:
        pieces = _duplicate_policy(placed, copies, label, on_irregular, on_duplicate)
        if pieces is not None:
            return pieces
    report = stack.report
    geometry_irregular = placed.geometric and (
        not report.uniform or report.missing_slices > 0 or not report.positions_on_line
    )
    missing_cells = int((grid.cells < 0).sum())
    fillable = report.uniform and report.positions_on_line and report.spacing_median
    if on_irregular == "fill" and geometry_irregular and fillable:
        grid, stack = _fill_missing_slices(placed, grid, stack)
        geometry_irregular = False
        missing_cells = int((grid.cells < 0).sum()) - report.missing_slices * int(
            np.prod(grid.cells.shape[:-1])
        )
    report.missing_frames = int((grid.cells < 0).sum())
    if missing_cells:
        report.issues.append(_missing_cells_message(grid.cells, grid.dims, stack.slice_d))
    if geometry_irregular or (placed.geometric and missing_cells > 0):
        if on_irregular == "fill":
            on_irregular = "warn"  # spacing not a whole multiple: nothing to fill, keep and warn
        pieces = _irregular_policy(grid, stack, label, on_irregular)
        if pieces is not None:
            return pieces
        if geometry_irregular:
            report.affine_exact = False
    return grid, stack


def _duplicate_policy(
    placed: _Placed, copies: _Copies, label: str, on_irregular: str, on_duplicate: str
) -> list[_Piece] | None:
    """Raise, split into one piece per copy, or warn (the copies stay along ``volume``)."""
    if on_duplicate == "raise":
        raise GeometryError(
            f"series {label!r}: {copies.count} frame(s) share a position "
            f"and nothing (time, echo, b-value, component) tells them apart ({copies.what}). "
            "Pass on_duplicate='warn' to keep the copies along a 'volume' dim, or 'split'."
        )
    if on_duplicate == "split":
        return [
            (placed.rows[copies.rank == r], f"duplicate copy {r + 1}", on_irregular)
            for r in range(int(copies.rank.max()) + 1)
        ]
    if on_duplicate == "warn":
        warnings.warn(
            f"series {label!r}: {copies.count} frame(s) share a position with "
            f"another frame and nothing tells them apart ({copies.what}); kept along a 'volume' dim "
            "in InstanceNumber order (on_duplicate='raise' or 'split' to change this)",
            GeometryWarning,
            stacklevel=user_stacklevel(),
        )
    return None


def _irregular_policy(
    grid: _Grid, stack: _Stack, label: str, on_irregular: str
) -> list[_Piece] | None:
    """Raise, split into regular blocks, or warn about an irregular stack."""
    problems = [
        i
        for i in stack.report.issues
        if not i.startswith("stack is tilted") and "GantryDetectorTilt" not in i
    ]
    if on_irregular == "raise":
        raise GeometryError(
            f"series {label!r} is not a regular frame grid: " + "; ".join(problems) + ". "
            "Pass on_irregular='warn' to keep every frame with its true position as the 'slice' "
            "coordinate, or on_irregular='split' to get regular blocks as separate series."
        )
    if on_irregular == "split":
        pieces = _split_pieces(grid.cells, stack.slice_d)
        if len(pieces) > 1:
            in_grid = grid.slice_id[grid.order]
            return [
                (
                    grid.rows[np.isin(in_grid, np.arange(grid.n_slices)[sl])],
                    f"regular block {k} of {len(pieces)}",
                    "split",  # recorded in each block's report; a regular block is not split again
                )
                for k, sl in enumerate(pieces, 1)
            ]
    if on_irregular in ("warn", "split"):
        warnings.warn(
            f"series {label!r}: "
            + "; ".join(problems)
            + ". Kept every frame; the 'slice' coordinate holds "
            "the true positions and the affine is approximate (on_irregular='raise' or 'split' to change this).",
            GeometryWarning,
            stacklevel=user_stacklevel(),
        )
    return None


def _fill_missing_slices(placed: _Placed, grid: _Grid, stack: _Stack) -> tuple[_Grid, _Stack]:
    """on_irregular='fill': whole missing slices become empty (NaN) frames; the affine is exact."""
    report = stack.report
    slice_d, slice_pos = stack.slice_d, stack.slice_pos
    assert slice_pos is not None and placed.normal is not None and report.spacing_median
    k = np.rint((slice_d - slice_d[0]) / report.spacing_median).astype(np.int64)
    n_new = int(k[-1]) + 1
    step = (slice_pos[-1] - slice_pos[0]) / k[-1]
    filled_pos = slice_pos[0] + np.arange(n_new)[:, None] * step
    filled_pos[k] = slice_pos
    report.issues.append(
        f"filled {report.missing_slices} missing slice(s) with empty (NaN) frames "
        "(on_irregular='fill'): the affine is exact"
    )
    report.affine_exact = True
    filled = _grid_of(placed.rows, grid.dims, k[grid.slice_id], n_new)
    return filled, replace(stack, slice_pos=filled_pos, slice_d=filled_pos @ placed.normal)


def _make_plan(
    cols: _Columns, placed: _Placed, grid: _Grid, stack: _Stack, label: str
) -> SeriesPlan:
    """Make the plan: affine, coordinates, attributes and the frame table."""
    if placed.geometric:
        affine = geometry.affine_from_positions(
            stack.slice_pos,
            placed.iop,
            stack.spacing if stack.spacing is not None else (1.0, 1.0),
            slice_spacing=stack.slice_spacing,
        )
    else:
        affine = np.eye(4)
    plan_rows, cells, dims = grid.rows, grid.cells, grid.dims
    dim_names = (*(d.kind for d in dims), "slice")
    coords = _coords(cols, plan_rows, cells, dims, dim_names, stack.slice_d)
    attrs, patient = _attrs(cols, plan_rows, coords)
    if len(plan_rows) == cols.n:
        # the plan uses every frame: share the table and let the grid index it in its own
        # row order
        frames = cols.whole()
        cells = np.where(cells >= 0, plan_rows[np.maximum(cells, 0)], -1)
    else:
        frames = cols.table.take(plan_rows)
    attrs["affine"] = affine.tolist()
    attrs["geometry"] = stack.report.to_dict()
    attrs["units"] = _units(attrs)
    if dims:
        attrs["dim_sources"] = {d.kind: d.source for d in dims}
    return SeriesPlan(
        key=str(attrs.get("SeriesInstanceUID", "")),
        label=label,
        frames=frames,
        dims=dim_names,
        grid=cells,
        frame_shape=_frame_shape(cols, placed.rows[0]),
        coords=coords,
        attrs=attrs,
        geometry=stack.report,
        affine=affine,
        set_apart=placed.set_apart,
        patient=patient,
    )


def _build_grid(
    dims: list[_Dim], slice_id: np.ndarray, n_slices: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return the frame grid (index into the frames in grid order, -1 missing) and that order."""
    shape = (*(len(d.levels) for d in dims), n_slices)
    flat = np.ravel_multi_index((*(d.codes for d in dims), slice_id), shape)
    if len(np.unique(flat)) != len(flat):  # pragma: no cover - guarded by the rank above
        raise GeometryError("internal error: two frames in one grid cell")
    grid_flat = np.full(int(np.prod(shape)), -1, np.int64)
    grid_order = np.argsort(flat, kind="stable")
    grid_flat[flat[grid_order]] = np.arange(len(flat))
    return grid_flat.reshape(shape), grid_order


def _useful_kinds(cand: dict[str, np.ndarray], slice_id: np.ndarray, n_slices: int) -> list[str]:
    """Kinds whose values differ between frames at one position."""
    useful = []
    for kind, values in cand.items():
        codes = _codes(values)
        if codes.max(initial=0) == 0:
            continue
        pairs = len(np.unique(codes * (n_slices + 1) + slice_id))
        if pairs > n_slices:
            useful.append(kind)
    # the same partition under two names (echo number and echo time): keep the first
    return useful


def _cells_with_duplicates(cell: np.ndarray) -> np.ndarray:
    values, counts = np.unique(cell, return_counts=True)
    return values[counts > 1]


def _acq_time_codes(cols: _Columns, rows: np.ndarray) -> np.ndarray:
    """Return sortable per-frame times ``(n, 2)``: acquisition time, trigger time (NaN unknown)."""
    out = np.full((len(rows), 2), np.nan)
    for name in (
        "FrameAcquisitionDateTime",
        "AcquisitionDateTime",
        "AcquisitionTime",
        "ContentTime",
    ):
        vals = cols.obj(name)[rows]
        if any(v is not None for v in vals):
            out[:, 0] = [
                _to_float(str(v).replace(":", "")) if v is not None else np.nan for v in vals
            ]
            break
    out[:, 1] = cols.num("TriggerTime")[rows]
    return out


def _distinct_within(cell: np.ndarray, times: np.ndarray, dup_cells: np.ndarray) -> bool:
    """Tell whether, in every cell holding several frames, their times (acquisition, trigger) differ."""
    if not len(dup_cells):
        return False
    mask = np.isin(cell, dup_cells)
    usable = [k for k in range(times.shape[1]) if not np.isnan(times[mask, k]).any()]
    if not usable:
        return False
    pairs = np.unique(np.column_stack([cell[mask], times[mask][:, usable]]), axis=0)
    return len(pairs) == int(mask.sum())


def _frames_of_one_file(
    cols: _Columns, rows: np.ndarray, cell: np.ndarray, dup_cells: np.ndarray
) -> bool:
    """Tell whether every shared cell holds distinct frames of one and the same file."""
    if not len(dup_cells):
        return False
    mask = np.isin(cell, dup_cells)
    paths = pd.factorize(cols.obj("path")[rows[mask]])[0]
    frame_no = cols.num("frame")[rows[mask]]
    tiles = cols.num("tile")[rows[mask]]
    if np.nanmax(np.nan_to_num(tiles, nan=-1)) >= 0:
        return False  # MOSAIC tiles are slices, never time points of one file
    cells = cell[mask]
    per_cell_paths = np.unique(np.column_stack([cells, paths]), axis=0)
    if len(per_cell_paths) != len(np.unique(cells)):
        return False  # some cell mixes files
    return len(np.unique(np.column_stack([cells, frame_no]), axis=0)) == int(mask.sum())


def _rank_within(cell: np.ndarray, times: np.ndarray, order_key: np.ndarray) -> np.ndarray:
    """0-based rank of each frame within its cell, by acquisition/trigger time then InstanceNumber."""
    t = np.where(np.isnan(times), np.inf, times)
    order = np.lexsort((order_key, t[:, 1], t[:, 0], cell))
    sorted_cells = cell[order]
    start = np.concatenate([[True], sorted_cells[1:] != sorted_cells[:-1]])
    group_start = np.maximum.accumulate(np.where(start, np.arange(len(cell)), 0))
    rank = np.empty(len(cell), np.int64)
    rank[order] = np.arange(len(cell)) - group_start
    return rank


def _arrange_dims(dims: list[_Dim]) -> list[_Dim]:
    """Full cartesian product: one dim per kind; else all kinds share one 'volume' dim."""
    if len(dims) <= 1:
        return dims
    sizes = [len(d.levels) for d in dims]
    combo = _combine(*[d.codes for d in dims])
    if len(np.unique(combo)) == int(np.prod(sizes)):
        return dims
    # not a product: volumes are the distinct combinations, in kind order
    stacked = np.stack([d.codes for d in dims], axis=1)
    uniq, inverse = np.unique(stacked, axis=0, return_inverse=True)  # lexicographic = kind order
    return [
        _Dim(
            "volume",
            inverse.reshape(-1).astype(np.int64),
            list(range(len(uniq))),
            (dims, uniq),
            source=" x ".join(f"{d.kind} ({d.source})" for d in dims) + " (not a full product)",
        )
    ]


def _split_pieces(grid: np.ndarray, slice_d: np.ndarray) -> list[slice]:
    """Slice ranges for on_irregular='split': regular spacing blocks, also cut at incomplete slices."""
    blocks = geometry.regular_blocks(slice_d)
    complete = (grid >= 0).reshape(-1, grid.shape[-1]).all(axis=0)
    pieces: list[slice] = []
    for block in blocks:
        start = block.start
        for k in range(block.start, block.stop):
            if k > start and complete[k] != complete[k - 1]:
                pieces.append(slice(start, k))
                start = k
        pieces.append(slice(start, block.stop))
    return pieces


def _missing_cells_message(grid: np.ndarray, dims: list[_Dim], slice_d: np.ndarray) -> str:
    missing = np.argwhere(grid < 0)
    shown = []
    for idx in missing[:4]:
        where = [f"{d.kind}={d.levels[i]}" for d, i in zip(dims, idx[:-1], strict=True)]
        where.append(f"slice at {slice_d[idx[-1]]:.4g} mm")
        shown.append("(" + ", ".join(where) + ")")
    more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
    return (
        f"incomplete frame grid: {len(missing)} of {grid.size} cells have no frame: "
        + ", ".join(shown)
        + more
    )


def _duplicate_message(cols: _Columns, rows: np.ndarray, cell: np.ndarray, dist: np.ndarray) -> str:
    dup = _cells_with_duplicates(cell)
    i = np.flatnonzero(cell == dup[0])
    paths = cols.obj("path")[rows[i]]
    return f"e.g. {len(i)} frames at {dist[i[0]]:.4g} mm along the normal: " + ", ".join(
        str(p).rsplit("/", 1)[-1] for p in paths[:3]
    )


def _median(values: np.ndarray) -> float | None:
    v = values[~np.isnan(values)]
    return float(np.median(v)) if len(v) else None


def _first_valid_vec(values: np.ndarray) -> tuple[float, ...] | None:
    ok = ~np.isnan(values).any(axis=1)
    if not ok.any():
        return None
    return tuple(float(v) for v in values[np.argmax(ok)])


def _frame_shape(cols: _Columns, i: int) -> tuple[int, ...]:
    r, c = int(cols.num("Rows")[i]), int(cols.num("Columns")[i])
    spp = cols.num("SamplesPerPixel")[i]
    if np.isfinite(spp) and spp > 1:
        return (r, c, int(spp))
    return (r, c)


def _label(cols: _Columns, i: int, note: str) -> str:
    number = cols.obj("SeriesNumber")[i]
    desc = cols.obj("SeriesDescription")[i]
    sop = cols.obj("SOPClassUID")[i]
    try:
        from pydicom.uid import UID

        sop_name = UID(str(sop)).name if sop else "?"
    except Exception:  # pragma: no cover - pydicom is a hard dependency
        sop_name = str(sop)
    parts = [
        str(number) if number is not None else "?",
        str(desc) if desc else "(no description)",
        f"[{sop_name}]",
    ]
    text = " ".join(parts)
    return f"{text} ({note})" if note else text


# ---------------------------------------------------------------------------------------
# coordinates and attributes


def _grid_values(column: np.ndarray, grid: np.ndarray, fill: Any) -> np.ndarray:
    """Column values (in plan order) laid out on the grid; ``fill`` where missing."""
    ext = np.empty(len(column) + 1, dtype=column.dtype)
    ext[:-1] = column
    ext[-1] = fill
    return ext[np.where(grid >= 0, grid, len(column))]


def _varying_axes(values: np.ndarray) -> list[int]:
    """Return the axes along which ``values`` change (NaN equal to NaN in a float array)."""
    nan = np.isnan(values) if values.dtype.kind == "f" else None
    if nan is not None and not nan.any():
        nan = None
    axes = []
    for axis in range(values.ndim):
        first = (slice(None),) * axis + (slice(0, 1),)
        same = values == values[first]
        if nan is not None:
            same |= nan & nan[first]
        if not same.all():
            axes.append(axis)
    return axes


def _reduce(values: np.ndarray, keep_axes: list[int]) -> np.ndarray:
    index = tuple(slice(None) if a in keep_axes else slice(0, 1) for a in range(values.ndim))
    return values[index].reshape([values.shape[a] for a in keep_axes])


def _numeric_or_object(values: np.ndarray) -> np.ndarray:
    """float64 / int64 when every value is a number, else object (str, tuples, None)."""
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    first = next((v for v in out if v is not None), None)
    if isinstance(first, (str, tuple, bytes)):
        return out
    types = set(map(type, out))
    if not all(t is _NONE_TYPE or issubclass(t, _NUMBER_TYPES) for t in types):
        return out
    try:
        if _NONE_TYPE in types:
            floats = np.array([np.nan if v is None else float(v) for v in out], dtype=np.float64)
        else:
            floats = np.array([float(v) for v in out], dtype=np.float64)
    except (TypeError, ValueError):
        return out
    if (
        not np.isnan(floats).any()
        and np.all(floats == np.round(floats))
        and all(issubclass(t, _INTEGER_TYPES) for t in types)
    ):
        return floats.astype(np.int64)
    return floats


_NONE_TYPE = type(None)
_NUMBER_TYPES = (int, float, np.integer, np.floating)
_INTEGER_TYPES = (int, np.integer)


def _coords(
    cols: _Columns,
    plan_rows: np.ndarray,
    grid: np.ndarray,
    dims: list[_Dim],
    dim_names: tuple[str, ...],
    slice_d: np.ndarray,
) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    coords: dict[str, tuple[tuple[str, ...], np.ndarray]] = {
        "slice": (("slice",), np.asarray(slice_d, np.float64))
    }
    for d in dims:
        coords[d.kind] = ((d.kind,), _dim_values(d, cols, plan_rows, grid, dim_names))
        parts = d.parts
        if parts is not None:  # a 'volume' made of several kinds: each kind along volume
            sub_dims, uniq = parts
            for j, sd in enumerate(sub_dims):
                coords[f"volume_{sd.kind}"] = (
                    ("volume",),
                    _levels_array([sd.levels[c] for c in uniq[:, j]], sd.kind),
                )

    columns: dict[str, np.ndarray] = {}
    ipp = cols.vec("ImagePositionPatient", 3)[plan_rows]
    for k, axis in enumerate("xyz"):
        columns[f"position_{axis}"] = ipp[:, k]
    full = bool((grid >= 0).all())
    instances = cols.instance_rows(plan_rows)
    same: set[str] = set()  # the same in every frame of a full grid: one value read
    for name in _COORD_COLUMNS:
        if not cols.has(name):
            continue
        if full and cols.constant(name, plan_rows, instances, _read_as_number(cols, name)):
            if name not in _ALWAYS_COORDS:
                continue  # an attribute, not a coordinate
            same.add(name)
        columns[name] = _coord_column(cols, name, plan_rows[:1] if name in same else plan_rows)
    if cols.has("DiffusionGradientOrientation"):
        bvec = cols.vec("DiffusionGradientOrientation", 3)[plan_rows]
        if not np.isnan(bvec).all():
            for k, axis in enumerate("xyz"):
                columns[f"bvec_{axis}"] = bvec[:, k]
    if "tile" in columns and (columns["tile"] < 0).all():
        del columns["tile"]
    for name, column in columns.items():
        if name in coords:
            name = f"{name}_value"
        fill: Any = (
            np.nan if column.dtype.kind == "f" else (-1 if column.dtype.kind == "i" else None)
        )
        if column.dtype.kind == "i" and (grid < 0).any():
            column = column.astype(np.float64)
            fill = np.nan
        if name in same:  # one value for every cell
            axes, reduced = [], column.reshape(())
        else:
            values = _grid_values(column, grid, fill)
            axes = _varying_axes(values)
            if not axes and name not in _ALWAYS_COORDS:
                continue
            reduced = _reduce(values, axes)
        if name in ("frame", "tile") and reduced.dtype.kind == "f" and not np.isnan(reduced).any():
            reduced = reduced.astype(np.int64)
        if reduced.dtype == object:
            reduced = _tidy_object(reduced)
        coords[name] = (tuple(dim_names[a] for a in axes), reduced)
    return coords


def _coord_column(cols: _Columns, name: str, rows: np.ndarray) -> np.ndarray:
    """Return coordinate column ``name`` at ``rows`` as :func:`_coords` holds it."""
    if name in ("WindowCenter", "WindowWidth"):
        return _first_numbers(cols.obj(name)[rows])
    if name in ("frame", "tile"):
        return cols.num(name)[rows]
    if cols.is_numeric(name):
        values = cols.num(name)[rows]
        if cols.is_integer(name) and not np.isnan(values).any():
            values = values.astype(np.int64)
        return values
    return _numeric_or_object(cols.obj(name)[rows])


def _read_as_number(cols: _Columns, name: str) -> bool:
    """Whether :func:`_coords` reads the column as floats (numeric), else as objects."""
    return name not in ("WindowCenter", "WindowWidth") and cols.is_numeric(name)


def _constant(values: np.ndarray) -> bool:
    """Tell whether every value equals the first (NaN equal to NaN in a float array).

    Conservative for objects: a NaN (or a tuple holding one) counts as a change.
    """
    if not len(values):
        return True
    first = values[0]
    if values.dtype.kind == "f":
        if math.isnan(first):
            return bool(np.isnan(values).all())
        return bool((values == first).all())
    if first is None:
        return all(v is None for v in values)
    return _all_equal(values, first)


def _tidy_object(values: np.ndarray) -> np.ndarray:
    r"""Turn tuples into '\\'-joined strings (DICOM multi-value style) so xarray can index them."""
    out = np.empty(values.shape, dtype=object)
    flat_in, flat_out = values.ravel(), out.ravel()
    for i, v in enumerate(flat_in):
        flat_out[i] = "\\".join(str(x) for x in v) if isinstance(v, tuple) else v
    return out


def _first_numbers(values: np.ndarray) -> np.ndarray:
    """:func:`_first_number` of every value (one conversion when all are plain numbers)."""
    types = set(map(type, values))
    if types <= {float, int}:
        return np.array(values.tolist(), dtype=np.float64)
    if types == {tuple}:  # multi-valued windows: the first of each
        try:
            table = np.array(values.tolist(), dtype=np.float64)
        except (TypeError, ValueError):
            table = None
        if table is not None and table.ndim == 2 and table.shape[1]:
            return table[:, 0].copy()
    return np.array([_first_number(v) for v in values], dtype=np.float64)


def _first_number(v: Any) -> float:
    if v is None:
        return np.nan
    if isinstance(v, (tuple, list)):
        return float(v[0]) if v else np.nan
    return _to_float(v)


def _levels_array(levels: list[Any], kind: str) -> np.ndarray:
    if kind == "diffusion":
        return np.arange(len(levels), dtype=np.int64)
    arr = (
        _numeric_or_object(np.array([*levels, None], dtype=object)[:-1]) if levels else np.array([])
    )
    if (
        arr.dtype.kind == "f"
        and not np.isnan(arr).any()
        and np.all(arr == np.round(arr))
        and kind in ("time", "stack")
    ):
        arr = arr.astype(np.int64)
    return arr


def _dim_values(
    d: _Dim, cols: _Columns, plan_rows: np.ndarray, grid: np.ndarray, dim_names: tuple[str, ...]
) -> np.ndarray:
    if d.kind == "echo":
        # EchoTime (ms) when it is a function of the echo level
        te = cols.num("EchoTime")[plan_rows]
        axis = dim_names.index("echo")
        vals = _grid_values(te, grid, np.nan)
        per_level = np.moveaxis(vals, axis, 0).reshape(len(d.levels), -1)
        out = []
        for row in per_level:
            row = row[~np.isnan(row)]
            if not len(row) or np.ptp(row) > 1e-6:
                break
            out.append(float(row[0]))
        else:
            if len(set(out)) == len(out):
                return np.asarray(out, dtype=np.float64)
        return _levels_array(d.levels, d.kind)
    if d.kind in ("volume",) or (
        d.kind == "time" and all(isinstance(v, (int, np.integer)) for v in d.levels)
    ):
        return (
            np.asarray(d.levels, dtype=np.int64)
            if d.kind == "volume"
            else _levels_array(d.levels, d.kind)
        )
    return _levels_array(d.levels, d.kind)


def _json(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return None if math.isnan(f) else f
    if isinstance(value, (tuple, list, np.ndarray)):
        return [_json(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, str)):
        return value
    return str(value)


def _attrs(
    cols: _Columns, plan_rows: np.ndarray, coords: dict[str, tuple[tuple[str, ...], np.ndarray]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    attrs: dict[str, Any] = {}
    instances = cols.instance_rows(plan_rows)
    for name in _ATTR_COLUMNS:
        if not cols.has(name):
            continue
        if name in coords and coords[name][0]:
            continue  # varies: a coordinate, not an attribute
        first = cols.value(name, plan_rows[0])
        if first is None or (isinstance(first, float) and math.isnan(first)):
            continue
        if not cols.constant(name, plan_rows, instances):
            continue
        value = _json(first)
        if value is not None:
            attrs[name] = value
    patient = {}
    for name in _PATIENT_KEYS:
        if cols.has(name):
            v = cols.value(name, plan_rows[0])
            if v is not None:
                patient[name] = str(v)
    return attrs, patient


def _units(attrs: dict[str, Any]) -> str:
    rtype = attrs.get("RescaleType")
    if isinstance(rtype, str) and rtype and rtype.upper() not in ("US", "NORMALIZED"):
        return rtype
    if attrs.get("Modality") == "CT":
        return "HU"
    return ""
