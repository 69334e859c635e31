"""Intensity: one window/level implementation for the whole package, plus clip and z-score.

A *window* is a pair ``(center, width)`` in the units of the array (Hounsfield units for CT
once the rescale is applied, as the loader does) and a VOI function, as in the DICOM VOI LUT
module (PS3.3 C.11.2.1.2). Everything that shows or windows an image - ``da.dicom.window``,
``da.dicom.plot``, the viewer, the montage - goes through this module, so they agree.

The default window
------------------
One rule, used by everyone (:func:`default_window`):

1. the file's first window (``WindowCenter`` / ``WindowWidth``; when the loader keeps them per
   frame as coordinates, the value of the *reference frame* - the first index of every extra
   dim and the middle slice, the frame the viewer opens on);
2. else the modality's preset (``"abdomen"`` for CT or any series in Hounsfield units);
3. else ``"auto"``: percentiles of a few sampled planes of the first volume
   (:func:`sample_indices`, :func:`auto_window`) - never a full compute.

VOI functions
-------------
``LINEAR`` (the default; ``width >= 1``), ``LINEAR_EXACT`` and ``SIGMOID`` (``width > 0``),
chosen by the ``VOILUTFunction`` attribute when present. The output is in ``[0, 1]`` (NaN
stays NaN); MONOCHROME1 images are inverted (``1 - y``) here and nowhere else, so ``1`` is
always white.

Examples
--------
>>> import numpy as np
>>> from dicomxr import intensity
>>> intensity.PRESETS["brain"]
Window(center=40.0, width=80.0, name='brain', function='LINEAR')
>>> intensity.voi(np.array([-0.5, 39.5, 79.5]), 40, 80).tolist()
[0.0, 0.5, 1.0]
>>> intensity.apply_window(np.array([0, 40, 80]), 40, 80).tolist()
[0, 129, 255]
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import xarray as xr

logger = logging.getLogger(__name__)

__all__ = [
    "CT_PRESETS",
    "PRESETS",
    "VOI_FUNCTIONS",
    "Window",
    "apply_window",
    "auto_window",
    "check_width",
    "clip",
    "clip_percentile",
    "default_preset",
    "default_window",
    "file_presets",
    "frame_window_attrs",
    "is_ct",
    "is_inverted",
    "normalize",
    "presets_for",
    "reference_index",
    "resolve_window",
    "sample_indices",
    "sampled_window",
    "voi",
    "voi_function",
    "window",
    "zscore",
]

#: the VOI LUT functions of PS3.3 C.11.2.1.2 / C.11.2.1.3
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")

_SPATIAL = ("slice", "row", "col")


def check_width(width: float, function: str = "LINEAR") -> None:
    """Raise ``ValueError`` unless ``width`` is valid for ``function`` (PS3.3 C.11.2.1.2).

    LINEAR needs ``width >= 1``; LINEAR_EXACT and SIGMOID need ``width > 0``.
    """
    w = float(width)
    if function == "LINEAR":
        if not w >= 1:
            raise ValueError(
                f"window width must be >= 1 for the DICOM LINEAR function, got {width}; "
                "use function='LINEAR_EXACT' for a narrower window"
            )
    elif function in ("LINEAR_EXACT", "SIGMOID"):
        if not w > 0:
            raise ValueError(f"window width must be > 0 for {function}, got {width}")
    else:
        raise ValueError(f"unknown VOI function {function!r}; choose one of {list(VOI_FUNCTIONS)}")


@dataclass(frozen=True)
class Window:
    """A display window: ``center`` (level), ``width``, a human name and the VOI function."""

    center: float
    width: float
    name: str = "custom"
    function: str = "LINEAR"

    def __post_init__(self) -> None:
        check_width(self.width, self.function)

    @property
    def low(self) -> float:
        """Value shown black (white for MONOCHROME1)."""
        return self.center - self.width / 2.0

    @property
    def high(self) -> float:
        """Value shown white (black for MONOCHROME1)."""
        return self.center + self.width / 2.0

    @property
    def ramp(self) -> tuple[float, float]:
        """The values the VOI function maps to 0 and to 1 (a linear map between them).

        LINEAR: ``c - 0.5 -+ (w - 1) / 2`` (PS3.3 C.11.2.1.2.1), LINEAR_EXACT: ``c -+ w / 2``;
        for SIGMOID, which never reaches 0 or 1, ``c -+ w / 2`` (where it is at 0.12 and
        0.88). What ``imshow(vmin=..., vmax=...)`` needs to draw the window.
        """
        if self.function == "LINEAR":
            half = (self.width - 1.0) / 2.0
            return self.center - 0.5 - half, self.center - 0.5 + half
        return self.low, self.high


def _ct(center: float, width: float, name: str) -> Window:
    return Window(center, width, name)


#: Hounsfield-unit presets, the usual radiology defaults (centre, width)
CT_PRESETS: dict[str, Window] = {
    w.name: w
    for w in (
        _ct(40.0, 80.0, "brain"),
        _ct(75.0, 215.0, "subdural"),
        _ct(32.0, 8.0, "stroke"),
        _ct(-600.0, 1500.0, "lung"),
        _ct(400.0, 1800.0, "bone"),
        _ct(50.0, 400.0, "abdomen"),
        _ct(50.0, 350.0, "mediastinum"),
        _ct(30.0, 150.0, "liver"),
    )
}

#: every named preset (today the CT ones; they apply to series in Hounsfield units)
PRESETS: dict[str, Window] = dict(CT_PRESETS)

#: the preset a series of this kind opens with when its files carry no window
_MODALITY_DEFAULT = {"CT": "abdomen"}


# -- the VOI functions ----------------------------------------------------------------------
def voi(
    values: Any,
    center: Any,
    width: Any,
    function: str = "LINEAR",
    *,
    out_range: tuple[float, float] = (0.0, 1.0),
) -> Any:
    """Apply a DICOM VOI function to ``values``, lazily for dask and xarray inputs.

    Exactly PS3.3 C.11.2.1.2.1 (LINEAR)::

        x <= c - 0.5 - (w - 1) / 2  ->  ymin
        x >  c - 0.5 + (w - 1) / 2  ->  ymax
        else  y = ((x - (c - 0.5)) / (w - 1) + 0.5) * (ymax - ymin) + ymin

    and C.11.2.1.3.2 (LINEAR_EXACT: ``((x - c) / w + 0.5)``, clipped) and C.11.2.1.3.1
    (SIGMOID: ``1 / (1 + exp(-4 (x - c) / w))``).

    Parameters
    ----------
    values
        numpy, dask or xarray values (after the modality rescale).
    center, width
        Scalars, or arrays broadcasting against ``values`` (a window per frame).
    function
        ``"LINEAR"``, ``"LINEAR_EXACT"`` or ``"SIGMOID"``.
    out_range
        ``(ymin, ymax)``.

    Returns
    -------
    Same kind as ``values``, floating point (float64 for integer input); NaN stays NaN.
    """
    function = str(function).upper()
    for w in np.atleast_1d(np.asarray(width, dtype=np.float64)).ravel():
        if np.isfinite(w):
            check_width(w, function)
    ymin, ymax = (float(v) for v in out_range)
    if function == "LINEAR":
        ramp = (values - (center - 0.5)) / np.maximum(width - 1.0, 1e-300) + 0.5
        if np.any(np.asarray(width) <= 1.0):
            # w == 1: the ramp has no width, the standard's branches leave a step at c - 0.5
            ramp = _where(width > 1.0, ramp, (values > center - 0.5) * 1.0)
        y = ramp
    elif function == "LINEAR_EXACT":
        y = (values - center) / width + 0.5
    else:
        # 1 / (1 + exp(-4 (x - c) / w)) written with tanh: the same, without exp's overflow
        return (ymax - ymin) * 0.5 * (1.0 + np.tanh(2.0 * (values - center) / width)) + ymin
    y = y.clip(0.0, 1.0)  # the method: np.clip would load an xarray object
    return y if (ymin, ymax) == (0.0, 1.0) else y * (ymax - ymin) + ymin


def _where(cond: Any, a: Any, b: Any) -> Any:
    """``where`` that stays lazy for xarray (numpy's would load it) and dask operands."""
    import xarray as xr

    if any(isinstance(v, (xr.DataArray, xr.Dataset)) for v in (cond, a, b)):
        return xr.where(cond, a, b)
    return np.where(cond, a, b)


def voi_function(attrs: Mapping[str, Any]) -> str:
    """Return the VOI function the file asks for (``VOILUTFunction``), else ``"LINEAR"``."""
    value = attrs.get("VOILUTFunction")
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    name = str(value or "LINEAR").strip().upper()
    if name not in VOI_FUNCTIONS:
        logger.debug("unknown VOILUTFunction %r: using LINEAR", value)
        return "LINEAR"
    return name


def is_inverted(attrs: Mapping[str, Any]) -> bool:
    """Tell whether the image is MONOCHROME1 (lowest value meant to be shown white)."""
    return str(attrs.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"


def apply_window(
    values: np.ndarray,
    center: float,
    width: float,
    *,
    invert: bool = False,
    function: str = "LINEAR",
) -> np.ndarray:
    """Map values to grey levels 0-255 (uint8) through :func:`voi`, for display.

    The grey level is ``floor(255 * y + 0.5)`` of the VOI output ``y`` in [0, 1] (``255 - ``
    that when ``invert``, for MONOCHROME1); NaN shows as 0. 8- and 16-bit integers go through
    a lookup table of the whole type (the same numbers, a few times faster on a 512² frame).
    """
    values = np.asarray(values)
    if values.dtype.itemsize <= 2 and values.dtype.kind in "iu" and values.size >= 4096:
        table = _window_table(values.dtype.str, float(center), float(width), bool(invert), function)
        unsigned = values.view(np.dtype(f"u{values.dtype.itemsize}"))
        return np.take(table, unsigned)
    return _grey_levels(values, float(center), float(width), bool(invert), function)


def _grey_levels(
    values: np.ndarray, center: float, width: float, invert: bool, function: str
) -> np.ndarray:
    # float64: exact for every integer pixel type, so the grey level is reproducible
    y = voi(np.asarray(values, dtype=np.float64), center, width, function)
    out = np.floor(y * 255.0 + 0.5)
    np.nan_to_num(out, copy=False, nan=0.0)
    u8 = out.astype(np.uint8)
    if invert:
        np.subtract(255, u8, out=u8)
    return u8


@lru_cache(maxsize=16)
def _window_table(
    dtype: str, center: float, width: float, invert: bool, function: str
) -> np.ndarray:
    """Grey level of every value of an 8/16-bit type, indexed by its unsigned bit pattern."""
    dt = np.dtype(dtype)
    codes = np.arange(2 ** (8 * dt.itemsize), dtype=np.dtype(f"u{dt.itemsize}"))
    table = _grey_levels(codes.view(dt), center, width, invert, function)
    table.setflags(write=False)
    return table


# -- presets --------------------------------------------------------------------------------
def _as_list(value: Any) -> list[float]:
    """Turn a DICOM multi-value (scalar, list, tuple, array, ``None``) into floats."""
    if value is None:
        return []
    if isinstance(value, str):
        out = []
        for p in (p for p in value.replace(",", "\\").split("\\") if p.strip()):
            try:
                out.append(float(p))
            except ValueError:
                return []
        return out
    out = []
    for v in np.atleast_1d(np.asarray(value, dtype=object)).ravel():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if np.isfinite(f):
            out.append(f)
    return out


def _explanations(attrs: Mapping[str, Any]) -> list[str]:
    value = attrs.get("WindowCenterWidthExplanation")
    if value is None:
        return []
    if isinstance(value, str):
        return value.split("\\")
    return [str(e) for e in np.atleast_1d(value)]


def file_presets(
    attrs: Mapping[str, Any],
    centers: Any = None,
    widths: Any = None,
) -> list[Window]:
    """Return the window presets stored in the file (WindowCenter/WindowWidth, several allowed).

    Parameters
    ----------
    attrs
        The DataArray's attrs (``WindowCenter``, ``WindowWidth`` and, when present,
        ``WindowCenterWidthExplanation`` and ``VOILUTFunction``).
    centers, widths
        Per-frame values to use instead of the attrs (when the window varies by frame the
        loader keeps it as a coordinate; see :func:`frame_window_attrs`).

    Returns
    -------
    list of Window
        One per distinct valid (center, width) pair, named after the explanation when the
        file gives one, else ``"file 1"``, ``"file 2"``...
    """
    c = _as_list(attrs.get("WindowCenter") if centers is None else centers)
    w = _as_list(attrs.get("WindowWidth") if widths is None else widths)
    explanations = _explanations(attrs)
    function = voi_function(attrs)
    out: list[Window] = []
    seen: set[tuple[float, float]] = set()
    for i, (ci, wi) in enumerate(zip(c, w, strict=False)):
        try:
            check_width(wi, function)
        except ValueError:
            logger.debug("ignoring file window %d: width %s invalid for %s", i, wi, function)
            continue
        if (ci, wi) in seen:  # Philips repeats its one window: offer it once
            continue
        seen.add((ci, wi))
        label = explanations[i].strip() if i < len(explanations) and explanations[i] else ""
        out.append(Window(ci, wi, f"file: {label}" if label else f"file {i + 1}", function))
    return out


def _modality_kind(attrs: Mapping[str, Any]) -> str:
    modality = str(attrs.get("Modality", "")).upper()
    rescale = str(attrs.get("RescaleType", "")).upper()
    units = str(attrs.get("units", "")).upper()
    return "CT" if modality == "CT" or "HU" in (rescale, units) else modality


def is_ct(attrs: Mapping[str, Any]) -> bool:
    """Whether a series is CT or in Hounsfield units (the CT presets apply)."""
    return _modality_kind(attrs) == "CT"


def presets_for(attrs: Mapping[str, Any]) -> dict[str, Window]:
    """Return every preset that makes sense for a series: the file's, then the modality's.

    CT (or any series in Hounsfield units) gets :data:`CT_PRESETS`. Other modalities get the
    file's presets only; ``"auto"`` (:func:`sampled_window`) is always possible besides.
    """
    out: dict[str, Window] = {w.name: w for w in file_presets(attrs)}
    if is_ct(attrs):
        for name, w in CT_PRESETS.items():
            out.setdefault(name, w)
    return out


def default_preset(attrs: Mapping[str, Any]) -> str:
    """Name of the preset to open with: the file's first, else the modality's, else ``"auto"``."""
    files = file_presets(attrs)
    if files:
        return files[0].name
    return _MODALITY_DEFAULT.get(_modality_kind(attrs), "auto")


# -- the automatic window -------------------------------------------------------------------
def sample_indices(n: int, k: int = 3, include: int | None = None) -> list[int]:
    """Pick ``k`` plane indices spread over ``n`` (quartiles), always holding ``include``.

    >>> sample_indices(140, 3, include=70)
    [35, 70, 104]
    """
    if n <= 0:
        return []
    picks = {round((i + 1) * (n - 1) / (k + 1)) for i in range(k)} if k > 0 else set()
    if include is not None:
        # replace the pick nearest the plane already on screen: it costs no extra read
        if picks:
            picks.discard(min(picks, key=lambda p: abs(p - include)))
        picks.add(int(include))
    return sorted(p for p in picks if 0 <= p < n)


def auto_window(planes: Iterable[np.ndarray], modality: str | None = None) -> Window:
    """Compute a window from a few sampled planes (percentiles of their values).

    Parameters
    ----------
    planes
        A few 2-D arrays (never a volume).
    modality
        ``"PT"``/``"NM"`` anchor the low end at the minimum (activity maps start at zero);
        other modalities use the 1st to 99.5th percentile. Zero-valued background is left
        out for MR when it would otherwise dominate the percentiles.

    Returns
    -------
    Window
        Named ``"auto"``; LINEAR, or LINEAR_EXACT when the spread is below 1 (float data of a
        small range, which the LINEAR function cannot window).
    """
    values = [np.asarray(p, dtype=np.float64).ravel() for p in planes]
    values = [v[np.isfinite(v)] for v in values if v.size]
    if not values or not any(v.size for v in values):
        return Window(0.5, 1.0, "auto")
    v = np.concatenate(values)
    mod = (modality or "").upper()
    if mod == "MR":
        nonzero = v[v != 0]
        # background air dominates many MR slices: a window from it is all black
        if nonzero.size > 0.05 * v.size:
            v = nonzero
    if mod in ("PT", "NM"):
        lo, hi = float(v.min()), float(np.percentile(v, 99.5))
    else:
        lo, hi = (float(x) for x in np.percentile(v, [1.0, 99.5]))
    if not hi > lo:
        lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        hi = lo + 1.0
    function = "LINEAR" if hi - lo >= 1.0 else "LINEAR_EXACT"
    return Window((lo + hi) / 2.0, hi - lo, "auto", function)


def _extra_dims(da: xr.DataArray) -> list[str]:
    return [str(d) for d in da.dims if d not in (*_SPATIAL, "channel")]


def reference_index(da: xr.DataArray) -> dict[str, int]:
    """Return the reference frame: index 0 of every extra dim and the middle slice.

    The frame the viewer opens on, and where the default window is read from.
    """
    at = {d: 0 for d in _extra_dims(da)}
    if "slice" in da.dims:
        at["slice"] = da.sizes["slice"] // 2
    return at


def sampled_window(
    da: xr.DataArray, *, at: Mapping[str, int] | None = None, planes: int = 3
) -> Window:
    """Return the ``"auto"`` window of a series, from ``planes`` sampled slices of one volume.

    Reads only those slices (:func:`sample_indices` around the slice of ``at``, default the
    reference frame), at the extra indices of ``at`` - never the whole array.
    """
    at = {**reference_index(da), **dict(at or {})}
    sub = da.isel({d: at[d] for d in _extra_dims(da)})
    if "slice" in sub.dims:
        picks = sample_indices(sub.sizes["slice"], planes, include=at["slice"])
        frames = list(np.asarray(sub.isel(slice=picks).values))
    else:
        frames = [np.asarray(sub.values)]
    return auto_window(frames, da.attrs.get("Modality"))


def frame_window_attrs(da: xr.DataArray, at: Mapping[str, int] | None = None) -> dict[str, Any]:
    """``WindowCenter``/``WindowWidth`` of one frame when the loader keeps them per frame.

    Scanners may store a different window for each frame (Philips does, per volume of a 4D
    series); the loader then makes them coordinates. Returns ``{}`` when the attrs hold them.
    """
    at = {**reference_index(da), **dict(at or {})}
    out: dict[str, Any] = {}
    for name in ("WindowCenter", "WindowWidth"):
        if da.attrs.get(name) is None and name in da.coords:
            coord = da.coords[name]
            out[name] = coord.isel({d: at[d] for d in coord.dims if d in at}).values.tolist()
    return out


def _per_frame(da: xr.DataArray) -> bool:
    return any(
        da.attrs.get(n) is None and n in da.coords and da.coords[n].ndim > 0
        for n in ("WindowCenter", "WindowWidth")
    )


def resolve_window(
    da: xr.DataArray,
    preset: str | Window | tuple[float, float] | None = None,
    *,
    at: Mapping[str, int] | None = None,
    function: str | None = None,
) -> Window:
    """Turn a preset name (or nothing, or a pair) into the :class:`Window` of a series.

    Parameters
    ----------
    da
        The image (its attrs and, for per-frame file windows, its coordinates).
    preset
        ``None`` for the default rule (see the module docs), a name from
        :func:`presets_for` (the file's, ``"brain"``, ``"lung"``... for CT), ``"auto"``,
        a :class:`Window` or a ``(center, width)`` pair.
    at
        The frame whose file window is used when it varies by frame, and around which
        ``"auto"`` samples (default :func:`reference_index`).
    function
        VOI function instead of the window's own (named presets: LINEAR; the file's and
        pairs: the file's ``VOILUTFunction``, else LINEAR).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones) or an invalid width.
    """
    attrs = {**da.attrs, **frame_window_attrs(da, at)}
    explicit = function is not None
    function = str(function).upper() if explicit else voi_function(attrs)
    if isinstance(preset, Window):
        w = preset
    elif isinstance(preset, (tuple, list)):
        center, width = preset
        return Window(float(center), float(width), "custom", function)
    else:
        name = default_preset(attrs) if preset is None else str(preset)
        presets = presets_for(attrs)
        if name == "auto":
            w = sampled_window(da, at=at)
        elif name in presets:
            w = presets[name]
        else:
            raise ValueError(_unknown_preset(name, presets))
    return replace(w, function=function) if explicit and w.function != function else w


def _unknown_preset(name: str, presets: Mapping[str, Window]) -> str:
    hint = ""
    if name in PRESETS:
        hint = f"; {name!r} is a CT preset, for series in Hounsfield units"
    return f"unknown window preset {name!r}; choose one of {[*presets, 'auto']}{hint}"


def default_window(da: xr.DataArray, *, at: Mapping[str, int] | None = None) -> Window:
    """Return the window all of dicomxr opens a series with (the rule in the module docs)."""
    return resolve_window(da, None, at=at)


# -- lazy operations on DataArrays ----------------------------------------------------------
def _with_attrs(out: xr.DataArray, da: xr.DataArray, **record: Any) -> xr.DataArray:
    out.attrs = {**da.attrs, **record}
    out.name = da.name
    return out


def _float(da: xr.DataArray) -> xr.DataArray:
    return da if da.dtype.kind == "f" else da.astype(np.float64)


def window(
    da: xr.DataArray,
    preset_or_center: str | Window | float | tuple[float, float] | None = None,
    width: float | None = None,
    *,
    function: str | None = None,
    invert: bool | None = None,
) -> xr.DataArray:
    """Window an image lazily: values mapped to [0, 1] (float32), 1 = white.

    Parameters
    ----------
    da
        Image values (after rescale), numpy- or dask-backed.
    preset_or_center
        ``None`` for the default window (:func:`default_window`; a file window that varies by
        frame is applied frame by frame), a preset name (``"brain"``, ``"file 1"``,
        ``"auto"``...), a :class:`Window`, a ``(center, width)`` pair, or the centre with
        ``width``.
    width
        Window width, with a numeric centre.
    function
        VOI function; default the window's (the file's ``VOILUTFunction``, else LINEAR).
    invert
        Flip to ``1 - y``; default for MONOCHROME1 images.

    Returns
    -------
    xarray.DataArray
        float32 in [0, 1] (NaN stays NaN), same coords, lazy when ``da`` is; attrs record
        ``window_name``, ``window_center``, ``window_width``, ``window_function``,
        ``window_inverted`` and ``units = "1"``.

    Examples
    --------
    >>> import dicomxr
    >>> from dicomxr import intensity
    >>> da = dicomxr.open_series(dicomxr.data.sample_path())
    >>> intensity.window(da, 300, 600).attrs["window_center"]
    300.0
    """
    if width is not None:
        if preset_or_center is None or isinstance(preset_or_center, str):
            raise ValueError("give a numeric centre with width, or a preset name alone")
        preset_or_center = (float(preset_or_center), float(width))  # type: ignore[arg-type]
    elif isinstance(preset_or_center, (int, float)):
        raise ValueError(f"a centre needs a width: window(da, {preset_or_center}, width)")
    w = resolve_window(da, preset_or_center, function=function)  # type: ignore[arg-type]
    flip = is_inverted(da.attrs) if invert is None else bool(invert)
    record = {"window_name": w.name, "window_function": w.function, "window_inverted": int(flip)}
    per_frame = preset_or_center is None or (
        isinstance(preset_or_center, str) and preset_or_center.startswith("file")
    )
    if per_frame and w.name.startswith("file") and _per_frame(da):
        center, width_ = da.coords["WindowCenter"], da.coords["WindowWidth"]
        record["window_name"] = f"{w.name} (per frame: WindowCenter/WindowWidth coordinates)"
    else:
        center, width_ = w.center, w.width
        record.update(window_center=float(w.center), window_width=float(w.width))
    y = voi(_float(da), center, width_, w.function)
    if flip:
        y = 1.0 - y
    out = _with_attrs(y.astype(np.float32), da, **record, units="1")
    return out.drop_vars([n for n in out.coords if n not in da.coords])


def clip(da: xr.DataArray, low: float | None = None, high: float | None = None) -> xr.DataArray:
    """Clip values to ``[low, high]`` lazily, keeping dtype, coords and attrs.

    ``attrs["clip_low"]`` / ``attrs["clip_high"]`` record the bounds used.
    """
    if low is not None and high is not None and not float(high) >= float(low):
        raise ValueError(f"clip needs low <= high, got {low} > {high}")
    record = {}
    if low is not None:
        record["clip_low"] = float(low)
    if high is not None:
        record["clip_high"] = float(high)
    return _with_attrs(da.clip(low, high), da, **record)


def clip_percentile(
    da: xr.DataArray,
    low: float = 1.0,
    high: float = 99.0,
    *,
    sample: bool = True,
    planes: int = 3,
) -> xr.DataArray:
    """Clip to percentiles of the values, lazily.

    Parameters
    ----------
    da
        The image.
    low, high
        Percentiles (0-100).
    sample
        ``True`` (default): percentiles of ``planes`` sampled slices of the first volume, as
        for the automatic window - reads only those. ``False``: of every value (reads the
        whole array once, now).
    planes
        Slices sampled when ``sample``.
    """
    if not 0 <= low <= high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low <= high <= 100, got {low}, {high}")
    if sample and "slice" in da.dims:
        at = reference_index(da)
        sub = da.isel({d: at[d] for d in _extra_dims(da)})
        picks = sample_indices(sub.sizes["slice"], planes, include=at["slice"])
        values = np.asarray(sub.isel(slice=picks).values, dtype=np.float64)
    else:
        values = np.asarray(da.values, dtype=np.float64)
    lo, hi = (float(v) for v in np.nanpercentile(values, [low, high]))
    out = clip(da, lo, hi)
    out.attrs["clip_percentiles"] = [float(low), float(high)]
    out.attrs["clip_sampled"] = int(bool(sample))
    return out


def _stat_dims(da: xr.DataArray, over: Sequence[str]) -> list[str]:
    dims = [d for d in over if d in da.dims]
    unknown = [d for d in over if d not in da.dims and d not in _SPATIAL]
    if unknown:
        raise ValueError(f"over names {unknown}, but the dims are {list(da.dims)}")
    return dims


def zscore(
    da: xr.DataArray,
    *,
    mask: xr.DataArray | None = None,
    over: Sequence[str] = _SPATIAL,
) -> xr.DataArray:
    """Standardise lazily: ``(x - mean) / std`` over ``over`` (default each volume).

    Parameters
    ----------
    da
        The image, numpy- or dask-backed (the mean and std are dask reductions then: still
        lazy, computed with the result).
    mask
        Boolean array on the same grid (broadcastable); only its True voxels enter the
        statistics (the whole image is still transformed).
    over
        Dims the statistics run over; other dims (``time``, ``echo``...) get their own.

    Returns
    -------
    xarray.DataArray
        float32, same coords; attrs record ``normalization`` and ``units = "1"``.
        A constant image gives NaN.
    """
    dims = _stat_dims(da, over)
    x = _float(da)
    sample = x if mask is None else x.where(mask)
    mean = sample.mean(dims)
    std = sample.std(dims)
    y = (x - mean) / std.where(std > 0)
    how = f"zscore over {','.join(dims)}" + (" (masked)" if mask is not None else "")
    out = _with_attrs(y.astype(np.float32), da, normalization=how, units="1")
    return out.drop_vars([n for n in out.coords if n not in da.coords])


def normalize(
    da: xr.DataArray,
    method: str = "zscore",
    *,
    mask: xr.DataArray | None = None,
    over: Sequence[str] = _SPATIAL,
) -> xr.DataArray:
    """Normalise lazily: ``"zscore"`` (:func:`zscore`) or ``"minmax"`` (to [0, 1]).

    Both compute their statistics as lazy reductions over ``over`` (inside ``mask`` when
    given) and record the method in ``attrs["normalization"]``.
    """
    if method == "zscore":
        return zscore(da, mask=mask, over=over)
    if method != "minmax":
        raise ValueError(f"unknown normalization {method!r}; choose 'zscore' or 'minmax'")
    dims = _stat_dims(da, over)
    x = _float(da)
    sample = x if mask is None else x.where(mask)
    lo, hi = sample.min(dims), sample.max(dims)
    span = hi - lo
    y = (x - lo) / span.where(span > 0)
    how = f"minmax over {','.join(dims)}" + (" (masked)" if mask is not None else "")
    out = _with_attrs(y.astype(np.float32), da, normalization=how, units="1")
    return out.drop_vars([n for n in out.coords if n not in da.coords])
