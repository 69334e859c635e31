"""The viewer's names for :mod:`dicomxr.intensity`, the one window implementation.

Kept so that code importing ``dicomxr.viewer.windowing`` goes on working; everything here is
:mod:`dicomxr.intensity`. Note that :func:`default_window` here returns the *name* of the
opening preset (:func:`dicomxr.intensity.default_preset`), as it always did; the
:class:`~dicomxr.intensity.Window` itself is :func:`dicomxr.intensity.default_window`.

Examples
--------
>>> from dicomxr.viewer import windowing
>>> windowing.CT_PRESETS["brain"].center, windowing.CT_PRESETS["brain"].width
(40.0, 80.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dicomxr.intensity import (
    CT_PRESETS,
    Window,
    apply_window,
    auto_window,
    file_presets,
    is_ct,
    is_inverted,
    presets_for,
    sample_indices,
)
from dicomxr.intensity import default_preset as default_window

__all__ = [
    "CT_PRESETS",
    "Window",
    "apply_window",
    "auto_window",
    "default_window",
    "file_presets",
    "is_ct",
    "is_inverted",
    "presets_for",
    "sample_indices",
    "window_choices",
]


def window_choices(presets: Mapping[str, Window], *, with_auto: bool = True) -> Sequence[str]:
    """Names offered in a preset menu: the presets, then ``"auto"``."""
    names = list(presets)
    if with_auto and "auto" not in names:
        names.append("auto")
    return names
