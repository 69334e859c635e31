"""Window/level: the file's presets, modality presets, an automatic window from sampled planes.

A *window* is a pair ``(center, width)`` in the units of the array (Hounsfield units for CT
once the rescale is applied, as the loader does). Values below ``center - width/2`` show
black, values above ``center + width/2`` show white; MONOCHROME1 images are shown the other
way round (high values dark), as the standard asks.

Nothing here reads a whole volume: the automatic window is computed from a few planes the
caller hands over (:func:`auto_window`), and the viewer picks which planes to sample
(:func:`sample_indices`).

Examples
--------
>>> from dicomxr.viewer import windowing
>>> windowing.CT_PRESETS["brain"]
Window(center=40.0, width=80.0, name='brain')
>>> import numpy as np
>>> windowing.apply_window(np.array([0, 40, 80]), 40, 80).tolist()
[0, 128, 255]
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "CT_PRESETS",
    "Window",
    "apply_window",
    "auto_window",
    "default_window",
    "file_presets",
    "is_inverted",
    "presets_for",
    "sample_indices",
]


@dataclass(frozen=True)
class Window:
    """A display window: ``center`` (level) and ``width``, with a human name."""

    center: float
    width: float
    name: str = "custom"

    @property
    def low(self) -> float:
        """Value shown black (white for MONOCHROME1)."""
        return self.center - self.width / 2.0

    @property
    def high(self) -> float:
        """Value shown white (black for MONOCHROME1)."""
        return self.center + self.width / 2.0


# Hounsfield-unit presets, the usual radiology defaults (centre, width).
CT_PRESETS: dict[str, Window] = {
    "brain": Window(40.0, 80.0, "brain"),
    "subdural": Window(75.0, 215.0, "subdural"),
    "stroke": Window(32.0, 8.0, "stroke"),
    "lung": Window(-600.0, 1500.0, "lung"),
    "bone": Window(400.0, 1800.0, "bone"),
    "abdomen": Window(50.0, 400.0, "abdomen"),
    "mediastinum": Window(50.0, 350.0, "mediastinum"),
    "liver": Window(30.0, 150.0, "liver"),
}


def _as_list(value: Any) -> list[float]:
    """Turn a DICOM multi-value (scalar, list, tuple, array, ``None``) into floats."""
    if value is None:
        return []
    if isinstance(value, str):
        parts = [p for p in value.replace(",", "\\").split("\\") if p.strip()]
        out = []
        for p in parts:
            try:
                out.append(float(p))
            except ValueError:
                return []
        return out
    arr = np.atleast_1d(np.asarray(value, dtype=object))
    out = []
    for v in arr.ravel():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if np.isfinite(f):
            out.append(f)
    return out


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
        ``WindowCenterWidthExplanation``).
    centers, widths
        Per-frame values to use instead of the attrs (when the window varies by frame, the
        loader keeps it as a coordinate; the viewer passes the values of the frame on screen).

    Returns
    -------
    list of Window
        One per (center, width) pair with a positive width, named after the explanation
        when the file gives one, else ``"file 1"``, ``"file 2"``...
    """
    c = _as_list(attrs.get("WindowCenter") if centers is None else centers)
    w = _as_list(attrs.get("WindowWidth") if widths is None else widths)
    explanations = attrs.get("WindowCenterWidthExplanation")
    if isinstance(explanations, str):
        explanations = [e for e in explanations.split("\\")]
    elif explanations is None:
        explanations = []
    else:
        explanations = [str(e) for e in np.atleast_1d(explanations)]
    out: list[Window] = []
    seen: set[tuple[float, float]] = set()
    for i, (ci, wi) in enumerate(zip(c, w, strict=False)):
        if wi <= 0:
            logger.debug("ignoring file window %d with width %s <= 0", i, wi)
            continue
        if (ci, wi) in seen:  # Philips repeats its one window: offer it once
            continue
        seen.add((ci, wi))
        label = explanations[i].strip() if i < len(explanations) and explanations[i] else ""
        name = f"file: {label}" if label else f"file {i + 1}"
        out.append(Window(ci, wi, name))
    return out


