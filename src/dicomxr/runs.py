"""One volume per series: find the runs of single-volume series and merge them.

Some exports write every volume of a 4D acquisition as its own series: Siemens XA "classic"
(interoperability) exports of an fMRI run give each volume a new SeriesInstanceUID and
consecutive SeriesNumbers, with identical geometry and protocol. dicomxr plans what the
files declare, so such a folder holds N one-volume series; :func:`merge_runs` (asked for
with ``merge_runs=True`` on :func:`dicomxr.api.list_series`, :func:`dicomxr.open_series`,
:func:`dicomxr.open_study`, :func:`dicomxr.convert` and the CLI's ``--merge-runs``, or
called on the plans of :func:`dicomxr.plan_series`) puts each
run back together as one series with a ``time`` dim (or whatever tells its volumes apart:
the merged frames are planned again, so a run of ASL label/control volumes gets
``("time", "label", "slice")``).

A run is two or more plans that

- are each one volume (``dims == ("slice",)``),
- share StudyInstanceUID, FrameOfReferenceUID, SOP class, modality, SeriesDescription and
  the protocol values every volume carries (ImageType, EchoTime, RepetitionTime when the
  catalog has it, PixelSpacing, ImageOrientationPatient, SliceThickness, frame size),
- have the same slice positions (the same affine and number of slices, within 1e-3 mm),
- and have consecutive SeriesNumbers.

Why opt-in, not automatic: the files say these are separate series, and two single-volume
series with consecutive numbers and the same protocol are just as often two separate
acquisitions (a repeated T1 after motion, the magnitude images of two scans) that must not
become one array. dcm2niix (v1.0.20260724, default and ``-m y``) keeps them separate too:
one 3D NIfTI per series. When a folder holds such a run and no series is chosen, the
:class:`~dicomxr.MultipleSeriesError` names the run and the argument that merges it.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from dicomxr.series import SeriesPlan, SeriesPlans

__all__ = ["find_runs", "merge_runs"]

# plan attrs that every volume of a run shares (compared when present on either side)
_PROTOCOL = (
    "StudyInstanceUID",
    "FrameOfReferenceUID",
    "SOPClassUID",
    "Modality",
    "SeriesDescription",
    "Manufacturer",
    "ImageType",
    "EchoTime",
    "RepetitionTime",
    "PixelSpacing",
    "ImageOrientationPatient",
    "SliceThickness",
    "PhotometricInterpretation",
)
# slice positions of the volumes of a run agree within this (mm)
_POSITION_TOL_MM = 1e-3


def _series_number(plan: SeriesPlan) -> int | None:
    value = plan.attrs.get("SeriesNumber")
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _fits(first: SeriesPlan, other: SeriesPlan) -> bool:
    """Whether ``other`` could be a further volume of ``first``'s run."""
    if first.dims != ("slice",) or other.dims != ("slice",):
        return False
    if tuple(first.frame_shape) != tuple(other.frame_shape):
        return False
    if first.grid.shape != other.grid.shape:
        return False
    for name in _PROTOCOL:
        if not _same(first.attrs.get(name), other.attrs.get(name)):
            return False
    a, b = np.asarray(first.affine, float), np.asarray(other.affine, float)
    if a.shape != (4, 4) or b.shape != (4, 4) or not np.allclose(a, b, atol=_POSITION_TOL_MM):
        return False
    sa, sb = first.coords.get("slice"), other.coords.get("slice")
    if sa is None or sb is None:
        return False
    return bool(np.allclose(sa[1], sb[1], atol=_POSITION_TOL_MM, equal_nan=True))


def find_runs(plans: Sequence[SeriesPlan]) -> list[list[SeriesPlan]]:
    """Return the runs of single-volume series among ``plans`` (see the module docstring).

    Parameters
    ----------
    plans
        Plans from :func:`dicomxr.plan_series`.

    Returns
    -------
    list of list of SeriesPlan
        Each run in SeriesNumber order, two plans or more; plans of no run are not listed.
    """
    candidates = [p for p in plans if p.dims == ("slice",) and _series_number(p) is not None]
    candidates.sort(
        key=lambda p: (str(p.attrs.get("StudyInstanceUID", "")), _series_number(p), p.key)
    )
    runs: list[list[SeriesPlan]] = []
    current: list[SeriesPlan] = []
    for plan in candidates:
        if (
            current
            and _series_number(plan) == _series_number(current[-1]) + 1
            and _fits(current[0], plan)
        ):
            current.append(plan)
            continue
        if len(current) > 1:
            runs.append(current)
        current = [plan]
    if len(current) > 1:
        runs.append(current)
    return runs


