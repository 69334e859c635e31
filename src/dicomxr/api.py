"""Open DICOM series as xarray objects: :func:`open_series` and :func:`open_study`.

This is the layer users meet. It chains the lower layers (catalog scan -> frames -> series
plan -> the lazy backend array) and dresses the result as an :class:`xarray.DataArray` named
``image``, following the contract in ``docs/dev/architecture.md``. One function,
``_plan_to_dataset``, builds every series' Dataset - for :func:`open_series`,
:func:`open_study` and the ``"dicom"`` engine alike: ``image`` wraps
:class:`dicomxr._array.DicomBackendArray` in xarray's lazy indexing, and ``chunks`` makes it
dask through xarray's own chunking (one frame per chunk by default, so a selection reads
only its frames, also after a flip or arithmetic; a full load of the untouched array is still
one threaded read into one array, :class:`dicomxr._array.FullRead`):

- dims: the plan's frame-grid dims (ending with ``slice``) + ``("row", "col")``
  (+ ``"channel"`` for colour); ``row`` runs along ImageOrientationPatient[3:],
  ``col`` along ImageOrientationPatient[:3] (DICOM pixel order);
- the ``slice`` dimension coordinate is the position along the slice normal in mm;
  positions, UIDs, paths, times and every varying attribute are coordinates on the frame dims;
- attrs hold only values every xarray writer (netCDF, Zarr) accepts: scalars, strings and
  flat lists of numbers or strings. The LPS ``affine`` is a flat list of 16 floats, the 4x4
  matrix in row-major order (``np.reshape(attrs["affine"], (4, 4))``, or
  ``da.dicom.affine``); the geometry report is JSON text (``da.dicom.report``); other dicts
  (``dim_sources``) are JSON text too. No patient identifiers unless ``include_patient=True``;
- ``encoding["preferred_chunks"]`` advertises one frame per chunk (MOSAIC: tile runs).

Importing this module registers the ``.dicom`` accessor (:mod:`dicomxr.accessor`): the package
face hands the registration in through :func:`dicomxr._lazy.before_xarray`, since the accessor
stands above this layer.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from dicomxr._lazy import making_xarray
from dicomxr.attrs import encode_attrs
from dicomxr.errors import MultipleSeriesError, NoSeriesError, SetApartWarning, user_stacklevel

if TYPE_CHECKING:
    import pandas as pd

    from dicomxr.series import SeriesPlan, SeriesPlans

__all__ = ["PATIENT_ATTRIBUTES", "list_series", "open_series", "open_study", "series_table"]

logger = logging.getLogger(__name__)

making_xarray()  # the objects made here come with the .dicom accessor (registered by dicomxr)

Source = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
#: ``None`` (no dask), ``"series"`` (one chunk), ``{}`` (one frame per chunk) or a mapping
Chunks = str | int | Mapping[str, Any] | None

#: attributes that identify a patient; kept out of ``attrs`` unless ``include_patient=True``
PATIENT_ATTRIBUTES = frozenset(
    {
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientSex",
        "PatientAge",
        "PatientWeight",
        "PatientSize",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "OtherPatientIDs",
        "OtherPatientNames",
        "IssuerOfPatientID",
        "PatientMotherBirthName",
        "MilitaryRank",
        "EthnicGroup",
        "AccessionNumber",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "OperatorsName",
        "InstitutionAddress",
    }
)

_STUDY_ATTRIBUTES = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "StudyID",
)


# --------------------------------------------------------------------------------------
# catalog and plans


def _catalog(
    source: Any,
    *,
    recursive: bool = True,
    storage_options: Any = None,
    keys: Any = None,
) -> pd.DataFrame:
    import pandas as pd

    from dicomxr.catalog import scan

    if isinstance(source, pd.DataFrame):
        _check_key_columns(source.columns, keys, "the catalog")
        if storage_options:
            source = source.copy(deep=False)
            source.attrs["storage_options"] = dict(storage_options)
        return source
    return scan(source, recursive=recursive, storage_options=storage_options, keys=keys)


def _check_key_columns(columns: Any, keys: Any, what: str) -> None:
    """Refuse requested keys a given catalog (or plan) was scanned without."""
    from dicomxr._keys import HeaderKeyError, resolve_keys

    missing = [k.name for k in resolve_keys(keys) if k.name not in columns]
    if missing:
        raise HeaderKeyError(
            f"{what} has no column {', '.join(repr(m) for m in missing)}: scan it with "
            f"dicomxr.scan(..., keys={missing!r}) (or pass the files, not the catalog)"
        )


def list_series(
    source: Source | pd.DataFrame,
    *,
    on_irregular: str = "warn",
    on_duplicate: str = "warn",
    include: Sequence[str] = (),
    recursive: bool = True,
    merge_runs: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    keys: Sequence[Any] | str | None = None,
) -> SeriesPlans:
    """Scan ``source`` and return the plan of every image series in it (no pixel is read).

    Parameters
    ----------
    source
        A file, folder, glob, list of paths, DICOMDIR, or a catalog from
        :func:`dicomxr.scan`.
    on_irregular
        What to do with an irregular stack (uneven spacing, missing slices, tilt,
        incomplete frame grid), passed to :func:`dicomxr.plan_series`: ``"warn"``
        (default: keep every frame, warn), ``"raise"``, ``"split"`` (regular blocks become
        separate series), ``"fill"`` (whole missing slices become NaN frames so the affine
        is exact), ``"ignore"`` (keep silently; the report still tells).
    on_duplicate
        What to do with frames that share a position and that no dimension tells apart,
        passed to :func:`dicomxr.plan_series`: ``"warn"`` (default: keep them along a
        ``volume`` dim, warn), ``"raise"``, ``"split"`` (one series per copy),
        ``"ignore"``.
    include
        Frames normally set apart to plan anyway (``"localizer"``, ``"secondary_capture"``),
        passed to :func:`dicomxr.plan_series`.
    recursive
        Descend into sub-folders.
    merge_runs
        Merge runs of single-volume series (consecutive SeriesNumbers, identical geometry
        and protocol, as Siemens XA classic exports write fMRI) into one series with a
        ``time`` dim, after planning (:func:`dicomxr.runs.merge_runs`).
    storage_options
        fsspec options for a URL or zip source (see :func:`dicomxr.scan`).
    keys
        Extra header fields to scan (see :func:`dicomxr.scan`); the plans' frames carry them.

    Returns
    -------
    SeriesPlans
        The plans (a list), with ``set_apart`` (frames left out) and ``skipped`` (files
        the scan skipped).
    """
    from dicomxr.series import SeriesPlan, SeriesPlans, plan_series

    if isinstance(source, SeriesPlan):
        source = SeriesPlans([source])
    elif (
        not isinstance(source, SeriesPlans)
        and isinstance(source, Sequence)
        and source
        and all(_is_plan(s) for s in source)
    ):
        source = SeriesPlans(source)  # type: ignore[arg-type]
    if isinstance(source, SeriesPlans):
        for plan in source:
            _check_key_columns(plan.frame_table.columns, keys, f"plan {plan.key}")
        return source
    catalog = _catalog(source, recursive=recursive, storage_options=storage_options, keys=keys)
    plans = plan_series(
        catalog, on_irregular=on_irregular, on_duplicate=on_duplicate, include=tuple(include)
    )
    if merge_runs:
        from dicomxr.runs import merge_runs as merge

        plans = merge(plans, on_irregular=on_irregular, on_duplicate=on_duplicate)
    return plans


def _is_plan(obj: Any) -> bool:
    from dicomxr.series import SeriesPlan

    return isinstance(obj, SeriesPlan)


def _attr(plan: SeriesPlan, name: str, default: Any = None) -> Any:
    """Return a constant attribute of a plan, falling back to its first frame."""
    value = plan.attrs.get(name) if plan.attrs else None
    table = plan.frame_table
    if _missing(value) and name in table and len(table):
        value = table[name].iloc[0]
    return default if _missing(value) else value


def _missing(value: Any) -> bool:
    """Whether a scalar is None, NaN, NaT or pandas' NA (never true for containers)."""
    if value is None:
        return True
    if isinstance(value, (list, tuple, dict, np.ndarray)):
        return False
    import pandas as pd

    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def series_table(plans: Sequence[SeriesPlan]) -> list[dict[str, Any]]:
    """One row per plan: number, description, modality, shape, frames and key.

    Parameters
    ----------
    plans
        Plans from :func:`list_series`.

    Returns
    -------
    list of dict
        Rows with ``SeriesNumber``, ``SeriesDescription``, ``Modality``, ``SOPClass``
        (the SOP class name, e.g. ``"MR Image Storage"`` or ``"Enhanced MR Image
        Storage"``, which tells classic and enhanced copies of one series apart), ``dims``,
        ``shape``, ``frames``, ``key``, ``SeriesInstanceUID``.
    """
    from dicomxr.series import sop_class_name

    rows = []
    for plan in plans:
        number = _attr(plan, "SeriesNumber")
        rows.append(
            {
                "SeriesNumber": None if number is None else int(number),
                "SeriesDescription": str(_attr(plan, "SeriesDescription", "")),
                "Modality": str(_attr(plan, "Modality", "")),
                "SOPClass": sop_class_name(_attr(plan, "SOPClassUID")),
                "dims": ",".join(plan.dims),
                "shape": "x".join(str(n) for n in plan.shape),
                "frames": plan.n_frames,
                "key": plan.key,
                "SeriesInstanceUID": str(_attr(plan, "SeriesInstanceUID", "")),
            }
        )
    return rows


