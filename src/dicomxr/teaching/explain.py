"""Geometry explainers: see where a series' slices are, and why their order matters.

A DICOM series is a set of frames, each with its own position (``ImagePositionPatient``) and
orientation (``ImageOrientationPatient``) in the patient coordinate system (LPS: x to the
patient's Left, y to Posterior, z to Superior). These functions show that geometry:

- :func:`slice_positions` - a table of every frame's position projected on the slice normal,
  the step to its neighbour and what is wrong with it (gap, uneven step, duplicate), and the
  in-plane shift that gantry tilt produces;
- :func:`plot_slice_positions` - the same as a figure;
- :func:`plot_orientation` - the row and column direction cosines, the normal, a few slice
  planes and the LPS axes, in 3D;
- :func:`frame_order` and :func:`reformat` - the order a naive loader would stack the frames
  in (by ``InstanceNumber`` or by file name), and a cut across the stack in any order;
- :func:`compare_orders` - a reformat in the right order next to the same reformat in the
  wrong one.

The input is what the loader gives (a DataArray from :func:`dicomxr.open_series`), a series
plan (:class:`dicomxr.series.SeriesPlan`), a catalog or frames table for one series, or a path
(opened with :func:`dicomxr.open_series`). matplotlib is imported only when a figure is drawn.

Examples
--------
>>> import dicomxr
>>> from dicomxr import explain
>>> da = dicomxr.open_series(dicomxr.data.sample_path())  # doctest: +SKIP
>>> explain.slice_positions(da).head()  # doctest: +SKIP
>>> explain.compare_orders(da, by="InstanceNumber")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr
    from matplotlib.figure import Figure

__all__ = [  # noqa: RUF022 - reading order, which the API page follows
    "slice_positions",
    "plot_slice_positions",
    "plot_orientation",
    "frame_order",
    "reformat",
    "compare_orders",
    "slice_normal",
]

logger = logging.getLogger(__name__)

_PIXEL_DIMS = ("row", "col", "channel")
#: Orders :func:`frame_order` knows.
OrderKey = Literal["position", "InstanceNumber", "filename"]

# colours of the step classes, used by every figure here
_KIND_COLOURS = {
    "regular": "tab:blue",
    "uneven": "tab:orange",
    "gap": "tab:red",
    "duplicate": "tab:purple",
}


def slice_normal(orientation: Any) -> np.ndarray:
    """Return the unit slice normal of an ``ImageOrientationPatient``.

    Parameters
    ----------
    orientation
        Six direction cosines: the row direction (along a row, towards increasing column
        index) followed by the column direction.

    Returns
    -------
    numpy.ndarray
        ``row x column``, normalised, shape ``(3,)``, in LPS.

    Examples
    --------
    >>> slice_normal([1, 0, 0, 0, 1, 0])  # axial: the normal points to the head (+z, S)
    array([0., 0., 1.])
    """
    iop = np.asarray(orientation, dtype=float).reshape(-1)
    if iop.shape != (6,) or not np.all(np.isfinite(iop)):
        raise ValueError(f"ImageOrientationPatient must be 6 finite numbers, got {orientation!r}")
    n = np.cross(iop[:3], iop[3:])
    norm = np.linalg.norm(n)
    if norm < 1e-6:
        raise ValueError(f"ImageOrientationPatient has parallel row and column vectors: {iop}")
    return n / norm


# --- the slice table every explainer works on ----------------------------------------------


@dataclass(frozen=True)
class _Slices:
    """Per-frame geometry of one series, in the order of the object it came from."""

    positions: np.ndarray  # (n, 3) LPS mm
    orientation: np.ndarray  # (6,)
    instance_number: np.ndarray  # (n,) float, NaN when missing
    path: np.ndarray  # (n,) object (str)
    frame: np.ndarray  # (n,) int
    rows: int | None
    cols: int | None
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing)
    label: str

    @property
    def normal(self) -> np.ndarray:
        return slice_normal(self.orientation)


def _check_orientation(orientations: np.ndarray, label: str) -> np.ndarray:
    orientations = np.asarray(orientations, dtype=float).reshape(-1, 6)
    if not np.all(np.isfinite(orientations)):
        raise ValueError(f"{label}: some frames have no ImageOrientationPatient")
    spread = np.abs(orientations - orientations[0]).max()
    if spread > 1e-4:
        raise ValueError(
            f"{label}: frames have different orientations (max difference {spread:.3g}); "
            "split the series first, for example with dicomxr.plan_series"
        )
    return orientations[0]


def _as_float_array(values: Any, n: int) -> np.ndarray:
    out = np.full(n, np.nan)
    for i, v in enumerate(values):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            pass
    return out


def _tuple_column(frame: pd.DataFrame, column: str, width: int, label: str) -> np.ndarray:
    if column not in frame.columns:
        raise ValueError(f"{label}: no {column} column; is this a catalog of image frames?")
    out = np.full((len(frame), width), np.nan)
    for i, value in enumerate(frame[column].tolist()):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        arr = np.asarray(value, dtype=float).reshape(-1)
        if arr.shape == (width,):
            out[i] = arr
    return out


def _slices_from_frame(frame: pd.DataFrame, label: str) -> _Slices:
    if len(frame) == 0:
        raise ValueError(f"{label}: no frames")
    n = len(frame)
    positions = _tuple_column(frame, "ImagePositionPatient", 3, label)
    missing = ~np.all(np.isfinite(positions), axis=1)
    if missing.any():
        paths = frame["path"].iloc[np.flatnonzero(missing)[:3]].tolist() if "path" in frame else []
        raise ValueError(
            f"{label}: {int(missing.sum())} frame(s) have no ImagePositionPatient "
            f"(for example {paths}); localizers or secondary captures? plan the series first"
        )
    orientation = _check_orientation(
        _tuple_column(frame, "ImageOrientationPatient", 6, label), label
    )
    spacing = None
    if "PixelSpacing" in frame.columns:
        ps = _tuple_column(frame, "PixelSpacing", 2, label)[0]
        if np.all(np.isfinite(ps)):
            spacing = (float(ps[0]), float(ps[1]))

    def _first_int(column: str) -> int | None:
        if column not in frame.columns:
            return None
        value = frame[column].iloc[0]
        return None if pd.isna(value) else int(value)

    return _Slices(
        positions=positions,
        orientation=orientation,
        instance_number=_as_float_array(frame.get("InstanceNumber", [None] * n), n),
        path=np.asarray([str(p) for p in frame.get("path", [""] * n)], dtype=object),
        frame=np.asarray(
            [0 if pd.isna(f) else int(f) for f in frame.get("frame", [0] * n)], dtype=int
        ),
        rows=_first_int("Rows"),
        cols=_first_int("Columns"),
        pixel_spacing=spacing,
        label=label,
    )


def _frame_dims(da: xr.DataArray) -> list[str]:
    dims = [d for d in da.dims if d not in _PIXEL_DIMS]
    if "slice" not in dims:
        raise ValueError(
            f"expected a DataArray from dicomxr.open_series with a 'slice' dimension, "
            f"got dims {da.dims}"
        )
    return dims


def _flat_coord(da: xr.DataArray, name: str, frame_dims: list[str]) -> np.ndarray | None:
    """Broadcast a coordinate over the frame dims and flatten it in C order (None if absent)."""
    if name not in da.coords:
        return None
    coord = da.coords[name]
    if any(d not in frame_dims for d in coord.dims):
        return None
    template = _zeros_over(da, frame_dims)
    return (coord.broadcast_like(template).transpose(*frame_dims)).values.reshape(-1)


def _zeros_over(da: xr.DataArray, frame_dims: list[str]) -> xr.DataArray:
    """Zeros over the frame dims of ``da`` (a broadcasting template, no pixel is read)."""
    import xarray as xr

    shape = [da.sizes[d] for d in frame_dims]
    return xr.DataArray(np.zeros(shape, dtype=np.int8), dims=frame_dims)


def _series_label(attrs: dict[str, Any]) -> str:
    parts = [
        str(attrs[k]) for k in ("Modality", "SeriesNumber", "SeriesDescription") if attrs.get(k)
    ]
    if parts:
        return " ".join(parts)
    return str(attrs.get("series_key") or "")


def _slices_from_dataarray(da: xr.DataArray) -> _Slices:
    dims = _frame_dims(da)
    n = int(np.prod([da.sizes[d] for d in dims]))
    label = _series_label(da.attrs) or str(da.name)
    xyz = [_flat_coord(da, f"position_{a}", dims) for a in "xyz"]
    if any(v is None for v in xyz):
        raise ValueError(
            f"{label}: the DataArray has no position_x/_y/_z coordinates along {dims}; "
            "pass the DataArray returned by dicomxr.open_series"
        )
    positions = np.stack([np.asarray(v, dtype=float) for v in xyz], axis=1)
    iop = da.attrs.get("ImageOrientationPatient")
    if iop is None:
        raise ValueError(f"{label}: no ImageOrientationPatient in attrs")
    instance = _flat_coord(da, "InstanceNumber", dims)
    path = _flat_coord(da, "path", dims)
    frame = _flat_coord(da, "frame", dims)
    spacing = da.attrs.get("PixelSpacing")
    return _Slices(
        positions=positions,
        orientation=np.asarray(iop, dtype=float).reshape(6),
        instance_number=(np.full(n, np.nan) if instance is None else _as_float_array(instance, n)),
        path=np.asarray([""] * n if path is None else [str(p) for p in path], dtype=object),
        frame=np.zeros(n, dtype=int) if frame is None else np.asarray(frame, dtype=int),
        rows=int(da.sizes["row"]) if "row" in da.sizes else None,
        cols=int(da.sizes["col"]) if "col" in da.sizes else None,
        pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
        label=label,
    )


def _slices_from_plan(plan: Any) -> _Slices:
    grid = np.asarray(plan.grid).reshape(-1)
    rows = plan.frames.iloc[grid[grid >= 0]]
    return _slices_from_frame(rows, str(getattr(plan, "key", "series plan")))


def _open(obj: Any) -> xr.DataArray:
    from dicomxr.api import open_series

    return open_series(obj)


def _slices(obj: Any) -> _Slices:
    import xarray as xr

    if isinstance(obj, xr.DataArray):
        return _slices_from_dataarray(obj)
    if isinstance(obj, xr.Dataset) and "image" in obj:
        return _slices_from_dataarray(obj["image"])
    if isinstance(obj, pd.DataFrame):
        if "SeriesInstanceUID" in obj.columns and obj["SeriesInstanceUID"].nunique() > 1:
            raise ValueError(
                "the table holds several series "
                f"({', '.join(map(str, obj['SeriesInstanceUID'].unique()[:5]))}); "
                "select one, for example with dicomxr.plan_series"
            )
        return _slices_from_frame(obj.reset_index(drop=True), "table")
    if _is_plan(obj):
        return _slices_from_plan(obj)
    if isinstance(obj, (str, os.PathLike)):
        return _slices_from_dataarray(_open(obj))
    raise TypeError(
        "expected a DataArray from dicomxr.open_series, a SeriesPlan, a catalog table or a "
        f"path, got {type(obj).__name__}"
    )


# --- positions along the normal -------------------------------------------------------------


def _classify_steps(steps: np.ndarray) -> tuple[np.ndarray, float]:
    """Kind of each step between sorted neighbours, and the typical (median) step."""
    kinds = np.full(steps.shape, "regular", dtype=object)
    if steps.size == 0:
        return kinds, float("nan")
    positive = steps[steps > 1e-3]
    typical = float(np.median(positive)) if positive.size else 0.0
    tol = max(0.01, 0.01 * typical)  # 10 micrometres, or 1 % of the step
    for i, d in enumerate(steps):
        if d <= tol and typical > tol:
            kinds[i] = "duplicate"
        elif typical <= 0 or abs(d - typical) <= tol:
            kinds[i] = "regular"
        elif d > typical and abs(d / typical - round(d / typical)) * typical <= tol:
            kinds[i] = "gap"  # a whole number of steps: slices are missing
        else:
            kinds[i] = "uneven"
    return kinds, typical


def slice_positions(obj: Any) -> pd.DataFrame:
    """Tabulate every frame's position along the slice normal.

    The position of a frame along the stack is ``s = ImagePositionPatient · n``, with ``n`` the
    slice normal (:func:`slice_normal`). The table is sorted by ``s`` (``InstanceNumber`` breaks
    ties), which is the order the loader stacks the frames in.

    Parameters
    ----------
    obj
        A DataArray from :func:`dicomxr.open_series` (all its frames, over every extra
        dimension, are listed), a series plan, a catalog or frames table of one series, or a
        path to open.

    Returns
    -------
    pandas.DataFrame
        One row per frame, sorted along the normal, with columns ``s`` (mm along the normal),
        ``step`` (mm from the previous row; NaN for the first), ``kind`` (of that step:
        ``"regular"``, ``"uneven"``, ``"gap"`` - a whole number of typical steps, so slices are
        missing - or ``"duplicate"``), ``missing`` (slices a gap stands for), ``shift_row`` and
        ``shift_col`` (mm: the in-plane offset of the frame from the first one along the row
        and column directions, which grows with ``s`` when the gantry is tilted),
        ``position_x/_y/_z`` (LPS mm), ``InstanceNumber``, ``path``, ``frame`` and ``input_index``
        (the frame's index in the object's own flattened order). ``attrs`` holds ``normal``,
        ``typical_step`` (median) and ``tilt_deg`` (angle between the direction from the
        first to the last slice and the normal).

    Examples
    --------
    >>> table = slice_positions(da)  # doctest: +SKIP
    >>> table[table.kind != "regular"]  # the steps worth a look  # doctest: +SKIP
    """
    return _positions_table(_slices(obj))


def _positions_table(sl: _Slices) -> pd.DataFrame:
    n = sl.normal
    s = sl.positions @ n
    order = np.lexsort((np.nan_to_num(sl.instance_number, nan=np.inf), s))
    s_sorted = s[order]
    steps = np.diff(s_sorted)
    kinds, typical = _classify_steps(steps)
    missing = np.zeros(steps.shape, dtype=int)
    gap = kinds == "gap"
    missing[gap] = np.round(steps[gap] / typical).astype(int) - 1
    row_dir, col_dir = sl.orientation[:3], sl.orientation[3:]
    offsets = sl.positions[order] - sl.positions[order][0]
    table = pd.DataFrame(
        {
            "s": s_sorted,
            "step": np.concatenate([[np.nan], steps]),
            "kind": np.concatenate([["first"], kinds]).astype(object),
            "missing": np.concatenate([[0], missing]),
            "shift_row": offsets @ row_dir,
            "shift_col": offsets @ col_dir,
            "position_x": sl.positions[order, 0],
            "position_y": sl.positions[order, 1],
            "position_z": sl.positions[order, 2],
            "InstanceNumber": sl.instance_number[order],
            "path": sl.path[order],
            "frame": sl.frame[order],
            "input_index": order,
        }
    )
    span = sl.positions[order][-1] - sl.positions[order][0]
    tilt = 0.0
    if np.linalg.norm(span) > 1e-6:
        cos = abs(float(span @ n)) / float(np.linalg.norm(span))
        tilt = float(np.degrees(np.arccos(min(1.0, cos))))
    table.attrs = {
        "normal": n.tolist(),
        "typical_step": typical,
        "tilt_deg": tilt,
        "label": sl.label,
    }
    return table


def _new_figure(figsize: tuple[float, float], **kwargs: Any) -> Figure:
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=figsize, layout="constrained", **kwargs)
    # closed in pyplot right away: a notebook shows the returned figure once (as the cell's
    # value), scripts save it with fig.savefig, and nothing accumulates in pyplot's registry
    plt.close(fig)
    return fig


def plot_slice_positions(obj: Any) -> Figure:
    """Draw the slice positions along the normal, the steps between them and the tilt shear.

    Three panels: each frame's position ``s`` along the normal against its rank in the stack;
    the step from each slice to the next, with the typical (median) step and every gap, uneven
    step and duplicate marked; and the in-plane shift of each slice relative to the first (a
    straight sloping line is gantry tilt).

    Parameters
    ----------
    obj
        See :func:`slice_positions`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    table = _positions_table(_slices(obj))
    fig = _new_figure((10, 7.5))
    ax_s, ax_step, ax_shift = fig.subplots(3, 1, sharex=True)
    rank = np.arange(len(table))
    kinds = table["kind"].to_numpy()
    colours = [_KIND_COLOURS.get(k, "black") for k in kinds]

    ax_s.scatter(rank, table["s"], c=colours, s=14, zorder=3)
    ax_s.plot(rank, table["s"], color="0.7", lw=0.8, zorder=2)
    ax_s.set_ylabel("s = position · normal (mm)")
    typical = table.attrs["typical_step"]
    n = np.round(table.attrs["normal"], 3)
    ax_s.set_title(
        f"{table.attrs['label']}: {len(table)} frames along the normal n = {tuple(n.tolist())} "
        f"(LPS); typical step {typical:.3g} mm"
    )

    step = table["step"].to_numpy()
    ax_step.bar(rank[1:], step[1:], color=colours[1:], width=0.8)
    if np.isfinite(typical):
        ax_step.axhline(typical, color="0.3", ls="--", lw=1, label=f"median step {typical:.3g} mm")
    for i in np.flatnonzero((kinds != "regular") & (kinds != "first")):
        text = {
            "gap": f"gap: {table['missing'].iat[i]} missing",
            "uneven": f"{step[i]:.3g} mm",
            "duplicate": "duplicate",
        }[kinds[i]]
        ax_step.annotate(
            text,
            (rank[i], step[i]),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            fontsize=7,
            rotation=90,
            color=_KIND_COLOURS[kinds[i]],
        )
    handles = [
        _patch(colour, f"{kind} step") for kind, colour in _KIND_COLOURS.items() if kind in kinds
    ]
    ax_step.legend(handles=[*ax_step.get_legend_handles_labels()[0], *handles], fontsize=8)
    ax_step.set_ylabel("step to previous (mm)")
    ax_step.set_ylim(0, max(np.nanmax(step[1:]) * 1.35, 1e-3) if len(step) > 1 else 1)

    ax_shift.plot(rank, table["shift_row"], ".-", label="along the row direction")
    ax_shift.plot(rank, table["shift_col"], ".-", label="along the column direction")
    ax_shift.set_ylabel("in-plane shift (mm)")
    if np.nanmax(np.abs(table[["shift_row", "shift_col"]].to_numpy())) < 0.05:
        ax_shift.set_ylim(-1, 1)  # no shear: rounding noise in the positions is not a trend
    ax_shift.set_xlabel("rank along the normal (the loader's slice index)")
    ax_shift.set_title(
        f"in-plane shift from the first slice: tilt {table.attrs['tilt_deg']:.2f}° "
        "between the stack direction and the normal",
        fontsize=9,
    )
    ax_shift.legend(fontsize=8)
    for ax in (ax_s, ax_step, ax_shift):
        ax.grid(alpha=0.3)
    return fig


