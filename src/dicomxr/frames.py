"""One row per frame: classic files 1:1, enhanced multi-frame and Siemens MOSAIC expanded.

:func:`expand` turns the catalog (one row per instance, :func:`dicomxr.scan`) into a frame
table with the same columns, so that everything above this layer treats a classic series,
an enhanced multi-frame export and a MOSAIC alike:

- classic single-frame files keep their row (``frame = 0``);
- enhanced multi-frame files (``is_enhanced``) get one row per frame with the values of
  the Shared and Per-frame Functional Groups, which the catalog read in its one header
  pass (its ``per_frame`` column; :mod:`dicomxr._functional_groups`): plane position and
  orientation, pixel measures, frame content (stack, in-stack position, temporal position,
  dimension index values, acquisition time), MR echo, MR diffusion (b-value and direction),
  pixel value transformation (rescale, per frame), frame VOI LUT, frame type (complex
  component) and, for Philips, the private per-frame item (InstanceNumber, ASL label type);
- vendor mosaics (Siemens MOSAIC, United Imaging GRID/VFRAME; :mod:`dicomxr.mosaic`) become
  one row per tile with the tile's true position and ``tile``, ``tile_rows``, ``tile_cols``
  (Rows/Columns become the tile size), Siemens tiles stacked along the CSA header's
  SliceNormalVector (the catalog's column); a mosaic that cannot be unpacked keeps one row
  with the reason in ``frame_problem``, and the planner sets it apart;
- other multi-frame files (ultrasound cine, a plain multi-frame CT) get one row per frame
  with the file's attributes; an RT Dose's frames are placed by its GridFrameOffsetVector.

No file is opened here when the catalog comes from :func:`dicomxr.scan`; a catalog without
the ``per_frame``, ``GridFrameOffsetVector``, ``SliceNormalVector`` or ``tile_positions``
columns (made some other way) has the headers of its multi-frame files read again.

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

import copy
import logging
import math
import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from dicomxr import mosaic as vendor_mosaic
from dicomxr._functional_groups import component_from_image_type

__all__ = [
    "FRAME_COLUMNS",
    "FrameTable",
    "component_from_image_type",
    "expand",
    "frame_table",
    "object_values",
    "read_label_type",
]

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
# catalog columns that tell the frames of multi-frame files apart (read by the scan)
_FRAME_SOURCES = ("per_frame", "GridFrameOffsetVector", "SliceNormalVector", "tile_positions")

_PHILIPS_LABEL_TYPE = 0x20051429
_PHILIPS_SCALE_SLOPE = 0x2005100E
_PHILIPS_DD001 = "PHILIPS MR IMAGING DD 001"


def _empty(n: int) -> np.ndarray:
    out = np.empty(n, dtype=object)
    out[:] = None
    return out


def object_values(values: Any) -> np.ndarray:
    """Return a column's values as a fresh ``object`` array, ``None`` where missing.

    The same as ``values.to_numpy(dtype=object, na_value=None)`` for extension arrays and
    ``object`` arrays, faster for pandas' Arrow strings (the ``str`` columns of a catalog),
    where the per-call cost of pandas' conversion dominates planning a single file. A numpy
    array of numbers is cast as it is (a NaN stays a float NaN).

    Parameters
    ----------
    values
        A numpy array or a pandas extension array (``DataFrame[col].array``).

    Returns
    -------
    numpy.ndarray
        ``object`` array of the values (Python ``str``/``int``/..., tuples kept whole).
    """
    if isinstance(values, np.ndarray):
        if values.dtype == object:
            out = values.copy()
            out[pd.isna(out)] = None
            return out
        return values.astype(object)
    if isinstance(values.dtype, pd.StringDtype) and hasattr(values, "__arrow_array__"):
        out = np.empty(len(values), dtype=object)
        out[:] = values.__arrow_array__().to_pylist()
        return out
    return values.to_numpy(dtype=object, na_value=None)


def _object_column(df: pd.DataFrame, name: str) -> np.ndarray:
    """Column ``name`` of ``df`` as an ``object`` array with ``None`` where missing."""
    values = _column_array(df, df.columns.get_loc(name))
    if isinstance(values, np.ndarray) and values.dtype != object:
        return df[name].to_numpy(dtype=object, na_value=None)  # NaN of a number -> None
    return object_values(values)


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
        functional groups could not be read keeps one row per frame with the file-level
        values and is listed in ``attrs["frame_errors"]``.

    Examples
    --------
    >>> import dicomxr
    >>> from dicomxr import frames
    >>> df = frames.expand(dicomxr.scan("series_folder"))  # doctest: +SKIP
    >>> df[["path", "frame", "ImagePositionPatient"]].head()  # doctest: +SKIP
    """
    if len(catalog) == 0:
        out = catalog.copy()
        for col in FRAME_COLUMNS:
            out[col] = pd.Series([], dtype="int64" if col in _INT_FRAME_COLUMNS else object)
        return out
    return frame_table(catalog).to_pandas()


