"""Notebook viewers over lazy DICOM series: :func:`view`, :func:`browse`, and a static :func:`montage`.

The interactive parts need ipywidgets (and ipyevents for click-to-move, ``pip install
'dicomxr[viewer]'``); they are imported when first used, so ``import dicomxr.viewer`` stays
cheap and the static montage works where widgets do not.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Browser", "Viewer", "browse", "montage", "view"]

_LAZY = {
    "view": "dicomxr.viewer._viewer:view",
    "Viewer": "dicomxr.viewer._viewer:Viewer",
    "browse": "dicomxr.viewer.browser:browse",
    "Browser": "dicomxr.viewer.browser:Browser",
    "montage": "dicomxr.viewer.static:montage",
}


def __getattr__(name: str) -> Any:
    try:
        module_name, _, attr = _LAZY[name].partition(":")
    except KeyError:
        raise AttributeError(f"module 'dicomxr.viewer' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from dicomxr.viewer._viewer import Viewer, view
    from dicomxr.viewer.browser import Browser, browse
    from dicomxr.viewer.static import montage