def _patch(colour: str, label: str) -> Any:
    from matplotlib.patches import Patch

    return Patch(color=colour, label=label)


# --- orientation in 3D ----------------------------------------------------------------------


def plot_orientation(obj: Any, *, planes: int = 3) -> Figure:
    """Draw the orientation vectors, the slice normal, a few slice planes and the LPS axes in 3D.

    The row direction cosine (``ImageOrientationPatient[:3]``: along a row, towards increasing
    column index), the column direction cosine (``ImageOrientationPatient[3:]``) and the normal
    (their cross product) are drawn from the first pixel of the first slice; the outlines of
    ``planes`` slices (first, last and evenly between) show the stack, and a line through their
    first pixels shows the direction the stack really runs in (not the normal when the gantry is
    tilted). The patient axes are labelled L, P, S (LPS: +x is the patient's left, +y
    posterior, +z superior).

    Parameters
    ----------
    obj
        See :func:`slice_positions`.
    planes
        How many slice outlines to draw (at least 2).

    Returns
    -------
    matplotlib.figure.Figure
    """
    sl = _slices(obj)
    table = _positions_table(sl)
    r, c, n = sl.orientation[:3], sl.orientation[3:], sl.normal
    rows = sl.rows or 256
    cols = sl.cols or 256
    dr, dc = sl.pixel_spacing or (1.0, 1.0)
    width, height = (cols - 1) * dc, (rows - 1) * dr
    first = table[["position_x", "position_y", "position_z"]].to_numpy()

    fig = _new_figure((8, 7.5))
    ax = fig.add_subplot(projection="3d")
    pick = np.unique(np.linspace(0, len(first) - 1, max(2, planes)).round().astype(int))
    for k, i in enumerate(pick):
        p = first[i]
        corners = np.array([p, p + width * r, p + width * r + height * c, p + height * c, p])
        ax.plot(*corners.T, color="0.45", lw=1)
        ax.text(*(p + width * r + height * c), f"s = {table['s'].iat[i]:.1f}", fontsize=7)
        if k == 0:
            ax.plot_trisurf(*corners[:4].T, color="0.8", alpha=0.25)
    ax.plot(*first.T, color="tab:green", lw=1.5, label="first pixel of each slice (stack)")

    scale = 0.5 * max(width, height)
    p0 = first[0]
    for vec, colour, name in (
        (r, "tab:red", "row direction IOP[:3]"),
        (c, "tab:blue", "column direction IOP[3:]"),
        (n, "black", "normal = row × column"),
    ):
        ax.quiver(*p0, *(scale * vec), color=colour, lw=2, arrow_length_ratio=0.12, label=name)

    centre = first.mean(axis=0) + 0.5 * width * r + 0.5 * height * c
    span = np.ptp(np.vstack([first, first + width * r + height * c]), axis=0).max()
    axis_len = 0.25 * span
    origin = centre - 0.9 * span * np.array([1, 1, 1]) / np.sqrt(3)
    for vec, name in ((np.eye(3)[0], "L (+x)"), (np.eye(3)[1], "P (+y)"), (np.eye(3)[2], "S (+z)")):
        ax.quiver(*origin, *(axis_len * vec), color="tab:purple", lw=1, arrow_length_ratio=0.15)
        ax.text(*(origin + 1.1 * axis_len * vec), name, color="tab:purple", fontsize=9)

    everything = np.vstack([first, first + width * r + height * c, origin])
    lo, hi = everything.min(axis=0), everything.max(axis=0)
    mid, half = (lo + hi) / 2, (hi - lo).max() / 2 * 1.05
    ax.set_xlim(mid[0] - half, mid[0] + half)
    ax.set_ylim(mid[1] - half, mid[1] + half)
    ax.set_zlim(mid[2] - half, mid[2] + half)
    ax.set_box_aspect((1, 1, 1))
    ax.set_xlabel("x (mm, → L)")
    ax.set_ylabel("y (mm, → P)")
    ax.set_zlabel("z (mm, → S)")
    iop = ", ".join(f"{v:.3g}" for v in sl.orientation)
    ax.set_title(
        f"{sl.label}\nImageOrientationPatient = ({iop}); tilt {table.attrs['tilt_deg']:.2f}°",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="upper left")
    return fig