def frame_table(catalog: pd.DataFrame) -> FrameTable:
    """Return the frames of ``catalog`` as a :class:`FrameTable` (:func:`expand` before pandas).

    Planning reads this light table: the catalog's columns stay one value per instance,
    so a value the same in every frame of a file is looked at once, not once per frame.

    Parameters
    ----------
    catalog
        The DataFrame from :func:`dicomxr.scan` (or a subset of its rows), at least one row.

    Returns
    -------
    FrameTable
    """
    layout = _layout(catalog)
    if (layout.counts == 1).all():
        return _one_frame_each(layout)
    return _many_frames(_with_frame_sources(layout))


class FrameTable:
    """One row per frame, as columns: the catalog's, and the frames' own.

    A column of the catalog (the same for every frame of an instance) is kept as the
    catalog's array and :attr:`src`, the catalog row of each frame; the columns that differ
    between the frames of one file (the functional groups, MOSAIC tiles, the frame index)
    are arrays of their own. :meth:`to_pandas` makes the DataFrame :func:`expand` returns.

    The catalog's columns are copied when the table is made (a copy of each column's array:
    no pandas objects, so no copy-on-write bookkeeping): a later change to the caller's
    catalog does not reach the table, nor a plan made from it.

    Parameters
    ----------
    catalog
        The instances (or, for :meth:`from_frames`, a frame table already).
    src
        ``int64`` catalog row position of each frame.
    own
        Column name -> per-frame values (numpy or pandas extension array, one per frame);
        these replace the catalog's column of that name.
    attrs
        The table's ``attrs`` (the catalog's, plus ``frame_errors``).
    infer
        Give an ``object`` column of text pandas' ``str`` dtype, as a DataFrame made of the
        columns would (``False`` for a frame table that is a DataFrame already, which is
        then kept whole, as a shallow copy-on-write copy).
    """

    def __init__(
        self,
        catalog: pd.DataFrame,
        src: np.ndarray,
        own: dict[str, Any],
        attrs: dict[str, Any],
        infer: bool = True,
    ) -> None:
        names = catalog.columns.tolist()  # (iterating a str Index is slow)
        frame = None if infer else catalog.reset_index(drop=True)
        arrays = (
            {
                col: _column_array(catalog, pos).copy()
                for pos, col in enumerate(names)
                if col not in own
            }
            if infer
            else {}
        )
        self._setup(names, len(catalog), arrays, frame, src, own, attrs, infer)

    def _setup(
        self,
        names: list[str],
        n_catalog: int,
        arrays: dict[str, Any],
        frame: pd.DataFrame | None,
        src: np.ndarray,
        own: dict[str, Any],
        attrs: dict[str, Any],
        infer: bool,
    ) -> None:
        self._frame = frame  # the DataFrame a frame table was given as (from_frames)
        self._raw = arrays  # catalog column -> its copied array (or, from _frame, on demand)
        self._names = names
        self._where = {col: pos for pos, col in enumerate(names) if col not in own}
        self._arrays: dict[str, Any] = {}  # as the DataFrame holds them (made when asked)
        self._infer = infer
        self._own = own
        # the table the rows were taken from, and their positions in it (None: all of it)
        self._root, self._rows = self, None
        self._inferred: dict[str, Any] = {}
        self.src = np.asarray(src, dtype=np.int64)
        self.identity = len(self.src) == n_catalog and bool(
            (self.src == np.arange(len(self.src))).all()
        )
        known = set(names)
        self.columns = [*names, *(c for c in own if c not in known)]
        self.attrs = attrs

    @classmethod
    def from_frames(cls, frames: pd.DataFrame) -> FrameTable:
        """Wrap a frame table made before (:func:`expand`'s DataFrame) without copying it."""
        return cls(frames, np.arange(len(frames)), {}, dict(frames.attrs), infer=False)

    def __len__(self) -> int:
        return len(self.src)

    def __contains__(self, name: object) -> bool:
        return name in self._own or name in self._where

    def _catalog_array(self, name: str) -> Any:
        values = self._arrays.get(name)
        if values is None:
            if self._frame is not None:
                values = _column_array(self._frame, self._where[name])
            else:
                values = self._raw[name]
            values = self._arrays[name] = _as_frame_column(values, self._infer)
        return values

    def __getitem__(self, name: str) -> pd.Series:
        """Column ``name`` as a :class:`pandas.Series` (what ``DataFrame[name]`` gives).

        With :attr:`columns`, ``len`` and :attr:`attrs` this is the part of the DataFrame
        API the readers of a frame table use (:func:`dicomxr.pixels.frame_refs`,
        :func:`dicomxr.scaling.frame_scaling`); no DataFrame of every column is made.
        """
        if name not in self:
            raise KeyError(name)
        return pd.Series(self.column(name), name=name, copy=False)

    def column(self, name: str) -> Any:
        """Per-frame values of column ``name`` (numpy or pandas extension array)."""
        own = self._own.get(name)
        if own is not None:
            return own
        values = self._catalog_array(name)
        return values if self.identity else values.take(self.src)

    def per_instance(self, name: str) -> Any | None:
        """Return the catalog's values of ``name`` (one per instance; index with :attr:`src`).

        ``None`` when the column is the frames' own (it differs between frames of a file).
        """
        return self._catalog_array(name) if name in self._where else None

    def dtype(self, name: str) -> Any:
        """Return the dtype of column ``name``."""
        own = self._own.get(name)
        return (own if own is not None else self._catalog_array(name)).dtype

    def take(self, rows: np.ndarray) -> FrameTable:
        """Return the table of the frames at positions ``rows`` (in that order)."""
        out = object.__new__(FrameTable)
        out._frame, out._raw, out._where = self._frame, self._raw, self._where
        out._names = self._names
        out._arrays, out._infer = self._arrays, self._infer
        out._own = {col: values[rows] for col, values in self._own.items()}
        out._root, out._inferred = self._root, {}
        out._rows = rows if self._rows is None else self._rows[rows]
        out.src = self.src[rows]
        out.identity = False
        out.columns, out.attrs = self.columns, self.attrs
        return out

    def _own_column(self, name: str) -> Any:
        """Return a column of the frames' own as the DataFrame holds it.

        Text is inferred over the whole column of the table the rows were taken from.
        """
        root = self._root
        values = root._inferred.get(name)
        if values is None:
            values = root._inferred[name] = _as_frame_column(root._own[name], root._infer)
        return values if self._rows is None else values[self._rows]

    def to_pandas(self) -> pd.DataFrame:
        """Return the DataFrame of the frames (:func:`expand`'s), never a view of the catalog."""
        if self._frame is not None and not self._own:  # a frame table made before
            frame = self._frame
            out = frame.copy(deep=False) if self.identity else frame.take(self.src)
            if not self.identity:
                out.index = pd.RangeIndex(len(out))
            return out
        data = {
            col: self._own_column(col) if col in self._own else self.column(col)
            for col in self.columns
        }
        out = pd.DataFrame(data, index=pd.RangeIndex(len(self)), copy=self.identity)
        out.attrs = copy.deepcopy(self.attrs)
        return out

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # pickled with only the catalog rows its frames come from (a plan of one series of
        # a cohort's catalog must not carry the cohort), its own columns as the DataFrame
        # would hold them
        used, src = np.unique(self.src, return_inverse=True)
        own = {col: self._own_column(col) for col in self._own}
        if self._frame is not None:
            catalog = self._frame.take(used).reset_index(drop=True)
            return FrameTable, (catalog, src.reshape(-1), own, self.attrs, self._infer)
        if len(used) and used[-1] - used[0] + 1 == len(used):  # consecutive rows: a slice
            pick: Any = slice(int(used[0]), int(used[-1]) + 1)
            arrays = {col: self._raw[col][pick] for col in self._where}
        else:
            arrays = {col: self._raw[col].take(used) for col in self._where}
        return _restore_frame_table, (
            self._names,
            len(used),
            arrays,
            src.reshape(-1),
            own,
            self.attrs,
        )