def is_inverted(attrs: Mapping[str, Any]) -> bool:
    """Tell whether the image is MONOCHROME1 (lowest value meant to be shown white)."""
    return str(attrs.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"


def _is_ct(attrs: Mapping[str, Any]) -> bool:
    modality = str(attrs.get("Modality", "")).upper()
    rescale = str(attrs.get("RescaleType", "")).upper()
    return modality == "CT" or rescale == "HU"


def presets_for(attrs: Mapping[str, Any]) -> dict[str, Window]:
    """Return every preset that makes sense for a series: the file's, then the modality's.

    CT (or any series rescaled to Hounsfield units) gets :data:`CT_PRESETS`. Other
    modalities get the file's presets only; the automatic window is computed separately
    (it needs pixel values, see :func:`auto_window`).
    """
    out: dict[str, Window] = {}
    for w in file_presets(attrs):
        out[w.name] = w
    if _is_ct(attrs):
        for name, w in CT_PRESETS.items():
            out.setdefault(name, w)
    return out


def default_window(attrs: Mapping[str, Any]) -> str:
    """Name of the preset to open with: the file's first, else ``"abdomen"`` for CT, else ``"auto"``."""
    files = file_presets(attrs)
    if files:
        return files[0].name
    if _is_ct(attrs):
        return "abdomen"
    return "auto"


def auto_window(planes: Iterable[np.ndarray], modality: str | None = None) -> Window:
    """Compute a window from a few sampled planes (percentiles of their values).

    Parameters
    ----------
    planes
        A few 2-D arrays (the viewer passes at most a handful of frames, never a volume).
    modality
        ``"PT"``/``"NM"`` anchor the low end at the minimum (activity maps start at zero);
        other modalities use the 1st to 99.5th percentile. Zero-valued background is left
        out for MR when it would otherwise dominate the percentiles.

    Returns
    -------
    Window
        Named ``"auto"``; width at least 1 so that a constant image still displays.
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
        lo = float(v.min())
        hi = float(np.percentile(v, 99.5))
    else:
        lo, hi = (float(x) for x in np.percentile(v, [1.0, 99.5]))
    if not hi > lo:
        lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        hi = lo + 1.0
    return Window((lo + hi) / 2.0, hi - lo, "auto")


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
            nearest = min(picks, key=lambda p: abs(p - include))
            picks.discard(nearest)
        picks.add(int(include))
    return sorted(p for p in picks if 0 <= p < n)


def apply_window(
    values: np.ndarray,
    center: float,
    width: float,
    *,
    invert: bool = False,
) -> np.ndarray:
    """Map values to 0-255 (uint8) through a linear window.

    ``center - width/2`` maps to 0 and ``center + width/2`` to 255, linearly, rounding half
    up (the other way round when ``invert``, for MONOCHROME1); NaN shows as 0. 8- and
    16-bit integers go through a lookup table of the whole type (same numbers, a few times
    faster on a 512² frame than the arithmetic).
    """
    values = np.asarray(values)
    if values.dtype.itemsize <= 2 and values.dtype.kind in "iu" and values.size >= 4096:
        table = _window_table(values.dtype.str, float(center), float(width), bool(invert))
        unsigned = values.view(np.dtype(f"u{values.dtype.itemsize}"))
        return np.take(table, unsigned)
    return _window_values(values, float(center), float(width), bool(invert))


def _window_values(values: np.ndarray, center: float, width: float, invert: bool) -> np.ndarray:
    width = width if width > 0 else 1.0
    lo = center - width / 2.0
    # float64: exact for every integer pixel type, so the grey level is reproducible
    out = np.subtract(values, lo, dtype=np.float64)
    out *= 255.0 / width
    out += 0.5  # round half up
    np.clip(out, 0.0, 255.0, out=out)
    if values.dtype.kind == "f":
        np.nan_to_num(out, copy=False, nan=0.0)
    u8 = out.astype(np.uint8)
    if invert:
        np.subtract(255, u8, out=u8)
    return u8


@lru_cache(maxsize=16)
def _window_table(dtype: str, center: float, width: float, invert: bool) -> np.ndarray:
    """Grey level of every value of an 8/16-bit type, indexed by its unsigned bit pattern."""
    dt = np.dtype(dtype)
    codes = np.arange(2 ** (8 * dt.itemsize), dtype=np.dtype(f"u{dt.itemsize}"))
    table = _window_values(codes.view(dt), center, width, invert)
    table.setflags(write=False)
    return table


def window_choices(presets: Mapping[str, Window], *, with_auto: bool = True) -> Sequence[str]:
    """Names offered in a preset menu: the presets, then ``"auto"``."""
    names = list(presets)
    if with_auto and "auto" not in names:
        names.append("auto")
    return names