# --- orders and reformats -------------------------------------------------------------------


def frame_order(obj: Any, by: OrderKey = "position") -> np.ndarray:
    """Return the order in which a loader sorting by ``by`` would stack the frames.

    Parameters
    ----------
    obj
        See :func:`slice_positions`. For a DataArray, frames are numbered in the C order of its
        flattened frame dimensions (for ``("time", "slice")``: all slices of time 0 first).
    by
        ``"position"``: along the slice normal, ``InstanceNumber`` breaking ties (what
        dicomxr does); ``"InstanceNumber"``: by InstanceNumber alone, as many scripts do;
        ``"filename"``: by path as a string, as ``sorted(glob(...))`` does (``I10`` sorts
        before ``I2``). Ties keep the object's own order (a stable sort).

    Returns
    -------
    numpy.ndarray
        Indices into the object's frames, in stacking order.
    """
    if by not in ("position", "InstanceNumber", "filename"):
        raise ValueError(f"by must be 'position', 'InstanceNumber' or 'filename', got {by!r}")
    return _order(_slices(obj), by)


def _order(sl: _Slices, by: str) -> np.ndarray:
    if by == "position":
        s = sl.positions @ sl.normal
        return np.lexsort((np.nan_to_num(sl.instance_number, nan=np.inf), s))
    if by == "InstanceNumber":
        if np.isnan(sl.instance_number).all():
            raise ValueError(f"{sl.label}: the frames have no InstanceNumber")
        return np.argsort(np.nan_to_num(sl.instance_number, nan=np.inf), kind="stable")
    if by == "filename":
        if not any(sl.path):
            raise ValueError(f"{sl.label}: the frames have no path")
        keys = np.array([f"{p}\0{f:08d}" for p, f in zip(sl.path, sl.frame, strict=True)])
        return np.argsort(keys, kind="stable")
    raise ValueError(f"by must be 'position', 'InstanceNumber' or 'filename', got {by!r}")