def merge_runs(
    plans: SeriesPlans, *, on_irregular: str = "warn", on_duplicate: str = "warn"
) -> SeriesPlans:
    """Replace every run of single-volume series in ``plans`` by one merged plan.

    The frames of a run are planned again as one series (the first volume's
    SeriesInstanceUID and SeriesNumber; the others are kept per volume in the coordinates
    ``SeriesNumber`` and ``SeriesInstanceUID`` along the new dims, and listed in
    ``attrs["merged_series"]``). What tells the volumes apart becomes the new dim, as for
    any series (a ``time`` dim for an fMRI run whose volumes differ in acquisition time or
    temporal position); when nothing does, the SeriesNumber order is the ``time`` order.

    Parameters
    ----------
    plans
        Plans from :func:`dicomxr.plan_series`.
    on_irregular, on_duplicate
        The policies the merged frames are planned with (see :func:`dicomxr.plan_series`).

    Returns
    -------
    SeriesPlans
        The same plans with each run replaced by its merged plan (in the first volume's
        place); ``set_apart`` and ``skipped`` are kept.
    """
    from dicomxr.series import SeriesPlans

    runs = find_runs(plans)
    if not runs:
        return plans
    merged_of = {id(run[0]): _merge(run, on_irregular, on_duplicate) for run in runs}
    gone = {id(p) for run in runs for p in run[1:]}
    out = [merged_of.get(id(p), p) for p in plans if id(p) not in gone]
    return SeriesPlans(out, set_apart=plans.set_apart, skipped=plans.skipped)


def _merge(run: list[SeriesPlan], on_irregular: str, on_duplicate: str) -> SeriesPlan:
    from dicomxr.series import plan_series

    first = run[0]
    parts = []
    for index, plan in enumerate(run):
        frames = plan.frames.copy()
        frames["run_index"] = index
        parts.append(frames)
    frames = pd.concat(parts, ignore_index=True)
    frames["SeriesInstanceUID"] = first.attrs.get("SeriesInstanceUID")
    frames["SeriesNumber"] = pd.array([_series_number(first)] * len(frames), dtype="Int64")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        merged = _plan_one(
            plan_series(frames, on_irregular=on_irregular, on_duplicate=on_duplicate)
        )
    if merged is not None and "volume" not in merged.dims:
        for item in said:  # what planning the merged frames had to say, said once
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)
    else:
        # nothing tells the volumes apart: their SeriesNumber order is their time order
        frames["TemporalPositionIdentifier"] = pd.array(
            (frames["run_index"] + 1).tolist(), dtype="Int64"
        )
        merged = _plan_one(
            plan_series(frames, on_irregular=on_irregular, on_duplicate=on_duplicate)
        )
    if merged is None:  # the planner split them after all: leave the run as it was
        return first
    _describe_sources(merged, run)
    merged.set_apart = [item for plan in run for item in plan.set_apart]
    return merged


def _plan_one(plans: SeriesPlans) -> SeriesPlan | None:
    return plans[0] if len(plans) == 1 else None


def _describe_sources(merged: SeriesPlan, run: list[SeriesPlan]) -> None:
    """Which source series each volume came from: coordinates along the new dims, attrs."""
    volume_dims = merged.dims[:-1]
    index = merged.frames["run_index"].to_numpy()
    first_cell = np.where(merged.grid >= 0, merged.grid, np.iinfo(np.int64).max).min(axis=-1)
    source = np.full(first_cell.shape, -1, dtype=np.int64)
    found = first_cell < np.iinfo(np.int64).max
    source[found] = index[first_cell[found]]
    numbers = np.array([_series_number(p) for p in run], dtype=np.int64)
    uids = np.array([str(p.attrs.get("SeriesInstanceUID", "")) for p in run], dtype=object)
    merged.coords["SeriesNumber"] = (volume_dims, np.where(source >= 0, numbers[source], -1))
    merged.coords["SeriesInstanceUID"] = (
        volume_dims,
        np.where(source >= 0, uids[np.maximum(source, 0)], ""),
    )
    merged.attrs["merged_series"] = json.dumps(
        [
            {"SeriesNumber": int(n), "SeriesInstanceUID": str(u)}
            for n, u in zip(numbers, uids, strict=True)
        ]
    )
    merged.label = f"{merged.label} (run of {len(run)} series merged)"