def _restore_frame_table(
    names: list[str],
    n_catalog: int,
    arrays: dict[str, Any],
    src: np.ndarray,
    own: dict[str, Any],
    attrs: dict[str, Any],
) -> FrameTable:
    """Unpickle a :class:`FrameTable` (see ``FrameTable.__reduce__``)."""
    table = object.__new__(FrameTable)
    table._setup(names, n_catalog, arrays, None, src, own, attrs, True)
    return table


def _as_frame_column(values: Any, infer: bool) -> Any:
    """``values`` as a DataFrame column holds them: text in an ``object`` array becomes ``str``.

    The inference pandas makes when a DataFrame is built from arrays, made once per column
    of the whole table, so that the rows of one plan keep the dtype the whole column has.
    """
    if (
        infer
        and isinstance(values, np.ndarray)
        and values.dtype == object
        and pd.api.types.infer_dtype(values, skipna=True) == "string"
    ):
        return pd.Series(values, copy=False).array
    return values


@dataclass
class _Layout:
    """How many rows each instance of the catalog becomes, and why."""

    catalog: pd.DataFrame
    enhanced: np.ndarray
    mosaic: np.ndarray
    counts: np.ndarray  # frames (or MOSAIC tiles) per instance
    component: np.ndarray  # complex component from ImageType, per instance
    errors: list[dict[str, str]]