def _format_table(plans: Sequence[SeriesPlan]) -> str:
    rows = series_table(plans)
    header = ("number", "description", "modality", "SOP class", "frames", "shape", "key")
    body = [
        (
            "" if r["SeriesNumber"] is None else str(r["SeriesNumber"]),
            r["SeriesDescription"][:40],
            r["Modality"],
            r["SOPClass"].removesuffix(" Storage"),
            str(r["frames"]),
            r["shape"],
            r["key"],
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join("    " + line.rstrip() for line in lines)


def _runs_hint(plans: SeriesPlans) -> str:
    """Name the runs of single-volume series among ``plans`` and how to merge them."""
    from dicomxr.runs import find_runs

    runs = find_runs(plans)
    if not runs:
        return ""
    names = "; ".join(
        f"SeriesNumber {_attr(run[0], 'SeriesNumber')}-{_attr(run[-1], 'SeriesNumber')} "
        f"({len(run)} volumes)"
        for run in runs
    )
    return (
        f"\nThese look like the volumes of one run each (consecutive SeriesNumbers, same "
        f"geometry and protocol): {names}; merge_runs=True (CLI: --merge-runs) opens each "
        "run as one series with a 'time' dim."
    )


def select_plan(plans: SeriesPlans, series: Any, source: Any) -> SeriesPlan:
    """Pick one plan by SeriesNumber, key, SeriesInstanceUID or description.

    ``series=None`` picks the only plan; otherwise (and when nothing matches) the error lists
    the plans and the ``series=`` value that selects each one.
    """
    if not plans:
        raise NoSeriesError(_no_series_message(plans, source))
    if series is None:
        if len(plans) == 1:
            return plans[0]
        numbers = [_attr(p, "SeriesNumber") for p in plans]
        first = numbers[0]
        example: Any = plans[0].key
        if first is not None and numbers.count(first) == 1:
            example = int(first)
        raise MultipleSeriesError(
            f"{_describe_source(source)} holds {len(plans)} series:\n{_format_table(plans)}\n"
            f"Open one with series=<SeriesNumber | key | SeriesInstanceUID | description>, "
            f"for example series={example!r}, or open them all with dicomxr.open_study()."
            + _runs_hint(plans)
        )
    if _is_plan(series):
        return series
    candidates: list[SeriesPlan]
    if isinstance(series, (int, np.integer)) and not isinstance(series, bool):
        candidates = [p for p in plans if _attr(p, "SeriesNumber") == int(series)]
        how = "SeriesNumber"
    else:
        text = str(series)
        candidates = [p for p in plans if p.key == text]
        how = "key"
        if not candidates:
            candidates = [p for p in plans if str(_attr(p, "SeriesInstanceUID", "")) == text]
            how = "SeriesInstanceUID"
        if not candidates and len(text) >= 6:  # the end of a long key, as tables cut them
            candidates = [p for p in plans if p.key.endswith(text)]
            how = "key suffix"
        if not candidates and text.strip().lstrip("-").isdigit():
            candidates = [p for p in plans if _attr(p, "SeriesNumber") == int(text)]
            how = "SeriesNumber"
        if not candidates:
            needle = text.casefold()
            candidates = [
                p for p in plans if needle in str(_attr(p, "SeriesDescription", "")).casefold()
            ]
            how = "description"
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise NoSeriesError(
            f"no series matches series={series!r} in {_describe_source(source)}; "
            f"it holds:\n{_format_table(plans)}"
        )
    raise MultipleSeriesError(
        f"series={series!r} matches {len(candidates)} series by {how}:\n"
        f"{_format_table(candidates)}\nUse the key to pick one, "
        f"for example series={candidates[0].key!r}."
    )


def _no_series_message(plans: SeriesPlans, source: Any) -> str:
    """Say why nothing can be opened: what the scan skipped and what the planner set apart."""
    lines = [f"no image series found in {_describe_source(source)}"]
    skipped = plans.skipped
    if skipped:
        reasons: dict[str, int] = {}
        for item in skipped:
            reason = str(item.get("reason", "")).split(" (")[0]
            reasons[reason] = reasons.get(reason, 0) + 1
        lines.append(
            f"{len(skipped)} file(s) skipped by the scan: "
            + "; ".join(f"{n} x {r}" for r, n in reasons.items())
            + " (see dicomxr.catalog.skipped(dicomxr.scan(...)))"
        )
    set_apart = plans.set_apart
    if len(set_apart):
        counts = set_apart.groupby("reason").size()
        lines.append(
            f"{len(set_apart)} frame(s) set apart: "
            + "; ".join(f"{n} x {reason}" for reason, n in counts.items())
            + " (plan_series(..., include=[...]) plans localizers / secondary captures)"
        )
    return "\n".join(lines)


def _describe_source(source: Any) -> str:
    import pandas as pd

    if isinstance(source, pd.DataFrame):
        return f"the catalog ({len(source)} rows)"
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    try:
        return f"the {len(source)} given paths"
    except TypeError:
        return repr(source)


# --------------------------------------------------------------------------------------
# JSON-friendly attributes


def _jsonable(value: Any) -> Any:
    """Convert a value to str/int/float/bool/list/dict, or ``None`` when it has none."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return None if math.isnan(value) else value
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            v = _jsonable(v)
            if v is not None:
                out[str(k)] = v
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if _missing(value):
        return None
    return str(value)


def _series_attrs(plan: SeriesPlan, *, include_patient: bool) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for key, value in (plan.attrs or {}).items():
        if not include_patient and key in PATIENT_ATTRIBUTES:
            continue
        value = _jsonable(value)
        if value is not None and value != [] and value != "":
            attrs[str(key)] = value
    for name in (
        "Modality",
        "SeriesInstanceUID",
        "StudyInstanceUID",
        "FrameOfReferenceUID",
        "SeriesDescription",
        "SeriesNumber",
        "Manufacturer",
        "PhotometricInterpretation",
    ):
        if name not in attrs:
            value = _jsonable(_attr(plan, name))
            if value is not None:
                attrs[name] = value
    if include_patient:
        for name in sorted(PATIENT_ATTRIBUTES):
            if name not in attrs:
                value = _jsonable(_attr(plan, name))
                if value not in (None, ""):
                    attrs[name] = value
    # flat row-major 16 floats and JSON text: netCDF and Zarr writers take them as they are
    attrs["affine"] = np.asarray(plan.affine, dtype=np.float64).ravel().tolist()
    attrs["geometry"] = json.dumps(_jsonable(plan.geometry.to_dict()))
    attrs["series_key"] = plan.key
    if plan.set_apart:  # what of the series is not in this volume, and why
        attrs["set_apart"] = json.dumps(_jsonable(plan.set_apart))
    if plan.label:
        attrs["series_label"] = str(plan.label)
    if "units" not in attrs:
        rescale_type = attrs.get("RescaleType")
        if rescale_type:
            attrs["units"] = str(rescale_type)
        elif attrs.get("Modality") == "CT":
            attrs["units"] = "HU"
    return encode_attrs(attrs)


# --------------------------------------------------------------------------------------
# coordinates


def _coord_values(values: Any) -> np.ndarray:
    """Coordinate values as a numpy array xarray and netCDF/Zarr writers accept."""
    arr = np.asarray(values)
    if arr.dtype == object:
        every = arr.ravel().tolist()
        if all(type(v) is str for v in every):  # UIDs, paths, times: the common case
            return np.array(every, dtype=str).reshape(arr.shape)
        flat = [v for v in every if not _missing(v)]
        if flat and all(isinstance(v, (bool, np.bool_)) for v in flat):
            return arr.astype(bool)
        if (
            flat
            and len(flat) == arr.size
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in flat)
        ):
            return arr.astype(np.int64)
        if flat and all(isinstance(v, (int, float, np.number)) for v in flat):
            return np.array(
                [np.nan if _missing(v) else v for v in every], dtype=np.float64
            ).reshape(arr.shape)
        return np.array(["" if _missing(v) else str(v) for v in every], dtype=str).reshape(
            arr.shape
        )
    return arr


def _frame_coords(plan: SeriesPlan) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """Return the plan's coordinates (``slice``, positions, UIDs, paths, varying attributes)."""
    return {
        name: (tuple(dims), _coord_values(values)) for name, (dims, values) in plan.coords.items()
    }


def _in_plane_coords(affine: Any, rows: int, cols: int) -> dict[str, tuple[str, np.ndarray]]:
    """``row``/``col`` index coordinates: mm from each slice's first stored pixel.

    They let :func:`dicomxr.spatial.affine_of` give the exact affine of any in-plane crop,
    stride or flip (see :mod:`dicomxr.spatial`).
    """
    affine = np.asarray(affine, dtype=np.float64)
    return {
        "row": ("row", np.arange(rows) * float(np.linalg.norm(affine[:3, 1]))),
        "col": ("col", np.arange(cols) * float(np.linalg.norm(affine[:3, 2]))),
    }


# --------------------------------------------------------------------------------------
# public functions


def open_series(
    source: Source | pd.DataFrame | SeriesPlan,
    *,
    series: int | str | SeriesPlan | None = None,
    on_irregular: str = "warn",
    on_duplicate: str = "warn",
    dtype: str | np.dtype | type = "auto",
    include_patient: bool = False,
    include: Sequence[str] = (),
    rescale: bool = True,
    recursive: bool = True,
    chunks: Chunks | None = {},  # noqa: B006 (never mutated: read as chunk sizes)
    merge_runs: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    keys: Sequence[Any] | str | None = None,
    scaling: str = "display",
) -> xr.DataArray:
    """Open one DICOM series as a lazy, dask-backed :class:`xarray.DataArray`.

    Only headers are read; ``.values``, ``.load()`` and ``.compute()`` read every frame into
    one array, a selection such as ``.isel(slice=k)`` reads only the frames it touches.

    Parameters
    ----------
    source
        A file, a folder (searched recursively), a glob, a list of paths, a DICOMDIR, a
        zip file, a URL that fsspec opens (``s3://bucket/prefix/``, ``https://...``,
        ``zip://*::s3://bucket/x.zip``; see the guide's "Remote and packed sources"), a
        catalog from :func:`dicomxr.scan`, or a :class:`~dicomxr.SeriesPlan`.
    series
        Which series when ``source`` holds several: a SeriesNumber (int), a plan key (as
        the error and ``dicomxr scan`` list it, or its unique end of 6+ characters), a
        SeriesInstanceUID, or a case-insensitive part of the SeriesDescription.
    on_irregular
        An irregular stack (uneven spacing, missing slices, tilt, incomplete frame grid):
        ``"warn"`` (default: keep every frame, true positions in the ``slice`` coordinate,
        approximate affine, :class:`~dicomxr.GeometryWarning`), ``"raise"``, ``"split"``
        (regular blocks become series), ``"fill"`` (missing slices become NaN frames: exact
        affine) or ``"ignore"``; see :func:`dicomxr.plan_series`.
    on_duplicate
        Frames at one position that no dimension (time, echo, b-value, ...) tells apart:
        ``"warn"`` (default: an extra ``volume`` dim), ``"raise"``, ``"split"`` (one series
        per copy) or ``"ignore"``.
    dtype
        ``"auto"``: integers when the rescale is exact (float32 otherwise); or a numpy dtype.
    include_patient
        Keep patient-identifying attributes (PatientName, PatientID, ...) in ``attrs``.
    include
        Frames normally set apart to open as series too: ``"localizer"``,
        ``"secondary_capture"``.
    rescale
        Apply the Modality LUT (RescaleSlope/Intercept, per frame); ``False``: stored values.
    recursive
        Descend into sub-folders of a folder source.
    chunks
        ``{}`` (default): one frame per chunk (MOSAIC: one stored image's tiles), the
        ``encoding["preferred_chunks"]``: a selection reads only its frames, also after
        flips, arithmetic or resampling; a full ``.values``/``.load()``/``.compute()`` of
        the array as opened is one threaded read into one array all the same.
        ``"series"``: one chunk. A mapping: sizes per dim, preferred for the others.
        ``None``: no dask, xarray's lazy indexing. See the guide's "Laziness".
    merge_runs
        Merge runs of single-volume series (consecutive SeriesNumbers, identical geometry
        and protocol, as Siemens XA classic fMRI) into one series with a ``time`` dim
        (:mod:`dicomxr.runs`); off by default, as the files declare separate series.
    storage_options
        fsspec options for a URL or zip source (credentials, endpoint, ``{"anon": True}``),
        carried by the lazy array: frames are read by byte range, also on dask workers.
    scaling
        What the stored integers become (:mod:`dicomxr.scaling`): ``"display"`` (default,
        RescaleSlope/Intercept, what viewers show), ``"precise"`` (Philips' floating-point
        values with the private Scale Slope, as dcm2niix), ``"real_world"`` (the Real World
        Value Mapping in its units; a :class:`~dicomxr.ScalingError` without one).
        ``attrs["scaling"]`` records what was applied, ``scale_slope`` /
        ``scale_intercept`` (attrs, or coordinates where they vary) the factors.
    keys
        Extra header fields, read in the scan's one pass (:func:`dicomxr.scan`): keywords
        (``["RepetitionTime", "FlipAngle"]``) or private tags (``"0019,100C"``). A constant
        one becomes an attr, a varying one a coordinate on the dims it varies along (``""``
        / ``NaN`` where a frame lacks it); kept even for a patient attribute (asking is the
        consent). A catalog or plan source must have been scanned with the keys.

    Returns
    -------
    xarray.DataArray
        Named ``image``, dims ``(*frame dims, "slice", "row", "col")`` (+ ``"channel"``),
        coordinates along the frame dims. ``attrs["affine"]``: the 4x4 map of ``(slice,
        row, col, 1)`` to LPS mm, flat, row-major (``da.dicom.affine`` gives the matrix);
        ``attrs["geometry"]``: the :class:`~dicomxr.GeometryReport` as JSON text
        (``da.dicom.report``). Every attr is a scalar, a string or a flat list, so
        ``to_netcdf`` and ``to_zarr`` keep them.

    Raises
    ------
    MultipleSeriesError
        ``source`` holds several series and ``series`` picks none; the message lists them.
    NoSeriesError
        There is no image series (or none matches ``series``).

    Examples
    --------
    >>> import dicomxr
    >>> da = dicomxr.open_series(dicomxr.data.sample_path())
    >>> da.dims
    ('time', 'label', 'slice', 'row', 'col')
    >>> da.dicom.affine_ras.shape
    (4, 4)
    """
    plans = list_series(
        source, on_irregular=on_irregular, on_duplicate=on_duplicate, include=include,
        recursive=recursive, merge_runs=merge_runs, storage_options=storage_options, keys=keys,
    )  # fmt: skip
    plan = select_plan(plans, series, source)
    warn_left_out(plan)
    ds = _plan_to_dataset(
        plan, dtype=dtype, include_patient=include_patient, rescale=rescale, chunks=chunks,
        scaling=scaling, keys=_key_names(keys),
    )  # fmt: skip
    return ds["image"]


def _key_names(keys: Any) -> tuple[str, ...]:
    from dicomxr._keys import resolve_keys

    return tuple(k.name for k in resolve_keys(keys))


def _add_keys(
    plan: SeriesPlan,
    names: Sequence[str],
    attrs: dict[str, Any],
    coords: dict[str, Any],
    dims: tuple[str, ...],
) -> None:
    """Put the requested keys' values into ``attrs`` (constant) or ``coords`` (varying)."""
    from dicomxr._keys import key_values

    for name in names:
        if name in coords or name in attrs or name not in plan.frame_table:
            continue
        found = key_values(plan, name)
        if found is None:
            continue
        kind, value = found
        if kind == "attr":
            value = _jsonable(value)
            if value not in (None, "", []):
                attrs[name] = list(value) if isinstance(value, tuple) else value
        elif all(d in dims for d in value[0]):
            coords[name] = value


# how many paths a warning names before it points to the full list
_NAMED_PATHS = 3


def warn_left_out(plan: SeriesPlan) -> None:
    """Warn (:class:`~dicomxr.SetApartWarning`) when frames of ``plan``'s series were left out.

    Names how many files, why, the first few paths, and where the full list is: the image's
    ``attrs["set_apart"]`` (JSON text) and ``dicomxr.list_series(source).set_apart``.
    """
    from dicomxr.series import left_out

    items = left_out(plan)
    if not items:
        return
    paths = list(dict.fromkeys(str(item.get("path")) for item in items))
    reasons: dict[str, int] = {}
    for item in items:
        reason = str(item.get("reason", "")).split(" as /")[0]
        reasons[reason] = reasons.get(reason, 0) + 1
    why = "; ".join(f"{n} x {r}" for r, n in reasons.items())
    shown = ", ".join(paths[:_NAMED_PATHS]) + (
        f" and {len(paths) - _NAMED_PATHS} more" if len(paths) > _NAMED_PATHS else ""
    )
    warnings.warn(
        f"series {plan.label or plan.key}: {len(paths)} file(s) left out of the volume "
        f"({len(items)} frame(s): {why}): {shown}; every frame left out and why: "
        "da.attrs['set_apart'] or dicomxr.list_series(source).set_apart",
        SetApartWarning,
        stacklevel=user_stacklevel(),
    )


def _plan_to_dataset(
    plan: SeriesPlan,
    *,
    dtype: Any,
    include_patient: bool,
    rescale: bool = True,
    chunks: Chunks = None,
    keys: Sequence[str] = (),
    scaling: str = "display",
) -> xr.Dataset:
    """Build the Dataset of one series: ``image`` over the lazy backend array, coords, attrs.

    The one function behind :func:`open_series`, :func:`open_study` and the ``"dicom"``
    engine. ``image`` wraps :class:`dicomxr._array.DicomBackendArray` in xarray's lazy
    indexing (no dask) with ``encoding["preferred_chunks"]``; ``chunks`` (see
    :func:`open_series`) then makes it dask through xarray's own chunking.
    """
    from dicomxr._array import DicomBackendArray, chunk_variable, lazily_indexed, preferred_chunks

    backend = DicomBackendArray(plan, dtype=dtype, rescale=rescale, scaling=scaling)
    shape = backend.shape
    dims = (*plan.dims, "row", "col")
    if len(shape) == len(dims) + 1:
        dims = (*dims, "channel")
    if len(shape) != len(dims):
        raise ValueError(f"series {plan.key}: lazy array has shape {shape}, expected dims {dims}")
    attrs = _series_attrs(plan, include_patient=include_patient)
    scaling_coords = _record_scaling(plan, backend.spec.scaling, attrs)
    coords = _fitting_coords(plan, dims, shape)
    coords.update(scaling_coords)
    if keys:
        _add_keys(plan, keys, attrs, coords, dims)
        attrs = encode_attrs(attrs)
    image = xr.Variable(
        dims,
        lazily_indexed(backend),
        attrs=attrs,
        encoding={"preferred_chunks": preferred_chunks(backend.spec, dims)},
    )
    if chunks is not None:
        image = chunk_variable(image, backend, chunks)
    coords.update(_in_plane_coords(plan.affine, shape[dims.index("row")], shape[dims.index("col")]))
    return xr.Dataset({"image": image}, coords=coords, attrs=dict(attrs))


def _record_scaling(
    plan: SeriesPlan, scaling: Any, attrs: dict[str, Any]
) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """Record the scaling applied in ``attrs`` (in place); return coordinates of what varies.

    ``attrs["scaling"]`` names it; for precise and real-world values the factors from stored
    to output values (``scale_slope``, ``scale_intercept``), and for every scaling the values
    dcm2niix's sidecar reports (``PhilipsScaleSlope``, ``RealWorldValueSlope`` /
    ``RealWorldValueIntercept``, ``real_world_units``), are attrs when every frame shares them
    and coordinates on the frame dims they vary along otherwise.
    """
    if scaling is None:
        return {}
    extra: dict[str, Any] = {"scaling": scaling.applied}
    if scaling.requested != scaling.applied:
        extra["scaling_requested"] = scaling.requested
    extra.update(scaling.attrs)
    coords: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}
    per_row: dict[str, Any] = {}
    if scaling.applied != "display":
        per_row = {"scale_slope": scaling.slopes, "scale_intercept": scaling.intercepts}
    per_row.update(scaling.per_row)
    grid = np.asarray(plan.grid)
    if per_row:
        for name, values in per_row.items():
            values = np.asarray(values)
            if values.dtype.kind not in "fiu" and name != "real_world_units":
                continue
            on_grid = _on_grid(values, grid)
            axes = _varying(on_grid)
            if not axes:
                extra[name] = on_grid.flat[0] if on_grid.size else None
                continue
            index = tuple(slice(None) if a in axes else 0 for a in range(grid.ndim))
            coords[name] = (tuple(plan.dims[a] for a in axes), _coord_values(on_grid[index]))
    for key in ("units", "units_meaning"):
        if key in extra:
            attrs.pop(key, None)  # real-world units replace the RescaleType ones
    attrs.update(encode_attrs(extra))
    return coords


def _on_grid(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Per-row ``values`` at each grid position (NaN, or "", where a frame is missing)."""
    fill: Any = "" if values.dtype == object else np.nan
    ext = np.empty(len(values) + 1, dtype=object if values.dtype == object else np.float64)
    ext[:-1] = values
    ext[-1] = fill
    return ext[np.where(grid >= 0, grid, len(values))]


def _varying(values: np.ndarray) -> list[int]:
    """Axes along which ``values`` differ (NaN equal to NaN)."""
    axes = []
    for axis in range(values.ndim):
        first = np.take(values, [0], axis=axis)
        same = values == first
        if values.dtype.kind == "f":
            same |= np.isnan(values) & np.isnan(first)
        if not np.all(same):
            axes.append(axis)
    return axes


def _fitting_coords(
    plan: SeriesPlan, dims: tuple[str, ...], shape: tuple[int, ...]
) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """Return the plan's coordinates that fit the image's dims (a misfit is logged, left out)."""
    coords = {}
    for name, (cdims, values) in _frame_coords(plan).items():
        if all(d in dims for d in cdims) and values.shape == tuple(
            shape[dims.index(d)] for d in cdims
        ):
            coords[name] = (cdims, values)
        else:  # a planner bug; the image is still right, say what is left out
            logger.warning(
                "series %s: coordinate %r on %s with shape %s does not fit dims %s; left out",
                plan.key, name, cdims, values.shape, dict(zip(dims, shape, strict=True)),
            )  # fmt: skip
    return coords


def _node_name(text: Any, fallback: str) -> str:
    """Return a DataTree node name: no slash, never empty."""
    name = re.sub(r"[/\\]+", "_", str(text if not _missing(text) else "")).strip()
    return name or fallback


def open_study(
    source: Source | pd.DataFrame,
    *,
    on_irregular: str = "warn",
    on_duplicate: str = "warn",
    dtype: str | np.dtype | type = "auto",
    include_patient: bool = False,
    include: Sequence[str] = (),
    rescale: bool = True,
    recursive: bool = True,
    chunks: Chunks | None = {},  # noqa: B006 (never mutated: read as chunk sizes)
    merge_runs: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    keys: Sequence[Any] | str | None = None,
    scaling: str = "display",
) -> xr.DataTree:
    """Open every series in ``source`` as an :class:`xarray.DataTree`, lazily.

    What ``xr.open_datatree(source, engine="dicom")`` returns, with dask (``chunks``) on.

    The tree is ``/<patient>/<StudyInstanceUID>/<series key>`` (a ``/`` in a name becomes
    ``_``); each series node holds a Dataset whose image variable is named ``image`` and
    whose attrs are the series attrs. Study nodes carry the study attributes.

    Patient nodes are named neutrally, ``patient_0``, ``patient_1``, ... in the order the
    patients first appear among the series (grouped by PatientID), and carry no
    identifier at all, so a tree can be shared or written out without leaking who was
    scanned. With ``include_patient=True`` they are named by PatientID and carry
    ``PatientID``, ``PatientName``, ``PatientBirthDate`` and ``PatientSex``.

    Parameters
    ----------
    source
        As for :func:`open_series`.
    on_irregular, on_duplicate, dtype, include, rescale, recursive, chunks, storage_options, keys, scaling
        As for :func:`open_series` (per series). With ``scaling="real_world"`` every series
        needs a Real World Value Mapping.
    merge_runs
        As for :func:`open_series`.
    include_patient
        Name patient nodes by PatientID and keep patient-identifying attributes (in the
        patient nodes and the series attrs); by default neither appears anywhere in the tree.

    Returns
    -------
    xarray.DataTree

    Examples
    --------
    >>> import dicomxr
    >>> tree = dicomxr.open_study(dicomxr.data.sample_path())
    >>> [node.path for node in tree.leaves]  # doctest: +SKIP
    """
    plans = list_series(
        source,
        on_irregular=on_irregular,
        on_duplicate=on_duplicate,
        include=include,
        recursive=recursive,
        merge_runs=merge_runs,
        storage_options=storage_options,
        keys=keys,
    )
    names = _key_names(keys)
    if not plans:
        raise NoSeriesError(_no_series_message(plans, source))
    tree: dict[str, xr.Dataset] = {"/": xr.Dataset()}
    patients: dict[str, str] = {}  # PatientID -> node name
    for plan in plans:
        patient_id = str(plan.patient.get("PatientID") or "")
        if patient_id not in patients:
            patients[patient_id] = (
                _node_name(patient_id, "unknown_patient")
                if include_patient
                else f"patient_{len(patients)}"
            )
        patient = patients[patient_id]
        study = _node_name(_attr(plan, "StudyInstanceUID"), "unknown_study")
        key = _node_name(plan.key, "series")
        warn_left_out(plan)
        tree[f"/{patient}/{study}/{key}"] = _plan_to_dataset(
            plan, dtype=dtype, include_patient=include_patient, rescale=rescale, chunks=chunks,
            scaling=scaling, keys=names,
        )  # fmt: skip
        study_path = f"/{patient}/{study}"
        if study_path not in tree:
            study_attrs = {n: _jsonable(_attr(plan, n)) for n in _STUDY_ATTRIBUTES}
            tree[study_path] = xr.Dataset(
                attrs={k: v for k, v in study_attrs.items() if v not in (None, "")}
            )
        if f"/{patient}" not in tree:
            patient_attrs = {}
            if include_patient:
                for n in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex"):
                    value = _jsonable(_attr(plan, n))
                    if value not in (None, ""):
                        patient_attrs[n] = value
            tree[f"/{patient}"] = xr.Dataset(attrs=patient_attrs)
    return xr.DataTree.from_dict(tree)
