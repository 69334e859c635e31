"""Lazy attributes for packages whose public names live in heavier submodules.

``import dicomxr`` (and ``import dicomxr.net``) stay cheap: a name maps to
``"module:attribute"`` (or ``"module"``) and is imported on first access, then cached in the
package's namespace so the lookup runs once.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, namespace: dict[str, Any], targets: Mapping[str, str]) -> Callable:
    """Return a module-level ``__getattr__`` resolving ``targets`` on first use.

    Parameters
    ----------
    package
        The package's ``__name__`` (for the error message).
    namespace
        The package's ``globals()``, where a resolved value is cached.
    targets
        Public name -> ``"module:attribute"``, or ``"module"`` for a submodule.
    """

    def __getattr__(name: str) -> Any:
        try:
            target = targets[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        module_name, _, attr = target.partition(":")
        module = importlib.import_module(module_name)
        value = getattr(module, attr) if attr else module
        namespace[name] = value
        return value

    return __getattr__


#: run once, before dicomxr makes its first xarray object (see :func:`before_xarray`)
_BEFORE_XARRAY: list[Callable[[], object]] = []


def before_xarray(hook: Callable[[], object]) -> Callable[[], object]:
    """Run ``hook`` once, before dicomxr makes its first xarray object.

    The package face registers the ``.dicom`` accessor this way: the accessor stands at the
    top of the house (it reaches the exports and the viewer) while the objects are made lower
    down (:mod:`dicomxr.api`), and a lower layer never imports a higher one. ``import
    dicomxr`` stays light: neither xarray nor pandas is imported until an object is made.
    """
    _BEFORE_XARRAY.append(hook)
    return hook


def making_xarray() -> None:
    """Run the hooks of :func:`before_xarray` (the modules that make xarray objects call this)."""
    while _BEFORE_XARRAY:
        _BEFORE_XARRAY.pop(0)()