def _flags(catalog: pd.DataFrame, name: str) -> np.ndarray:
    if name not in catalog.columns:
        return np.zeros(len(catalog), bool)
    values = _column_array(catalog, catalog.columns.get_loc(name))
    if isinstance(values, np.ndarray) and values.dtype == bool:
        return values.copy()
    if isinstance(values, np.ndarray):  # objects: NaN and None are no flag
        return np.array([not pd.isna(v) and bool(v) for v in values], dtype=bool)
    return values.to_numpy(dtype=bool, na_value=False)


def _layout(catalog: pd.DataFrame) -> _Layout:
    """Count the frames of each instance; set apart those whose claim cannot be true."""
    n = len(catalog)
    enhanced, mosaic = _flags(catalog, "is_enhanced"), _flags(catalog, "is_mosaic")
    nframes = np.ones(n, np.int64)
    if "NumberOfFrames" in catalog.columns:
        nf = _column(catalog, "NumberOfFrames", np.nan)
        nframes = np.where(np.isfinite(nf) & (nf >= 1), nf, 1).astype(np.int64)
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
    errors: list[dict[str, str]] = []
    impossible = _impossible_claims(catalog, counts, mosaic, errors)
    if impossible.any():
        # planning memory follows the frames that exist, not what a header claims: a
        # file that cannot hold its claim is one row, flagged cut short (set apart)
        counts = np.where(impossible, 1, counts)
        mosaic, enhanced = mosaic & ~impossible, enhanced & ~impossible
        catalog = catalog.copy()
        catalog["pixel_data_truncated"] = _flags(catalog, "pixel_data_truncated") | impossible
        for rec in errors:
            logger.warning("%s: %s", rec["path"], rec["reason"])
    image_type = (
        np.asarray(_column_array(catalog, catalog.columns.get_loc("ImageType")), dtype=object)
        if "ImageType" in catalog.columns
        else _empty(n)
    )
    component = np.array([component_from_image_type(v) for v in image_type], dtype=object)
    return _Layout(catalog, enhanced, mosaic, counts, component, errors)