def _as_dataarray(obj: Any) -> xr.DataArray:
    import xarray as xr

    if isinstance(obj, xr.DataArray):
        return obj
    if isinstance(obj, xr.Dataset) and "image" in obj:
        return obj["image"]
    if isinstance(obj, (str, os.PathLike, pd.DataFrame)) or _is_plan(obj):
        return _open(obj)  # the loader opens paths, catalogs and plans lazily
    raise TypeError(
        "pixels are needed: pass the DataArray from dicomxr.open_series, or a path, catalog or "
        f"series plan to open with it; got {type(obj).__name__}"
    )


def _is_plan(obj: Any) -> bool:
    return hasattr(obj, "grid") and hasattr(obj, "frames")


def _default_order(da: xr.DataArray) -> np.ndarray:
    """Flat frame indices of the first volume (index 0 of every frame dim but ``slice``)."""
    dims = _frame_dims(da)
    index = np.arange(int(np.prod([da.sizes[d] for d in dims]))).reshape(
        [da.sizes[d] for d in dims]
    )
    return index[tuple(slice(None) if d == "slice" else 0 for d in dims)]


def _lines(da: xr.DataArray, frames: np.ndarray, col: int) -> np.ndarray:
    """Column ``col`` of the given flat frames, ``(len(frames), rows)``; each frame read once."""
    dims = _frame_dims(da)
    line = da.isel(col=col)
    if "channel" in line.dims:
        line = line.mean("channel")
    flat = line.transpose(*dims, "row").stack(_frame=dims).transpose("_frame", "row")
    unique, inverse = np.unique(np.asarray(frames, dtype=int), return_inverse=True)
    values = np.asarray(flat.isel(_frame=unique).values)
    return values[inverse.reshape(-1)]