def _one_frame_each(layout: _Layout) -> FrameTable:
    """Add the frame columns when every file holds one frame (no copy of the rows)."""
    catalog, n = layout.catalog, len(layout.catalog)
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
        if col not in catalog.columns:  # a catalog may already carry some (e.g. LabelType)
            new[col] = _empty(n)
    if "ComplexImageComponent" not in catalog.columns:
        new["ComplexImageComponent"] = layout.component
    attrs = copy.deepcopy(catalog.attrs)  # a snapshot, as the columns are
    if layout.errors:
        attrs["frame_errors"] = layout.errors
    return FrameTable(catalog, np.arange(n), new, attrs)


def _with_frame_sources(layout: _Layout) -> _Layout:
    """Read again the headers of multi-frame files of a catalog made without the scan's columns."""
    catalog = layout.catalog
    missing = [c for c in _FRAME_SOURCES if c not in catalog.columns]
    if not missing:
        return layout
    from dicomxr.catalog import read_header

    catalog = catalog.copy()
    for col in missing:
        catalog[col] = _empty(len(catalog))
    for i in np.flatnonzero(layout.counts > 1):
        try:
            row = read_header(str(catalog["path"].iat[i]))
        except (OSError, ValueError) as exc:
            logger.warning("cannot read the header of %s again: %s", catalog["path"].iat[i], exc)
            continue
        for col in missing:
            catalog[col].iat[i] = row[col]
    return replace(layout, catalog=catalog)


class _Frames:
    """The columns of the frame table under construction, with per-frame values put in place.

    Everything is a numpy (or pandas extension) array until :meth:`finish` makes the one
    DataFrame: no per-column insertion into a growing frame.
    """

    def __init__(self, layout: _Layout) -> None:
        catalog, counts = layout.catalog, layout.counts
        self.catalog = catalog
        self.src = np.repeat(np.arange(len(catalog)), counts)
        total = len(self.src)
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        frame = np.arange(total) - np.repeat(self.starts, counts)
        # a MOSAIC image is one stored frame: its tiles share frame 0, told apart by `tile`
        frame[np.repeat(layout.mosaic, counts)] = 0
        self.values: dict[str, np.ndarray] = {
            "frame": frame.astype(np.int64),
            "tile": np.full(total, -1, np.int64),
            **{col: np.zeros(total, np.int64) for col in _INT_FRAME_COLUMNS[2:]},
        }
        for col in FRAME_COLUMNS[6:]:
            self.values[col] = (
                _object_column(catalog, col)[self.src] if col in catalog.columns else _empty(total)
            )
        if "ComplexImageComponent" not in catalog.columns:
            self.values["ComplexImageComponent"] = layout.component[self.src]
        self.overrides: dict[str, Any] = {}  # object arrays, or a whole column as read

    def rows(self, i: int, count: int) -> slice:
        return slice(int(self.starts[i]), int(self.starts[i] + count))

    def put(self, col: str, rows: slice, vals: Any) -> None:
        if col in self.values:
            self.values[col][rows] = _as_object(vals)
            return
        whole = rows.start == 0 and rows.stop == len(self.src) == len(vals)
        if col not in self.overrides and whole:
            # every row its own: no catalog values; kept as given until finish() makes the
            # column (in the catalog's dtype, or objects)
            self.overrides[col] = vals if isinstance(vals, (tuple, list)) else _as_object(vals)
            return
        if col not in self.overrides:
            self.overrides[col] = (
                _object_column(self.catalog, col)[self.src]
                if col in self.catalog.columns
                else _empty(len(self.src))
            )
        elif not isinstance(self.overrides[col], np.ndarray):
            self.overrides[col] = _as_object(self.overrides[col])
        self.overrides[col][rows] = _as_object(vals)

    def finish(self, errors: list[dict[str, str]]) -> FrameTable:
        """Make the frame table: the catalog's columns (one per instance), then the new ones."""
        catalog = self.catalog
        own: dict[str, Any] = {}
        for pos, col in enumerate(catalog.columns.tolist()):
            if col in self.values:
                own[col] = self.values[col]
            elif col in self.overrides:
                own[col] = _overridden(self.overrides[col], _column_array(catalog, pos).dtype)
        for col, arr in self.values.items():
            own.setdefault(col, arr)
        for col, arr in self.overrides.items():
            own.setdefault(col, arr if isinstance(arr, np.ndarray) else _as_object(arr))
        attrs = copy.deepcopy(catalog.attrs)  # a snapshot, as the columns are
        if errors:
            attrs["frame_errors"] = errors
        return FrameTable(catalog, self.src, own, attrs)


def _cell(df: pd.DataFrame, name: str, i: int) -> Any:
    """Return ``df[name].iat[i]`` without building a Series (which deep-copies ``attrs``)."""
    return _column_array(df, df.columns.get_loc(name))[i]


def _column_array(df: pd.DataFrame, pos: int) -> Any:
    """Return the values of column ``pos`` (numpy or extension array) without a Series."""
    try:
        return df._get_column_array(pos)
    except AttributeError:  # pragma: no cover - a pandas without the helper
        return df.iloc[:, pos].array


def _overridden(values: Any, dtype: Any) -> Any:
    """Per-frame values of a catalog column, in the catalog's dtype where they fit it.

    ``values`` is an ``object`` array, or the functional groups' sequence of values as read.
    """
    if dtype != np.dtype(object):
        try:
            return pd.array(values, dtype=dtype)
        except (TypeError, ValueError):
            pass
    return values if isinstance(values, np.ndarray) else _as_object(values)


def _many_frames(layout: _Layout) -> FrameTable:
    """One row per frame (or MOSAIC tile), with each frame's own values."""
    catalog, counts = layout.catalog, layout.counts
    frames = _Frames(layout)
    errors = list(layout.errors)
    # fsspec options of a remote catalog (dicomxr.sources), for reads a catalog made some
    # other way still needs
    options = catalog.attrs.get("storage_options")
    for i in np.flatnonzero(layout.enhanced):
        reason = _changed_since_scan(catalog, i) or _put_functional_groups(
            frames, i, _cell(catalog, "per_frame", i), int(counts[i])
        )
        if reason is not None:
            path = str(_cell(catalog, "path", i))
            logger.warning("cannot use the functional groups of %s: %s", path, reason)
            errors.append({"path": path, "reason": reason})
    # classic multi-frame files (RT Dose, some NM/US): frame positions from the Grid Frame
    # Offset Vector when the file has one
    for i in np.flatnonzero(~layout.enhanced & ~layout.mosaic & (counts > 1)):
        positions = _grid_frame_positions(catalog.iloc[i], int(counts[i]))
        if positions is not None:
            frames.put("ImagePositionPatient", frames.rows(i, int(counts[i])), positions)
    for i in np.flatnonzero(layout.mosaic):
        row = catalog.iloc[i]
        try:
            tiles = vendor_mosaic.tiles(row, int(counts[i]), options)
        except Exception as exc:
            logger.warning("cannot unpack MOSAIC %s: %s", row["path"], exc)
            errors.append({"path": str(row["path"]), "reason": f"MOSAIC not unpacked: {exc}"})
            continue
        for col, vals in tiles.items():
            frames.put(col, frames.rows(i, int(counts[i])), vals)
    return frames.finish(errors)