def _check_col(da: xr.DataArray, col: int | None) -> int:
    col = da.sizes["col"] // 2 if col is None else int(col)
    if not 0 <= col < da.sizes["col"]:
        raise IndexError(f"col {col} outside 0..{da.sizes['col'] - 1}")
    return col


def reformat(obj: Any, order: np.ndarray | None = None, *, col: int | None = None) -> np.ndarray:
    """Cut across the stack at one column: one line of pixels from every frame, in ``order``.

    For axial slices this is a sagittal reformat (the row direction runs to the patient's
    left, so a fixed column is a fixed left-right position).

    Parameters
    ----------
    obj
        A DataArray from :func:`dicomxr.open_series` (or a path, catalog or series plan, which
        are opened with it).
    order
        Frame indices (as from :func:`frame_order`) into the DataArray's flattened frame
        dimensions. By default the DataArray's own slice order, at the first index of every
        other frame dimension (one volume).
    col
        The column to cut at (default: the middle).

    Returns
    -------
    numpy.ndarray
        ``(frames, rows)``, the values as the DataArray gives them (rescaled; colour frames are
        averaged over the channel). Each frame in ``order`` is read once, whole (frames are
        the unit of storage), and only the column is kept.
    """
    da = _as_dataarray(obj)
    col = _check_col(da, col)
    frames = _default_order(da) if order is None else np.asarray(order, dtype=int)
    return _lines(da, frames, col)