def _changed_since_scan(catalog: pd.DataFrame, i: int) -> str | None:
    """Tell why row ``i``'s per-frame table no longer describes its file (gone or changed).

    One ``stat``, no read: the table was read with the header, and a file replaced since
    then may hold other frames.
    """
    if "file_size" not in catalog.columns or "mtime" not in catalog.columns:
        return None
    path = str(_cell(catalog, "path", i))
    if "://" in path:  # a remote object (dicomxr.sources): no stat to compare with
        return None
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"functional groups unreadable: {exc.strerror or exc}"
    if st.st_size != _cell(catalog, "file_size", i) or st.st_mtime != _cell(catalog, "mtime", i):
        return "functional groups unreadable: the file changed since the scan (scan it again)"
    return None


def _put_functional_groups(frames: _Frames, i: int, table: Any, count: int) -> str | None:
    """Spread an enhanced file's per-frame table over its rows; the reason when it cannot."""
    if isinstance(table, str):
        return table
    if not isinstance(table, dict):
        return "functional groups unreadable: not read by the catalog"
    for col, vals in table.items():
        if len(vals) != count:
            return (
                f"functional groups unreadable: {len(vals)} per-frame values of {col} for "
                f"NumberOfFrames {count}"
            )
    for col, vals in table.items():
        frames.put(col, frames.rows(i, count), vals)
    return None


_NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})
# an encapsulated frame takes at least one fragment item header
_MIN_ENCAPSULATED_FRAME = 8


def _column(catalog: pd.DataFrame, name: str, default: float) -> np.ndarray:
    if name not in catalog.columns:
        return np.full(len(catalog), default, dtype=np.float64)
    values = _column_array(catalog, catalog.columns.get_loc(name))
    if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
        values = values.astype(np.float64)
    elif pd.api.types.is_numeric_dtype(values.dtype):
        values = values.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
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
        _flags(catalog, "has_pixels")
        if "has_pixels" in catalog.columns
        else np.ones(len(catalog), bool)
    )
    size = _column(catalog, "file_size", np.inf)
    room = size - np.maximum(_column(catalog, "pixel_data_offset", 0.0), 0.0)
    pixels = _column(catalog, "Rows", 0.0) * _column(catalog, "Columns", 0.0)
    frame_bytes = (
        pixels
        * np.maximum(_column(catalog, "SamplesPerPixel", 1.0), 1.0)
        * np.maximum(_column(catalog, "BitsAllocated", 8.0), 1.0)
        / 8
    )
    ts = (
        _object_column(catalog, "TransferSyntaxUID")
        if "TransferSyntaxUID" in catalog.columns
        else np.full(len(catalog), None, dtype=object)
    )
    native = np.array([t in _NATIVE_SYNTAXES for t in ts], dtype=bool)
    stored = np.where(mosaic, 1, counts).astype(np.float64)
    # a zero Rows/Columns/bits claim still costs a table row per frame: at least a byte each
    need = np.where(native, stored * np.maximum(frame_bytes, 1), stored * _MIN_ENCAPSULATED_FRAME)
    too_many_tiles = mosaic & (counts > pixels)
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
# values


def _float(value: Any) -> float | None:
    try:
        v = float(value[0] if isinstance(value, (tuple, list)) else value)
    except (TypeError, ValueError, IndexError):
        return None
    return v if math.isfinite(v) else None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


class _Missing:
    __slots__ = ()


_MISSING = _Missing()


def _grid_frame_positions(row: pd.Series, n_frames: int) -> list[tuple[float, ...]] | None:
    """Per-frame positions of a classic multi-frame file from its GridFrameOffsetVector.

    Offsets run along the slice normal from ImagePositionPatient (PS3.3 C.8.8.3.2; in the
    retired form whose first value is not 0 they are z coordinates, hence relative to the
    first). ``None`` when the file has no usable vector.
    """
    ipp, iop = row.get("ImagePositionPatient"), row.get("ImageOrientationPatient")
    offsets = row.get("GridFrameOffsetVector")
    if any(v is None or isinstance(v, float) for v in (ipp, iop, offsets)):
        return None
    off = np.asarray(offsets, dtype=np.float64)
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
        _object_column(catalog, "mosaic_kind")
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

    The catalog holds it already (``LabelType``, read in its one header pass); this reads
    it straight from files, an independent check of the catalog's value.

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