def compare_orders(
    obj: Any,
    by: Literal["InstanceNumber", "filename"] = "InstanceNumber",
    *,
    col: int | None = None,
) -> Figure:
    """Show a reformat across the stack in the right order next to the same one in a wrong order.

    Left: the frames as dicomxr stacks them (along the normal, one volume of a 4D series), drawn
    at their true positions - uneven spacing and gaps show as they are. Right: *every* frame of
    the series stacked by ``by``, drawn with an even spacing, as a naive loop over sorted files
    or InstanceNumbers does (a 4D series becomes one tall stack). A third panel plots the
    position ``s`` along the normal of the frame at each place of both stacks: a straight line
    is a volume, anything else is a scrambled one.

    Parameters
    ----------
    obj
        A DataArray from :func:`dicomxr.open_series` (or a path, catalog or series plan, which
        are opened with it).
    by
        The wrong order to show: ``"InstanceNumber"`` or ``"filename"``.
    col
        The column to cut at (default: the middle).

    Returns
    -------
    matplotlib.figure.Figure
        ``fig.dicomxr_orders_differ`` is True when the order ``by`` differs from the position
        order of the same frames.
    """
    if by not in ("InstanceNumber", "filename"):
        raise ValueError(f"by must be 'InstanceNumber' or 'filename', got {by!r}")
    da = _as_dataarray(obj)
    sl = _slices_from_dataarray(da)
    s_all = sl.positions @ sl.normal
    right_order = _order(sl, "position")
    wrong_order = _order(sl, by)
    differs = not np.array_equal(right_order, wrong_order)

    col = _check_col(da, col)
    first_volume = _default_order(da)
    # read every frame once, then arrange the lines both ways
    lines = _lines(da, np.arange(len(s_all)), col)
    good = lines[first_volume]
    bad = lines[wrong_order]
    s_good = np.asarray(da["slice"].values, dtype=float)
    steps = np.diff(np.sort(s_all))
    even = float(np.median(steps[steps > 1e-3])) if np.any(steps > 1e-3) else 1.0
    dr = (sl.pixel_spacing or (1.0, 1.0))[0]

    lo, hi = _display_range(da.attrs, np.concatenate([good.ravel(), bad.ravel()]))
    fig = _new_figure((12, 6.5))
    ax_good, ax_bad, ax_line = fig.subplots(
        1, 3, gridspec_kw={"width_ratios": [1, 1, 0.8]}, squeeze=True
    )
    x_edges = (np.arange(good.shape[1] + 1) - 0.5) * dr
    ax_good.pcolormesh(x_edges, _edges(s_good), good, cmap="gray", vmin=lo, vmax=hi)
    ax_good.set_title(f"by position along the normal\n{len(s_good)} slices at their true s")
    ax_good.set_ylabel("s along the normal (mm)")
    ax_bad.imshow(
        bad,
        cmap="gray",
        vmin=lo,
        vmax=hi,
        origin="lower",
        aspect="auto",
        extent=(x_edges[0], x_edges[-1], -0.5 * even, (len(bad) - 0.5) * even),
    )
    name = "InstanceNumber" if by == "InstanceNumber" else "file name"
    ax_bad.set_title(
        f"by {name}\n{len(bad)} frames, assumed {even:.3g} mm apart"
        + ("" if differs else "\n(same order as by position)")
    )
    ax_bad.set_ylabel(f"stack index × {even:.3g} mm")
    ticks = np.unique(np.linspace(0, len(bad) - 1, min(len(bad), 8)).round().astype(int))
    ax_bad.set_yticks(ticks * even)
    ax_bad.set_yticklabels(_tick_labels(sl, wrong_order[ticks], by), fontsize=7)
    height = max(np.ptp(s_good), len(bad) * even)
    for ax in (ax_good, ax_bad):
        ax.set_xlabel("row index × row spacing (mm)")
        ax.set_aspect("equal" if height < 6 * good.shape[1] * dr else "auto")

    ax_line.plot(s_all[right_order], ".-", ms=3, label="by position")
    ax_line.plot(s_all[wrong_order], ".-", ms=3, label=f"by {name}")
    ax_line.set_xlabel("place in the stack")
    ax_line.set_ylabel("s of the frame placed there (mm)")
    ax_line.legend(fontsize=8)
    ax_line.grid(alpha=0.3)
    fig.suptitle(f"{sl.label}: reformat across the slices at column {col}")
    fig.dicomxr_orders_differ = differs  # type: ignore[attr-defined]
    return fig


def _display_range(attrs: dict[str, Any], values: np.ndarray) -> tuple[float, float]:
    """Grey-level range: the series' default window (:mod:`dicomxr.intensity`), as vmin/vmax.

    The file's window, else the modality's preset, else percentiles of ``values`` (the
    planes shown).
    """
    from dicomxr import intensity

    w = intensity.presets_for(attrs).get(intensity.default_preset(attrs))
    if w is None:
        w = intensity.auto_window([values], attrs.get("Modality"))
    return w.ramp


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges halfway between sorted centres (for pcolormesh at true positions)."""
    centres = np.asarray(centres, dtype=float)
    if centres.size == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    mids = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[2 * centres[0] - mids[0]], mids, [2 * centres[-1] - mids[-1]]])


def _tick_labels(sl: _Slices, indices: np.ndarray, by: str) -> list[str]:
    if by == "filename":
        return [os.path.basename(str(sl.path[i])) for i in indices]
    return [
        f"#{int(sl.instance_number[i])}" if np.isfinite(sl.instance_number[i]) else "?"
        for i in indices
    ]
